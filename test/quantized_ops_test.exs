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

    for name <- [:reshape, :squeeze, :broadcast], do: assert(QuantizedOps.action(name) == :view)

    for name <- [:to_binary, :slice, :add, :sum, :concatenate, :put_slice, :bitcast] do
      assert QuantizedOps.action(name) == :raise
    end
  end

  test "describe names bits, group size, scales' type, stored shape and view" do
    {_w, q} = qt(8, 64, type: {:bf, 16}, bits: 3)

    assert QuantizedOps.describe(q) ==
             "quantized affine 3-bit, group_size 32, bf16 scales/biases, stored 8x64"

    {:ok, view} = QuantizedOps.transpose(q, [1, 0])
    assert QuantizedOps.describe(view) =~ "stored 8x64, transposed view"
    assert QuantizedOps.describe(q, {8, 64}) == QuantizedOps.describe(q)
    assert QuantizedOps.describe(q, {3, 8, 64}) =~ "stored 8x64, broadcast to {3, 8, 64}"
  end

  describe "broadcast views (new leading axes)" do
    test "lead: the axes in front of the quantized shape" do
      {_w, q} = qt(8, 64)
      assert {:ok, []} = QuantizedOps.lead(q, {8, 64})
      assert {:ok, [2, 1, 3]} = QuantizedOps.lead(q, {2, 1, 3, 8, 64})
      assert :error = QuantizedOps.lead(q, {64, 8})
      assert :error = QuantizedOps.lead(q, {64})
      assert :error = QuantizedOps.lead(q, {2, 4, 64})
    end

    test "reshape/squeeze: any shape ending with the quantized shape is a view" do
      {_w, q} = qt(8, 64)
      assert :ok = QuantizedOps.reshape(q, {8, 64}, {1, 8, 64})
      assert :ok = QuantizedOps.reshape(q, {2, 3, 8, 64}, {6, 8, 64})
      assert :ok = QuantizedOps.reshape(q, {1, 8, 64}, {8, 64}, :squeeze)

      for shape <- [{64, 8}, {512}, {2, 4, 64}, {8, 64, 1}] do
        assert {:error, msg} = QuantizedOps.reshape(q, {8, 64}, shape)
        assert msg =~ "Nx.Backend.reshape to shape #{inspect(shape)} is not supported"
        assert msg =~ "new leading axes" and msg =~ "NxQuant.dequantize/1"
      end

      assert {:error, msg} = QuantizedOps.reshape(q, {1, 8, 64}, {8, 64, 1}, :squeeze)
      assert msg =~ "Nx.Backend.squeeze"
    end

    test "broadcast: the quantized axes must stay last, the leading ones go anywhere" do
      {_w, q} = qt(8, 64)
      assert :ok = QuantizedOps.broadcast(q, {8, 64}, {5, 8, 64}, [1, 2])
      assert :ok = QuantizedOps.broadcast(q, {1, 8, 64}, {5, 8, 64}, [0, 1, 2])
      assert :ok = QuantizedOps.broadcast(q, {1, 8, 64}, {5, 4, 8, 64}, [1, 2, 3])
      assert {:error, msg} = QuantizedOps.broadcast(q, {8, 64}, {8, 8, 64}, [0, 2])
      assert msg =~ "Nx.Backend.broadcast" and msg =~ "axes [0, 2]"
      assert {:error, _} = QuantizedOps.broadcast(q, {8, 64}, {8, 64, 64}, [0, 1])
    end
  end

  describe "widen_f32 and dequantize_f32 (the weight Nx.dot multiplies by)" do
    test "every f16 and bf16 bit pattern widens to the f32 of the same value" do
      all = for h <- 0..0xFFFF, into: <<>>, do: <<h::16-little>>

      for type <- [{:f, 16}, {:bf, 16}] do
        wide = QuantizedOps.widen_f32(all, type)
        assert byte_size(wide) == 4 * 65_536
        assert TestFloat.decode(wide, {:f, 32}) == TestFloat.decode(all, type)
      end

      # Signs of zeros and infinities, NaN payloads.
      bits = fn h, type -> QuantizedOps.widen_f32(<<h::16-little>>, type) end
      assert bits.(0x8000, {:f, 16}) == <<0x80000000::32-little>>
      assert bits.(0xFC00, {:f, 16}) == <<0xFF800000::32-little>>
      assert bits.(0x7E01, {:f, 16}) == <<0x7FC02000::32-little>>
      assert bits.(0x0001, {:f, 16}) == <<0x33800000::32-little>>
      assert bits.(0xFFC1, {:bf, 16}) == <<0xFFC10000::32-little>>
    end

    test "scale * q + bias in f32 from the parts, for every scales' type and views" do
      for type <- [{:f, 32}, {:f, 16}, {:bf, 16}], bits <- [3, 4, 8] do
        {_w, q} = qt(6, 64, type: type, bits: bits)
        parts = Core.parts(q)
        qs = Reference.unpack(parts.packed.data, 6, 64, bits)
        scales = Reference.rows(parts.scales)
        biases = Reference.rows(parts.biases)

        expected =
          for {q_row, s_row, b_row} <- Enum.zip([qs, scales, biases]),
              {group, {s, b}} <- Enum.zip(Enum.chunk_every(q_row, 32), Enum.zip(s_row, b_row)),
              qv <- group do
            TestFloat.round(TestFloat.round(qv * s, {:f, 32}) + b, {:f, 32})
          end

        got = QuantizedOps.dequantize_f32(q)
        assert %Dense{shape: {6, 64}, type: {:f, 32}} = got
        assert TestFloat.decode(got.data, {:f, 32}) == expected
        if type == {:f, 32}, do: assert(got.data == Core.dequantize(q).data)

        {:ok, view} = QuantizedOps.transpose(q, [1, 0])
        got_t = QuantizedOps.dequantize_f32(view)
        assert got_t.shape == {64, 6}
        {expected_t, _} = TestTensor.permute(expected, {6, 64}, [1, 0])
        assert TestFloat.decode(got_t.data, {:f, 32}) == expected_t
      end
    end

    test "a rank-3 quantized tensor keeps its shape" do
      w = Reference.random_dense({2, 3, 64}, {:bf, 16}, 5)
      q = Core.quantize(w, group_size: 32)
      got = QuantizedOps.dequantize_f32(q)
      assert got.shape == {2, 3, 64} and got.type == {:f, 32}
      flat = Core.quantize(%{w | shape: {6, 64}}, group_size: 32)
      assert got.data == QuantizedOps.dequantize_f32(flat).data
    end
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
