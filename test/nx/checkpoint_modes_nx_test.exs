if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.CheckpointModesNxTest do
    # The Nx face of checkpoints with modes: NxQuant.load_checkpoint/2 of a mixed checkpoint
    # (an mxfp4 expert stack, 8-bit affine, dense), NxQuant.save_checkpoint/3 back, and
    # nvfp4's global scale through NxQuant.quantize/2.
    use ExUnit.Case, async: true
    @moduletag :nx
    @moduletag :tmp_dir

    alias NxQuant.{Checkpoint, Core, Safetensors}
    alias NxQuant.TestReference, as: Ref

    defp pairs(base, qt) do
      %{packed: p, scales: s} = parts = Core.parts(qt)
      lead = Tuple.delete_at(qt.shape, tuple_size(qt.shape) - 1)

      shaped = fn %{shape: {_, n}} = d ->
        %{d | shape: Tuple.insert_at(lead, tuple_size(lead), n)}
      end

      [{"#{base}.weight", shaped.(p)}, {"#{base}.scales", shaped.(s)}] ++
        if parts.biases, do: [{"#{base}.biases", shaped.(parts.biases)}], else: []
    end

    test "a mixed checkpoint loads, multiplies and saves back", %{tmp_dir: dir} do
      experts = Core.quantize(Ref.random_dense({4, 16, 64}, {:f, 32}, 1), mode: :mxfp4)
      router = Core.quantize(Ref.random_dense({4, 64}, {:f, 32}, 2), bits: 8, group_size: 64)
      norm = Ref.random_dense({64}, {:f, 32}, 3)
      src = Path.join(dir, "src")
      File.mkdir_p!(src)

      Safetensors.write(
        Path.join(src, "model.safetensors"),
        pairs("e", experts) ++ pairs("r", router) ++ [{"norm.weight", norm}]
      )

      Checkpoint.write_config(src, %{
        "torch_dtype" => "float32",
        "quantization" => %{
          "mode" => "mxfp4",
          "bits" => 4,
          "group_size" => 32,
          "r" => %{"bits" => 8, "group_size" => 64}
        }
      })

      params = NxQuant.load_checkpoint(src)
      e = params["e.weight"]
      assert NxQuant.quantized?(e) and e.shape == {4, 16, 64}
      assert NxQuant.config(e).mode == "mxfp4"
      assert NxQuant.config(params["r.weight"]).mode == "affine"
      assert inspect(e) =~ "mxfp4"

      # every expert against its dequantized weight (the batched kernel)
      x = Nx.iota({4, 1, 64}, type: :f32) |> Nx.divide(256)
      out = Nx.dot(x, [2], [0], e, [2], [0])
      expected = Nx.dot(x, [2], [0], NxQuant.dequantize(e), [2], [0])
      assert out.shape == {4, 1, 16}
      assert Nx.all_close(out, expected, atol: 1.0e-5) |> Nx.to_number() == 1

      dst = Path.join(dir, "dst")
      :ok = NxQuant.save_checkpoint(dst, params)
      back = Checkpoint.load(dst)

      for {name, qt} <- [{"e.weight", experts}, {"r.weight", router}],
          do: assert(Core.parts(back[name]) == Core.parts(qt), name)

      assert back["norm.weight"] == norm
    end

    test "NxQuant.quantize with nvfp4's global scale" do
      w = Nx.iota({4, 32}, type: :f32) |> Nx.subtract(60) |> Nx.divide(7)
      qw = NxQuant.quantize(w, mode: :nvfp4, global_scale: 200.0)
      assert NxQuant.config(qw).global_scale == 200.0
      core = Core.quantize(NxQuant.Backend.to_dense(w), mode: :nvfp4, global_scale: 200.0)
      assert Nx.to_binary(NxQuant.dequantize(qw)) == Core.dequantize(core).data
      assert Nx.all_close(NxQuant.dequantize(qw), w, rtol: 0.3, atol: 0.3) |> Nx.to_number() == 1
    end
  end
end
