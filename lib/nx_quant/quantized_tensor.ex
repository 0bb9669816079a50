defmodule NxQuant.QuantizedTensor do
  @moduledoc """
  A quantized matrix held in a native resource, as the Nx-free core sees it.

    * `:ref` - the NIF resource holding the packed words, scales and biases.
    * `:shape` - the logical (dense) shape. The stored matrix is `{rows, cols}` with
      `cols = elem(shape, tuple_size(shape) - 1)` quantized along the last axis and `rows` the
      product of the leading axes. When `:transposed` is true the logical shape is the
      transpose of the stored 2-D matrix (a free view, no data moved).
    * `:type` - `{:s, bits}`, the logical storage type (as EMLX reports it).
    * `:dtype` - the float type of scales and biases, and of `dequantize/1`'s result.
    * `:config` - an `NxQuant.Config`.
    * `:transposed` - see `:shape`.
  """

  @enforce_keys [:ref, :shape, :type, :dtype, :config]
  defstruct [:ref, :shape, :type, :dtype, :config, transposed: false]

  @type t :: %__MODULE__{
          ref: reference(),
          shape: tuple(),
          type: {:s, 2 | 3 | 4 | 5 | 6 | 8},
          dtype: {:f, 32} | {:f, 16} | {:bf, 16},
          config: NxQuant.Config.t(),
          transposed: boolean()
        }

  @doc "The stored (packed) matrix's `{rows, cols}`, whatever the view."
  @spec stored_shape(t()) :: {non_neg_integer(), pos_integer()}
  def stored_shape(%__MODULE__{shape: shape, transposed: transposed}) do
    dims = Tuple.to_list(shape)

    if transposed do
      [cols, rows] = dims
      {rows, cols}
    else
      {leading, [cols]} = Enum.split(dims, -1)
      {Enum.reduce(leading, 1, &(&1 * &2)), cols}
    end
  end
end
