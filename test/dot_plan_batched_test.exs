defmodule NxQuant.DotPlanBatchedTest do
  # DotPlan's plans for batched quantized weights and take views, without Nx: the exact plans,
  # then a gather plan executed with NxQuant.Core and compared with a per-expert dense reference.
  use ExUnit.Case, async: true

  alias NxQuant.{Core, Dense, DotPlan}
  alias NxQuant.TestReference, as: Ref

  @f32 {:f, 32}

  defp q(shape, extra \\ %{}) do
    {:quantized,
     Map.merge(
       %{shape: shape, lead: 0, transposed: false, dtype: @f32, bits: 4, group_size: 32},
       extra
     )}
  end

  defp d(shape), do: {:dense, shape, @f32}

  test "batch axes over a {E, N, K} weight: the batched kernel, x's free axes as m" do
    assert {:kernel, plan} =
             DotPlan.plan(@f32, d({4, 2, 3, 64}), [3], [0], q({4, 32, 64}), [2], [0])

    assert plan.transpose
    assert plan.batched == %{x_shape: {4, 6, 64}, out_shape: {4, 2, 3, 32}}
    assert plan.out_shape == {4, 2, 3, 32} and plan.out_perm == nil

    # the weight on the left: N moves in front of x's free axes
    assert {:kernel, plan} = DotPlan.plan(@f32, q({4, 64, 32}), [1], [0], d({4, 5, 64}), [2], [0])
    refute plan.transpose
    assert plan.batched == %{x_shape: {4, 5, 64}, out_shape: {4, 5, 32}}
    assert plan.out_perm == [0, 2, 1] and plan.out_shape == {4, 32, 5}
  end

  test "a rank-3 weight without its leading axis as the batch axis still dequantizes" do
    assert {:dequantize, [:right], _} =
             DotPlan.plan(@f32, d({5, 64}), [1], [], q({4, 32, 64}), [2], [])

    assert {:dequantize, [:right], _} =
             DotPlan.plan(@f32, d({32, 64}), [1], [0], q({4, 32, 64}), [2], [1])
  end

  test "take views: gather plans with index axes as batch or free axes" do
    view = q({3, 2, 32, 64}, %{gathered: 2})

    assert {:kernel, plan} = DotPlan.plan(@f32, d({3, 64}), [1], [0], view, [3], [0])

    assert plan.gather == %{
             x_shape: {3, 1, 64},
             lhs_shape: {3, 1},
             out_shape: {3, 2, 32},
             out_perm: nil
           }

    assert {:kernel, plan} = DotPlan.plan(@f32, d({5, 64}), [1], [], view, [3], [])
    assert plan.gather.x_shape == {5, 64} and plan.gather.lhs_shape == {1, 1}
    assert plan.gather.out_shape == {3, 2, 5, 32}
    assert plan.gather.out_perm == [2, 0, 1, 3]
    assert plan.out_shape == {5, 3, 2, 32}

    assert {:dequantize, [:right], _} = DotPlan.plan(@f32, d({2, 64}), [1], [0], view, [3], [1])
    assert {:dequantize, [:right], _} = DotPlan.plan(@f32, d({3, 2}), [1], [], view, [1], [])
  end

  test "a gather plan run through Core.gather_qmm matches the per-expert reference" do
    qt = Core.quantize(Ref.random_dense({4, 16, 64}, @f32, 3), group_size: 32)
    idx = [3, 1, 1, 0]
    x = Ref.random_dense({5, 64}, @f32, 4)
    view = DotPlan.describe(qt, {2, 2, 16, 64}, 2)
    assert {:kernel, %{gather: g}} = DotPlan.plan(@f32, d({5, 64}), [1], [], view, [3], [])
    lhs = %Dense{data: <<0::64-native>>, shape: g.lhs_shape, type: {:s, 64}}

    rhs = %Dense{
      data: for(i <- idx, into: <<>>, do: <<i::64-native>>),
      shape: {2, 2},
      type: {:s, 64}
    }

    out = Core.gather_qmm(%{x | shape: g.x_shape}, qt, lhs_indices: lhs, rhs_indices: rhs)
    assert out.shape == {2, 2, 5, 16}
    assert %{out | shape: g.out_shape} |> Map.get(:shape) == {2, 2, 5, 16}

    ws = qt |> Core.parts() |> Ref.dequantize(64, 4, 32) |> Enum.chunk_every(16)

    blocks = out |> Ref.rows() |> Enum.chunk_every(5)

    for {{got, e}, p} <- Enum.with_index(Enum.zip(blocks, idx)) do
      expected = Ref.dot(Ref.rows(x), Enum.at(ws, e), true)

      for {g_row, e_row} <- Enum.zip(got, expected), {a, b} <- Enum.zip(g_row, e_row) do
        assert_in_delta a, b, 1.0e-4 * (abs(b) + 1), "position #{p}"
      end
    end
  end
end
