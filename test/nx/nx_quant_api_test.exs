if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.NxApiTest do
    # The EMLX.Quantization-compatible API on Nx tensors, and what every other Nx operation does
    # with a quantized tensor (the table in NxQuant.QuantizedOps).
    use ExUnit.Case, async: true
    @moduletag :nx

    import NxQuant.NxHelpers
    alias NxQuant.{Config, Core}

    describe "quantize / dequantize / quantized_matmul (EMLX's API)" do
      test "the seeds' example: shapes, types, config" do
        weight = Nx.iota({128, 4096}, type: :f32) |> Nx.divide(4096 * 128)
        qw = NxQuant.quantize(weight, type: {:s, 4}, group_size: 64)

        assert NxQuant.quantized?(qw)
        refute NxQuant.quantized?(weight)
        assert qw.shape == {128, 4096}
        assert qw.type == {:s, 4}

        assert %Config{bits: 4, group_size: 64, mode: "affine", scales: s, biases: b} =
                 NxQuant.config(qw)

        assert s.shape == {128, 64} and b.shape == {128, 64} and s.type == {:f, 32}

        input = Nx.iota({1, 8, 4096}, type: :f32) |> Nx.divide(4096)
        out = NxQuant.quantized_matmul(input, qw)
        assert out.shape == {1, 8, 128}
        assert out.type == {:f, 32}
        assert_close(out, Nx.dot(input, [2], kernel_weight(qw), [1]))

        dq = NxQuant.dequantize(qw)
        assert dq.shape == {128, 4096} and dq.type == {:f, 32}
      end

      test "the same packed words, scales and biases as the Nx-free core" do
        w = activation({8, 128}, :bf16)
        qw = NxQuant.quantize(w, type: {:s, 3}, group_size: 32)
        core = Core.quantize(NxQuant.Backend.to_dense(w), bits: 3, group_size: 32)
        ours = NxQuant.parts(qw)

        for {key, dense} <- Core.parts(core) do
          assert Nx.to_binary(ours[key]) == dense.data
        end

        assert qw.type == {:s, 3}
        assert NxQuant.dequantize(qw).type == {:bf, 16}
      end

      test "quantized_matmul's output type is the scales' type unless :out_type is given" do
        {_w, qw} = weight({16, 64}, type: :bf16)
        x = activation({2, 64})
        assert NxQuant.quantized_matmul(x, qw).type == {:bf, 16}
        assert NxQuant.quantized_matmul(x, qw, out_type: :f32).type == {:f, 32}
      end

      test "from_dense/2 is quantize/2 run eagerly" do
        w = activation({4, 64})

        assert Nx.to_binary(NxQuant.parts(NxQuant.from_dense(w, group_size: 32)).packed) ==
                 Nx.to_binary(NxQuant.parts(NxQuant.quantize(w, group_size: 32)).packed)
      end

      test "quantize, dequantize and quantized_matmul inside Nx.Defn.jit" do
        w = activation({16, 64})
        x = activation({3, 64})

        qw = Nx.Defn.jit(&NxQuant.quantize(&1, group_size: 32)).(w)
        assert NxQuant.quantized?(qw)
        dq = Nx.Defn.jit(&NxQuant.dequantize(&1)).(qw)
        assert Nx.to_binary(dq) == Nx.to_binary(NxQuant.dequantize(qw))

        out = Nx.Defn.jit(&NxQuant.quantized_matmul(&1, &2)).(x, qw)
        assert_close(out, NxQuant.quantized_matmul(x, qw))
      end

      test "bad arguments" do
        w = activation({4, 64})

        assert_raise ArgumentError, ~r/:group_size must be one of/, fn ->
          NxQuant.quantize(w, group_size: 48)
        end

        assert_raise ArgumentError, ~r/:type must be one of/, fn ->
          NxQuant.quantize(w, type: {:s, 7})
        end

        assert_raise ArgumentError, ~r/positive multiple of group_size 128/, fn ->
          NxQuant.quantize(w, group_size: 128)
        end

        assert_raise ArgumentError, ~r/expects a float tensor/, fn ->
          NxQuant.quantize(Nx.iota({4, 64}))
        end

        assert_raise ArgumentError, ~r/expects a quantized tensor/, fn ->
          NxQuant.dequantize(w)
        end

        {_w, qw} = weight({16, 64})

        assert_raise ArgumentError, ~r/last axis must be the weight's in_features 64/, fn ->
          NxQuant.quantized_matmul(activation({2, 32}), qw)
        end
      end
    end

    describe "quantized_tensor/5 from checkpoint parts" do
      test "round trip through parts, as Nx tensors and as binaries" do
        {_w, qw} = weight({8, 128}, type: :bf16, bits: 6)
        %{packed: p, scales: s, biases: b} = NxQuant.parts(qw)
        assert p.type == {:u, 32} and p.shape == {8, 24}

        again = NxQuant.quantized_tensor(p, s, b, {8, 128}, type: {:s, 6}, group_size: 32)
        assert Nx.to_binary(NxQuant.dequantize(again)) == Nx.to_binary(NxQuant.dequantize(qw))

        from_bins =
          NxQuant.quantized_tensor(
            Nx.to_binary(p),
            Nx.to_binary(s),
            Nx.to_binary(b),
            {8, 128},
            type: {:s, 6},
            group_size: 32,
            dtype: :bf16
          )

        assert Nx.to_binary(NxQuant.dequantize(from_bins)) == Nx.to_binary(NxQuant.dequantize(qw))
      end

      test "every size is validated (EMLX validates none)" do
        {_w, qw} = weight({8, 128})
        %{packed: p, scales: s, biases: b} = NxQuant.parts(qw)

        assert_raise ArgumentError, ~r/packed has shape \{8, 16\}, expected \{8, 8\}/, fn ->
          NxQuant.quantized_tensor(p, s, b, {8, 64}, group_size: 32)
        end

        assert_raise ArgumentError, ~r/scales has shape/, fn ->
          NxQuant.quantized_tensor(p, Nx.slice(s, [0, 0], [8, 2]), b, {8, 128}, group_size: 32)
        end

        assert_raise ArgumentError, ~r/packed has type \{:s, 32\}/, fn ->
          NxQuant.quantized_tensor(Nx.as_type(p, :s32), s, b, {8, 128}, group_size: 32)
        end

        assert_raise ArgumentError, ~r/needs the :dtype option/, fn ->
          NxQuant.quantized_tensor(p, Nx.to_binary(s), b, {8, 128}, group_size: 32)
        end

        assert_raise ArgumentError, ~r/packed has 511 bytes/, fn ->
          NxQuant.quantized_tensor(binary_part(Nx.to_binary(p), 0, 511), s, b, {8, 128},
            group_size: 32
          )
        end
      end
    end

    describe "other operations on a quantized tensor" do
      setup do
        {w, qw} = weight({32, 64})
        %{w: w, qw: qw}
      end

      test "inspect shows the format, not packed words", %{qw: qw} do
        text = inspect(qw)
        assert text =~ "s4[32][64]"
        assert text =~ "quantized affine 4-bit, group_size 32, f32 scales/biases, stored 32x64"
        assert inspect(Nx.transpose(qw)) =~ "transposed view"
      end

      test "to_binary raises and points to dequantize/1", %{qw: qw} do
        assert_raise ArgumentError, ~r/Use NxQuant.dequantize\/1/, fn -> Nx.to_binary(qw) end
      end

      test "transpose is a free view; twice is the original", %{qw: qw} do
        t = Nx.transpose(qw)
        assert t.shape == {64, 32} and NxQuant.quantized?(t)
        assert NxQuant.Backend.quantized(t).ref == NxQuant.Backend.quantized(qw).ref

        assert Nx.to_binary(NxQuant.dequantize(t)) ==
                 Nx.to_binary(Nx.transpose(NxQuant.dequantize(qw)))

        assert Nx.transpose(t).shape == {32, 64}
        refute NxQuant.Backend.quantized(Nx.transpose(t)).transposed
      end

      test "Nx.take of rows dequantizes only those rows (quantized embedding)", %{qw: qw} do
        ids = Nx.tensor([[3, 0], [31, 3]])
        rows = Nx.take(qw, ids)
        assert rows.shape == {2, 2, 64}
        assert Nx.to_binary(rows) == Nx.to_binary(Nx.take(NxQuant.dequantize(qw), ids))

        assert_raise ArgumentError, ~r/index 32 is out of range for 32 rows/, fn ->
          Nx.take(qw, Nx.tensor([32]))
        end

        assert_raise ArgumentError, ~r/must select rows/, fn ->
          Nx.take(qw, Nx.tensor([1]), axis: 1)
        end
      end

      test "as_type to a float dequantizes; to an integer raises", %{qw: qw} do
        assert Nx.to_binary(Nx.as_type(qw, :f32)) == Nx.to_binary(NxQuant.dequantize(qw))
        assert Nx.as_type(qw, :f16).type == {:f, 16}
        assert_raise ArgumentError, ~r/only float types/, fn -> Nx.as_type(qw, :s8) end
      end

      test "transfers: to another backend dequantizes, onto NxQuant.Backend keeps it", %{qw: qw} do
        dense = Nx.backend_transfer(qw, Nx.BinaryBackend)
        assert %Nx.BinaryBackend{} = dense.data
        assert Nx.to_binary(dense) == Nx.to_binary(NxQuant.dequantize(qw))
        assert Nx.backend_copy(qw, NxQuant.Backend) == qw
        assert Nx.backend_deallocate(qw) == :ok
        # Still usable: the resource is freed only when the last reference is collected.
        assert NxQuant.dequantize(qw).shape == {32, 64}
      end

      test "everything else raises an ArgumentError that says what to do", %{qw: qw} do
        for fun <- [
              fn -> Nx.reshape(qw, {64, 32}) end,
              fn -> Nx.slice(qw, [0, 0], [2, 2]) end,
              fn -> Nx.add(qw, 1) end,
              fn -> Nx.sum(qw) end,
              fn -> Nx.concatenate([qw, qw]) end,
              fn -> Nx.exp(qw) end
            ] do
          error = assert_raise ArgumentError, fun
          assert error.message =~ "not supported on a quantized tensor"
          assert error.message =~ "NxQuant.dequantize/1"
        end
      end
    end

    describe "checkpoints" do
      @describetag :tmp_dir
      test "save_checkpoint -> load_checkpoint round trip, then Nx.dot", %{tmp_dir: dir} do
        {_w, qw} = weight({16, 64}, type: :bf16)
        norm = activation({64}, :bf16)
        :ok = NxQuant.save_checkpoint(dir, %{"l.weight" => qw, "norm.weight" => norm})
        loaded = NxQuant.load_checkpoint(dir)
        assert NxQuant.quantized?(loaded["l.weight"])
        assert Nx.to_binary(loaded["norm.weight"]) == Nx.to_binary(norm)
        x = activation({2, 64})

        assert Nx.to_binary(Nx.dot(x, [1], loaded["l.weight"], [1])) ==
                 Nx.to_binary(Nx.dot(x, [1], qw, [1]))
      end
    end

    describe "dense tensors on NxQuant.Backend" do
      test "every Nx.Backend callback is implemented" do
        for {name, arity} <- Nx.Backend.behaviour_info(:callbacks) do
          assert function_exported?(NxQuant.Backend, name, arity), "#{name}/#{arity}"
        end
      end

      test "as the default backend, dense ops delegate to the inner backend" do
        Nx.with_default_backend(NxQuant.Backend, fn ->
          a = Nx.tensor([[1.0, 2.0], [3.0, 4.0]])
          # The default inner backend is the native dense path.
          assert %NxQuant.Backend{inner: %NxQuant.NativeBackend{}} = a.data
          b = a |> Nx.add(1) |> Nx.multiply(Nx.iota({2, 2}))
          assert Nx.to_flat_list(b) == [0.0, 3.0, 8.0, 15.0]
          assert Nx.to_flat_list(Nx.sum(b, axes: [0])) == [8.0, 18.0]
          assert Nx.to_flat_list(Nx.dot(a, a)) == [7.0, 10.0, 15.0, 22.0]
          assert [_, _] = a |> Nx.to_batched(1) |> Enum.to_list()
          assert inspect(a) =~ "[1.0, 2.0]"
          copy = Nx.backend_transfer(a, Nx.BinaryBackend)
          assert %Nx.BinaryBackend{} = copy.data
        end)
      end

      test "a dense operand from Nx.BinaryBackend or from the inner backend" do
        {_w, qw} = weight({16, 64})
        x = activation({2, 64})
        x_ours = Nx.backend_copy(x, NxQuant.Backend)
        assert %NxQuant.Backend{} = x_ours.data
        assert Nx.to_binary(Nx.dot(x, [1], qw, [1])) == Nx.to_binary(Nx.dot(x_ours, [1], qw, [1]))
      end

      test "init validates its options" do
        assert_raise ArgumentError, fn -> NxQuant.Backend.init(foo: 1) end
        assert [backend: {NxQuant.NativeBackend, []}] = NxQuant.Backend.init([])
        assert [backend: {Nx.BinaryBackend, []}] = NxQuant.Backend.init(backend: Nx.BinaryBackend)
      end

      test "the native path on and off give the same bits" do
        x = Nx.iota({3, 64}, type: :f32) |> Nx.divide(7) |> Nx.sin()
        {_w, qw} = weight({16, 64})

        step = fn backend ->
          Nx.with_default_backend(backend, fn ->
            x = Nx.backend_copy(x, backend)
            h = Nx.dot(x, [1], qw, [1])
            h = h |> Nx.multiply(Nx.sigmoid(h)) |> Nx.add(Nx.sum(h, axes: [1], keep_axes: true))
            Nx.to_binary(Nx.divide(h, Nx.sqrt(Nx.add(Nx.mean(Nx.multiply(h, h)), 1.0e-5))))
          end)
        end

        assert step.({NxQuant.Backend, []}) == step.({NxQuant.Backend, backend: Nx.BinaryBackend})
      end
    end
  end
end
