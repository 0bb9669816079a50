# Stress figures for the NIF (issue 5), measured, not asserted:
#   1. responsiveness: many processes run large matmuls on one shared ref while a ping process
#      measures how late normal schedulers answer (worst and p99 latency);
#   2. memory: 10,000 create/use/drop cycles of a quantized tensor, then :erlang.memory/0 and
#      the OS RSS compared with where they started.
# Run: MIX_ENV=prod mix run bench/stress.exs [cycles]
alias NxQuant.{Core, Dense}

defmodule Stress do
  def dense(rows, cols, seed) do
    bytes = rows * cols * 4

    raw =
      :crypto.crypto_one_time(
        :aes_128_ctr,
        <<seed::128>>,
        <<0::128>>,
        :binary.copy(<<0>>, bytes),
        true
      )

    data = for <<a::16, _b::16 <- raw>>, into: <<>>, do: <<(a - 32768) / 32768::float-32-native>>
    Dense.new(data, {rows, cols}, {:f, 32})
  end

  def rss_kb do
    case File.read("/proc/self/status") do
      {:ok, status} ->
        [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, status)
        String.to_integer(kb)

      _ ->
        0
    end
  end

  def ping_loop(parent, latencies) do
    receive do
      :stop -> send(parent, {:latencies, latencies})
    after
      0 ->
        t0 = System.monotonic_time(:microsecond)
        Process.sleep(1)
        late = System.monotonic_time(:microsecond) - t0 - 1000
        ping_loop(parent, [late | latencies])
    end
  end
end

[cycles] =
  case System.argv() do
    [n] -> [String.to_integer(n)]
    _ -> [10_000]
  end

IO.puts(
  "nx_quant stress: #{System.schedulers_online()} schedulers, #{:erlang.system_info(:dirty_cpu_schedulers)} dirty CPU schedulers"
)

# 1. Responsiveness under load.
qt = Core.quantize(Stress.dense(4096, 4096, 1), type: {:s, 4}, group_size: 64)
x = Stress.dense(32, 4096, 2)
parent = self()
pinger = spawn(fn -> Stress.ping_loop(parent, []) end)
t0 = System.monotonic_time(:millisecond)

1..200
|> Task.async_stream(fn _ -> Core.quantized_matmul(x, qt) end,
  max_concurrency: 200,
  timeout: :infinity
)
|> Stream.run()

elapsed = System.monotonic_time(:millisecond) - t0
send(pinger, :stop)
latencies = receive do: ({:latencies, l} -> Enum.sort(l))
p99 = Enum.at(latencies, div(length(latencies) * 99, 100))

IO.puts(
  "200 concurrent 32x4096x4096 matmuls in #{elapsed} ms; ping lateness over #{length(latencies)} pings: " <>
    "p99 #{p99} us, worst #{List.last(latencies)} us"
)

# 2. Memory across create/use/drop cycles.
small = Stress.dense(512, 1024, 3)
xs = Stress.dense(1, 1024, 4)
:erlang.garbage_collect()
before_mem = :erlang.memory(:total)
before_rss = Stress.rss_kb()

for i <- 1..cycles do
  q = Core.quantize(small, type: {:s, 4}, group_size: 64)
  _ = Core.quantized_matmul(xs, q)
  _ = Core.parts(q)
  if rem(i, 1000) == 0, do: :erlang.garbage_collect()
end

for pid <- Process.list(), do: :erlang.garbage_collect(pid)
after_mem = :erlang.memory(:total)
after_rss = Stress.rss_kb()

IO.puts(
  "#{cycles} cycles of a 512x1024 quantized tensor (each ~#{div(512 * 1024 * 5, 8 * 1024)} KB native): " <>
    ":erlang.memory(:total) #{before_mem} -> #{after_mem} bytes (#{after_mem - before_mem}), " <>
    "RSS #{before_rss} -> #{after_rss} KB (#{after_rss - before_rss})"
)
