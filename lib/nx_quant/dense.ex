defmodule NxQuant.Dense do
  @moduledoc """
  A dense row-major tensor as the Nx-free core sees it: a binary, a shape and an Nx-style type.

  Types used by nx_quant: `{:f, 32}`, `{:f, 16}`, `{:bf, 16}` (activations, weights, scales,
  biases) and `{:u, 32}` (packed quantized words). The binary is native-endian (little-endian
  on every platform nx_quant supports), exactly as `Nx.to_binary/1` produces it.
  """

  @enforce_keys [:data, :shape, :type]
  defstruct [:data, :shape, :type]

  @type type :: {:f, 32} | {:f, 16} | {:bf, 16} | {:u, 32}
  @type t :: %__MODULE__{data: binary(), shape: tuple(), type: type()}

  @doc "Builds a dense tensor, checking that the binary's size matches shape and type."
  @spec new(binary(), tuple(), type()) :: t()
  def new(data, shape, type) do
    NxQuant.Validate.dense!(data, shape, type, "tensor")
    %__MODULE__{data: data, shape: shape, type: type}
  end
end
