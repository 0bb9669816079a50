defmodule NxQuant.ConvertModesTest do
  # NxQuant.Convert with a mode and a per-layer recipe (NxQuant.Recipe), and the mix task's
  # --mode / --recipe: the converted checkpoint loads back with each layer's format, its bytes
  # those of quantizing the same tensor in memory, config.json as mlx-lm writes it.
  use ExUnit.Case, async: false

  alias NxQuant.{Checkpoint, Convert, Core, NIF, Recipe, Safetensors}
  alias NxQuant.TestReference, as: Ref

  @moduletag :tmp_dir
  @l "model.layers.0"

  defp source!(dir) do
    tensors = [
      {"model.embed_tokens.weight", Ref.random_dense({16, 64}, {:bf, 16}, 1)},
      {"#{@l}.self_attn.q_proj.weight", Ref.random_dense({64, 64}, {:bf, 16}, 2)},
      {"#{@l}.mlp.experts.gate_proj.weight", Ref.random_dense({4, 32, 64}, {:bf, 16}, 3)},
      {"#{@l}.mlp.shared_experts.gate_proj.weight", Ref.random_dense({32, 64}, {:bf, 16}, 4)},
      {"#{@l}.mlp.router.weight", Ref.random_dense({4, 64}, {:bf, 16}, 5)},
      {"#{@l}.input_layernorm.weight", Ref.random_dense({64}, {:bf, 16}, 6)},
      {"lm_head.weight", Ref.random_dense({16, 64}, {:bf, 16}, 7)}
    ]

    File.mkdir_p!(dir)
    Safetensors.write(Path.join(dir, "model.safetensors"), tensors)
    Checkpoint.write_config(dir, %{"model_type" => "gpt_oss", "torch_dtype" => "bfloat16"})
    Map.new(tensors)
  end

  defp format(qt), do: {qt.config.mode, qt.config.bits, qt.config.group_size}

  test "mxfp4 by default, a recipe for attention, router, shared experts and lm_head", %{
    tmp_dir: dir
  } do
    src = Path.join(dir, "src")
    dst = Path.join(dir, "dst")
    dense = source!(src)

    stats =
      Convert.run(src, dst,
        mode: :mxfp4,
        recipe: "self_attn=affine:8:64, router=affine:8, lm_head=dense, shared_experts=nvfp4"
      )

    assert stats.quantized == 4 and stats.dense == 3
    loaded = Checkpoint.load(dst)

    expected = %{
      "#{@l}.mlp.experts.gate_proj.weight" => {"mxfp4", 4, 32},
      "#{@l}.mlp.shared_experts.gate_proj.weight" => {"nvfp4", 4, 16},
      "#{@l}.self_attn.q_proj.weight" => {"affine", 8, 64},
      "#{@l}.mlp.router.weight" => {"affine", 8, 64}
    }

    for {name, {mode, bits, gs} = f} <- expected do
      qt = loaded[name]
      assert format(qt) == f, name
      assert qt.shape == dense[name].shape and qt.dtype == {:bf, 16}, name

      in_memory =
        Core.quantize(dense[name], mode: String.to_atom(mode), bits: bits, group_size: gs)

      assert Core.parts(qt) == Core.parts(in_memory), name
    end

    for name <- ~w(model.embed_tokens.weight lm_head.weight #{@l}.input_layernorm.weight),
        do: assert(loaded[name] == dense[name], name)

    # no biases for the microscaled layers, U8 scales
    f = Safetensors.open!(Path.join(dst, "model.safetensors"))
    refute Map.has_key?(f.tensors, "#{@l}.mlp.experts.gate_proj.biases")
    assert f.tensors["#{@l}.mlp.experts.gate_proj.scales"].shape == {4, 32, 2}
    assert f.tensors["#{@l}.mlp.experts.gate_proj.scales"].dtype == "U8"

    config = NIF.json_decode(File.read!(Path.join(dst, "config.json")))
    a8 = %{"bits" => 8, "group_size" => 64, "mode" => "affine"}

    assert config["quantization"] == %{
             "bits" => 4,
             "group_size" => 32,
             "mode" => "mxfp4",
             "#{@l}.self_attn.q_proj" => a8,
             "#{@l}.mlp.router" => a8,
             "#{@l}.mlp.shared_experts.gate_proj" => %{
               "bits" => 4,
               "group_size" => 16,
               "mode" => "nvfp4"
             }
           }

    assert config["quantization_config"] == config["quantization"]
  end

  test "a rule on an embedding quantizes it; --skip wins over rules", %{tmp_dir: dir} do
    src = Path.join(dir, "src")
    dense = source!(src)

    Convert.run(src, Path.join(dir, "a"),
      recipe: [{"embed_tokens", [mode: :mxfp8]}, {"q_proj", :dense}],
      skip: ["router"]
    )

    loaded = Checkpoint.load(Path.join(dir, "a"))
    assert format(loaded["model.embed_tokens.weight"]) == {"mxfp8", 8, 32}
    assert loaded["#{@l}.self_attn.q_proj.weight"] == dense["#{@l}.self_attn.q_proj.weight"]
    assert loaded["#{@l}.mlp.router.weight"] == dense["#{@l}.mlp.router.weight"]
    # the default: 4-bit affine, group 64
    assert format(loaded["lm_head.weight"]) == {"affine", 4, 64}
  end

  test "the mix task's --mode and --recipe", %{tmp_dir: dir} do
    src = Path.join(dir, "src")
    source!(src)
    Mix.shell(Mix.Shell.Process)

    try do
      out = Path.join(dir, "out")

      Mix.Tasks.NxQuant.Convert.run([
        src,
        out,
        "--quiet",
        "--mode",
        "nvfp4",
        "--recipe",
        "mlp.experts=mxfp4,layers.*.self_attn=affine:6:32"
      ])

      loaded = Checkpoint.load(out)
      assert format(loaded["#{@l}.mlp.experts.gate_proj.weight"]) == {"mxfp4", 4, 32}
      assert format(loaded["#{@l}.mlp.shared_experts.gate_proj.weight"]) == {"nvfp4", 4, 16}
      assert format(loaded["#{@l}.self_attn.q_proj.weight"]) == {"affine", 6, 32}
      assert Checkpoint.open(out).config["quantization"]["mode"] == "nvfp4"

      assert_raise Mix.Error,
                   ~r/--mode must be one of affine, mxfp4, mxfp8, nvfp4, got: fp4/,
                   fn ->
                     Mix.Tasks.NxQuant.Convert.run([src, Path.join(dir, "x"), "--mode", "fp4"])
                   end

      assert_raise ArgumentError, ~r/--recipe\), rule "a=mxfp4:8"/, fn ->
        Mix.Tasks.NxQuant.Convert.run([src, Path.join(dir, "x"), "--recipe", "a=mxfp4:8"])
      end

      refute File.exists?(Path.join(dir, "x"))
    after
      Mix.shell(Mix.Shell.IO)
    end
  end

  test "bad modes, bits and rules are errors naming the option", %{tmp_dir: dir} do
    src = Path.join(dir, "src")
    source!(src)
    dst = Path.join(dir, "dst")

    run = fn opts ->
      assert_raise(ArgumentError, fn -> Convert.run(src, dst, opts) end).message
    end

    assert run.(mode: :fp4) =~ "convert option :mode must be one of"
    assert run.(mode: :mxfp4, bits: 8) =~ "convert mode :mxfp4 has 4 bits"
    assert run.(mode: :nvfp4, group_size: 32) =~ "convert mode :nvfp4 has group_size 16"
    assert run.(bits: 7) =~ "convert option :bits must be one of"

    for {recipe, message} <- [
          {"x=fp4", ~s(unknown format "fp4"; expected dense or a mode: affine, mxfp4)},
          {"x=mxfp4:8", ~s[mode "mxfp4" has 4 bits and group_size 32 (fixed)]},
          {"x=nvfp4:4:32", ~s[mode "nvfp4" has 4 bits and group_size 16 (fixed)]},
          {"x=affine:7", "bits 7 and group_size 64"},
          {"x=affine:4:48", "bits 4 and group_size 48"},
          {"x=affine:four", ~s("four" is not an integer)},
          {"x=affine:4:64:1", "expected MODE[:BITS[:GROUP_SIZE]]"},
          {"mlp.experts", "expected PATTERN=FORMAT"},
          {"=mxfp4", "the pattern is empty"},
          {"a..b=mxfp4", "the pattern has an empty component"}
        ] do
      error = run.(recipe: recipe)
      assert error =~ ~s(convert option :recipe \(--recipe\), rule #{inspect(recipe)}), recipe
      assert error =~ message, recipe
    end

    assert run.(recipe: [{"x", [mode: :fp4]}]) =~ ~s(unknown mode "fp4")
    assert run.(recipe: [{"x", [bits: 8, size: 1]}]) =~ "keyword list of :mode, :bits"
    assert run.(recipe: [:x]) =~ "a rule is {pattern, format}"
    assert run.(recipe: 5) =~ "must be a string"
    refute File.exists?(dst)
  end

  test "a function recipe (mlx-lm's quant_predicate)", %{tmp_dir: dir} do
    src = Path.join(dir, "src")
    dense = source!(src)
    me = self()

    predicate = fn path, info ->
      send(me, {:asked, path, info.shape})

      cond do
        String.ends_with?(path, "router") -> [bits: 8, group_size: 64]
        String.contains?(path, "experts") -> [mode: :mxfp4]
        path == "lm_head" -> false
        true -> nil
      end
    end

    Convert.run(src, Path.join(dir, "a"), recipe: predicate)
    loaded = Checkpoint.load(Path.join(dir, "a"))
    assert format(loaded["#{@l}.mlp.router.weight"]) == {"affine", 8, 64}
    assert format(loaded["#{@l}.mlp.experts.gate_proj.weight"]) == {"mxfp4", 4, 32}
    assert format(loaded["#{@l}.mlp.shared_experts.gate_proj.weight"]) == {"mxfp4", 4, 32}
    assert format(loaded["#{@l}.self_attn.q_proj.weight"]) == {"affine", 4, 64}
    assert loaded["lm_head.weight"] == dense["lm_head.weight"]
    # asked with the layer path and the header entry; never for norms
    assert_received {:asked, "#{@l}.mlp.experts.gate_proj", {4, 32, 64}}
    refute_received {:asked, "#{@l}.input_layernorm", _}

    bad = fn _, _ -> [mode: :mxfp4, bits: 8] end

    message =
      assert_raise(ArgumentError, fn -> Convert.run(src, Path.join(dir, "b"), recipe: bad) end).message

    assert message =~ "convert option :recipe: the function's answer [mode: :mxfp4, bits: 8]"
    assert message =~ ~s[mode "mxfp4" has 4 bits and group_size 32 (fixed)]

    assert_raise ArgumentError, ~r/the function returned :yes for layer/, fn ->
      Convert.run(src, Path.join(dir, "c"), recipe: fn _, _ -> :yes end)
    end
  end

  describe "Recipe.match/2" do
    test "patterns match whole, contiguous path components; * is any one; first rule wins" do
      rules =
        Recipe.parse!(
          "layers.1.mlp=dense,mlp.experts=mxfp4,layers.*.self_attn=affine:8,mlp=nvfp4"
        )

      mx = %{mode: "mxfp4", bits: 4, group_size: 32}
      a8 = %{mode: "affine", bits: 8, group_size: 64}
      nv = %{mode: "nvfp4", bits: 4, group_size: 16}

      assert Recipe.match(rules, "model.layers.0.mlp.experts.gate_proj") == mx
      assert Recipe.match(rules, "model.layers.1.mlp.experts.gate_proj") == :dense
      assert Recipe.match(rules, "model.layers.0.mlp.shared_experts.gate_proj") == nv
      assert Recipe.match(rules, "model.layers.7.self_attn.q_proj") == a8
      assert Recipe.match(rules, "model.self_attn.q_proj") == nil
      assert Recipe.match(rules, "model.layers.0.mlpx.up") == nil
      assert Recipe.match(rules, "mlp") == nv
      assert Recipe.match([], "mlp") == nil
    end
  end
end
