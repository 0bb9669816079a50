if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.ShimWeightTest do
    # One weight value on every path of Nx.dot/6 with a quantized operand: scale * q + bias in
    # f32. The fused kernel and each dequantize-then-dense fallback (batch axes, two or zero
    # contracted axes, both operands quantized) are checked against a dense f64 dot over the
    # exact scale * q + bias built here from the packed words, within the f32 error bound
    # (K + 4) * 2^-24 * sum_k |x_k| (|q_k scale| + |bias|). With bf16 or f16 scales, the
    # dtype-rounded dequantize/1 weights are ~2^-9 off and fail it.
    use ExUnit.Case, async: true
    @moduletag :nx
    # Fallback dots log at debug level.
    @moduletag capture_log: true

    import NxQuant.NxHelpers
    alias NxQuant.TestReference, as: Reference

    @u :math.pow(2, -24)

    # {q * scale, bias} of a 2-D (or rank-3, flattened) quantized tensor as f64 tensors of its
    # shape.
    defp exact_terms(qw) do
      %{packed: packed, scales: scales, biases: biases} = NxQuant.parts(qw)
      %NxQuant.Config{bits: bits, group_size: gs} = NxQuant.config(qw)
      {rows, groups} = scales.shape
      cols = groups * gs
      q = Reference.unpack(Nx.to_binary(packed), rows, cols, bits)
      q = Nx.tensor(q, type: :f64)
      widen = fn t -> t |> Nx.as_type(:f64) |> Nx.new_axis(2) |> Nx.tile([1, 1, gs]) end
      s = scales |> widen.() |> Nx.reshape({rows, cols})
      b = biases |> widen.() |> Nx.reshape({rows, cols})
      {Nx.reshape(Nx.multiply(q, s), qw.shape), Nx.reshape(b, qw.shape)}
    end

    # The exact weight and the matching "absolute" weight |q scale| + |bias|.
    defp exact(qw) do
      {qs, b} = exact_terms(qw)
      {Nx.add(qs, b), Nx.add(Nx.abs(qs), Nx.abs(b))}
    end

    defp assert_within_bound(got, ref, abs_ref, k) do
      assert got.shape == ref.shape
      err = Nx.abs(Nx.subtract(Nx.as_type(got, :f64), ref))
      bound = Nx.multiply(abs_ref, (k + 4) * @u) |> Nx.add(1.0e-30)
      worst = Nx.to_number(Nx.reduce_max(Nx.divide(err, bound)))
      assert worst <= 1.0, "error #{worst} x the f32 bound"
    end

    for type <- [:bf16, :f16, :f32] do
      @type_ type

      test "fused kernel and fallbacks: the f32 scale * q + bias weight (#{type} scales)" do
        {_w, qw} = weight({16, 64}, type: @type_, bits: 4)
        {w, w_abs} = exact(qw)
        x = activation({3, 64})
        x64 = Nx.as_type(x, :f64)
        ax = Nx.abs(x64)

        # Fused: x {3, 64} . W {16, 64} on K.
        ref = Nx.dot(x64, [1], w, [1])
        abs_ref = Nx.dot(ax, [1], w_abs, [1])
        fused = Nx.dot(x, [1], qw, [1])
        assert_within_bound(fused, ref, abs_ref, 64)

        # Two contracted axes (no kernel): sum over every element of x' {16, 64} * W.
        x2 = activation({16, 64})

        assert_within_bound(
          Nx.dot(x2, [0, 1], qw, [0, 1]),
          Nx.dot(Nx.as_type(x2, :f64), [0, 1], w, [0, 1]),
          Nx.dot(Nx.abs(Nx.as_type(x2, :f64)), [0, 1], w_abs, [0, 1]),
          16 * 64
        )

        # Zero contracted axes (an outer product): each product rounded once.
        x1 = activation({3})
        outer = Nx.dot(x1, [], qw, [])
        assert outer.shape == {3, 16, 64}
        x1_64 = Nx.as_type(x1, :f64)

        assert_within_bound(
          outer,
          Nx.dot(x1_64, [], w, []),
          Nx.dot(Nx.abs(x1_64), [], w_abs, []),
          0
        )
      end

      test "batch axes over a rank-3 quantized weight: the same weight (#{type} scales)" do
        {_w, qw3} = weight({2, 16, 64}, type: @type_, bits: 4)
        {w, w_abs} = exact(qw3)
        x = activation({2, 3, 64})
        x64 = Nx.as_type(x, :f64)
        got = Nx.dot(x, [2], [0], qw3, [2], [0])
        assert got.shape == {2, 3, 16} and got.type == {:f, 32}
        ref = Nx.dot(x64, [2], [0], w, [2], [0])
        assert_within_bound(got, ref, Nx.dot(Nx.abs(x64), [2], [0], w_abs, [2], [0]), 64)

        # Each batch against the fused kernel on that batch's rows: the same bound.
        for i <- 0..1 do
          xi = x[i]
          fused_i = NxQuant.quantized_matmul(xi, batch_of(qw3, i), out_type: :f32)
          ref_i = Nx.dot(Nx.as_type(xi, :f64), [1], w[i], [1])
          abs_i = Nx.dot(Nx.abs(Nx.as_type(xi, :f64)), [1], w_abs[i], [1])
          assert_within_bound(fused_i, ref_i, abs_i, 64)
          assert_within_bound(got[i], ref_i, abs_i, 64)
        end
      end

      test "both operands quantized: the left one's f32 weight into the kernel (#{type} scales)" do
        {_a, qa} = weight({8, 64}, type: @type_, bits: 3)
        {_b, qb} = weight({16, 64}, type: @type_, bits: 4)
        {wa, wa_abs} = exact(qa)
        {wb, wb_abs} = exact(qb)
        got = Nx.dot(qa, [1], qb, [1])
        # The result takes the scales' type (Nx types the product of two {:s, bits} as one).
        assert got.type == Nx.Type.normalize!(@type_)
        ref = Nx.dot(wa, [1], wb, [1])
        abs_ref = Nx.dot(wa_abs, [1], wb_abs, [1])

        if @type_ == :f32 do
          assert_within_bound(got, ref, abs_ref, 64)
        else
          # Cast to the scales' type at the end (Nx.BinaryBackend truncates f32 to bf16): within
          # one ulp of that type on top.
          eps = if @type_ == :bf16, do: :math.pow(2, -7), else: :math.pow(2, -10)
          err = Nx.abs(Nx.subtract(Nx.as_type(got, :f64), ref))
          bound = Nx.add(Nx.multiply(abs_ref, 68 * @u), Nx.multiply(Nx.abs(ref), eps))
          assert Nx.to_number(Nx.all(Nx.less_equal(err, Nx.add(bound, 1.0e-30)))) == 1
        end
      end
    end

    # The {16, 64} quantized tensor of batch i of a rank-3 quantized weight (same parts).
    defp batch_of(qw3, i) do
      %{packed: p, scales: s, biases: b} = NxQuant.parts(qw3)
      %NxQuant.Config{bits: bits, group_size: gs} = NxQuant.config(qw3)
      rows = fn t -> Nx.slice_along_axis(t, i * 16, 16, axis: 0) end

      NxQuant.quantized_tensor(rows.(p), rows.(s), rows.(b), {16, 64},
        type: {:s, bits},
        group_size: gs
      )
    end

    test "NxQuant.dequantize/1 and Nx.as_type/2 stay MLX's dequantize in the scales' type" do
      {_w, qw} = weight({16, 64}, type: :bf16)
      mlx = NxQuant.Core.dequantize(NxQuant.Backend.quantized(qw)).data
      assert Nx.to_binary(NxQuant.dequantize(qw)) == mlx
      assert Nx.to_binary(Nx.as_type(qw, :bf16)) == mlx
      # ...which is not the f32 weight the dot multiplies by.
      {qs, b} = exact_terms(qw)
      f32_weight = Nx.to_binary(Nx.as_type(Nx.add(qs, b), :f32))
      refute Nx.to_binary(Nx.as_type(qw, :f32)) == f32_weight

      assert Nx.to_binary(Nx.as_type(NxQuant.dequantize(qw), :f32)) ==
               Nx.to_binary(Nx.as_type(qw, :f32))
    end
  end
end
