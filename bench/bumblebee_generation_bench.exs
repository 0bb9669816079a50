# Greedy generation through Bumblebee (Bumblebee.Text.Generation.build_generate, Axon's model of
# Bumblebee.Text.Llama, compiler Nx.Defn.Evaluator, default backend NxQuant.Backend) at
# Llama-3.2-1B shapes with the random 4-bit g64 bf16 weights of bench/decoder_model.exs (the
# same values bench/decoder_bench.exs uses), loaded with NxQuant.Bumblebee.build!/4 (the
# params NxQuant.Bumblebee.load_model/2 makes from a checkpoint). It prints the decode time per
# token of Bumblebee's loop beside the plain-Nx decoder of bench/decoder_model.exs (eager, same
# weights, same context), the fused matmuls alone, and the read-bandwidth bound, with the load
# average (the machine may be shared).
#
# Per token = (time of a generation of 1 + T new tokens - time of one of 1 new token) / T: both
# include the prompt's prefill and the tracing of the loop, which cancel.
#
# Run (Nx and Bumblebee loaded):
#   NX_QUANT_WITH_NX=1 NX_QUANT_WITH_BUMBLEBEE=1 MIX_ENV=prod mix run bench/bumblebee_generation_bench.exs
#
# Environment:
#   DECODER_LAYERS   layers (default 16, Llama-3.2-1B's)
#   DECODER_TOKENS   T, timed new tokens (default 8)
#   BB_PROMPT        prompt length (default 16)
#   BB_RUNS          timed runs of each generation (default 3; the median is used)
#   DECODER_TYPE     f32 (default) | bf16: the norms' type (the embedding rows are bf16, so
#                    with f32 norms the activations are f32 from the first norm on)
#   BB_PROFILE       ops: also count and time the backend callbacks of one decode token
#                    (the inner backend wrapped by a timing one; rebuilds the weights)
#   NX_QUANT_BENCH   the C++ benchmark binary measuring the read bandwidth (default
#                    build-bench/nx_quant_bench, built as for bench/decoder_bench.exs); without it
#                    the bandwidth is an Elixir-measured lower bound
Code.require_file("decoder_model.exs", __DIR__)
Code.require_file("read_bandwidth.exs", __DIR__)
Code.require_file("timed_backend.exs", __DIR__)
alias NxQuant.DecoderModel, as: Model

