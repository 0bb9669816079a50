if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.NxDotTest do
    # Nx.dot with a quantized operand through NxQuant.Backend against the dense reference:
    # Nx.BinaryBackend's own dot on the dequantized weight (dequantize is bit-exact against the
    # scalar reference in the native and core tests). Every axis/rank/side/dtype case.
    use ExUnit.Case, async: true
    @moduletag :nx

    import NxQuant.NxHelpers

    describe "quantized right operand" do
      test "x {M, K} . W {N, K} on K (MLX layout), every bit width" do
        for bits <- [2, 3, 4, 5, 6, 8] do
          {w, qw} = weight({48, 128}, bits: bits)
          x = activation({5, 128})
          assert_close(Nx.dot(x, [1], qw, [1]), Nx.dot(x, [1], kernel_weight(qw), [1]))
          # The dequantized weight approximates the original within the grid's steps.
          # MLX keeps the group edge exact, which can stretch the error past half a step.
          step = 4.0 / (Integer.pow(2, bits) - 1)
          assert Nx.all_close(NxQuant.dequantize(qw), w, atol: step) |> Nx.to_number() == 1
        end
      end

      test "Nx.dot(x, Nx.transpose(qw)): the transposed view contracts on axis 0, fused" do
        {_w, qw} = weight({64, 128})
        x = activation({3, 128})
        qwt = Nx.transpose(qw)
        assert qwt.shape == {128, 64}
        assert NxQuant.quantized?(qwt)
        assert_close(Nx.dot(x, qwt), Nx.dot(x, kernel_weight(qwt)))
        assert_close(Nx.dot(x, qwt), Nx.dot(x, [1], qw, [1]))
      end

      test "a {K, N} weight quantized along N, contracted on axis 0 (transpose: false)" do
        {_w, qw} = weight({96, 128})
        x = activation({4, 96})
        assert_close(Nx.dot(x, qw), Nx.dot(x, kernel_weight(qw)))
      end

      test "rank-1 and rank-4 activations, contracted axis not last" do
        {_w, qw} = weight({32, 64})
        dq = kernel_weight(qw)

        x1 = activation({64})
        assert_close(Nx.dot(x1, [0], qw, [1]), Nx.dot(x1, [0], dq, [1]))

        x4 = activation({2, 64, 3, 2})
        assert_close(Nx.dot(x4, [1], qw, [1]), Nx.dot(x4, [1], dq, [1]))
        assert Nx.dot(x4, [1], qw, [1]).shape == {2, 3, 2, 32}
      end

      test "activation and scales in f32, f16 and bf16" do
        for w_type <- [:f32, :f16, :bf16], x_type <- [:f32, :f16, :bf16] do
          {_w, qw} = weight({32, 64}, type: w_type)
          x = activation({3, 64}, x_type)
          got = Nx.dot(x, [1], qw, [1])
          assert got.type == Nx.Type.normalize!(x_type)
          ref = Nx.dot(Nx.as_type(x, :f32), [1], kernel_weight(qw), [1])
          assert_close(got, ref, tolerance(x_type))
        end
      end

      test "an f64 activation runs in f32 and comes back f64" do
        {_w, qw} = weight({32, 64})
        x = activation({2, 64}, :f64)
        got = Nx.dot(x, [1], qw, [1])
        assert got.type == {:f, 64}
        assert_close(got, Nx.dot(x, [1], kernel_weight(qw), [1]))
      end

      test "names follow Nx's rules" do
        {_w, qw} = weight({32, 64})
        x = Nx.rename(activation({2, 64}), [:batch, :features])
        assert Nx.dot(x, [1], qw, [1]).names == [:batch, nil]
      end
    end

    describe "quantized left operand" do
      test "W {N, K} . x {K, M}: the result's N axis comes first" do
        {_w, qw} = weight({48, 64})
        x = activation({64, 5})
        got = Nx.dot(qw, x)
        assert got.shape == {48, 5}
        assert_close(got, Nx.dot(kernel_weight(qw), x))
      end

      test "rank-3 activation on the right, contracted on its middle axis" do
        {_w, qw} = weight({48, 64})
        x = activation({2, 64, 3})
        got = Nx.dot(qw, [1], x, [1])
        assert got.shape == {48, 2, 3}
        assert_close(got, Nx.dot(kernel_weight(qw), [1], x, [1]))
      end

      test "contracting the weight's N axis (axis 0)" do
        {_w, qw} = weight({48, 64})
        x = activation({48, 2})
        assert_close(Nx.dot(qw, [0], x, [0]), Nx.dot(kernel_weight(qw), [0], x, [0]))
      end
    end

    describe "cases without a fused kernel dequantize explicitly" do
      test "both operands quantized" do
        {_a, qa} = weight({16, 64})
        {_b, qb} = weight({32, 64})
        got = Nx.dot(qa, [1], qb, [1])
        assert_close(got, Nx.dot(kernel_weight(qa), [1], kernel_weight(qb), [1]))
      end

      test "a batched dot over a rank-3 quantized weight" do
        {_w, qw} = weight({2, 16, 64})
        x = activation({2, 3, 64})
        got = Nx.dot(x, [2], [0], qw, [2], [0])
        assert got.shape == {2, 3, 16}
        assert_close(got, Nx.dot(x, [2], [0], kernel_weight(qw), [2], [0]))
      end
    end

    describe "errors" do
      test "an integer activation (integer result type) is refused, not truncated" do
        {_w, qw} = weight({16, 64})
        x = Nx.iota({2, 64}, type: :s32)

        assert_raise ArgumentError, ~r/cast the dense operand to a float type/, fn ->
          Nx.dot(x, [1], qw, [1])
        end
      end

      test "mismatched contraction sizes are Nx's own error" do
        {_w, qw} = weight({16, 64})
        assert_raise ArgumentError, fn -> Nx.dot(activation({2, 32}), [1], qw, [1]) end
      end
    end

    describe "in defn, with the default evaluator" do
      test "Nx.dot on a quantized argument takes the fused path" do
        {_w, qw} = weight({32, 64})
        x = activation({3, 64})
        f = Nx.Defn.jit(fn x, w -> Nx.dot(x, [1], w, [1]) end)
        assert_close(f.(x, qw), Nx.dot(x, [1], kernel_weight(qw), [1]))
      end

      test "LoRA-style: Nx.add(Nx.dot(x, qw), lora)" do
        {_w, qw} = weight({32, 64})
        x = activation({3, 64})
        a = activation({64, 4})
        b = activation({4, 32})

        lora = fn x, qw, a, b -> Nx.add(Nx.dot(x, Nx.transpose(qw)), Nx.dot(Nx.dot(x, a), b)) end
        ref = Nx.add(Nx.dot(x, [1], kernel_weight(qw), [1]), Nx.dot(Nx.dot(x, a), b))

        assert_close(lora.(x, qw, a, b), ref)
        assert_close(Nx.Defn.jit(lora).(x, qw, a, b), ref)
      end
    end
  end
end
