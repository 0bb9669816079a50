defmodule NxQuant.Convert do
  @moduledoc """
  Converts a dense safetensors checkpoint (one file or shards) into an MLX-community quantized
  one, one tensor at a time: each source shard becomes an output shard of the same name whose
  header is planned from the source header, then each tensor is read from the mapping,
  quantized (or copied) and written before the next is touched. Memory stays around one tensor
  whatever the checkpoint's size.

  Quantized: 2-D (or higher) float `*.weight` tensors whose last axis divides by the group
  size, in the run's format (`:mode`, `:bits`, `:group_size`) or the one a `:recipe` rule gives
  them (`NxQuant.Recipe`); 3-D expert stacks become batched quantized tensors. Kept dense:
  norms, biases, 1-D tensors, non-float tensors, names matching a `:skip` pattern, layers a
  rule makes `dense`, and embeddings (`embed` in the name) unless `embeddings: true` or a rule
  names them.

  The destination is written atomically (`NxQuant.OutputDir`): it must not be the source's
  directory, lie inside it or contain it; a non-empty destination is refused unless
  `force: true`, which replaces it as a whole; a run that fails or is killed leaves it as it
  was. Besides the shards and config.json, the destination gets the source directory's other
  files: for a directory source, every other regular file (README, LICENSE, tokenizer, ...;
  not hidden files, `*.safetensors`, the index or `*.tmp*` leftovers); for a single-file
  source (`dir/model.safetensors`), only the files a model needs from its directory, named
  explicitly: #{Enum.map_join(~w(generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json added_tokens.json tokenizer.model vocab.json vocab.txt merges.txt chat_template.jinja chat_template.json preprocessor_config.json), ", ", &"`#{&1}`")}.
  """

  alias NxQuant.{Checkpoint, Core, OutputDir, Safetensors, Validate}

  # What a single-file source's directory contributes besides config.json (see the moduledoc).
  @model_files ~w(generation_config.json tokenizer.json tokenizer_config.json
                  special_tokens_map.json added_tokens.json tokenizer.model vocab.json vocab.txt
                  merges.txt chat_template.jinja chat_template.json preprocessor_config.json)

  @doc "The files a single-file source's directory contributes besides config.json."
  def model_files, do: @model_files

  @float_dtypes ~w(F32 F16 BF16)

  @type stats :: %{
          bytes_in: non_neg_integer(),
          bytes_out: non_neg_integer(),
          seconds: float(),
          quantized: non_neg_integer(),
          dense: non_neg_integer()
        }

  @doc """
  Options: `:mode` (MLX's `:affine` (default), `:mxfp4`, `:mxfp8` or `:nvfp4`, or the
  string), `:bits` and `:group_size` (default: the mode's, affine 4 and 64; the microscaled
  modes fix both), `:recipe` (per-layer formats, see `NxQuant.Recipe`), `:skip` (list of
  substrings or regexes), `:embeddings` (false), `:progress` (a fun receiving
  `{done_bytes, total_bytes}`, or nil), `:force` (false: replace a non-empty destination),
  `:mmap` (false: read the source through a mapping instead of into owned memory; see
  `NxQuant.Safetensors` for its risk).

  config.json gets mlx-lm's quantization block: the run's default format at the top level and
  every layer quantized in another format (by the recipe) as an entry of its own.
  """
  @spec run(Path.t(), Path.t(), keyword()) :: stats()
  def run(src, dst, opts \\ []) do
    options!(opts)
    default = default_format!(opts)
    recipe = NxQuant.Recipe.parse!(Keyword.get(opts, :recipe))

    progress = Keyword.get(opts, :progress)
    started = System.monotonic_time()
    Process.delete({__MODULE__, :done})
    OutputDir.force?(opts)

    src = IO.chardata_to_string(src)
    ckpt = Checkpoint.open(src, mmap: Safetensors.mmap?(opts))
    OutputDir.check_apart!(ckpt.dir, dst)

    if Enum.any?(ckpt.layers, &match?({_, {:quantized, _, _, _, _}}, &1)) do
      raise ArgumentError, "#{NxQuant.Validate.printable(ckpt.dir)} is already quantized"
    end

    single_file = File.regular?(src)

    OutputDir.write!(
      dst,
      opts,
      &convert_into(ckpt, &1, single_file, {default, recipe}, opts, progress, started)
    )
  end

  defp default_format!(opts) do
    mode = Validate.mode!(opts, "convert")

    {bits, group_size} =
      Validate.quant_spec!(Keyword.take(opts, [:bits, :group_size]), "convert", mode)

    %{mode: Atom.to_string(mode), bits: bits, group_size: group_size}
  end

  defp convert_into(ckpt, dst, single_file, {default, recipe}, opts, progress, started) do
    total = ckpt.files |> Map.values() |> Enum.map(&File.stat!(&1.path).size) |> Enum.sum()
    decide = &format_for(&1, &2, default, recipe, opts)

    {weight_map, stats} =
      ckpt.files
      |> Enum.sort_by(&elem(&1, 0))
      |> Enum.reduce({%{}, %{bytes_in: 0, bytes_out: 0, quantized: 0, dense: 0}}, fn {shard, file},
                                                                                     {map, stats} ->
        out = Path.join(dst, shard)
        {names, formats, stats} = convert_file(file, out, decide, progress, total, stats)
        map = Enum.reduce(names, map, &Map.put(&2, &1, shard))
        {map, Map.update(stats, :formats, formats, &(&1 ++ formats))}
      end)

    {formats, stats} = Map.pop(stats, :formats, [])
    config = Map.merge(ckpt.config, quantization(default, formats))
    Checkpoint.write_config(dst, config)

    if map_size(ckpt.files) > 1 do
      index = %{"metadata" => %{"total_size" => stats.bytes_out}, "weight_map" => weight_map}

      File.write!(
        Path.join(dst, "model.safetensors.index.json"),
        NxQuant.NIF.json_encode(index, true)
      )
    end

    copy_other_files(ckpt.dir, dst, single_file)

    seconds =
      System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond) / 1.0e6

    Map.put(stats, :seconds, seconds)
  end

  @doc "Whether a tensor is quantized with `group_size` and no recipe (see the module doc)."
  def quantize?(name, info, group_size, opts) do
    format_for(name, info, %{mode: "affine", bits: 4, group_size: group_size}, [], opts) != nil
  end

  @doc """
  The format a tensor is quantized in (`nil`: kept dense): the first matching recipe rule's,
  else `default`, for tensors that can be quantized (see the module doc and `NxQuant.Recipe`).
  """
  def format_for(name, %{dtype: dtype, shape: shape} = info, default, recipe, opts) do
    skip = Keyword.get(opts, :skip, [])
    base = String.replace_suffix(name, ".weight", "")
    cols = if tuple_size(shape) >= 2, do: elem(shape, tuple_size(shape) - 1), else: 0

    candidate =
      dtype in @float_dtypes and tuple_size(shape) >= 2 and String.ends_with?(name, ".weight") and
        cols > 0 and not String.contains?(name, "norm") and
        not Enum.any?(skip, &matches?(name, &1))

    ruled = if candidate, do: NxQuant.Recipe.match(recipe, base, info)
    format = if ruled in [nil, :dense], do: default, else: ruled

    quantizable =
      candidate and rem(cols, format.group_size) == 0 and
        (ruled != nil or Keyword.get(opts, :embeddings, false) or
           not String.contains?(name, "embed"))

    if quantizable and ruled != :dense, do: format
  end

  # The options run/3 reads, checked before anything is opened or written.
  defp options!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "convert options must be a keyword list, got: #{NxQuant.Validate.describe(opts)}"
    end

    skip = Keyword.get(opts, :skip, [])

    unless is_list(skip) and Enum.all?(skip, &(is_binary(&1) or is_struct(&1, Regex))) do
      raise ArgumentError,
            "convert option :skip must be a list of substrings or regexes, got: " <>
              NxQuant.Validate.describe(skip)
    end

    unless is_boolean(Keyword.get(opts, :embeddings, false)) do
      raise ArgumentError,
            "convert option :embeddings must be a boolean, got: " <>
              NxQuant.Validate.describe(opts[:embeddings])
    end

    unless Keyword.get(opts, :progress) == nil or is_function(opts[:progress], 1) do
      raise ArgumentError,
            "convert option :progress must be nil or a 1-arity function, got: " <>
              NxQuant.Validate.describe(opts[:progress])
    end
  end

  defp matches?(name, %Regex{} = re), do: Regex.match?(re, name)
  defp matches?(name, text) when is_binary(text), do: String.contains?(name, text)

  defp quantization(default, formats) do
    block = NxQuant.QuantizationConfig.encode(formats, default)
    %{"quantization" => block, "quantization_config" => block}
  end

  defp convert_file(file, out, decide, progress, total, stats) do
    # Source order (by offset) keeps reads sequential.
    names =
      file.tensors
      |> Enum.sort_by(fn {name, info} -> {info.bytes == 0, name} end)
      |> Enum.map(&elem(&1, 0))

    formats = Map.new(names, &{&1, decide.(&1, file.tensors[&1])})

    plan =
      Enum.flat_map(names, fn name ->
        info = file.tensors[name]

        case formats[name] do
          nil ->
            [{name, info.type, info.shape, {:copy, name}}]

          %{mode: mode, bits: bits, group_size: group_size} = format ->
            base = String.replace_suffix(name, ".weight", "")
            last = tuple_size(info.shape) - 1
            cols = elem(info.shape, last)
            words = put_elem(info.shape, last, div(cols * bits, 32))
            groups = put_elem(info.shape, last, div(cols, group_size))

            if mode == "affine" do
              [
                {"#{base}.weight", {:u, 32}, words, {:quantized, name, format}},
                {"#{base}.scales", info.type, groups, {:scales, name}},
                {"#{base}.biases", info.type, groups, {:biases, name}}
              ]
            else
              # microscaled: uint8 scales, no biases
              [
                {"#{base}.weight", {:u, 32}, words, {:quantized, name, format}},
                {"#{base}.scales", {:u, 8}, groups, {:last_scales, name}}
              ]
            end
        end
      end)

    sources = Map.new(plan, fn {out_name, _, _, source} -> {out_name, source} end)
    specs = Enum.map(plan, fn {n, t, s, _} -> {n, t, s} end)
    # The quantized parts of the current tensor, made when its .weight is written.
    Process.put({__MODULE__, :parts}, nil)

    Safetensors.write_planned(out, specs, file.metadata, fn out_name ->
      case sources[out_name] do
        {:copy, name} ->
          data = Safetensors.read(file, name).data
          tick(progress, total, byte_size(data))
          data

        {:quantized, name, %{mode: mode, bits: bits, group_size: group_size}} ->
          dense = Safetensors.read(file, name)

          qt =
            Core.quantize(dense,
              mode: String.to_existing_atom(mode),
              bits: bits,
              group_size: group_size
            )

          parts = Core.parts(qt)
          Process.put({__MODULE__, :parts}, parts)
          tick(progress, total, byte_size(dense.data))
          parts.packed.data

        {part, _name} ->
          parts = Process.get({__MODULE__, :parts})
          # the layer's last part: its native resource can go
          if part in [:biases, :last_scales], do: Process.put({__MODULE__, :parts}, nil)
          :erlang.garbage_collect()
          Map.fetch!(parts, if(part == :last_scales, do: :scales, else: part)).data
      end
    end)

    quantized = Enum.count(plan, &match?({_, _, _, {:quantized, _, _}}, &1))
    copied = Enum.count(plan, &match?({_, _, _, {:copy, _}}, &1))
    bytes_in = file.tensors |> Map.values() |> Enum.map(& &1.bytes) |> Enum.sum()

    stats = %{
      stats
      | bytes_in: stats.bytes_in + bytes_in,
        bytes_out: stats.bytes_out + File.stat!(out).size,
        quantized: stats.quantized + quantized,
        dense: stats.dense + copied
    }

    used =
      for {name, %{} = format} <- formats,
          do: {String.replace_suffix(name, ".weight", ""), format}

    {Enum.map(specs, &elem(&1, 0)), used, stats}
  end

  defp tick(nil, _total, _bytes), do: :ok

  defp tick(fun, total, bytes) do
    done = Process.get({__MODULE__, :done}, 0) + bytes
    Process.put({__MODULE__, :done}, done)
    fun.({done, total})
  end

  defp copy_other_files(src_dir, dst, single_file) do
    names =
      if single_file do
        @model_files
      else
        for name <- File.ls!(src_dir),
            not String.starts_with?(name, "."),
            not String.ends_with?(name, ".safetensors"),
            not String.contains?(name, ".tmp"),
            name not in ["config.json", "model.safetensors.index.json"],
            do: name
      end

    # Regular files only: a FIFO would block the copy.
    for name <- names,
        match?({:ok, %File.Stat{type: :regular}}, File.stat(Path.join(src_dir, name))) do
      File.cp!(Path.join(src_dir, name), Path.join(dst, name))
    end

    :ok
  end
end
