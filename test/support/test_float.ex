defmodule NxQuant.TestFloat do
  @moduledoc """
  Little-endian f32 / f16 / bf16 encoding and decoding for tests, written independently of
  the C++ conversions. Non-finite values are the atoms `:nan`, `:infinity`, `:neg_infinity`.
  Encoding rounds to nearest even.
  """
  import Bitwise

  @type value :: float() | integer() | :nan | :infinity | :neg_infinity

  @spec encode([value()], tuple()) :: binary()
  def encode(values, type), do: for(v <- values, into: <<>>, do: encode_one(v, type))

  @spec decode(binary(), tuple()) :: [value()]
  def decode(binary, {:f, 32}), do: for(<<bits::32-little <- binary>>, do: f32_from_bits(bits))
  def decode(binary, {:f, 16}), do: for(<<bits::16-little <- binary>>, do: f16_from_bits(bits))

  def decode(binary, {:bf, 16}),
    do: for(<<bits::16-little <- binary>>, do: f32_from_bits(bits <<< 16))

  @doc "Rounds a number to the nearest value of `type` (what an encode + decode gives)."
  def round(value, type), do: value |> List.wrap() |> encode(type) |> decode(type) |> hd()

  @doc "Half the distance between 1.0 and the next value of `type` (unit roundoff)."
  def epsilon({:f, 32}), do: :math.pow(2, -24)
  def epsilon({:f, 16}), do: :math.pow(2, -11)
  def epsilon({:bf, 16}), do: :math.pow(2, -8)

  # ---- f32 -------------------------------------------------------------------------------

  defp encode_one(v, {:f, 32}), do: <<f32_bits(v)::32-little>>
  defp encode_one(v, {:f, 16}), do: <<f16_bits(v)::16-little>>
  defp encode_one(v, {:bf, 16}), do: <<bf16_bits(v)::16-little>>

  defp f32_bits(:nan), do: 0x7FC00000
  defp f32_bits(:infinity), do: 0x7F800000
  defp f32_bits(:neg_infinity), do: 0xFF800000

  defp f32_bits(v) when is_number(v) do
    # Erlang's float-32 construction rounds to nearest; values beyond f32's range would
    # raise, which is fine for tests.
    <<bits::32>> = <<v * 1.0::float-32>>
    bits
  end

  defp f32_from_bits(bits) do
    exponent = bits >>> 23 &&& 0xFF
    mantissa = bits &&& 0x7FFFFF

    cond do
      exponent == 0xFF and mantissa != 0 -> :nan
      exponent == 0xFF -> if bits >>> 31 == 1, do: :neg_infinity, else: :infinity
      true -> with <<v::float-32>> <- <<bits::32>>, do: v
    end
  end

  # ---- bf16: the top half of an f32, rounded to nearest even ------------------------------

  defp bf16_bits(:nan), do: 0x7FC0

  defp bf16_bits(v) do
    bits = f32_bits(v)

    if (bits &&& 0x7FFFFFFF) > 0x7F800000,
      do: 0x7FC0,
      else: (bits + 0x7FFF + (bits >>> 16 &&& 1)) >>> 16 &&& 0xFFFF
  end

  # ---- f16 (IEEE binary16), from the exact double value ----------------------------------

  defp f16_bits(:nan), do: 0x7E00
  defp f16_bits(:infinity), do: 0x7C00
  defp f16_bits(:neg_infinity), do: 0xFC00

  defp f16_bits(v) when is_number(v) do
    v = v * 1.0
    sign = if v < 0 or (v == 0 and <<v::float>> == <<-0.0::float>>), do: 0x8000, else: 0
    sign ||| f16_magnitude(abs(v))
  end

  defp f16_magnitude(a) when a == 0, do: 0

  defp f16_magnitude(a) when a < 6.103515625e-05 do
    # subnormal: multiples of 2^-24 (rounding up to 1024 gives the smallest normal's bits)
    round_half_even(a * 16_777_216.0)
  end

  defp f16_magnitude(a) do
    <<0::1, biased::11, _::52>> = <<a::float-64>>
    e = biased - 1023
    q = round_half_even((a / :math.pow(2, e) - 1.0) * 1024.0)
    {e, q} = if q == 1024, do: {e + 1, 0}, else: {e, q}
    if e + 15 >= 31, do: 0x7C00, else: (e + 15) <<< 10 ||| q
  end

  defp round_half_even(x) do
    f = floor(x)
    d = x - f

    cond do
      d > 0.5 -> f + 1
      d < 0.5 -> f
      rem(f, 2) == 0 -> f
      true -> f + 1
    end
  end

  defp f16_from_bits(bits) do
    sign = if (bits &&& 0x8000) != 0, do: -1, else: 1
    exponent = bits >>> 10 &&& 0x1F
    mantissa = bits &&& 0x3FF

    cond do
      exponent == 0x1F and mantissa != 0 -> :nan
      exponent == 0x1F -> if sign < 0, do: :neg_infinity, else: :infinity
      exponent == 0 -> sign * mantissa * :math.pow(2, -24)
      true -> sign * (1 + mantissa / 1024) * :math.pow(2, exponent - 15)
    end
  end
end
