# A Llama-family decoder in plain Nx (bench/decoder_model.exs: RMSNorm, RoPE, grouped-query
# attention over a preallocated KV cache updated with Nx.put_slice, softmax, SwiGLU, residuals,
# a tied quantized embedding), every projection an MLX 4-bit g64 bf16 quantized tensor with
# random parts, decoding greedily. For each config and context length it prints the whole
# decode step's ms/token, the quantized matmuls' time alone (exactly the same fused calls — same
# weights, same x shapes — in a separate loop, interleaved with the steps so that the VM's speed
# drifts alike for both), their share, tok/s, and the bound: weight bytes per token / the read
# bandwidth measured in the same run. Targets: step <= 1.25x the matmuls at context 256, <= 1.6x
# at 2048; tok/s >= 75% of the bound.
#
# Run: NX_QUANT_WITH_NX=1 MIX_ENV=prod mix run bench/decoder_bench.exs
#
# Environment:
#   DECODER_CONFIGS   llama_1b,qwen3_8b (default both; also tiny)
#   DECODER_LAYERS    layers of every config (default: 16 for llama_1b, 4 for qwen3_8b)
#   DECODER_CONTEXTS  cache positions filled (random values) before the timed steps (256,2048)
#   DECODER_TOKENS    timed decode steps per context (default 8; one untimed warm-up step first)
#   DECODER_MODE      eager (default) | jit (Nx.Defn.jit, default evaluator)
#   DECODER_TYPE      f32 (default) | bf16: the activations', KV cache's and norms' type
#   DECODER_BACKEND   default (NxQuant.Backend, its default inner backend) | binary
#                     ({NxQuant.Backend, backend: Nx.BinaryBackend}: native path off) | a module
#                     name used as the shim's inner backend (e.g. NxQuant.NativeBackend)
#   DECODER_PROFILE   sections: also time the sections of the step (eager: norms, RoPE, cache
#                     update, scores, softmax, ...), i.e. where the non-matmul time goes;
#                     ops: time per Nx backend callback (op kind), the inner backend wrapped
#                     by a timing one (TimedBackend); all: both (1 = sections)
#   NX_QUANT_BENCH    the C++ benchmark binary measuring the read bandwidth (default
#                     build-bench/nx_quant_bench: cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release
#                     -DNX_QUANT_BUILD_BENCH=ON && cmake --build build-bench --target nx_quant_bench);
#                     without it the bandwidth is measured from Elixir, see ReadBandwidth
Code.require_file("decoder_model.exs", __DIR__)
Code.require_file("read_bandwidth.exs", __DIR__)
Code.require_file("timed_backend.exs", __DIR__)
alias NxQuant.DecoderModel, as: Model

