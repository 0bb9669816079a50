# A Llama-family decoder written in plain Nx, as a user would write it: RMSNorm, rotary position
# embeddings, grouped-query attention over a preallocated KV cache updated with Nx.put_slice,
# softmax, a SwiGLU MLP, residuals, and a tied embedding (Nx.take for the input token,
# Nx.dot(h, [-1], embedding, [1]) for the logits). Every projection and the embedding are
# MLX-format 4-bit g64 bf16 quantized tensors (or, for a reference, dense tensors: the code is
# the same). Shared by bench/decoder_bench.exs and test/nx/decoder_test.exs
# (Code.require_file'd; needs Nx).
#
# The step is written so that it runs both eagerly and under Nx.Defn.jit (default evaluator):
# the position is a number or a scalar tensor, the cache is masked past it rather than sliced,
# params and cache are maps and tuples.
defmodule NxQuant.DecoderModel do
  @moduledoc false

  @bits 4
  @group_size 64

  ## Configurations ---------------------------------------------------------------------

  def config(:llama_1b) do
    %{
      name: "Llama-3.2-1B",
      layers: 16,
      hidden: 2048,
      intermediate: 8192,
      heads: 32,
      kv_heads: 8,
      head_dim: 64,
      vocab: 128_256,
      rope_theta: 500_000.0,
      eps: 1.0e-5,
      qk_norm: false,
      type: :f32
    }
  end

  def config(:qwen3_8b) do
    %{
      name: "Qwen3-8B",
      layers: 36,
      hidden: 4096,
      intermediate: 12_288,
      heads: 32,
      kv_heads: 8,
      head_dim: 128,
      vocab: 151_936,
      rope_theta: 1_000_000.0,
      eps: 1.0e-6,
      qk_norm: true,
      type: :f32
    }
  end

  def config(:tiny) do
    %{
      name: "tiny",
      layers: 2,
      hidden: 128,
      intermediate: 256,
      heads: 4,
      kv_heads: 2,
      head_dim: 32,
      vocab: 256,
      rope_theta: 10_000.0,
      eps: 1.0e-5,
      qk_norm: true,
      type: :f32
    }
  end

  # `type` is the activations' (and the KV cache's and norms') type: :f32 or :bf16.

  # The quantized projections of one layer: {name, {out_features, in_features}}.
  def projections(cfg) do
    %{hidden: h, intermediate: i, heads: nh, kv_heads: nkv, head_dim: hd} = cfg

    [
      q: {nh * hd, h},
      k: {nkv * hd, h},
      v: {nkv * hd, h},
      o: {h, nh * hd},
      gate: {i, h},
      up: {i, h},
      down: {h, i}
    ]
  end

  ## Random parameters --------------------------------------------------------------------

  @doc """
  Random parameters on the default backend: each weight an MLX 4-bit g64 quantized tensor built
  with NxQuant.quantized_tensor/5 from random packed words and random bf16 scales and biases.
  Scales are +-2^-e and biases -8 * scale, so every weight `scale * q + bias = scale * (q - 8)`
  is exactly representable in bf16 (dequantize/1 returns exactly what the fused kernel
  multiplies by), with a standard deviation of about 1/sqrt(in_features).
  """
  def random_params(cfg, seed \\ 1) do
    %{hidden: h, head_dim: hd} = cfg

    layers =
      for l <- 0..(cfg.layers - 1) do
        quantized =
          for {{name, shape}, j} <- Enum.with_index(projections(cfg)), into: %{} do
            {name, random_quantized(shape, seed * 1_000_003 + l * 16 + j)}
          end

        norms = %{
          attn_norm: norm_weight(h, l * 4 + 1, cfg.type),
          mlp_norm: norm_weight(h, l * 4 + 2, cfg.type)
        }

        norms =
          if cfg.qk_norm do
            Map.merge(norms, %{
              q_norm: norm_weight(hd, l * 4 + 3, cfg.type),
              k_norm: norm_weight(hd, l * 4, cfg.type)
            })
          else
            norms
          end

        Map.merge(quantized, norms)
      end

    %{
      embedding: random_quantized({cfg.vocab, h}, seed * 1_000_003 + 999_983),
      final_norm: norm_weight(h, 7, cfg.type),
      inv_freq: inv_freq(cfg),
      layers: List.to_tuple(layers)
    }
  end

  @doc "The same parameters with every quantized tensor dequantized to dense f32."
  def dense_params(params) do
    map_weights(params, fn w -> w |> NxQuant.dequantize() |> Nx.as_type(:f32) end)
  end

  @doc "Applies `fun` to every quantized weight (projections and embedding)."
  def map_weights(params, fun) do
    quantized? = &NxQuant.quantized?/1

    layers =
      params.layers
      |> Tuple.to_list()
      |> Enum.map(fn layer ->
        Map.new(layer, fn {k, v} -> {k, if(quantized?.(v), do: fun.(v), else: v)} end)
      end)
      |> List.to_tuple()

    %{params | embedding: fun.(params.embedding), layers: layers}
  end

  @doc "Bytes of quantized weights one decode step reads (every projection and the embedding)."
  def weight_bytes(params) do
    layer_bytes =
      params.layers
      |> Tuple.to_list()
      |> Enum.flat_map(&Map.values/1)
      |> Enum.filter(&NxQuant.quantized?/1)
      |> Enum.map(&quantized_bytes/1)
      |> Enum.sum()

    layer_bytes + quantized_bytes(params.embedding)
  end

  defp quantized_bytes(w) do
    %{packed: p, scales: s, biases: b} = NxQuant.parts(w)
    Nx.byte_size(p) + Nx.byte_size(s) + Nx.byte_size(b)
  end

  def random_quantized({n, k} = shape, seed) do
    groups = div(k, @group_size)
    packed = random_bytes(div(n * k * @bits, 8), seed) |> Nx.from_binary(:u32)
    {scales, biases} = scale_pool(k)
    copies = div(n * groups, 4096) + 1
    cut = fn pool -> binary_part(:binary.copy(pool, copies), 0, n * groups * 2) end

    # A random rotation of the pools per weight so that no two weights share their parameters.
    offset = rem(seed * 2654, 4096) * 2
    rot = fn pool -> binary_part(pool, offset, 8192 - offset) <> binary_part(pool, 0, offset) end

    NxQuant.quantized_tensor(
      Nx.reshape(packed, {n, div(k * @bits, 32)}),
      cut.(rot.(scales)) |> Nx.from_binary(:bf16) |> Nx.reshape({n, groups}),
      cut.(rot.(biases)) |> Nx.from_binary(:bf16) |> Nx.reshape({n, groups}),
      shape,
      type: {:s, @bits},
      group_size: @group_size
    )
  end

  # 4096 (scale, bias) pairs as bf16 binaries: scale = +-2^-e with e = e0 or e0 + 1, where
  # 2^-e0 ~ 1 / (4.6 sqrt(k)) (q - 8 has a standard deviation of 4.6), and bias = -8 * scale.
  defp scale_pool(k) do
    e0 = round(:math.log2(4.6 * :math.sqrt(k)))
    bits = random_bytes(4096, k)

    for <<sign::1, extra::1, _::6 <- bits>>, reduce: {<<>>, <<>>} do
      {s, b} ->
        exp = 127 - e0 - extra
        {<<s::binary, sign::1, exp::8, 0::7>>, <<b::binary, 1 - sign::1, exp + 3::8, 0::7>>}
    end
    |> then(fn {s, b} -> {to_little16(s), to_little16(b)} end)
  end

  defp to_little16(big), do: for(<<v::16 <- big>>, into: <<>>, do: <<v::16-little>>)

  # Deterministic random bytes (AES-CTR keyed by the seed).
  def random_bytes(bytes, seed) do
    :crypto.crypto_one_time(
      :aes_128_ctr,
      <<seed::128>>,
      <<0::128>>,
      :binary.copy(<<0>>, bytes),
      true
    )
  end

  # Random f32 values (sum of two uniforms, roughly bell-shaped, in [-scale, scale]).
  def random_f32(count, seed, scale \\ 1.0) do
    pool = min(count, 65_536)

    values =
      for <<a::16, b::16 <- random_bytes(pool * 4, seed)>>, into: <<>> do
        <<(a + b - 65_535) / 65_535 * scale::float-32-native>>
      end

    binary_part(:binary.copy(values, div(count, pool) + 1), 0, count * 4)
  end

  defp norm_weight(n, seed, type) do
    random_f32(n, 77 + seed, 0.25) |> Nx.from_binary(:f32) |> Nx.add(1.0) |> Nx.as_type(type)
  end

  defp inv_freq(%{head_dim: hd, rope_theta: theta}) do
    Nx.iota({div(hd, 2)}, type: :f32)
    |> Nx.multiply(2 / hd)
    |> then(&Nx.pow(theta, &1))
    |> then(&Nx.divide(1.0, &1))
  end

  ## KV cache ---------------------------------------------------------------------------

  @doc """
  A KV cache of `max_len` positions per layer ({kv_heads, max_len, head_dim} of the activations'
  type for K and for V), filled with random values (as if `fill` positions had been decoded; the rest is masked).
  """
  def init_cache(cfg, max_len, seed \\ 5) do
    %{kv_heads: nkv, head_dim: hd} = cfg
    count = nkv * max_len * hd

    for l <- 0..(cfg.layers - 1) do
      k =
        random_f32(count, seed * 101 + 2 * l)
        |> Nx.from_binary(:f32)
        |> Nx.as_type(cfg.type)
        |> Nx.reshape({nkv, max_len, hd})

      v =
        random_f32(count, seed * 101 + 2 * l + 1)
        |> Nx.from_binary(:f32)
        |> Nx.as_type(cfg.type)
        |> Nx.reshape({nkv, max_len, hd})

      {k, v}
    end
    |> List.to_tuple()
  end

  ## The decoder --------------------------------------------------------------------------

  @doc """
  One decode step: the logits {1, vocab} for `token` (a {1} integer tensor) at position `pos`
  (an integer or a scalar tensor), and the updated cache. Option `:linear` replaces
  `fn x, w -> Nx.dot(x, [-1], w, [1]) end` (tests).
  """
  def step(params, cache, token, pos, cfg, opts \\ []) do
    linear = Keyword.get(opts, :linear, &linear/2)
    max_len = cache |> elem(0) |> elem(0) |> Nx.axis_size(1)

    x =
      section(:embed, fn ->
        params.embedding |> Nx.take(token, axis: 0) |> Nx.as_type(cfg.type)
      end)

    {cos, sin} = section(:rope, fn -> rope_tables(params.inv_freq, pos, cfg.type) end)
    scores_shape = {cfg.kv_heads, div(cfg.heads, cfg.kv_heads), max_len}
    mask = section(:mask, fn -> Nx.less_equal(Nx.iota(scores_shape, axis: 2), pos) end)

    {x, caches} =
      params.layers
      |> Tuple.to_list()
      |> Enum.zip(Tuple.to_list(cache))
      |> Enum.map_reduce(x, fn {layer, layer_cache}, x ->
        {x, layer_cache} = layer(x, layer, layer_cache, pos, {cos, sin, mask}, cfg, linear)
        {layer_cache, x}
      end)
      |> then(fn {caches, x} -> {x, caches} end)

    x = section(:norm, fn -> rms_norm(x, params.final_norm, cfg.eps) end)
    logits = section(:logits, fn -> linear.(x, params.embedding) end)
    {logits, List.to_tuple(caches)}
  end

  @doc "The greedy choice: argmax over the vocabulary, a {1} tensor."
  def next_token(logits), do: section(:sampling, fn -> Nx.argmax(logits, axis: -1) end)

  def linear(x, w), do: Nx.dot(x, [-1], w, [1])

  defp layer(x, p, {k_cache, v_cache}, pos, {cos, sin, mask}, cfg, linear) do
    %{heads: nh, kv_heads: nkv, head_dim: hd, eps: eps} = cfg
    group = div(nh, nkv)

    h = section(:norm, fn -> rms_norm(x, p.attn_norm, eps) end)

    {q, k, v} = section(:matmul, fn -> {linear.(h, p.q), linear.(h, p.k), linear.(h, p.v)} end)

    q = Nx.reshape(q, {nh, hd})
    k = Nx.reshape(k, {nkv, hd})
    v = Nx.reshape(v, {nkv, 1, hd})

    {q, k} =
      if cfg.qk_norm do
        section(:norm, fn -> {rms_norm(q, p.q_norm, eps), rms_norm(k, p.k_norm, eps)} end)
      else
        {q, k}
      end

    {q, k} = section(:rope, fn -> {rope(q, cos, sin), rope(k, cos, sin)} end)

    {k_cache, v_cache} =
      section(:cache_update, fn ->
        {Nx.put_slice(k_cache, [0, pos, 0], Nx.reshape(k, {nkv, 1, hd})),
         Nx.put_slice(v_cache, [0, pos, 0], v)}
      end)

    scores =
      section(:scores, fn ->
        # q scaled before the dot (as MLX's attention does): {heads, hd} values, not
        # {heads, context}.
        q
        |> Nx.multiply(1 / :math.sqrt(hd))
        |> Nx.reshape({nkv, group, hd})
        |> Nx.dot([2], [0], k_cache, [2], [0])
      end)

    scores =
      section(:mask, fn -> Nx.select(mask, scores, Nx.Constants.neg_infinity(cfg.type)) end)

    probs = section(:softmax, fn -> softmax(scores) end)

    attn =
      section(:attn_values, fn ->
        probs |> Nx.dot([2], [0], v_cache, [1], [0]) |> Nx.reshape({1, nh * hd})
      end)

    attn = section(:matmul, fn -> linear.(attn, p.o) end)
    x = section(:residual, fn -> Nx.add(x, attn) end)

    h = section(:norm, fn -> rms_norm(x, p.mlp_norm, eps) end)
    {g, u} = section(:matmul, fn -> {linear.(h, p.gate), linear.(h, p.up)} end)
    a = section(:mlp_act, fn -> g |> Nx.multiply(Nx.sigmoid(g)) |> Nx.multiply(u) end)
    m = section(:matmul, fn -> linear.(a, p.down) end)
    x = section(:residual, fn -> Nx.add(x, m) end)
    {x, {k_cache, v_cache}}
  end

  # Over the last axis, with a learned scale.
  def rms_norm(x, w, eps) do
    variance = x |> Nx.multiply(x) |> Nx.mean(axes: [-1], keep_axes: true)
    x |> Nx.multiply(Nx.rsqrt(Nx.add(variance, eps))) |> Nx.multiply(w)
  end

  # cos and sin {1, head_dim} of the position's angles (the halves repeated, "rotate_half" style).
  defp rope_tables(inv_freq, pos, type) do
    angles = Nx.multiply(inv_freq, pos)
    angles = Nx.concatenate([angles, angles]) |> Nx.reshape({1, :auto})
    {angles |> Nx.cos() |> Nx.as_type(type), angles |> Nx.sin() |> Nx.as_type(type)}
  end

  defp rope(x, cos, sin) do
    half = div(Nx.axis_size(x, -1), 2)
    x1 = Nx.slice_along_axis(x, 0, half, axis: -1)
    x2 = Nx.slice_along_axis(x, half, half, axis: -1)
    rotated = Nx.concatenate([Nx.negate(x2), x1], axis: -1)
    Nx.add(Nx.multiply(x, cos), Nx.multiply(rotated, sin))
  end

  defp softmax(x) do
    e = Nx.exp(Nx.subtract(x, Nx.reduce_max(x, axes: [-1], keep_axes: true)))
    Nx.divide(e, Nx.sum(e, axes: [-1], keep_axes: true))
  end

  ## Generation -------------------------------------------------------------------------

  @doc """
  Greedy generation of `n` tokens after `token` (an integer) at position `pos`:
  `{tokens, logits_list, cache}`. `step_fun.(params, cache, token_tensor, pos)` returns
  `{next_token_tensor, logits, cache}` (eager: `eager_step/1`; or a jitted one).
  """
  def generate(step_fun, params, cache, token, pos, n) do
    {tokens, {_, logits, cache}} =
      Enum.map_reduce(0..(n - 1), {token, [], cache}, fn i, {token, logits, cache} ->
        {next, l, cache} = step_fun.(params, cache, Nx.tensor([token]), pos + i)
        next = section(:sampling, fn -> next |> Nx.squeeze() |> Nx.to_number() end)
        {next, {next, [l | logits], cache}}
      end)

    {tokens, Enum.reverse(logits), cache}
  end

  def eager_step(cfg, opts \\ []) do
    fn params, cache, token, pos ->
      {logits, cache} = step(params, cache, token, pos, cfg, opts)
      {next_token(logits), logits, cache}
    end
  end

  def jit_step(cfg) do
    jitted =
      Nx.Defn.jit(fn params, cache, token, pos ->
        {logits, cache} = step(params, cache, token, pos, cfg)
        {Nx.argmax(logits, axis: -1), logits, cache}
      end)

    fn params, cache, token, pos -> jitted.(params, cache, token, Nx.tensor(pos)) end
  end

  ## Profiling --------------------------------------------------------------------------

  @profile_key {__MODULE__, :profile}

  @doc "Runs `fun` with section timing on (eager only); returns `{result, %{section => ns}}`."
  def profile(fun) do
    Process.put(@profile_key, %{})

    try do
      result = fun.()
      {result, Process.get(@profile_key)}
    after
      Process.delete(@profile_key)
    end
  end

  defp section(name, fun) do
    case Process.get(@profile_key) do
      nil ->
        fun.()

      _ ->
        t0 = System.monotonic_time(:nanosecond)
        result = fun.()
        dt = System.monotonic_time(:nanosecond) - t0
        Process.put(@profile_key, Map.update(Process.get(@profile_key), name, dt, &(&1 + dt)))
        result
    end
  end
end
