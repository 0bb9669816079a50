defmodule NxQuant.BatchedTest do
  # Batched quantized weights {E, N, K} and gather_qmm through NxQuant.Core and the NIF, against
  # a plain-Elixir reference: each expert dequantized from the parts (test/support/reference.ex)
  # and multiplied in doubles.
  use ExUnit.Case, async: true

  alias NxQuant.{Batched, Core, Dense, NIF, QuantizedTensor, TestFloat}
  alias NxQuant.TestReference, as: Ref

  # Expert e's dequantized rows (N rows of K, or K rows of N for transpose: false).
  defp experts(qt) do
    {batch, {rows, cols}} = Batched.split(qt.shape)
    count = batch |> Tuple.to_list() |> Enum.product()

    qt
    |> Core.parts()
    |> Ref.dequantize(cols, qt.config.bits, qt.config.group_size)
    |> Enum.chunk_every(rows)
    |> tap(&assert(length(&1) == count))
  end

  defp blocks(%Dense{shape: shape} = d) do
    rank = tuple_size(shape)
    m = elem(shape, rank - 2)
    d |> Ref.rows() |> Enum.chunk_every(m)
  end

  # Error bound: f32 accumulation, plus the kernel's weight (scale * q + bias in f32) against
  # MLX's dequantize rounded to the scales' type `dtype`.
  defp assert_block(got_rows, x_rows, w_rows, transpose, context, dtype \\ {:f, 32}) do
    eps = if dtype == {:f, 32}, do: 0.0, else: 2 * TestFloat.epsilon(dtype)

    expected = Ref.dot(x_rows, w_rows, transpose)
    bound = Ref.abs_dot(x_rows, w_rows, transpose)

    for {{g_row, e_row}, b_row} <- Enum.zip(Enum.zip(got_rows, expected), bound),
        {{g, e}, b} <- Enum.zip(Enum.zip(g_row, e_row), b_row) do
      assert abs(g - e) <= (2.0e-5 + eps) * b + 1.0e-30, "#{context}: got #{g}, expected #{e}"
    end
  end

  defp indices(values, shape, type \\ {:s, 64}) do
    %Dense{data: NxQuant.NativeReference.write(values, type), shape: shape, type: type}
  end

  test "a rank-3 tensor quantizes along its last axis into a batched tensor and dequantizes back" do
    x = Ref.random_dense({3, 8, 64}, {:bf, 16}, 1)
    qt = Core.quantize(x, group_size: 32)
    assert %QuantizedTensor{shape: {3, 8, 64}, dtype: {:bf, 16}} = qt
    d = Core.dequantize(qt)
    assert d.shape == {3, 8, 64}
    assert Ref.rows(d) == qt |> experts() |> Enum.concat()
    # ... the same bytes as quantizing the three matrices one by one
    for e <- 0..2 do
      one = Dense.new(binary_part(x.data, e * 8 * 64 * 2, 8 * 64 * 2), {8, 64}, {:bf, 16})

      assert Core.parts(Core.quantize(one, group_size: 32)).packed.data ==
               binary_part(Core.parts(qt).packed.data, e * 8 * 32, 8 * 32)
    end
  end

  test "the issue's case: x {2, 5, 128} . qw {2, 64, 128} is {2, 5, 64}, matrix by matrix" do
    qt = Core.quantize(Ref.random_dense({2, 64, 128}, {:f, 32}, 2))
    x = Ref.random_dense({2, 5, 128}, {:f, 32}, 3)
    out = Core.quantized_matmul(x, qt)
    assert out.shape == {2, 5, 64}
    ws = experts(qt)

    for {{got, x_rows}, e} <- Enum.with_index(Enum.zip(blocks(out), blocks(x))) do
      assert_block(got, x_rows, Enum.at(ws, e), true, "batch #{e}")
    end
  end

  for transpose <- [true, false], {bits, gs} <- [{4, 64}, {3, 32}, {8, 128}] do
    test "batch axes broadcast: x {3, 1, 2, K} against w {4, ...}, transpose #{transpose}, #{bits} bits g#{gs}" do
      transpose = unquote(transpose)
      {bits, gs} = {unquote(bits), unquote(gs)}
      {k, n} = {128, if(transpose, do: 16, else: 128)}
      w_shape = if transpose, do: {4, n, k}, else: {4, k, n}
      qt = Core.quantize(Ref.random_dense(w_shape, {:f, 16}, bits), bits: bits, group_size: gs)
      x = Ref.random_dense({3, 1, 2, k}, {:f, 32}, 5)
      out = Core.quantized_matmul(x, qt, transpose: transpose)
      assert out.shape == {3, 4, 2, n}
      ws = experts(qt)
      xs = blocks(x)

      for {got, p} <- Enum.with_index(blocks(out)) do
        {i, e} = {div(p, 4), rem(p, 4)}
        assert_block(got, Enum.at(xs, i), Enum.at(ws, e), transpose, "at #{i},#{e}", {:f, 16})
      end
    end
  end

  test "a 2-D x broadcasts over the experts; a 2-D weight keeps x's leading axes as rows" do
    qt = Core.quantize(Ref.random_dense({3, 16, 64}, {:f, 32}, 7), group_size: 32)
    x = Ref.random_dense({2, 64}, {:f, 32}, 8)
    out = Core.quantized_matmul(x, qt)
    assert out.shape == {3, 2, 16}

    for {got, e} <- Enum.with_index(blocks(out)),
        do: assert_block(got, Ref.rows(x), Enum.at(experts(qt), e), true, "expert #{e}")

    w2 = Core.quantize(Ref.random_dense({16, 64}, {:f, 32}, 9), group_size: 32)
    x3 = Ref.random_dense({2, 3, 64}, {:f, 32}, 10)
    assert Core.quantized_matmul(x3, w2).shape == {2, 3, 16}
  end

  test "shapes that do not broadcast, or a rank-1 x against a batched weight, are ArgumentErrors" do
    qt = Core.quantize(Ref.random_dense({4, 16, 64}, {:f, 32}, 7), group_size: 32)

    assert_raise ArgumentError, ~r/\{3\} and \{4\} do not broadcast/, fn ->
      Core.quantized_matmul(Ref.random_dense({3, 2, 64}, {:f, 32}, 1), qt)
    end

    assert_raise ArgumentError, ~r/rank >= 2/, fn ->
      Core.quantized_matmul(Ref.random_dense({64}, {:f, 32}, 1), qt)
    end

    assert_raise ArgumentError, ~r/last axis must be 64/, fn ->
      Core.quantized_matmul(Ref.random_dense({4, 2, 32}, {:f, 32}, 1), qt)
    end
  end

  test "gather_qmm: the mlx-lm top-k layout x {T, 1, 1, K}, rhs {T, k} gives {T, k, 1, N}" do
    qt = Core.quantize(Ref.random_dense({6, 32, 128}, {:bf, 16}, 11))
    x = Ref.random_dense({4, 1, 1, 128}, {:bf, 16}, 12)
    rhs = [5, 0, 2, 2, 2, 2, 1, 3]
    out = Core.gather_qmm(x, qt, rhs_indices: indices(rhs, {4, 2}), out_type: {:f, 32})
    assert out.shape == {4, 2, 1, 32}
    ws = experts(qt)
    xs = blocks(x)

    for {{got, e}, p} <- Enum.with_index(Enum.zip(blocks(out), rhs)) do
      assert_block(got, Enum.at(xs, div(p, 2)), Enum.at(ws, e), true, "at #{p}", {:bf, 16})
    end
  end

  test "gather_qmm: both indices, other integer types, broadcasting and transpose: false" do
    qt = Core.quantize(Ref.random_dense({2, 2, 64, 32}, {:f, 32}, 13), group_size: 32)
    x = Ref.random_dense({3, 2, 64}, {:f, 32}, 14)
    lhs = [2, 0, 1]
    rhs = [3, 1]

    out =
      Core.gather_qmm(x, qt,
        lhs_indices: indices(lhs, {3, 1}, {:u, 8}),
        rhs_indices: indices(rhs, {2}, {:s, 32}),
        transpose: false
      )

    assert out.shape == {3, 2, 2, 32}
    ws = experts(qt)
    xs = blocks(x)

    for {got, p} <- Enum.with_index(blocks(out)) do
      {i, j} = {div(p, 2), rem(p, 2)}
      w = Enum.at(ws, Enum.at(rhs, j))
      assert_block(got, Enum.at(xs, Enum.at(lhs, i)), w, false, "position #{i},#{j}")
    end

    # No indices at all: the batched matmul.
    x4 = Ref.random_dense({2, 2, 2, 32}, {:f, 32}, 3)
    both = Core.gather_qmm(x4, qt)
    assert both.shape == {2, 2, 2, 64}
    assert both == Core.quantized_matmul(x4, qt)
  end

  test "gather_qmm: bad indices are ArgumentErrors naming them" do
    qt = Core.quantize(Ref.random_dense({4, 16, 64}, {:f, 32}, 7), group_size: 32)
    x = Ref.random_dense({2, 1, 64}, {:f, 32}, 1)

    assert_raise ArgumentError, ~r/rhs_indices holds 4, out of range for the 4 matrices/, fn ->
      Core.gather_qmm(x, qt, rhs_indices: indices([0, 4], {2}))
    end

    assert_raise ArgumentError, ~r/rhs_indices holds -1/, fn ->
      Core.gather_qmm(x, qt, rhs_indices: indices([-1, 0], {2}))
    end

    assert_raise ArgumentError, ~r/lhs_indices holds 2/, fn ->
      Core.gather_qmm(x, qt, lhs_indices: indices([2], {1}))
    end

    assert_raise ArgumentError, ~r/do not broadcast/, fn ->
      Core.gather_qmm(x, qt, rhs_indices: indices([0, 1, 2], {3}))
    end

    assert_raise ArgumentError, ~r/integer type/, fn ->
      Core.gather_qmm(x, qt, rhs_indices: Ref.random_dense({2}, {:f, 32}, 1))
    end

    assert_raise ArgumentError, ~r/must be an %NxQuant.Dense/, fn ->
      Core.gather_qmm(x, qt, rhs_indices: [0, 1])
    end
  end

  test "the NIF checks batch shapes and index binaries itself" do
    qt = Core.quantize(Ref.random_dense({4, 16, 64}, {:f, 32}, 7), group_size: 32)
    x = TestFloat.encode(List.duplicate(1.0, 2 * 64), {:f, 32})
    args = fn x_batch, w_batch, rhs -> [x, :f32, x_batch, 1, qt.ref, w_batch, nil, rhs] end
    tail = [true, :f32, 0, :exact]

    assert_raise ArgumentError, ~r/x.*has 512 bytes, expected 768/, fn ->
      apply(NIF, :gather_qmm, args.([3], [4], nil) ++ tail)
    end

    assert_raise ArgumentError, ~r/64 stacked rows do not split into 3 matrices/, fn ->
      apply(NIF, :gather_qmm, args.([2], [3], nil) ++ tail)
    end

    assert_raise ArgumentError, ~r/rhs_indices.*has 8 bytes of indices, expected 16/, fn ->
      apply(NIF, :gather_qmm, args.([2], [4], {<<0::64>>, [2]}) ++ tail)
    end

    assert_raise ArgumentError, ~r/x_batch.*a shape/, fn ->
      apply(NIF, :batched_matmul, [x, :f32, [-1], 1, qt.ref, [4]] ++ tail)
    end

    assert <<_::binary-size(2 * 16 * 4)>> =
             apply(NIF, :gather_qmm, args.([2], [4], {<<3::64-native, 0::64>>, [2]}) ++ tail)
  end

  test "the struct check still holds for batched tensors" do
    qt = Core.quantize(Ref.random_dense({4, 16, 64}, {:f, 32}, 7), group_size: 32)
    x = Ref.random_dense({4, 1, 64}, {:f, 32}, 1)

    assert_raise ArgumentError, ~r/does not match/, fn ->
      Core.quantized_matmul(x, %{qt | shape: {3, 16, 64}})
    end

    assert_raise ArgumentError, ~r/does not match/, fn ->
      Core.gather_qmm(x, %{qt | shape: {4, 16, 32}})
    end
  end

  test "gather_qmm on a rank-1 quantized tensor (one row) and a 2-D one" do
    v = Core.quantize(Ref.random_dense({64}, {:f, 32}, 4), group_size: 32)
    x = Ref.random_dense({2, 64}, {:f, 32}, 5)
    assert Core.gather_qmm(x, v).shape == {2, 1}
    w = Core.quantize(Ref.random_dense({8, 64}, {:f, 32}, 6), group_size: 32)
    assert Core.gather_qmm(x, w) == Core.quantized_matmul(x, w)

    assert_raise ArgumentError, ~r/rhs_indices holds 1, out of range for the 1 matrices/, fn ->
      Core.gather_qmm(x, w, rhs_indices: indices([1], {1}))
    end
  end

  test "Batched.broadcast/2 follows numpy" do
    assert Batched.broadcast({3, 1}, {4}) == {:ok, {3, 4}}
    assert Batched.broadcast({}, {4}) == {:ok, {4}}
    assert Batched.broadcast({0}, {1}) == {:ok, {0}}
    assert {:error, _} = Batched.broadcast({2}, {3})
  end
end
