defmodule NxQuant.CheckpointModesTest do
  # Mixed checkpoints as mlx-lm writes them (gpt-oss style): microscaled expert stacks
  # (NAME.weight U32 + NAME.scales U8, no biases), affine layers of several bit widths, dense
  # tensors, and config.json's "quantization" block with a top-level mode and per-layer entries.
  # Files are built here from raw safetensors entries; values are checked against a plain-Elixir
  # decoder of the stored bytes (NxQuant.TestMicroscaled), not the NIF's dequantize.
  use ExUnit.Case, async: true

  alias NxQuant.{Checkpoint, Core, Dense, NIF, QuantizedTensor, Safetensors}
  alias NxQuant.TestMicroscaled, as: Micro
  alias NxQuant.TestReference, as: Ref

  @moduletag :tmp_dir

  @l "model.layers.0"

  # MLX's stored parts of `w` (any rank), leading axes kept: {..., N, words} etc.
  defp mlx_parts(%Dense{shape: shape} = w, opts) do
    qt = Core.quantize(w, opts)
    leading = Tuple.delete_at(shape, tuple_size(shape) - 1)

    for {key, %Dense{shape: {_, width}} = part} <- Core.parts(qt), into: %{} do
      {key, %{part | shape: Tuple.insert_at(leading, tuple_size(leading), width)}}
    end
  end

  defp entries(base, parts) do
    [{"#{base}.weight", parts.packed}, {"#{base}.scales", parts.scales}] ++
      if parts[:biases], do: [{"#{base}.biases", parts.biases}], else: []
  end

  # name => {mode, bits, group_size, logical shape, parts}
  defp layers do
    %{
      "#{@l}.mlp.experts.gate_proj" =>
        {"mxfp4", 4, 32, {4, 16, 64}, Ref.random_dense({4, 16, 64}, {:f, 32}, 1), mode: :mxfp4},
      "model.layers.1.mlp.experts.gate_proj" =>
        {"mxfp4", 4, 32, {2, 16, 32}, Ref.random_dense({2, 16, 32}, {:f, 32}, 6), mode: :mxfp4},
      "#{@l}.mlp.experts.up_proj" =>
        {"nvfp4", 4, 16, {4, 16, 64}, Ref.random_dense({4, 16, 64}, {:f, 32}, 2), mode: :nvfp4},
      "#{@l}.mlp.experts.down_proj" =>
        {"mxfp8", 8, 32, {4, 64, 32}, Ref.random_dense({4, 64, 32}, {:f, 32}, 3), mode: :mxfp8},
      "#{@l}.mlp.router" =>
        {"affine", 8, 64, {4, 64}, Ref.random_dense({4, 64}, {:f, 32}, 4),
         bits: 8, group_size: 64},
      "#{@l}.self_attn.q_proj" =>
        {"affine", 4, 32, {32, 64}, Ref.random_dense({32, 64}, {:f, 32}, 5),
         bits: 4, group_size: 32}
    }
  end

  defp config(extra \\ %{}) do
    Map.merge(
      %{
        "model_type" => "gpt_oss",
        "torch_dtype" => "float32",
        "quantization" => %{
          "group_size" => 32,
          "bits" => 4,
          "mode" => "mxfp4",
          # mlx-lm's gpt-oss router entry: no "mode", so affine (MLX's to_quantized default)
          "#{@l}.mlp.router" => %{"group_size" => 64, "bits" => 8},
          "#{@l}.mlp.experts.up_proj" => %{"group_size" => 16, "bits" => 4, "mode" => "nvfp4"},
          # bits and group size left to the mode's (fixed) ones
          "#{@l}.mlp.experts.down_proj" => %{"mode" => "mxfp8"},
          "#{@l}.self_attn.q_proj" => %{"group_size" => 32, "bits" => 4, "mode" => "affine"}
        }
      },
      extra
    )
  end

  defp dense_tensors do
    %{
      "model.norm.weight" => Ref.random_dense({64}, {:bf, 16}, 10),
      "model.embed_tokens.weight" => Ref.random_dense({8, 64}, {:bf, 16}, 11),
      # gpt-oss's expert bias: a dense `.bias`, not MLX's `.biases`
      "#{@l}.mlp.experts.gate_proj.bias" => Ref.random_dense({4, 16}, {:bf, 16}, 12)
    }
  end

  defp write_mixed!(dir, config \\ config()) do
    parts = Map.new(layers(), fn {base, {_, _, _, _, w, opts}} -> {base, mlx_parts(w, opts)} end)

    raw =
      Enum.flat_map(parts, fn {base, p} -> entries(base, p) end) ++ Map.to_list(dense_tensors())

    File.mkdir_p!(dir)
    :ok = Safetensors.write(Path.join(dir, "model.safetensors"), raw, %{"format" => "mlx"})
    Checkpoint.write_config(dir, config)
    {parts, Map.new(raw)}
  end

  describe "a mixed checkpoint" do
    for mmap <- [false, true] do
      test "loads every layer with its own mode, bits and group size (mmap: #{mmap})", %{
        tmp_dir: dir
      } do
        {parts, raw} = write_mixed!(dir)
        loaded = Checkpoint.load(dir, mmap: unquote(mmap))

        assert Enum.sort(Map.keys(loaded)) ==
                 Enum.sort(
                   Map.keys(dense_tensors()) ++ Enum.map(Map.keys(layers()), &"#{&1}.weight")
                 )

        for {name, d} <- dense_tensors(), do: assert(loaded[name] == d, name)

        for {base, {mode, bits, gs, _, %Dense{shape: shape}, _}} <- layers() do
          qt = loaded["#{base}.weight"]
          assert %QuantizedTensor{shape: ^shape, type: {:s, ^bits}} = qt, base
          assert qt.config.mode == mode and qt.config.group_size == gs, base

          # the stored bytes are the file's
          got = Core.parts(qt)
          assert got.packed.data == raw["#{base}.weight"].data, base
          assert got.scales.data == raw["#{base}.scales"].data, base

          if mode == "affine" do
            assert got.biases.data == raw["#{base}.biases"].data
            assert qt.dtype == {:f, 32}
          else
            assert got.biases == nil and qt.config.biases == nil
            # config.json's torch_dtype
            assert qt.dtype == {:f, 32}
            cols = elem(shape, tuple_size(shape) - 1)
            p = parts[base]
            expected = Micro.decode(p.packed.data, p.scales.data, cols, mode)
            assert Ref.rows(Core.dequantize(qt)) == expected, base
          end
        end
      end
    end

    test "a 3-D mxfp4 expert stack multiplies expert by expert (gather_qmm)", %{tmp_dir: dir} do
      {parts, _} = write_mixed!(dir)
      qt = Checkpoint.load(dir)["#{@l}.mlp.experts.gate_proj.weight"]
      p = parts["#{@l}.mlp.experts.gate_proj"]
      experts = p.packed.data |> Micro.decode(p.scales.data, 64, "mxfp4") |> Enum.chunk_every(16)

      x = Ref.random_dense({3, 1, 1, 64}, {:f, 32}, 20)
      rhs = [2, 0, 2]

      idx = %Dense{
        data: for(i <- rhs, into: <<>>, do: <<i::64-native>>),
        shape: {3, 1},
        type: {:s, 64}
      }

      out = Core.gather_qmm(x, qt, rhs_indices: idx)
      assert out.shape == {3, 1, 1, 16}

      for {{got, x_t}, e} <- Enum.zip(Enum.zip(Ref.rows(out), Ref.rows(x)), rhs) do
        w = Enum.at(experts, e)
        [expected] = Ref.dot([x_t], w, true)
        [bound] = Ref.abs_dot([x_t], w, true)

        for {{a, b}, c} <- Enum.zip(Enum.zip(got, expected), bound),
            do: assert(abs(a - b) <= 64 * :math.pow(2, -24) * c + 1.0e-30)
      end
    end

    test "load(save(x)) gives back every byte, mode and dense tensor", %{tmp_dir: dir} do
      src = Path.join(dir, "src")
      dst = Path.join(dir, "dst")
      {_, raw} = write_mixed!(src)
      original = Checkpoint.load(src)
      :ok = Checkpoint.save(dst, original, config: %{"model_type" => "gpt_oss"})

      # the file is MLX's layout: the same tensors, shapes, dtypes and bytes as the source
      f = Safetensors.open!(Path.join(dst, "model.safetensors"))
      assert Enum.sort(Map.keys(f.tensors)) == Enum.sort(Map.keys(raw))

      for {name, %Dense{} = d} <- raw do
        assert Safetensors.read(f, name) == d, name
      end

      config = NIF.json_decode(File.read!(Path.join(dst, "config.json")))
      q = config["quantization"]
      assert config["quantization_config"] == q
      # the microscaled dtype, which the files do not hold
      assert config["torch_dtype"] == "float32"
      # the most common format is the top level; every other layer has all three keys
      assert Map.take(q, ~w(bits group_size mode)) ==
               %{"bits" => 4, "group_size" => 32, "mode" => "mxfp4"}

      assert q["#{@l}.mlp.router"] == %{"bits" => 8, "group_size" => 64, "mode" => "affine"}

      assert q["#{@l}.mlp.experts.up_proj"] == %{
               "bits" => 4,
               "group_size" => 16,
               "mode" => "nvfp4"
             }

      assert q["#{@l}.mlp.experts.down_proj"] ==
               %{"bits" => 8, "group_size" => 32, "mode" => "mxfp8"}

      refute Map.has_key?(q, "#{@l}.mlp.experts.gate_proj")
      refute Map.has_key?(q, "model.layers.1.mlp.experts.gate_proj")

      back = Checkpoint.load(dst)
      assert Map.keys(back) == Map.keys(original)

      for {name, t} <- original do
        case t do
          %Dense{} ->
            assert back[name] == t

          %QuantizedTensor{} ->
            b = back[name]
            assert {b.shape, b.type, b.dtype} == {t.shape, t.type, t.dtype}, name

            assert Map.drop(b.config, [:scales, :biases]) ==
                     Map.drop(t.config, [:scales, :biases])

            assert Core.parts(b) == Core.parts(t), name
        end
      end
    end

    test "save replaces a stale quantization block of :config", %{tmp_dir: dir} do
      src = Path.join(dir, "src")
      write_mixed!(src)
      ckpt = Checkpoint.open(src)
      # every layer dequantized: the source's block would declare them quantized
      dense =
        Map.new(Checkpoint.load(src), fn
          {name, %QuantizedTensor{} = qt} -> {name, Core.dequantize(qt)}
          other -> other
        end)

      :ok = Checkpoint.save(Path.join(dir, "dense"), dense, config: ckpt.config)
      config = NIF.json_decode(File.read!(Path.join(dir, "dense/config.json")))
      refute Map.has_key?(config, "quantization") or Map.has_key?(config, "quantization_config")
      assert config["model_type"] == "gpt_oss"
      assert Checkpoint.load(Path.join(dir, "dense")) == dense
    end

    test "BumblebeeMapping.tensors/1: microscaled layers have the checkpoint's dtype", %{
      tmp_dir: dir
    } do
      write_mixed!(dir, Map.put(config(), "torch_dtype", "bfloat16"))
      t = NxQuant.BumblebeeMapping.tensors(Checkpoint.open(dir))

      assert t["#{@l}.mlp.experts.gate_proj.weight"] ==
               {:quantized, {4, 16, 64}, 4, 32, {:bf, 16}}

      assert t["#{@l}.mlp.experts.up_proj.weight"] == {:quantized, {4, 16, 64}, 4, 16, {:bf, 16}}
      # affine layers: their scales' type
      assert t["#{@l}.mlp.router.weight"] == {:quantized, {4, 64}, 8, 64, {:f, 32}}
    end

    test "save of a microscaled tensor alone: dtype recorded unless the config has one", %{
      tmp_dir: dir
    } do
      qt = Core.quantize(Ref.random_dense({2, 64}, {:f, 16}, 1), mode: :nvfp4)
      :ok = Checkpoint.save(Path.join(dir, "a"), %{"w.weight" => qt})
      config = NIF.json_decode(File.read!(Path.join(dir, "a/config.json")))
      assert config["torch_dtype"] == "float16"
      assert config["quantization"] == %{"bits" => 4, "group_size" => 16, "mode" => "nvfp4"}
      assert Checkpoint.load(Path.join(dir, "a"))["w.weight"].dtype == {:f, 16}

      :ok =
        Checkpoint.save(Path.join(dir, "b"), %{"w.weight" => qt},
          config: %{"torch_dtype" => "bfloat16"}
        )

      assert Checkpoint.load(Path.join(dir, "b"))["w.weight"].dtype == {:bf, 16}
      # the :dtype option wins
      assert Checkpoint.load(Path.join(dir, "b"), dtype: {:f, 32})["w.weight"].dtype == {:f, 32}
    end
  end

  describe "a layer whose tensors do not match its declared mode" do
    setup %{tmp_dir: dir} do
      w = Ref.random_dense({4, 64}, {:f, 32}, 1)
      %{dir: dir, mx: mlx_parts(w, mode: :mxfp4), affine: mlx_parts(w, bits: 4, group_size: 32)}
    end

    defp write!(dir, entries, quant) do
      Safetensors.write(Path.join(dir, "model.safetensors"), entries)
      Checkpoint.write_config(dir, %{"quantization" => quant})
    end

    defp open_error(dir), do: assert_raise(ArgumentError, fn -> Checkpoint.open(dir) end).message
    defp load_error(dir), do: assert_raise(ArgumentError, fn -> Checkpoint.load(dir) end).message

    @mx %{"bits" => 4, "group_size" => 32, "mode" => "mxfp4"}

    test "an mxfp4 layer with biases", %{dir: dir, affine: a} do
      write!(dir, entries("l", a), @mx)
      message = open_error(dir)
      assert message =~ ~s(layer 'l' is mode "mxfp4" in config.json, which has no biases)
      assert message =~ "'l.biases'"
    end

    test "mxfp4 scales of a float dtype", %{dir: dir, mx: mx, affine: a} do
      write!(dir, entries("l", %{mx | scales: a.scales}), @mx)
      assert open_error(dir) =~ ~s(whose scales are U8, but 'l.scales' has dtype F32)
    end

    test "mxfp4 scales of the wrong shape", %{dir: dir, mx: mx} do
      bad = %Dense{data: mx.scales.data <> mx.scales.data, shape: {4, 4}, type: {:u, 8}}
      write!(dir, entries("l", %{mx | scales: bad}), @mx)

      assert load_error(dir) =~
               ~r/mxfp4 layer 'l': .* scales have 4 groups of 32 .* not mode mxfp4's layout/

      bad = %Dense{data: mx.scales.data, shape: {2, 4}, type: {:u, 8}}
      write!(dir, entries("l", %{mx | scales: bad}), @mx)
      assert load_error(dir) =~ "differ in their leading axes"
    end

    test "an mxfp4 weight that is not U32", %{dir: dir, mx: mx} do
      bad = %Dense{data: mx.packed.data, shape: {4, 16}, type: {:f, 16}}
      write!(dir, entries("l", %{mx | packed: bad}), @mx)
      assert load_error(dir) =~ "weight has dtype F16, expected U32"
    end

    test "an unknown mode, top level or per layer", %{dir: dir, mx: mx} do
      write!(dir, entries("l", mx), %{"mode" => "mxfp5", "bits" => 4, "group_size" => 32})
      message = open_error(dir)
      assert message =~ ~s(the top-level "mode" is "mxfp5", an unknown quantization mode)
      assert message =~ ~s(expected one of "affine", "mxfp4", "mxfp8", "nvfp4")

      write!(dir, entries("l", mx), Map.put(@mx, "l", %{"mode" => 4}))
      assert open_error(dir) =~ ~s(the "mode" of layer 'l' is 4, an unknown quantization mode)
    end

    test "bits or group size the mode does not have", %{dir: dir, mx: mx} do
      write!(dir, entries("l", mx), Map.put(@mx, "l", %{"mode" => "mxfp4", "group_size" => 64}))
      message = open_error(dir)
      assert message =~ "quantized layer 'l' has bits 4 and group_size 64"
      assert message =~ ~s[mode "mxfp4" has 4 bits and group_size 32 (fixed)]

      write!(dir, entries("l", mx), %{"mode" => "mxfp8", "bits" => 4})
      assert open_error(dir) =~ ~s[has bits 4 and group_size 32 (from config.json's]
    end

    test "microscaled tensors declared affine", %{dir: dir, mx: mx} do
      # a per-layer entry without "mode" is affine (MLX's default), whatever the top level
      write!(dir, entries("l", mx), Map.put(@mx, "l", %{"bits" => 4, "group_size" => 32}))
      message = open_error(dir)
      assert message =~ "layer 'l' has scales but no 'l.biases'"
      assert message =~ "its U8 scales look microscaled"
    end

    test "a layer declared quantized without scales", %{dir: dir, mx: mx} do
      dense = Ref.random_dense({4, 64}, {:f, 32}, 3)
      write!(dir, entries("l", mx) ++ [{"m.weight", dense}], Map.put(@mx, "m", %{"bits" => 8}))

      assert open_error(dir) =~
               ~s(declares layer 'm' quantized but the checkpoint has no 'm.scales')
    end

    test "Hugging Face's quant_method mxfp4 means mxfp4", %{dir: dir, mx: mx} do
      Safetensors.write(Path.join(dir, "model.safetensors"), entries("l", mx))
      Checkpoint.write_config(dir, %{"quantization_config" => %{"quant_method" => "mxfp4"}})
      assert %{config: %{mode: "mxfp4"}} = Checkpoint.load(dir)["l.weight"]
    end

    test "the :mode option for a checkpoint without a quantization block", %{dir: dir, mx: mx} do
      Safetensors.write(Path.join(dir, "model.safetensors"), entries("l", mx))
      assert %{config: %{mode: "mxfp4"}} = Checkpoint.load(dir, mode: :mxfp4)["l.weight"]
      assert_raise ArgumentError, ~r/has bits nil/, fn -> Checkpoint.load(dir) end
    end
  end
end
