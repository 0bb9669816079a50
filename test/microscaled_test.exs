defmodule NxQuant.MicroscaledTest do
  # MLX's microscaled modes (mxfp4, mxfp8, nvfp4) through NxQuant.Core and the NIF, against
  # codes worked out by hand from MLX's rules (as native_tests/microscaled_test.cpp) and a
  # plain-Elixir decoder of the stored bytes.
  use ExUnit.Case, async: true

  import Bitwise
  alias NxQuant.{Core, Dense, QuantizedOps, TestFloat}
  alias NxQuant.TestReference, as: Ref

  @e2m1 [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]

  defp dense(values, shape, type \\ {:f, 32}),
    do: Dense.new(TestFloat.encode(values, type), shape, type)

  defp padded(values, n), do: values ++ List.duplicate(0.0, n - length(values))

  defp words(qt), do: for(<<w::32-little <- Core.parts(qt).packed.data>>, do: w)
  defp scale_bytes(qt), do: :binary.bin_to_list(Core.parts(qt).scales.data)

  # The value of every stored element, decoded in plain Elixir: E2M1 / E4M3 element times
  # 2^(byte - 127) (mx) or E4M3(byte) (nvfp4).
  defp decoded(qt) do
    %{packed: p, scales: s} = Core.parts(qt)
    {rows, cols} = NxQuant.QuantizedTensor.stored_shape(qt)
    gs = qt.config.group_size
    bytes = :binary.bin_to_list(p.data)
    scales = :binary.bin_to_list(s.data)

    elements =
      case qt.config.mode do
        "mxfp8" -> Enum.map(bytes, &e4m3/1)
        _ -> Enum.flat_map(bytes, &[Enum.at(@e2m1, &1 &&& 15), Enum.at(@e2m1, &1 >>> 4)])
      end

    scale = fn b -> if qt.config.mode == "nvfp4", do: e4m3(b), else: :math.pow(2, b - 127) end

    elements
    |> Enum.with_index()
    |> Enum.map(fn {e, i} -> e * scale.(Enum.at(scales, div(i, gs))) end)
    |> Enum.chunk_every(cols)
    |> tap(&assert length(&1) == rows)
  end

  defp e4m3(b) do
    e = b >>> 3 &&& 15
    m = b &&& 7
    v = if e == 0, do: m * :math.pow(2, -9), else: (8 + m) * :math.pow(2, e - 10)
    if (b &&& 128) != 0, do: -v, else: v
  end

  describe "quantize (codes worked out by hand)" do
    test "mxfp4: ties go to the smaller magnitude, -0.0 to code 0, scale byte 127" do
      g = [0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6, -0.0, -0.25, -0.75, -5, -6, 0.3, 0]

      for type <- [{:f, 32}, {:f, 16}, {:bf, 16}] do
        qt = Core.quantize(dense(padded(g, 32), {1, 32}, type), mode: :mxfp4)
        assert words(qt) == [0x65432100, 0x01FE9007, 0, 0]
        assert scale_bytes(qt) == [127]
        assert qt.config.mode == "mxfp4"
        assert {qt.config.bits, qt.config.group_size, qt.type} == {4, 32, {:s, 4}}
        assert qt.config.biases == nil
        assert qt.config.scales.type == {:u, 8}
        assert qt.dtype == type
      end
    end

    test "mxfp4: E8M0 is the nearest power of two, so elements saturate" do
      qt = Core.quantize(dense(padded([8.4, -8.4, 7, 1], 32), {1, 32}), mode: "mxfp4")
      assert scale_bytes(qt) == [127]
      assert hd(words(qt)) == 0x27F7
    end

    test "mxfp8: E4M3 round to nearest even, saturating at |x| >= 448, -0.0 keeps its sign" do
      values = padded([500, 470, 464, -470, 0.3, -0.0, 1.0625], 32)
      qt = Core.quantize(dense(values, {1, 32}), mode: :mxfp8)
      assert {qt.config.bits, qt.config.group_size, qt.type} == {8, 32, {:s, 8}}
      assert scale_bytes(qt) == [127]
      assert Enum.take(words(qt), 2) == [0xFE7E7E7E, 0x00388000 ||| 0x2A]
      assert Enum.take(hd(Ref.rows(Core.dequantize(qt))), 2) == [448.0, 448.0]
    end

    test "nvfp4: group 16, E4M3 scales" do
      qt = Core.quantize(dense(padded([7, 2], 32), {1, 32}), mode: :nvfp4)
      assert {qt.config.bits, qt.config.group_size} == {4, 16}
      # 7 / 6 -> E4M3 1.125 (0x39); the all-zero second group stores scale 0.
      assert scale_bytes(qt) == [0x39, 0]
      assert hd(words(qt)) == 0x47
      assert Enum.take(hd(Ref.rows(Core.dequantize(qt))), 2) == [6.75, 2.25]
    end

    test "NaN / Inf groups: INT32_MIN exponents (f32 byte 0x80), every element divided by 0" do
      qt = Core.quantize(dense(padded([1, :nan, -3], 32), {1, 32}), mode: :mxfp4)
      assert scale_bytes(qt) == [0x80]
      assert words(qt) == [0, 0, 0, 0]
    end
  end

  describe "options" do
    test "a mode's fixed bits and group size: disagreeing options raise" do
      d = dense(List.duplicate(1.0, 64), {1, 64})

      assert_raise ArgumentError, ~r/mode :mxfp4 has group_size 32, got: 64/, fn ->
        Core.quantize(d, mode: :mxfp4, group_size: 64)
      end

      assert_raise ArgumentError, ~r/mode :mxfp8 has 8 bits/, fn ->
        Core.quantize(d, mode: :mxfp8, type: {:s, 4})
      end

      assert_raise ArgumentError, ~r/mode :nvfp4 has 4 bits/, fn ->
        Core.quantize(d, mode: :nvfp4, bits: 8)
      end

      assert_raise ArgumentError, ~r/option :mode must be one of/, fn ->
        Core.quantize(d, mode: :fp4)
      end

      assert Core.quantize(d, mode: :mxfp8, bits: 8, group_size: 32).config.mode == "mxfp8"
    end
  end

  describe "dequantize and matmul against a plain-Elixir decoder" do
    for mode <- [:mxfp4, :mxfp8, :nvfp4], type <- [{:f, 32}, {:bf, 16}] do
      test "#{mode}, #{inspect(type)} weights" do
        mode = unquote(mode)
        type = unquote(type)
        :rand.seed(:exsss, {7, 8, 9})
        values = for _ <- 1..(6 * 64), do: :rand.normal() * 3
        qt = Core.quantize(dense(values, {6, 64}, type), mode: mode)
        expected = decoded(qt)

        # f32 values are exact (element times a power of two / an E4M3 value); in the
        # weight's dtype, rounded once.
        assert Ref.rows(Core.dequantize(qt)) ==
                 Enum.map(expected, fn row -> Enum.map(row, &TestFloat.round(&1, type)) end)

        x = for _ <- 1..(3 * 64), do: :rand.normal()
        out = Core.quantized_matmul(dense(x, {3, 64}), qt)
        assert out.shape == {3, 6}

        for {got_row, want_row} <-
              Enum.zip(Ref.rows(out), Ref.dot(Enum.chunk_every(x, 64), expected, true)),
            {got, want} <- Enum.zip(got_row, want_row) do
          assert_in_delta got, want, 1.0e-4 * (1 + abs(want))
        end

        # transpose: false multiplies by the stored matrix itself.
        x2 = for _ <- 1..(2 * 6), do: :rand.normal()
        out2 = Core.quantized_matmul(dense(x2, {2, 6}), qt, transpose: false)

        for {got_row, want_row} <-
              Enum.zip(Ref.rows(out2), Ref.dot(Enum.chunk_every(x2, 6), expected, false)),
            {got, want} <- Enum.zip(got_row, want_row) do
          assert_in_delta got, want, 1.0e-4 * (1 + abs(want))
        end
      end
    end
  end

  describe "quantized_tensor from parts" do
    test "round trip with nil biases; the dtype defaults to bf16 as in MLX" do
      qt = Core.quantize(dense(for(i <- 1..128, do: i / 10), {2, 64}), mode: :mxfp4)
      %{packed: packed, scales: scales, biases: nil} = Core.parts(qt)

      rebuilt = Core.quantized_tensor(packed, scales, nil, {2, 64}, mode: :mxfp4)
      assert rebuilt.dtype == {:bf, 16}
      assert rebuilt.config.mode == "mxfp4"

      f32 = Core.quantized_tensor(packed, scales, nil, {2, 64}, mode: :mxfp4, dtype: {:f, 32})
      assert Core.dequantize(f32) == Core.dequantize(qt)
    end

    test "bad parts raise ArgumentError naming them" do
      qt = Core.quantize(dense(List.duplicate(1.0, 64), {1, 64}), mode: :mxfp4)
      %{packed: packed, scales: scales} = Core.parts(qt)

      assert_raise ArgumentError, ~r/biases must be nil for mode :mxfp4/, fn ->
        Core.quantized_tensor(packed, scales, scales, {1, 64}, mode: :mxfp4)
      end

      assert_raise ArgumentError, ~r/scales has shape \{1, 2\}, expected \{1, 4\}/, fn ->
        Core.quantized_tensor(packed, scales, nil, {1, 64}, mode: :nvfp4)
      end

      assert_raise ArgumentError, ~r/scales must be an %NxQuant.Dense\{type: \{:u, 8\}\}/, fn ->
        Core.quantized_tensor(packed, dense([1.0, 1.0], {1, 2}), nil, {1, 64}, mode: :mxfp4)
      end
    end

    test "a struct whose mode was edited is refused" do
      qt = Core.quantize(dense(List.duplicate(1.0, 32), {1, 32}), mode: :mxfp4)
      edited = %{qt | config: %{qt.config | mode: "affine"}}

      assert_raise ArgumentError, ~r/:config mode "affine" does not match.*mode mxfp4/, fn ->
        Core.dequantize(edited)
      end
    end
  end

  test "a microscaled tensor is written as MLX's pair: weight and U8 scales, no biases" do
    qt = Core.quantize(dense(List.duplicate(1.0, 32), {1, 32}), mode: :nvfp4)
    %{packed: p, scales: s} = Core.parts(qt)
    assert NxQuant.Safetensors.pieces("w", qt) == [{"w.weight", p}, {"w.scales", s}]
    assert s.type == {:u, 8}
  end

  test "describe (inspect) names the mode" do
    qt = Core.quantize(dense(List.duplicate(1.0, 32), {1, 32}, {:bf, 16}), mode: :mxfp8)

    assert QuantizedOps.describe(qt) ==
             "quantized mxfp8 (8-bit, group_size 32, uint8 scales), bf16 values, stored 1x32"
  end
end
