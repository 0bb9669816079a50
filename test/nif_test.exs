defmodule NxQuant.NIFTest do
  # The raw NIF: packed words against hand-computed ones, resources, and argument checking
  # (the NIF is the last line of defence, so it is called here without the Elixir checks).
  use ExUnit.Case, async: true

  import Bitwise
  alias NxQuant.{NIF, TestFloat}

  # One row of 32 values for each bit width: q_0 = 0, q_1 = 2^bits - 1 and
  # q_i = (7i + 3) mod 2^bits, stored as w_i = (2^bits - 1) - q_i. The group's max is
  # n = 2^bits - 1 and its min 0, so MLX's rule gives scale = -1 and bias = n exactly and
  # quantizes w_i back to q_i. The words below were worked out by hand from the bit-stream
  # layout (value i in stream bits [i*bits, (i+1)*bits), word j = stream bits [32j, 32j+32)).
  @packed %{
    2 => [0x1B1B1B1C, 0x1B1B1B1B],
    3 => [0x53977078, 0x70539770, 0x97705397],
    4 => [0x4D6F81F0, 0xC5E7092B, 0x4D6F81A3, 0xC5E7092B],
    5 => [0x4DFC47E0, 0x78245BA3, 0x0753617D, 0x4B276CF4, 0xE55C7066],
    6 => [0x9F611FC0, 0x90BBD2D9, 0xB2579740, 0x8F201EB3, 0x9CAB91D5, 0x71538703],
    8 => [
      0x1811FF00,
      0x342D261F,
      0x5049423B,
      0x6C655E57,
      0x88817A73,
      0xA49D968F,
      0xC0B9B2AB,
      0xDCD5CEC7
    ]
  }

  defp q_values(bits) do
    n = (1 <<< bits) - 1
    [0, n] ++ for(i <- 2..31, do: rem(7 * i + 3, n + 1))
  end

  defp words(list), do: for(w <- list, into: <<>>, do: <<w::32-little>>)

  for bits <- [2, 3, 4, 5, 6, 8],
      {type, atom} <- [{{:f, 32}, :f32}, {{:f, 16}, :f16}, {{:bf, 16}, :bf16}] do
    test "#{bits}-bit #{atom}: packed words, scale and bias of a hand-computed row" do
      bits = unquote(bits)
      type = unquote(Macro.escape(type))
      n = (1 <<< bits) - 1
      w = Enum.map(q_values(bits), &(n - &1))
      ref = NIF.quantize(TestFloat.encode(w, type), 1, 32, unquote(atom), bits, 32, 1)

      {packed, scales, biases} = NIF.parts(ref)
      assert packed == words(@packed[bits])
      assert TestFloat.decode(scales, type) == [-1.0]
      assert TestFloat.decode(biases, type) == [n * 1.0]
      assert NIF.info(ref) == {1, 32, unquote(atom), bits, 32}
      # every value is exactly representable: the round trip is exact
      assert TestFloat.decode(NIF.dequantize(ref, false), type) == Enum.map(w, &(&1 * 1.0))
    end
  end

  test "quantized_tensor rebuilds the hand-computed row bit for bit" do
    scales = TestFloat.encode([-1.0], {:f, 32})
    biases = TestFloat.encode([15.0], {:f, 32})
    ref = NIF.quantized_tensor(words(@packed[4]), scales, biases, 1, 32, :f32, 4, 32)
    expected = Enum.map(q_values(4), &(15.0 - &1))
    assert TestFloat.decode(NIF.dequantize(ref, false), {:f, 32}) == expected
    assert NIF.parts(ref) == {words(@packed[4]), scales, biases}
  end

  test "parts are binaries over the resource and outlive the reference" do
    dense = TestFloat.encode(Enum.map(1..64, &(&1 * 0.25)), {:f, 32})
    parts = NIF.parts(NIF.quantize(dense, 2, 32, :f32, 8, 32, 0))
    :erlang.garbage_collect()
    {packed, scales, biases} = parts
    assert byte_size(packed) == 2 * 8 * 4
    assert byte_size(scales) == 2 * 4 and byte_size(biases) == 2 * 4
  end

  test "a misaligned sub-binary input gives the same result as an aligned one" do
    dense = TestFloat.encode(Enum.map(1..64, &(&1 * 0.5 - 7)), {:f, 32})
    <<_::8, shifted::binary-size(256), _::8>> = <<0, dense::binary, 0>>
    a = NIF.quantize(dense, 2, 32, :f32, 4, 32, 0)
    b = NIF.quantize(shifted, 2, 32, :f32, 4, 32, 0)
    assert NIF.parts(a) == NIF.parts(b)
  end

  test "work large enough for a dirty scheduler gives the same result as small calls" do
    # 512 x 512 = 262144 values (above the dirty threshold); each 64-row slice is small.
    values = NxQuant.TestReference.random_values(512 * 512, 5)
    dense = TestFloat.encode(values, {:f, 32})
    {packed, scales, biases} = NIF.parts(NIF.quantize(dense, 512, 512, :f32, 4, 64, 0))

    slices =
      for r <- 0..7 do
        slice = binary_part(dense, r * 64 * 512 * 4, 64 * 512 * 4)
        NIF.parts(NIF.quantize(slice, 64, 512, :f32, 4, 64, 1))
      end

    assert packed == Enum.map_join(slices, &elem(&1, 0))
    assert scales == Enum.map_join(slices, &elem(&1, 1))
    assert biases == Enum.map_join(slices, &elem(&1, 2))
  end

  test "quantized_matmul_timed returns quantized_matmul's result and the kernel's time" do
    # m = 1 (normal scheduler) and m = 64 (over the estimate's 1 ms: dirty scheduler).
    values = NxQuant.TestReference.random_values(1024 * 1024, 8)
    ref = NIF.quantize(TestFloat.encode(values, {:f, 32}), 1024, 1024, :f32, 4, 64, 0)

    for m <- [1, 64] do
      x = TestFloat.encode(NxQuant.TestReference.random_values(m * 1024, m), {:f, 32})
      out = NIF.quantized_matmul(x, :f32, m, ref, true, :f32, 0, :exact)
      assert byte_size(out) == m * 1024 * 4
      assert {^out, ns} = NIF.quantized_matmul_timed(x, :f32, m, ref, true, :f32, 0, :exact)
      assert is_integer(ns) and ns > 0
    end

    assert_raise ArgumentError, ~r"quantized_matmul_timed/8: argument 3 \(m\)", fn ->
      NIF.quantized_matmul_timed(<<>>, :f32, -1, ref, true, :f32, 0, :exact)
    end
  end

  describe "invalid arguments raise ArgumentError naming the argument" do
    setup do
      dense = TestFloat.encode(List.duplicate(1.5, 64), {:f, 32})
      %{dense: dense, ref: NIF.quantize(dense, 2, 32, :f32, 4, 32, 0)}
    end

    defp assert_arg_error(pattern, fun) do
      error = assert_raise ArgumentError, fun
      assert error.message =~ pattern
    end

    test "quantize/7", %{dense: d} do
      assert_arg_error(~r"quantize/7: argument 1 \(dense\) must be a binary, got: a list", fn ->
        NIF.quantize([1], 2, 32, :f32, 4, 32, 0)
      end)

      assert_arg_error(~r"argument 2 \(rows\) must be a non-negative integer.*got: -1", fn ->
        NIF.quantize(d, -1, 32, :f32, 4, 32, 0)
      end)

      assert_arg_error(~r"argument 3 \(cols\).*got: 32.0", fn ->
        NIF.quantize(d, 2, 32.0, :f32, 4, 32, 0)
      end)

      assert_arg_error(~r"argument 4 \(dtype\) must be one of :f32, :f16, :bf16, got: :f64", fn ->
        NIF.quantize(d, 2, 32, :f64, 4, 32, 0)
      end)

      assert_arg_error(~r"argument 4 \(dtype\).*got: a tuple of size 2", fn ->
        NIF.quantize(d, 2, 32, {:f, 32}, 4, 32, 0)
      end)

      assert_arg_error(~r"argument 5 \(bits\) must be one of 2, 3, 4, 5, 6, 8, got: 7", fn ->
        NIF.quantize(d, 2, 32, :f32, 7, 32, 0)
      end)

      assert_arg_error(~r"argument 6 \(group_size\) must be one of 32, 64, 128, got: 16", fn ->
        NIF.quantize(d, 2, 32, :f32, 4, 16, 0)
      end)

      assert_arg_error(~r"argument 7 \(threads\).*got: :auto", fn ->
        NIF.quantize(d, 2, 32, :f32, 4, 32, :auto)
      end)

      assert_arg_error(~r"argument 1 \(dense\) has 255 bytes, expected 256", fn ->
        NIF.quantize(binary_part(d, 0, 255), 2, 32, :f32, 4, 32, 0)
      end)

      assert_arg_error(~r"argument 1 \(dense\) has 257 bytes, expected 256", fn ->
        NIF.quantize(d <> <<0>>, 2, 32, :f32, 4, 32, 0)
      end)

      # shape problems the kernel library reports (cols not a multiple of group_size)
      assert_arg_error(~r"quantize/7: .*(cols|group)", fn ->
        NIF.quantize(binary_part(d, 0, 4 * 48), 4, 12, :f32, 4, 32, 0)
      end)

      assert_arg_error(~r"argument 2 \(rows\).*below 2\^64", fn ->
        NIF.quantize(d, 1 <<< 70, 32, :f32, 4, 32, 0)
      end)

      assert_arg_error(~r"overflows", fn ->
        NIF.quantize(d, 1 <<< 62, 1 <<< 62, :f32, 4, 32, 0)
      end)
    end

    test "dequantize/2", %{ref: ref} do
      assert_arg_error(~r"argument 1 \(tensor\) must be a quantized tensor reference", fn ->
        NIF.dequantize(make_ref(), false)
      end)

      assert_arg_error(~r"argument 1 \(tensor\).*got: a binary of 3 bytes", fn ->
        NIF.dequantize("abc", false)
      end)

      assert_arg_error(~r"argument 2 \(transpose_out\) must be true or false, got: nil", fn ->
        NIF.dequantize(ref, nil)
      end)
    end

    test "quantized_matmul/8", %{ref: ref} do
      x = TestFloat.encode(List.duplicate(1.0, 32), {:f, 32})

      assert_arg_error(~r"argument 1 \(x\) must be a binary", fn ->
        NIF.quantized_matmul(:x, :f32, 1, ref, true, :f32, 0, :exact)
      end)

      assert_arg_error(~r"argument 2 \(x_dtype\)", fn ->
        NIF.quantized_matmul(x, "f32", 1, ref, true, :f32, 0, :exact)
      end)

      assert_arg_error(~r"argument 3 \(m\)", fn ->
        NIF.quantized_matmul(x, :f32, -1, ref, true, :f32, 0, :exact)
      end)

      assert_arg_error(~r"argument 4 \(w\) must be a quantized tensor reference", fn ->
        NIF.quantized_matmul(x, :f32, 1, make_ref(), true, :f32, 0, :exact)
      end)

      assert_arg_error(~r"argument 5 \(transpose\)", fn ->
        NIF.quantized_matmul(x, :f32, 1, ref, 1, :f32, 0, :exact)
      end)

      assert_arg_error(~r"argument 6 \(out_dtype\)", fn ->
        NIF.quantized_matmul(x, :f32, 1, ref, true, :u32, 0, :exact)
      end)

      assert_arg_error(~r"argument 7 \(threads\)", fn ->
        NIF.quantized_matmul(x, :f32, 1, ref, true, :f32, -2, :exact)
      end)

      assert_arg_error(~r"argument 8 \(precision\) must be one of :exact, :int8", fn ->
        NIF.quantized_matmul(x, :f32, 1, ref, true, :f32, 0, :fast)
      end)

      assert_arg_error(~r"argument 1 \(x\) has 124 bytes, expected 128", fn ->
        NIF.quantized_matmul(binary_part(x, 0, 124), :f32, 1, ref, true, :f32, 0, :exact)
      end)

      # transpose false: k is the stored rows (2), so m = 1 needs 2 values
      assert_arg_error(~r"argument 1 \(x\) has 128 bytes, expected 8", fn ->
        NIF.quantized_matmul(x, :f32, 1, ref, false, :f32, 0, :exact)
      end)
    end

    test "quantized_tensor/8" do
      p = words(@packed[4])
      s = TestFloat.encode([-1.0], {:f, 32})

      assert_arg_error(~r"argument 1 \(packed\) has 15 bytes, expected 16", fn ->
        NIF.quantized_tensor(binary_part(p, 0, 15), s, s, 1, 32, :f32, 4, 32)
      end)

      assert_arg_error(~r"argument 1 \(packed\) has 17 bytes, expected 16", fn ->
        NIF.quantized_tensor(p <> <<0>>, s, s, 1, 32, :f32, 4, 32)
      end)

      assert_arg_error(~r"argument 2 \(scales\) has 3 bytes, expected 4", fn ->
        NIF.quantized_tensor(p, binary_part(s, 0, 3), s, 1, 32, :f32, 4, 32)
      end)

      assert_arg_error(~r"argument 3 \(biases\) has 5 bytes, expected 4", fn ->
        NIF.quantized_tensor(p, s, s <> <<0>>, 1, 32, :f32, 4, 32)
      end)

      assert_arg_error(~r"argument 3 \(biases\) must be a binary", fn ->
        NIF.quantized_tensor(p, s, nil, 1, 32, :f32, 4, 32)
      end)

      assert_arg_error(~r"argument 6 \(dtype\)", fn ->
        NIF.quantized_tensor(p, s, s, 1, 32, :f8, 4, 32)
      end)

      assert_arg_error(~r"argument 7 \(bits\)", fn ->
        NIF.quantized_tensor(p, s, s, 1, 32, :f32, 1, 32)
      end)

      assert_arg_error(~r"argument 8 \(group_size\)", fn ->
        NIF.quantized_tensor(p, s, s, 1, 32, :f32, 4, 0)
      end)
    end

    test "parts/1 and info/1" do
      assert_arg_error(~r"parts/1: argument 1 \(tensor\)", fn -> NIF.parts(make_ref()) end)
      assert_arg_error(~r"info/1: argument 1 \(tensor\)", fn -> NIF.info(:ref) end)
    end
  end
end