defmodule BBBench do
  @moduledoc false

  def env_int(name, default),
    do: name |> System.get_env(to_string(default)) |> String.to_integer()

  def fmt(x, decimals \\ 2), do: :erlang.float_to_binary(x * 1.0, decimals: decimals)
  def median(values), do: values |> Enum.sort() |> Enum.at(div(length(values), 2))
  def load, do: File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ")

  def time_ns(fun) do
    t0 = System.monotonic_time(:nanosecond)
    result = fun.()
    {System.monotonic_time(:nanosecond) - t0, result}
  end

  # config.json of Llama-3.2-1B (without its llama3 RoPE scaling: a different inverse frequency
  # table, the same work per step).
  def hf_config(cfg) do
    %{
      "model_type" => "llama",
      "architectures" => ["LlamaForCausalLM"],
      "vocab_size" => cfg.vocab,
      "hidden_size" => cfg.hidden,
      "intermediate_size" => cfg.intermediate,
      "num_hidden_layers" => cfg.layers,
      "num_attention_heads" => cfg.heads,
      "num_key_value_heads" => cfg.kv_heads,
      "head_dim" => cfg.head_dim,
      "hidden_act" => "silu",
      "max_position_embeddings" => 131_072,
      "rms_norm_eps" => cfg.eps,
      "rope_theta" => cfg.rope_theta,
      "tie_word_embeddings" => true,
      "bos_token_id" => 128_000,
      "eos_token_id" => 128_001
    }
  end

  # The decoder bench's random parameters under their checkpoint names.
  def checkpoint_tensors(params) do
    names = %{
      q: "self_attn.q_proj",
      k: "self_attn.k_proj",
      v: "self_attn.v_proj",
      o: "self_attn.o_proj",
      gate: "mlp.gate_proj",
      up: "mlp.up_proj",
      down: "mlp.down_proj",
      attn_norm: "input_layernorm",
      mlp_norm: "post_attention_layernorm"
    }

    layers =
      for {layer, n} <- params.layers |> Tuple.to_list() |> Enum.with_index(),
          {key, t} <- layer,
          into: %{},
          do: {"model.layers.#{n}.#{Map.fetch!(names, key)}.weight", t}

    Map.merge(layers, %{
      "model.embed_tokens.weight" => params.embedding,
      "model.norm.weight" => params.final_norm
    })
  end

  def info(tensors) do
    Map.new(tensors, fn {name, t} ->
      if NxQuant.quantized?(t) do
        c = NxQuant.config(t)
        {name, {:quantized, Nx.shape(t), c.bits, c.group_size, Nx.type(c.scales)}}
      else
        {name, {:dense, Nx.shape(t), Nx.type(t)}}
      end
    end)
  end

  def model_info(params, cfg) do
    tensors = checkpoint_tensors(params)
    NxQuant.Bumblebee.build!(hf_config(cfg), info(tensors), &Map.fetch!(tensors, &1))
  end

  def generate_fun(info, new_tokens) do
    config =
      Bumblebee.configure(Bumblebee.Text.GenerationConfig,
        max_new_tokens: new_tokens,
        pad_token_id: 0,
        bos_token_id: 128_000,
        eos_token_id: nil
      )

    generate = Bumblebee.Text.Generation.build_generate(info.model, info.spec, config)
    jitted = Nx.Defn.jit(generate, compiler: Nx.Defn.Evaluator)
    fn inputs -> jitted.(info.params, inputs) end
  end

  def inputs(prompt) do
    ids = for i <- 1..prompt, do: rem(i * 7919, 120_000) + 1000

    %{
      "input_ids" => Nx.tensor([ids], type: :u32),
      "attention_mask" => Nx.broadcast(Nx.tensor(1, type: :u32), {1, prompt}),
      "seed" => Nx.tensor([0])
    }
  end

  # Median ns of `runs` runs (after one warm-up) and the tokens of the last.
  def timed_runs(fun, runs) do
    fun.()

    {times, results} =
      for _ <- 1..runs do
        {ns, r} = time_ns(fun)
        {ns, r}
      end
      |> Enum.unzip()

    {median(times), List.last(results)}
  end

  # The plain-Nx decoder (bench/decoder_model.exs, eager) on the same weights: median step ns
  # over `tokens` greedy steps after a cache of `ctx` positions, and its fused matmuls alone.
  def plain_decoder(params, cfg, ctx, tokens) do
    cache = Model.init_cache(cfg, ctx + tokens + 1)
    step = Model.eager_step(cfg)
    {[token], _, cache} = Model.generate(step, params, cache, 1, ctx, 1)

    {samples, _} =
      Enum.map_reduce(1..tokens, {token, cache}, fn i, {token, cache} ->
        {ns, {[next], _, cache}} =
          time_ns(fn -> Model.generate(step, params, cache, token, ctx + i, 1) end)

        {ns, {next, cache}}
      end)

    median(samples)
  end

  def matmuls_ns(params, cfg, runs) do
    x = fn n -> Nx.iota({1, n}, type: :f32) |> Nx.divide(n) end
    {xh, xa, xi} = {x.(cfg.hidden), x.(cfg.heads * cfg.head_dim), x.(cfg.intermediate)}

    calls =
      Enum.flat_map(Tuple.to_list(params.layers), fn p ->
        [{xh, p.q}, {xh, p.k}, {xh, p.v}, {xa, p.o}, {xh, p.gate}, {xh, p.up}, {xi, p.down}]
      end) ++ [{xh, params.embedding}]

    run = fn -> Enum.each(calls, fn {x, w} -> Nx.dot(x, [-1], w, [1]) end) end
    run.()
    median(for _ <- 1..runs, do: elem(time_ns(run), 0))
  end

  # The read bandwidth in GB/s and how it was measured (bench/read_bandwidth.exs).
  def bandwidth, do: ReadBandwidth.measure()

  # Backend callbacks of one decode token through Bumblebee: the difference between recorded
  # generations of 1 + T and 1 new tokens, divided by T.
  def op_profile(cfg, prompt, tokens) do
    [backend: {inner, _}] = NxQuant.Backend.init([])
    :persistent_term.put({TimedBackend, :inner}, inner)

    Nx.with_default_backend({NxQuant.Backend, backend: TimedBackend}, fn ->
      info = model_info(Model.random_params(cfg), cfg)
      inputs = inputs(prompt)
      short = generate_fun(info, 1)
      long = generate_fun(info, 1 + tokens)
      short.(inputs)
      long.(inputs)
      {{ns_s, _}, t_s} = TimedBackend.record(fn -> time_ns(fn -> short.(inputs) end) end)
      {{ns_l, _}, t_l} = TimedBackend.record(fn -> time_ns(fn -> long.(inputs) end) end)

      per_token =
        for {op, {n_l, ns_op_l}} <- t_l do
          {n_s, ns_op_s} = Map.get(t_s, op, {0, 0})
          {op, {(n_l - n_s) / tokens, (ns_op_l - ns_op_s) / tokens}}
        end

      {(ns_l - ns_s) / tokens, per_token}
    end)
  end
