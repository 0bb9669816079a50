defmodule NxQuant.QuantizedOps do
  @moduledoc """
  What each `Nx.Backend` callback means when one of its tensors is quantized. Nx-free: the
  table, the transposed view, the row gather and every error message live here and are tested
  without Nx; `NxQuant.Backend` only follows them.

  | callback                          | given a quantized tensor                                      |
  |-----------------------------------|---------------------------------------------------------------|
  | `dot/7`                           | the fused kernel, as `NxQuant.DotPlan` plans it (or an explicit dequantize for cases without a kernel) |
  | `transpose/3`                     | 2-D: a free view (a layout flag flips, no data moves)         |
  | `reshape/2`, `squeeze/3`, `broadcast/4` | a free broadcast view when the result ends with the quantized shape (new leading axes, as `Nx.vectorize`d operands need); anything else raises |
  | `gather/4` (so `Nx.take/3`)       | rows of a 2-D weight along axis 0: only those rows are dequantized (a quantized embedding lookup); experts of a 3-D batched weight along axis 0: a free take view (`take_experts/4`), which `Nx.dot/6` runs as `gather_qmm` |
  | `as_type/2` to a float type       | dequantize, then cast                                         |
  | `backend_copy/3`, `backend_transfer/3` | to `NxQuant.Backend`: the same quantized tensor (immutable, shared); to any other backend: the dequantized dense tensor |
  | `backend_deallocate/1`            | `:ok`; the native memory is freed when the last reference is garbage-collected (a tensor still in use elsewhere stays valid) |
  | `inspect/2`                       | the format (bits, group size, scales' type, stored shape), never the packed words |
  | `to_binary/2`, `to_pointer/2`     | `ArgumentError` pointing to `NxQuant.dequantize/1` / `NxQuant.parts/1` |
  | `block/4`                         | Nx's default implementation (which reaches the callbacks above) |
  | anything else                     | `ArgumentError` naming the operation and what to do instead   |

  ## Broadcast views

  An Nx tensor over a quantized tensor `qt` may have more axes than `qt.shape`: its shape is
  `lead ++ qt.shape` and every position of the leading axes holds the same matrix (stride 0).
  That is what `Nx.vectorize`d activations make of a weight (`Nx.dot/6` reshapes and
  broadcasts the other operand to the vectorized axes, then contracts with them as batch
  axes); `NxQuant.DotPlan` runs such a dot on the fused kernel. Dequantizing a view gives the
  broadcast dense tensor.

  ## Two values

    * the **weight**, `scale * q + bias` in f32 (`dequantize_f32/1`): what `Nx.dot/6`
      multiplies by on every path, fused or not;
    * the **dequantized tensor**, MLX's `dequantize` in the scales' type (`q * scale` rounded
      to it, then `+ bias` rounded, `NxQuant.Core.dequantize/1`): what `NxQuant.dequantize/1`,
      `as_type/2`, row gathers and transfers return. For f32 scales both are the same bits.
  """

  import Bitwise

  alias NxQuant.{Config, Core, QuantizedTensor}

  @type action ::
          :dot | :view | :gather_rows | :dequantize | :transfer | :release | :describe | :raise

  @actions %{
    dot: :dot,
    transpose: :view,
    reshape: :view,
    squeeze: :view,
    broadcast: :view,
    gather: :gather_rows,
    as_type: :dequantize,
    backend_copy: :transfer,
    backend_transfer: :transfer,
    backend_deallocate: :release,
    inspect: :describe
  }

  @doc "What the backend does with a quantized tensor in callback `name` (see the table)."
  @spec action(atom()) :: action()
  def action(name) when is_atom(name), do: Map.get(@actions, name, :raise)

  @doc """
  A one-line description of a quantized tensor's format, for `inspect` and errors; `shape`
  (the Nx tensor's, default `qt.shape`) names a broadcast view.
  """
  @spec describe(QuantizedTensor.t(), tuple()) :: String.t()
  def describe(
        %QuantizedTensor{config: %Config{bits: bits, group_size: gs, mode: mode}} = qt,
        shape \\ nil
      ) do
    {rows, cols} = QuantizedTensor.stored_shape(qt)
    view = if qt.transposed, do: ", transposed view", else: ""

    broadcast =
      if shape == nil or shape == qt.shape,
        do: "",
        else: ", broadcast to #{inspect(shape)}"

    format =
      if mode == "affine",
        do: "affine #{bits}-bit, group_size #{gs}, #{type_name(qt.dtype)} scales/biases",
        else:
          "#{mode} (#{bits}-bit, group_size #{gs}, uint8 scales#{global(qt.config)}), " <>
            "#{type_name(qt.dtype)} values"

    "quantized #{format}, stored #{rows}x#{cols}#{view}#{broadcast}"
  end

  @doc """
  The leading (broadcast) axes of a view of shape `shape` over `qt`: `shape` minus its
  trailing `qt.shape`. `{:ok, lead}` or `:error` when `shape` does not end with `qt.shape`.
  """
  @spec lead(QuantizedTensor.t(), tuple()) :: {:ok, [non_neg_integer()]} | :error
  def lead(%QuantizedTensor{shape: q_shape}, shape) do
    n = tuple_size(shape) - tuple_size(q_shape)
    {lead, rest} = Enum.split(Tuple.to_list(shape), max(n, 0))
    if n >= 0 and List.to_tuple(rest) == q_shape, do: {:ok, lead}, else: :error
  end

  @doc """
  `Nx.reshape/2` (and `Nx.squeeze/2`, `Nx.new_axis/2`; `name` is the callback) of a view of
  shape `from` over `qt` to `shape`: a view again when `shape` ends with `qt.shape` (the
  leading axes hold the same matrix everywhere, so any regrouping of them is free). `:ok` or
  `{:error, message}`.
  """
  @spec reshape(QuantizedTensor.t(), tuple(), tuple(), atom()) :: :ok | {:error, String.t()}
  def reshape(%QuantizedTensor{} = qt, from, shape, name \\ :reshape) do
    case lead(qt, shape) do
      {:ok, _lead} -> :ok
      :error -> {:error, view_message(name, qt, from, shape)}
    end
  end

  @doc """
  `Nx.broadcast(view, shape, axes: axes)` of a view of shape `from` over `qt`: a view when the
  quantized axes (the last `tuple_size(qt.shape)` of `from`) land on the last axes of `shape`
  with their sizes (Nx has checked every other axis). `:ok` or `{:error, message}`.
  """
  @spec broadcast(QuantizedTensor.t(), tuple(), tuple(), [non_neg_integer()]) ::
          :ok | {:error, String.t()}
  def broadcast(%QuantizedTensor{shape: q_shape} = qt, from, shape, axes) do
    m = tuple_size(q_shape)
    rank = tuple_size(shape)
    expected = Enum.to_list((rank - m)..(rank - 1)//1)

    if match?({:ok, _}, lead(qt, from)) and match?({:ok, _}, lead(qt, shape)) and
         Enum.take(axes, -m) == expected do
      :ok
    else
      {:error, view_message(:broadcast, qt, from, shape) <> " (axes #{inspect(axes)})"}
    end
  end

  defp view_message(name, %QuantizedTensor{shape: q_shape} = qt, from, shape) do
    "Nx.Backend.#{name} to shape #{inspect(shape)} is not supported on a quantized tensor " <>
      "(#{describe(qt, from)}): only new leading axes in front of its #{inspect(q_shape)} " <>
      "axes make a view (what Nx.vectorize/2 of the other operand of Nx.dot needs); " <>
      "call NxQuant.dequantize/1 first"
  end

  @doc """
  The error for a callback with no meaning on a quantized tensor; `shape` (the Nx tensor's)
  names a broadcast view.
  """
  @spec unsupported_message(atom(), non_neg_integer(), QuantizedTensor.t(), tuple() | nil) ::
          String.t()
  def unsupported_message(name, arity, qt, shape \\ nil)

  def unsupported_message(:to_binary, _arity, qt, shape) do
    "cannot read the binary of a quantized tensor (#{describe(qt, shape)}): its data are " <>
      "packed words, scales and biases, not #{type_name(qt.type)} values. Use " <>
      "NxQuant.dequantize/1 for the dense values or NxQuant.parts/1 for the packed parts"
  end

  def unsupported_message(name, arity, qt, shape) do
    "Nx.Backend.#{name}/#{arity} is not supported on a quantized tensor " <>
      "(#{describe(qt, shape)}). Quantized tensors take part in Nx.dot/2,4,6 (fused kernel), " <>
      "Nx.transpose/1, Nx.take/2 and Nx.gather/2 of rows, Nx.as_type/2 to a float type, new " <>
      "leading axes (Nx.new_axis/2, Nx.broadcast/3, Nx.vectorize/2 of the other operand of " <>
      "Nx.dot) and backend transfers; for anything else call NxQuant.dequantize/1 first"
  end

  @doc """
  `Nx.transpose(qt, axes: axes)`: a 2-D quantized tensor is re-labelled (the identity keeps
  it, `[1, 0]` flips the view). Returns `{:ok, qt}` or `{:error, message}`.
  """
  @spec transpose(QuantizedTensor.t(), [non_neg_integer()]) ::
          {:ok, QuantizedTensor.t()} | {:error, String.t()}
  def transpose(%QuantizedTensor{shape: shape} = qt, axes) do
    case {tuple_size(shape), axes} do
      {_, axes} when axes == [] or axes == [0] ->
        {:ok, qt}

      {2, [0, 1]} ->
        {:ok, qt}

      {2, [1, 0]} ->
        {a, b} = shape
        {:ok, %{qt | shape: {b, a}, transposed: not qt.transposed}}

      _ ->
        {:error,
         "transpose with axes #{inspect(axes)} of a quantized tensor of shape #{inspect(shape)}: " <>
           "only 2-D quantized tensors have a transposed view (axes [1, 0]); " <>
           "call NxQuant.dequantize/1 first"}
    end
  end

  @doc """
  Checks `Nx.gather(qt, indices, axes: axes)` (which `Nx.take(qt, ids)` becomes) and returns
  the stored rows it reads: a 2-D, non-transposed quantized tensor, gathered along axis 0,
  with indices of shape `{..., 1}`. `ids` are the flat index values; out-of-range ids are an
  error (Nx would clamp them, silently reading the wrong row).
  """
  @spec gather_rows(QuantizedTensor.t(), tuple(), [integer()], [integer()]) ::
          {:ok, [non_neg_integer()]} | {:error, String.t()}
  def gather_rows(%QuantizedTensor{shape: shape} = qt, indices_shape, axes, ids) do
    last = tuple_size(indices_shape) - 1

    cond do
      tuple_size(shape) != 2 or qt.transposed ->
        {:error,
         "gather/take on a quantized tensor reads whole rows of a 2-D, non-transposed weight " <>
           "(an embedding table {vocab, dim}); got #{describe(qt)} with shape #{inspect(shape)}. " <>
           "Call NxQuant.dequantize/1 first"}

      axes != [0] or last < 0 or elem(indices_shape, last) != 1 ->
        {:error,
         "gather/take on a quantized tensor must select rows (axis 0, indices of shape " <>
           "{..., 1}); got axes #{inspect(axes)} and indices of shape #{inspect(indices_shape)}"}

      true ->
        rows = elem(shape, 0)

        case Enum.find(ids, &(not is_integer(&1) or &1 < 0 or &1 >= rows)) do
          nil -> {:ok, ids}
          bad -> {:error, "gather/take index #{inspect(bad)} is out of range for #{rows} rows"}
        end
    end
  end

  @doc """
  Checks `Nx.take(experts, indices, axis: 0)` (`Nx.gather/3` with axes `[0]` and indices of
  shape `index_shape ++ {1}`) of a batched quantized tensor `{E, rows, cols}` and returns the
  index shape of the free *take view* it makes: the Nx tensor `index_shape ++ {rows, cols}`
  keeps the indices and the untouched experts (no bytes copied); `Nx.dot/6` against it runs
  `NxQuant.Core.gather_qmm/3`, which reads only the selected experts. `ids` are the flat index
  values; out-of-range ids are an error.
  """
  @spec take_experts(QuantizedTensor.t(), tuple(), [integer()], [integer()]) ::
          {:ok, tuple()} | {:error, String.t()}
  def take_experts(%QuantizedTensor{shape: shape} = qt, indices_shape, axes, ids) do
    last = tuple_size(indices_shape) - 1

    cond do
      tuple_size(shape) != 3 or qt.transposed ->
        {:error, "a take view needs a 3-D batched quantized tensor, got #{describe(qt)}"}

      axes != [0] or last < 0 or elem(indices_shape, last) != 1 ->
        {:error,
         "gather/take on a batched quantized tensor must select experts (axis 0, indices of " <>
           "shape {..., 1}); got axes #{inspect(axes)} and indices of shape " <>
           inspect(indices_shape)}

      true ->
        experts = elem(shape, 0)

        case Enum.find(ids, &(not is_integer(&1) or &1 < 0 or &1 >= experts)) do
          nil -> {:ok, Tuple.delete_at(indices_shape, last)}
          bad -> {:error, "take index #{inspect(bad)} is out of range for #{experts} experts"}
        end
    end
  end

  @doc """
  The dense rows `rows` of a 2-D quantized tensor, `{length(rows), cols}` in its dtype:
  only those rows' packed words, scales and biases are copied and dequantized.
  """
  @spec take_rows(QuantizedTensor.t(), [non_neg_integer()]) :: NxQuant.Dense.t()
  def take_rows(%QuantizedTensor{} = qt, rows) do
    %{packed: packed, scales: scales, biases: biases} = Core.parts(qt)
    {_rows, cols} = QuantizedTensor.stored_shape(qt)
    n = length(rows)

    pick = fn
      nil ->
        nil

      %NxQuant.Dense{data: data, shape: {_, width}, type: type} ->
        row_bytes = width * div(elem(type, 1), 8)
        data = IO.iodata_to_binary(for r <- rows, do: binary_part(data, r * row_bytes, row_bytes))
        %NxQuant.Dense{data: data, shape: {n, width}, type: type}
    end

    if n == 0 do
      %NxQuant.Dense{data: <<>>, shape: {0, cols}, type: qt.dtype}
    else
      pick.(packed)
      |> Core.quantized_tensor(pick.(scales), pick.(biases), {n, cols}, spec_opts(qt))
      |> Core.dequantize()
    end
  end

  @doc """
  The weight `Nx.dot/6` multiplies by: `scale * q + bias` evaluated in f32 (the product
  rounded to f32, then the sum), as an f32 `NxQuant.Dense` of `qt.shape` (a transposed view
  gives the transposed matrix). For f32 scales this is `NxQuant.Core.dequantize/1`; for f16 and
  bf16 scales the scales and biases are widened to f32 (exact) into a temporary quantized
  tensor over a copy of the packed words, which is then dequantized.
  """
  @spec dequantize_f32(QuantizedTensor.t()) :: NxQuant.Dense.t()
  def dequantize_f32(%QuantizedTensor{dtype: {:f, 32}} = qt), do: Core.dequantize(qt)

  # Microscaled: the same parts dequantized as f32 (element times scale, exact in f32).
  def dequantize_f32(%QuantizedTensor{config: %Config{mode: mode}} = qt) when mode != "affine" do
    %{packed: packed, scales: scales} = Core.parts(qt)
    opts = Keyword.put(spec_opts(qt), :dtype, {:f, 32})
    wide = Core.quantized_tensor(packed, scales, nil, QuantizedTensor.stored_shape(qt), opts)
    Core.dequantize(%{wide | shape: qt.shape, transposed: qt.transposed})
  end

  def dequantize_f32(%QuantizedTensor{dtype: dtype} = qt) do
    %{packed: packed, scales: scales, biases: biases} = Core.parts(qt)
    %Config{bits: bits, group_size: gs} = qt.config
    widen = fn %NxQuant.Dense{} = d -> %{d | data: widen_f32(d.data, dtype), type: {:f, 32}} end

    wide =
      Core.quantized_tensor(
        packed,
        widen.(scales),
        widen.(biases),
        QuantizedTensor.stored_shape(qt),
        bits: bits,
        group_size: gs
      )

    Core.dequantize(%{wide | shape: qt.shape, transposed: qt.transposed})
  end

  @doc """
  Little-endian f16 or bf16 values widened to f32 (exact: every f16/bf16 value, subnormals,
  infinities and NaN payloads included, is an f32 value).
  """
  @spec widen_f32(binary(), {:f, 16} | {:bf, 16}) :: binary()
  def widen_f32(data, {:bf, 16}),
    do: for(<<h::16-little <- data>>, into: <<>>, do: <<h <<< 16::32-little>>)

  def widen_f32(data, {:f, 16}),
    do: for(<<h::16-little <- data>>, into: <<>>, do: <<f16_to_f32_bits(h)::32-little>>)

  defp f16_to_f32_bits(h) do
    sign = h >>> 15 <<< 31
    exponent = h >>> 10 &&& 0x1F
    mantissa = h &&& 0x3FF

    cond do
      # Inf and NaN (payload kept in the top mantissa bits)
      exponent == 0x1F ->
        sign ||| 0x7F800000 ||| mantissa <<< 13

      exponent != 0 ->
        sign ||| (exponent + 112) <<< 23 ||| mantissa <<< 13

      mantissa == 0 ->
        sign

      # subnormal: mantissa * 2^-24 = 2^(p - 24) * (1 + rest / 2^p), p its top bit
      true ->
        p = top_bit(mantissa, 9)
        sign ||| (p + 103) <<< 23 ||| (mantissa - (1 <<< p)) <<< (23 - p)
    end
  end

  defp top_bit(m, p) when m >>> p == 1, do: p
  defp top_bit(m, p), do: top_bit(m, p - 1)

  # Options rebuilding a quantized tensor of qt's format from its parts.
  defp spec_opts(%QuantizedTensor{config: %Config{bits: bits, group_size: gs, mode: "affine"}}),
    do: [bits: bits, group_size: gs]

  # nvfp4's global scale comes from the resource (the struct's field is informative only)
  defp spec_opts(%QuantizedTensor{config: %Config{mode: mode}, dtype: dtype} = qt) do
    opts = [mode: String.to_existing_atom(mode), dtype: dtype]
    global = if mode == "nvfp4", do: NxQuant.NIF.global_scale(qt.ref), else: 0.0
    if global != 0.0, do: Keyword.put(opts, :global_scale, global), else: opts
  end

  defp global(%Config{global_scale: g}) when is_float(g), do: ", global_scale #{g}"
  defp global(_config), do: ""

  defp type_name({:bf, 16}), do: "bf16"
  defp type_name({kind, size}), do: "#{kind}#{size}"
end
