defmodule Mix.Tasks.NxQuant.Convert do
  @shortdoc "Quantizes a dense safetensors checkpoint into MLX-community format"
  @moduledoc """
  Quantizes a dense safetensors checkpoint (a file, or a directory with one file or shards)
  into an MLX-community quantized checkpoint that MLX, mlx-lm and nx_quant load.

      mix nx_quant.convert SRC DST [--bits 4] [--group-size 64] [--skip PATTERN]... [--embeddings] [--force]

  Memory stays around one tensor at a time (see `NxQuant.Convert`); a progress bar shows the
  bytes read and the rate. DST is written atomically: it must not be SRC's directory (or
  inside it), and a non-empty DST is refused unless `--force`, which replaces it as a whole.
  """
  use Mix.Task

  @switches [
    bits: :integer,
    group_size: :integer,
    skip: :keep,
    embeddings: :boolean,
    force: :boolean,
    quiet: :boolean
  ]

  @impl true
  def run(argv) do
    {opts, args, invalid} = OptionParser.parse(argv, strict: @switches)

    case {args, invalid} do
      {[src, dst], []} ->
        Mix.Task.run("app.start")
        skip = Keyword.get_values(opts, :skip)
        progress = if opts[:quiet], do: nil, else: progress_bar()

        stats =
          NxQuant.Convert.run(src, dst,
            bits: Keyword.get(opts, :bits, 4),
            group_size: Keyword.get(opts, :group_size, 64),
            skip: skip,
            embeddings: Keyword.get(opts, :embeddings, false),
            force: Keyword.get(opts, :force, false),
            progress: progress
          )

        mb = stats.bytes_in / 1.0e6

        Mix.shell().info(
          "\n#{src} -> #{dst}: #{stats.quantized} quantized, #{stats.dense} dense tensors; " <>
            "#{Float.round(mb, 1)} MB -> #{Float.round(stats.bytes_out / 1.0e6, 1)} MB in " <>
            "#{Float.round(stats.seconds, 2)} s (#{Float.round(mb / max(stats.seconds, 1.0e-9), 1)} MB/s)"
        )

      _ ->
        Mix.raise(
          "usage: mix nx_quant.convert SRC DST [--bits 4] [--group-size 64] [--skip PATTERN] [--embeddings] [--force]" <>
            if(invalid != [], do: " (bad options: #{inspect(invalid)})", else: "")
        )
    end
  end

  defp progress_bar do
    started = System.monotonic_time(:millisecond)

    fn {done, total} ->
      seconds = max(System.monotonic_time(:millisecond) - started, 1) / 1000
      width = 30
      filled = if total > 0, do: round(width * done / total), else: width
      bar = String.duplicate("=", filled) <> String.duplicate(" ", width - filled)
      percent = if total > 0, do: round(100 * done / total), else: 100
      rate = Float.round(done / 1.0e6 / seconds, 1)
      IO.write(:stderr, "\r[#{bar}] #{percent}% #{Float.round(done / 1.0e6, 1)} MB #{rate} MB/s")
    end
  end
end
