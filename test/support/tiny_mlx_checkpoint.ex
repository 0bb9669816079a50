defmodule NxQuant.TinyMlxCheckpoint do
  @moduledoc """
  Tiny random-weight decoder checkpoints in the MLX-community layout, written by the tests
  (Nx-free): config.json with mlx-lm's `"quantization"` block (one per-layer override), every
  linear weight and the embedding quantized as `NAME.weight`/`.scales`/`.biases`, norms (and
  Qwen2's q/k/v biases) dense, optionally split into two shards with
  `model.safetensors.index.json`. `dequantized/2` writes the same model dense, in the
  Hugging Face layout Bumblebee's own loader reads.
  """

  alias NxQuant.{Checkpoint, Core, Dense, Safetensors, TestFloat}

  @doc "Default dimensions per family (Qwen3's head_dim differs from hidden / heads)."
  def dims(family) do
    base = %{vocab: 128, hidden: 64, intermediate: 128, layers: 2, heads: 4, kv_heads: 2}

    case family do
      :qwen3 -> Map.put(base, :head_dim, 32)
      _ -> Map.put(base, :head_dim, 16)
    end
  end

  @doc """
  Writes the checkpoint to `dir` and returns `%{config:, tensors:}` (`tensors` the
  quantized/dense values written, by name). Options: `:tied` (default true), `:shards`
  (1 or 2), `:bits` (4), `:group_size` (32), `:dtype` (`{:f, 32}`), `:seed`, `:extra`
  (more `{name, Dense}` entries), `:bias_scale` (Qwen2's biases, default 0.5; 0.0: zeros),
  `:dims` (overrides).
  """
  def write!(dir, family, opts \\ []) do
    d = Map.merge(dims(family), Map.new(Keyword.get(opts, :dims, [])))
    tied = Keyword.get(opts, :tied, true)
    dtype = Keyword.get(opts, :dtype, {:f, 32})
    bits = Keyword.get(opts, :bits, 4)
    gs = Keyword.get(opts, :group_size, 32)
    bias_scale = Keyword.get(opts, :bias_scale, 0.5)
    :rand.seed(:exsss, {Keyword.get(opts, :seed, 18), 7, 3})

    q = fn shape, scale, bits ->
      Core.quantize(random(shape, scale, dtype), type: {:s, bits}, group_size: gs)
    end

    qd = d.heads * d.head_dim
    kvd = d.kv_heads * d.head_dim

    layers =
      for n <- 0..(d.layers - 1), reduce: [] do
        acc ->
          m = "model.layers.#{n}"

          base = [
            {"#{m}.self_attn.q_proj.weight", q.({qd, d.hidden}, 0.25, bits)},
            {"#{m}.self_attn.k_proj.weight", q.({kvd, d.hidden}, 0.25, bits)},
            {"#{m}.self_attn.v_proj.weight", q.({kvd, d.hidden}, 0.25, bits)},
            {"#{m}.self_attn.o_proj.weight", q.({d.hidden, qd}, 0.25, bits)},
            {"#{m}.mlp.gate_proj.weight", q.({d.intermediate, d.hidden}, 0.25, bits)},
            {"#{m}.mlp.up_proj.weight", q.({d.intermediate, d.hidden}, 0.25, bits)},
            # one layer at other bits: config.json's per-layer override
            {"#{m}.mlp.down_proj.weight",
             q.({d.hidden, d.intermediate}, 0.2, if(n == 0, do: 8, else: bits))},
            {"#{m}.input_layernorm.weight", norm(d.hidden, dtype)},
            {"#{m}.post_attention_layernorm.weight", norm(d.hidden, dtype)}
          ]

          extra =
            case family do
              :qwen3 ->
                [
                  {"#{m}.self_attn.q_norm.weight", norm(d.head_dim, dtype)},
                  {"#{m}.self_attn.k_norm.weight", norm(d.head_dim, dtype)}
                ]

              :qwen2 ->
                [
                  {"#{m}.self_attn.q_proj.bias", random({qd}, bias_scale, dtype)},
                  {"#{m}.self_attn.k_proj.bias", random({kvd}, bias_scale, dtype)},
                  {"#{m}.self_attn.v_proj.bias", random({kvd}, bias_scale, dtype)}
                ]

              _ ->
                []
            end

          acc ++ base ++ extra
      end

    tensors =
      [{"model.embed_tokens.weight", q.({d.vocab, d.hidden}, 1.0, bits)}] ++
        layers ++
        [{"model.norm.weight", norm(d.hidden, dtype)}] ++
        if(tied, do: [], else: [{"lm_head.weight", q.({d.vocab, d.hidden}, 0.25, bits)}]) ++
        Keyword.get(opts, :extra, [])

    config = Map.merge(hf_config(family, d, tied), Checkpoint.quantization_config(tensors))
    File.mkdir_p!(dir)
    write_shards!(dir, tensors, Keyword.get(opts, :shards, 1))
    Checkpoint.write_config(dir, config)
    %{config: config, tensors: Map.new(tensors)}
  end

  @doc """
  Writes the dequantized model to `dir` (Hugging Face layout, no quantization block): what
  a dense Bumblebee load of the same weights reads.
  """
  def dequantized!(dir, %{config: config, tensors: tensors}) do
    File.mkdir_p!(dir)

    entries =
      tensors
      |> Enum.sort()
      |> Enum.map(fn
        {name, %Dense{} = t} -> {name, t}
        {name, qt} -> {name, Core.dequantize(qt)}
      end)

    Safetensors.write(Path.join(dir, "model.safetensors"), entries, %{"format" => "pt"})

    Checkpoint.write_config(
      dir,
      Map.drop(config, ["quantization", "quantization_config"])
    )
  end

  @doc "The Hugging Face config.json fields of a family."
  def hf_config(family, d, tied) do
    {type, arch} =
      case family do
        :llama -> {"llama", "LlamaForCausalLM"}
        :mistral -> {"mistral", "MistralForCausalLM"}
        :gemma -> {"gemma", "GemmaForCausalLM"}
        :smollm3 -> {"smollm3", "SmolLM3ForCausalLM"}
        :qwen2 -> {"qwen2", "Qwen2ForCausalLM"}
        :qwen3 -> {"qwen3", "Qwen3ForCausalLM"}
      end

    %{
      "model_type" => type,
      "architectures" => [arch],
      "vocab_size" => d.vocab,
      "hidden_size" => d.hidden,
      "intermediate_size" => d.intermediate,
      "num_hidden_layers" => d.layers,
      "num_attention_heads" => d.heads,
      "num_key_value_heads" => d.kv_heads,
      "head_dim" => d.head_dim,
      "hidden_act" => "silu",
      "max_position_embeddings" => 256,
      "rms_norm_eps" => 1.0e-5,
      "rope_theta" => 10_000.0,
      "tie_word_embeddings" => tied,
      "bos_token_id" => 1,
      "eos_token_id" => 2,
      "pad_token_id" => 0,
      "torch_dtype" => "float32"
    }
    # Qwen2's configs have no head_dim (hidden_size / num_attention_heads)
    |> Map.drop(if(family == :qwen2, do: ["head_dim"], else: []))
  end

  @doc "Deterministic uniform values in [-scale, scale) as an `NxQuant.Dense`."
  def random(shape, scale, dtype) do
    n = shape |> Tuple.to_list() |> Enum.product()
    values = for _ <- 1..n, do: (2 * :rand.uniform() - 1) * scale
    Dense.new(TestFloat.encode(values, dtype), shape, dtype)
  end

  defp norm(n, dtype) do
    values = for _ <- 1..n, do: 1.0 + (:rand.uniform() - 0.5) * 0.4
    Dense.new(TestFloat.encode(values, dtype), {n}, dtype)
  end

  defp write_shards!(dir, tensors, 1),
    do: Safetensors.write(Path.join(dir, "model.safetensors"), tensors, %{"format" => "mlx"})

  defp write_shards!(dir, tensors, shards) do
    chunks = Enum.chunk_every(tensors, div(length(tensors) + shards - 1, shards))
    count = length(chunks)

    weight_map =
      for {chunk, i} <- Enum.with_index(chunks, 1), reduce: %{} do
        acc ->
          file = "model-#{pad(i)}-of-#{pad(count)}.safetensors"
          Safetensors.write(Path.join(dir, file), chunk, %{"format" => "mlx"})

          for {name, t} <- chunk,
              {piece, _} <- Safetensors.pieces(name, t),
              into: acc,
              do: {piece, file}
      end

    File.write!(
      Path.join(dir, "model.safetensors.index.json"),
      NxQuant.NIF.json_encode(%{"metadata" => %{}, "weight_map" => weight_map}, true)
    )
  end

  defp pad(i), do: String.pad_leading(Integer.to_string(i), 5, "0")
end
