defmodule NxQuant.Native.ErrorsTest do
  # Bad input never crashes the VM: NxQuant.Native raises ArgumentError naming the problem,
  # and the raw NIFs (the last line of defence, called here without the Elixir checks)
  # validate every term, including operands that would read outside their binary.
  use ExUnit.Case, async: true

  import Bitwise
  alias NxQuant.{Dense, Native, NIF}
  alias NxQuant.NativeReference, as: Ref

  defp f32(values, shape), do: Ref.tensor(values, shape, {:f, 32})

  describe "NxQuant.Native arguments" do
    test "tensors: not a Dense, unsupported type, data of the wrong size, bad shape" do
      t = f32([1.0, 2.0], {2})

      assert_raise ArgumentError, ~r/unary\/3: tensor must be an %NxQuant.Dense\{\}/, fn ->
        Native.unary(:exp, <<0::32>>, {:f, 32})
      end

      assert_raise ArgumentError,
                   ~r/type \{:c, 64\}, which the native path does not support/,
                   fn ->
                     Native.unary(:exp, %{t | type: {:c, 64}}, {:f, 32})
                   end

      assert_raise ArgumentError, ~r/type \{:s, 4\}/, fn ->
        Native.as_type(%Dense{data: <<0>>, shape: {2}, type: {:s, 4}}, {:f, 32})
      end

      assert_raise ArgumentError, ~r/has 8 bytes of data, expected 12 for shape \{3\}/, fn ->
        Native.binary(:add, t, %{t | shape: {3}}, {3}, {:f, 32})
      end

      assert_raise ArgumentError, ~r/shape \{-2\}, not a tuple of non-negative integers/, fn ->
        Native.reverse(%{t | shape: {-2}}, [0])
      end

      assert_raise ArgumentError, ~r/out_type must be one of/, fn ->
        Native.unary(:exp, t, {:f, 8})
      end
    end

    test "ops and option values" do
      t = f32([1.0, 2.0], {2})
      assert_raise ArgumentError, ~r/unknown op :nope/, fn -> Native.unary(:nope, t, {:f, 32}) end

      assert_raise ArgumentError, ~r/unknown op :exp, expected one of \[:add/, fn ->
        Native.binary(:exp, t, t, {2}, {:f, 32})
      end

      assert_raise ArgumentError, ~r/unknown op/, fn ->
        Native.reduce(:mean, t, nil, false, {:f, 32})
      end

      assert_raise ArgumentError, ~r/direction must be :asc or :desc/, fn ->
        Native.sort(t, 0, :up)
      end

      assert_raise ArgumentError, ~r/tie_break must be :low or :high/, fn ->
        Native.arg_reduce(:argmax, t, 0, false, :middle, {:s, 32})
      end

      assert_raise ArgumentError, ~r/out_type must be an integer type/, fn ->
        Native.argsort(t, 0, :asc, {:f, 32})
      end

      assert_raise ArgumentError, ~r/k must be an integer in 1..2/, fn ->
        Native.top_k(t, 3, {:s, 32})
      end

      assert_raise ArgumentError, ~r/rank >= 1/, fn ->
        Native.top_k(f32([1.0], {}), 1, {:s, 32})
      end
    end

    test "shapes, axes and broadcasting" do
      t = f32(Enum.map(1..6, &(&1 * 1.0)), {2, 3})

      assert_raise ArgumentError, ~r/b of shape \{2\} cannot be broadcast to \{2, 3\}/, fn ->
        Native.binary(:add, t, f32([1.0, 2.0], {2}), {2, 3}, {:f, 32})
      end

      assert_raise ArgumentError, ~r/axes must be a permutation of 0..1/, fn ->
        Native.transpose(t, [0])
      end

      assert_raise ArgumentError, ~r/cannot broadcast a tensor of shape \{2, 3\}/, fn ->
        Native.broadcast(t, {3, 2}, [0, 1])
      end

      assert_raise ArgumentError, ~r/axis must be an axis in 0..1, got: 2/, fn ->
        Native.cumulative(:cumulative_sum, t, 2, false, {:f, 32})
      end

      assert_raise ArgumentError, ~r/every shape must match/, fn ->
        Native.concatenate([t, f32([1.0], {1, 1})], 0, {:f, 32})
      end

      assert_raise ArgumentError, ~r/non-empty list/, fn ->
        Native.concatenate([], 0, {:f, 32})
      end

      assert_raise ArgumentError, ~r/every tensor must have shape \{2, 3\}/, fn ->
        Native.stack([t, f32([1.0], {1})], 0, {:f, 32})
      end

      assert_raise ArgumentError, ~r/pad_value must be a scalar/, fn ->
        Native.pad(t, t, [{0, 0, 0}, {0, 0, 0}], {:f, 32})
      end

      assert_raise ArgumentError, ~r/argmax over an empty axis of shape \{0\}/, fn ->
        Native.arg_reduce(:argmax, f32([], {0}), nil, false, :low, {:s, 32})
      end

      assert_raise ArgumentError, ~r/argmin over an empty axis of shape \{2, 0\}/, fn ->
        Native.arg_reduce(:argmin, f32([], {2, 0}), 1, false, :low, {:s, 32})
      end

      # no output element, nothing to reduce: an empty result, as BinaryBackend gives
      assert %{shape: {0}, data: ""} =
               Native.arg_reduce(:argmax, f32([], {0, 3}), 1, false, :low, {:s, 32})

      assert_raise ArgumentError, ~r/reduce_max/, fn ->
        Native.reduce(:reduce_max, f32([], {2, 0}), [1], false, {:f, 32})
      end

      assert_raise ArgumentError, ~r/indices must have an integer type/, fn ->
        Native.take(t, f32([0.0], {1}), 0, {1, 3})
      end

      assert_raise ArgumentError,
                   ~r/out_shape \{9\} does not match the result's shape \{1, 3\}/,
                   fn ->
                     Native.take(t, Ref.tensor([0], {1}, {:s, 32}), 0, {9})
                   end

      assert_raise ArgumentError,
                   ~r/must match the tensor's shape \{2, 3\} except along axis 1/,
                   fn ->
                     Native.take_along_axis(t, Ref.tensor([0], {1, 1}, {:s, 32}), 1, {1, 1})
                   end

      assert_raise ArgumentError, ~r/different sizes/, fn ->
        Native.dot(t, [0], [], t, [1], [], {:f, 32})
      end
    end
  end

  describe "raw NIFs" do
    @op {<<0::32, 0::32>>, :f32, 0, {1}}

    test "operands: shape, arity, binary, type, offset, strides" do
      bad = [
        {{1, 2}, ~r/argument 4 \(operand\) must be an operand \{binary, type, offset, strides\}/},
        {{:x, :f32, 0, {1}},
         ~r/must hold a binary or a versioned buffer {ref, version}, got: :x/},
        {{<<0::32, 0::32>>, :f99, 0, {1}}, ~r/must have a type one of :u8/},
        {{<<0::24>>, :f32, 0, {}}, ~r/not a whole number of f32 elements/},
        {{<<0::32, 0::32>>, :f32, 1.0, {1}}, ~r/integer offset/},
        {{<<0::32, 0::32>>, :f32, 0, {1, 1}}, ~r/strides as a tuple of 1 integers/},
        {{<<0::32, 0::32>>, :f32, 0, [1]}, ~r/strides as a tuple of 1 integers/},
        {{<<0::32, 0::32>>, :f32, 1, {1}}, ~r/reaches elements 1..2 of a binary holding 2 f32/},
        {{<<0::32, 0::32>>, :f32, -1, {1}}, ~r/reaches elements -1..0/},
        {{<<0::32, 0::32>>, :f32, 0, {2}}, ~r/reaches elements 0..2/},
        {{<<0::32, 0::32>>, :f32, 0, {0x7FFFFFFFFFFFFFFF}},
         ~r/reaches elements 0..9223372036854775807/}
      ]

      for {operand, message} <- bad do
        assert_raise ArgumentError, message, fn -> NIF.dense_unary(:exp, :f32, {2}, operand) end
      end

      assert_raise ArgumentError, ~r/strides whose span overflows 64 bits/, fn ->
        NIF.dense_unary(:exp, :f32, {3}, {<<0::96>>, :f32, 0, {0x7FFFFFFFFFFFFFFF}})
      end

      # a reversed view (negative stride, offset at the end) is fine
      assert is_binary(NIF.dense_unary(:copy, :f32, {2}, {<<0::32, 0::32>>, :f32, 1, {-1}}))
    end

    test "shapes, atoms, integers" do
      assert_raise ArgumentError,
                   ~r/argument 3 \(shape\) must be a tuple of non-negative integers/,
                   fn ->
                     NIF.dense_unary(:exp, :f32, [2], @op)
                   end

      assert_raise ArgumentError, ~r/got -2 at position 0/, fn ->
        NIF.dense_unary(:exp, :f32, {-2}, @op)
      end

      assert_raise ArgumentError, ~r/has too many elements/, fn ->
        NIF.dense_unary(:exp, :f32, {1 <<< 40, 1 <<< 40}, @op)
      end

      assert_raise ArgumentError, ~r/argument 1 \(op\) must be one of :copy, :negate/, fn ->
        NIF.dense_unary(:add, :f32, {2}, @op)
      end

      assert_raise ArgumentError, ~r/argument 2 \(out_type\) must have a type one of/, fn ->
        NIF.dense_unary(:exp, "f32", {2}, @op)
      end

      assert_raise ArgumentError, ~r/argument 3 \(axis\) must be an integer in -1..1/, fn ->
        NIF.dense_iota(:s32, {2, 2}, 2)
      end

      assert_raise ArgumentError, ~r/argument 5 \(axes\) must be sorted/, fn ->
        NIF.dense_reduce(:sum, :f32, {1, 2}, {<<0::64>>, :f32, 0, {2, 1}}, {1, 0}, :low)
      end

      assert_raise ArgumentError, ~r/argument 5 \(axes\) must be a tuple of distinct axes/, fn ->
        NIF.dense_reduce(:sum, :f32, {1, 2}, {<<0::64>>, :f32, 0, {2, 1}}, {1, 1}, :low)
      end

      assert_raise ArgumentError, ~r/argument 6 \(tie_break\) must be :low or :high/, fn ->
        NIF.dense_reduce(:argmax, :s32, {2}, @op, {0}, nil)
      end

      assert_raise ArgumentError, ~r/argument 3 \(k\) must be an integer in 0..2/, fn ->
        NIF.dense_top_k({2}, @op, 3, :s32)
      end

      assert_raise ArgumentError, ~r/argument 3 \(indices\) must have an integer type/, fn ->
        NIF.dense_gather({2}, @op, {<<0::32>>, :f32, 0, {1, 1}}, 1, {0})
      end

      assert_raise ArgumentError, ~r/argument 2 \(batch\) must be an integer/, fn ->
        NIF.dense_matmul(:f32, -1, 1, 1, 1, @op, @op)
      end

      assert_raise ArgumentError, ~r/has too many elements/, fn ->
        big = 1 <<< 30
        z = {<<>>, :f32, 0, {0, 0, 0}}
        NIF.dense_matmul(:f32, big, big, big, 0, z, z)
      end
    end

    test "assemble pieces: list, tuples, windows inside the output" do
      piece = {{2}, @op, 0, {1}}
      assert byte_size(NIF.dense_assemble(:f32, {2}, nil, [piece])) == 8

      assert_raise ArgumentError, ~r/argument 4 \(pieces\) must be a list/, fn ->
        NIF.dense_assemble(:f32, {2}, nil, piece)
      end

      assert_raise ArgumentError, ~r/must hold \{shape, operand, out_offset, out_strides\}/, fn ->
        NIF.dense_assemble(:f32, {2}, nil, [{{2}, @op}])
      end

      assert_raise ArgumentError, ~r/pieces \(output window\)\) reaches elements 1..2/, fn ->
        NIF.dense_assemble(:f32, {2}, nil, [{{2}, @op, 1, {1}}])
      end

      assert_raise ArgumentError, ~r/argument 3 \(fill\) must be an operand/, fn ->
        NIF.dense_assemble(:f32, {2}, :zero, [])
      end

      # uncovered output elements are zeroed, not left uninitialised
      one = {<<1.0::float-32-little>>, :f32, 0, {0}}

      assert NIF.dense_assemble(:f32, {3}, nil, [{{1}, one, 1, {1}}]) ==
               <<0::32, 1.0::float-32-little, 0::32>>
    end

    test "a misaligned sub-binary operand is read correctly" do
      data = <<0, 1.5::float-32-little, 2.5::float-32-little>>
      <<_, sub::binary-size(8)>> = data
      result = NIF.dense_unary(:negate, :f32, {2}, {sub, :f32, 0, {1}})
      assert result == <<-1.5::float-32-little, -2.5::float-32-little>>
    end
  end
end
