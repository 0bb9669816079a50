defmodule NxQuant.Native.LayoutTest do
  # The pure planning functions behind NxQuant.Native: strides, views, pieces, dot plans.
  # Each view is also checked by walking it: the elements it reaches, in order, must be the
  # ones the operation means (computed here from multi-indices, without strides).
  use ExUnit.Case, async: true

  alias NxQuant.Native.{Layout, Types}
  alias NxQuant.NativeReference, as: Ref

  @fun "test"

  # The flat positions a view {offset, strides} reaches over `shape`, row-major.
  defp walk(shape, offset, strides) do
    for idx <- Ref.indices(shape) do
      idx
      |> Enum.zip(Tuple.to_list(strides))
      |> Enum.reduce(offset, fn {i, s}, a -> a + i * s end)
    end
  end

  describe "strides and sizes" do
    test "row-major strides for every rank up to 6, including size-0 and size-1 axes" do
      for shape <- [{}, {5}, {2, 3}, {2, 3, 4}, {2, 0, 4}, {1, 1, 3, 2}, {2, 3, 1, 4, 5, 6}] do
        expected = shape |> Ref.indices() |> Enum.map(&Ref.flat(&1, shape))
        assert walk(shape, 0, Layout.strides(shape)) == expected
        assert Tuple.to_list(Layout.strides(shape)) == Layout.strides_list(shape)
      end
    end

    test "size/1 rejects what is not a shape" do
      assert Layout.size({2, 3}) == 6
      assert Layout.size({}) == 1
      assert Layout.size({2, 0}) == 0
      assert Layout.size({2, -1}) == nil
      assert Layout.size({2, 1.0}) == nil
      assert Layout.size([2]) == nil
    end
  end

  describe "broadcast_strides (Nx implicit broadcasting)" do
    test "trailing alignment, size-1 axes and missing leading axes read with stride 0" do
      cases = [
        {{}, {2, 3}},
        {{3}, {2, 3}},
        {{1, 3}, {4, 3}},
        {{2, 1}, {2, 5}},
        {{2, 1, 4}, {3, 2, 6, 4}},
        {{1}, {0}},
        {{2, 3}, {2, 3}}
      ]

      for {shape, out} <- cases do
        expected =
          for idx <- Ref.indices(out) do
            idx
            |> Enum.drop(tuple_size(out) - tuple_size(shape))
            |> Enum.with_index()
            |> Enum.map(fn {i, k} -> if elem(shape, k) == 1, do: 0, else: i end)
            |> Ref.flat(shape)
          end

        assert walk(out, 0, Layout.broadcast_strides(shape, out, @fun, "a")) == expected,
               "#{inspect(shape)} -> #{inspect(out)}"
      end
    end

    test "incompatible shapes raise naming the operand" do
      assert_raise ArgumentError,
                   ~r/test: b of shape \{3\} cannot be broadcast to \{2, 4\}/,
                   fn ->
                     Layout.broadcast_strides({3}, {2, 4}, @fun, "b")
                   end

      assert_raise ArgumentError, ~r/cannot be broadcast/, fn ->
        Layout.broadcast_strides({2, 3}, {3}, @fun, "a")
      end
    end
  end

  test "broadcast_axes_strides maps each input axis to its output axis" do
    # {3} onto axis 0 of {3, 2}: out[i][j] = in[i]
    assert walk({3, 2}, 0, Layout.broadcast_axes_strides({3}, {3, 2}, [0], @fun)) ==
             [0, 0, 1, 1, 2, 2]

    # {2, 1} onto axes [0, 2] of {2, 3, 4}
    assert walk({2, 3, 4}, 0, Layout.broadcast_axes_strides({2, 1}, {2, 3, 4}, [0, 2], @fun)) ==
             List.duplicate(0, 12) ++ List.duplicate(1, 12)

    for {shape, out, axes} <- [{{3}, {2, 3}, [0]}, {{2, 3}, {2, 3}, [1, 0]}, {{2}, {2}, []}] do
      assert_raise ArgumentError, ~r/cannot broadcast a tensor of shape/, fn ->
        Layout.broadcast_axes_strides(shape, out, axes, @fun)
      end
    end
  end

  test "transpose_view reads the permuted tensor" do
    shape = {2, 3, 4}

    for axes <- [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1], [2, 0, 1]] do
      {out, strides} = Layout.transpose_view(shape, axes, @fun)
      assert out == axes |> Enum.map(&elem(shape, &1)) |> List.to_tuple()

      expected =
        for idx <- Ref.indices(out) do
          0..2
          |> Enum.map(fn k -> Enum.at(idx, Enum.find_index(axes, &(&1 == k))) end)
          |> Ref.flat(shape)
        end

      assert walk(out, 0, strides) == expected
    end

    assert_raise ArgumentError, ~r/permutation/, fn ->
      Layout.transpose_view(shape, [0, 1], @fun)
    end

    assert_raise ArgumentError, ~r/permutation/, fn ->
      Layout.transpose_view(shape, [0, 0, 1], @fun)
    end
  end

  test "reverse_view reads the given axes backwards (negative strides, offset at the end)" do
    shape = {2, 3}
    {offset, strides} = Layout.reverse_view(shape, [1], @fun)
    assert walk(shape, offset, strides) == [2, 1, 0, 5, 4, 3]
    {offset, strides} = Layout.reverse_view(shape, [0, 1], @fun)
    assert walk(shape, offset, strides) == [5, 4, 3, 2, 1, 0]
    {offset, strides} = Layout.reverse_view({0, 3}, [0], @fun)
    assert walk({0, 3}, offset, strides) == []
    assert_raise ArgumentError, ~r/distinct axes/, fn -> Layout.reverse_view(shape, [2], @fun) end
  end

  describe "slice_view" do
    test "starts, lengths and strides; output length ceil(len / stride)" do
      shape = {4, 5}
      {out, offset, strides} = Layout.slice_view(shape, [1, 0], [3, 5], [2, 2], @fun)
      assert out == {2, 3}
      assert walk(out, offset, strides) == [5, 7, 9, 15, 17, 19]
    end

    test "start indices clamp as BinaryBackend's clamp_indices: min(max(s, 0), dim - len)" do
      {out, offset, strides} = Layout.slice_view({4, 5}, [3, -2], [2, 2], [1, 1], @fun)
      assert out == {2, 2}
      # starts become [2, 0]
      assert walk(out, offset, strides) == [10, 11, 15, 16]
    end

    test "invalid lengths and strides raise" do
      assert_raise ArgumentError, ~r/length 6 at axis 1/, fn ->
        Layout.slice_view({4, 5}, [0, 0], [1, 6], [1, 1], @fun)
      end

      assert_raise ArgumentError, ~r/stride 0 at axis 0/, fn ->
        Layout.slice_view({4, 5}, [0, 0], [1, 1], [0, 1], @fun)
      end

      assert_raise ArgumentError,
                   ~r/start_indices, lengths and strides must be lists of 2 integers/,
                   fn ->
                     Layout.slice_view({4, 5}, [0], [1, 1], [1, 1], @fun)
                   end
    end
  end

  describe "pad_plan" do
    # Where each operand element lands, from Nx's definition (interior first, then edges).
    defp pad_expected(shape, config) do
      for idx <- Ref.indices(shape),
          out =
            Enum.zip_with([idx, config], fn [i, {lo, _hi, interior}] ->
              lo + i * (interior + 1)
            end),
          out_dims = pad_dims(shape, config),
          Enum.all?(Enum.zip(out, out_dims), fn {p, d} -> p >= 0 and p < d end) do
        {Ref.flat(idx, shape), Ref.flat(out, List.to_tuple(out_dims))}
      end
    end

    defp pad_dims(shape, config) do
      Enum.zip_with(Tuple.to_list(shape), config, fn d, {lo, hi, i} ->
        d + (d - 1) * i + lo + hi
      end)
    end

    test "edge, negative edge and interior padding place every surviving element" do
      cases = [
        {{3}, [{1, 2, 0}]},
        {{3}, [{0, 0, 2}]},
        {{5}, [{-2, 1, 0}]},
        {{5}, [{-1, -1, 1}]},
        {{4, 3}, [{1, -1, 1}, {-2, 2, 2}]},
        {{2, 3, 2}, [{0, 0, 0}, {-3, 1, 0}, {1, 1, 3}]},
        {{3}, [{-7, 2, 1}]},
        {{2, 2}, [{-1, 0, 0}, {0, -1, 0}]}
      ]

      for {shape, config} <- cases do
        {out_shape, piece} = Layout.pad_plan(shape, config, @fun)
        assert Tuple.to_list(out_shape) == pad_dims(shape, config)
        expected = pad_expected(shape, config)

        case piece do
          nil ->
            assert expected == [], inspect({shape, config})

          {in_shape, {offset, strides}, out_offset, out_strides} ->
            got =
              Enum.zip(walk(in_shape, offset, strides), walk(in_shape, out_offset, out_strides))

            assert got == expected, inspect({shape, config})
        end
      end
    end

    test "size-0 operands, and invalid configurations" do
      assert {{3}, nil} = Layout.pad_plan({0}, [{1, 2, 0}], @fun)
      assert {{}, {{}, {0, {}}, 0, {}}} = Layout.pad_plan({}, [], @fun)

      assert_raise ArgumentError, ~r/interior padding must be non-negative/, fn ->
        Layout.pad_plan({3}, [{0, 0, -1}], @fun)
      end

      assert_raise ArgumentError, ~r/negative size/, fn ->
        Layout.pad_plan({3}, [{-2, -2, 0}], @fun)
      end

      assert_raise ArgumentError, ~r/list of 2 \{low, high, interior\}/, fn ->
        Layout.pad_plan({3, 2}, [{0, 0, 0}], @fun)
      end
    end
  end

  test "put_slice_window clamps the start so the slice fits" do
    assert {offset, {5, 1}} = Layout.put_slice_window({4, 5}, [3, 4], {2, 2}, @fun)
    # starts clamp to [2, 3]
    assert offset == 2 * 5 + 3
    assert {0, _} = Layout.put_slice_window({4, 5}, [-3, -1], {2, 2}, @fun)

    assert_raise ArgumentError, ~r/no larger dimension/, fn ->
      Layout.put_slice_window({4, 5}, [0, 0], {5, 1}, @fun)
    end
  end

  test "concatenate_plan offsets each piece along the axis" do
    assert {{2, 6, 2}, [0, 6, 8]} =
             Layout.concatenate_plan([{2, 3, 2}, {2, 1, 2}, {2, 2, 2}], 1, @fun)

    assert {{5}, [0, 2]} = Layout.concatenate_plan([{2}, {3}], 0, @fun)

    assert_raise ArgumentError, ~r/every shape must match \{2, :\*\}/, fn ->
      Layout.concatenate_plan([{2, 3}, {3, 3}], 1, @fun)
    end
  end

  test "reduce_plan sorts axes and keeps or drops them" do
    assert Layout.reduce_plan({2, 3, 4}, [2, 0], false, @fun) == {[0, 2], {3}}
    assert Layout.reduce_plan({2, 3, 4}, [2, 0], true, @fun) == {[0, 2], {1, 3, 1}}
    assert Layout.reduce_plan({2, 3}, nil, false, @fun) == {[0, 1], {}}
    assert Layout.reduce_plan({}, nil, true, @fun) == {[], {}}

    assert_raise ArgumentError, ~r/distinct axes/, fn ->
      Layout.reduce_plan({2}, [0, 0], false, @fun)
    end
  end

  describe "dot_plan" do
    # The flat positions of a[batch][m][k] the plan reads (through a copy when planned so).
    defp reads(shape, {:view, offset, strides}, dims) do
      walk(dims, offset, strides) |> Enum.map(&{:flat, &1}) |> then(&{shape, &1})
    end

    defp reads(shape, {:copy, axes, permuted, strides}, dims) do
      {_, perm_strides} = Layout.transpose_view(shape, axes, @fun)
      copied = walk(permuted, 0, perm_strides) |> List.to_tuple()
      {shape, walk(dims, 0, strides) |> Enum.map(&{:flat, elem(copied, &1)})}
    end

    # The flat positions of a the matmul must read: [batch][m][k] in the planned order.
    defp expected_a(shape, contract, batch) do
      free = Enum.to_list(0..(tuple_size(shape) - 1)//1) -- (contract ++ batch)
      group = fn axes -> axes |> Enum.map(&elem(shape, &1)) |> List.to_tuple() end

      for bi <- Ref.indices(group.(batch)),
          mi <- Ref.indices(group.(free)),
          ki <- Ref.indices(group.(contract)) do
        index =
          for axis <- 0..(tuple_size(shape) - 1)//1 do
            cond do
              axis in batch -> Enum.at(bi, Enum.find_index(batch, &(&1 == axis)))
              axis in free -> Enum.at(mi, Enum.find_index(free, &(&1 == axis)))
              true -> Enum.at(ki, Enum.find_index(contract, &(&1 == axis)))
            end
          end

        {:flat, Ref.flat(index, shape)}
      end
    end

    test "every operand is read as [batch, m, k] / [batch, k, n] in contraction order" do
      cases = [
        # {a_shape, contract_a, batch_a, b_shape, contract_b, batch_b}
        {{2, 3}, [1], [], {3, 4}, [0], []},
        {{1, 2048}, [1], [], {2048, 8}, [0], []},
        {{2, 3}, [0], [], {2, 4}, [0], []},
        {{4, 2, 3}, [2], [0], {4, 3, 5}, [1], [0]},
        {{4, 2, 3, 5}, [3, 1], [0], {4, 5, 6, 2}, [1, 3], [0]},
        {{2, 3, 4}, [1, 2], [], {3, 4}, [0, 1], []},
        {{2, 3, 4}, [2, 1], [], {4, 3}, [0, 1], []},
        {{3, 2, 4}, [0, 2], [], {3, 4, 2}, [0, 1], []},
        {{2, 2, 3, 4}, [3], [0, 1], {2, 2, 4, 3}, [2], [0, 1]},
        {{2, 3, 1, 4}, [3, 2], [], {4, 1, 5}, [0, 1], []},
        {{3}, [0], [], {3}, [0], []},
        {{2, 0}, [1], [], {0, 3}, [0], []}
      ]

      for {as, ca, ba, bs, cb, bb} = c <- cases do
        plan = Layout.dot_plan(as, ca, ba, bs, cb, bb, @fun)
        assert {_, got_a} = reads(as, plan.a, {plan.batch, plan.m, plan.k})
        assert got_a == expected_a(as, ca, ba), "a of #{inspect(c)}"

        # b is read as [batch][k][n]: the same as a "transposed" operand with free last.
        {_, got_b} = reads(bs, plan.b, {plan.batch, plan.k, plan.n})
        free_b = Enum.to_list(0..(tuple_size(bs) - 1)//1) -- (cb ++ bb)
        expected_b = expected_a_order(bs, bb, cb, free_b)
        assert got_b == expected_b, "b of #{inspect(c)}"

        free_a = Enum.to_list(0..(tuple_size(as) - 1)//1) -- (ca ++ ba)

        assert plan.out_shape ==
                 List.to_tuple(
                   Enum.map(ba, &elem(as, &1)) ++
                     Enum.map(free_a, &elem(as, &1)) ++ Enum.map(free_b, &elem(bs, &1))
                 )
      end
    end

    defp expected_a_order(shape, g1, g2, g3) do
      group = fn axes -> axes |> Enum.map(&elem(shape, &1)) |> List.to_tuple() end

      for i1 <- Ref.indices(group.(g1)),
          i2 <- Ref.indices(group.(g2)),
          i3 <- Ref.indices(group.(g3)) do
        index =
          for axis <- 0..(tuple_size(shape) - 1)//1 do
            Enum.find_value([{g1, i1}, {g2, i2}, {g3, i3}], fn {g, i} ->
              pos = Enum.find_index(g, &(&1 == axis))
              pos && Enum.at(i, pos)
            end)
          end

        {:flat, Ref.flat(index, shape)}
      end
    end

    test "views where the axes collapse, a copy where they do not" do
      # size-1 groups (batch, m) read with stride 0
      assert %{a: {:view, 0, {0, 0, 1}}, b: {:view, 0, {0, 8, 1}}} =
               Layout.dot_plan({1, 2048}, [1], [], {2048, 8}, [0], [], @fun)

      # b contracted on its last axis (x . W^T): still a view, n stride = 2048
      assert %{b: {:view, 0, {_, 1, 2048}}} =
               Layout.dot_plan({1, 2048}, [1], [], {8, 2048}, [1], [], @fun)

      # contracting [2, 1] of {2, 3, 4}: k runs over axis 2 then 1 -> not one stride
      assert %{a: {:copy, [0, 2, 1], {2, 4, 3}, {24, 12, 1}}} =
               Layout.dot_plan({2, 3, 4}, [2, 1], [], {4, 3}, [0, 1], [], @fun)
    end

    test "mismatched axes raise" do
      assert_raise ArgumentError, ~r/contract axis 1 of a .* different sizes/, fn ->
        Layout.dot_plan({2, 3}, [1], [], {4, 5}, [0], [], @fun)
      end

      assert_raise ArgumentError, ~r/as many contract axes/, fn ->
        Layout.dot_plan({2, 3}, [1], [], {3, 5}, [0, 1], [], @fun)
      end

      assert_raise ArgumentError, ~r/distinct axes/, fn ->
        Layout.dot_plan({2, 3}, [1], [1], {3, 3}, [0], [1], @fun)
      end
    end
  end

  test "gather_shape and take_shape follow Nx.Shape" do
    assert Layout.gather_shape({2, 3}, {10, 2}, [0, 1], @fun) == {10}
    assert Layout.gather_shape({2, 3}, {4, 5, 1}, [1], @fun) == {4, 5, 2}
    assert Layout.gather_shape({2, 2, 2, 2, 2}, {3, 3, 3}, [0, 1, 2], @fun) == {3, 3, 2, 2}

    assert_raise ArgumentError, ~r/last axis of 2/, fn ->
      Layout.gather_shape({2, 3}, {4, 1}, [0, 1], @fun)
    end

    assert Layout.take_shape({2, 3, 4}, {5, 6}, 1) == {2, 5, 6, 4}
  end

  test "Types.merge follows Nx.Type.merge" do
    assert Types.merge({:u, 8}, {:s, 8}) == {:s, 16}
    assert Types.merge({:u, 64}, {:s, 8}) == {:s, 64}
    assert Types.merge({:s, 32}, {:u, 16}) == {:s, 32}
    assert Types.merge({:bf, 16}, {:f, 16}) == {:f, 16}
    assert Types.merge({:f, 16}, {:bf, 16}) == {:f, 16}
    assert Types.merge({:bf, 16}, {:f, 32}) == {:f, 32}
    assert Types.merge({:s, 64}, {:bf, 16}) == {:bf, 16}
    assert Types.merge({:f, 32}, {:f, 64}) == {:f, 64}
    assert Types.merge({:u, 8}, {:u, 32}) == {:u, 32}
    assert Enum.all?(Types.all(), &Types.supported?/1)
    refute Types.supported?({:c, 64})
    refute Types.supported?({:s, 4})
  end
end
