defmodule NxQuant.ForgedStructTest do
  # A %NxQuant.QuantizedTensor{} edited by hand must never make the core compute with the
  # resource's real matrix and label the result with the struct's fields: every function that
  # reads a quantized tensor's data checks the struct against the resource (NIF.info/1).
  use ExUnit.Case, async: true

  alias NxQuant.{Config, Core, Dense, QuantizedOps, QuantizedTensor, Safetensors, TestFloat}

  defp dense(shape, seed) do
    n = shape |> Tuple.to_list() |> Enum.reduce(1, &(&1 * &2))
    values = for i <- 1..n, do: :math.sin(i * 0.37 + seed)
    Dense.new(TestFloat.encode(values, {:f, 32}), shape, {:f, 32})
  end

  setup do
    qt = Core.quantize(dense({64, 128}, 1))
    %{qt: qt, x: dense({1, 128}, 2)}
  end

  defp assert_mismatch(fun, pattern) do
    e = assert_raise ArgumentError, fun
    assert Exception.message(e) =~ pattern
    assert Exception.message(e) =~ "its native data is a 64x128 matrix, bits 4, group_size 64"
    assert String.valid?(Exception.message(e))
  end

  test "quantized_matmul with a struct claiming fewer rows (the issue's {1, 32} Dense of 256 bytes)",
       %{qt: qt, x: x} do
    assert_mismatch(
      fn -> Core.quantized_matmul(x, %{qt | shape: {32, 128}}) end,
      ~r"^quantized_matmul/3 quantized tensor's :shape \{32, 128\} \(a stored 32x128 matrix\) does not match"
    )
  end

  test "dequantize with a forged shape or dtype", %{qt: qt} do
    assert_mismatch(fn -> Core.dequantize(%{qt | shape: {2, 2}}) end, ~r":shape \{2, 2\}")
    assert_mismatch(fn -> Core.dequantize(%{qt | shape: {64, 64}}) end, ~r":shape \{64, 64\}")

    assert_mismatch(
      fn -> Core.dequantize(%{qt | dtype: {:f, 16}}) end,
      ~r"^dequantize/1 quantized tensor's :dtype \{:f, 16\} does not match"
    )
  end

  test "every other field the core reads", %{qt: qt, x: x} do
    cases = [
      {%{qt | type: {:s, 8}}, ~r":type \{:s, 8\} does not match"},
      {%{qt | config: %{qt.config | bits: 8}}, ~r":config bits 8 does not match"},
      {%{qt | type: {:s, 8}, config: %{qt.config | bits: 8}}, ~r":type \{:s, 8\}"},
      {%{qt | config: %{qt.config | group_size: 32}}, ~r":config group_size 32 does not match"},
      {%{qt | config: %{qt.config | mode: "mxfp4"}}, ~r":config mode \"mxfp4\""},
      {%{qt | config: nil}, ~r":config must be an %NxQuant.Config\{\}, got: nil"},
      {%{qt | transposed: :yes}, ~r":transposed must be true or false, got: :yes"},
      {%{qt | transposed: nil}, ~r":transposed must be true or false, got: nil"},
      # a transposed flag on the untransposed shape: the stored matrix would be 128x64
      {%{qt | transposed: true}, ~r":shape \{64, 128\} \(a stored 128x64 matrix\)"},
      {%{qt | shape: {8, 8, 128}, transposed: true}, ~r"transposed view must be 2-D"},
      {%{qt | shape: [64, 128]}, ~r":shape must be a tuple .*got: \[64, 128\]"},
      {%{qt | shape: {}}, ~r":shape must be a tuple of rank >= 1"},
      {%{qt | shape: {-64, 128}}, ~r"got: \{-64, 128\}"},
      {%{qt | shape: {64.0, 128}}, ~r"got: \{64.0, 128\}"}
    ]

    for {forged, pattern} <- cases do
      assert_mismatch(fn -> Core.dequantize(forged) end, pattern)
      assert_mismatch(fn -> Core.parts(forged) end, pattern)
      assert_mismatch(fn -> Core.quantized_matmul(x, forged) end, pattern)
      assert_mismatch(fn -> Core.gather_qmm(x, forged) end, pattern)
      assert_mismatch(fn -> QuantizedOps.dequantize_f32(forged) end, pattern)
      assert_mismatch(fn -> QuantizedOps.take_rows(forged, [0]) end, pattern)

      path = Path.join(System.tmp_dir!(), "nx_quant_forged_#{System.unique_integer([:positive])}")

      try do
        assert_mismatch(fn -> Safetensors.write(path, [{"w.weight", forged}]) end, pattern)
        refute File.exists?(path)
      after
        File.rm(path)
      end
    end
  end

  test "a ref that is not a quantized tensor", %{qt: qt, x: x} do
    for forged <- [%{qt | ref: make_ref()}] do
      for call <- [
            fn -> Core.dequantize(forged) end,
            fn -> Core.quantized_matmul(x, forged) end,
            fn -> Core.gather_qmm(x, forged) end,
            fn -> Core.parts(forged) end
          ] do
        e = assert_raise ArgumentError, call
        assert e.message =~ ~r"quantized tensor's :ref must be a quantized tensor reference"
      end
    end
  end

  test "consistent edits still work: another grouping of the rows, a transposed view", %{qt: qt} do
    whole = Core.dequantize(qt)

    regrouped = Core.dequantize(%{qt | shape: {2, 32, 128}})
    assert regrouped.shape == {2, 32, 128}
    assert regrouped.data == whole.data

    t = Core.dequantize(%{qt | shape: {128, 64}, transposed: true})
    assert t.shape == {128, 64}
    row0 = for r <- 0..63, do: binary_part(whole.data, r * 128 * 4, 4)
    assert binary_part(t.data, 0, 64 * 4) == IO.iodata_to_binary(row0)
  end

  test "check/2 itself, without a resource", %{qt: qt} do
    assert QuantizedTensor.check(qt, {64, 128, :f32, 4, 64}) == :ok
    assert {:error, message} = QuantizedTensor.check(qt, {64, 128, :bf16, 4, 64})
    assert message =~ ":dtype {:f, 32} does not match: its native data is a 64x128 matrix"
    assert {:error, _} = QuantizedTensor.check(qt, {64, 128, :f32, 3, 64})
    assert {:error, _} = QuantizedTensor.check(qt, {64, 128, :f32, 4, 128})
    assert {:error, _} = QuantizedTensor.check(qt, {63, 128, :f32, 4, 64})
    assert %Config{} = qt.config
  end
end
