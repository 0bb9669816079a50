if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.ShimDefnVectorizeTest do
    # Quantized weights in Nx.Defn.jit (as arguments: fused; captured in the closure: Nx's own
    # error, since Nx raises before any backend is called), and against Nx.vectorize'd
    # activations (the weight becomes a broadcast view; the fused kernel takes the vectorized
    # axes as rows, so the result has the unvectorized call's bits).
    use ExUnit.Case, async: true
    @moduletag :nx
    # Fallback dots log at debug level.
    @moduletag capture_log: true

    import NxQuant.NxHelpers

    setup do
      {_w, qw} = weight({16, 64})
      %{qw: qw}
    end

    defp bits(t), do: {t.shape, t.type, Nx.to_binary(t)}

    describe "Nx.Defn.jit" do
      test "the weight as an argument: the fused kernel, eager mode's bits", %{qw: qw} do
        x = activation({3, 64})
        eager = Nx.dot(x, [1], qw, [1])
        assert bits(Nx.Defn.jit(fn x, w -> Nx.dot(x, [1], w, [1]) end).(x, qw)) == bits(eager)

        # Inside a container (an Axon-style params map) as well.
        f = Nx.Defn.jit(fn x, %{"dense" => %{"kernel" => w}} -> Nx.dot(x, Nx.transpose(w)) end)
        assert bits(f.(x, %{"dense" => %{"kernel" => qw}})) == bits(eager)
      end

      test "captured in the closure: Nx's error says to pass it as an argument", %{qw: qw} do
        x = activation({3, 64})

        error =
          assert_raise Nx.Defn.IncompatibleBackendsError, fn ->
            Nx.Defn.jit(fn x -> Nx.dot(x, [1], qw, [1]) end).(x)
          end

        assert error.message =~ "NxQuant.Backend"
        assert error.message =~ "closure"
        assert error.message =~ "pass tensors as required arguments"

        # Nx's other suggestion, Nx.backend_copy/1, inlines the dequantized (dense) weight.
        dense = Nx.backend_copy(qw)
        refute NxQuant.quantized?(dense)
        got = Nx.Defn.jit(fn x -> Nx.dot(x, [1], dense, [1]) end).(x)
        assert_close(got, Nx.dot(x, [1], qw, [1]))
      end
    end

    describe "Nx.vectorize'd activations" do
      test "Nx.dot(vectorized x, qw): fused, the unvectorized call's bits", %{qw: qw} do
        x = activation({4, 64})
        xv = Nx.vectorize(x, :batch)
        expected = Nx.dot(x, [1], qw, [1])

        got = Nx.dot(xv, [0], qw, [1])
        assert got.vectorized_axes == [batch: 4]
        assert got.shape == {16}
        assert bits(Nx.devectorize(got, keep_names: false)) == bits(expected)

        # Nx.dot/2 with the transposed view, and the quantized operand on the left.
        assert bits(Nx.devectorize(Nx.dot(xv, Nx.transpose(qw)), keep_names: false)) ==
                 bits(expected)

        assert bits(Nx.devectorize(Nx.dot(qw, [1], xv, [0]), keep_names: false)) ==
                 bits(expected)
      end

      test "two vectorized axes, an unvectorized axis, bf16", %{qw: qw} do
        x = activation({2, 3, 5, 64}, :bf16)
        expected = Nx.dot(x, [3], qw, [1])
        xv = Nx.vectorize(x, a: 2, b: 3)
        got = Nx.dot(xv, [1], qw, [1])
        assert got.vectorized_axes == [a: 2, b: 3] and got.shape == {5, 16}
        assert bits(Nx.devectorize(got, keep_names: false)) == bits(expected)

        # Quantized on the left: the weight's N axis first, then x's free axis.
        got = Nx.dot(qw, [1], xv, [1])
        assert got.shape == {16, 5}

        assert bits(Nx.devectorize(got, keep_names: false)) ==
                 bits(Nx.transpose(expected, axes: [0, 1, 3, 2]))
      end

      test "inside Nx.Defn.jit", %{qw: qw} do
        x = activation({4, 64})
        f = Nx.Defn.jit(fn x, w -> Nx.dot(x, [0], w, [1]) end)
        got = f.(Nx.vectorize(x, :batch), qw)
        assert bits(Nx.devectorize(got, keep_names: false)) == bits(Nx.dot(x, [1], qw, [1]))
      end
    end

    describe "broadcast views" do
      test "new leading axes are views; dequantize and transfers give the broadcast tensor",
           %{qw: qw} do
        dense = NxQuant.dequantize(qw)

        for view <- [
              Nx.new_axis(qw, 0),
              Nx.broadcast(qw, {3, 16, 64}),
              Nx.reshape(qw, {1, 1, 16, 64})
            ] do
          assert NxQuant.quantized?(view)
          assert view.type == {:s, 4}
          assert inspect(view) =~ "broadcast to #{inspect(view.shape)}"
          want = Nx.broadcast(dense, view.shape)
          assert bits(NxQuant.dequantize(view)) == bits(want)
          assert bits(Nx.backend_transfer(view, Nx.BinaryBackend)) == bits(want)
          assert bits(Nx.as_type(view, :f32)) == bits(want)
        end

        assert NxQuant.quantized?(Nx.squeeze(Nx.new_axis(qw, 0), axes: [0]))
      end

      test "a view whose broadcast axis is not a batch axis: the dequantized dot", %{qw: qw} do
        x = activation({2, 64})
        got = Nx.dot(x, [1], Nx.new_axis(qw, 0), [2])
        assert got.shape == {2, 1, 16}
        assert_close(got, Nx.dot(x, [1], Nx.new_axis(kernel_weight(qw), 0), [2]))
      end

      test "other reshapes, and transpose/take of a view, raise", %{qw: qw} do
        view = Nx.new_axis(qw, 0)

        for fun <- [
              fn -> Nx.reshape(qw, {64, 16}) end,
              fn -> Nx.reshape(qw, {1024}) end,
              fn -> Nx.new_axis(qw, 2) end,
              fn -> Nx.broadcast(qw, {16, 64, 2}, axes: [0, 1]) end
            ] do
          error = assert_raise ArgumentError, fun
          assert error.message =~ "is not supported on a quantized tensor"
          assert error.message =~ "NxQuant.dequantize/1"
        end

        assert_raise ArgumentError, ~r/transpose of a broadcast view/, fn ->
          Nx.transpose(view, axes: [0, 2, 1])
        end

        assert_raise ArgumentError, ~r/gather.*broadcast to \{1, 16, 64\}/, fn ->
          Nx.take(view, Nx.tensor([0]))
        end
      end
    end
  end
end
