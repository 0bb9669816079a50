defmodule NxQuant.Validate do
  @moduledoc """
  Argument checks shared by the Nx-free core. Every failure raises `ArgumentError` with a
  message naming the argument or option and what was expected.
  """

  @float_types [{:f, 32}, {:f, 16}, {:bf, 16}]
  @dense_types [{:u, 32} | @float_types]
  @bits [2, 3, 4, 5, 6, 8]
  @group_sizes [32, 64, 128]
  @max_threads 1024

  @doc "The float types of activations, dense weights, scales and biases."
  def float_types, do: @float_types

  @doc "Byte size of one element of a dense type."
  def type_size({:u, 32}), do: 4
  def type_size({:f, 32}), do: 4
  def type_size({:f, 16}), do: 2
  def type_size({:bf, 16}), do: 2

  @doc "The NIF's atom for a float type."
  def dtype_atom({:f, 32}), do: :f32
  def dtype_atom({:f, 16}), do: :f16
  def dtype_atom({:bf, 16}), do: :bf16

  @doc "The float type of a NIF dtype atom."
  def dtype_type(:f32), do: {:f, 32}
  def dtype_type(:f16), do: {:f, 16}
  def dtype_type(:bf16), do: {:bf, 16}

  @doc "Product of a shape's dimensions."
  def size(shape) when is_tuple(shape),
    do: shape |> Tuple.to_list() |> Enum.reduce(1, &(&1 * &2))

  @doc """
  Checks a dense tensor's parts: `shape` a tuple of non-negative integers, `type` one of
  #{inspect(@dense_types)}, `data` a binary of exactly `size(shape) * type_size(type)` bytes.
  `name` names the tensor in messages.
  """
  def dense!(data, shape, type, name) do
    shape!(shape, name)

    unless type in @dense_types do
      raise ArgumentError,
            "#{name} has type #{inspect(type)}, expected one of #{inspect(@dense_types)}"
    end

    unless is_binary(data) do
      raise ArgumentError, "#{name} data must be a binary, got: #{describe(data)}"
    end

    expected = size(shape) * type_size(type)

    if byte_size(data) != expected do
      raise ArgumentError,
            "#{name} data has #{byte_size(data)} bytes, expected #{expected} " <>
              "for shape #{inspect(shape)} and type #{inspect(type)}"
    end

    :ok
  end

  @doc "Checks that `shape` is a tuple of non-negative integers."
  def shape!(shape, name) do
    valid =
      is_tuple(shape) and
        Enum.all?(Tuple.to_list(shape), &(is_integer(&1) and &1 >= 0))

    unless valid do
      raise ArgumentError,
            "#{name} shape must be a tuple of non-negative integers, got: #{inspect(shape)}"
    end

    :ok
  end

  @doc "Checks that `value` is an `NxQuant.Dense` of a float type; `name` names it."
  def float_dense!(%NxQuant.Dense{type: type} = dense, name) do
    unless type in @float_types do
      raise ArgumentError,
            "#{name} has type #{inspect(type)}, expected one of #{inspect(@float_types)}"
    end

    dense
  end

  def float_dense!(other, name) do
    raise ArgumentError, "#{name} must be an %NxQuant.Dense{}, got: #{describe(other)}"
  end

  @doc "Checks that opts is a keyword list with only `allowed` keys; `fun` names the caller."
  def keyword!(opts, allowed, fun) do
    unless is_list(opts) and Enum.all?(opts, &match?({key, _} when is_atom(key), &1)) do
      raise ArgumentError, "#{fun} options must be a keyword list, got: #{describe(opts)}"
    end

    case Enum.find(opts, fn {key, _} -> key not in allowed end) do
      nil ->
        opts

      {key, _} ->
        raise ArgumentError,
              "#{fun} got unknown option #{inspect(key)}, expected one of #{inspect(allowed)}"
    end
  end

  @doc """
  Bits from the `:type` (`{:s, bits}`) and/or `:bits` options (default 4; both given must
  agree), and `:group_size` (default 64).
  """
  def quant_spec!(opts, fun) do
    type_bits =
      case Keyword.fetch(opts, :type) do
        :error ->
          nil

        {:ok, {:s, bits}} when bits in @bits ->
          bits

        {:ok, other} ->
          raise ArgumentError,
                "#{fun} option :type must be one of " <>
                  "#{Enum.map_join(@bits, ", ", &inspect({:s, &1}))}, got: #{inspect(other)}"
      end

    bits =
      case Keyword.fetch(opts, :bits) do
        :error ->
          type_bits || 4

        {:ok, bits} when bits in @bits ->
          if type_bits && type_bits != bits do
            raise ArgumentError,
                  "#{fun} options :type #{inspect({:s, type_bits})} and :bits #{bits} disagree"
          end

          bits

        {:ok, other} ->
          raise ArgumentError,
                "#{fun} option :bits must be one of #{inspect(@bits)}, got: #{inspect(other)}"
      end

    group_size = Keyword.get(opts, :group_size, 64)

    unless group_size in @group_sizes do
      raise ArgumentError,
            "#{fun} option :group_size must be one of #{inspect(@group_sizes)}, " <>
              "got: #{inspect(group_size)}"
    end

    {bits, group_size}
  end

  @doc "The `:threads` option: 0 (library default, the default) up to #{@max_threads}."
  def threads!(opts, fun) do
    case Keyword.get(opts, :threads, 0) do
      threads when is_integer(threads) and threads >= 0 and threads <= @max_threads ->
        threads

      other ->
        raise ArgumentError,
              "#{fun} option :threads must be an integer in 0..#{@max_threads} " <>
                "(0: the library default), got: #{inspect(other)}"
    end
  end

  @doc """
  The `:precision` option of a quantized matmul: `:exact` or `:int8` (the opt-in fast mode).
  When absent, the application environment's `:matmul_precision` (default `:exact`).
  """
  def precision!(opts, fun) do
    case Keyword.fetch(opts, :precision) do
      {:ok, precision} when precision in [:exact, :int8] ->
        precision

      {:ok, other} ->
        raise ArgumentError,
              "#{fun} option :precision must be :exact or :int8, got: #{inspect(other)}"

      :error ->
        case Application.get_env(:nx_quant, :matmul_precision, :exact) do
          precision when precision in [:exact, :int8] ->
            precision

          other ->
            raise ArgumentError,
                  "config :nx_quant, :matmul_precision must be :exact or :int8, " <>
                    "got: #{inspect(other)}"
        end
    end
  end

  @doc """
  The `:batch_invariant` option of a quantized matmul (a boolean): every output row computed in
  one fixed order, so a row's result is bit-identical whatever the number of rows in the call
  or how rows are split between calls. When absent, the application environment's
  `:batch_invariant` (default `false`).
  """
  def batch_invariant!(opts, fun) do
    case Keyword.fetch(opts, :batch_invariant) do
      {:ok, flag} when is_boolean(flag) ->
        flag

      {:ok, other} ->
        raise ArgumentError,
              "#{fun} option :batch_invariant must be a boolean, got: #{inspect(other)}"

      :error ->
        case Application.get_env(:nx_quant, :batch_invariant, false) do
          flag when is_boolean(flag) ->
            flag

          other ->
            raise ArgumentError,
                  "config :nx_quant, :batch_invariant must be a boolean, got: #{inspect(other)}"
        end
    end
  end

  @doc """
  What the matmul NIFs take as their precision argument: `precision!/2`'s atom, or
  `{precision, :batch_invariant}` when `batch_invariant!/2` is true.
  """
  def kernel_precision!(opts, fun) do
    precision = precision!(opts, fun)
    if batch_invariant!(opts, fun), do: {precision, :batch_invariant}, else: precision
  end

  @modes [:affine, :mxfp4, :mxfp8, :nvfp4]

  @doc "MLX's quantization modes, as atoms."
  def modes, do: @modes

  @doc """
  The `:mode` option (an atom or MLX's string spelling), default `:affine`.
  """
  def mode!(opts, fun) do
    case Keyword.get(opts, :mode, :affine) do
      mode when mode in @modes ->
        mode

      mode when mode in ["affine", "mxfp4", "mxfp8", "nvfp4"] ->
        String.to_existing_atom(mode)

      other ->
        raise ArgumentError,
              "#{fun} option :mode must be one of #{inspect(@modes)}, got: #{inspect(other)}"
    end
  end

  @doc "The fixed `{bits, group_size}` of a microscaled mode (MLX's)."
  def mode_spec(:mxfp4), do: {4, 32}
  def mode_spec(:mxfp8), do: {8, 32}
  def mode_spec(:nvfp4), do: {4, 16}

  @doc """
  `{bits, group_size}` for `mode`: `quant_spec!/2` for `:affine`; a microscaled mode fixes
  both, and `:type` / `:bits` / `:group_size` options that disagree raise.
  """
  def quant_spec!(opts, fun, :affine), do: quant_spec!(opts, fun)

  def quant_spec!(opts, fun, mode) do
    {bits, group_size} = mode_spec(mode)

    given_bits =
      case {Keyword.get(opts, :type), Keyword.get(opts, :bits)} do
        {nil, nil} -> bits
        {{:s, b}, nil} -> b
        {nil, b} -> b
        {{:s, b}, b} -> b
        {type, b} -> {type, b}
      end

    if given_bits != bits do
      raise ArgumentError,
            "#{fun} mode #{inspect(mode)} has #{bits} bits (type {:s, #{bits}}), got: " <>
              "#{inspect(Keyword.take(opts, [:type, :bits]))}"
    end

    if Keyword.get(opts, :group_size, group_size) != group_size do
      raise ArgumentError,
            "#{fun} mode #{inspect(mode)} has group_size #{group_size}, got: " <>
              inspect(Keyword.get(opts, :group_size))
    end

    {bits, group_size}
  end

  @doc "A float type option (e.g. `:out_type`), `default` when absent."
  def float_type_opt!(opts, key, default, fun) do
    case Keyword.get(opts, key, default) do
      type when type in @float_types ->
        type

      other ->
        raise ArgumentError,
              "#{fun} option #{inspect(key)} must be one of #{inspect(@float_types)}, " <>
                "got: #{inspect(other)}"
    end
  end

  @doc "A boolean option, `default` when absent."
  def boolean_opt!(opts, key, default, fun) do
    case Keyword.get(opts, key, default) do
      value when is_boolean(value) ->
        value

      other ->
        raise ArgumentError,
              "#{fun} option #{inspect(key)} must be a boolean, got: #{inspect(other)}"
    end
  end

  @doc """
  `text` (a path, a tensor name, a file's bytes) made safe to quote in a message: valid UTF-8
  is returned as is, any other byte is written `\\xNN`, so that every message is valid UTF-8
  (printing one that is not raises).
  """
  @spec printable(binary()) :: String.t()
  def printable(text) when is_binary(text) do
    if String.valid?(text), do: text, else: escape_invalid(text, "")
  end

  defp escape_invalid(<<>>, acc), do: acc

  defp escape_invalid(<<c::utf8, rest::binary>>, acc),
    do: escape_invalid(rest, <<acc::binary, c::utf8>>)

  defp escape_invalid(<<byte, rest::binary>>, acc) do
    hex = byte |> Integer.to_string(16) |> String.pad_leading(2, "0")
    escape_invalid(rest, acc <> "\\x" <> hex)
  end

  @doc "A short description of a term for messages (never dumps a large binary)."
  def describe(term) when is_binary(term), do: "a binary of #{byte_size(term)} bytes"
  def describe(term), do: inspect(term, limit: 10, printable_limit: 60)
end
