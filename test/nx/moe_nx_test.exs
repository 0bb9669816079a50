if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.MoeNxTest do
    # Batched quantized weights in Nx: Nx.dot with batch axes on a {E, N, K} weight runs the
    # batched kernel, and Nx.take of experts is a free view that Nx.dot runs as gather_qmm. The
    # reference is Nx.BinaryBackend's dot on the weight the kernel multiplies by
    # (kernel_weight/1: scale * q + bias in f32), with Nx.take on the dense tensor.
    use ExUnit.Case, async: true
    @moduletag :nx

    import ExUnit.CaptureLog
    require Logger
    import NxQuant.NxHelpers

    # Runs f, failing if Nx.dot fell back to dequantizing (logged at debug level).
    defp fused!(f) do
      {result, log} = with_log([level: :debug], f)
      refute log =~ "dequantizes", log
      result
    end

    # debug messages of this test process only (the fallback's log line)
    setup do
      Logger.put_process_level(self(), :debug)
      :ok
    end

    describe "Nx.dot with batch axes on a 3-D quantized weight" do
      test "x {E, M, K} . W {E, N, K} on K, the weight on either side" do
        {_w, qw} = weight({4, 32, 64})
        x = activation({4, 3, 64})
        dense = kernel_weight(qw)
        got = fused!(fn -> Nx.dot(x, [2], [0], qw, [2], [0]) end)
        assert got.shape == {4, 3, 32}
        assert_close(got, Nx.dot(x, [2], [0], dense, [2], [0]))

        got = fused!(fn -> Nx.dot(qw, [2], [0], x, [2], [0]) end)
        assert got.shape == {4, 32, 3}
        assert_close(got, Nx.dot(dense, [2], [0], x, [2], [0]))
      end

      test "a {E, K, N} weight contracted on axis 1 (transpose: false), x with two free axes" do
        {_w, qw} = weight({3, 64, 64}, type: :bf16)
        x = activation({3, 2, 5, 64})
        dense = kernel_weight(qw)
        got = fused!(fn -> Nx.dot(x, [3], [0], qw, [1], [0]) end)
        assert got.shape == {3, 2, 5, 64}
        assert_close(got, Nx.dot(x, [3], [0], dense, [1], [0]))
      end
    end

    describe "Nx.take of experts: a free view that Nx.dot runs as gather_qmm" do
      test "the mlx-lm shape: h {T, K} against take(experts, idx {T, k}) gives {T, k, N}" do
        {_w, experts} = weight({8, 32, 64}, bits: 4, group_size: 64)
        idx = Nx.tensor([[1, 5], [5, 0], [7, 7]])
        selected = Nx.take(experts, idx, axis: 0)
        assert selected.shape == {3, 2, 32, 64}
        assert NxQuant.quantized?(selected)
        # the view keeps the experts' resource: nothing was copied
        assert NxQuant.Backend.quantized(selected) == NxQuant.Backend.quantized(experts)

        h = activation({3, 64})
        dense = Nx.take(kernel_weight(experts), idx, axis: 0)
        got = fused!(fn -> Nx.dot(h, [1], [0], selected, [3], [0]) end)
        assert got.shape == {3, 2, 32}
        assert_close(got, Nx.dot(h, [1], [0], dense, [3], [0]))

        # the same inside Nx.Defn.jit (the experts passed as an argument)
        jitted =
          Nx.Defn.jit(fn h, e, i -> Nx.dot(h, [1], [0], Nx.take(e, i, axis: 0), [3], [0]) end)

        assert_close(fused!(fn -> jitted.(h, experts, idx) end), got)

        # per-slot activations {T, k, K}, both index axes batched
        hk = activation({3, 2, 64})
        got = fused!(fn -> Nx.dot(hk, [2], [0, 1], selected, [3], [0, 1]) end)
        assert_close(got, Nx.dot(hk, [2], [0, 1], dense, [3], [0, 1]))

        # no batch axes: every row of x against every selected expert; the view on the left
        x = activation({5, 64})
        got = fused!(fn -> Nx.dot(x, [1], [], selected, [3], []) end)
        assert got.shape == {5, 3, 2, 32}
        assert_close(got, Nx.dot(x, [1], [], dense, [3], []))
        got = fused!(fn -> Nx.dot(selected, [3], [0], hk, [2], [0]) end)
        assert got.shape == {3, 2, 32, 2}
        assert_close(got, Nx.dot(dense, [3], [0], hk, [2], [0]))
      end

      test "a take view of {E, K, N} experts contracted on K (transpose: false)" do
        {_w, experts} = weight({4, 64, 32}, type: :f16)
        idx = Nx.tensor([3, 3, 1])
        selected = Nx.take(experts, idx, axis: 0)
        h = activation({3, 64})
        dense = Nx.take(kernel_weight(experts), idx, axis: 0)
        got = fused!(fn -> Nx.dot(h, [1], [0], selected, [1], [0]) end)
        assert got.shape == {3, 32}
        assert_close(got, Nx.dot(h, [1], [0], dense, [1], [0]))
      end

      test "dequantize and other callbacks see the selected experts; bad indices raise" do
        {_w, experts} = weight({4, 16, 32})
        idx = Nx.tensor([[2], [0]])
        selected = Nx.take(experts, idx, axis: 0)
        expected = Nx.take(NxQuant.dequantize(experts), idx, axis: 0)
        assert NxQuant.dequantize(selected) == expected
        assert Nx.as_type(selected, :f32) == Nx.as_type(expected, :f32)

        assert Nx.backend_transfer(selected, Nx.BinaryBackend) ==
                 Nx.backend_transfer(expected, Nx.BinaryBackend)

        assert_raise ArgumentError, ~r/out of range for 4 experts/, fn ->
          Nx.take(experts, Nx.tensor([4]), axis: 0)
        end

        assert_raise ArgumentError, ~r/not supported/, fn -> Nx.reshape(selected, {2, 16, 32}) end

        # two contracted axes have no kernel: the fallback takes the selected experts (and says so)
        y = activation({2, 1, 16, 32})
        {got, log} = with_log([level: :debug], fn -> Nx.dot(selected, [2, 3], y, [2, 3]) end)
        assert log =~ "dequantizes"

        assert_close(
          got,
          Nx.dot(Nx.take(kernel_weight(experts), idx, axis: 0), [2, 3], y, [2, 3])
        )
      end

      test "a MoE block in plain Nx: gate/up/down experts through take views" do
        {_, gate} = weight({6, 32, 64}, group_size: 64)
        {_, up} = weight({6, 32, 64}, group_size: 64, bits: 3)
        {_, down} = weight({6, 64, 32}, group_size: 32)
        h = activation({2, 64})
        idx = Nx.tensor([[4, 1], [1, 1]])

        moe = fn g, u, d ->
          xg = Nx.dot(h, [1], [0], Nx.take(g, idx, axis: 0), [3], [0])
          xu = Nx.dot(h, [1], [0], Nx.take(u, idx, axis: 0), [3], [0])
          act = Nx.multiply(Nx.multiply(xg, Nx.sigmoid(xg)), xu)
          Nx.dot(act, [2], [0, 1], Nx.take(d, idx, axis: 0), [3], [0, 1])
        end

        got = fused!(fn -> moe.(gate, up, down) end)
        assert got.shape == {2, 2, 64}
        assert_close(got, moe.(kernel_weight(gate), kernel_weight(up), kernel_weight(down)))
      end
    end
  end
end
