# The machine's read bandwidth for the Elixir benchmarks' bounds (decoder_bench.exs,
# bumblebee_generation_bench.exs). Code.require_file it.
defmodule ReadBandwidth do
  @moduledoc false

  # The read bandwidth in GB/s and how it was measured. Preferred: the project's own streaming
  # read (BM_ReadBandwidth in bench/qmatmul_bench.cpp: 512 MB with AVX-512 loads over 2
  # threads, with and without software prefetch, the larger), the ceiling the GEMV ratios in
  # bench/RESULTS.md use. Else from Elixir: one :binary.match scan (memchr-like, for a byte that
  # is absent) of a 512 MB binary per scheduler, concurrently, best of 5 — a lower bound of the
  # machine's read bandwidth (one scan is partly compute-bound), so the decoder's ratio to the
  # bound it gives is flattering.
  def measure do
    bench = System.get_env("NX_QUANT_BENCH", Path.join(File.cwd!(), "build-bench/nx_quant_bench"))

    case File.exists?(bench) && cpp(bench) do
      gbs when is_float(gbs) -> {gbs, "BM_ReadBandwidth (C++, 512 MB, 2 threads)"}
      _ -> {elixir(), "Elixir :binary.match scans, 512 MB, one per scheduler (a lower bound)"}
    end
  end

  defp cpp(bench) do
    {out, 0} =
      System.cmd(bench, [
        "--benchmark_filter=BM_ReadBandwidth/2/",
        "--benchmark_repetitions=3",
        "--benchmark_format=csv"
      ])

    [header | rows] =
      out |> String.split("\n") |> Enum.drop_while(&(not String.starts_with?(&1, "name,")))

    column = header |> String.split(",") |> Enum.find_index(&(&1 == "\"GB/s\"" or &1 == "GB/s"))

    rows
    |> Enum.filter(&String.starts_with?(&1, "\"BM_ReadBandwidth/2/"))
    |> Enum.reject(&(&1 =~ ~r/_(mean|median|stddev|cv)"/))
    |> Enum.map(fn row ->
      row |> String.split(",") |> Enum.at(column) |> Float.parse() |> elem(0)
    end)
    |> Enum.max(fn -> nil end)
  rescue
    _ -> nil
  end

  defp elixir do
    bytes = 512 * 1024 * 1024
    bin = :binary.copy(<<0>>, bytes)
    parts = System.schedulers_online()
    chunk = div(bytes, parts)

    for _ <- 1..5 do
      t0 = System.monotonic_time(:nanosecond)

      for(
        i <- 0..(parts - 1),
        do: Task.async(fn -> :binary.match(bin, <<1>>, scope: {i * chunk, chunk}) end)
      )
      |> Task.await_many(:infinity)

      chunk * parts / (System.monotonic_time(:nanosecond) - t0)
    end
    |> Enum.max()
  end
end
