if Code.ensure_loaded?(Bumblebee) do
  defmodule NxQuant.BumblebeeTest do
    # NxQuant.Bumblebee against real Bumblebee: for each family a tiny random-weight checkpoint
    # written here in the MLX-community layout (test/support/tiny_mlx_checkpoint.ex: 4-bit g32
    # with one 8-bit layer, f32 scales), loaded quantized, and the same weights dequantized,
    # written in the Hugging Face layout and loaded dense by Bumblebee's own loader. Logits and
    # greedy generation (Nx.Defn.Evaluator, default backend NxQuant.Backend) must agree.
    use ExUnit.Case, async: false
    @moduletag :bumblebee
    @moduletag :tmp_dir

    alias NxQuant.TinyMlxCheckpoint

    # f32's unit roundoff.
    @u :math.pow(2, -24)

    setup do
      previous = Nx.default_backend(NxQuant.Backend)
      on_exit(fn -> Nx.default_backend(previous) end)
      :ok
    end

    @families [
      {:llama, [tied: true]},
      {:mistral, [tied: false, shards: 2]},
      {:qwen2, [tied: true]},
      {:qwen3, [tied: true, shards: 2]},
      {:gemma, [tied: true]},
      {:smollm3, [tied: false]}
    ]

    for {family, opts} <- @families do
      @family family
      @opts opts

      test "#{family}: quantized params, logits and greedy tokens match the dense model", %{
        tmp_dir: dir
      } do
        ckpt = TinyMlxCheckpoint.write!(Path.join(dir, "mlx"), @family, @opts)
        TinyMlxCheckpoint.dequantized!(Path.join(dir, "dense"), ckpt)

        {:ok, q} = NxQuant.Bumblebee.load_model(Path.join(dir, "mlx"))
        dense = dense_load!(@family, Path.join(dir, "dense"), q)

        assert_quantized_params(q, ckpt, @opts[:tied])
        assert q.spec == dense.spec

        inputs = %{
          "input_ids" =>
            Nx.tensor([[5, 9, 33, 71, 100, 4, 18, 64], [0, 0, 0, 7, 11, 120, 3, 40]]),
          "attention_mask" => Nx.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
        }

        lq = logits(q, inputs)
        ld = logits(dense, inputs)
        assert Nx.shape(lq) == {2, 8, 128}

        # Every weight the fused kernels multiply by is the f32 value the dense model has (f32
        # scales: MLX's dequantize is exactly scale * q + bias), so the logits differ only by
        # f32 accumulation order: at most K * u relative (K <= 128 terms) per matmul, over the
        # 6 chained matmul stages of a block (q/k/v, scores, values, output, gate/up, down)
        # times 2 blocks plus the head, relative to the largest logit.
        scale = ld |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
        tol = (6 * 2 + 1) * 128 * @u * scale
        err = Nx.subtract(lq, ld) |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
        assert err <= tol, "max |logits diff| #{err} > #{tol} (max |logit| #{scale})"
        # the weights are not trivial: the logits spread
        assert scale > 1.0

        tq = generate(q, inputs)
        td = generate(dense, inputs)
        assert Nx.shape(tq) == {2, 8}
        assert Nx.to_list(tq) == Nx.to_list(td)
      end
    end

    test "qwen2 with zero biases is Bumblebee's own Qwen3 without q/k norms", %{tmp_dir: dir} do
      # Independent of the bias-layer rewrite: Bumblebee's stock Qwen3 (use_qk_norm: false),
      # loaded by its own loader from the dense checkpoint (the zero biases left unused).
      ckpt = TinyMlxCheckpoint.write!(Path.join(dir, "mlx"), :qwen2, bias_scale: 0.0)
      TinyMlxCheckpoint.dequantized!(Path.join(dir, "dense"), ckpt)
      {:ok, q} = NxQuant.Bumblebee.load_model(Path.join(dir, "mlx"))

      spec =
        Bumblebee.Text.Qwen3
        |> Bumblebee.configure(architecture: :for_causal_language_modeling)
        |> Bumblebee.HuggingFace.Transformers.Config.load(ckpt.config)
        |> Bumblebee.configure(use_qk_norm: false, attention_head_size: 16)

      {:ok, stock} = Bumblebee.load_model({:local, Path.join(dir, "dense")}, spec: spec)
      assert Map.has_key?(q.params.data, "decoder.blocks.0.self_attention.query_bias")
      refute Map.has_key?(stock.params.data, "decoder.blocks.0.self_attention.query_bias")

      inputs = %{"input_ids" => Nx.tensor([[5, 9, 33, 71, 100, 4, 18, 64]])}
      lq = logits(q, inputs)
      ls = logits(stock, inputs)
      # as in the per-family test: f32 accumulation order only
      scale = ls |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
      err = Nx.subtract(lq, ls) |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
      assert err <= (6 * 2 + 1) * 128 * @u * scale
      assert scale > 1.0
    end

    test "bf16 (MLX-community's dtype): computes in bf16, within bf16 rounding of the f32 model",
         %{tmp_dir: dir} do
      ckpt = TinyMlxCheckpoint.write!(Path.join(dir, "mlx"), :qwen3, dtype: {:bf, 16})
      TinyMlxCheckpoint.dequantized!(Path.join(dir, "dense"), ckpt)
      {:ok, q} = NxQuant.Bumblebee.load_model(Path.join(dir, "mlx"))
      # Bumblebee's loader casts the bf16 weights to its f32 params: the f32 model of the same
      # weights (every bf16 value is exact in f32)
      {:ok, dense} = Bumblebee.load_model({:local, Path.join(dir, "dense")})
      assert Nx.type(dense.params.data["output_norm"]["weight"]) == {:f, 32}

      inputs = %{"input_ids" => Nx.tensor([[5, 9, 33, 71, 100, 4, 18, 64]])}
      lq = logits(q, inputs)
      ld = logits(dense, inputs)
      assert Nx.type(lq) == {:bf, 16}

      # Each bf16 rounding is <= 2^-8 relative; a block rounds ~30 times on the way (norms 4,
      # q/k/v, q/k norms 4, RoPE 3, scores, softmax 3, values, output, residual, norm 4,
      # gate/up 2, SiLU 2, product, down, residual), 2 blocks + final norm + head ~65: at most
      # 65 * 2^-8 of the largest logit if nothing amplifies.
      scale = ld |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
      err = Nx.subtract(Nx.as_type(lq, :f32), ld) |> Nx.abs() |> Nx.reduce_max() |> Nx.to_number()
      assert err <= 65 * :math.pow(2, -8) * scale, "#{err} vs max |logit| #{scale}"
      assert scale > 1.0

      tokens = generate(q, Map.put(inputs, "attention_mask", Nx.broadcast(1, {1, 8})))
      assert Nx.shape(tokens) == {1, 8}
    end

    test "Bumblebee.Text.generation serves the quantized model (token ids as text)", %{
      tmp_dir: dir
    } do
      ckpt = TinyMlxCheckpoint.write!(Path.join(dir, "mlx"), :qwen3, [])
      TinyMlxCheckpoint.dequantized!(Path.join(dir, "dense"), ckpt)
      {:ok, q} = NxQuant.Bumblebee.load_model(Path.join(dir, "mlx"))
      {:ok, dense} = Bumblebee.load_model({:local, Path.join(dir, "dense")})

      previous = Nx.global_default_backend(NxQuant.Backend)
      on_exit(fn -> Nx.global_default_backend(previous) end)

      serving =
        Bumblebee.Text.generation(q, %NxQuant.TestIdTokenizer{}, generation_config(),
          defn_options: [compiler: Nx.Defn.Evaluator]
        )

      %{results: [%{text: text, token_summary: summary}]} =
        Nx.Serving.run(serving, "5 9 33 71 100")

      expected =
        generate(dense, %{
          "input_ids" => Nx.tensor([[5, 9, 33, 71, 100]]),
          "attention_mask" => Nx.tensor([[1, 1, 1, 1, 1]])
        })

      assert text == expected |> Nx.to_flat_list() |> Enum.reject(&(&1 < 3)) |> Enum.join(" ")
      assert summary.input == 5
      assert summary.output == 8
    end

    test "load_model: errors are {:error, message}", %{tmp_dir: dir} do
      %{config: config} = TinyMlxCheckpoint.write!(dir, :llama, [])
      # config.json promises a third block the files do not have
      NxQuant.Checkpoint.write_config(dir, %{config | "num_hidden_layers" => 3})
      assert {:error, msg} = NxQuant.Bumblebee.load_model(dir)
      assert msg =~ ~s(no tensor "model.layers.2.self_attn.q_proj.weight")

      File.rm!(Path.join(dir, "model.safetensors"))
      assert {:error, msg} = NxQuant.Bumblebee.load_model(dir)
      assert msg =~ "holds no .safetensors file"
    end

    # Every dense kernel of the blocks is the free transposed view of a quantized {out, in}
    # weight; the embedding and the head are quantized as stored ({vocab, hidden}); a tied
    # head is the embedding's own tensor (the same resource), an untied one lm_head's; norms
    # and biases are dense.
    defp assert_quantized_params(%{params: %Axon.ModelState{data: data}}, ckpt, tied) do
      for {layer, params} <- data, {name, tensor} <- params do
        qt = NxQuant.Backend.quantized(tensor)

        case {layer, name} do
          {"decoder.blocks." <> _, "kernel"} ->
            assert %NxQuant.QuantizedTensor{transposed: true} = qt, "#{layer} #{name}"
            {rows, cols} = NxQuant.QuantizedTensor.stored_shape(qt)
            assert Nx.shape(tensor) == {cols, rows}

          {"embedder.token_embedding", "kernel"} ->
            assert %NxQuant.QuantizedTensor{transposed: false} = qt

          {"language_modeling_head.output", "kernel"} ->
            assert %NxQuant.QuantizedTensor{transposed: false} = qt

          _ ->
            assert qt == nil, "#{layer} #{name} should be dense"
        end
      end

      embedding = NxQuant.Backend.quantized(data["embedder.token_embedding"]["kernel"])
      head = NxQuant.Backend.quantized(data["language_modeling_head.output"]["kernel"])
      assert embedding.ref == head.ref == tied
      # 8-bit where config.json's per-layer override says so
      assert NxQuant.Backend.quantized(data["decoder.blocks.0.ffn.output"]["kernel"]).config.bits ==
               8

      assert NxQuant.Backend.quantized(data["decoder.blocks.1.ffn.output"]["kernel"]).config.bits ==
               4

      assert Map.has_key?(ckpt.tensors, "model.embed_tokens.weight")
    end

    # Bumblebee's own loader on the dequantized, Hugging Face layout checkpoint. Qwen2 is not
    # in Bumblebee v0.7: the same model NxQuant.Bumblebee builds (Qwen3 + q/k/v bias layers),
    # its params loaded by Bumblebee's loader with the mapping extended by the biases.
    defp dense_load!(:qwen2, dir, q) do
      mapping =
        q.spec
        |> Bumblebee.HuggingFace.Transformers.Model.params_mapping()
        |> Map.merge(%{
          "decoder.blocks.{n}.self_attention.query_bias" => "model.layers.{n}.self_attn.q_proj",
          "decoder.blocks.{n}.self_attention.key_bias" => "model.layers.{n}.self_attn.k_proj",
          "decoder.blocks.{n}.self_attention.value_bias" => "model.layers.{n}.self_attn.v_proj"
        })

      params =
        Bumblebee.Conversion.PyTorchParams.load_params!(
          q.model,
          Bumblebee.Text.Qwen3.input_template(q.spec),
          Path.join(dir, "model.safetensors"),
          params_mapping: mapping,
          loader_fun: &Safetensors.read!(&1, lazy: true)
        )

      %{model: q.model, params: params, spec: q.spec}
    end

    defp dense_load!(_family, dir, _q) do
      {:ok, dense} = Bumblebee.load_model({:local, dir})
      dense
    end

    defp logits(%{model: model, params: params}, inputs) do
      {_init, predict} = Axon.build(model, compiler: Nx.Defn.Evaluator)
      predict.(params, inputs).logits
    end

    # No eos: every generation makes 8 tokens (Bumblebee v0.7.0's :min_new_tokens adds an
    # Elixir integer to a traced tensor and fails).
    defp generation_config do
      Bumblebee.configure(Bumblebee.Text.GenerationConfig,
        max_new_tokens: 8,
        pad_token_id: 0,
        bos_token_id: 1,
        eos_token_id: nil
      )
    end

    defp generate(%{model: model, params: params, spec: spec}, inputs) do
      generate = Bumblebee.Text.Generation.build_generate(model, spec, generation_config())

      inputs =
        Map.put(
          inputs,
          "seed",
          Nx.tensor(List.duplicate(0, Nx.axis_size(inputs["input_ids"], 0)))
        )

      Nx.Defn.jit_apply(generate, [params, inputs], compiler: Nx.Defn.Evaluator).token_ids
    end
  end
end