defmodule DecoderBench do
  @moduledoc false

  def env_list(name, default),
    do:
      name |> System.get_env(default) |> String.split(",", trim: true) |> Enum.map(&String.trim/1)

  def env_int(name, default),
    do: name |> System.get_env(to_string(default)) |> String.to_integer()

  def backend do
    case System.get_env("DECODER_BACKEND", "default") do
      "default" -> {NxQuant.Backend, []}
      "binary" -> {NxQuant.Backend, backend: Nx.BinaryBackend}
      name -> {NxQuant.Backend, backend: Module.concat([name])}
    end
  end

  def median(values), do: values |> Enum.sort() |> Enum.at(div(length(values), 2))
  def ms(ns), do: ns / 1.0e6
  def fmt(x, decimals \\ 2), do: :erlang.float_to_binary(x * 1.0, decimals: decimals)

  # The fused calls one step makes, on random activations of the same shapes and types.
  def matmul_calls(params, cfg) do
    x = fn n, seed ->
      Model.random_f32(n, seed)
      |> Nx.from_binary(:f32)
      |> Nx.as_type(cfg.type)
      |> Nx.reshape({1, n})
    end

    xh = x.(cfg.hidden, 11)
    xa = x.(cfg.heads * cfg.head_dim, 12)
    xi = x.(cfg.intermediate, 13)

    layer_calls =
      params.layers
      |> Tuple.to_list()
      |> Enum.flat_map(fn p ->
        [{xh, p.q}, {xh, p.k}, {xh, p.v}, {xa, p.o}, {xh, p.gate}, {xh, p.up}, {xi, p.down}]
      end)

    layer_calls ++ [{xh, params.embedding}]
  end

  def time_ns(fun) do
    t0 = System.monotonic_time(:nanosecond)
    result = fun.()
    {System.monotonic_time(:nanosecond) - t0, result}
  end

  def step_fun(cfg) do
    case System.get_env("DECODER_MODE", "eager") do
      "eager" -> Model.eager_step(cfg)
      "jit" -> Model.jit_step(cfg)
    end
  end

  # {step ns list, matmul-pass ns list, tokens}: `tokens` greedy steps from position ctx + 1
  # after one warm-up step at ctx, each followed by one pass of the same fused calls alone.
  def run(step, params, cfg, ctx, tokens, calls) do
    cache = Model.init_cache(cfg, ctx + tokens + 1)
    matmuls = fn -> Enum.each(calls, fn {x, w} -> Nx.dot(x, [-1], w, [1]) end) end
    {[token], _, cache} = Model.generate(step, params, cache, 1, ctx, 1)
    matmuls.()

    {samples, _} =
      Enum.map_reduce(1..tokens, {token, cache}, fn i, {token, cache} ->
        {step_ns, {[next], _, cache}} =
          time_ns(fn -> Model.generate(step, params, cache, token, ctx + i, 1) end)

        {matmul_ns, _} = time_ns(matmuls)
        {{step_ns, matmul_ns, next}, {next, cache}}
      end)

    {Enum.map(samples, &elem(&1, 0)), Enum.map(samples, &elem(&1, 1)),
     Enum.map(samples, &elem(&1, 2))}
  end

  @sections [
    :matmul,
    :logits,
    :embed,
    :norm,
    :rope,
    :cache_update,
    :scores,
    :mask,
    :softmax,
    :attn_values,
    :mlp_act,
    :residual,
    :sampling
  ]

  # Section times per token (eager steps with section timing), and what no section covers.
  def profile(params, cfg, ctx, tokens) do
    cache = Model.init_cache(cfg, ctx + tokens + 1)
    step = Model.eager_step(cfg)
    {[token], _, cache} = Model.generate(step, params, cache, 1, ctx, 1)

    {total, {_, sections}} =
      time_ns(fn ->
        Model.profile(fn -> Model.generate(step, params, cache, token, ctx + 1, tokens) end)
      end)

    per_token = Map.new(sections, fn {k, v} -> {k, v / tokens} end)
    covered = per_token |> Map.values() |> Enum.sum()
    {total / tokens, Map.put(per_token, :other, total / tokens - covered)}
  end

  # Time per op kind: the same eager steps on {NxQuant.Backend, backend: TimedBackend}, whose
  # callbacks time the configured inner backend's (wall clock, NIFs included). Parameters and
  # cache are rebuilt on it (the same random values). What no callback covers is the fused
  # matmuls (the shim runs them itself; their activations' to_binary/from_binary are callbacks,
  # so those few microseconds count twice) and the Elixir above the backend: Nx's front end,
  # the shim, the model code.
  def op_profile(cfg, ctx, tokens, {NxQuant.Backend, opts}) do
    [backend: {inner, _}] = NxQuant.Backend.init(opts)
    :persistent_term.put({TimedBackend, :inner}, inner)

    Nx.with_default_backend({NxQuant.Backend, backend: TimedBackend}, fn ->
      params = Model.random_params(cfg)
      cache = Model.init_cache(cfg, ctx + tokens + 1)
      step = Model.eager_step(cfg)
      {[token], _, cache} = Model.generate(step, params, cache, 1, ctx, 1)

      {{{total, _}, sections}, times} =
        TimedBackend.record(fn ->
          Model.profile(fn ->
            time_ns(fn -> Model.generate(step, params, cache, token, ctx + 1, tokens) end)
          end)
        end)

      fused = Map.get(sections, :matmul, 0) + Map.get(sections, :logits, 0)
      times = Map.new(times, fn {k, {n, ns}} -> {k, {n / tokens, ns / tokens}} end)
      {total / tokens, fused / tokens, inner, times}
    end)
  end

  def print_op_profile(name, ctx, {total, fused, inner, times}) do
    covered = times |> Map.values() |> Enum.map(&elem(&1, 1)) |> Enum.sum()

    IO.puts(
      "  op profile #{name}, context #{ctx}: #{fmt(ms(total))} ms/token; per callback of " <>
        "#{inspect(inner)} (calls/token, ms/token, share of the step):"
    )

    times
    |> Enum.sort_by(fn {_, {_, ns}} -> -ns end)
    |> Enum.take_while(fn {_, {_, ns}} -> ns >= 0.001 * total end)
    |> Enum.each(fn {op, {calls, ns}} ->
      IO.puts(
        "    #{String.pad_trailing(to_string(op), 16)} #{String.pad_leading(fmt(calls, 0), 5)} " <>
          "#{String.pad_leading(fmt(ms(ns), 3), 9)} ms #{String.pad_leading(fmt(100 * ns / total, 1), 5)}%"
      )
    end)

    IO.puts(
      "    callbacks #{fmt(ms(covered), 3)} ms, the fused matmuls' calls (timed as sections in " <>
        "the same steps) #{fmt(ms(fused), 3)} ms; the rest, the Elixir above the backend " <>
        "(Nx front end, shim, model code): #{fmt(ms(total - covered - fused), 3)} ms"
    )
  end

  def print_profile(name, ctx, {total, sections}) do
    matmul = Map.get(sections, :matmul, 0) + Map.get(sections, :logits, 0)
    rest = total - matmul

    IO.puts(
      "  profile #{name}, context #{ctx}: #{fmt(ms(total))} ms/token, of which quantized " <>
        "matmuls #{fmt(ms(matmul))} ms; the other #{fmt(ms(rest))} ms:"
    )

    for key <- @sections -- [:matmul, :logits], Map.has_key?(sections, key) do
      {key, sections[key]}
    end
    |> Kernel.++([{:other, sections.other}])
    |> Enum.sort_by(&(-elem(&1, 1)))
    |> Enum.each(fn {key, ns} ->
      IO.puts(
        "    #{String.pad_trailing(to_string(key), 13)} #{String.pad_leading(fmt(ms(ns), 3), 9)} ms" <>
          "  #{String.pad_leading(fmt(100 * ns / max(rest, 1), 1), 5)}% of non-matmul" <>
          "  #{String.pad_leading(fmt(100 * ns / total, 1), 5)}% of step"
      )
    end)
  end