end

Nx.global_default_backend(NxQuant.Backend)
Nx.Defn.global_default_options(compiler: Nx.Defn.Evaluator)

layers = BBBench.env_int("DECODER_LAYERS", 16)
tokens = BBBench.env_int("DECODER_TOKENS", 8)
prompt = BBBench.env_int("BB_PROMPT", 16)
runs = BBBench.env_int("BB_RUNS", 3)
type = String.to_atom(System.get_env("DECODER_TYPE", "f32"))
cfg = %{Model.config(:llama_1b) | layers: layers, type: type}

IO.puts(
  "bumblebee generation bench: Bumblebee.Text.Llama via NxQuant.Bumblebee, Nx.Defn.Evaluator, " <>
    "NxQuant.Backend; #{cfg.name} shapes x #{layers} layers, prompt #{prompt}, T = #{tokens}, " <>
    "#{type} norms; load average #{BBBench.load()}"
)

{build_ns, params} = BBBench.time_ns(fn -> Model.random_params(cfg) end)
{load_ns, info} = BBBench.time_ns(fn -> BBBench.model_info(params, cfg) end)
bytes = Model.weight_bytes(params)

IO.puts(
  "  random weights #{BBBench.fmt(build_ns / 1.0e9)} s, NxQuant.Bumblebee.build! " <>
    "#{BBBench.fmt(load_ns / 1.0e9)} s; #{BBBench.fmt(bytes / 1.0e6, 1)} MB of 4-bit weights " <>
    "per token"
)

inputs = BBBench.inputs(prompt)
short = BBBench.generate_fun(info, 1)
long = BBBench.generate_fun(info, 1 + tokens)
{cold_ns, _} = BBBench.time_ns(fn -> short.(inputs) end)
{short_ns, _} = BBBench.timed_runs(fn -> short.(inputs) end, runs)
load_short = BBBench.load()
{long_ns, result} = BBBench.timed_runs(fn -> long.(inputs) end, runs)
load_long = BBBench.load()
bb_ms = (long_ns - short_ns) / tokens / 1.0e6

IO.puts(
  "  Bumblebee: generation of 1 new token #{BBBench.fmt(short_ns / 1.0e6, 1)} ms (first call " <>
    "#{BBBench.fmt(cold_ns / 1.0e6, 1)} ms; load #{load_short}), of #{1 + tokens} " <>
    "#{BBBench.fmt(long_ns / 1.0e6, 1)} ms (load #{load_long}): #{BBBench.fmt(bb_ms)} ms/token, " <>
    "#{BBBench.fmt(1000 / bb_ms)} tok/s; tokens #{inspect(Nx.to_flat_list(result.token_ids))}"
)

