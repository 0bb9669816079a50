defmodule NxQuant.BatchedMicroscaledTest do
  # Batched weights ({E, N, K}) in the microscaled modes through Core: the batched matmul with
  # MLX's batch broadcasting and gather_qmm over an expert stack, against dequantize-then-matmul
  # computed in plain Elixir from the stored bytes (NxQuant.TestMicroscaled).
  use ExUnit.Case, async: true

  alias NxQuant.{Core, Dense}
  alias NxQuant.TestMicroscaled, as: Micro
  alias NxQuant.TestReference, as: Ref

  # The experts' dequantized matrices (lists of rows), decoded from the stored parts.
  defp experts(qt) do
    {e, n, k} = qt.shape
    %{packed: p, scales: s} = Core.parts(qt)
    rows = Micro.decode(p.data, s.data, k, qt.config.mode)
    assert length(rows) == e * n
    Enum.chunk_every(rows, n)
  end

  defp index(values, shape) do
    %Dense{
      data: for(i <- values, into: <<>>, do: <<i::32-signed-native>>),
      shape: shape,
      type: {:s, 32}
    }
  end

  # |got - expected| within f32 accumulation over k terms (sum |x w| bounds the error)
  defp assert_close(got, expected, bound, k) do
    for {{a, b}, c} <- Enum.zip(Enum.zip(got, expected), bound) do
      assert abs(a - b) <= 2 * k * :math.pow(2, -24) * c + 1.0e-30, "#{a} vs #{b}"
    end
  end

  for mode <- [:mxfp4, :mxfp8, :nvfp4] do
    test "#{mode}: x {3, 1, 5, K} . w {2, N, K} broadcasts to {3, 2, 5, N}" do
      w = Ref.random_dense({2, 24, 64}, {:f, 32}, 1)
      qt = Core.quantize(w, mode: unquote(mode))
      assert qt.shape == {2, 24, 64} and qt.config.mode == unquote(Atom.to_string(mode))
      x = Ref.random_dense({3, 1, 5, 64}, {:f, 32}, 2)
      out = Core.quantized_matmul(x, qt)
      assert out.shape == {3, 2, 5, 24}

      ws = experts(qt)
      x_mats = x |> Ref.rows() |> Enum.chunk_every(5)
      got = out |> Ref.rows() |> Enum.chunk_every(5)

      for b <- 0..2, e <- 0..1 do
        xs = Enum.at(x_mats, b)
        expected = Ref.dot(xs, Enum.at(ws, e), true)
        bound = Ref.abs_dot(xs, Enum.at(ws, e), true)

        for {g, {ex, bo}} <- Enum.zip(Enum.at(got, b * 2 + e), Enum.zip(expected, bound)),
            do: assert_close(g, ex, bo, 64)
      end
    end

    test "#{mode}: transpose: false on a batched weight" do
      # w {2, K = 32, N = 64}: x {2, 3, 32} . w[b] gives {2, 3, 64}
      qt = Core.quantize(Ref.random_dense({2, 32, 64}, {:f, 32}, 3), mode: unquote(mode))
      x = Ref.random_dense({2, 3, 32}, {:f, 32}, 4)
      out = Core.quantized_matmul(x, qt, transpose: false)
      assert out.shape == {2, 3, 64}
      ws = experts(qt)

      for {{got, xs}, w} <-
            Enum.zip(
              Enum.zip(Enum.chunk_every(Ref.rows(out), 3), Enum.chunk_every(Ref.rows(x), 3)),
              ws
            ) do
        for {g, {ex, bo}} <-
              Enum.zip(got, Enum.zip(Ref.dot(xs, w, false), Ref.abs_dot(xs, w, false))),
            do: assert_close(g, ex, bo, 32)
      end
    end

    test "#{mode}: gather_qmm over an expert stack in mlx-lm's top-k layout" do
      # 6 experts, 4 tokens, top-2: x {4, 1, 1, K}, rhs {4, 2} -> {4, 2, 1, N}
      qt = Core.quantize(Ref.random_dense({6, 16, 64}, {:bf, 16}, 5), mode: unquote(mode))
      x = Ref.random_dense({4, 1, 1, 64}, {:f, 32}, 6)
      rhs = [5, 0, 2, 5, 5, 1, 0, 3]
      out = Core.gather_qmm(x, qt, rhs_indices: index(rhs, {4, 2}))
      assert out.shape == {4, 2, 1, 16}
      ws = experts(qt)
      x_rows = Ref.rows(x)

      for {{got, e}, p} <- Enum.with_index(Enum.zip(Ref.rows(out), rhs)) do
        xs = [Enum.at(x_rows, div(p, 2))]
        [expected] = Ref.dot(xs, Enum.at(ws, e), true)
        [bound] = Ref.abs_dot(xs, Enum.at(ws, e), true)
        assert_close(got, expected, bound, 64)
      end
    end
  end

  test "gather_qmm with lhs and rhs indices on an mxfp4 stack" do
    qt = Core.quantize(Ref.random_dense({3, 8, 32}, {:f, 32}, 7), mode: :mxfp4)
    x = Ref.random_dense({2, 2, 32}, {:f, 32}, 8)
    lhs = [1, 0, 1]
    rhs = [2, 2, 0]
    out = Core.gather_qmm(x, qt, lhs_indices: index(lhs, {3}), rhs_indices: index(rhs, {3}))
    assert out.shape == {3, 2, 8}
    ws = experts(qt)
    x_mats = x |> Ref.rows() |> Enum.chunk_every(2)

    for {got, {l, r}} <- Enum.zip(Enum.chunk_every(Ref.rows(out), 2), Enum.zip(lhs, rhs)) do
      xs = Enum.at(x_mats, l)
      w = Enum.at(ws, r)

      for {g, {ex, bo}} <-
            Enum.zip(got, Enum.zip(Ref.dot(xs, w, true), Ref.abs_dot(xs, w, true))),
          do: assert_close(g, ex, bo, 32)
    end
  end

  test "batch shapes that do not broadcast are an error, not a flattened answer" do
    qt = Core.quantize(Ref.random_dense({2, 8, 32}, {:f, 32}, 9), mode: :nvfp4)
    x = Ref.random_dense({3, 4, 32}, {:f, 32}, 10)

    assert_raise ArgumentError, ~r/\{3\} and \{2\} do not broadcast/, fn ->
      Core.quantized_matmul(x, qt)
    end

    assert_raise ArgumentError, ~r/rhs_indices/, fn ->
      Core.gather_qmm(Ref.random_dense({1, 1, 32}, {:f, 32}, 1), qt, rhs_indices: index([2], {1}))
    end
  end
end
