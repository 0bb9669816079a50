if Code.ensure_loaded?(Bumblebee) and Code.ensure_loaded?(Nx) do
  defmodule NxQuant.Bumblebee do
    @moduledoc """
    Loads an MLX-community checkpoint directory into Bumblebee's own model, quantized layers
    kept quantized (compiled only when Bumblebee is loaded).

        {:ok, model_info} = NxQuant.Bumblebee.load_model("path/to/Llama-3.2-1B-Instruct-4bit")
        %{model: model, params: params, spec: spec} = model_info
        Nx.default_backend(NxQuant.Backend)
        generate = Bumblebee.Text.Generation.build_generate(model, spec, generation_config)

    The spec is Bumblebee's, from config.json (what `Bumblebee.load_spec/2` does with it), and
    the model `Bumblebee.build_model/1`'s. The params are not loaded through Bumblebee's loader (which
    transposes every dense kernel and casts it with `Nx.as_type`: both would dequantize): they
    are built here from `NxQuant.BumblebeeMapping`'s plan into the `Axon.ModelState` Bumblebee's
    loader starts from (`Axon.trace_init/2`), and every parameter the model has must be in the
    plan with the shape the model expects. A quantized dense kernel is the free transposed view
    of the checkpoint's `{out, in}` weight (`Nx.dot` runs the fused kernel on it), the
    embedding a quantized tensor whose rows a replacement of Axon's embedding layer gathers
    (see `quantized_embedding/3` below), a tied head the same tensor. Dense tensors are
    zero-copy views of the mapped files on `NxQuant.Backend`.

    Qwen2 (which Bumblebee v0.7 lacks) is Bumblebee's Qwen3 without q/k norms and with a bias
    layer (`Axon.bias/2`, named `...self_attention.query_bias` etc.) after the q/k/v
    projections.

    Options: `:architecture` (default `:for_causal_language_modeling`), `:bits` and
    `:group_size` (for a checkpoint whose config.json has no quantization block).
    There is no `:type`: Bumblebee applies it as an Axon mixed-precision policy, which casts
    every parameter (dequantizing the quantized ones) on every call; the model computes in
    the checkpoint's dtype (the scales' for quantized layers).
    """

    alias NxQuant.{BumblebeeMapping, Checkpoint}

    @doc """
    Like `Bumblebee.load_model({:local, dir})`: `{:ok, %{model:, params:, spec:}}` or
    `{:error, message}` (an `ArgumentError` raised for a malformed checkpoint is returned as
    its message).
    """
    @spec load_model(Path.t(), keyword()) :: {:ok, map()} | {:error, String.t()}
    def load_model(dir, opts \\ []) do
      {:ok, load_model!(dir, opts)}
    rescue
      e in ArgumentError -> {:error, Exception.message(e)}
    end

    @doc "Like `load_model/2`, raising `ArgumentError`."
    @spec load_model!(Path.t(), keyword()) :: map()
    def load_model!(dir, opts \\ []) do
      opts = Keyword.validate!(opts, [:bits, :group_size, :architecture])
      ckpt = Checkpoint.open(dir, Keyword.take(opts, [:bits, :group_size]))
      where = ckpt.dir

      build!(ckpt.config, BumblebeeMapping.tensors(ckpt), &NxQuant.fetch_checkpoint!(ckpt, &1),
        architecture: opts[:architecture],
        where: where
      )
    end

    @doc """
    The model of `config` (config.json's map) with params from `fetch.(name)` (an Nx tensor
    for each checkpoint name `tensors` lists, in `NxQuant.BumblebeeMapping.tensors/1`'s form):
    what `load_model!/2` does once the checkpoint is open, for weights from elsewhere (the
    benchmark's random ones). Options: `:architecture`, `:where` (for error messages).
    """
    @spec build!(map(), map(), (String.t() -> Nx.Tensor.t()), keyword()) :: map()
    def build!(config, tensors, fetch, opts \\ []) do
      architecture = opts[:architecture] || :for_causal_language_modeling
      where = opts[:where] || "checkpoint"
      plan = BumblebeeMapping.plan(config, tensors)
      spec = spec!(config, plan, architecture)

      model =
        spec
        |> Bumblebee.build_model()
        |> add_qkv_biases(plan)
        |> quantized_embedding(plan, tensors)

      %module{} = spec
      state = Axon.trace_init(model, module.input_template(spec))
      data = params!(plan, state.data, fetch, where, config["model_type"])
      %{model: model, params: %{state | data: data}, spec: spec}
    end

    @doc """
    `serving` with a `distributed_postprocessing` that makes its replies safe to send to another
    node: see `portable/1`. (Nx.Serving runs a `{:distributed, name}` request's pre- and
    postprocessing on the serving's node and sends back what this returns.)
    """
    @spec distributed(Nx.Serving.t()) :: Nx.Serving.t()
    def distributed(%Nx.Serving{} = serving),
      do: Nx.Serving.distributed_postprocessing(serving, &portable/1)

    @doc """
    Every tensor in `term` (nested maps, lists, tuples) moved to `Nx.BinaryBackend`: a quantized
    tensor is a NIF resource that means nothing on another node, so it is dequantized (what
    `Nx.backend_transfer/2` does with one); dense ones become plain binaries.
    """
    @spec portable(term()) :: term()
    def portable(%Nx.Tensor{} = t), do: Nx.backend_transfer(t, Nx.BinaryBackend)
    def portable(%_{} = struct), do: struct
    def portable(%{} = map), do: Map.new(map, fn {k, v} -> {k, portable(v)} end)
    def portable(list) when is_list(list), do: Enum.map(list, &portable/1)

    def portable(tuple) when is_tuple(tuple),
      do: tuple |> Tuple.to_list() |> Enum.map(&portable/1) |> List.to_tuple()

    def portable(other), do: other

    # What Bumblebee.load_spec/2 does with config.json, then the plan's options on top (the
    # tie decided by the plan, Qwen2's head size and q/k norms).
    defp spec!(config, plan, architecture) do
      spec = Bumblebee.configure(Module.concat([plan.module]), architecture: architecture)
      spec = Bumblebee.HuggingFace.Transformers.Config.load(spec, config)
      known = spec |> Map.from_struct() |> Map.keys()
      Bumblebee.configure(spec, Keyword.take(plan.spec, known))
    end

    # Qwen2: q/k/v projections with biases, added as a bias layer after each of them.
    defp add_qkv_biases(model, %{spec: spec}) do
      if spec[:qkv_bias] do
        Axon.rewrite_nodes(model, fn
          %Axon.Node{op_name: :dense, name: name_fn} = node ->
            name = name_fn.(node.op_name, %{})

            if String.match?(name, ~r/\.self_attention\.(query|key|value)$/) do
              # the rewriter's result must hold the whole graph: the input's nodes too
              fn [input], output ->
                biased = Axon.bias(output, name: name <> "_bias")
                %{biased | nodes: Map.merge(input.nodes, biased.nodes)}
              end
            else
              :skip
            end

          _ ->
            :skip
        end)
      else
        model
      end
    end

    # Inside defn, Nx types `Nx.take` of a quantized {:s, 4} tensor as {:s, 4} (the traced
    # kernel shows no scales), and everything after the embedding would follow that type. So a
    # quantized embedding is gathered by a layer that names the rows' type (the scales') and
    # runs the take through Nx.runtime_call/4: the shim's row gather on the real tensor.
    defp quantized_embedding(model, plan, tensors) do
      case Enum.find(plan.params, &(&1.layer == "embedder.token_embedding")) do
        %{quantized: true, source: source, shape: shape} ->
          {:quantized, _, _, _, type} = Map.fetch!(tensors, source)

          Axon.rewrite_nodes(model, fn
            %Axon.Node{op_name: :embedding, name: name_fn} = node ->
              if name_fn.(node.op_name, %{}) == "embedder.token_embedding" do
                fn [input], _output ->
                  kernel = Axon.param("kernel", shape)

                  Axon.layer(&__embedding__/3, [input, kernel],
                    name: "embedder.token_embedding",
                    op_name: :quantized_embedding,
                    type: type
                  )
                end
              else
                :skip
              end

            _ ->
              :skip
          end)

        _ ->
          model
      end
    end

    @doc false
    def __embedding__(ids, kernel, opts) do
      type = Keyword.fetch!(opts, :type)
      shape = Tuple.insert_at(Nx.shape(ids), tuple_size(Nx.shape(ids)), Nx.axis_size(kernel, 1))
      runtime_call(Nx.template(shape, type), {kernel, ids}, &__take_rows__/2)
    end

    if function_exported?(Nx, :runtime_call, 4) do
      defp runtime_call(template, args, fun), do: Nx.runtime_call(template, args, [], fun)
    else
      defp runtime_call(_template, args, fun), do: fun.(args, [])
    end

    @doc false
    def __take_rows__({kernel, ids}, _opts), do: Nx.take(kernel, ids, axis: 0)

    defp params!(plan, expected, fetch, where, model_type) do
      entries = Map.new(plan.params, &{{&1.layer, &1.param}, &1})

      {data, _cache} =
        Enum.reduce(Enum.sort(expected), {%{}, %{}}, fn {layer, params}, acc ->
          Enum.reduce(Enum.sort(params), acc, fn {param, template}, {data, cache} ->
            entry =
              entries[{layer, param}] ||
                raise ArgumentError,
                      "#{where}: the #{plan.module} model has parameter #{layer} " <>
                        "(#{param}) and the plan for model_type #{inspect(model_type)} " <>
                        "has nothing for it"

            {source, cache} = fetch(entry.source, fetch, cache)
            tensor = if entry.transpose, do: Nx.transpose(source), else: source

            if Nx.shape(tensor) != Nx.shape(template) do
              raise ArgumentError,
                    "#{where}: #{layer} (#{param}) <- #{entry.source} has shape " <>
                      "#{inspect(Nx.shape(tensor))}, the model expects " <>
                      inspect(Nx.shape(template))
            end

            {Map.update(data, layer, %{param => tensor}, &Map.put(&1, param, tensor)), cache}
          end)
        end)

      data
    end

    # One Nx tensor per checkpoint tensor (a tied head shares the embedding's).
    defp fetch(name, fetch, cache) do
      case cache do
        %{^name => t} ->
          {t, cache}

        _ ->
          t = Nx.with_default_backend(NxQuant.Backend, fn -> fetch.(name) end)
          {t, Map.put(cache, name, t)}
      end
    end
  end
end
