defmodule NxQuant.BumblebeeMappingTest do
  # The Nx-free plan NxQuant.Bumblebee carries out: checkpoints written here in the
  # MLX-community layout (test/support/tiny_mlx_checkpoint.ex), opened by NxQuant.Checkpoint.
  use ExUnit.Case, async: true

  alias NxQuant.{BumblebeeMapping, Checkpoint, TinyMlxCheckpoint}

  @moduletag :tmp_dir

  defp plan!(dir, family, opts \\ []) do
    TinyMlxCheckpoint.write!(dir, family, opts)
    ckpt = Checkpoint.open(dir)
    {ckpt, BumblebeeMapping.plan(ckpt.config, BumblebeeMapping.tensors(ckpt))}
  end

  defp by_layer(plan), do: Map.new(plan.params, &{{&1.layer, &1.param}, &1})

  test "tensors/1: logical {out, in} shapes, bits and group size from the checkpoint", %{
    tmp_dir: dir
  } do
    TinyMlxCheckpoint.write!(dir, :llama, bits: 3, group_size: 64, shards: 2)
    t = dir |> Checkpoint.open() |> BumblebeeMapping.tensors()

    assert t["model.layers.0.self_attn.q_proj.weight"] == {:quantized, {64, 64}, 3, 64, {:f, 32}}
    # config.json's per-layer override (8 bits) for this one
    assert t["model.layers.0.mlp.down_proj.weight"] == {:quantized, {64, 128}, 8, 64, {:f, 32}}
    assert t["model.layers.1.mlp.down_proj.weight"] == {:quantized, {64, 128}, 3, 64, {:f, 32}}
    assert t["model.embed_tokens.weight"] == {:quantized, {128, 64}, 3, 64, {:f, 32}}
    assert t["model.norm.weight"] == {:dense, {64}, {:f, 32}}
    refute Map.has_key?(t, "model.layers.0.self_attn.q_proj.scales")
  end

  test "Llama, tied: kernels are transposed views, the head is the embedding", %{tmp_dir: dir} do
    {_ckpt, plan} =
      plan!(dir, :llama,
        extra: [
          {"model.layers.0.self_attn.rotary_emb.inv_freq",
           TinyMlxCheckpoint.random({8}, 1.0, {:f, 32})}
        ]
      )

    assert plan.family == :llama
    assert plan.module == "Bumblebee.Text.Llama"
    assert plan.spec[:tie_word_embeddings] == true
    assert plan.spec[:attention_head_size] == 16
    assert plan.unused == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    # 2 (embedding, head) + 1 (final norm) + 9 per block
    assert length(plan.params) == 3 + 2 * 9
    p = by_layer(plan)

    assert p[{"decoder.blocks.1.self_attention.key", "kernel"}] == %{
             layer: "decoder.blocks.1.self_attention.key",
             param: "kernel",
             source: "model.layers.1.self_attn.k_proj.weight",
             quantized: true,
             transpose: true,
             shape: {64, 32}
           }

    assert %{shape: {128, 64}, transpose: false, quantized: true, source: s} =
             p[{"language_modeling_head.output", "kernel"}]

    assert s == "model.embed_tokens.weight"
    assert p[{"embedder.token_embedding", "kernel"}].source == s
    assert p[{"decoder.blocks.0.ffn.output", "kernel"}].shape == {128, 64}

    assert %{quantized: false, transpose: false, shape: {64}} =
             p[{"decoder.blocks.0.output_norm", "weight"}]

    # every checkpoint tensor but the unused one is taken, each (but the tied one) once
    sources = Enum.map(plan.params, & &1.source)
    assert length(Enum.uniq(sources)) == length(sources) - 1
  end

  test "Mistral maps like Llama; untied: lm_head", %{tmp_dir: dir} do
    {_ckpt, plan} = plan!(dir, :mistral, tied: false)
    assert plan.family == :llama
    assert plan.module == "Bumblebee.Text.Mistral"
    assert plan.spec[:tie_word_embeddings] == false
    assert by_layer(plan)[{"language_modeling_head.output", "kernel"}].source == "lm_head.weight"
    assert plan.unused == []
  end

  test "Gemma and SmolLM3 map like Llama; Gemma's head is always the embedding", %{tmp_dir: dir} do
    {_ckpt, gemma} = plan!(Path.join(dir, "g"), :gemma, tied: false)
    assert gemma.module == "Bumblebee.Text.Gemma"
    assert gemma.spec[:tie_word_embeddings] == true
    head = Enum.find(gemma.params, &(&1.layer == "language_modeling_head.output"))
    assert head.source == "model.embed_tokens.weight"
    assert gemma.unused == ["lm_head.weight"]

    {_ckpt, smol} = plan!(Path.join(dir, "s"), :smollm3, tied: false)
    assert smol.module == "Bumblebee.Text.SmolLm3"
    assert smol.spec[:tie_word_embeddings] == false
    assert length(smol.params) == 3 + 2 * 9
  end

  test "tie_word_embeddings absent: tied exactly when there is no lm_head", %{tmp_dir: dir} do
    {ckpt, _} = plan!(Path.join(dir, "a"), :llama, tied: false)
    tensors = BumblebeeMapping.tensors(ckpt)
    config = Map.delete(ckpt.config, "tie_word_embeddings")
    assert BumblebeeMapping.plan(config, tensors).spec[:tie_word_embeddings] == false

    tied = BumblebeeMapping.plan(config, Map.delete(tensors, "lm_head.weight"))
    assert tied.spec[:tie_word_embeddings] == true
  end

  test "Qwen3: q/k norms of head_dim, head_dim from config.json", %{tmp_dir: dir} do
    {_ckpt, plan} = plan!(dir, :qwen3)
    assert plan.module == "Bumblebee.Text.Qwen3"
    assert plan.spec[:use_qk_norm] == true
    assert plan.spec[:attention_head_size] == 32
    assert length(plan.params) == 3 + 2 * 11
    p = by_layer(plan)
    assert p[{"decoder.blocks.0.self_attention.query", "kernel"}].shape == {64, 128}
    assert p[{"decoder.blocks.0.self_attention.output", "kernel"}].shape == {128, 64}

    assert %{source: "model.layers.1.self_attn.k_norm.weight", shape: {32}, quantized: false} =
             p[{"decoder.blocks.1.self_attention.key_norm", "weight"}]
  end

  test "Qwen2: Qwen3 without q/k norms, with q/k/v biases", %{tmp_dir: dir} do
    {_ckpt, plan} = plan!(dir, :qwen2)
    assert plan.module == "Bumblebee.Text.Qwen3"
    assert plan.spec[:use_qk_norm] == false
    assert plan.spec[:qkv_bias] == true
    # no head_dim in a Qwen2 config: hidden / heads
    assert plan.spec[:attention_head_size] == 16
    p = by_layer(plan)

    assert %{source: "model.layers.0.self_attn.v_proj.bias", shape: {32}, quantized: false} =
             p[{"decoder.blocks.0.self_attention.value_bias", "bias"}]

    refute Map.has_key?(p, {"decoder.blocks.0.self_attention.query_norm", "weight"})
  end

  test "errors name the tensor or the config key", %{tmp_dir: dir} do
    {ckpt, _} = plan!(dir, :llama)
    tensors = BumblebeeMapping.tensors(ckpt)
    config = ckpt.config

    assert_raise ArgumentError,
                 ~r/no tensor "model.layers.1.mlp.up_proj.weight" \(decoder.blocks.1.ffn.intermediate/,
                 fn ->
                   BumblebeeMapping.plan(
                     config,
                     Map.delete(tensors, "model.layers.1.mlp.up_proj.weight")
                   )
                 end

    assert_raise ArgumentError,
                 ~r/q_proj.weight: the checkpoint's tensor has shape \{64, 64\}, config.json implies \{48, 64\}/,
                 fn ->
                   BumblebeeMapping.plan(
                     %{
                       config
                       | "num_attention_heads" => 3,
                         "num_key_value_heads" => 1,
                         "head_dim" => 16
                     },
                     tensors
                   )
                 end

    assert_raise ArgumentError, ~r/no tensor "lm_head.weight"/, fn ->
      BumblebeeMapping.plan(%{config | "tie_word_embeddings" => false}, tensors)
    end

    quantized_norm = Map.put(tensors, "model.norm.weight", {:quantized, {64}, 4, 32, {:f, 32}})

    assert_raise ArgumentError,
                 ~r/output_norm \(weight\) <- model.norm.weight: .* cannot be quantized/,
                 fn ->
                   BumblebeeMapping.plan(config, quantized_norm)
                 end

    assert_raise ArgumentError,
                 ~r/model_type "gpt2" is not supported; expected one of \["gemma", "llama", "mistral", "qwen2", "qwen3", "smollm3"\]/,
                 fn ->
                   BumblebeeMapping.plan(%{config | "model_type" => "gpt2"}, tensors)
                 end

    assert_raise ArgumentError, ~r/no "model_type"/, fn ->
      BumblebeeMapping.plan(Map.delete(config, "model_type"), tensors)
    end

    assert_raise ArgumentError, ~r/config.json: hidden_size is "64", expected > 0/, fn ->
      BumblebeeMapping.plan(%{config | "hidden_size" => "64"}, tensors)
    end

    assert_raise ArgumentError,
                 ~r/num_attention_heads 4 is not a multiple of num_key_value_heads 3/,
                 fn ->
                   BumblebeeMapping.plan(%{config | "num_key_value_heads" => 3}, tensors)
                 end
  end
end
