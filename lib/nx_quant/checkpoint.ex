defmodule NxQuant.Checkpoint do
  @moduledoc """
  MLX-community checkpoints (Nx-free): a directory with `config.json` and either
  `model.safetensors` or shards listed in `model.safetensors.index.json`. Every quantized
  layer is a triplet `NAME.weight` (U32, packed), `NAME.scales`, `NAME.biases`; its bits and
  group size come from config.json's `"quantization"` (or `"quantization_config"`):
  `{"group_size": 64, "bits": 4, "model.layers.0.mlp.gate_proj": {"bits": 8, "group_size": 64}}`,
  a per-layer `false` meaning the layer is dense.

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

  alias NxQuant.{Dense, NIF, OutputDir, QuantizedTensor, Safetensors}

  @enforce_keys [:dir, :config, :files, :shard_of, :layers]
  defstruct [:dir, :config, :files, :shard_of, :layers]

  @type t :: %__MODULE__{
          dir: String.t(),
          config: map(),
          files: %{String.t() => Safetensors.t()},
          shard_of: %{String.t() => String.t()},
          layers: %{
            String.t() =>
              {:quantized, String.t(), pos_integer(), pos_integer()} | {:dense, String.t()}
          }
        }

  @index "model.safetensors.index.json"

  @doc """
  Opens a checkpoint directory (or a single .safetensors file). Options: `:bits` and
  `:group_size` for quantized layers when config.json has no quantization block; `:mmap`
  (default false) to map the shards instead of reading tensors into owned memory.
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

    layers = layers(shard_of, config, opts, dir)
    %__MODULE__{dir: dir, config: config, files: files, shard_of: shard_of, layers: layers}
  end

  @doc "Names of the tensors `fetch!/2` and `load/2` give, sorted."
  @spec names(t()) :: [String.t()]
  def names(%__MODULE__{layers: layers}), do: layers |> Map.keys() |> Enum.sort()

  @doc "One tensor: quantized for a quantized layer's `NAME.weight`, dense otherwise."
  @spec fetch!(t(), String.t()) :: QuantizedTensor.t() | Dense.t()
  def fetch!(%__MODULE__{} = ckpt, name) do
    case Map.fetch(ckpt.layers, name) do
      {:ok, {:quantized, base, bits, group_size}} ->
        shard = ckpt.shard_of["#{base}.weight"]

        for part <- ~w(scales biases), ckpt.shard_of["#{base}.#{part}"] != shard do
          raise ArgumentError,
                "#{shown(ckpt.dir)}: '#{base}.#{part}' is not in the same shard as '#{base}.weight'"
        end

        Safetensors.read_quantized(ckpt.files[shard], base, bits, group_size)

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
  Saves `%{name => tensor}` as a checkpoint directory: `model.safetensors`, and
  `config.json` = `:config` (a map, default `%{}`) with a `"quantization"` block (and
  mlx-lm's `"quantization_config"` copy): the most common bits/group_size as the default,
  other quantized layers as per-layer overrides.

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

    config_json = encode_config(Map.merge(config, quantization_config(entries)))

    OutputDir.write!(dir, opts, fn tmp ->
      Safetensors.write(Path.join(tmp, "model.safetensors"), entries, %{"format" => "mlx"})
      File.write!(Path.join(tmp, "config.json"), config_json)
    end)

    :ok
  end

  @doc "The quantization block for a set of tensors (empty map when none is quantized)."
  @spec quantization_config([{String.t(), term()}]) :: map()
  def quantization_config(entries) do
    formats =
      for {name, %QuantizedTensor{config: c}} <- entries,
          do: {String.replace_suffix(name, ".weight", ""), {c.bits, c.group_size}}

    case formats do
      [] ->
        %{}

      _ ->
        {{bits, gs}, _} =
          formats |> Enum.frequencies_by(&elem(&1, 1)) |> Enum.max_by(fn {f, n} -> {n, f} end)

        overrides =
          for {base, {b, g}} <- formats, {b, g} != {bits, gs}, into: %{} do
            {base, %{"bits" => b, "group_size" => g}}
          end

        block = Map.merge(%{"bits" => bits, "group_size" => gs, "mode" => "affine"}, overrides)
        %{"quantization" => block, "quantization_config" => block}
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

  defp layers(shard_of, config, opts, dir) do
    quant = config["quantization"] || config["quantization_config"] || %{}

    unless is_map(quant) do
      raise ArgumentError,
            "#{dir}/config.json: \"quantization\" must be an object, got: #{inspect(quant)}"
    end

    default_bits = Keyword.get(opts, :bits, quant["bits"])
    default_gs = Keyword.get(opts, :group_size, quant["group_size"])

    triplets =
      for name <- Map.keys(shard_of),
          String.ends_with?(name, ".scales"),
          base = String.replace_suffix(name, ".scales", ""),
          Map.has_key?(shard_of, "#{base}.weight"),
          into: %{} do
        unless Map.has_key?(shard_of, "#{base}.biases") do
          raise ArgumentError, "#{shown(dir)}: '#{base}' has scales but no '#{base}.biases'"
        end

        {bits, gs} =
          case quant[base] do
            false ->
              raise ArgumentError,
                    "#{shown(dir)}: config.json marks '#{base}' dense (false) but it has scales"

            %{} = layer ->
              {layer["bits"] || default_bits, layer["group_size"] || default_gs}

            # Absent (the defaults apply) or true (quantized, with the defaults).
            absent when absent in [nil, true] ->
              {default_bits, default_gs}

            other ->
              raise ArgumentError,
                    "#{dir}/config.json: the \"quantization\" entry for layer '#{base}' must " <>
                      "be an object such as {\"bits\": 4, \"group_size\": 64} or false " <>
                      "(dense), got: #{inspect(other)}"
          end

        unless bits in [2, 3, 4, 5, 6, 8] and gs in [32, 64, 128] do
          raise ArgumentError,
                "#{shown(dir)}: quantized layer '#{base}' has bits #{inspect(bits)} and group_size " <>
                  "#{inspect(gs)} (from config.json's \"quantization\" or the :bits/:group_size " <>
                  "options); expected bits in 2..8 (not 7) and group_size 32, 64 or 128"
        end

        {base, {bits, gs}}
      end

    consumed =
      for base <- Map.keys(triplets),
          part <- ~w(weight scales biases),
          into: MapSet.new(),
          do: "#{base}.#{part}"

    dense =
      for name <- Map.keys(shard_of), name not in consumed, into: %{}, do: {name, {:dense, name}}

    quantized =
      for {base, {bits, gs}} <- triplets,
          into: %{},
          do: {"#{base}.weight", {:quantized, base, bits, gs}}

    Map.merge(dense, quantized)
  end
end
