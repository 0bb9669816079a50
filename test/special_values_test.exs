defmodule NxQuant.SpecialValuesTest do
  # NaN, infinities and denormals through the NIF: each has a documented, tested result
  # (MLX's behaviour where MLX defines one, IEEE propagation otherwise) and never a crash.
  use ExUnit.Case, async: true

  alias NxQuant.{Core, Dense, TestFloat}
  alias NxQuant.TestReference, as: Ref

  defp dense(values, shape, type \\ {:f, 32}),
    do: Dense.new(TestFloat.encode(values, type), shape, type)

  defp scale_bias(qt) do
    %{scales: s, biases: b} = Core.parts(qt)
    {TestFloat.decode(s.data, s.type), TestFloat.decode(b.data, b.type)}
  end

  test "a NaN weight is skipped for the group's range and quantizes to q = 0" do
    values = [0.0, :nan | List.duplicate(1.0, 30)]
    qt = Core.quantize(dense(values, {1, 32}), group_size: 32)
    {[_scale], [bias]} = scale_bias(qt)
    assert bias == 1.0
    [row] = Ref.rows(Core.dequantize(qt))
    # q = 0 dequantizes to the bias
    assert Enum.at(row, 1) == 1.0
    assert Enum.at(row, 0) == 0.0
  end

  test "an infinite weight makes its group's scale NaN and bias infinite (as MLX)" do
    for type <- [{:f, 32}, {:f, 16}, {:bf, 16}] do
      values = [:infinity | List.duplicate(1.0, 31)]
      qt = Core.quantize(dense(values, {1, 32}, type), group_size: 32)
      assert {[:nan], [:infinity]} = scale_bias(qt)
      # every q is 0; 0 * NaN + Inf = NaN
      assert Enum.all?(hd(Ref.rows(Core.dequantize(qt))), &(&1 == :nan))
    end
  end

  test "denormal weights quantize and round-trip within half a step" do
    tiny = 1.0e-40
    values = for i <- 0..63, do: tiny * (i - 32)
    qt = Core.quantize(dense(values, {1, 64}), group_size: 64, bits: 8)
    {[scale], _} = scale_bias(qt)
    # the range is below eps = 1e-7, so MLX's minimum step applies
    assert abs(scale) >= 1.0e-7 * 0.99

    for {got, want} <- Enum.zip(hd(Ref.rows(Core.dequantize(qt))), values) do
      assert abs(got - want) <= abs(scale) / 2 + 1.0e-45
    end
  end

  test "NaN or infinity in an activation propagates to that row's outputs only" do
    qt = Core.quantize(dense(for(i <- 1..(4 * 64), do: i / 100), {4, 64}), group_size: 64)
    ok_row = List.duplicate(0.5, 64)

    x =
      dense(
        [:nan | List.duplicate(0.5, 63)] ++ ok_row ++ [:infinity | List.duplicate(0.0, 63)],
        {3, 64}
      )

    [nan_row, finite_row, inf_row] = Ref.rows(Core.quantized_matmul(x, qt))
    assert Enum.all?(nan_row, &(&1 == :nan))
    assert Enum.all?(finite_row, &is_float/1)
    # Documented: the fused kernel factors each group as scale * sum(x * q) + bias * sum(x), so
    # an infinite activation gives NaN or +-Inf (here NaN: a negative scale times +Inf plus a
    # positive bias times +Inf), never a finite value.
    assert Enum.all?(inf_row, &(&1 in [:nan, :infinity, :neg_infinity]))
  end

  test "results that overflow the output dtype become infinity, not garbage" do
    qt = Core.quantize(dense(List.duplicate(60_000.0, 64), {1, 64}, {:f, 16}), group_size: 64)
    x = dense(List.duplicate(100.0, 64), {1, 64}, {:f, 16})
    assert [[:infinity]] = Ref.rows(Core.quantized_matmul(x, qt))
  end
end
