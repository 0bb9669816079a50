defmodule NxQuant.QuantizedOpsTest do
  # The Nx-free half of NxQuant.Backend: what each callback does with a quantized tensor, the
  # transposed view, the row gather (quantized embedding lookup) and the error messages.
  use ExUnit.Case, async: true

  alias NxQuant.{Core, Dense, QuantizedOps, QuantizedTensor, TestFloat, TestTensor}
  alias NxQuant.TestReference, as: Reference

  defp qt(rows, cols, opts \\ []) do
    w = Reference.random_dense({rows, cols}, Keyword.get(opts, :type, {:f, 32}), rows * cols)
    {w, Core.quantize(w, bits: Keyword.get(opts, :bits, 4), group_size: 32)}
  end

  test "the table: each callback's action on a quantized tensor" do
    assert QuantizedOps.action(:dot) == :dot
    assert QuantizedOps.action(:transpose) == :view
    assert QuantizedOps.action(:gather) == :gather_rows
    assert QuantizedOps.action(:as_type) == :dequantize
    assert QuantizedOps.action(:backend_transfer) == :transfer
    assert QuantizedOps.action(:backend_copy) == :transfer
    assert QuantizedOps.action(:backend_deallocate) == :release
    assert QuantizedOps.action(:inspect) == :describe

    for name <- [:to_binary, :reshape, :slice, :add, :sum, :concatenate, :put_slice, :bitcast] do
      assert QuantizedOps.action(name) == :raise
    end
  end

  test "describe names bits, group size, scales' type, stored shape and view" do
    {_w, q} = qt(8, 64, type: {:bf, 16}, bits: 3)

    assert QuantizedOps.describe(q) ==
             "quantized affine 3-bit, group_size 32, bf16 scales/biases, stored 8x64"

    {:ok, view} = QuantizedOps.transpose(q, [1, 0])
    assert QuantizedOps.describe(view) =~ "stored 8x64, transposed view"
  end

  test "error messages name the operation, the tensor and what to do" do
    {_w, q} = qt(8, 64)
    msg = QuantizedOps.unsupported_message(:reshape, 2, q)
    assert msg =~ "Nx.Backend.reshape/2 is not supported on a quantized tensor"
    assert msg =~ "stored 8x64"
    assert msg =~ "NxQuant.dequantize/1"

    msg = QuantizedOps.unsupported_message(:to_binary, 2, q)
    assert msg =~ "cannot read the binary of a quantized tensor"
    assert msg =~ "not s4 values"
    assert msg =~ "NxQuant.dequantize/1" and msg =~ "NxQuant.parts/1"
  end

  describe "transpose" do
    test "[1, 0] flips the view (same resource), twice is the original, identity keeps it" do
      {_w, q} = qt(8, 64)

      assert {:ok, %QuantizedTensor{shape: {64, 8}, transposed: true} = v} =
               QuantizedOps.transpose(q, [1, 0])

      assert v.ref == q.ref
      assert QuantizedTensor.stored_shape(v) == {8, 64}
      assert {:ok, ^q} = QuantizedOps.transpose(v, [1, 0])
      assert {:ok, ^q} = QuantizedOps.transpose(q, [0, 1])
      # The view dequantizes to the transposed matrix.
      %Dense{data: data, type: type} = Core.dequantize(q)
      {expected, {64, 8}} = TestTensor.permute(TestFloat.decode(data, type), {8, 64}, [1, 0])
      assert TestFloat.decode(Core.dequantize(v).data, type) == expected
    end

    test "rank != 2 has no view" do
      w = Reference.random_dense({2, 4, 64}, {:f, 32}, 1)
      q = Core.quantize(w, group_size: 32)
      assert {:error, msg} = QuantizedOps.transpose(q, [0, 2, 1])
      assert msg =~ "only 2-D quantized tensors have a transposed view"
    end
  end

  describe "gather rows (quantized embedding lookup)" do
    test "take_rows dequantizes exactly the rows asked for, in order, with repeats" do
      {_w, q} = qt(10, 64, type: {:bf, 16}, bits: 6)
      full = Core.dequantize(q)
      row_bytes = 64 * 2
      rows = [7, 0, 7, 9]
      got = QuantizedOps.take_rows(q, rows)
      assert got.shape == {4, 64} and got.type == {:bf, 16}

      expected = for r <- rows, into: <<>>, do: binary_part(full.data, r * row_bytes, row_bytes)
      assert got.data == expected
      assert %Dense{shape: {0, 64}, data: <<>>} = QuantizedOps.take_rows(q, [])
    end

    test "checks: 2-D, not transposed, axis 0, {..., 1} indices, ids in range" do
      {_w, q} = qt(10, 64)
      assert {:ok, [1, 9]} = QuantizedOps.gather_rows(q, {2, 1}, [0], [1, 9])
      assert {:error, msg} = QuantizedOps.gather_rows(q, {2, 1}, [0], [1, 10])
      assert msg =~ "index 10 is out of range for 10 rows"
      assert {:error, _} = QuantizedOps.gather_rows(q, {1, 1}, [0], [-1])
      assert {:error, msg} = QuantizedOps.gather_rows(q, {2, 1}, [1], [1, 2])
      assert msg =~ "must select rows"
      assert {:error, _} = QuantizedOps.gather_rows(q, {2, 2}, [0, 1], [1, 2, 3, 4])
      {:ok, view} = QuantizedOps.transpose(q, [1, 0])
      assert {:error, msg} = QuantizedOps.gather_rows(view, {1, 1}, [0], [0])
      assert msg =~ "non-transposed"
    end
  end
end
