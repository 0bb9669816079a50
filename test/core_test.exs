defmodule NxQuant.CoreTest do
  # NxQuant.Core through the NIF, checked against plain-Elixir references
  # (test/support/reference.ex) and MLX's rules worked out by hand.
  use ExUnit.Case, async: true

  import Bitwise
  alias NxQuant.{Core, Dense, QuantizedTensor, TestFloat}
  alias NxQuant.TestReference, as: Ref

  @types [{:f, 32}, {:f, 16}, {:bf, 16}]

  defp dense(values, shape, type \\ {:f, 32}),
    do: Dense.new(TestFloat.encode(values, type), shape, type)

  defp scale_bias(qt) do
    %{scales: s, biases: b} = Core.parts(qt)
    {TestFloat.decode(s.data, s.type), TestFloat.decode(b.data, b.type)}
  end

  describe "scale and bias edge cases (MLX's rules)" do
    test "a constant group stores scale -1e-7 and bias the constant, and round-trips" do
      qt = Core.quantize(dense(List.duplicate(2.5, 32), {1, 32}), group_size: 32)
      assert scale_bias(qt) == {[TestFloat.round(-1.0e-7, {:f, 32})], [2.5]}
      assert Ref.rows(Core.dequantize(qt)) == [List.duplicate(2.5, 32)]
    end

    test "a group of zeros stores bias 0" do
      qt = Core.quantize(dense(List.duplicate(0.0, 32), {1, 32}), group_size: 32)
      {_, [bias]} = scale_bias(qt)
      assert bias == 0.0
      assert Ref.rows(Core.dequantize(qt)) == [List.duplicate(0.0, 32)]
    end

    test "a group of {3, -1} keeps 3 exact and moves -1 to about -1.0909" do
      # 4 bits: scale -(4/15), edge 3, q0 = rint(3 / scale) = -11, so scale = 3 / -11, bias 3;
      # -1 quantizes to rint(-4 / scale) = 15 and dequantizes to 15 * scale + 3.
      qt = Core.quantize(dense([3.0 | List.duplicate(-1.0, 31)], {1, 32}), group_size: 32)
      scale = TestFloat.round(3 / -11, {:f, 32})
      assert scale_bias(qt) == {[scale], [3.0]}
      [[first, second | _]] = Ref.rows(Core.dequantize(qt))
      assert first == 3.0
      assert second == TestFloat.round(TestFloat.round(15 * scale, {:f, 32}) + 3.0, {:f, 32})
      assert_in_delta second, -1.0909, 1.0e-4
    end

    test "an all-positive group has a negative scale" do
      qt = Core.quantize(dense(Enum.map(1..32, &(&1 * 1.0)), {1, 32}), group_size: 32)
      {[scale], [bias]} = scale_bias(qt)
      assert scale < 0 and bias == 32.0
    end
  end

  describe "round trip" do
    for bits <- [2, 3, 4, 5, 6, 8], type <- [{:f, 32}, {:f, 16}, {:bf, 16}] do
      test "#{bits}-bit #{inspect(type)}: within half a step, and equal to the reference dequantize" do
        bits = unquote(bits)
        type = unquote(Macro.escape(type))
        x = Ref.random_dense({6, 128}, type, bits)
        qt = Core.quantize(x, type: {:s, bits}, group_size: 32)
        assert %QuantizedTensor{shape: {6, 128}, type: {:s, ^bits}, dtype: ^type} = qt

        deq = Core.dequantize(qt)
        assert %Dense{shape: {6, 128}, type: ^type} = deq
        deq_rows = Ref.rows(deq)
        assert deq_rows == Ref.dequantize(Core.parts(qt), 128, bits, 32)

        n = (1 <<< bits) - 1
        {scales, biases} = scale_bias(qt)
        eps = TestFloat.epsilon(type)

        groups =
          Enum.zip([
            Enum.chunk_every(List.flatten(Ref.rows(x)), 32),
            Enum.chunk_every(List.flatten(deq_rows), 32),
            scales,
            biases
          ])

        for {ws, ds, s, b} <- groups, {w, d} <- Enum.zip(ws, ds) do
          tol = 3 * eps * (abs(b) + n * abs(s)) + 1.0e-6
          {lo, hi} = Enum.min_max([b, b + n * s])

          cond do
            w < lo -> assert abs(d - lo) <= tol
            w > hi -> assert abs(d - hi) <= tol
            true -> assert abs(w - d) <= abs(s) / 2 + tol, "#{w} -> #{d}, scale #{s}"
          end
        end
      end
    end

    test "rank 3: leading axes are flattened into rows" do
      x = Ref.random_dense({2, 4, 64}, {:f, 32}, 11)
      qt = Core.quantize(x, group_size: 64)
      flat = Core.quantize(%{x | shape: {8, 64}}, group_size: 64)
      assert qt.shape == {2, 4, 64}
      assert QuantizedTensor.stored_shape(qt) == {8, 64}
      assert qt.config.scales.shape == {8, 1}
      assert Core.parts(qt) == Core.parts(flat)
      assert Core.dequantize(qt).shape == {2, 4, 64}
      assert Core.dequantize(qt).data == Core.dequantize(flat).data
    end

    test "a transposed view dequantizes to the transposed matrix" do
      qt = Core.quantize(Ref.random_dense({8, 64}, {:f, 32}, 3), group_size: 32)
      view = %{qt | shape: {64, 8}, transposed: true}
      deq = Core.dequantize(view)
      assert deq.shape == {64, 8}
      assert Ref.rows(deq) == Ref.transpose(Ref.rows(Core.dequantize(qt)))
    end
  end

  describe "quantized_matmul against dequantize + an Elixir dot" do
    for type <- [{:f, 32}, {:f, 16}, {:bf, 16}], transpose <- [true, false] do
      test "#{inspect(type)}, transpose: #{transpose}" do
        type = unquote(Macro.escape(type))
        transpose = unquote(transpose)
        # stored {8, 64}: transpose true contracts over 64 (out 8), false over 8 (out 64)
        qt = Core.quantize(Ref.random_dense({8, 64}, type, 21), group_size: 32, bits: 4)
        k = if transpose, do: 64, else: 8
        n = if transpose, do: 8, else: 64
        x = Ref.random_dense({3, k}, type, 22)

        out = Core.quantized_matmul(x, qt, transpose: transpose)
        assert %Dense{shape: {3, ^n}, type: ^type} = out
        assert_close(out, x, qt, transpose, type)
      end
    end

    test "batch dims {2, 3, K} are flattened and restored" do
      qt = Core.quantize(Ref.random_dense({16, 128}, {:f, 32}, 31), group_size: 64)
      x = Ref.random_dense({2, 3, 128}, {:f, 32}, 32)
      out = Core.quantized_matmul(x, qt)
      assert out.shape == {2, 3, 16}
      assert out.data == Core.quantized_matmul(%{x | shape: {6, 128}}, qt).data
      assert_close(out, x, qt, true, {:f, 32})

      x2 = Ref.random_dense({2, 3, 16}, {:bf, 16}, 33)
      out2 = Core.quantized_matmul(x2, qt, transpose: false)
      assert %Dense{shape: {2, 3, 128}, type: {:bf, 16}} = out2
      assert_close(out2, x2, qt, false, {:bf, 16})
    end

    test "a rank-3 weight multiplies x by each of its matrices (MLX's batched semantics)" do
      w = Ref.random_dense({2, 64, 128}, {:f, 32}, 35)
      qt = Core.quantize(w, group_size: 64)
      x = Ref.random_dense({2, 5, 128}, {:f, 32}, 36)
      out = Core.quantized_matmul(x, qt)
      assert out.shape == {2, 5, 64}

      # batch b is x[b] times the quantized matrix b alone (not the 128-row stack)
      for b <- 0..1 do
        w_b = Dense.new(binary_part(w.data, b * 64 * 128 * 4, 64 * 128 * 4), {64, 128}, {:f, 32})
        x_b = Dense.new(binary_part(x.data, b * 5 * 128 * 4, 5 * 128 * 4), {5, 128}, {:f, 32})
        expected = Core.quantized_matmul(x_b, Core.quantize(w_b, group_size: 64))
        assert binary_part(out.data, b * 5 * 64 * 4, 5 * 64 * 4) == expected.data
      end

      # a rank-2 x broadcasts over the matrices
      assert Core.quantized_matmul(%{x | shape: {10, 128}}, qt).shape == {2, 10, 64}
    end

    test "a rank-1 x and an :out_type other than x's" do
      qt = Core.quantize(Ref.random_dense({4, 64}, {:f, 16}, 41), group_size: 64)
      x = Ref.random_dense({64}, {:f, 32}, 42)
      out = Core.quantized_matmul(x, qt, out_type: {:bf, 16}, threads: 1)
      assert %Dense{shape: {4}, type: {:bf, 16}} = out
      assert_close(out, x, qt, true, {:bf, 16})
    end

    test "work large enough for a dirty scheduler (dequantize and matmul)" do
      # 512 x 512 weight: both calls exceed the NIF's dirty-scheduling threshold
      qt = Core.quantize(Ref.random_dense({512, 512}, {:f, 32}, 81), group_size: 128)
      x = Ref.random_dense({1, 512}, {:f, 32}, 82)
      out = Core.quantized_matmul(x, qt)
      assert out.shape == {1, 512}
      assert_close(out, x, qt, true, {:f, 32})
    end

    test "empty batches and empty weights" do
      qt = Core.quantize(Ref.random_dense({4, 64}, {:f, 32}, 91), group_size: 64)
      out = Core.quantized_matmul(Dense.new(<<>>, {0, 64}, {:f, 32}), qt)
      assert out == %Dense{data: <<>>, shape: {0, 4}, type: {:f, 32}}

      empty = Core.quantize(Dense.new(<<>>, {0, 64}, {:f, 32}))
      assert Core.dequantize(empty) == %Dense{data: <<>>, shape: {0, 64}, type: {:f, 32}}
      assert Core.parts(empty).packed.shape == {0, 8}
      x = Ref.random_dense({2, 64}, {:f, 32}, 92)
      assert Core.quantized_matmul(x, empty).shape == {2, 0}
    end

    test "the thread count does not change the result" do
      qt = Core.quantize(Ref.random_dense({64, 256}, {:f, 32}, 51), group_size: 64)
      x = Ref.random_dense({5, 256}, {:f, 32}, 52)
      one = Core.quantized_matmul(x, qt, threads: 1)
      assert Core.quantized_matmul(x, qt, threads: 2) == one
      assert Core.quantized_matmul(x, qt) == one
    end

    defp assert_close(out, x, qt, transpose, out_type) do
      w = Ref.rows(Core.dequantize(qt))
      x_rows = Ref.rows(x)
      expected = Ref.dot(x_rows, w, transpose)
      # The kernel uses w = scale * q + bias in f32; dequantize/1 rounds q * scale and then the
      # sum to the dtype, moving each weight by up to eps * (|q * scale| + |w|) <=
      # eps * (2|w| + |bias|). Plus f32 accumulation and the output's own rounding.
      %{biases: biases} = Core.parts(qt)
      group = qt.config.group_size
      bias_rows = for row <- Ref.rows(biases), do: Enum.flat_map(row, &List.duplicate(&1, group))
      w_bound = Ref.abs_dot(x_rows, w, transpose)
      b_bound = Ref.abs_dot(x_rows, bias_rows, transpose)
      eps_w = TestFloat.epsilon(qt.dtype) + 1.0e-6
      eps_out = TestFloat.epsilon(out_type)
      got = Ref.rows(out)

      for {{{g_row, e_row}, wb_row}, bb_row} <-
            Enum.zip(Enum.zip(Enum.zip(got, expected), w_bound), b_bound),
          {{{g, e}, wb}, bb} <- Enum.zip(Enum.zip(Enum.zip(g_row, e_row), wb_row), bb_row) do
        bound = eps_w * (2 * wb + bb) + eps_out * abs(e) + 1.0e-6
        assert abs(g - e) <= bound, "got #{g}, expected #{e} (bound #{bound})"
      end
    end
  end

  describe "quantized_tensor and parts" do
    test "parts -> quantized_tensor gives identical bits, for Dense and raw packed" do
      for type <- @types do
        qt = Core.quantize(Ref.random_dense({4, 128}, type, 61), type: {:s, 3}, group_size: 64)
        parts = Core.parts(qt)
        assert parts.packed.shape == {4, 12} and parts.packed.type == {:u, 32}
        assert parts.scales.shape == {4, 2} and parts.scales.type == type

        again =
          Core.quantized_tensor(parts.packed, parts.scales, parts.biases, {4, 128},
            type: {:s, 3},
            group_size: 64
          )

        assert Core.parts(again) == parts
        assert again.config == qt.config
        assert Core.dequantize(again) == Core.dequantize(qt)

        raw =
          Core.quantized_tensor(parts.packed.data, parts.scales, parts.biases, {4, 128}, bits: 3)

        assert Core.parts(raw) == parts
      end
    end

    test "parts of a rank-3 tensor may come in the leading-axes form" do
      qt = Core.quantize(Ref.random_dense({2, 2, 64}, {:f, 32}, 71), group_size: 32)
      %{packed: p, scales: s, biases: b} = Core.parts(qt)

      again =
        Core.quantized_tensor(%{p | shape: {2, 2, 8}}, %{s | shape: {2, 2, 2}}, b, {2, 2, 64},
          group_size: 32
        )

      assert again.shape == {2, 2, 64}
      assert Core.parts(again) == Core.parts(qt)
    end

    test "quantized?/1" do
      qt = Core.quantize(dense(List.duplicate(1.0, 64), {1, 64}))
      assert Core.quantized?(qt)
      refute Core.quantized?(Core.dequantize(qt))
      refute Core.quantized?(%{qt | ref: nil})
      refute Core.quantized?(:foo)
    end
  end

  describe "invalid arguments raise ArgumentError naming what is wrong" do
    setup do
      x = dense(List.duplicate(1.0, 4 * 128), {4, 128})
      qt = Core.quantize(x)
      %{x: x, qt: qt, parts: Core.parts(qt)}
    end

    defp assert_arg_error(pattern, fun) do
      error = assert_raise ArgumentError, fun
      assert error.message =~ pattern
      error.message
    end

    test "Dense.new" do
      assert_arg_error(~r"shape must be a tuple of non-negative integers, got: \[4\]", fn ->
        Dense.new(<<0::32>>, [4], {:f, 32})
      end)

      assert_arg_error(~r"got: \{2, -1\}", fn -> Dense.new(<<>>, {2, -1}, {:f, 32}) end)
      assert_arg_error(~r"type \{:s, 8\}", fn -> Dense.new(<<0>>, {1}, {:s, 8}) end)
      assert_arg_error(~r"data must be a binary", fn -> Dense.new([1], {1}, {:f, 32}) end)

      assert_arg_error(~r"has 3 bytes, expected 4 for shape \{2\}", fn ->
        Dense.new(<<0, 0, 0>>, {2}, {:f, 16})
      end)

      assert_arg_error(~r"has 5 bytes, expected 4", fn -> Dense.new(<<0::40>>, {1}, {:f, 32}) end)
    end

    test "quantize/2 options", %{x: x} do
      assert_arg_error(~r"option :group_size must be one of \[32, 64, 128\], got: 48", fn ->
        Core.quantize(x, group_size: 48)
      end)

      assert_arg_error(~r"option :type must be one of .*got: \{:s, 7\}", fn ->
        Core.quantize(x, type: {:s, 7})
      end)

      assert_arg_error(~r"option :type must be.*got: \{:u, 4\}", fn ->
        Core.quantize(x, type: {:u, 4})
      end)

      assert_arg_error(~r"option :bits must be one of .*got: 1", fn ->
        Core.quantize(x, bits: 1)
      end)

      assert_arg_error(~r":type \{:s, 4\} and :bits 8 disagree", fn ->
        Core.quantize(x, type: {:s, 4}, bits: 8)
      end)

      assert_arg_error(~r"unknown option :group", fn -> Core.quantize(x, group: 32) end)
      assert_arg_error(~r"options must be a keyword list", fn -> Core.quantize(x, %{}) end)
      assert_arg_error(~r"option :threads.*got: -1", fn -> Core.quantize(x, threads: -1) end)
    end

    test "quantize/2 tensors", %{x: x} do
      assert_arg_error(
        ~r"quantize/2 tensor must be an %NxQuant.Dense\{\}, got: a binary of 3 bytes",
        fn ->
          Core.quantize("abc")
        end
      )

      assert_arg_error(~r"tensor has type \{:u, 32\}", fn ->
        Core.quantize(%{x | type: {:u, 32}})
      end)

      assert_arg_error(~r"last axis \(96\) must be a positive multiple of group_size 64", fn ->
        Core.quantize(dense(List.duplicate(0.0, 96), {96}))
      end)

      assert_arg_error(~r"rank >= 1", fn -> Core.quantize(dense([1.0], {})) end)

      assert_arg_error(~r"tensor data has 2044 bytes, expected 2048", fn ->
        Core.quantize(%{x | data: binary_part(x.data, 0, 2044)})
      end)
    end

    test "quantized_matmul/3", %{x: x, qt: qt} do
      assert_arg_error(~r"x has shape \{4, 128\}: its last axis must be 4, the rows", fn ->
        Core.quantized_matmul(x, qt, transpose: false)
      end)

      assert_arg_error(~r"last axis must be 128, the cols", fn ->
        Core.quantized_matmul(dense(List.duplicate(1.0, 64), {1, 64}), qt)
      end)

      assert_arg_error(~r"option :transpose must be a boolean, got: :yes", fn ->
        Core.quantized_matmul(x, qt, transpose: :yes)
      end)

      assert_arg_error(~r"option :out_type must be one of .*got: \{:f, 64\}", fn ->
        Core.quantized_matmul(x, qt, out_type: {:f, 64})
      end)

      assert_arg_error(~r"quantized_matmul/3 expects an %NxQuant.QuantizedTensor\{\}", fn ->
        Core.quantized_matmul(x, x)
      end)

      assert_arg_error(~r"x must be an %NxQuant.Dense\{\}", fn ->
        Core.quantized_matmul(x.data, qt)
      end)

      # a forged struct (test/forged_struct_test.exs has the rest)
      assert_arg_error(~r":ref must be a quantized tensor reference made by nx_quant", fn ->
        Core.quantized_matmul(x, %{qt | ref: make_ref()})
      end)
    end

    test "dequantize/1 and parts/1" do
      assert_arg_error(~r"dequantize/1 expects an %NxQuant.QuantizedTensor\{\}", fn ->
        Core.dequantize(%{})
      end)

      assert_arg_error(~r"parts/1 expects", fn -> Core.parts(nil) end)
    end

    test "quantized_tensor/5", %{parts: %{packed: p, scales: s, biases: b}} do
      assert_arg_error(
        ~r"^quantized_tensor/5 scales has shape \{4, 3\}, expected \{4, 2\} for shape \{4, 128\} with group_size 64$",
        fn ->
          s3 = Dense.new(:binary.copy(<<0::32>>, 12), {4, 3}, {:f, 32})
          Core.quantized_tensor(p, s3, b, {4, 128})
        end
      )

      assert_arg_error(~r"biases has shape \{2, 4\}, expected \{4, 2\}", fn ->
        Core.quantized_tensor(p, s, %{b | shape: {2, 4}}, {4, 128})
      end)

      assert_arg_error(~r"biases has type \{:f, 16\}, expected scales' type \{:f, 32\}", fn ->
        Core.quantized_tensor(p, s, Dense.new(<<0::128>>, {4, 2}, {:f, 16}), {4, 128})
      end)

      assert_arg_error(~r"packed has shape \{4, 8\}, expected \{4, 16\} .*bits 4", fn ->
        Core.quantized_tensor(
          %{p | shape: {4, 8}, data: binary_part(p.data, 0, 128)},
          s,
          b,
          {4, 128}
        )
      end)

      assert_arg_error(~r"packed has 255 bytes, expected 256 \(4 x 16 uint32 words\)", fn ->
        Core.quantized_tensor(binary_part(p.data, 0, 255), s, b, {4, 128})
      end)

      assert_arg_error(~r"packed has 257 bytes, expected 256", fn ->
        Core.quantized_tensor(p.data <> <<0>>, s, b, {4, 128})
      end)

      assert_arg_error(~r"packed has type \{:f, 32\}, expected \{:u, 32\}", fn ->
        Core.quantized_tensor(%{p | type: {:f, 32}}, s, b, {4, 128})
      end)

      assert_arg_error(~r"packed must be a binary or an %NxQuant.Dense", fn ->
        Core.quantized_tensor(:packed, s, b, {4, 128})
      end)

      assert_arg_error(~r"scales must be an %NxQuant.Dense\{\}", fn ->
        Core.quantized_tensor(p, s.data, b, {4, 128})
      end)

      assert_arg_error(
        ~r"shape shape must be a tuple of non-negative integers, got: \[4, 128\]",
        fn ->
          Core.quantized_tensor(p, s, b, [4, 128])
        end
      )

      assert_arg_error(~r"got: \{-4, 128\}", fn -> Core.quantized_tensor(p, s, b, {-4, 128}) end)

      assert_arg_error(~r"last axis \(100\) must be a positive multiple of group_size 64", fn ->
        Core.quantized_tensor(p, s, b, {4, 100})
      end)

      assert_arg_error(~r"option :group_size must be one of", fn ->
        Core.quantized_tensor(p, s, b, {4, 128}, group_size: 16)
      end)

      # the same parts read as 8-bit need twice the words
      assert_arg_error(~r"packed has shape \{4, 16\}, expected \{4, 32\} .*bits 8", fn ->
        Core.quantized_tensor(p, s, b, {4, 128}, type: {:s, 8})
      end)
    end
  end
end
