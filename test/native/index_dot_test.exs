defmodule NxQuant.Native.IndexDotTest do
  # gather, take, take_along_axis and dot against the reference.
  use ExUnit.Case, async: true

  import NxQuant.NativeCase
  alias NxQuant.Native
  alias NxQuant.NativeReference, as: Ref

  defp data(shape, type, seed \\ 1) do
    if type in float_types(),
      do: Ref.random(shape, type, seed: seed, specials: [:nan, :neg_zero]),
      else: Ref.random(shape, type, seed: seed)
  end

  defp indices(shape, type, bound, seed \\ 2),
    do: Ref.random(shape, type, seed: seed, range: {0, bound - 1})

  describe "gather" do
    test "full and partial index tuples, any axes, every index type" do
      t = data({4, 3, 5}, {:f, 32})

      for {i_shape, axes} <- [
            {{6, 3}, [0, 1, 2]},
            {{2, 3, 1}, [1]},
            {{5, 2}, [0, 2]},
            {{4, 2}, [2, 0]},
            {{0, 1}, [0]},
            {{3, 1}, [2]}
          ],
          i_type <- [{:s, 32}, {:s, 64}, {:u, 8}, {:u, 16}] do
        bounds = Enum.map(axes, &elem(t.shape, &1))
        bound = Enum.min(bounds)
        idx = indices(i_shape, i_type, bound)
        expected = Ref.gather(t, idx, axes)

        assert_same(
          Native.gather(t, idx, axes, expected.shape),
          expected,
          "#{inspect(i_shape)} #{inspect(axes)} #{inspect(i_type)}"
        )
      end
    end

    test "every element type" do
      for type <- all_types() do
        t = data({5, 4}, type, 3)
        idx = indices({7, 1}, {:s, 64}, 5)
        expected = Ref.gather(t, idx, [0])
        assert_same(Native.gather(t, idx, [0], {7, 4}), expected, inspect(type))
      end
    end

    test "an out-of-range or negative index raises, as in BinaryBackend" do
      t = data({4, 3}, {:f, 32})

      for bad <- [[4, 0], [0, 3], [-1, 0]] do
        idx = Ref.tensor(bad, {1, 2}, {:s, 32})
        assert_raise ArgumentError, fn -> Ref.gather(t, idx, [0, 1]) end

        assert_raise ArgumentError, ~r/out of (bounds|range)/, fn ->
          Native.gather(t, idx, [0, 1], {1})
        end
      end
    end
  end

  describe "take" do
    test "embedding rows (axis 0) and any other axis, index tensors of any rank" do
      for type <- [{:bf, 16}, {:f, 32}, {:s, 8}, {:u, 64}],
          {shape, axis, i_shape} <- [
            {{10, 4}, 0, {3}},
            {{10, 4}, 0, {1, 5}},
            {{10, 4}, 0, {}},
            {{4, 6, 3}, 1, {2, 2}},
            {{4, 6, 3}, 2, {5}},
            {{1, 6, 3}, 1, {4}},
            {{4, 6}, 1, {0}}
          ] do
        t = data(shape, type, 4)
        idx = indices(i_shape, {:s, 32}, elem(shape, axis))
        expected = Ref.take(t, idx, axis)

        assert_same(
          Native.take(t, idx, axis, expected.shape),
          expected,
          "#{inspect(type)} #{inspect(shape)} axis #{axis} #{inspect(i_shape)}"
        )
      end
    end

    test "an out-of-range index raises" do
      t = data({3, 2}, {:f, 32})

      assert_raise ArgumentError, fn ->
        Native.take(t, Ref.tensor([3], {1}, {:s, 32}), 0, {1, 2})
      end
    end
  end

  describe "take_along_axis" do
    test "along each axis, more or fewer indices than the axis holds" do
      for type <- [{:f, 32}, {:s, 16}, {:f, 16}],
          {shape, axis, i_shape} <- [
            {{2, 3}, 1, {2, 6}},
            {{2, 3}, 0, {3, 3}},
            {{1, 3, 2}, 1, {1, 3, 2}},
            {{2, 4, 3}, 2, {2, 4, 1}},
            {{5}, 0, {8}},
            {{2, 3}, 1, {2, 0}}
          ] do
        t = data(shape, type, 5)
        idx = indices(i_shape, {:s, 64}, elem(shape, axis))
        expected = Ref.take_along_axis(t, idx, axis)

        assert_same(
          Native.take_along_axis(t, idx, axis, i_shape),
          expected,
          "#{inspect(shape)} axis #{axis} #{inspect(i_shape)}"
        )
      end
    end

    test "the indices of argsort give the sorted tensor" do
      t = data({3, 7}, {:f, 32}, 6)
      idx = Native.argsort(t, 1, :desc, {:s, 32})
      assert_same(Native.take_along_axis(t, idx, 1, {3, 7}), Native.sort(t, 1, :desc))
    end
  end

  describe "dot" do
    @dot_cases [
      # {a_shape, contract_a, batch_a, b_shape, contract_b, batch_b}
      {{2, 3}, [1], [], {3, 4}, [0], []},
      {{1, 64}, [1], [], {64, 16}, [0], []},
      {{1, 64}, [1], [], {16, 64}, [1], []},
      {{3, 2}, [0], [], {3, 4}, [0], []},
      {{5}, [0], [], {5}, [0], []},
      {{5}, [0], [], {5, 2}, [0], []},
      {{3, 4}, [], [], {2}, [], []},
      {{2, 3, 4}, [1, 2], [], {3, 4, 5}, [0, 1], []},
      {{2, 3, 4}, [2, 1], [], {4, 3}, [0, 1], []},
      {{3, 2, 4}, [2], [0], {3, 4, 5}, [1], [0]},
      {{2, 2, 3, 4}, [3], [0, 1], {2, 2, 5, 4}, [3], [0, 1]},
      {{4, 2, 3, 5}, [3, 1], [0], {4, 5, 6, 2}, [1, 3], [0]},
      {{2, 0}, [1], [], {0, 3}, [0], []},
      {{0, 3}, [1], [], {3, 2}, [0], []}
    ]

    for type <- NxQuant.NativeCase.all_types() do
      test "contractions and batch axes #{inspect(type)}" do
        type = unquote(type)

        for {as, ca, ba, bs, cb, bb} <- @dot_cases do
          a = data(as, type, 7)
          b = data(bs, type, 8)
          expected = Ref.dot(a, ca, ba, b, cb, bb, type)

          assert_same(
            Native.dot(a, ca, ba, b, cb, bb, type),
            expected,
            inspect({as, ca, ba, bs, cb, bb})
          )
        end
      end
    end

    test "mixed operand types, f32 output of bf16 operands (accumulated in double)" do
      for {ta, tb, out} <- [
            {{:bf, 16}, {:bf, 16}, {:bf, 16}},
            {{:bf, 16}, {:f, 32}, {:f, 32}},
            {{:s, 32}, {:f, 32}, {:f, 32}},
            {{:u, 8}, {:s, 8}, {:s, 16}},
            {{:f, 16}, {:f, 16}, {:f, 16}}
          ] do
        a = data({3, 40}, ta, 9)
        b = data({40, 5}, tb, 10)
        expected = Ref.dot(a, [1], [], b, [0], [], out)
        assert_same(Native.dot(a, [1], [], b, [0], [], out), expected, inspect({ta, tb}))
      end
    end

    test "a decode-step shape: {1, 2048} x {2048, 256} bf16" do
      a = Ref.random({1, 2048}, {:bf, 16}, seed: 11)
      b = Ref.random({2048, 8}, {:bf, 16}, seed: 12)

      assert_same(
        Native.dot(a, [1], [], b, [0], [], {:bf, 16}),
        Ref.dot(a, [1], [], b, [0], [], {:bf, 16})
      )
    end
  end
end
