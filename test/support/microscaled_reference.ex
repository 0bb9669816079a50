defmodule NxQuant.TestMicroscaled do
  @moduledoc """
  A plain-Elixir decoder of MLX's microscaled layouts for tests, independent of the NIF:
  E2M1 codes (8 per uint32, LSB first) or E4M3 bytes (4 per uint32) times the group's scale,
  2^(byte - 127) (E8M0: mxfp4, mxfp8) or the E4M3 value of the byte (nvfp4).
  """
  import Bitwise

  @e2m1 [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
  @group %{"mxfp4" => 32, "mxfp8" => 32, "nvfp4" => 16}

  @doc "Rows (lists of floats) of `cols` values from packed-word bytes and scale bytes."
  def decode(packed, scales, cols, mode) do
    mode = to_string(mode)
    gs = Map.fetch!(@group, mode)
    bytes = :binary.bin_to_list(packed)
    scales = List.to_tuple(:binary.bin_to_list(scales))

    elements =
      case mode do
        "mxfp8" -> Enum.map(bytes, &e4m3/1)
        _ -> Enum.flat_map(bytes, &[Enum.at(@e2m1, &1 &&& 15), Enum.at(@e2m1, &1 >>> 4)])
      end

    scale = fn b -> if mode == "nvfp4", do: e4m3(b), else: :math.pow(2, b - 127) end

    elements
    |> Enum.with_index()
    |> Enum.map(fn {e, i} -> e * scale.(elem(scales, div(i, gs))) end)
    |> Enum.chunk_every(cols)
  end

  @doc "The value of an E4M3 byte (no NaN in the data tests use)."
  def e4m3(b) do
    e = b >>> 3 &&& 15
    m = b &&& 7
    v = if e == 0, do: m * :math.pow(2, -9), else: (8 + m) * :math.pow(2, e - 10)
    if (b &&& 128) != 0, do: -v, else: v
  end
end
