defmodule Mix.Tasks.NxQuant.Convert do
  @shortdoc "Quantizes a dense safetensors checkpoint into MLX-community format"
  @moduledoc """
  Quantizes a dense safetensors checkpoint (a file, or a directory with one file or shards)
  into an MLX-community quantized checkpoint that MLX, mlx-lm and nx_quant load.

      mix nx_quant.convert SRC DST [--mode affine|mxfp4|mxfp8|nvfp4] [--bits 4] [--group-size 64]
        [--recipe RULES] [--skip PATTERN]... [--embeddings] [--force]

  `--mode` is MLX's quantization mode (default `affine`); `--bits` and `--group-size` default
  to the mode's (affine 4 and 64; mxfp4 4/32, mxfp8 8/32, nvfp4 4/16 are fixed). `--recipe`
  gives layers other formats, as mlx-lm's mixed recipes do, e.g.

      mix nx_quant.convert gpt-oss gpt-oss-mx --mode mxfp4 \\
        --recipe 'self_attn=affine:8:64,router=affine:8,lm_head=dense'

  (experts in mxfp4, attention and router in 8-bit affine, lm_head dense; embeddings and norms
  stay dense). Rules are `PATTERN=FORMAT`, the first match wins; see `NxQuant.Recipe` for
  the matching rule. config.json records each layer's mode, bits and group size as mlx-lm does.

  Memory stays around one tensor at a time (see `NxQuant.Convert`); a progress bar shows the
  bytes read and the rate. DST is written atomically: it must not be SRC's directory (or
  inside it), and a non-empty DST is refused unless `--force`, which replaces it as a whole.
  """
  use Mix.Task

  @switches [
    mode: :string,
    recipe: :string,
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
        if opts[:mode] && opts[:mode] not in NxQuant.QuantizationConfig.modes() do
          Mix.raise(
            "--mode must be one of #{Enum.join(NxQuant.QuantizationConfig.modes(), ", ")}, " <>
              "got: #{opts[:mode]}"
          )
        end

        Mix.Task.run("app.start")
        skip = Keyword.get_values(opts, :skip)
        progress = if opts[:quiet], do: nil, else: progress_bar()

        stats =
          NxQuant.Convert.run(
            src,
            dst,
            Keyword.take(opts, [:mode, :bits, :group_size, :recipe]) ++
              [
                skip: skip,
                embeddings: Keyword.get(opts, :embeddings, false),
                force: Keyword.get(opts, :force, false),
                progress: progress
              ]
          )

        mb = stats.bytes_in / 1.0e6

        Mix.shell().info(
          "\n#{src} -> #{dst}: #{stats.quantized} quantized, #{stats.dense} dense tensors; " <>
            "#{Float.round(mb, 1)} MB -> #{Float.round(stats.bytes_out / 1.0e6, 1)} MB in " <>
            "#{Float.round(stats.seconds, 2)} s (#{Float.round(mb / max(stats.seconds, 1.0e-9), 1)} MB/s)"
        )

      _ ->
        Mix.raise(
          "usage: mix nx_quant.convert SRC DST [--mode affine|mxfp4|mxfp8|nvfp4] [--bits 4] " <>
            "[--group-size 64] [--recipe RULES] [--skip PATTERN] [--embeddings] [--force]" <>
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
