# Checkpoint loading, owned memory (the default) vs mmap: true, on a ~1.1 GB checkpoint
# (14 dense bf16 tensors of 64 MB, 8 quantized 4-bit 8192 x 8192 layers of 36 MB).
#
#   mix run bench/checkpoint_load_bench.exs            # writes the checkpoint, then measures
#   NX_QUANT_BENCH_ROUNDS=3 mix run bench/checkpoint_load_bench.exs
#
# Each measurement runs in its own OS process (a fresh `elixir` on this build's code path), so
# its peak RSS (VmHWM of /proc/self/status) is that mode's alone: open (headers), fetch every
# tensor, then touch every page (one byte per 4 KB of each dense binary and each layer's packed
# words: what first use costs on top; with mmap that is when pages are read). The file is in
# the page cache (just written; run `echo 3 > /proc/sys/vm/drop_caches` between rounds for cold
# figures where allowed — the script tries and says whether it could).
alias NxQuant.{Checkpoint, Core, Dense, QuantizedTensor}

defmodule LoadBench do
  def measure(dir, mmap) do
    hwm0 = hwm_kb()
    {open_us, ckpt} = :timer.tc(fn -> Checkpoint.open(dir, mmap: mmap) end)
    names = Checkpoint.names(ckpt)
    {fetch_us, tensors} = :timer.tc(fn -> Enum.map(names, &Checkpoint.fetch!(ckpt, &1)) end)
    hwm_fetch = hwm_kb()

    # One byte of every 4 KB page: what first use costs on top of the fetch (page faults, and
    # with mmap the reads themselves), without the cost of any computation.
    {touch_us, _} =
      :timer.tc(fn ->
        Enum.reduce(tensors, 0, fn tensor, acc ->
          data =
            case tensor do
              %Dense{data: data} -> data
              %QuantizedTensor{} = q -> Core.parts(q).packed.data
            end

          touch(data, 0, byte_size(data), acc)
        end)
      end)

    status = File.read!("/proc/self/status")

    %{
      open_ms: open_us / 1000,
      fetch_ms: fetch_us / 1000,
      touch_ms: touch_us / 1000,
      rss_start_mb: hwm0 / 1024,
      rss_after_fetch_mb: hwm_fetch / 1024,
      rss_peak_mb: hwm_kb() / 1024,
      rss_anon_mb: kb(status, "RssAnon") / 1024,
      rss_file_mb: kb(status, "RssFile") / 1024
    }
  end

  defp touch(data, at, size, acc) when at < size,
    do: touch(data, at + 4096, size, acc + :binary.at(data, at))

  defp touch(_data, _at, _size, acc), do: acc

  defp kb(status, key) do
    [_, kb] = Regex.run(~r/#{key}:\s+(\d+) kB/, status)
    String.to_integer(kb)
  end

  defp hwm_kb do
    [_, kb] = Regex.run(~r/VmHWM:\s+(\d+) kB/, File.read!("/proc/self/status"))
    String.to_integer(kb)
  end
end

case System.argv() do
  ["measure", dir, mode] ->
    result = LoadBench.measure(dir, mode == "mmap")
    IO.puts("RESULT:" <> Base.encode64(:erlang.term_to_binary(result)))

  [] ->
    rounds = String.to_integer(System.get_env("NX_QUANT_BENCH_ROUNDS", "3"))

    dir =
      Path.join(System.tmp_dir!(), "nx_quant_load_bench_#{System.unique_integer([:positive])}")

    File.mkdir_p!(dir)
    mb = 1024 * 1024
    bf16 = fn shape -> {shape, {:bf, 16}} end

    # Random bytes are enough for loading (values do not matter; dense bf16 NaNs are fine).
    dense = for i <- 1..14, do: {"dense#{i}.weight", bf16.({4096, 8192})}

    quantized =
      for i <- 1..8 do
        packed = Dense.new(:crypto.strong_rand_bytes(8192 * 1024 * 4), {8192, 1024}, {:u, 32})
        scales = Dense.new(:binary.copy(<<0x3C00::16-little>>, 8192 * 128), {8192, 128}, {:f, 16})
        qt = Core.quantized_tensor(packed, scales, scales, {8192, 8192}, bits: 4, group_size: 64)
        {"layer#{i}.weight", qt}
      end

    entries =
      Enum.map(dense, fn {name, {shape, type}} ->
        {name, Dense.new(:crypto.strong_rand_bytes(64 * mb), shape, type)}
      end)

    :ok = Checkpoint.save(dir, Map.new(entries ++ quantized), force: true)
    size = File.stat!(Path.join(dir, "model.safetensors")).size

    IO.puts(
      "checkpoint: #{Float.round(size / 1.0e9, 3)} GB, #{length(entries)} dense + 8 quantized"
    )

    ebin = Path.join(List.to_string(:code.lib_dir(:nx_quant)), "ebin")
    {:ok, la} = File.read("/proc/loadavg")
    IO.puts("load average before: #{la |> String.split() |> Enum.take(3) |> Enum.join(" ")}")

    drop = fn ->
      case File.write("/proc/sys/vm/drop_caches", "3") do
        :ok -> :cold
        {:error, _} -> :warm
      end
    end

    runs =
      for round <- 1..rounds, mode <- ["owned", "mmap"] do
        cache = if System.get_env("NX_QUANT_BENCH_COLD") == "1", do: drop.(), else: :warm

        {out, 0} =
          System.cmd("elixir", ["-pa", ebin, __ENV__.file, "measure", dir, mode],
            stderr_to_stdout: true
          )

        [_, b64] = Regex.run(~r/RESULT:(\S+)/, out)
        r = :erlang.binary_to_term(Base.decode64!(b64))

        IO.puts(
          "round #{round} #{String.pad_trailing(mode, 5)} (#{cache}): open #{Float.round(r.open_ms, 2)} ms, " <>
            "fetch all #{Float.round(r.fetch_ms, 1)} ms, touch all #{Float.round(r.touch_ms, 1)} ms, " <>
            "peak RSS #{round(r.rss_peak_mb)} MB (#{round(r.rss_after_fetch_mb)} MB after fetch, " <>
            "#{round(r.rss_start_mb)} MB at start; at the end anonymous #{round(r.rss_anon_mb)} MB, " <>
            "file-backed #{round(r.rss_file_mb)} MB)"
        )

        {mode, r}
      end

    {:ok, la} = File.read("/proc/loadavg")
    IO.puts("load average after: #{la |> String.split() |> Enum.take(3) |> Enum.join(" ")}")

    for mode <- ["owned", "mmap"] do
      rs = for {^mode, r} <- runs, do: r

      med = fn key ->
        rs |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sort() |> Enum.at(div(length(rs), 2))
      end

      IO.puts(
        "median #{mode}: open #{Float.round(med.(:open_ms), 2)} ms, fetch #{Float.round(med.(:fetch_ms), 1)} ms, " <>
          "touch #{Float.round(med.(:touch_ms), 1)} ms, peak RSS #{round(med.(:rss_peak_mb))} MB " <>
          "(anonymous #{round(med.(:rss_anon_mb))} MB, file-backed #{round(med.(:rss_file_mb))} MB)"
      )
    end

    File.rm_rf!(dir)
end
