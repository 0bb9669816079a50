defmodule NxQuant.Native.ReduceSortTest do
  # Reductions (sum, product, max, min, all, any, argmax, argmin), cumulative ops, sort,
  # argsort and top_k against the reference, every type.
  use ExUnit.Case, async: true

  import NxQuant.NativeCase
  alias NxQuant.Native
  alias NxQuant.NativeReference, as: Ref

  defp data(shape, type, seed, opts \\ []) do
    cond do
      type in float_types() and opts[:specials] ->
        Ref.random(shape, type, seed: seed, specials: opts[:specials])

      type in float_types() ->
        Ref.random(shape, type, seed: seed)

      # few distinct values, so ties happen
      opts[:ties] ->
        Ref.random(shape, type, seed: seed, range: {0, 3})

      true ->
        Ref.random(shape, type, seed: seed)
    end
  end

  # Nx's output type of sum/product: integers widen to 64 bits of their signedness.
  defp sum_type({:u, _}), do: {:u, 64}
  defp sum_type({:s, _}), do: {:s, 64}
  defp sum_type(type), do: type

  @axes_cases [
    {{2, 3, 4}, nil},
    {{2, 3, 4}, [0]},
    {{2, 3, 4}, [1]},
    {{2, 3, 4}, [2]},
    {{2, 3, 4}, [0, 2]},
    {{2, 3, 4}, [2, 1]},
    {{}, nil},
    {{5}, [0]},
    {{3, 0}, [1]},
    {{3, 0}, [0]},
    {{1, 2048}, [1]}
  ]

  for type <- NxQuant.NativeCase.all_types() do
    describe "#{inspect(type)}" do
      @describetag type: type

      test "sum and product over any axes, keep_axes", %{type: type} do
        for {shape, axes} <- @axes_cases, keep <- [false, true], op <- [:sum, :product] do
          t = data(shape, type, 1)
          out = sum_type(type)

          assert_same(
            Native.reduce(op, t, axes, keep, out),
            Ref.reduce(op, t, axes, keep, out),
            "#{op} #{inspect(shape)} #{inspect(axes)} keep: #{keep}"
          )
        end
      end

      test "reduce_max, reduce_min, all, any (NaN propagates)", %{type: type} do
        for {shape, axes} <- @axes_cases,
            op <- [:reduce_max, :reduce_min, :all, :any],
            op in [:all, :any] or not empty_reduction?(shape, axes) do
          t = data(shape, type, 2, specials: [:nan, :infinity, :neg_infinity, 0.0])
          out = if op in [:all, :any], do: {:u, 8}, else: type

          assert_same(
            Native.reduce(op, t, axes, false, out),
            Ref.reduce(op, t, axes, false, out),
            "#{op} #{inspect(shape)} #{inspect(axes)}"
          )
        end
      end

      test "argmax and argmin: axis or whole tensor, tie breaks, NaN", %{type: type} do
        for {shape, axis} <- [{{3, 4}, nil}, {{3, 4}, 0}, {{3, 4}, 1}, {{2, 3, 5}, 1}, {{}, nil}],
            op <- [:argmax, :argmin],
            tie <- [:low, :high],
            keep <- [false, true],
            out <- [{:s, 32}, {:u, 8}] do
          t = data(shape, type, 3, ties: true, specials: [:nan, 1.0, 1.0, :infinity])

          assert_same(
            Native.arg_reduce(op, t, axis, keep, tie, out),
            Ref.arg_reduce(op, t, axis, keep, tie, out),
            "#{op} #{inspect(shape)} axis #{inspect(axis)} #{tie} keep: #{keep}"
          )
        end
      end

      test "cumulative ops along each axis, reversed (Nx's scan order)", %{type: type} do
        for {shape, axis} <- [{{7}, 0}, {{3, 5}, 0}, {{3, 5}, 1}, {{2, 9, 2}, 1}, {{0, 3}, 1}],
            op <- Native.cumulative_ops(),
            reverse <- [false, true] do
          t = data(shape, type, 4)
          got = Native.cumulative(op, t, axis, reverse, type)
          expected = Ref.cumulative(op, t, axis, reverse, type)
          context = "#{op} #{inspect(shape)} axis #{axis} reverse: #{reverse}"

          # bit-identical: the kernel follows Nx's associative scan, each pairwise step
          # rounded to the type, as the reference does
          assert_same(got, expected, context)
        end
      end

      test "sort and argsort: stable, NaN above everything, both directions", %{type: type} do
        for {shape, axis} <- [{{9}, 0}, {{4, 6}, 0}, {{4, 6}, 1}, {{2, 5, 3}, 1}, {{3, 0}, 1}],
            direction <- [:asc, :desc] do
          t = data(shape, type, 5, ties: true, specials: [:nan, :infinity, :neg_infinity, 1.0])

          assert_same(
            Native.sort(t, axis, direction),
            Ref.sort(t, axis, direction),
            "sort #{inspect(shape)} #{axis} #{direction}"
          )

          assert_same(
            Native.argsort(t, axis, direction, {:s, 32}),
            Ref.argsort(t, axis, direction, {:s, 32}),
            "argsort #{inspect(shape)} #{axis} #{direction}"
          )
        end

        s = data({}, type, 6)
        assert Native.sort(s, 0, :asc) == s
        assert_same(Native.argsort(s, 0, :desc, {:s, 64}), Ref.tensor([0], {}, {:s, 64}))
      end

      test "top_k along the last axis", %{type: type} do
        for {shape, k} <- [{{10}, 3}, {{4, 7}, 1}, {{4, 7}, 7}, {{2, 3, 5}, 2}, {{0, 4}, 2}] do
          t = data(shape, type, 7, ties: true, specials: [:nan, 1.0, 1.0])
          {values, indices} = Native.top_k(t, k, {:s, 32})
          {ref_values, ref_indices} = Ref.top_k(t, k, {:s, 32})
          assert_same(values, ref_values, "values #{inspect(shape)} k #{k}")
          assert_same(indices, ref_indices, "indices #{inspect(shape)} k #{k}")
        end
      end
    end
  end

  defp empty_reduction?(shape, nil), do: Ref.size(shape) == 0
  defp empty_reduction?(shape, axes), do: Enum.any?(axes, &(elem(shape, &1) == 0))

  test "sums accumulate in double in row-major order (bit-identical with BinaryBackend)" do
    # f32 values whose f32-accumulated sum differs from the double-accumulated one
    t = Ref.tensor([16_777_216.0, 1.0, 1.0, 1.0, -16_777_216.0, 0.5], {6}, {:f, 32})
    assert Ref.values(Native.reduce(:sum, t, nil, false, {:f, 32})) == [3.5]

    assert_same(
      Native.reduce(:sum, t, nil, false, {:f, 32}),
      Ref.reduce(:sum, t, nil, false, {:f, 32})
    )

    # over two axes of a larger tensor: the order is row-major over the reduced axes
    t = Ref.random({7, 33, 5}, {:bf, 16}, seed: 9)

    assert_same(
      Native.reduce(:sum, t, [0, 2], false, {:bf, 16}),
      Ref.reduce(:sum, t, [0, 2], false, {:bf, 16})
    )
  end

  test "integer sums wrap in the output type" do
    t = Ref.tensor([127, 127, 127], {3}, {:s, 8})
    assert Ref.values(Native.reduce(:sum, t, nil, false, {:s, 8})) == [125]
    t = Ref.tensor([0xFFFFFFFFFFFFFFFF, 2], {2}, {:u, 64})
    assert Ref.values(Native.reduce(:sum, t, nil, false, {:u, 64})) == [1]
  end
end