plain_ms = BBBench.plain_decoder(params, cfg, prompt, tokens) / 1.0e6
load_plain = BBBench.load()
matmul_ms = BBBench.matmuls_ns(params, cfg, max(runs, 5)) / 1.0e6
{gbs, how} = BBBench.bandwidth()
load_end = BBBench.load()
bound_ms = bytes / gbs / 1.0e6

IO.puts(
  "  plain-Nx decoder (bench/decoder_model.exs, eager, context #{prompt}): " <>
    "#{BBBench.fmt(plain_ms)} ms/token (load #{load_plain}); fused matmuls alone " <>
    "#{BBBench.fmt(matmul_ms)} ms; read bandwidth #{BBBench.fmt(gbs)} GB/s (#{how}) -> bound #{BBBench.fmt(bound_ms)} ms/token (load #{load_end})"
)

IO.puts("""

| path | ms/token | tok/s | / matmuls alone | bound / it |
|---|---|---|---|---|
| Bumblebee build_generate (Evaluator) | #{BBBench.fmt(bb_ms)} | #{BBBench.fmt(1000 / bb_ms)} | #{BBBench.fmt(bb_ms / matmul_ms)}x | #{BBBench.fmt(100 * bound_ms / bb_ms, 1)}% |
| plain-Nx decoder (eager) | #{BBBench.fmt(plain_ms)} | #{BBBench.fmt(1000 / plain_ms)} | #{BBBench.fmt(plain_ms / matmul_ms)}x | #{BBBench.fmt(100 * bound_ms / plain_ms, 1)}% |
| fused matmuls alone | #{BBBench.fmt(matmul_ms)} | #{BBBench.fmt(1000 / matmul_ms)} | 1.00x | #{BBBench.fmt(100 * bound_ms / matmul_ms, 1)}% |
| read-bandwidth bound | #{BBBench.fmt(bound_ms)} | #{BBBench.fmt(1000 / bound_ms)} | | |
""")

if System.get_env("BB_PROFILE") == "ops" do
  {total, per_token} = BBBench.op_profile(cfg, prompt, tokens)
  covered = per_token |> Enum.map(fn {_, {_, ns}} -> ns end) |> Enum.sum()

  IO.puts(
    "op profile (one decode token through Bumblebee, callbacks of the inner backend; load " <>
      "#{BBBench.load()}): #{BBBench.fmt(total / 1.0e6)} ms/token, callbacks " <>
      "#{BBBench.fmt(covered / 1.0e6)} ms; the rest (fused matmuls, which the shim runs " <>
      "itself, the Evaluator, Axon/Bumblebee's Elixir): #{BBBench.fmt((total - covered) / 1.0e6)} ms"
  )

  IO.puts(
    "    (the fused matmuls alone took #{BBBench.fmt(matmul_ms)} ms above: the Evaluator, Axon, " <>
      "Bumblebee and the shim above the backend then take ~" <>
      "#{BBBench.fmt((total - covered) / 1.0e6 - matmul_ms)} ms per token)"
  )

  per_token
  |> Enum.sort_by(fn {_, {_, ns}} -> -ns end)
  |> Enum.take(16)
  |> Enum.each(fn {op, {calls, ns}} ->
    IO.puts(
      "    #{String.pad_trailing(to_string(op), 18)} #{String.pad_leading(BBBench.fmt(calls, 0), 6)} " <>
        "calls #{String.pad_leading(BBBench.fmt(ns / 1.0e6, 3), 9)} ms"
    )
  end)

  calls = per_token |> Enum.map(fn {_, {n, _}} -> n end) |> Enum.sum()
  IO.puts("    #{BBBench.fmt(calls, 0)} callbacks per token")
end
