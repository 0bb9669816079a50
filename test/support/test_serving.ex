if Code.ensure_loaded?(Bumblebee) do
  defmodule NxQuant.TestServing do
    @moduledoc """
    Servings of a quantized Bumblebee model for the distributed test: called by `:erpc` on a
    `:peer` node (so on disk, not in a test file), they start under a supervisor of their own.
    """

    @doc "Text generation (token ids as text, `NxQuant.TestIdTokenizer`), greedy, 8 new tokens."
    def generation(model_info) do
      Bumblebee.Text.generation(model_info, %NxQuant.TestIdTokenizer{}, generation_config(),
        defn_options: [compiler: Nx.Defn.Evaluator]
      )
    end

    @doc "The logits of a batch of token ids (a `{n, len}` tensor), as tensors."
    def logits(%{model: model, params: params}) do
      {_init, predict} = Axon.build(model, compiler: Nx.Defn.Evaluator)

      Nx.Serving.new(
        fn defn_opts ->
          # params as an argument: a quantized tensor captured by the closure cannot be traced
          jitted =
            Nx.Defn.jit(fn p, ids -> predict.(p, %{"input_ids" => ids}).logits end, defn_opts)

          fn batch -> jitted.(params, batch) end
        end,
        compiler: Nx.Defn.Evaluator
      )
      |> Nx.Serving.client_preprocessing(fn ids -> {Nx.Batch.concatenate([ids]), :ok} end)
      |> Nx.Serving.client_postprocessing(fn {logits, _metadata}, :ok -> logits end)
    end

    def generation_config do
      Bumblebee.configure(Bumblebee.Text.GenerationConfig,
        max_new_tokens: 8,
        pad_token_id: 0,
        bos_token_id: 1,
        eos_token_id: nil
      )
    end

    @doc """
    On this node: loads the checkpoint in `dir` with `NxQuant.Bumblebee` (default backend
    `NxQuant.Backend`) and starts the generation serving as `gen_name` and the logits one as
    `logits_name`, both with `NxQuant.Bumblebee.distributed/1`.
    """
    def start(dir, gen_name, logits_name) do
      Nx.global_default_backend(NxQuant.Backend)
      {:ok, info} = NxQuant.Bumblebee.load_model(dir)

      children = [
        {Nx.Serving,
         serving: info |> generation() |> NxQuant.Bumblebee.distributed(),
         name: gen_name,
         batch_size: 2,
         batch_timeout: 20},
        {Nx.Serving,
         serving: info |> logits() |> NxQuant.Bumblebee.distributed(),
         name: logits_name,
         batch_size: 1,
         batch_timeout: 20}
      ]

      {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)
      Process.unlink(sup)
      {:ok, node()}
    end
  end
end
