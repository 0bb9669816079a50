# NIF overhead: NxQuant.Core.quantized_matmul/3 (x {1, 4096} . W^T, W 4096 x 4096 4-bit g64,
# bf16 scales, the same weight every call) against the raw C++ kernel on the same shape.
# Calls alternate between Core.quantized_matmul/3 (timed from Elixir: everything a user pays) and
# the NIF's timed twin, which reports the time spent inside the kernel call; the overhead is
# median(call) / median(kernel) - 1, immune to the drift of this VM's speed between runs. The
# kernel inside the BEAM is also compared with build-bench/nx_quant_bench (BM_QuantizedCached,
# run first, when built): a difference there is the cost of sharing the cores with the BEAM.
# x is random normal, as in the C++ bench: f32 x (every mantissa bit used) for :exact and the
# opt-in :int8, and bf16 x for :exact (the dtype MLX-community models compute in).
# Run: MIX_ENV=prod mix run bench/nif_bench.exs
alias NxQuant.{Core, Dense, Validate}

defmodule NifBench do
  def bf16_weight(rows, cols) do
    bytes = rows * cols * 4
    zeros = :binary.copy(<<0>>, bytes)
    raw = :crypto.crypto_one_time(:aes_128_ctr, <<1::128>>, <<0::128>>, zeros, true)

    data =
      for <<a::16, _::16 <- raw>>, into: <<>> do
        <<f::32>> = <<(a - 32768) / 1_600_000::float-32>>
        <<div(f, 65536)::16-little>>
      end

    Dense.new(data, {rows, cols}, {:bf, 16})
  end

  def median(values), do: values |> Enum.sort() |> Enum.at(div(length(values), 2))

  # {median call us, median kernel us} over `runs` interleaved pairs.
  def time_us(call, timed, runs) do
    for _ <- 1..20, do: {call.(), timed.()}

    pairs =
      for _ <- 1..runs do
        t0 = System.monotonic_time(:nanosecond)
        call.()
        wall = (System.monotonic_time(:nanosecond) - t0) / 1000
        {_, kernel_ns} = timed.()
        {wall, kernel_ns / 1000}
      end

    {median(Enum.map(pairs, &elem(&1, 0))), median(Enum.map(pairs, &elem(&1, 1)))}
  end

  def raw_kernel_us do
    bench = Path.join(File.cwd!(), "build-bench/nx_quant_bench")

    if File.exists?(bench) do
      {out, 0} =
        System.cmd(bench, [
          "--benchmark_filter=BM_QuantizedCached/4096/4096/1/4/",
          "--benchmark_min_time=0.5",
          "--benchmark_format=csv"
        ])

      # Names: BM_QuantizedCached/N/K/M/bits/threads/kernel/precision/x dtype/real_time
      for line <- String.split(out, "\n"),
          String.starts_with?(line, "\"BM_QuantizedCached"),
          into: %{} do
        [name, _iters, real | _] = String.split(line, ",")
        args = name |> String.trim("\"") |> String.split("/")
        threads = args |> Enum.at(5) |> String.to_integer()
        precision = if Enum.at(args, 7) == "1", do: :int8, else: :exact
        x_type = if Enum.at(args, 8) == "2", do: {:bf, 16}, else: {:f, 32}
        {{threads, precision, x_type}, String.to_float(real)}
      end
    else
      %{}
    end
  end
end

qt = Core.quantize(NifBench.bf16_weight(4096, 4096), type: {:s, 4}, group_size: 64)
raw = NifBench.raw_kernel_us()
:rand.seed(:exsss, {7, 7, 7})
normal = for _ <- 1..4096, do: :rand.normal()

xs = %{
  {:f, 32} =>
    Dense.new(for(v <- normal, into: <<>>, do: <<v::float-32-native>>), {1, 4096}, {:f, 32}),
  {:bf, 16} =>
    Dense.new(
      for(
        v <- normal,
        into: <<>>,
        do:
          (
            <<f::32>> = <<v::float-32>>
            <<div(f, 65536)::16-native>>
          )
      ),
      {1, 4096},
      {:bf, 16}
    )
}

IO.puts("NIF path: Core.quantized_matmul, x {1, 4096}, W 4096 x 4096 4-bit g64 (bf16 scales)")

cases = [{:exact, {:f, 32}}, {:exact, {:bf, 16}}, {:int8, {:f, 32}}]

for {precision, x_type} <- cases, threads <- [1, 2] do
  x = xs[x_type]
  call = fn -> Core.quantized_matmul(x, qt, threads: threads, precision: precision) end

  timed = fn ->
    NxQuant.NIF.quantized_matmul_timed(
      x.data,
      Validate.dtype_atom(x_type),
      1,
      qt.ref,
      true,
      :f32,
      threads,
      precision
    )
  end

  {call_us, kernel_us} = NifBench.time_us(call, timed, 1000)

  standalone =
    case raw[{threads, precision, x_type}] do
      nil -> ""
      us -> "; standalone C++ bench #{Float.round(us, 1)} us"
    end

  IO.puts(
    "  #{precision}, x #{inspect(x_type)}, threads #{threads}: call #{Float.round(call_us, 1)} us, " <>
      "kernel #{Float.round(kernel_us, 1)} us -> NIF overhead " <>
      "#{Float.round((call_us / kernel_us - 1) * 100, 1)}%#{standalone}"
  )
end
