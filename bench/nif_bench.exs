# NIF overhead: NxQuant.Core.quantized_matmul/3 (x {1, 4096} . W^T, W 4096 x 4096 4-bit g64,
# bf16 scales, the same weight every call) against the raw C++ kernel on the same shape.
# Calls alternate between Core.quantized_matmul/3 (timed from Elixir: everything a user pays) and
# the NIF's timed twin, which reports the time spent inside the kernel call; the overhead is
# median(call) / median(kernel) - 1, immune to the drift of this VM's speed between runs. The
# kernel inside the BEAM is also compared with build-bench/nx_quant_bench (BM_QuantizedCached,
# run first, when built): a difference there is the cost of sharing the cores with the BEAM.
# x is random normal, as in the C++ bench: f32 x (every mantissa bit used) for :exact and the
# opt-in :int8, and bf16 x for :exact (the dtype MLX-community models compute in).
# On a loaded machine medians drift with the load: each row also gives the minimum over the
# pairs (call and kernel), and the standalone figure is the minimum over repetitions; the load
# average and the dirty CPU schedulers' busy share during the calls (0 when every call stayed on
# a normal scheduler) are printed too.
# Run: MIX_ENV=prod mix run bench/nif_bench.exs (NX_QUANT_MAX_ISA=avx2 caps both the NIF and
# the standalone bench to the AVX2 kernels; NIF_BENCH_RUNS sets the pairs per row, default 1000)
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

  # {median call us, median kernel us, min call us, min kernel us} over `runs` interleaved
  # pairs.
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

    walls = Enum.map(pairs, &elem(&1, 0))
    kernels = Enum.map(pairs, &elem(&1, 1))
    {median(walls), median(kernels), Enum.min(walls), Enum.min(kernels)}
  end

  # {fun's result, busy share of the dirty CPU schedulers while it ran (scheduler_wall_time)}.
  def with_dirty_cpu_busy(fun) do
    :erlang.system_flag(:scheduler_wall_time, true)
    before = :erlang.statistics(:scheduler_wall_time_all)
    result = fun.()
    after_ = :erlang.statistics(:scheduler_wall_time_all)
    normal = :erlang.system_info(:schedulers)
    dirty = :erlang.system_info(:dirty_cpu_schedulers)
    ids = (normal + 1)..(normal + dirty)

    sum = fn stats ->
      for {id, a, t} <- stats, id in ids, reduce: {0, 0}, do: ({sa, st} -> {sa + a, st + t})
    end

    {a0, t0} = sum.(before)
    {a1, t1} = sum.(after_)
    {result, if(t1 > t0, do: (a1 - a0) / (t1 - t0), else: 0.0)}
  end

  def load_average do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "unknown"
    end
  end

  def raw_kernel_us do
    bench = Path.join(File.cwd!(), "build-bench/nx_quant_bench")

    if File.exists?(bench) do
      {out, 0} =
        System.cmd(bench, [
          "--benchmark_filter=BM_QuantizedCached/4096/4096/1/4/",
          "--benchmark_min_time=0.05",
          "--benchmark_repetitions=20",
          "--benchmark_format=csv"
        ])

      # Names: BM_QuantizedCached/N/K/M/bits/threads/kernel/precision/x dtype/real_time
      # Kernel 0 (Auto) only: the minimum over the repetitions (aggregate rows skipped).
      rows =
        for line <- String.split(out, "\n"),
            String.starts_with?(line, "\"BM_QuantizedCached"),
            [name, _iters, real | _] = String.split(line, ","),
            args = name |> String.trim("\"") |> String.split("/"),
            Enum.at(args, 6) == "0",
            not String.contains?(name, ["_mean", "_median", "_stddev", "_cv"]) do
          threads = args |> Enum.at(5) |> String.to_integer()
          precision = if Enum.at(args, 7) == "1", do: :int8, else: :exact
          x_type = if Enum.at(args, 8) == "2", do: {:bf, 16}, else: {:f, 32}
          {{threads, precision, x_type}, String.to_float(real)}
        end

      rows
      |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
      |> Map.new(fn {k, v} -> {k, Enum.min(v)} end)
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

IO.puts(
  "  NX_QUANT_MAX_ISA=#{System.get_env("NX_QUANT_MAX_ISA", "(none)")}, load average " <>
    "#{NifBench.load_average()}, schedulers #{:erlang.system_info(:schedulers_online)}, " <>
    "bind #{inspect(:erlang.system_info(:scheduler_bind_type))}"
)

runs = String.to_integer(System.get_env("NIF_BENCH_RUNS", "1000"))

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

  {{call_us, kernel_us, call_min, kernel_min}, busy} =
    NifBench.with_dirty_cpu_busy(fn -> NifBench.time_us(call, timed, runs) end)

  standalone =
    case raw[{threads, precision, x_type}] do
      nil -> ""
      us -> "; standalone C++ bench (min) #{Float.round(us, 1)} us"
    end

  IO.puts(
    "  #{precision}, x #{inspect(x_type)}, threads #{threads}: call #{Float.round(call_us, 1)} us, " <>
      "kernel #{Float.round(kernel_us, 1)} us -> NIF overhead " <>
      "#{Float.round((call_us / kernel_us - 1) * 100, 1)}%; min call #{Float.round(call_min, 1)} " <>
      "us, min kernel #{Float.round(kernel_min, 1)} us -> " <>
      "#{Float.round((call_min / kernel_min - 1) * 100, 1)}%; dirty CPU busy " <>
      "#{Float.round(busy * 100, 1)}%#{standalone}"
  )
end
