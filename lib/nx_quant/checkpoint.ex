defmodule NxQuant.Checkpoint do
  @moduledoc """
  MLX-community checkpoints (Nx-free): a directory with `config.json` and either
  `model.safetensors` or shards listed in `model.safetensors.index.json`. A quantized layer
  is `NAME.weight` (U32, packed) with `NAME.scales`: an affine layer also has `NAME.biases`
  (scales and biases of the model's float type); a microscaled one (`"mxfp4"`, `"mxfp8"`,
  `"nvfp4"`) has U8 scales and no biases. Each layer's mode, bits and group size come from
  config.json's `"quantization"` (or `"quantization_config"`) block, top level and per layer,
  with mlx-lm's rules (`NxQuant.QuantizationConfig`):
  `{"group_size": 32, "bits": 4, "mode": "mxfp4", "model.layers.0.mlp.router": {"bits": 8,
  "group_size": 64}}`, a per-layer `false` meaning the layer is dense. A layer whose tensors
  do not fit its declared format (biases in a microscaled layer, none in an affine one, scales
  of the wrong dtype or shape, an unknown mode, bits or group size the mode does not have)
  is an `ArgumentError` naming the layer, raised by `open/2` (or `fetch!/2` for shapes).
  3-D (or higher) tensors, such as mlx-lm's `switch_mlp` experts `{E, N, K * bits / 32}`, are
  batched quantized tensors `{E, N, K}`.

  `open/2` opens every shard and reads its header (cheap, whatever the size) and `fetch!/2`
  reads one tensor (lazy loading); `load/2` fetches all of them. Keys are tensor names as a
  model uses them: a quantized layer is one entry, `"NAME.weight"`, whose value is an
  `NxQuant.QuantizedTensor`; every other tensor is an `NxQuant.Dense`. Tensors are read into
  memory they own unless `mmap: true` (see `NxQuant.Safetensors` for that option's risk: a
  shard truncated while mapped kills the VM).

  Shards, the index and config.json must be regular files (symlinks followed): a FIFO or a
  device is an `ArgumentError`, never a blocked read.

  `save/3` writes the same layout (and config.json's quantization block) so that MLX and
  mlx-lm load it, atomically (`NxQuant.OutputDir`).
  """

  alias NxQuant.{Dense, NIF, OutputDir, QuantizationConfig, QuantizedTensor, Safetensors}

  @enforce_keys [:dir, :config, :files, :shard_of, :layers]
  defstruct [:dir, :config, :files, :shard_of, :layers, dtype: {:bf, 16}]

  @type t :: %__MODULE__{
          dir: String.t(),
          config: map(),
          files: %{String.t() => Safetensors.t()},
          shard_of: %{String.t() => String.t()},
          layers: %{
            String.t() =>
              {:quantized, String.t(), pos_integer(), pos_integer(), String.t()}
              | {:dense, String.t()}
          },
          dtype: {:f, 32} | {:f, 16} | {:bf, 16}
        }

  @index "model.safetensors.index.json"
  @dtypes %{"float32" => {:f, 32}, "float16" => {:f, 16}, "bfloat16" => {:bf, 16}}

  @doc """
  Opens a checkpoint directory (or a single .safetensors file). Options: `:mode`, `:bits` and
  `:group_size`, the default format of quantized layers (when config.json has no quantization
  block; they replace its top level otherwise); `:dtype`, the type microscaled layers
  dequantize to (default: config.json's `"torch_dtype"` or `"dtype"`, else `{:bf, 16}`);
  `:mmap` (default false) to map the shards instead of reading tensors into owned memory
  (microscaled layers are then copied once into their native resource).
  """
  @spec open(Path.t(), keyword()) :: t()
  def open(path, opts \\ []) do
    options!(opts, "open/2")
    path = path!(path, "open/2")
    mmap = Safetensors.mmap?(opts)
    {dir, shards} = shards!(path)
    config = read_config(dir)

    files =
      Map.new(shards, fn shard ->
        {shard, Safetensors.open!(Path.join(dir, shard), mmap: mmap)}
      end)

    shard_of =
      Enum.reduce(files, %{}, fn {shard, file}, acc ->
        Enum.reduce(Map.keys(file.tensors), acc, fn name, acc ->
          if Map.has_key?(acc, name) do
            raise ArgumentError,
                  "#{shown(dir)}: tensor '#{name}' is in both #{shown(acc[name])} and #{shown(shard)}"
          end

          Map.put(acc, name, shard)
        end)
      end)

    layers = layers(files, shard_of, config, opts, dir)
    dtype = microscaled_dtype(config, opts)

    %__MODULE__{
      dir: dir,
      config: config,
      files: files,
      shard_of: shard_of,
      layers: layers,
      dtype: dtype
    }
  end

  @doc "Names of the tensors `fetch!/2` and `load/2` give, sorted."
  @spec names(t()) :: [String.t()]
  def names(%__MODULE__{layers: layers}), do: layers |> Map.keys() |> Enum.sort()

  @doc "One tensor: quantized for a quantized layer's `NAME.weight`, dense otherwise."
  @spec fetch!(t(), String.t()) :: QuantizedTensor.t() | Dense.t()
  def fetch!(%__MODULE__{} = ckpt, name) do
    case Map.fetch(ckpt.layers, name) do
      {:ok, {:quantized, base, bits, group_size, mode}} ->
        shard = ckpt.shard_of["#{base}.weight"]
        parts = if mode == "affine", do: ~w(scales biases), else: ~w(scales)

        for part <- parts, ckpt.shard_of["#{base}.#{part}"] != shard do
          raise ArgumentError,
                "#{shown(ckpt.dir)}: '#{base}.#{part}' is not in the same shard as '#{base}.weight'"
        end

        if mode == "affine",
          do: Safetensors.read_quantized(ckpt.files[shard], base, bits, group_size),
          else: Safetensors.read_microscaled(ckpt.files[shard], base, mode, ckpt.dtype)

      {:ok, {:dense, name}} ->
        Safetensors.read(ckpt.files[ckpt.shard_of[name]], name)

      :error ->
        raise ArgumentError, "#{shown(ckpt.dir)} has no tensor '#{shown(name)}'"
    end
  end

  @doc """
  Loads a checkpoint as `%{name => tensor}`. Options: `:only` (a list of names or a
  predicate) for loading part of it, plus those of `open/2` (`:mmap`, ...).
  """
  @spec load(Path.t(), keyword()) :: %{String.t() => QuantizedTensor.t() | Dense.t()}
  def load(path, opts \\ []) do
    options!(opts, "load/2")
    {only, opts} = Keyword.pop(opts, :only)

    keep =
      case only do
        nil ->
          fn _ -> true end

        list when is_list(list) ->
          &(&1 in list)

        fun when is_function(fun, 1) ->
          fun

        other ->
          raise ArgumentError,
                "load/2 option :only must be a list of tensor names or a 1-arity function, " <>
                  "got: #{NxQuant.Validate.describe(other)}"
      end

    ckpt = open(path, opts)

    for name <- names(ckpt), keep.(name), into: %{}, do: {name, fetch!(ckpt, name)}
  end

  @doc """
  Saves `%{name => tensor}` as a checkpoint directory: `model.safetensors` in MLX's layout
  (affine triplets, microscaled weight/scales pairs, batched tensors with their leading axes),
  and `config.json` = `:config` (a map, default `%{}`) with a `"quantization"` block (and
  mlx-lm's `"quantization_config"` copy): the most common mode/bits/group_size as the
  default, other quantized layers as per-layer entries (`quantization_config/1`). When there
  are microscaled tensors, all of one dtype, and `:config` has no `"torch_dtype"` or
  `"dtype"`, `"torch_dtype"` records it, so that `load/2` gives it back. A quantization block
  in `:config` is replaced (it may describe other tensors, e.g. those of a checkpoint the
  tensors were loaded from and then dequantized).

  The directory is written atomically (`NxQuant.OutputDir`): a non-empty `dir` is refused
  unless `force: true`, which replaces it as a whole; config.json is encoded before anything
  is written, so a bad `:config` leaves `dir` untouched.
  """
  @spec save(Path.t(), map(), keyword()) :: :ok
  def save(dir, tensors, opts \\ []) do
    entries = tensors |> Enum.sort_by(&elem(&1, 0))

    config =
      case Keyword.get(opts, :config, %{}) do
        %{} = config ->
          config

        other ->
          raise ArgumentError, "the :config option must be a map, got: #{inspect(other)}"
      end

    # A :config's own quantization block (say, a loaded checkpoint's) would describe other
    # tensors: the block written is always the one of the tensors saved.
    config_json =
      config
      |> Map.drop(["quantization", "quantization_config"])
      |> Map.merge(dtype_config(config, entries))
      |> Map.merge(quantization_config(entries))
      |> encode_config()

    OutputDir.write!(dir, opts, fn tmp ->
      Safetensors.write(Path.join(tmp, "model.safetensors"), entries, %{"format" => "mlx"})
      File.write!(Path.join(tmp, "config.json"), config_json)
    end)

    :ok
  end

  @doc """
  config.json's quantization keys for a set of tensors (`%{}` when none is quantized):
  `"quantization"` and mlx-lm's `"quantization_config"` copy, as mlx-lm writes them
  (`NxQuant.QuantizationConfig.encode/1`): the most common format as the top level, every
  other quantized layer as an entry with its `"mode"`, `"bits"` and `"group_size"`.
  """
  @spec quantization_config([{String.t(), term()}]) :: map()
  def quantization_config(entries) do
    formats =
      for {name, %QuantizedTensor{config: c}} <- entries do
        {String.replace_suffix(name, ".weight", ""),
         %{mode: c.mode, bits: c.bits, group_size: c.group_size}}
      end

    case QuantizationConfig.encode(formats) do
      nil -> %{}
      block -> %{"quantization" => block, "quantization_config" => block}
    end
  end

  # "torch_dtype" for the type microscaled tensors dequantize to, which their files do not
  # hold, when the config has no dtype of its own and they all share one.
  defp dtype_config(config, entries) do
    dtypes =
      for {_, %QuantizedTensor{config: %{mode: mode}, dtype: dtype}} <- entries,
          mode != "affine",
          uniq: true,
          do: dtype

    names = Map.new(@dtypes, fn {name, type} -> {type, name} end)

    case dtypes do
      [dtype] when not is_map_key(config, "torch_dtype") and not is_map_key(config, "dtype") ->
        %{"torch_dtype" => names[dtype]}

      _ ->
        %{}
    end
  end

  @doc false
  def write_config(dir, config) do
    File.write!(Path.join(dir, "config.json"), encode_config(config))
  end

  @doc false
  def encode_config(config) do
    [NIF.json_encode(config, true), "\n"]
  rescue
    e in ArgumentError ->
      reraise ArgumentError, "config.json: #{Exception.message(e)}", __STACKTRACE__
  end

  @doc false
  def read_config(dir) do
    path = Path.join(dir, "config.json")
    if regular_file?(path, "config.json"), do: decode_config(path, dir), else: %{}
  end

  defp decode_config(path, dir) do
    case NIF.json_decode(File.read!(path)) do
      %{} = config ->
        config

      other ->
        raise ArgumentError, "#{shown(path)} must hold a JSON object, got #{inspect(other)}"
    end
  rescue
    e in ArgumentError ->
      reraise ArgumentError, "#{shown(dir)}/config.json: #{Exception.message(e)}", __STACKTRACE__
  end

  # ---- helpers ---------------------------------------------------------------------------

  # true for a regular file, false when missing; a FIFO, device, socket or directory there is
  # an error (reading it could block forever).
  @doc false
  def regular_file?(path, what) do
    case File.stat(path) do
      {:ok, %File.Stat{type: :regular}} ->
        true

      {:error, :enoent} ->
        false

      {:ok, %File.Stat{type: type}} ->
        raise ArgumentError,
              "#{shown(path)}: the #{what} must be a regular file, it is #{kind(type)}"

      {:error, reason} ->
        raise ArgumentError, "cannot stat #{shown(path)}: #{:file.format_error(reason)}"
    end
  end

  defp kind(:directory), do: "a directory"
  defp kind(:device), do: "a device"
  defp kind(_), do: "a special file (FIFO or socket)"

  # A path or name quoted in a message (valid UTF-8 whatever its bytes).
  defp shown(text), do: NxQuant.Validate.printable(text)

  defp options!(opts, fun) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "#{fun} options must be a keyword list, got: #{NxQuant.Validate.describe(opts)}"
    end
  end

  defp path!(path, fun) do
    IO.chardata_to_string(path)
  rescue
    _ in [ArgumentError, FunctionClauseError, UnicodeConversionError] ->
      raise ArgumentError,
            "#{fun} path must be a string (or chardata), got: #{NxQuant.Validate.describe(path)}"
  end

  defp shards!(path) do
    cond do
      File.regular?(path) ->
        {Path.dirname(path), [Path.basename(path)]}

      not File.dir?(path) and File.exists?(path) ->
        true = regular_file?(path, "checkpoint file")
        {Path.dirname(path), [Path.basename(path)]}

      File.dir?(path) and regular_file?(Path.join(path, @index), "index") ->
        index = NIF.json_decode(File.read!(Path.join(path, @index)))

        case index do
          %{"weight_map" => %{} = map} ->
            shards = map |> Map.values() |> Enum.uniq() |> Enum.sort()

            for shard <- shards, not is_binary(shard) or String.contains?(shard, ["/", "\\"]) do
              raise ArgumentError, "#{shown(path)}/#{@index}: bad shard name #{inspect(shard)}"
            end

            for shard <- shards, do: regular_file?(Path.join(path, shard), "shard")
            {path, shards}

          _ ->
            raise ArgumentError, "#{shown(path)}/#{@index} has no \"weight_map\" object"
        end

      File.dir?(path) ->
        files = path |> File.ls!() |> Enum.filter(&String.ends_with?(&1, ".safetensors"))
        if files == [], do: raise(ArgumentError, "#{shown(path)} holds no .safetensors file")
        for file <- files, do: regular_file?(Path.join(path, file), "shard")
        {path, Enum.sort(files)}

      true ->
        raise ArgumentError, "#{shown(path)}: no such checkpoint file or directory"
    end
  end

  # The type microscaled layers dequantize to (their files hold only codes and uint8 scales):
  # the :dtype option, else config.json's "torch_dtype" / "dtype" (also under "text_config"),
  # else bfloat16 (MLX's default).
  defp microscaled_dtype(config, opts) do
    case Keyword.fetch(opts, :dtype) do
      {:ok, type} ->
        unless type in Map.values(@dtypes) do
          raise ArgumentError,
                "open/2 option :dtype must be {:f, 32}, {:f, 16} or {:bf, 16}, got: " <>
                  NxQuant.Validate.describe(type)
        end

        type

      :error ->
        text = if is_map(config["text_config"]), do: config["text_config"], else: %{}

        [config["torch_dtype"], config["dtype"], text["torch_dtype"], text["dtype"]]
        |> Enum.find_value({:bf, 16}, &Map.get(@dtypes, &1))
    end
  end

  defp layers(files, shard_of, config, opts, dir) do
    where = "#{shown(dir)}/config.json"
    block = QuantizationConfig.block(config, where)
    default = QuantizationConfig.default(block, opts, where)

    triplets =
      for name <- Map.keys(shard_of),
          String.ends_with?(name, ".scales"),
          base = String.replace_suffix(name, ".scales", ""),
          Map.has_key?(shard_of, "#{base}.weight"),
          into: %{} do
        format =
          case QuantizationConfig.layer(block, base, where) do
            :dense ->
              raise ArgumentError,
                    "#{shown(dir)}: config.json marks '#{shown(base)}' dense (false) but it has scales"

            :default ->
              QuantizationConfig.check!(
                default,
                "#{shown(dir)}: quantized layer '#{shown(base)}'",
                "config.json's \"quantization\" or the :mode/:bits/:group_size options"
              )

            {:format, format} ->
              QuantizationConfig.check!(
                format,
                "#{shown(dir)}: quantized layer '#{shown(base)}'",
                "its entry in config.json's \"quantization\""
              )
          end

        parts!(files, shard_of, base, format, dir)
        {base, format}
      end

    declared_without_scales!(block, shard_of, triplets, dir)

    consumed =
      for {base, format} <- triplets,
          part <- parts_of(format),
          into: MapSet.new(),
          do: "#{base}.#{part}"

    dense =
      for name <- Map.keys(shard_of), name not in consumed, into: %{}, do: {name, {:dense, name}}

    quantized =
      for {base, %{mode: mode, bits: bits, group_size: gs}} <- triplets,
          into: %{},
          do: {"#{base}.weight", {:quantized, base, bits, gs, mode}}

    Map.merge(dense, quantized)
  end

  defp parts_of(%{mode: "affine"}), do: ~w(weight scales biases)
  defp parts_of(_microscaled), do: ~w(weight scales)

  # The tensors a layer's format needs are there and no others: affine has biases, a
  # microscaled mode has none and uint8 scales.
  defp parts!(files, shard_of, base, %{mode: mode}, dir) do
    has_biases = Map.has_key?(shard_of, "#{base}.biases")
    layer = "#{shown(dir)}: layer '#{shown(base)}'"

    case mode do
      "affine" ->
        unless has_biases do
          hint =
            if scales_dtype(files, shard_of, base) == "U8",
              do:
                " (its U8 scales look microscaled: config.json's \"quantization\" should " <>
                  "give its \"mode\", e.g. \"mxfp4\")",
              else: ""

          raise ArgumentError, "#{layer} has scales but no '#{shown(base)}.biases'#{hint}"
        end

      _ ->
        if has_biases do
          raise ArgumentError,
                "#{layer} is mode \"#{mode}\" in config.json, which has no biases, but the " <>
                  "checkpoint has '#{shown(base)}.biases' (an affine layer? check its \"mode\")"
        end

        case scales_dtype(files, shard_of, base) do
          "U8" ->
            :ok

          other ->
            raise ArgumentError,
                  "#{layer} is mode \"#{mode}\" in config.json, whose scales are U8, but " <>
                    "'#{shown(base)}.scales' has dtype #{other}"
        end
    end
  end

  # The dtype of BASE.scales from its shard's header (no read).
  defp scales_dtype(files, shard_of, base) do
    name = "#{base}.scales"
    files[shard_of[name]].tensors[name].dtype
  end

  # A layer config.json declares quantized (an object entry) whose weight is in the checkpoint
  # without scales would otherwise load as a dense U32 tensor.
  defp declared_without_scales!(nil, _shard_of, _triplets, _dir), do: :ok

  defp declared_without_scales!(block, shard_of, triplets, dir) do
    for {base, %{}} <- block,
        not Map.has_key?(triplets, base),
        Map.has_key?(shard_of, "#{base}.weight") do
      raise ArgumentError,
            "#{shown(dir)}: config.json's \"quantization\" declares layer '#{shown(base)}' " <>
              "quantized but the checkpoint has no '#{shown(base)}.scales'"
    end

    :ok
  end
end
