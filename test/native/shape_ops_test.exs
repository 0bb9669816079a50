defmodule NxQuant.Native.ShapeOpsTest do
  # Data movement: transpose, broadcast, reverse, slice (views, one strided copy each), and
  # put_slice, concatenate, stack, pad (pieces written into one output), iota; every type.
  use ExUnit.Case, async: true

  import NxQuant.NativeCase
  alias NxQuant.Native
  alias NxQuant.NativeReference, as: Ref

  defp data(shape, type, seed \\ 1) do
    if type in float_types(),
      do: Ref.random(shape, type, seed: seed, specials: [:nan, :infinity, :neg_zero]),
      else: Ref.random(shape, type, seed: seed)
  end

  for type <- NxQuant.NativeCase.all_types() do
    describe "#{inspect(type)}" do
      @describetag type: type

      test "transpose: every permutation of a rank-3 tensor, rank 0, 1, 4, size 0", %{type: type} do
        t = data({2, 3, 4}, type)

        for axes <- [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] do
          assert_same(Native.transpose(t, axes), Ref.transpose(t, axes), inspect(axes))
        end

        for {shape, axes} <- [
              {{}, []},
              {{5}, [0]},
              {{2, 1, 3, 2}, [3, 1, 0, 2]},
              {{0, 3}, [1, 0]},
              {{1, 2048}, [1, 0]}
            ] do
          t = data(shape, type, 2)
          assert_same(Native.transpose(t, axes), Ref.transpose(t, axes), inspect(shape))
        end
      end

      test "broadcast: new axes, size-1 axes, scalars, size 0", %{type: type} do
        for {shape, out, axes} <- [
              {{}, {2, 3}, []},
              {{3}, {2, 3}, [1]},
              {{3}, {3, 2}, [0]},
              {{2, 1}, {2, 4}, [0, 1]},
              {{1, 3}, {2, 4, 3}, [1, 2]},
              {{2, 1}, {2, 5, 3}, [0, 2]},
              {{3}, {0, 3}, [1]},
              {{2, 3}, {2, 3}, [0, 1]}
            ] do
          t = data(shape, type, 3)
          assert_same(Native.broadcast(t, out, axes), Ref.broadcast(t, out, axes), inspect(out))
        end
      end

      test "reverse: any set of axes", %{type: type} do
        t = data({3, 4, 2}, type, 4)

        for axes <- [[], [0], [1], [2], [0, 2], [0, 1, 2]] do
          assert_same(Native.reverse(t, axes), Ref.reverse(t, axes), inspect(axes))
        end

        assert_same(Native.reverse(data({0, 2}, type), [0, 1]), data({0, 2}, type))
      end

      test "slice: starts, lengths, strides, clamped starts", %{type: type} do
        t = data({5, 6, 3}, type, 5)

        for {starts, lengths, strides} <- [
              {[0, 0, 0], [5, 6, 3], [1, 1, 1]},
              {[1, 2, 0], [3, 2, 3], [1, 1, 1]},
              {[0, 1, 1], [5, 5, 2], [2, 3, 1]},
              {[4, 5, 2], [3, 3, 1], [1, 2, 1]},
              {[-2, 0, 0], [2, 6, 3], [1, 1, 2]},
              {[2, 0, 0], [1, 6, 3], [1, 1, 1]},
              {[0, 0, 0], [0, 2, 3], [1, 1, 1]}
            ] do
          assert_same(
            Native.slice(t, starts, lengths, strides),
            Ref.slice(t, starts, lengths, strides),
            inspect({starts, lengths, strides})
          )
        end
      end

      test "put_slice: clamped starts, same and other slice types", %{type: type} do
        t = data({4, 5}, type, 6)

        for {starts, s_shape, s_type} <- [
              {[1, 1], {2, 3}, type},
              {[3, 4], {2, 2}, type},
              {[-1, 0], {1, 5}, type},
              {[0, 0], {4, 5}, type},
              {[2, 2], {0, 2}, type},
              {[1, 0], {2, 5}, {:s, 8}},
              {[0, 3], {3, 2}, {:f, 32}}
            ] do
          slice = data(s_shape, s_type, 7)
          out = NxQuant.Native.Types.merge(type, s_type)

          assert_same(
            Native.put_slice(t, starts, slice),
            Ref.put_slice(t, starts, slice, out),
            inspect({starts, s_shape, s_type})
          )
        end

        # a KV-cache shaped update at a position
        cache = data({1, 8, 16, 4}, type, 8)
        step = data({1, 8, 1, 4}, type, 9)

        assert_same(
          Native.put_slice(cache, [0, 0, 5, 0], step),
          Ref.put_slice(cache, [0, 0, 5, 0], step, type)
        )
      end

      test "concatenate and stack along every axis, mixed input types", %{type: type} do
        a = data({2, 3, 2}, type, 10)
        b = data({2, 1, 2}, {:u, 8}, 11)
        c = data({2, 2, 2}, type, 12)
        out = NxQuant.Native.Types.merge(type, {:u, 8})

        assert_same(Native.concatenate([a, b, c], 1, out), Ref.concatenate([a, b, c], 1, out))

        for axis <- [0, 2] do
          x = data({2, 3, 2}, type, 13)
          assert_same(Native.concatenate([a, x], axis, type), Ref.concatenate([a, x], axis, type))
        end

        assert_same(Native.concatenate([a], 0, type), a)
        e = data({0, 3, 2}, type)
        assert_same(Native.concatenate([e, a, e], 0, type), Ref.concatenate([e, a, e], 0, type))

        for axis <- 0..3 do
          x = data({2, 3, 2}, type, 14)
          assert_same(Native.stack([a, x, a], axis, type), Ref.stack([a, x, a], axis, type))
        end

        s = data({}, type, 15)
        assert_same(Native.stack([s, s], 0, {:f, 64}), Ref.stack([s, s], 0, {:f, 64}))
      end

      test "pad: edges, negative edges, interior padding, other output type", %{type: type} do
        t = data({3, 4}, type, 16)

        value =
          if type in float_types(),
            do: Ref.tensor([:nan], {}, {:f, 32}),
            else: Ref.tensor([7], {}, {:s, 8})

        for config <- [
              [{0, 0, 0}, {0, 0, 0}],
              [{1, 2, 0}, {0, 1, 0}],
              [{0, 0, 1}, {0, 0, 2}],
              [{-1, 0, 0}, {2, -3, 0}],
              [{-2, -1, 1}, {1, 1, 1}],
              [{2, -4, 2}, {-5, 1, 1}],
              [{-3, 0, 0}, {0, 0, 0}]
            ] do
          for out <- [type, {:f, 64}] do
            assert_same(
              Native.pad(t, value, config, out),
              Ref.pad(t, value, config, out),
              inspect(config)
            )
          end
        end

        # nothing of an empty operand survives: all padding
        empty = data({0, 2}, type)
        padded = Native.pad(empty, value, [{1, 1, 0}, {0, 0, 3}], type)
        assert padded.shape == {2, 5}
        assert_same(padded, Ref.pad(empty, value, [{1, 1, 0}, {0, 0, 3}], type))
      end

      test "iota: every axis and the flat index", %{type: type} do
        for {shape, axis} <- [{{}, nil}, {{5}, 0}, {{2, 3, 4}, nil}, {{2, 3, 4}, 1}, {{0, 2}, 1}] do
          assert_same(Native.iota(shape, type, axis), Ref.iota(shape, type, axis))
        end

        for axis <- [0, 2] do
          assert_same(Native.iota({2, 3, 4}, type, axis), Ref.iota({2, 3, 4}, type, axis))
        end
      end
    end
  end

  test "iota wraps past the type's range like BinaryBackend's writes" do
    assert_same(Native.iota({300}, {:u, 8}, nil), Ref.iota({300}, {:u, 8}, nil))
    assert_same(Native.iota({2, 200}, {:s, 8}, 1), Ref.iota({2, 200}, {:s, 8}, 1))
  end
end
