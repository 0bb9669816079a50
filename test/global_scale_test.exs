defmodule NxQuant.GlobalScaleTest do
  # nvfp4's optional f32 global scale (MLX's `global_scale`): scales are E4M3 of
  # max|w| / 6 * (448 * 6 / global_scale), dequantize multiplies back by global_scale / 2688.
  # Expected values are worked out by hand (as native_tests/microscaled_test.cpp) and decoded
  # from the stored bytes in plain Elixir.
  use ExUnit.Case, async: true

  alias NxQuant.{Checkpoint, Core, Dense, TestFloat}
  alias NxQuant.TestMicroscaled, as: Micro
  alias NxQuant.TestReference, as: Ref

  @moduletag :tmp_dir

  defp dense(values, shape), do: Dense.new(TestFloat.encode(values, {:f, 32}), shape, {:f, 32})
  defp padded(values, n), do: values ++ List.duplicate(0.0, n - length(values))

  # the stored values times global_scale / 2688
  defp decoded(qt, g) do
    %{packed: p, scales: s} = Core.parts(qt)
    {_, cols} = NxQuant.QuantizedTensor.stored_shape(qt)
    for row <- Micro.decode(p.data, s.data, cols, "nvfp4"), do: Enum.map(row, &(&1 * g / 2688))
  end

  test "quantize: scale byte and codes by hand, dequantize multiplies back" do
    qt =
      Core.quantize(dense(padded([6, 3, 1, -2, 0.4], 16), {1, 16}),
        mode: :nvfp4,
        global_scale: 448
      )

    assert qt.config.global_scale == 448.0

    assert NxQuant.QuantizedOps.describe(qt) ==
             "quantized nvfp4 (4-bit, group_size 16, uint8 scales, global_scale 448.0), " <>
               "f32 values, stored 1x16"

    # max 6: 6 / 6 * 2688 / 448 = 6 -> E4M3 0x4C; codes w / 6 * 6: 6 -> 7, 3 -> 5, 1 -> 2,
    # -2 -> 0xC, 0.4 -> 1 (0.5)
    %{packed: p, scales: s} = Core.parts(qt)
    assert :binary.bin_to_list(s.data) == [0x4C]
    <<w0::32-little, w1::32-little>> = p.data
    assert {w0, w1} == {0x1C257, 0}
    [row] = Ref.rows(Core.dequantize(qt))
    assert Enum.take(row, 5) == [6.0, 3.0, 1.0, -2.0, 0.5]
    assert [row] == decoded(qt, 448)

    # without the global scale the same data has other scale bytes
    plain = Core.quantize(dense(padded([6, 3, 1, -2, 0.4], 16), {1, 16}), mode: :nvfp4)
    assert plain.config.global_scale == nil
    assert :binary.bin_to_list(Core.parts(plain).scales.data) == [0x38]
  end

  test "quantized_tensor with a global scale; a batched matmul honours it" do
    w = Ref.random_dense({2, 8, 32}, {:f, 32}, 1)
    qt = Core.quantize(w, mode: :nvfp4, global_scale: 100.0)
    %{packed: p, scales: s} = Core.parts(qt)

    rebuilt =
      Core.quantized_tensor(p, s, nil, {2, 8, 32},
        mode: :nvfp4,
        dtype: {:f, 32},
        global_scale: 100.0
      )

    assert rebuilt.config.global_scale == 100.0
    assert Core.dequantize(rebuilt) == Core.dequantize(qt)

    # f32 arithmetic (the scale times global_scale / 2688, rounded) vs exact: within 2 ulps
    got = qt |> Core.dequantize() |> Ref.rows() |> List.flatten()

    for {a, b} <- Enum.zip(got, List.flatten(decoded(qt, 100.0))),
        do: assert(abs(a - b) <= 2 * :math.pow(2, -23) * abs(b))

    # the same parts without it are another matrix: global_scale / 2688 apart
    without = Core.quantized_tensor(p, s, nil, {2, 8, 32}, mode: :nvfp4, dtype: {:f, 32})
    assert without.config.global_scale == nil
    refute Core.dequantize(without) == Core.dequantize(qt)

    x = Ref.random_dense({2, 3, 32}, {:f, 32}, 2)
    out = Core.quantized_matmul(x, qt)
    ws = qt |> decoded(100.0) |> Enum.chunk_every(8)

    for {{got, xs}, w} <-
          Enum.zip(
            Enum.zip(Enum.chunk_every(Ref.rows(out), 3), Enum.chunk_every(Ref.rows(x), 3)),
            ws
          ) do
      for {{g_row, e_row}, b_row} <-
            Enum.zip(Enum.zip(got, Ref.dot(xs, w, true)), Ref.abs_dot(xs, w, true)),
          {{a, b}, c} <- Enum.zip(Enum.zip(g_row, e_row), b_row),
          do: assert(abs(a - b) <= 64 * :math.pow(2, -24) * c + 1.0e-30)
    end
  end

  test "tensors rebuilt from the parts keep it (take_rows, dequantize_f32)" do
    qt = Core.quantize(Ref.random_dense({3, 32}, {:bf, 16}, 4), mode: :nvfp4, global_scale: 50.0)
    rows = Ref.rows(Core.dequantize(qt))
    taken = NxQuant.QuantizedOps.take_rows(qt, [2, 0])
    assert Ref.rows(taken) == [Enum.at(rows, 2), Enum.at(rows, 0)]

    wide = NxQuant.QuantizedOps.dequantize_f32(qt)
    assert wide.type == {:f, 32}

    for {a, b} <- Enum.zip(List.flatten(Ref.rows(wide)), List.flatten(decoded(qt, 50.0))),
        do: assert(abs(a - b) <= 2 * :math.pow(2, -23) * abs(b))
  end

  test "bad global scales are errors naming the option" do
    d = dense(List.duplicate(1.0, 32), {1, 32})

    assert_raise ArgumentError, ~r/option :global_scale is for mode :nvfp4 only/, fn ->
      Core.quantize(d, mode: :mxfp4, global_scale: 2.0)
    end

    assert_raise ArgumentError, ~r/option :global_scale is for mode :nvfp4 only/, fn ->
      Core.quantize(d, global_scale: 2.0)
    end

    for bad <- [0, -1.0, :nan, "2", 1.0e39] do
      assert_raise ArgumentError, ~r/:global_scale must be a positive finite number/, fn ->
        Core.quantize(d, mode: :nvfp4, global_scale: bad)
      end
    end
  end

  test "a checkpoint cannot hold it: save refuses instead of dropping it", %{tmp_dir: dir} do
    qt = Core.quantize(Ref.random_dense({2, 32}, {:f, 32}, 3), mode: :nvfp4, global_scale: 7.0)

    assert_raise ArgumentError, ~r/'w.weight': an nvfp4 tensor with a global scale/, fn ->
      Checkpoint.save(dir, %{"w.weight" => qt})
    end

    assert File.ls!(dir) == []
  end
end