end

backend = DecoderBench.backend()
Nx.global_default_backend(backend)
mode = System.get_env("DECODER_MODE", "eager")
contexts = DecoderBench.env_list("DECODER_CONTEXTS", "256,2048") |> Enum.map(&String.to_integer/1)
tokens = DecoderBench.env_int("DECODER_TOKENS", 8)

profiles =
  case System.get_env("DECODER_PROFILE", "0") do
    "0" -> []
    "1" -> [:sections]
    "sections" -> [:sections]
    "ops" -> [:ops]
    "all" -> [:sections, :ops]
  end

default_layers = %{"llama_1b" => 16, "qwen3_8b" => 4}

IO.puts(
  "decoder bench: backend #{inspect(backend)}, #{mode}, #{System.get_env("DECODER_TYPE", "f32")} " <>
    "activations, #{tokens} timed tokens per context, " <>
    "schedulers online #{System.schedulers_online()}"
)

rows =
  for name <- DecoderBench.env_list("DECODER_CONFIGS", "llama_1b,qwen3_8b") do
    base = Model.config(String.to_atom(name))
    layers = DecoderBench.env_int("DECODER_LAYERS", Map.get(default_layers, name, base.layers))
    cfg = %{base | layers: layers, type: String.to_atom(System.get_env("DECODER_TYPE", "f32"))}

    {setup_ns, params} = DecoderBench.time_ns(fn -> Model.random_params(cfg) end)
    bytes = Model.weight_bytes(params)
    calls = DecoderBench.matmul_calls(params, cfg)
    step = DecoderBench.step_fun(cfg)
    {gbs, how} = ReadBandwidth.measure()

    IO.puts(
      "\n#{cfg.name}, #{layers} layers (hidden #{cfg.hidden}, intermediate #{cfg.intermediate}, " <>
        "#{cfg.heads}/#{cfg.kv_heads} heads x #{cfg.head_dim}, vocab #{cfg.vocab}): " <>
        "#{length(calls)} fused matmuls, #{DecoderBench.fmt(bytes / 1.0e6, 1)} MB of 4-bit " <>
        "weights per token (random parts built in #{DecoderBench.fmt(setup_ns / 1.0e9)} s)"
    )

    IO.puts("  read bandwidth #{DecoderBench.fmt(gbs)} GB/s (#{how})")

    for ctx <- contexts do
      {steps, matmuls, generated} = DecoderBench.run(step, params, cfg, ctx, tokens, calls)
      step_ms = DecoderBench.ms(DecoderBench.median(steps))
      matmul_ms = DecoderBench.ms(DecoderBench.median(matmuls))
      bound_ms = bytes / gbs / 1.0e6
      {_, type_bits} = Nx.Type.normalize!(cfg.type)

      cache_mb =
        cfg.layers * 2 * cfg.kv_heads * (ctx + tokens + 1) * cfg.head_dim * div(type_bits, 8) /
          1.0e6

      target = if ctx <= 256, do: 1.25, else: 1.6

      IO.puts(
        "  context #{ctx}: step #{DecoderBench.fmt(step_ms)} ms/token (median of #{tokens}), " <>
          "matmuls alone #{DecoderBench.fmt(matmul_ms)} ms " <>
          "(#{DecoderBench.fmt(bytes / matmul_ms / 1.0e6, 1)} GB/s), bound " <>
          "#{DecoderBench.fmt(bound_ms)} ms; KV cache #{DecoderBench.fmt(cache_mb, 1)} MB; " <>
          "tokens #{inspect(generated)}"
      )

      if :sections in profiles do
        DecoderBench.print_profile(cfg.name, ctx, DecoderBench.profile(params, cfg, ctx, tokens))
      end

      if :ops in profiles do
        DecoderBench.print_op_profile(
          cfg.name,
          ctx,
          DecoderBench.op_profile(cfg, ctx, tokens, backend)
        )
      end

      %{
        name: "#{cfg.name} x#{layers}",
        ctx: ctx,
        step: step_ms,
        matmul: matmul_ms,
        bound: bound_ms,
        target: target,
        gbs: gbs
      }
    end
  end
  |> List.flatten()

f = &DecoderBench.fmt/1

IO.puts(
  "\nbackend #{inspect(backend)}, #{mode}, #{System.get_env("DECODER_TYPE", "f32")} activations"
)

IO.puts(
  "| config | context | step ms/token | matmuls ms/token | matmul share | " <>
    "step / matmuls (target) | tok/s | bound tok/s | tok/s / bound (target 75%) |"
)

IO.puts("|---|---|---|---|---|---|---|---|---|")

for r <- rows do
  ratio = r.step / r.matmul
  ok = fn pass? -> if pass?, do: "", else: " MISSED" end

  IO.puts(
    "| #{r.name} | #{r.ctx} | #{f.(r.step)} | #{f.(r.matmul)} | #{DecoderBench.fmt(100 * r.matmul / r.step, 1)}% " <>
      "| #{f.(ratio)}x (<= #{r.target}x#{ok.(ratio <= r.target)}) | #{f.(1000 / r.step)} " <>
      "| #{f.(1000 / r.bound)} | #{DecoderBench.fmt(100 * r.bound / r.step, 1)}%#{ok.(r.bound / r.step >= 0.75)} |"
  )
end
