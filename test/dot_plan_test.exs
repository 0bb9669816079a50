defmodule NxQuant.DotPlanTest do
  # Every way Nx.dot/6 can meet a quantized operand, planned without Nx: first the exact plans,
  # then the plans executed with NxQuant.Core on small data and compared numerically with a plain
  # dense dot of the dequantized weight (which proves the axis bookkeeping).
  use ExUnit.Case, async: true

  alias NxQuant.{Core, Dense, DotPlan, TestFloat}
  alias NxQuant.TestTensor, as: T

  @f32 {:f, 32}

  # An MLX-layout weight: logical {n, k} = stored {rows, cols}, quantized along k.
  defp q(shape, opts \\ []) do
    {:quantized,
     %{
       shape: shape,
       lead: Keyword.get(opts, :lead, 0),
       transposed: Keyword.get(opts, :transposed, false),
       dtype: Keyword.get(opts, :dtype, {:bf, 16}),
       bits: 4,
       group_size: 64
     }}
  end

  defp d(shape, type \\ @f32), do: {:dense, shape, type}

  describe "quantized right operand" do
    test "x {M, K} . W {N, K} contracting K (MLX layout): transpose=true, nothing permuted" do
      assert {:kernel, plan} = DotPlan.plan(@f32, d({3, 128}), [1], [], q({256, 128}), [1], [])

      assert plan == %{
               activation: :left,
               activation_perm: nil,
               activation_type: @f32,
               transpose: true,
               out_perm: nil,
               out_shape: {3, 256},
               kernel_type: @f32,
               out_type: @f32
             }
    end

    test "Nx.dot(x, w) contracts the weight's axis 0: transpose=false" do
      assert {:kernel, %{transpose: false, out_shape: {3, 128}, out_perm: nil}} =
               DotPlan.plan(@f32, d({3, 256}), [1], [], q({256, 128}), [0], [])
    end

    test "a transposed view {K, N} contracted on axis 0 is the stored K: transpose=true" do
      # Nx.transpose of an MLX {out, in} = {256, 128} checkpoint: logical {128, 256}
      view = q({128, 256}, transposed: true)

      assert {:kernel, %{transpose: true, out_shape: {3, 256}}} =
               DotPlan.plan(@f32, d({3, 128}), [1], [], view, [0], [])

      assert {:kernel, %{transpose: false, out_shape: {3, 128}}} =
               DotPlan.plan(@f32, d({3, 256}), [1], [], view, [1], [])
    end

    test "any activation rank, contracted axis anywhere: moved last" do
      assert {:kernel, plan} = DotPlan.plan(@f32, d({2, 128, 5}), [1], [], q({64, 128}), [1], [])
      assert plan.activation_perm == [0, 2, 1]
      assert plan.out_shape == {2, 5, 64}
      assert plan.out_perm == nil

      assert {:kernel, %{activation_perm: nil, out_shape: {2, 3, 4, 64}}} =
               DotPlan.plan(@f32, d({2, 3, 4, 128}), [3], [], q({64, 128}), [1], [])

      assert {:kernel, %{activation_perm: nil, out_shape: {64}}} =
               DotPlan.plan(@f32, d({128}), [0], [], q({64, 128}), [1], [])
    end

    test "f16/bf16 activations go to the kernel as they are; f64 as f32 and cast back" do
      assert {:kernel, %{activation_type: {:bf, 16}, kernel_type: {:bf, 16}}} =
               DotPlan.plan({:bf, 16}, d({1, 128}, {:bf, 16}), [1], [], q({64, 128}), [1], [])

      assert {:kernel, %{activation_type: @f32, kernel_type: @f32, out_type: {:f, 64}}} =
               DotPlan.plan({:f, 64}, d({1, 128}, {:f, 64}), [1], [], q({64, 128}), [1], [])

      # An f32 activation with an f64 result (Nx's merge of f32 and f64 elsewhere) likewise.
      assert {:kernel, %{activation_type: @f32, kernel_type: @f32, out_type: {:f, 64}}} =
               DotPlan.plan({:f, 64}, d({1, 128}), [1], [], q({64, 128}), [1], [])
    end

    test "an integer result type (integer activation) is an error, not a truncated product" do
      for side <- [:left, :right], type <- [{:s, 32}, {:u, 8}] do
        {l, cl, r, cr} =
          if side == :right,
            do: {d({1, 128}, type), [1], q({64, 128}), [1]},
            else: {q({64, 128}), [1], d({128, 1}, type), [0]}

        assert {:error, message} = DotPlan.plan(type, l, cl, [], r, cr, [])
        assert message =~ "cast the dense operand to a float type"
        assert message =~ inspect(type)
      end

      # Integer dense dots are not ours to judge.
      assert :dense =
               DotPlan.plan({:s, 32}, d({1, 2}, {:s, 32}), [1], [], d({2, 2}, {:s, 32}), [0], [])
    end
  end

  describe "quantized left operand" do
    test "W {N, K} . x {K, M}: x's K moved last, result's N axis moved first" do
      assert {:kernel, plan} = DotPlan.plan(@f32, q({64, 128}), [1], [], d({128, 3}), [0], [])
      assert plan.activation == :right
      assert plan.activation_perm == [1, 0]
      assert plan.transpose == true
      assert plan.out_perm == [1, 0]
      assert plan.out_shape == {64, 3}
    end

    test "rank-3 activation and a rank-1 activation" do
      assert {:kernel, %{activation_perm: nil, out_perm: [2, 0, 1], out_shape: {64, 2, 3}}} =
               DotPlan.plan(@f32, q({64, 128}), [1], [], d({2, 3, 128}), [2], [])

      assert {:kernel, %{out_perm: nil, out_shape: {64}}} =
               DotPlan.plan(@f32, q({64, 128}), [1], [], d({128}), [0], [])

      assert {:kernel, %{transpose: false, out_shape: {128, 5}}} =
               DotPlan.plan(@f32, q({64, 128}), [0], [], d({64, 5}), [0], [])
    end
  end

  describe "broadcast views (Nx.vectorize'd activations)" do
    # Nx.dot(Nx.vectorize(x, :b), [0], w, [1]) reaches the backend as x {B, K} (batch axis 0)
    # against w broadcast to {B, N, K} (batch axis 0).
    test "the view's broadcast axes as batch axes: more rows for the kernel" do
      view = q({5, 64, 128}, lead: 1)

      assert {:kernel, plan} = DotPlan.plan(@f32, d({5, 128}), [1], [0], view, [2], [0])
      assert %{activation: :left, activation_perm: nil, transpose: true} = plan
      assert %{out_perm: nil, out_shape: {5, 64}} = plan

      # Contracting N (transpose: false), a vectorized {3, 64} activation, batch axis last.
      assert {:kernel, plan} = DotPlan.plan(@f32, d({3, 64, 5}), [1], [2], view, [1], [0])
      assert %{transpose: false, activation_perm: [2, 0, 1], out_shape: {5, 3, 128}} = plan
    end

    test "two broadcast axes paired in any order; the quantized operand on the left" do
      view = q({2, 3, 64, 128}, lead: 2)

      assert {:kernel, %{activation_perm: [1, 0, 2], out_shape: {2, 3, 64}}} =
               DotPlan.plan(@f32, d({3, 2, 128}), [2], [1, 0], view, [3], [0, 1])

      assert {:kernel, plan} =
               DotPlan.plan(@f32, view, [3], [0, 1], d({2, 3, 4, 128}), [3], [0, 1])

      assert %{activation: :right, activation_perm: nil} = plan
      # Kernel output {2, 3, 4, 64}; Nx wants batch, then the weight's N, then x's free axis.
      assert %{out_perm: [0, 1, 3, 2], out_shape: {2, 3, 64, 4}} = plan
    end
  end

  describe "cases with no fused kernel" do
    test "both quantized: the left one is dequantized" do
      assert {:dequantize, [:left], msg} =
               DotPlan.plan(@f32, q({64, 128}), [1], [], q({32, 128}), [1], [])

      assert msg =~ "both operands are quantized"
    end

    test "batch axes, several or no contracted axes, a quantized operand of rank != 2" do
      assert {:dequantize, [:right], msg} =
               DotPlan.plan(@f32, d({64, 3, 128}), [2], [0], q({64, 128}), [1], [0])

      assert msg =~ "batch axes"

      assert {:dequantize, [:right], msg} =
               DotPlan.plan(@f32, d({64, 128}), [0, 1], [], q({64, 128}), [0, 1], [])

      assert msg =~ "exactly one axis"

      assert {:dequantize, [:left], _} = DotPlan.plan(@f32, q({64, 128}), [], [], d({3}), [], [])

      assert {:dequantize, [:right], msg} =
               DotPlan.plan(@f32, d({3, 128}), [1], [], q({2, 4, 128}), [2], [])

      assert msg =~ "2-D"
    end

    test "batch axes over a broadcast view that are not all its broadcast axes" do
      # A view {2, 3, 64, 128} (two broadcast axes) with only one of them a batch axis.
      view = q({2, 3, 64, 128}, lead: 2)

      assert {:dequantize, [:right], msg} =
               DotPlan.plan(@f32, d({2, 128}), [1], [0], view, [3], [0])

      assert msg =~ "broadcast axes [0, 1]"

      # A batch axis of the matrix itself.
      assert {:dequantize, [:right], _} =
               DotPlan.plan(@f32, d({64, 128}), [1], [0], q({1, 64, 128}, lead: 1), [2], [1])

      # A broadcast view over a rank-3 quantized tensor has no 2-D matrix.
      assert {:dequantize, [:right], msg} =
               DotPlan.plan(@f32, d({2, 128}), [1], [0], q({2, 4, 64, 128}, lead: 1), [3], [0])

      assert msg =~ "2-D" and msg =~ "1 broadcast axes"
    end

    test "neither operand quantized: :dense" do
      assert :dense = DotPlan.plan(@f32, d({2, 3}), [1], [], d({3, 4}), [0], [])
    end

    test "invalid axes and mismatched sizes are errors" do
      assert {:error, msg} = DotPlan.plan(@f32, d({2, 3}), [2], [], q({64, 128}), [1], [])
      assert msg =~ "not valid axes"

      assert {:error, msg} = DotPlan.plan(@f32, d({2, 100}), [1], [], q({64, 128}), [1], [])
      assert msg =~ "differ in size"

      assert {:error, msg} = DotPlan.plan(@f32, d({2, 128}), [1], [1], q({64, 128}), [1], [])
      assert msg =~ "repeat"

      assert {:error, msg} =
               DotPlan.plan(@f32, d({3, 128}), [1], [0], q({2, 64, 128}, lead: 1), [2], [0])

      assert msg =~ "batch axes differ in size"
    end
  end

  describe "plans executed through NxQuant.Core agree with a dense dot" do
    # A weight stored {16, 64} (quantized along 64) and every way Nx.dot can contract it.
    setup do
      :rand.seed(:exsss, {1, 2, 3})
      w_values = for _ <- 1..(16 * 64), do: :rand.normal()

      qt =
        Core.quantize(Dense.new(TestFloat.encode(w_values, @f32), {16, 64}, @f32), group_size: 64)

      w = TestFloat.decode(Core.dequantize(qt).data, @f32)
      %{qt: qt, w: w}
    end

    defp run_plan(plan, x_values, x_shape, qt) do
      {x_values, x_shape} =
        if plan.activation_perm,
          do: T.permute(x_values, x_shape, plan.activation_perm),
          else: {x_values, x_shape}

      x = Dense.new(TestFloat.encode(x_values, @f32), x_shape, @f32)
      out = Core.quantized_matmul(x, qt, transpose: plan.transpose, out_type: plan.kernel_type)
      values = TestFloat.decode(out.data, @f32)
      if plan.out_perm, do: T.permute(values, out.shape, plan.out_perm), else: {values, out.shape}
    end

    defp assert_close({got, got_shape}, {want, want_shape}) do
      assert got_shape == want_shape
      for {g, e} <- Enum.zip(got, want), do: assert(abs(g - e) <= 1.0e-4 * (1 + abs(e)))
    end

    defp random(n), do: for(_ <- 1..n, do: :rand.uniform() - 0.5)

    test "every operand side, contracted axis, view and activation rank", %{qt: qt, w: w} do
      view = %{qt | shape: {64, 16}, transposed: true}
      {wt, _} = T.permute(w, {16, 64}, [1, 0])

      cases = [
        # {left, contract_left, right, contract_right}; :w is the quantized operand
        {{:x, {3, 64}}, 1, {:w, qt}, 1},
        {{:x, {2, 16}}, 1, {:w, qt}, 0},
        {{:x, {64, 2, 3}}, 0, {:w, qt}, 1},
        {{:x, {2, 16, 3}}, 1, {:w, qt}, 0},
        {{:x, {64}}, 0, {:w, qt}, 1},
        {{:x, {3, 64}}, 1, {:w, view}, 0},
        {{:x, {3, 16}}, 1, {:w, view}, 1},
        {{:w, qt}, 1, {:x, {64, 3}}, 0},
        {{:w, qt}, 0, {:x, {2, 16, 3}}, 1},
        {{:w, view}, 0, {:x, {3, 64}}, 1},
        {{:w, view}, 1, {:x, {16}}, 0}
      ]

      for {left, cl, right, cr} <- cases do
        [{x_side, x_shape}] = for {:x, s} = side <- [left, right], do: {side, s}
        x_values = random(Tuple.product(x_shape))

        {qw, w_values, w_shape} =
          case Enum.find([left, right], &match?({:w, _}, &1)) do
            {:w, %{transposed: true} = t} -> {t, wt, {64, 16}}
            {:w, t} -> {t, w, {16, 64}}
          end

        desc = DotPlan.describe(qw)

        {l, r} =
          if x_side == left,
            do: {{:dense, x_shape, @f32}, desc},
            else: {desc, {:dense, x_shape, @f32}}

        assert {:kernel, plan} = DotPlan.plan(@f32, l, [cl], [], r, [cr], [])

        expected =
          if x_side == left,
            do: T.dot(x_values, x_shape, cl, w_values, w_shape, cr),
            else: T.dot(w_values, w_shape, cl, x_values, x_shape, cr)

        result = run_plan(plan, x_values, x_shape, qw)
        assert elem(result, 1) == plan.out_shape
        assert_close(result, expected)
      end
    end

    test "broadcast views against batched activations, either side", %{qt: qt, w: w} do
      view = %{qt | shape: {64, 16}, transposed: true}
      {wt, _} = T.permute(w, {16, 64}, [1, 0])

      cases = [
        # {x shape, x contract, x batch, lead, q contract (matrix axis), q batch, q side}
        {{5, 64}, 1, [0], [5], 1, [0], :right, qt},
        {{3, 16, 5}, 1, [2], [5], 0, [0], :right, qt},
        {{2, 3, 4, 64}, 3, [1, 0], [2, 3], 1, [1, 0], :right, qt},
        {{5, 64, 2}, 1, [0], [5], 1, [0], :left, qt},
        {{2, 5, 64}, 2, [1], [5], 0, [0], :right, view},
        {{4, 16, 2}, 1, [2], [2], 1, [0], :left, view}
      ]

      for {x_shape, xc, xb, lead, qc, qb, q_side, qw} <- cases do
        x_values = random(Tuple.product(x_shape))
        {w_values, w_shape} = if qw.transposed, do: {wt, {64, 16}}, else: {w, {16, 64}}
        # The view's dense values: the matrix repeated over the broadcast axes.
        v_shape = List.to_tuple(lead ++ Tuple.to_list(w_shape))
        v_values = List.flatten(List.duplicate(w_values, Enum.product(lead)))
        n = length(lead)
        desc = DotPlan.describe(qw, v_shape)
        x = {:dense, x_shape, @f32}

        {plan, expected} =
          if q_side == :right do
            {DotPlan.plan(@f32, x, [xc], xb, desc, [qc + n], qb),
             batched_dot(x_values, x_shape, xc, xb, v_values, v_shape, qc + n, qb)}
          else
            {DotPlan.plan(@f32, desc, [qc + n], qb, x, [xc], xb),
             batched_dot(v_values, v_shape, qc + n, qb, x_values, x_shape, xc, xb)}
          end

        assert {:kernel, plan} = plan
        result = run_plan(plan, x_values, x_shape, qw)
        assert elem(result, 1) == plan.out_shape
        assert_close(result, expected)
      end
    end

    # Nx.dot/6 by its definition: out[batch..., left free..., right free...] sums over the
    # contracted axis, batch axes paired in order.
    defp batched_dot(left, l_shape, cl, bl, right, r_shape, cr, br) do
      la = :array.from_list(left)
      ra = :array.from_list(right)
      free = fn shape, c, b -> for a <- 0..(tuple_size(shape) - 1), a != c, a not in b, do: a end
      lf = free.(l_shape, cl, bl)
      rf = free.(r_shape, cr, br)
      dims = fn shape, axes -> Enum.map(axes, &elem(shape, &1)) end
      out_shape = List.to_tuple(dims.(l_shape, bl) ++ dims.(l_shape, lf) ++ dims.(r_shape, rf))

      values =
        for idx <- T.indices(out_shape) do
          {b, rest} = Enum.split(idx, length(bl))
          {li, ri} = Enum.split(rest, length(lf))

          Enum.reduce(0..(elem(l_shape, cl) - 1), 0.0, fn j, acc ->
            l_at = Map.new(Enum.zip(bl ++ lf ++ [cl], b ++ li ++ [j]))
            r_at = Map.new(Enum.zip(br ++ rf ++ [cr], b ++ ri ++ [j]))
            l_index = for a <- 0..(tuple_size(l_shape) - 1), do: l_at[a]
            r_index = for a <- 0..(tuple_size(r_shape) - 1), do: r_at[a]
            acc + T.at(la, l_shape, l_index) * T.at(ra, r_shape, r_index)
          end)
        end

      {values, out_shape}
    end
  end
end
