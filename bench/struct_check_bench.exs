# The cost of checking a %NxQuant.QuantizedTensor{} against its resource on every call
# (NxQuant.Core: one NIF.info/1 call + QuantizedTensor.check/2), against a decode GEMV:
# x {1, 2048} . W^T, W {rows, 2048} 4-bit g64, f32 scales, one thread. Medians of interleaved
# runs, so the machine's drift hits both alike.
# Run: MIX_ENV=prod mix run bench/struct_check_bench.exs
alias NxQuant.{Core, Dense, NIF, QuantizedTensor}

median = fn values -> values |> Enum.sort() |> Enum.at(div(length(values), 2)) end

ns = fn fun, reps ->
  t0 = System.monotonic_time(:nanosecond)
  for _ <- 1..reps, do: fun.()
  (System.monotonic_time(:nanosecond) - t0) / reps
end

random = fn rows, cols ->
  bytes = :crypto.strong_rand_bytes(rows * cols)

  Dense.new(
    for(<<b <- bytes>>, into: <<>>, do: <<(b - 128) / 64::float-32-little>>),
    {rows, cols},
    {:f, 32}
  )
end

x = random.(1, 2048)
IO.puts("load average: #{:os.cmd(~c"cat /proc/loadavg") |> to_string() |> String.trim()}")

for rows <- [256, 2048] do
  qt = Core.quantize(random.(rows, 2048))
  check = fn -> :ok = QuantizedTensor.check(qt, NIF.info(qt.ref)) end
  gemv = fn -> Core.quantized_matmul(x, qt, threads: 1) end

  samples =
    for _ <- 1..30 do
      {ns.(check, 2000), ns.(gemv, div(200_000, rows))}
    end

  c = median.(Enum.map(samples, &elem(&1, 0)))
  g = median.(Enum.map(samples, &elem(&1, 1)))

  IO.puts(
    "W #{rows}x2048: check #{Float.round(c, 0)} ns, GEMV call #{Float.round(g / 1000, 1)} us: " <>
      "check = #{Float.round(100 * c / g, 3)}% of the call"
  )
end
