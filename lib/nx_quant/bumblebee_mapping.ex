defmodule NxQuant.BumblebeeMapping do
  @moduledoc """
  Which tensor of an MLX-community checkpoint becomes which parameter of Bumblebee's model
  (Nx-free; `NxQuant.Bumblebee` only carries the plan out).

  `plan/2` takes config.json (a map) and the checkpoint's tensors
  (`%{name => {:quantized, shape, bits, group_size, dtype} | {:dense, shape, type}}`, the
  logical shapes `tensors/1` reads from an `NxQuant.Checkpoint`'s headers) and returns

    * `:family` - `:llama` (Llama, Mistral, Gemma and SmolLM3 checkpoints: the same tensors),
      `:qwen2` or `:qwen3`;
    * `:module` - Bumblebee's module name for it (a string, this module knows no Bumblebee);
    * `:spec` - the Bumblebee spec options the plan assumes (`tie_word_embeddings` decided
      here, so the model and the params agree), plus `:qkv_bias` for Qwen2;
    * `:params` - one entry per Bumblebee parameter: `%{layer:, param:, source:, quantized:,
      transpose:, shape:}`, `shape` the shape Bumblebee's model expects. `transpose: true`
      means the checkpoint's `{out, in}` weight is Axon's `{in, out}` dense kernel: for a
      quantized weight a free transposed view, nothing moves. Embeddings and the tied (or
      untied) language-modelling head keep the `{vocab, hidden}` layout: Bumblebee gathers
      rows of the first (`Nx.take`, which dequantizes only the rows taken) and contracts the
      second on its axis 1 (`Layers.dense_transposed`: the fused kernel as stored).
      A tied head is the embedding's tensor again (`source` the same name).
    * `:unused` - checkpoint tensors no parameter takes (e.g. `rotary_emb.inv_freq`).

  Every problem raises `ArgumentError` naming the tensor or config key: a missing tensor, a
  shape that disagrees with config.json, a quantized norm or bias, an unknown model type.
  """

  # Gemma and SmolLM3 name and lay out their tensors as Llama does (Bumblebee's Gemma computes
  # differently - (1 + w) norms, a scaled embedding - from the same parameters).
  @families %{
    "llama" => :llama,
    "mistral" => :llama,
    "gemma" => :llama,
    "smollm3" => :llama,
    "qwen2" => :qwen2,
    "qwen3" => :qwen3
  }

  # Bumblebee's Gemma always ties its head to the embedding.
  @always_tied ["gemma"]

  @modules %{
    "llama" => "Bumblebee.Text.Llama",
    "mistral" => "Bumblebee.Text.Mistral",
    "gemma" => "Bumblebee.Text.Gemma",
    "smollm3" => "Bumblebee.Text.SmolLm3",
    # Bumblebee v0.7 has no Qwen2; its Qwen3 without q/k norms plus q/k/v biases is Qwen2.
    "qwen2" => "Bumblebee.Text.Qwen3",
    "qwen3" => "Bumblebee.Text.Qwen3"
  }

  @type tensor_info ::
          {:quantized, tuple(), pos_integer(), pos_integer(), tuple()}
          | {:dense, tuple(), tuple()}
  @type entry :: %{
          layer: String.t(),
          param: String.t(),
          source: String.t(),
          quantized: boolean(),
          transpose: boolean(),
          shape: tuple()
        }

  @doc "The model types `plan/2` covers."
  def model_types, do: @families |> Map.keys() |> Enum.sort()

  @doc """
  The tensors of an opened `NxQuant.Checkpoint` as `plan/2` takes them: a quantized layer's
  `NAME.weight` with its logical `{out, in}` shape (from the packed words and the bits), its
  bits, group size and scales' dtype; every other tensor with its shape and type.
  """
  @spec tensors(NxQuant.Checkpoint.t()) :: %{String.t() => tensor_info()}
  def tensors(%NxQuant.Checkpoint{} = ckpt) do
    info = fn name -> ckpt.files[ckpt.shard_of[name]].tensors[name] end

    Map.new(ckpt.layers, fn
      {name, {:quantized, base, bits, gs, mode}} ->
        w = info.("#{base}.weight").shape
        last = tuple_size(w) - 1
        shape = put_elem(w, last, div(elem(w, last) * 32, bits))
        # microscaled scales are uint8 codes: the layer's type is the checkpoint's dtype
        type = if mode == "affine", do: info.("#{base}.scales").type, else: ckpt.dtype
        {name, {:quantized, shape, bits, gs, type}}

      {name, {:dense, name}} ->
        %{shape: shape, type: type} = info.(name)
        {name, {:dense, shape, type}}
    end)
  end

  @doc "The plan for `config` (config.json) and `tensors` (see the moduledoc)."
  @spec plan(map(), %{String.t() => tensor_info()}) :: map()
  def plan(config, tensors) when is_map(config) and is_map(tensors) do
    model_type = model_type!(config)
    family = Map.fetch!(@families, model_type)
    dims = dims!(config, family)

    tied =
      case config["tie_word_embeddings"] do
        _ when model_type in @always_tied -> true
        tied when is_boolean(tied) -> tied
        nil -> not Map.has_key?(tensors, "lm_head.weight")
        other -> raise ArgumentError, "config.json: tie_word_embeddings is #{inspect(other)}"
      end

    entries = entries(family, dims, tied)
    params = Enum.map(entries, &resolve!(&1, tensors))
    used = MapSet.new(params, & &1.source)

    %{
      family: family,
      module: Map.fetch!(@modules, model_type),
      spec: spec_options(family, dims, tied),
      params: params,
      unused: tensors |> Map.keys() |> Enum.reject(&MapSet.member?(used, &1)) |> Enum.sort()
    }
  end

  # ---- config ----------------------------------------------------------------------------

  defp model_type!(config) do
    case config["model_type"] do
      type when is_map_key(@families, type) ->
        type

      nil ->
        raise ArgumentError,
              "config.json has no \"model_type\"; expected one of #{inspect(model_types())}"

      type ->
        raise ArgumentError,
              "config.json: model_type #{inspect(type)} is not supported; expected one of " <>
                inspect(model_types())
    end
  end

  defp dims!(config, family) do
    int = fn key, default ->
      case config[key] || default do
        n when is_integer(n) and n > 0 -> n
        nil -> raise ArgumentError, "config.json has no #{inspect(key)}"
        other -> raise ArgumentError, "config.json: #{key} is #{inspect(other)}, expected > 0"
      end
    end

    hidden = int.("hidden_size", nil)
    heads = int.("num_attention_heads", nil)

    if rem(hidden, heads) != 0 and not is_map_key(config, "head_dim") do
      raise ArgumentError,
            "config.json: hidden_size #{hidden} is not a multiple of num_attention_heads " <>
              "#{heads} and there is no head_dim"
    end

    kv = int.("num_key_value_heads", heads)

    if rem(heads, kv) != 0 do
      raise ArgumentError,
            "config.json: num_attention_heads #{heads} is not a multiple of " <>
              "num_key_value_heads #{kv}"
    end

    %{
      family: family,
      vocab: int.("vocab_size", nil),
      hidden: hidden,
      intermediate: int.("intermediate_size", nil),
      layers: int.("num_hidden_layers", nil),
      heads: heads,
      kv_heads: kv,
      head_dim: int.("head_dim", div(hidden, heads))
    }
  end

  defp spec_options(family, d, tied) do
    base = [
      vocab_size: d.vocab,
      hidden_size: d.hidden,
      intermediate_size: d.intermediate,
      num_blocks: d.layers,
      num_attention_heads: d.heads,
      num_key_value_heads: d.kv_heads,
      attention_head_size: d.head_dim,
      tie_word_embeddings: tied
    ]

    case family do
      :qwen2 -> base ++ [use_qk_norm: false, qkv_bias: true]
      :qwen3 -> base ++ [use_qk_norm: true]
      :llama -> base
    end
  end

  # ---- the per-family table ----------------------------------------------------------------

  # {bumblebee layer, param, checkpoint name, kind, expected bumblebee shape}
  # kind: :kernel (dense {out, in} -> {in, out}), :rows ({vocab, hidden} as stored), :vector
  defp entries(family, d, tied) do
    q = d.heads * d.head_dim
    kv = d.kv_heads * d.head_dim

    blocks =
      for n <- 0..(d.layers - 1)//1 do
        b = "decoder.blocks.#{n}"
        m = "model.layers.#{n}"

        attention = [
          {"#{b}.self_attention.query", "kernel", "#{m}.self_attn.q_proj.weight", :kernel,
           {d.hidden, q}},
          {"#{b}.self_attention.key", "kernel", "#{m}.self_attn.k_proj.weight", :kernel,
           {d.hidden, kv}},
          {"#{b}.self_attention.value", "kernel", "#{m}.self_attn.v_proj.weight", :kernel,
           {d.hidden, kv}},
          {"#{b}.self_attention.output", "kernel", "#{m}.self_attn.o_proj.weight", :kernel,
           {q, d.hidden}}
        ]

        extra =
          case family do
            :qwen3 ->
              [
                {"#{b}.self_attention.query_norm", "weight", "#{m}.self_attn.q_norm.weight",
                 :vector, {d.head_dim}},
                {"#{b}.self_attention.key_norm", "weight", "#{m}.self_attn.k_norm.weight",
                 :vector, {d.head_dim}}
              ]

            :qwen2 ->
              for {name, proj, size} <- [{"query", "q", q}, {"key", "k", kv}, {"value", "v", kv}] do
                {"#{b}.self_attention.#{name}_bias", "bias", "#{m}.self_attn.#{proj}_proj.bias",
                 :vector, {size}}
              end

            :llama ->
              []
          end

        attention ++
          extra ++
          [
            {"#{b}.self_attention_norm", "weight", "#{m}.input_layernorm.weight", :vector,
             {d.hidden}},
            {"#{b}.ffn.gate", "kernel", "#{m}.mlp.gate_proj.weight", :kernel,
             {d.hidden, d.intermediate}},
            {"#{b}.ffn.intermediate", "kernel", "#{m}.mlp.up_proj.weight", :kernel,
             {d.hidden, d.intermediate}},
            {"#{b}.ffn.output", "kernel", "#{m}.mlp.down_proj.weight", :kernel,
             {d.intermediate, d.hidden}},
            {"#{b}.output_norm", "weight", "#{m}.post_attention_layernorm.weight", :vector,
             {d.hidden}}
          ]
      end

    head_source = if tied, do: "model.embed_tokens.weight", else: "lm_head.weight"

    [
      {"embedder.token_embedding", "kernel", "model.embed_tokens.weight", :rows,
       {d.vocab, d.hidden}}
    ] ++
      List.flatten(blocks) ++
      [
        {"output_norm", "weight", "model.norm.weight", :vector, {d.hidden}},
        {"language_modeling_head.output", "kernel", head_source, :rows, {d.vocab, d.hidden}}
      ]
  end

  defp resolve!({layer, param, source, kind, shape}, tensors) do
    where = "#{layer} (#{param}) <- #{source}"

    {quantized, stored} =
      case Map.fetch(tensors, source) do
        {:ok, {:quantized, stored, _bits, _gs, _dtype}} ->
          {true, stored}

        {:ok, {:dense, stored, _type}} ->
          {false, stored}

        :error ->
          raise ArgumentError, "the checkpoint has no tensor #{inspect(source)} (#{where})"
      end

    if quantized and kind == :vector do
      raise ArgumentError, "#{where}: a #{tuple_size(shape)}-D #{param} cannot be quantized"
    end

    transpose = kind == :kernel
    expected = if transpose, do: {elem(shape, 1), elem(shape, 0)}, else: shape

    if stored != expected do
      raise ArgumentError,
            "#{where}: the checkpoint's tensor has shape #{inspect(stored)}, config.json " <>
              "implies #{inspect(expected)}"
    end

    %{
      layer: layer,
      param: param,
      source: source,
      quantized: quantized,
      transpose: transpose,
      shape: shape
    }
  end
end
