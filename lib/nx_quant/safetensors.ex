defmodule NxQuant.Safetensors do
  @moduledoc """
  One safetensors file (Nx-free). `open/2` opens the file and validates the whole header
  (c_src/io/safetensors_format.cpp), whatever the file's size; `read/2` returns a tensor and
  `read_quantized/4` a quantized tensor.

  By default each tensor is read into memory the tensor owns (pread(2) of its bytes): a file
  truncated or rewritten later cannot change or crash anything already returned, and a read
  after the file changed is an `ArgumentError` ("changed since it was opened"), never bytes of
  two versions. `open(path, mmap: true)` maps the file instead (like llama.cpp's `--mmap`):
  tensors are binaries over the mapping (no copy; only the pages used are ever loaded, and
  the page cache is shared between processes), and the file stays mapped while anything made
  from it is alive. **The risk of mmap:** if another process truncates the file while it is
  mapped, the next touch of a page past the new end kills the whole VM with SIGBUS, and a
  rewrite in place changes tensors already returned. Use it only for files nothing rewrites
  (replacing a file by rename, as `write/3` and `NxQuant.Convert` do, is safe: the mapping
  keeps the old file). bench/RESULTS.md compares the two modes' cost.

  Opening never blocks on a FIFO or a device: the path must be a regular file (symlinks are
  followed), checked before it is opened.

  `write/3` writes dense and quantized tensors (a quantized `NAME.weight` becomes MLX's triplet
  `NAME.weight` (U32), `NAME.scales`, `NAME.biases`, or for a microscaled mode the pair
  `NAME.weight`, `NAME.scales` (U8)); `write_planned/4` streams the data
  one tensor at a time for converters whose inputs do not fit in memory.

  Every problem is an `ArgumentError` naming the file and the tensor.
  """

  alias NxQuant.{Core, Dense, NIF, QuantizedTensor, Validate}

  @enforce_keys [:ref, :path, :tensors, :metadata]
  defstruct [:ref, :path, :tensors, :metadata]

  @type info :: %{dtype: String.t(), type: tuple(), shape: tuple(), bytes: non_neg_integer()}
  @type t :: %__MODULE__{
          ref: reference(),
          path: String.t(),
          tensors: %{String.t() => info()},
          metadata: %{String.t() => String.t()}
        }

  @types %{
    "F64" => {:f, 64},
    "F32" => {:f, 32},
    "F16" => {:f, 16},
    "BF16" => {:bf, 16},
    "I64" => {:s, 64},
    "I32" => {:s, 32},
    "I16" => {:s, 16},
    "I8" => {:s, 8},
    "U64" => {:u, 64},
    "U32" => {:u, 32},
    "U16" => {:u, 16},
    "U8" => {:u, 8},
    "BOOL" => {:u, 8},
    "F8_E4M3" => {:f8_e4m3fn, 8},
    "F8_E5M2" => {:f, 8}
  }
  @dtypes Map.new(Map.delete(@types, "BOOL"), fn {name, type} -> {type, name} end)

  @doc "The Nx-style type of a safetensors dtype name (BOOL reads as `{:u, 8}`)."
  def type_of(dtype), do: Map.fetch!(@types, dtype)

  @doc "The safetensors dtype name for an Nx-style type."
  def dtype_of(type) do
    Map.get(@dtypes, type) ||
      raise ArgumentError, "no safetensors dtype for type #{inspect(type)}"
  end

  @doc """
  Opens and validates a file. Options: `:mmap` (default `false`; see the module doc for its
  risk). Raises `ArgumentError` naming the file and the problem.
  """
  @spec open!(Path.t(), keyword()) :: t()
  def open!(path, opts \\ []) do
    path = IO.chardata_to_string(path)
    {ref, tensors, metadata, _data_start} = NIF.safetensors_open(path, mmap?(opts))

    tensors =
      Map.new(tensors, fn {name, dtype, shape, first, last} ->
        dtype = Atom.to_string(dtype)
        {name, %{dtype: dtype, type: type_of(dtype), shape: shape, bytes: last - first}}
      end)

    %__MODULE__{ref: ref, path: path, tensors: tensors, metadata: Map.new(metadata)}
  end

  @doc "Like `open!/2`, returning `{:ok, file}` or `{:error, message}`."
  @spec open(Path.t(), keyword()) :: {:ok, t()} | {:error, String.t()}
  def open(path, opts \\ []) do
    {:ok, open!(path, opts)}
  rescue
    e in ArgumentError -> {:error, Exception.message(e)}
  end

  @doc false
  def mmap?(opts) do
    case Keyword.get(opts, :mmap, false) do
      mmap when is_boolean(mmap) ->
        mmap

      other ->
        raise ArgumentError, "the :mmap option must be true or false, got: #{inspect(other)}"
    end
  end

  @doc "The tensor `name` as an `NxQuant.Dense` (its own copy, or over the mapping with mmap)."
  @spec read(t(), String.t()) :: Dense.t()
  def read(%__MODULE__{} = file, name) when is_binary(name) do
    %{type: type, shape: shape} = info!(file, name)
    %Dense{data: NIF.safetensors_tensor(file.ref, name), shape: shape, type: type}
  end

  def read(file, name), do: file_error!("read/2", file, name)

  @doc """
  The quantized tensor of MLX's triplet `BASE.weight`, `BASE.scales`, `BASE.biases` with the
  given `bits` and `group_size` (from config.json). Shapes are cross-checked: the weight's
  last axis * 32 / bits must equal the scales' last axis * group_size, and the leading axes of
  all three must agree. Read into owned memory, or with mmap built over the mapping
  (zero-copy when aligned, else one copy).
  """
  @spec read_quantized(t(), String.t(), 2..8, 32 | 64 | 128) :: QuantizedTensor.t()
  def read_quantized(%__MODULE__{} = file, base, bits, group_size) when is_binary(base) do
    {bits, group_size} =
      Validate.quant_spec!([bits: bits, group_size: group_size], "read_quantized/4")

    [w, s, b] = for part <- ~w(weight scales biases), do: "#{base}.#{part}"
    wi = info!(file, w)
    si = info!(file, s)
    bi = info!(file, b)
    where = "#{Validate.printable(file.path)}: quantized layer '#{Validate.printable(base)}'"

    if tuple_size(wi.shape) < 1 or tuple_size(si.shape) != tuple_size(wi.shape) or
         bi.shape != si.shape do
      raise ArgumentError,
            "#{where}: weight #{inspect(wi.shape)}, scales #{inspect(si.shape)} and biases " <>
              "#{inspect(bi.shape)} must have the same rank and scales/biases the same shape"
    end

    last = tuple_size(wi.shape) - 1
    words = elem(wi.shape, last)
    groups = elem(si.shape, last)
    cols = div(words * 32, bits)

    cond do
      Tuple.delete_at(wi.shape, last) != Tuple.delete_at(si.shape, last) ->
        raise ArgumentError,
              "#{where}: weight #{inspect(wi.shape)} and scales #{inspect(si.shape)} differ " <>
                "in their leading axes"

      rem(words * 32, bits) != 0 or cols != groups * group_size ->
        raise ArgumentError,
              "#{where}: weight has #{words} packed words per row (#{words} * 32 / #{bits} = " <>
                "#{words * 32 / bits} values) but scales have #{groups} groups of #{group_size} " <>
                "(#{groups * group_size} values): bits #{bits} / group_size #{group_size} do " <>
                "not match this layer"

      true ->
        shape = put_elem(wi.shape, last, cols)
        rows = div(NxQuant.Validate.size(shape), max(cols, 1))

        ref = NIF.safetensors_quantized(file.ref, w, s, b, rows, cols, bits, group_size)

        Core.wrap_ref(ref, shape, type_of(si.dtype), bits, group_size)
    end
  end

  def read_quantized(file, base, _bits, _group_size),
    do: file_error!("read_quantized/4", file, base)

  @doc """
  The quantized tensor of a microscaled layer (MLX's `"mxfp4"`, `"mxfp8"` or `"nvfp4"`):
  `BASE.weight` (U32) and `BASE.scales` (U8, one per group), no biases; `dtype` is the type it
  dequantizes to (the file does not record it). Shapes are cross-checked as in
  `read_quantized/4`. Both tensors are read (or, with mmap, taken from the mapping) and copied
  once into the native resource.
  """
  @spec read_microscaled(t(), String.t(), String.t() | atom(), tuple()) :: QuantizedTensor.t()
  def read_microscaled(%__MODULE__{} = file, base, mode, dtype) when is_binary(base) do
    mode = Validate.mode!([mode: mode], "read_microscaled/4")

    if mode == :affine do
      raise ArgumentError, "read_microscaled/4 mode must be microscaled, got :affine"
    end

    {bits, group_size} = Validate.mode_spec(mode)
    [w, s] = for part <- ~w(weight scales), do: "#{base}.#{part}"
    wi = info!(file, w)
    si = info!(file, s)
    where = "#{Validate.printable(file.path)}: #{mode} layer '#{Validate.printable(base)}'"

    cond do
      wi.dtype != "U32" ->
        raise ArgumentError, "#{where}: weight has dtype #{wi.dtype}, expected U32"

      si.dtype != "U8" ->
        raise ArgumentError, "#{where}: scales have dtype #{si.dtype}, expected U8"

      tuple_size(wi.shape) < 1 or tuple_size(si.shape) != tuple_size(wi.shape) ->
        raise ArgumentError,
              "#{where}: weight #{inspect(wi.shape)} and scales #{inspect(si.shape)} must " <>
                "have the same rank"

      true ->
        :ok
    end

    last = tuple_size(wi.shape) - 1
    words = elem(wi.shape, last)
    groups = elem(si.shape, last)
    cols = div(words * 32, bits)

    cond do
      Tuple.delete_at(wi.shape, last) != Tuple.delete_at(si.shape, last) ->
        raise ArgumentError,
              "#{where}: weight #{inspect(wi.shape)} and scales #{inspect(si.shape)} differ " <>
                "in their leading axes"

      cols != groups * group_size or cols == 0 ->
        raise ArgumentError,
              "#{where}: weight has #{words} packed words per row (#{cols} values of " <>
                "#{bits} bits) but scales have #{groups} groups of #{group_size} " <>
                "(#{groups * group_size} values): not mode #{mode}'s layout"

      true ->
        shape = put_elem(wi.shape, last, cols)

        Core.quantized_tensor(read(file, w), read(file, s), nil, shape,
          mode: mode,
          dtype: dtype
        )
    end
  end

  def read_microscaled(file, base, _mode, _dtype),
    do: file_error!("read_microscaled/4", file, base)

  defp file_error!(fun, %__MODULE__{}, name) do
    raise ArgumentError,
          "#{fun} expects a tensor name (a binary), got: #{Validate.describe(name)}"
  end

  defp file_error!(fun, file, _name) do
    raise ArgumentError,
          "#{fun} expects an %NxQuant.Safetensors{} from open!/1, got: #{Validate.describe(file)}"
  end

  @doc """
  Writes `entries` (`[{name, tensor}]`, in order; tensors `NxQuant.Dense` or
  `NxQuant.QuantizedTensor`) to `path` with `metadata` (string map). A quantized tensor named
  `BASE.weight` (or `BASE`) is written as `BASE.weight`/`BASE.scales`/`BASE.biases` (a
  microscaled one without biases), its stored 2-D shape's leading axes restored.
  """
  @spec write(Path.t(), [{String.t(), Dense.t() | QuantizedTensor.t()}], map()) :: :ok
  def write(path, entries, metadata \\ %{}) do
    unless is_list(entries) do
      raise ArgumentError,
            "write/3 entries must be a list of {name, tensor}, got: #{Validate.describe(entries)}"
    end

    pieces = Enum.flat_map(entries, &entry_pieces/1)

    specs =
      Enum.map(pieces, fn {name, %Dense{type: type, shape: shape}} -> {name, type, shape} end)

    data = Map.new(pieces)
    write_planned(path, specs, metadata, fn name -> data[name].data end)
  end

  @doc """
  The safetensors entries of a tensor: itself, or a quantized tensor's triplet.
  """
  @spec pieces(String.t(), Dense.t() | QuantizedTensor.t()) :: [{String.t(), Dense.t()}]
  def pieces(name, %QuantizedTensor{} = qt) when is_binary(name) do
    # parts/1 first: it checks the struct against the resource
    %{packed: p, scales: s, biases: b} = Core.parts(qt)

    if qt.transposed do
      raise ArgumentError,
            "cannot write '#{Validate.printable(name)}': a transposed view (write the original)"
    end

    # MLX's checkpoints have no place for nvfp4's global scale: written, it would be lost
    if qt.config.mode == "nvfp4" and NIF.global_scale(qt.ref) != 0.0 do
      raise ArgumentError,
            "cannot write '#{Validate.printable(name)}': an nvfp4 tensor with a global scale " <>
              "(MLX's checkpoint layout cannot hold it)"
    end

    base = String.replace_suffix(name, ".weight", "")
    leading = Tuple.delete_at(qt.shape, tuple_size(qt.shape) - 1)

    shaped = fn %Dense{shape: {_, n}} = d ->
      %{d | shape: Tuple.insert_at(leading, tuple_size(leading), n)}
    end

    # microscaled modes (biases nil) are a pair: weight and uint8 scales
    [{"#{base}.weight", shaped.(p)}, {"#{base}.scales", shaped.(s)}] ++
      if b, do: [{"#{base}.biases", shaped.(b)}], else: []
  end

  def pieces(name, %Dense{shape: shape} = dense) when is_binary(name) do
    # the byte count and the type are checked against the dtype when written
    Validate.shape!(shape, "tensor '#{Validate.printable(name)}'")
    [{name, dense}]
  end

  def pieces(name, tensor) when is_binary(name) do
    raise ArgumentError,
          "tensor '#{Validate.printable(name)}' must be an %NxQuant.Dense{} or an " <>
            "%NxQuant.QuantizedTensor{}, got: #{Validate.describe(tensor)}"
  end

  def pieces(name, _tensor) do
    raise ArgumentError, "a tensor name must be a binary, got: #{Validate.describe(name)}"
  end

  defp entry_pieces({name, tensor}), do: pieces(name, tensor)

  defp entry_pieces(other) do
    raise ArgumentError,
          "write/3 entries must be {name, tensor} tuples, got: #{Validate.describe(other)}"
  end

  @doc """
  Writes a file whose entries `[{name, type, shape}]` are known in advance, asking
  `data_fun.(name)` for each entry's bytes (iodata) in order, so only one tensor is in memory
  at a time. Each entry's byte size is checked. The file appears atomically (written to a
  temporary name, then renamed).
  """
  @spec write_planned(Path.t(), [{String.t(), tuple(), tuple()}], map(), (String.t() -> iodata())) ::
          :ok
  def write_planned(path, specs, metadata, data_fun) do
    entries =
      for {name, type, shape} <- specs do
        {name, String.to_atom(dtype_of(type)), Tuple.to_list(shape)}
      end

    {header, offsets} = NIF.safetensors_plan(entries, Enum.sort(Map.to_list(metadata)))
    tmp = "#{path}.tmp#{System.unique_integer([:positive])}"

    try do
      File.open!(tmp, [:write, :binary, :raw], fn io ->
        :ok = :file.write(io, header)

        for {{name, _, _}, {first, last}} <- Enum.zip(specs, offsets) do
          data = data_fun.(name)
          size = IO.iodata_length(data)

          if size != last - first do
            raise ArgumentError,
                  "tensor '#{Validate.printable(name)}' has #{size} bytes, its dtype and shape " <>
                    "need #{last - first}"
          end

          :ok = :file.write(io, data)
        end
      end)

      File.rename!(tmp, path)
    after
      File.rm(tmp)
    end

    :ok
  end

  @doc "Information about one tensor of the file, or an `ArgumentError` naming what exists."
  @spec info!(t(), String.t()) :: info()
  def info!(%__MODULE__{tensors: tensors, path: path}, name) when is_binary(name) do
    case tensors do
      %{^name => info} ->
        info

      _ ->
        raise ArgumentError,
              "#{Validate.printable(path)} has no tensor named '#{Validate.printable(name)}' " <>
                "(it has #{map_size(tensors)} tensors)"
    end
  end

  def info!(file, name), do: file_error!("info!/2", file, name)
end
