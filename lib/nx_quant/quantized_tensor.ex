defmodule NxQuant.QuantizedTensor do
  @moduledoc """
  A quantized matrix held in a native resource, as the Nx-free core sees it.

    * `:ref` - the NIF resource holding the packed words, scales and biases.
    * `:shape` - the logical (dense) shape. The stored matrix is `{rows, cols}` with
      `cols = elem(shape, tuple_size(shape) - 1)` quantized along the last axis and `rows` the
      product of the leading axes. When `:transposed` is true the logical shape is the
      transpose of the stored 2-D matrix (a free view, no data moved). A rank > 2 shape
      `{B..., n, cols}` is also a batch of `prod(B)` matrices of `n` rows, stacked in the
      stored matrix (what `NxQuant.Core.quantized_matmul/3` and `gather_qmm/3` multiply by).
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

  @doc """
  Checks every field `NxQuant.Core` reads (`:shape`, `:type`, `:dtype`, `:transposed`,
  `:config`'s bits, group size and mode) against `info`, what the native resource itself holds
  (`{rows, cols, dtype_atom, bits, group_size}`, as `NxQuant.NIF.info/1` returns it, with the
  resource's mode string appended; a 5-tuple means `"affine"`): `:ok`,
  or `{:error, message}` naming the first field that disagrees. A struct edited by hand (e.g.
  `%{qt | shape: {32, 128}}` over a 64x128 resource) would otherwise make the core compute
  with the resource's real matrix and label the result with the struct's fields.

  Any logical shape whose leading axes multiply to the stored rows is consistent (the resource
  only knows the 2-D matrix). `config.scales`/`config.biases` are not read by the core (it
  takes the parts from the resource) and are not checked.
  """
  @spec check(t(), tuple()) :: :ok | {:error, String.t()}
  def check(qt, {rows, cols, dtype_atom, bits, gs}),
    do: check(qt, {rows, cols, dtype_atom, bits, gs, "affine"})

  def check(
        %__MODULE__{
          shape: shape,
          type: {:s, bits},
          transposed: transposed,
          config: %NxQuant.Config{bits: bits, group_size: gs, mode: mode}
        } = qt,
        {rows, cols, dtype_atom, bits, gs, mode}
      )
      when is_boolean(transposed) and is_tuple(shape) and tuple_size(shape) >= 1 and
             (tuple_size(shape) == 2 or not transposed) do
    cond do
      not Enum.all?(Tuple.to_list(shape), &(is_integer(&1) and &1 >= 0)) ->
        mismatch(qt, rows, cols, dtype_atom, bits, gs, mode)

      stored_shape(qt) == {rows, cols} and qt.dtype == NxQuant.Validate.dtype_type(dtype_atom) ->
        :ok

      true ->
        mismatch(qt, rows, cols, dtype_atom, bits, gs, mode)
    end
  end

  def check(%__MODULE__{} = qt, {rows, cols, dtype_atom, bits, gs, mode}),
    do: mismatch(qt, rows, cols, dtype_atom, bits, gs, mode)

  # The slow path: which field disagrees (checked in the order a reader would look).
  defp mismatch(qt, rows, cols, dtype_atom, bits, gs, mode) do
    dtype = NxQuant.Validate.dtype_type(dtype_atom)
    config = qt.config

    real =
      "its native data is a #{rows}x#{cols} matrix, bits #{bits}, group_size #{gs}, " <>
        if(mode == "affine",
          do: "#{inspect(dtype)} scales",
          else: "mode #{mode}, #{inspect(dtype)} values"
        )

    problem =
      cond do
        not is_boolean(qt.transposed) ->
          ":transposed must be true or false, got: #{inspect(qt.transposed)}"

        not (is_tuple(qt.shape) and tuple_size(qt.shape) >= 1 and
                 Enum.all?(Tuple.to_list(qt.shape), &(is_integer(&1) and &1 >= 0))) ->
          ":shape must be a tuple of rank >= 1 of non-negative integers, got: " <>
            inspect(qt.shape)

        qt.transposed and tuple_size(qt.shape) != 2 ->
          ":shape #{inspect(qt.shape)} of a transposed view must be 2-D"

        stored_shape(qt) != {rows, cols} ->
          {r, c} = stored_shape(qt)
          ":shape #{inspect(qt.shape)} (a stored #{r}x#{c} matrix) does not match"

        qt.dtype != dtype ->
          ":dtype #{inspect(qt.dtype)} does not match"

        qt.type != {:s, bits} ->
          ":type #{inspect(qt.type)} does not match"

        not is_struct(config, NxQuant.Config) ->
          ":config must be an %NxQuant.Config{}, got: #{inspect(config, limit: 5)}"

        config.bits != bits ->
          ":config bits #{inspect(config.bits)} does not match"

        config.group_size != gs ->
          ":config group_size #{inspect(config.group_size)} does not match"

        true ->
          ":config mode #{inspect(config.mode)} does not match"
      end

    {:error, "quantized tensor's #{problem}: #{real} (was the struct edited?)"}
  end

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
