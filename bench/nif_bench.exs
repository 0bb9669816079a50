# NIF overhead: NxQuant.Core.quantized_matmul/3 (x {1, 4096} . W^T, W 4096 x 4096 4-bit g64,
# bf16 scales, the same weight every call) against the raw C++ kernel on the same shape, measured
# in the same run by build-bench/nx_quant_bench (BM_QuantizedCached) when it has been built.
# Both precisions (:exact and the opt-in :int8).
# Run: MIX_ENV=prod mix run bench/nif_bench.exs
alias NxQuant.{Core, Dense}

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

  def time_us(fun, runs) do
    for(_ <- 1..20, do: fun.())

    times =
      for _ <- 1..runs do
        t0 = System.monotonic_time(:nanosecond)
        fun.()
        (System.monotonic_time(:nanosecond) - t0) / 1000
      end

    sorted = Enum.sort(times)
    {Enum.at(sorted, div(runs, 2)), hd(sorted)}
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

      # Names: BM_QuantizedCached/N/K/M/bits/threads/kernel/precision/real_time
      for line <- String.split(out, "\n"),
          String.starts_with?(line, "\"BM_QuantizedCached"),
          into: %{} do
        [name, _iters, real | _] = String.split(line, ",")
        args = name |> String.trim("\"") |> String.split("/")
        threads = args |> Enum.at(5) |> String.to_integer()
        precision = if Enum.at(args, 7) == "1", do: :int8, else: :exact
        {{threads, precision}, String.to_float(real)}
      end
    else
      %{}
    end
  end
end

qt = Core.quantize(NifBench.bf16_weight(4096, 4096), type: {:s, 4}, group_size: 64)
x = Dense.new(:binary.copy(<<0.5::float-32-native>>, 4096), {1, 4096}, {:f, 32})
raw = NifBench.raw_kernel_us()

IO.puts("NIF path: Core.quantized_matmul, x {1, 4096}, W 4096 x 4096 4-bit g64 (bf16 scales)")

for precision <- [:exact, :int8], threads <- [1, 2] do
  {median, best} =
    NifBench.time_us(
      fn -> Core.quantized_matmul(x, qt, threads: threads, precision: precision) end,
      500
    )

  overhead =
    case raw[{threads, precision}] do
      nil ->
        "(build build-bench/nx_quant_bench to compare with the raw kernel)"

      us ->
        "raw kernel #{Float.round(us, 1)} us -> NIF overhead #{Float.round((median / us - 1) * 100, 1)}%"
    end

  IO.puts(
    "  #{precision}, threads #{threads}: median #{Float.round(median, 1)} us, best #{Float.round(best, 1)} us; #{overhead}"
  )
end
