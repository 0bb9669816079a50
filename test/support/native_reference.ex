defmodule NxQuant.NativeReference do
  @moduledoc """
  A pure-Elixir reference for `NxQuant.Native`, written from Nx.BinaryBackend's rules and
  independent of `NxQuant.Native.Layout` (no strides: every op works on multi-indices).

  Elements are read as BinaryBackend reads them (floats as doubles, non-finite values as
  `:nan` / `:infinity` / `:neg_infinity`, integers as integers), computed on in Elixir
  (double / arbitrary-precision integers) and written as BinaryBackend writes them:
  `<<x::float-little-size>>` for f16/f32/f64 (round to nearest even), bf16 =
  `binary_part(<<x::float-little-32>>, 2, 2)` (the f32 rounding truncated), canonical NaN,
  integers wrapped to their low bits.

  Where BinaryBackend raises for a float result that IEEE defines (`1.0 / 0.0`, `exp(1000)`,
  `log(-1)`), the reference gives the IEEE value the native kernels are specified to return.
  """

  import Bitwise
  alias NxQuant.Dense

  @type value :: number() | :nan | :infinity | :neg_infinity

  # ---- reading and writing -------------------------------------------------------------------

  @doc "The elements of a binary as BinaryBackend reads them."
  def read(bin, {:f, 64}), do: for(<<x::binary-size(8) <- bin>>, do: read_float(x, 64))
  def read(bin, {:f, 32}), do: for(<<x::binary-size(4) <- bin>>, do: read_float(x, 32))
  def read(bin, {:f, 16}), do: for(<<x::binary-size(2) <- bin>>, do: read_float(x, 16))

  def read(bin, {:bf, 16}),
    do: for(<<x::binary-size(2) <- bin>>, do: read_float(<<0::16, x::binary>>, 32))

  def read(bin, {:s, size}), do: for(<<x::signed-little-size(size) <- bin>>, do: x)
  def read(bin, {:u, size}), do: for(<<x::unsigned-little-size(size) <- bin>>, do: x)

  defp read_float(bits, size) do
    case bits do
      <<x::float-little-size(size)>> ->
        x

      _ ->
        <<int::little-size(size)>> = bits
        mantissa_bits = %{16 => 10, 32 => 23, 64 => 52}[size]
        sign = int >>> (size - 1)
        mantissa = int &&& (1 <<< mantissa_bits) - 1

        cond do
          mantissa != 0 -> :nan
          sign == 1 -> :neg_infinity
          true -> :infinity
        end
    end
  end

  @doc "A list of values written as BinaryBackend writes them."
  def write(values, type), do: for(v <- values, into: <<>>, do: write_one(v, type))

  @doc "One value written to `type`."
  def write_one(:nan, {:f, 64}), do: <<0x7FF8000000000000::little-64>>
  def write_one(:nan, {:f, 32}), do: <<0x7FC00000::little-32>>
  def write_one(:nan, {:f, 16}), do: <<0x7E00::little-16>>
  def write_one(:nan, {:bf, 16}), do: <<0x7FC0::little-16>>
  def write_one(:infinity, {:f, 64}), do: <<0x7FF0000000000000::little-64>>
  def write_one(:infinity, {:f, 32}), do: <<0x7F800000::little-32>>
  def write_one(:infinity, {:f, 16}), do: <<0x7C00::little-16>>
  def write_one(:infinity, {:bf, 16}), do: <<0x7F80::little-16>>
  def write_one(:neg_infinity, {:f, 64}), do: <<0xFFF0000000000000::little-64>>
  def write_one(:neg_infinity, {:f, 32}), do: <<0xFF800000::little-32>>
  def write_one(:neg_infinity, {:f, 16}), do: <<0xFC00::little-16>>
  def write_one(:neg_infinity, {:bf, 16}), do: <<0xFF80::little-16>>
  def write_one(:neg_zero, type), do: write_one(neg_zero(), type)
  def write_one(x, {:f, size}) when is_number(x), do: <<x::float-little-size(size)>>
  def write_one(x, {:bf, 16}) when is_number(x), do: binary_part(<<x::float-little-32>>, 2, 2)
  def write_one(x, {:s, size}) when is_integer(x), do: <<x::signed-little-size(size)>>
  def write_one(x, {:u, size}) when is_integer(x), do: <<x::unsigned-little-size(size)>>

  @doc """
  -0.0, built at run time: before OTP 27 the compiler merges the literals 0.0 and -0.0 (they
  compare `=:=`), so a literal -0.0 may load as 0.0. Test data uses the atom `:neg_zero`.
  """
  def neg_zero do
    <<x::float>> = <<0x8000000000000000::64>>
    x
  end

  @doc "A %Dense{} holding `values` written as `type`."
  def tensor(values, shape, type) do
    %Dense{data: write(values, type), shape: shape, type: type}
  end

  @doc "The elements of a %Dense{}."
  def values(%Dense{data: data, type: type}), do: read(data, type)

  @doc "A value rounded to `type` (write then read)."
  def round_to(value, type), do: value |> write_one(type) |> read(type) |> hd()

  # ---- test data -----------------------------------------------------------------------------

  @doc """
  Deterministic test data for `type`: floats in [-4, 4) (some exact small values, `specials`
  mixed in when given), integers over the whole range of the type (with its extremes).
  Options: `:seed`, `:specials` (a list of values to mix in, floats only), `:range`
  ({lo, hi} for integers and floats), `:positive` (floats in (0, 4)).
  """
  def random(shape, type, opts \\ []) do
    count = size(shape)
    seed = Keyword.get(opts, :seed, 1)
    state = :rand.seed_s(:exsss, {seed, count + 17, 31_337})
    specials = Keyword.get(opts, :specials, [])
    {values, _} = Enum.map_reduce(1..count//1, state, &random_value(&1, &2, type, opts, specials))
    tensor(values, shape, type)
  end

  defp random_value(i, state, {kind, _} = type, opts, specials) when kind in [:f, :bf] do
    {u, state} = :rand.uniform_s(state)
    {lo, hi} = Keyword.get(opts, :range, if(opts[:positive], do: {0.0, 4.0}, else: {-4.0, 4.0}))

    value =
      cond do
        specials != [] and rem(i, 5) == 0 -> Enum.at(specials, rem(div(i, 5), length(specials)))
        rem(i, 7) == 3 -> lo + Float.floor(u * (hi - lo) * 4) / 4
        true -> lo + u * (hi - lo)
      end

    value = if opts[:positive] && is_number(value) && value <= 0, do: 0.5, else: value

    {round_to(value, type), state}
  end

  defp random_value(i, state, type, opts, _specials) do
    {min, max} = Keyword.get(opts, :range, int_range(type))
    {u, state} = :rand.uniform_s(max - min + 1, state)

    value =
      case rem(i, 11) do
        1 -> min
        2 -> max
        3 -> max(min, min(0, max))
        _ -> min + u - 1
      end

    {value, state}
  end

  @doc "The range of an integer type."
  def int_range({:s, size}), do: {-(1 <<< (size - 1)), (1 <<< (size - 1)) - 1}
  def int_range({:u, size}), do: {0, (1 <<< size) - 1}

  # ---- shapes and indices --------------------------------------------------------------------

  @doc "Number of elements."
  def size(shape), do: shape |> Tuple.to_list() |> Enum.product()

  @doc "Every multi-index of a shape (lists), row-major."
  def indices(shape) do
    shape
    |> Tuple.to_list()
    |> Enum.reduce([[]], fn d, acc -> for idx <- acc, i <- 0..(d - 1)//1, do: idx ++ [i] end)
  end

  @doc "Row-major flat position of a multi-index."
  def flat(index, shape) do
    index
    |> Enum.zip(Tuple.to_list(shape))
    |> Enum.reduce(0, fn {i, d}, acc -> acc * d + i end)
  end

  defp table(%Dense{} = t), do: t |> values() |> List.to_tuple()
  defp get(table, shape, index), do: elem(table, flat(index, shape))

  # Nx's implicit broadcasting: the operand's element for an output multi-index.
  defp broadcast_get(%Dense{shape: shape} = t, tab, out_index) do
    lead = length(out_index) - tuple_size(shape)

    index =
      out_index
      |> Enum.drop(lead)
      |> Enum.with_index()
      |> Enum.map(fn {i, k} -> if elem(shape, k) == 1, do: 0, else: i end)

    get(tab, t.shape, index)
  end

  # ---- element-wise --------------------------------------------------------------------------

  @doc "Element-wise unary op, BinaryBackend's formulas (see NxQuant.Native.unary/3)."
  def unary(op, %Dense{shape: shape} = t, out_type) do
    t |> values() |> Enum.map(&unary_one(op, &1, t.type)) |> tensor(shape, out_type)
  end

  @doc "Element-wise binary op with implicit broadcasting to `out_shape`."
  def binary(op, a, b, out_shape, out_type) do
    ta = table(a)
    tb = table(b)

    out_shape
    |> indices()
    |> Enum.map(fn idx ->
      binary_one(op, broadcast_get(a, ta, idx), broadcast_get(b, tb, idx), out_type)
    end)
    |> tensor(out_shape, out_type)
  end

  @doc "Nx.select with implicit broadcasting."
  def select(pred, on_true, on_false, out_shape, out_type) do
    {tp, tt, tf} = {table(pred), table(on_true), table(on_false)}

    out_shape
    |> indices()
    |> Enum.map(fn idx ->
      if broadcast_get(pred, tp, idx) == 0,
        do: broadcast_get(on_false, tf, idx),
        else: broadcast_get(on_true, tt, idx)
    end)
    |> Enum.map(&convert(&1, out_type))
    |> tensor(out_shape, out_type)
  end

  @doc "Nx.clip as BinaryBackend: `greater(x, lo) ? x : lo`, then `less(that, hi) ? that : hi`."
  def clip(%Dense{shape: shape} = t, lo, hi, out_type) do
    {tt, tl, th} = {table(t), table(lo), table(hi)}

    shape
    |> indices()
    |> Enum.map(fn idx ->
      x = broadcast_get(t, tt, idx)
      l = broadcast_get(lo, tl, idx)
      h = broadcast_get(hi, th, idx)
      c = if compare(:greater, x, l) == 1, do: x, else: l
      c = if compare(:less, c, h) == 1, do: c, else: h
      convert(c, out_type)
    end)
    |> tensor(shape, out_type)
  end

  @doc "Nx.as_type as BinaryBackend."
  def as_type(%Dense{shape: shape} = t, out_type) do
    t |> values() |> Enum.map(&convert(&1, out_type)) |> tensor(shape, out_type)
  end

  # A value as `type` receives it: float -> integer truncates (NaN 0, infinities saturate).
  defp convert(x, {kind, _}) when kind in [:f, :bf], do: x
  defp convert(:nan, _int), do: 0
  defp convert(:infinity, type), do: elem(int_range(type), 1)
  defp convert(:neg_infinity, type), do: elem(int_range(type), 0)
  defp convert(x, _int), do: trunc(x)

  @doc "One unary op on one element."
  def unary_one(op, x, type)

  def unary_one(:negate, x, _), do: neg(x)
  def unary_one(:abs, x, _), do: ext_abs(x)
  # BinaryBackend's element_sign compares with Erlang's term order, where atoms are greater
  # than numbers: the sign of NaN and of both infinities is 1.
  def unary_one(:sign, x, _) when is_number(x) and x < 0, do: -1
  def unary_one(:sign, x, _) when is_number(x) and x > 0, do: 1
  def unary_one(:sign, x, _) when is_atom(x), do: 1
  def unary_one(:sign, x, _), do: x
  def unary_one(op, x, _) when op in [:floor, :ceil, :round] and is_integer(x), do: x
  def unary_one(op, x, _) when op in [:floor, :ceil, :round] and not is_number(x), do: x
  def unary_one(:floor, x, _), do: :math.floor(x)
  def unary_one(:ceil, x, _), do: :math.ceil(x)
  def unary_one(:round, x, _), do: round(x)
  def unary_one(:is_nan, x, _), do: if(x == :nan, do: 1, else: 0)
  def unary_one(:is_infinity, x, _), do: if(x in [:infinity, :neg_infinity], do: 1, else: 0)
  def unary_one(:logical_not, x, _), do: if(x == 0, do: 1, else: 0)
  def unary_one(:bitwise_not, x, _), do: bnot(x)
  def unary_one(:exp, x, _), do: exp(x)
  def unary_one(:expm1, x, _), do: add(exp(x), -1)
  def unary_one(:log, x, _), do: log(x)
  def unary_one(:log1p, x, _), do: log(add(x, 1))
  def unary_one(:sigmoid, x, _), do: divide(1, add(exp(neg(x)), 1))
  def unary_one(:sqrt, x, _), do: sqrt(x)
  def unary_one(:rsqrt, x, _), do: divide(1, sqrt(x))
  def unary_one(:cbrt, :nan, _), do: :nan
  def unary_one(:cbrt, :infinity, _), do: :infinity
  def unary_one(:cbrt, :neg_infinity, _), do: :neg_infinity
  def unary_one(:cbrt, x, _) when x >= 0, do: :math.pow(x, 1 / 3)
  def unary_one(:cbrt, x, _), do: -:math.pow(-x, 1 / 3)
  def unary_one(:erf_inv, x, _), do: erf_inv(x)
  def unary_one(_op, :nan, _), do: :nan

  def unary_one(op, x, _) when is_number(x) do
    try do
      apply(:math, math_name(op), [x])
    rescue
      ArithmeticError -> domain_result(op, x)
    end
  end

  def unary_one(op, x, _), do: non_finite_unary(op, x)

  defp math_name(:erfc), do: :erfc
  defp math_name(op), do: op

  # IEEE results where :math raises (out of the domain or overflowing).
  defp domain_result(op, x) when op in [:cosh, :exp],
    do: if(op == :exp and x < 0, do: 0.0, else: :infinity)

  defp domain_result(:sinh, x), do: if(x > 0, do: :infinity, else: :neg_infinity)
  defp domain_result(:atanh, x) when x == 1, do: :infinity
  defp domain_result(:atanh, x) when x == -1, do: :neg_infinity
  defp domain_result(_op, _x), do: :nan

  defp non_finite_unary(op, inf) do
    positive = inf == :infinity

    case op do
      # Complex.tanh of an infinity is sinh / cosh = inf / inf
      :tanh -> :nan
      :atan -> if positive, do: :math.pi() / 2, else: -:math.pi() / 2
      :erf -> if positive, do: 1.0, else: -1.0
      :erfc -> if positive, do: 0.0, else: 2.0
      :cosh -> :infinity
      :sinh -> inf
      :asinh -> inf
      :acosh -> if positive, do: :infinity, else: :nan
      :sqrt -> if positive, do: :infinity, else: :nan
      :log -> if positive, do: :infinity, else: :nan
      _ -> :nan
    end
  end

  # Complex.erf_inv's algorithm: Giles' single-precision approximation, evaluated in double.
  defp erf_inv(:nan), do: :nan
  defp erf_inv(x) when not is_number(x), do: :nan
  defp erf_inv(x) when x == 1, do: :infinity
  defp erf_inv(x) when x == -1, do: :neg_infinity
  defp erf_inv(x) when x == 0, do: 0

  defp erf_inv(x) do
    case (1 - x) * (1 + x) do
      p when p <= 0 -> :nan
      p -> erf_inv_p(-:math.log(p)) * x
    end
  end

  @erf_inv_small [2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06] ++
                   [0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941]
  @erf_inv_large [-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844] ++
                   [0.00573950773, -0.0076224613, 0.00943887047, 1.00167406, 2.83297682]

  defp erf_inv_p(w) when w < 5, do: horner(@erf_inv_small, w - 2.5)
  defp erf_inv_p(w), do: horner(@erf_inv_large, :math.sqrt(w) - 3)

  defp horner([c | cs], w), do: Enum.reduce(cs, c, fn n, acc -> acc * w + n end)

  @doc "One binary op on two elements; `out_type` decides integer vs float arithmetic."
  def binary_one(op, a, b, out_type)

  def binary_one(op, a, b, _)
      when op in [:equal, :not_equal, :less, :less_equal, :greater, :greater_equal],
      do: compare(op, a, b)

  def binary_one(:logical_and, a, b, _), do: bool(a != 0 and b != 0)
  def binary_one(:logical_or, a, b, _), do: bool(a != 0 or b != 0)
  def binary_one(:logical_xor, a, b, _), do: bool(a != 0 != (b != 0))
  def binary_one(:bitwise_and, a, b, _), do: band(a, b)
  def binary_one(:bitwise_or, a, b, _), do: bor(a, b)
  def binary_one(:bitwise_xor, a, b, _), do: bxor(a, b)
  def binary_one(:left_shift, a, b, _), do: bsl(a, b)
  def binary_one(:right_shift, a, b, _), do: bsr(a, b)
  def binary_one(:add, a, b, _), do: add(a, b)
  def binary_one(:subtract, a, b, _), do: add(a, neg(b))
  def binary_one(:multiply, a, b, _), do: mul(a, b)
  def binary_one(:divide, a, b, _), do: divide(a, b)
  def binary_one(:quotient, a, b, _), do: div(a, b)
  def binary_one(:remainder, a, b, _) when is_integer(a) and is_integer(b), do: rem(a, b)
  def binary_one(:remainder, a, b, _) when is_number(a) and is_number(b), do: fmod(a, b)
  def binary_one(:remainder, _a, _b, _), do: :nan
  def binary_one(:max, a, b, _), do: ext_max(a, b)
  def binary_one(:min, a, b, _), do: ext_min(a, b)
  def binary_one(:atan2, a, b, _) when is_number(a) and is_number(b), do: :math.atan2(a, b)

  def binary_one(:pow, a, b, {kind, _}) when kind in [:s, :u] and is_integer(a) and is_integer(b),
    do: Integer.pow(a, b)

  def binary_one(:pow, a, b, _) when is_number(a) and is_number(b) do
    try do
      :math.pow(a, b)
    rescue
      ArithmeticError -> if a < 0, do: :nan, else: :infinity
    end
  end

  defp fmod(a, b) do
    if b == 0, do: :nan, else: :math.fmod(a, b)
  end

  defp bool(true), do: 1
  defp bool(false), do: 0

  @doc "BinaryBackend's comparisons (NaN compares false except :not_equal)."
  def compare(:not_equal, a, b), do: 1 - compare(:equal, a, b)
  def compare(_op, :nan, _), do: 0
  def compare(_op, _, :nan), do: 0
  def compare(:equal, a, b), do: bool(ord(a) == ord(b))
  def compare(:less, a, b), do: bool(ord(a) < ord(b))
  def compare(:less_equal, a, b), do: bool(ord(a) <= ord(b))
  def compare(:greater, a, b), do: bool(ord(a) > ord(b))
  def compare(:greater_equal, a, b), do: bool(ord(a) >= ord(b))

  # A comparable key: {rank, value}, infinities outside the numbers (-0.0 == 0.0).
  defp ord(:neg_infinity), do: {0, 0}
  defp ord(:infinity), do: {2, 0}
  defp ord(x), do: {1, x}

  defp ext_max(:nan, _), do: :nan
  defp ext_max(_, :nan), do: :nan
  defp ext_max(:infinity, _), do: :infinity
  defp ext_max(_, :infinity), do: :infinity
  defp ext_max(:neg_infinity, x), do: x
  defp ext_max(x, :neg_infinity), do: x
  defp ext_max(a, b), do: max(a, b)

  defp ext_min(:nan, _), do: :nan
  defp ext_min(_, :nan), do: :nan
  defp ext_min(:infinity, x), do: x
  defp ext_min(x, :infinity), do: x
  defp ext_min(:neg_infinity, _), do: :neg_infinity
  defp ext_min(_, :neg_infinity), do: :neg_infinity
  defp ext_min(a, b), do: min(a, b)

  # ---- extended-real arithmetic (IEEE where Erlang would raise) ------------------------------

  defp neg(:nan), do: :nan
  defp neg(:infinity), do: :neg_infinity
  defp neg(:neg_infinity), do: :infinity
  defp neg(x), do: -x

  defp ext_abs(:neg_infinity), do: :infinity
  defp ext_abs(x) when is_number(x), do: abs(x)
  defp ext_abs(x), do: x

  defp add(:nan, _), do: :nan
  defp add(_, :nan), do: :nan
  defp add(:infinity, :neg_infinity), do: :nan
  defp add(:neg_infinity, :infinity), do: :nan
  defp add(inf, _) when inf in [:infinity, :neg_infinity], do: inf
  defp add(_, inf) when inf in [:infinity, :neg_infinity], do: inf
  defp add(a, b), do: finite(fn -> a + b end, sign(a))

  defp mul(:nan, _), do: :nan
  defp mul(_, :nan), do: :nan

  defp mul(a, b) when a in [:infinity, :neg_infinity] or b in [:infinity, :neg_infinity] do
    if a == 0 or b == 0, do: :nan, else: inf_of(sign(a) * sign(b))
  end

  defp mul(a, b), do: finite(fn -> a * b end, sign(a) * sign(b))

  defp divide(:nan, _), do: :nan
  defp divide(_, :nan), do: :nan

  defp divide(a, b) when a in [:infinity, :neg_infinity] do
    if b in [:infinity, :neg_infinity], do: :nan, else: inf_of(sign(a) * sign(b))
  end

  # Complex.divide gives the integer 0 (written as +0.0) whatever the signs.
  defp divide(_a, b) when b in [:infinity, :neg_infinity], do: 0

  defp divide(a, b) when b == 0 do
    if a == 0, do: :nan, else: inf_of(sign(a) * sign(b))
  end

  defp divide(a, b), do: finite(fn -> a / b end, sign(a) * sign(b))

  # The sign of a value, -0.0 included (-1 or 1).
  defp sign(:infinity), do: 1
  defp sign(:neg_infinity), do: -1
  defp sign(x) when is_integer(x), do: if(x < 0, do: -1, else: 1)

  defp sign(x) do
    <<s::1, _::63>> = <<x::float>>
    if s == 1, do: -1, else: 1
  end

  defp inf_of(s) when s > 0, do: :infinity
  defp inf_of(_), do: :neg_infinity

  # A double result, or the infinity of `overflow_sign` when Erlang raises on overflow.
  defp finite(fun, overflow_sign) do
    fun.()
  rescue
    ArithmeticError -> inf_of(overflow_sign)
  end

  defp exp(:nan), do: :nan
  defp exp(:infinity), do: :infinity
  defp exp(:neg_infinity), do: 0.0

  defp exp(x) do
    :math.exp(x)
  rescue
    ArithmeticError -> if x > 0, do: :infinity, else: 0.0
  end

  defp log(:nan), do: :nan
  defp log(:infinity), do: :infinity
  defp log(:neg_infinity), do: :nan
  defp log(x) when x == 0, do: :neg_infinity
  defp log(x) when x < 0, do: :nan
  defp log(x), do: :math.log(x)

  defp sqrt(:nan), do: :nan
  defp sqrt(:infinity), do: :infinity
  defp sqrt(:neg_infinity), do: :nan
  defp sqrt(x) when x < 0, do: :nan
  defp sqrt(x), do: :math.sqrt(x)

  # ---- views and assembly --------------------------------------------------------------------

  @doc "Nx.transpose."
  def transpose(%Dense{shape: shape, type: type} = t, axes) do
    tab = table(t)
    out_shape = axes |> Enum.map(&elem(shape, &1)) |> List.to_tuple()

    out_shape
    |> indices()
    |> Enum.map(fn idx ->
      in_index = for k <- 0..(tuple_size(shape) - 1)//1, do: Enum.at(idx, index_of(axes, k))
      get(tab, shape, in_index)
    end)
    |> tensor(out_shape, type)
  end

  defp index_of(list, x), do: Enum.find_index(list, &(&1 == x))

  @doc "Nx.Backend.broadcast/4."
  def broadcast(%Dense{shape: shape, type: type} = t, out_shape, axes) do
    tab = table(t)

    out_shape
    |> indices()
    |> Enum.map(fn idx ->
      in_index =
        axes
        |> Enum.with_index()
        |> Enum.map(fn {axis, i} -> if elem(shape, i) == 1, do: 0, else: Enum.at(idx, axis) end)

      get(tab, shape, in_index)
    end)
    |> tensor(out_shape, type)
  end

  @doc "Nx.reverse."
  def reverse(%Dense{shape: shape, type: type} = t, axes) do
    tab = table(t)

    shape
    |> indices()
    |> Enum.map(fn idx ->
      idx =
        idx
        |> Enum.with_index()
        |> Enum.map(fn {i, k} -> if k in axes, do: elem(shape, k) - 1 - i, else: i end)

      get(tab, shape, idx)
    end)
    |> tensor(shape, type)
  end

  @doc "Nx.slice as BinaryBackend (start indices clamped to `dim - length`)."
  def slice(%Dense{shape: shape, type: type} = t, starts, lengths, strides) do
    tab = table(t)
    dims = Tuple.to_list(shape)

    starts = Enum.zip_with([starts, lengths, dims], fn [s, l, d] -> min(max(s, 0), d - l) end)

    out_shape =
      Enum.zip_with(lengths, strides, fn l, s -> div(l + s - 1, s) end) |> List.to_tuple()

    out_shape
    |> indices()
    |> Enum.map(fn idx ->
      get(tab, shape, Enum.zip_with([idx, starts, strides], fn [i, s, st] -> s + i * st end))
    end)
    |> tensor(out_shape, type)
  end

  @doc "Nx.put_slice as BinaryBackend (starts clamped), output `out_type`."
  def put_slice(%Dense{shape: shape} = t, starts, %Dense{shape: s_shape} = slice, out_type) do
    starts =
      Enum.zip_with([starts, Tuple.to_list(s_shape), Tuple.to_list(shape)], fn [s, l, d] ->
        min(max(s, 0), d - l)
      end)

    tab = table(t)
    stab = table(slice)

    shape
    |> indices()
    |> Enum.map(fn idx ->
      rel = Enum.zip_with(idx, starts, &(&1 - &2))

      inside =
        rel |> Enum.zip(Tuple.to_list(s_shape)) |> Enum.all?(fn {r, d} -> r >= 0 and r < d end)

      if inside, do: get(stab, s_shape, rel), else: get(tab, shape, idx)
    end)
    |> Enum.map(&convert(&1, out_type))
    |> tensor(shape, out_type)
  end

  @doc "Nx.concatenate."
  def concatenate(tensors, axis, out_type) do
    [first | _] = tensors
    total = tensors |> Enum.map(&elem(&1.shape, axis)) |> Enum.sum()
    out_shape = put_elem(first.shape, axis, total)
    tabs = Enum.map(tensors, &{&1, table(&1)})

    out_shape
    |> indices()
    |> Enum.map(fn idx ->
      pos = Enum.at(idx, axis)

      {t, tab, local} =
        Enum.reduce_while(tabs, pos, fn {t, tab}, p ->
          d = elem(t.shape, axis)
          if p < d, do: {:halt, {t, tab, p}}, else: {:cont, p - d}
        end)

      get(tab, t.shape, List.replace_at(idx, axis, local))
    end)
    |> Enum.map(&convert(&1, out_type))
    |> tensor(out_shape, out_type)
  end

  @doc "Nx.stack."
  def stack(tensors, axis, out_type) do
    tensors
    |> Enum.map(fn %Dense{shape: s} = t -> %{t | shape: Tuple.insert_at(s, axis, 1)} end)
    |> concatenate(axis, out_type)
  end

  @doc "Nx.pad (negative low/high crop; interior padding between elements)."
  def pad(%Dense{shape: shape} = t, pad_value, config, out_type) do
    [value] = values(pad_value)
    tab = table(t)

    out_shape =
      config
      |> Enum.zip(Tuple.to_list(shape))
      |> Enum.map(fn {{lo, hi, i}, d} -> d + (d - 1) * i + lo + hi end)
      |> List.to_tuple()

    out_shape
    |> indices()
    |> Enum.map(fn idx ->
      source =
        Enum.zip_with([idx, config, Tuple.to_list(shape)], fn [p, {lo, _hi, i}, d] ->
          q = p - lo
          if q >= 0 and rem(q, i + 1) == 0 and div(q, i + 1) < d, do: div(q, i + 1), else: nil
        end)

      if Enum.any?(source, &is_nil/1), do: value, else: get(tab, shape, source)
    end)
    |> Enum.map(&convert(&1, out_type))
    |> tensor(out_shape, out_type)
  end

  @doc "Nx.iota."
  def iota(shape, type, nil) do
    0..(size(shape) - 1)//1
    |> Enum.to_list()
    |> Enum.map(&convert(&1, type))
    |> tensor(shape, type)
  end

  def iota(shape, type, axis) do
    shape |> indices() |> Enum.map(&Enum.at(&1, axis)) |> tensor(shape, type)
  end

  # ---- reductions ----------------------------------------------------------------------------

  # The groups of a reduction: for each output position (row-major over the kept axes), the
  # reduced elements in row-major order over the reduced axes.
  defp groups(%Dense{shape: shape} = t, axes) do
    tab = table(t)
    rank = tuple_size(shape)
    kept = Enum.to_list(0..(rank - 1)//1) -- axes
    kept_shape = kept |> Enum.map(&elem(shape, &1)) |> List.to_tuple()
    red_shape = axes |> Enum.map(&elem(shape, &1)) |> List.to_tuple()

    for k <- indices(kept_shape) do
      for r <- indices(red_shape) do
        index =
          for axis <- 0..(rank - 1)//1 do
            if axis in axes,
              do: Enum.at(r, index_of(axes, axis)),
              else: Enum.at(k, index_of(kept, axis))
          end

        get(tab, shape, index)
      end
    end
  end

  @doc "Nx.sum & co as BinaryBackend (accumulated from 0 / 1 in row-major order)."
  def reduce(op, %Dense{shape: shape} = t, axes, keep_axes, out_type) do
    axes = Enum.sort(axes || Enum.to_list(0..(tuple_size(shape) - 1)//1))

    out_shape =
      if keep_axes,
        do: Enum.reduce(axes, shape, &put_elem(&2, &1, 1)),
        else: axes |> Enum.reverse() |> Enum.reduce(shape, &Tuple.delete_at(&2, &1))

    t
    |> groups(axes)
    |> Enum.map(&reduce_group(op, &1))
    |> Enum.map(&convert(&1, out_type))
    |> tensor(out_shape, out_type)
  end

  defp reduce_group(:sum, xs), do: Enum.reduce(xs, 0, &add(&1, &2))
  defp reduce_group(:product, xs), do: Enum.reduce(xs, 1, &mul(&1, &2))
  defp reduce_group(:reduce_max, [x | xs]), do: Enum.reduce(xs, x, &ext_max(&2, &1))
  defp reduce_group(:reduce_min, [x | xs]), do: Enum.reduce(xs, x, &ext_min(&2, &1))
  defp reduce_group(:all, xs), do: bool(Enum.all?(xs, &(&1 != 0)))
  defp reduce_group(:any, xs), do: bool(Enum.any?(xs, &(&1 != 0)))

  @doc "Nx.argmax / argmin as BinaryBackend (a NaN always takes the index)."
  def arg_reduce(op, %Dense{shape: shape} = t, axis, keep_axis, tie_break, out_type) do
    {axes, out_shape} =
      if axis == nil do
        {Enum.to_list(0..(tuple_size(shape) - 1)//1), {}}
      else
        {[axis], if(keep_axis, do: put_elem(shape, axis, 1), else: Tuple.delete_at(shape, axis))}
      end

    better =
      case {op, tie_break} do
        {:argmax, :low} -> &(compare(:greater, &1, &2) == 1)
        {:argmax, :high} -> &(compare(:greater, &1, &2) == 1 or &1 == &2)
        {:argmin, :low} -> &(compare(:less, &1, &2) == 1)
        {:argmin, :high} -> &(compare(:less, &1, &2) == 1 or &1 == &2)
      end

    t
    |> groups(axes)
    |> Enum.map(fn [x | xs] ->
      {_, index, _} =
        Enum.reduce(xs, {x, 0, 1}, fn y, {best, bi, i} ->
          if y == :nan or better.(y, best), do: {y, i, i + 1}, else: {best, bi, i + 1}
        end)

      index
    end)
    |> tensor(out_shape, out_type)
  end

  @doc """
  Nx.cumulative_* as Nx computes it on BinaryBackend: an associative scan (Blelloch's) whose
  every step is rounded to the tensor's type.
  """
  def cumulative(op, %Dense{shape: shape} = t, axis, reverse, out_type) do
    fun =
      case op do
        :cumulative_sum -> &add/2
        :cumulative_product -> &mul/2
        :cumulative_max -> &ext_max/2
        :cumulative_min -> &ext_min/2
      end

    round = fn x -> x |> convert(out_type) |> round_to(out_type) end
    tab = table(t)
    n = elem(shape, axis)
    lines_shape = Tuple.delete_at(shape, axis)

    lines =
      for k <- indices(lines_shape) do
        line = for i <- 0..(n - 1)//1, do: get(tab, shape, List.insert_at(k, axis, i))
        line = if reverse, do: Enum.reverse(line), else: line
        line = line |> Enum.map(round) |> scan(fn a, b -> round.(fun.(a, b)) end)
        if reverse, do: Enum.reverse(line), else: line
      end
      |> List.to_tuple()

    shape
    |> indices()
    |> Enum.map(fn idx ->
      {i, k} = List.pop_at(idx, axis)
      elem(lines, flat(k, lines_shape)) |> Enum.at(i)
    end)
    |> tensor(shape, out_type)
  end

  # Nx's do_associative_scan on one line (fun(odd, even) combines pairs).
  defp scan(line, _fun) when length(line) < 2, do: line

  defp scan(line, fun) do
    n = length(line)
    even = line |> Enum.take(n - 1) |> Enum.take_every(2)
    odd = line |> Enum.drop(1) |> Enum.take_every(2)
    pairs = Enum.zip_with(odd, even, fun)
    scanned_odd = scan(pairs, fun)

    cond do
      n == 2 ->
        even ++ pairs

      rem(n, 2) == 0 ->
        scanned_even =
          Enum.zip_with(Enum.take(scanned_odd, div(n, 2) - 1), Enum.drop(even, 1), fun)

        interleave([hd(even) | scanned_even], scanned_odd)

      true ->
        rest_even = line |> Enum.drop(2) |> Enum.take_every(2)
        scanned_even = Enum.zip_with(scanned_odd, rest_even, fun)
        [hd(line) | interleave(scanned_odd, scanned_even)]
    end
  end

  defp interleave([a | as], [b | bs]), do: [a, b | interleave(as, bs)]
  defp interleave(as, []), do: as
  defp interleave([], bs), do: bs

  # ---- sorting -------------------------------------------------------------------------------

  # BinaryBackend's sort comparators (Enum.sort_by with them is stable).
  defp sorter(:asc) do
    fn a, b ->
      case {a, b} do
        {x, x} -> true
        {:neg_infinity, _} -> true
        {_, :neg_infinity} -> false
        {:nan, _} -> false
        {_, :nan} -> true
        {:infinity, _} -> false
        {_, :infinity} -> true
        {a, b} -> a <= b
      end
    end
  end

  defp sorter(:desc) do
    fn a, b ->
      case {a, b} do
        {x, x} -> true
        {:neg_infinity, _} -> false
        {_, :neg_infinity} -> true
        {:nan, _} -> true
        {_, :nan} -> false
        {:infinity, _} -> true
        {_, :infinity} -> false
        {a, b} -> a >= b
      end
    end
  end

  defp sorted_lines(%Dense{shape: shape} = t, axis, direction) do
    tab = table(t)
    n = elem(shape, axis)
    lines_shape = Tuple.delete_at(shape, axis)

    lines =
      for k <- indices(lines_shape) do
        for(i <- 0..(n - 1)//1, do: {get(tab, shape, List.insert_at(k, axis, i)), i})
        |> Enum.sort_by(&elem(&1, 0), sorter(direction))
      end
      |> List.to_tuple()

    fn idx ->
      {i, k} = List.pop_at(idx, axis)
      elem(lines, flat(k, lines_shape)) |> Enum.at(i)
    end
  end

  @doc "Nx.sort as BinaryBackend."
  def sort(%Dense{shape: shape, type: type} = t, axis, direction) do
    at = sorted_lines(t, axis, direction)
    shape |> indices() |> Enum.map(&elem(at.(&1), 0)) |> tensor(shape, type)
  end

  @doc "Nx.argsort as BinaryBackend."
  def argsort(%Dense{shape: shape} = t, axis, direction, out_type) do
    at = sorted_lines(t, axis, direction)
    shape |> indices() |> Enum.map(&elem(at.(&1), 1)) |> tensor(shape, out_type)
  end

  @doc "Nx.top_k as Nx's default: a stable descending argsort along the last axis, first k."
  def top_k(%Dense{shape: shape, type: type} = t, k, index_type) do
    last = tuple_size(shape) - 1
    at = sorted_lines(t, last, :desc)
    out_shape = put_elem(shape, last, k)
    picked = out_shape |> indices() |> Enum.map(at)

    {tensor(Enum.map(picked, &elem(&1, 0)), out_shape, type),
     tensor(Enum.map(picked, &elem(&1, 1)), out_shape, index_type)}
  end

  # ---- indexing ------------------------------------------------------------------------------

  @doc "Nx.gather as BinaryBackend; raises ArgumentError on an out-of-range index."
  def gather(%Dense{shape: shape, type: type} = t, %Dense{shape: i_shape} = indices, axes) do
    tab = table(t)
    rank = tuple_size(shape)
    depth = elem(i_shape, tuple_size(i_shape) - 1)
    tuples = indices |> values() |> Enum.chunk_every(max(depth, 1))
    tuples = if depth == 0, do: List.duplicate([], div_size(i_shape)), else: tuples
    rest = Enum.to_list(0..(rank - 1)//1) -- axes
    rest_shape = rest |> Enum.map(&elem(shape, &1)) |> List.to_tuple()

    out =
      for tuple <- tuples, r <- indices(rest_shape) do
        index =
          for axis <- 0..(rank - 1)//1 do
            if axis in axes do
              i = Enum.at(tuple, index_of(axes, axis))

              if i < 0 or i >= elem(shape, axis) do
                raise ArgumentError, "index #{i} is out of bounds for axis #{axis}"
              end

              i
            else
              Enum.at(r, index_of(rest, axis))
            end
          end

        get(tab, shape, index)
      end

    out_shape = List.to_tuple(Enum.drop(Tuple.to_list(i_shape), -1) ++ Tuple.to_list(rest_shape))
    tensor(out, out_shape, type)
  end

  defp div_size(i_shape), do: i_shape |> Tuple.delete_at(tuple_size(i_shape) - 1) |> size()

  @doc "Nx.take (through gather, as Nx does)."
  def take(%Dense{shape: shape, type: type} = t, indices, axis) do
    tab = table(t)
    idx = values(indices)
    idx_t = List.to_tuple(idx)
    out_shape = NxQuant.Native.Layout.take_shape(shape, indices.shape, axis)
    irank = tuple_size(indices.shape)

    out_shape
    |> indices()
    |> Enum.map(fn o ->
      {lead, rest} = Enum.split(o, axis)
      {ipos, trail} = Enum.split(rest, irank)
      i = elem(idx_t, flat(ipos, indices.shape))

      if i < 0 or i >= elem(shape, axis) do
        raise ArgumentError, "index #{i} is out of bounds for axis #{axis}"
      end

      get(tab, shape, lead ++ [i] ++ trail)
    end)
    |> tensor(out_shape, type)
  end

  @doc "Nx.take_along_axis."
  def take_along_axis(%Dense{shape: shape, type: type} = t, indices, axis) do
    tab = table(t)
    itab = table(indices)

    indices.shape
    |> indices()
    |> Enum.map(fn o ->
      i = get(itab, indices.shape, o)

      if i < 0 or i >= elem(shape, axis) do
        raise ArgumentError, "index #{i} is out of bounds for axis #{axis}"
      end

      get(tab, shape, List.replace_at(o, axis, i))
    end)
    |> tensor(indices.shape, type)
  end

  # ---- dot -----------------------------------------------------------------------------------

  @doc """
  Nx.dot/6 as BinaryBackend: for each output element, `acc = x * y + acc` from 0 over the
  contracted axes in row-major order of `contract_a` (doubles; integers exact), then written.
  """
  def dot(a, contract_a, batch_a, b, contract_b, batch_b, out_type) do
    {ta, tb} = {table(a), table(b)}
    free_a = Enum.to_list(0..(tuple_size(a.shape) - 1)//1) -- (contract_a ++ batch_a)
    free_b = Enum.to_list(0..(tuple_size(b.shape) - 1)//1) -- (contract_b ++ batch_b)
    dims = fn shape, axes -> shape |> then(fn s -> Enum.map(axes, &elem(s, &1)) end) end
    batch_shape = List.to_tuple(dims.(a.shape, batch_a))
    fa_shape = List.to_tuple(dims.(a.shape, free_a))
    fb_shape = List.to_tuple(dims.(b.shape, free_b))
    k_shape = List.to_tuple(dims.(a.shape, contract_a))

    out_shape =
      List.to_tuple(
        Tuple.to_list(batch_shape) ++ Tuple.to_list(fa_shape) ++ Tuple.to_list(fb_shape)
      )

    place = fn rank, groups ->
      # groups: [{axes, index}]; builds a full multi-index
      for axis <- 0..(rank - 1)//1 do
        Enum.find_value(groups, fn {axes, idx} ->
          pos = index_of(axes, axis)
          if pos, do: Enum.at(idx, pos)
        end)
      end
    end

    ks = indices(k_shape)

    out =
      for bi <- indices(batch_shape), ai <- indices(fa_shape), ci <- indices(fb_shape) do
        Enum.reduce(ks, 0, fn ki, acc ->
          x =
            get(
              ta,
              a.shape,
              place.(tuple_size(a.shape), [{batch_a, bi}, {free_a, ai}, {contract_a, ki}])
            )

          y =
            get(
              tb,
              b.shape,
              place.(tuple_size(b.shape), [{batch_b, bi}, {free_b, ci}, {contract_b, ki}])
            )

          add(mul(x, y), acc)
        end)
      end

    out |> Enum.map(&convert(&1, out_type)) |> tensor(out_shape, out_type)
  end

  # ---- comparing results ---------------------------------------------------------------------

  @doc """
  The largest distance in units in the last place between two float tensors of one type
  (NaN equals NaN; a NaN against a number counts as infinitely far).
  """
  def max_ulps(%Dense{data: x, type: type}, %Dense{data: y, type: type}) do
    size = elem(type, 1)

    Enum.zip(bits(x, size), bits(y, size))
    |> Enum.map(fn {a, b} -> ulp_distance(a, b, type) end)
    |> Enum.max(fn -> 0 end)
  end

  defp bits(bin, size), do: for(<<b::little-size(size) <- bin>>, do: b)

  defp ulp_distance(a, b, type) do
    case {nan_bits?(a, type), nan_bits?(b, type)} do
      {true, true} -> 0
      {false, false} -> abs(ordered(a, type) - ordered(b, type))
      _ -> :infinity
    end
  end

  defp nan_bits?(bits, {:f, 64}), do: (bits &&& 0x7FFFFFFFFFFFFFFF) > 0x7FF0000000000000
  defp nan_bits?(bits, {:f, 32}), do: (bits &&& 0x7FFFFFFF) > 0x7F800000
  defp nan_bits?(bits, {:f, 16}), do: (bits &&& 0x7FFF) > 0x7C00
  defp nan_bits?(bits, {:bf, 16}), do: (bits &&& 0x7FFF) > 0x7F80

  defp ordered(bits, {_, size}) do
    sign = 1 <<< (size - 1)
    if (bits &&& sign) != 0, do: -(bits &&& sign - 1), else: bits
  end
end
