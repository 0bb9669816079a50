defmodule NxQuant.QuantizedOps do
  @moduledoc """
  What each `Nx.Backend` callback means when one of its tensors is quantized. Nx-free: the
  table, the transposed view, the row gather and every error message live here and are tested
  without Nx; `NxQuant.Backend` only follows them.

  | callback                          | given a quantized tensor                                      |
  |-----------------------------------|---------------------------------------------------------------|
  | `dot/7`                           | the fused kernel, as `NxQuant.DotPlan` plans it (or an explicit dequantize for cases without a kernel) |
  | `transpose/3`                     | 2-D: a free view (a layout flag flips, no data moves)         |
  | `gather/4` (so `Nx.take/3`)       | rows of a 2-D weight along axis 0: only those rows are dequantized (a quantized embedding lookup) |
  | `as_type/2` to a float type       | dequantize, then cast                                         |
  | `backend_copy/3`, `backend_transfer/3` | to `NxQuant.Backend`: the same quantized tensor (immutable, shared); to any other backend: the dequantized dense tensor |
  | `backend_deallocate/1`            | `:ok`; the native memory is freed when the last reference is garbage-collected (a tensor still in use elsewhere stays valid) |
  | `inspect/2`                       | the format (bits, group size, scales' type, stored shape), never the packed words |
  | `to_binary/2`, `to_pointer/2`     | `ArgumentError` pointing to `NxQuant.dequantize/1` / `NxQuant.parts/1` |
  | `block/4`                         | Nx's default implementation (which reaches the callbacks above) |
  | anything else                     | `ArgumentError` naming the operation and what to do instead   |
  """

  alias NxQuant.{Config, Core, QuantizedTensor}

  @type action ::
          :dot | :view | :gather_rows | :dequantize | :transfer | :release | :describe | :raise

  @actions %{
    dot: :dot,
    transpose: :view,
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

  @doc "A one-line description of a quantized tensor's format, for `inspect` and errors."
  @spec describe(QuantizedTensor.t()) :: String.t()
  def describe(%QuantizedTensor{config: %Config{bits: bits, group_size: gs}} = qt) do
    {rows, cols} = QuantizedTensor.stored_shape(qt)
    view = if qt.transposed, do: ", transposed view", else: ""

    "quantized affine #{bits}-bit, group_size #{gs}, #{type_name(qt.dtype)} scales/biases, " <>
      "stored #{rows}x#{cols}#{view}"
  end

  @doc "The error for a callback with no meaning on a quantized tensor."
  @spec unsupported_message(atom(), non_neg_integer(), QuantizedTensor.t()) :: String.t()
  def unsupported_message(:to_binary, _arity, qt) do
    "cannot read the binary of a quantized tensor (#{describe(qt)}): its data are packed " <>
      "words, scales and biases, not #{type_name(qt.type)} values. Use NxQuant.dequantize/1 " <>
      "for the dense values or NxQuant.parts/1 for the packed parts"
  end

  def unsupported_message(name, arity, qt) do
    "Nx.Backend.#{name}/#{arity} is not supported on a quantized tensor (#{describe(qt)}). " <>
      "Quantized tensors take part in Nx.dot/2,4,6 (fused kernel), Nx.transpose/1, " <>
      "Nx.take/2 and Nx.gather/2 of rows, Nx.as_type/2 to a float type and backend " <>
      "transfers; for anything else call NxQuant.dequantize/1 first"
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
  The dense rows `rows` of a 2-D quantized tensor, `{length(rows), cols}` in its dtype:
  only those rows' packed words, scales and biases are copied and dequantized.
  """
  @spec take_rows(QuantizedTensor.t(), [non_neg_integer()]) :: NxQuant.Dense.t()
  def take_rows(%QuantizedTensor{} = qt, rows) do
    %{packed: packed, scales: scales, biases: biases} = Core.parts(qt)
    {_rows, cols} = QuantizedTensor.stored_shape(qt)
    n = length(rows)
    %Config{bits: bits, group_size: gs} = qt.config

    pick = fn %NxQuant.Dense{data: data, shape: {_, width}, type: type} ->
      row_bytes = width * div(elem(type, 1), 8)
      data = IO.iodata_to_binary(for r <- rows, do: binary_part(data, r * row_bytes, row_bytes))
      %NxQuant.Dense{data: data, shape: {n, width}, type: type}
    end

    if n == 0 do
      %NxQuant.Dense{data: <<>>, shape: {0, cols}, type: qt.dtype}
    else
      pick.(packed)
      |> Core.quantized_tensor(pick.(scales), pick.(biases), {n, cols}, bits: bits, group_size: gs)
      |> Core.dequantize()
    end
  end

  defp type_name({:bf, 16}), do: "bf16"
  defp type_name({kind, size}), do: "#{kind}#{size}"
end
