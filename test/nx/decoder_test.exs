if Code.ensure_loaded?(Nx) do
  Code.require_file("../../bench/decoder_model.exs", __DIR__)

  defmodule NxQuant.DecoderTest do
    # The decoder of bench/decoder_bench.exs (bench/decoder_model.exs, the same code) on a small
    # configuration: 2 layers, hidden 128, 4 query / 2 KV heads of 32, vocab 256, intermediate
    # 256, a KV cache of 16 positions (the first 8 random, then 8 greedy steps). Weights are
    # 4-bit g64 bf16 with scales +-2^-e and biases -8 * scale, so every weight is exactly
    # representable in bf16: the dense reference multiplies by exactly the values the fused
    # kernel multiplies by, and what differs is only how the products are summed.
    use ExUnit.Case, async: true
    @moduletag :nx

    alias NxQuant.DecoderModel, as: Model

    @cfg Model.config(:tiny)
    @max_len 16
    @start 8
    @steps 8
    @first_token 3
    # f32's unit roundoff.
    @u :math.pow(2, -24)

    # The backend the native path runs on: the shim over NxQuant.NativeBackend once it exists
    # (then also the shim's default), else the shim's default.
    @native if Code.ensure_loaded?(NxQuant.NativeBackend),
              do: {NxQuant.Backend, backend: NxQuant.NativeBackend},
              else: {NxQuant.Backend, []}
    @binary {NxQuant.Backend, backend: Nx.BinaryBackend}

    # Greedy generation from fresh random parameters and cache on `backend`, recording the
    # (x, weight) of every fused call: {tokens, logits per step, calls per step}.
    defp run(backend, opts \\ []) do
      cfg = %{@cfg | type: Keyword.get(opts, :type, :f32)}

      Nx.with_default_backend(backend, fn ->
        params = Model.random_params(cfg)
        params = if opts[:dense], do: Model.dense_params(params), else: params
        cache = Model.init_cache(cfg, @max_len)
        me = self()
        ref = make_ref()

        linear = fn x, w ->
          send(me, {ref, x, w})
          Model.linear(x, w)
        end

        step = if opts[:jit], do: Model.jit_step(cfg), else: Model.eager_step(cfg, linear: linear)

        {tokens, logits, _cache} =
          Model.generate(step, params, cache, @first_token, @start, @steps)

        calls = collect(ref, [])

        per_step =
          if opts[:jit], do: [], else: Enum.chunk_every(calls, div(length(calls), @steps))

        {tokens, logits, per_step}
      end)
    end

    defp collect(ref, acc) do
      receive do
        {^ref, x, w} -> collect(ref, [{x, w} | acc])
      after
        0 -> Enum.reverse(acc)
      end
    end

    defp gamma(n), do: n * @u / (1 - n * @u)

    defp dense(qw), do: qw |> NxQuant.dequantize() |> Nx.as_type(:f32)

    # |scale| * q + |bias| per weight (exact in f32): >= |w|, and >= every term the kernel's
    # per-group sums (scale * sum(q x) + bias * sum(x)) add up.
    defp abs_weight(qw) do
      %{packed: p, scales: s, biases: b} = NxQuant.parts(qw)
      %NxQuant.Config{bits: bits, group_size: gs} = NxQuant.config(qw)

      NxQuant.quantized_tensor(p, Nx.abs(s), Nx.abs(b), qw.shape,
        type: {:s, bits},
        group_size: gs
      )
      |> dense()
    end

    # How many f32-rounded terms one output of a fused call over K inputs sums, at most: each f32
    # x is split exactly into up to three bf16 parts (exact products with bf16 q), and each
    # group adds its scale and bias terms (two products, two sums).
    defp terms(k), do: 3 * k + 4 * div(k, 64)

    # Any f32 summation of n terms errs by at most gamma(n) * sum|terms|; the split parts of x
    # sum to at most |x| (1 + 2^-7) in magnitude. `n` terms for each output.
    defp kernel_bound(x, qw, n) do
      x
      |> Nx.abs()
      |> Nx.dot([-1], abs_weight(qw), [1])
      |> Nx.multiply(gamma(n) * (1 + :math.pow(2, -7)))
    end

    defp assert_within(a, b, bound, what) do
      excess = a |> Nx.subtract(b) |> Nx.abs() |> Nx.subtract(bound) |> Nx.reduce_max()
      excess = Nx.to_number(excess)

      assert excess <= 0,
             "#{what}: |difference| exceeds the bound by #{excess} " <>
               "(max |difference| #{Nx.to_number(a |> Nx.subtract(b) |> Nx.abs() |> Nx.reduce_max())})"
    end

    test "every fused call equals the dense dot on the dequantized weight within its f32 accumulation bound" do
      {_tokens, _logits, steps} = run(@native)
      calls = List.flatten(steps)
      # 7 projections per layer and the logits, per step
      assert length(calls) == @steps * (7 * @cfg.layers + 1)

      for {{x, qw}, i} <- Enum.with_index(calls) do
        assert NxQuant.quantized?(qw)
        k = elem(qw.shape, 1)
        reference = Nx.dot(x, [-1], dense(qw), [1])
        # BinaryBackend's dense dot sums in double, then rounds once to f32.
        bound = Nx.add(kernel_bound(x, qw, terms(k)), Nx.multiply(Nx.abs(reference), @u))

        assert_within(
          Model.linear(x, qw),
          reference,
          bound,
          "call #{i}, weight #{inspect(qw.shape)}"
        )
      end
    end

    test "logits on the quantized weights equal the decoder's on the dequantized f32 weights" do
      {tokens, logits, steps} = run(@native)
      {dense_tokens, dense_logits, _} = run(@native, dense: true)

      # Each step's logits are the last fused call, on the final norm's output. Its own f32
      # accumulation error is within kernel_bound; the errors of the step's earlier calls (each
      # within its bound, as the test above checks) reach the residual stream additively and
      # pass through the final RMSNorm, which renormalizes. To first order, with gain 1 through
      # the layers, the logits are within the bound of one accumulation as long as all the
      # step's accumulations together.
      for {l, dl, calls, s} <- Enum.zip([logits, dense_logits, steps, 0..(@steps - 1)]) do
        {x, embedding} = List.last(calls)
        n = calls |> Enum.map(fn {_, w} -> terms(elem(w.shape, 1)) end) |> Enum.sum()
        bound = Nx.add(kernel_bound(x, embedding, n), Nx.multiply(Nx.abs(dl), @u))
        assert_within(l, dl, bound, "step #{s} logits")

        # The greedy choice cannot flip within the bound: the top two dense logits are further
        # apart than twice the bound's largest value (else the tokens below could differ).
        [first, second] =
          dl |> Nx.flatten() |> Nx.sort(direction: :desc) |> Nx.to_flat_list() |> Enum.take(2)

        assert first - second > 2 * Nx.to_number(Nx.reduce_max(bound)), "step #{s}: near tie"
      end

      assert tokens == dense_tokens
    end

    for type <- [:f32, :bf16] do
      test "the native path gives plain BinaryBackend's logits and tokens, #{type} activations" do
        native_vs_binary(unquote(type))
      end
    end

    defp native_vs_binary(type) do
      {tokens, logits, steps} = run(@native, type: type)
      {binary_tokens, binary_logits, _} = run(@binary, type: type)
      # The unit roundoff of the activations' type.
      u = if type == :bf16, do: :math.pow(2, -8), else: @u

      if Code.ensure_loaded?(NxQuant.NativeBackend) do
        assert hd(logits).data.inner.__struct__ == NxQuant.NativeBackend
      end

      assert %NxQuant.Backend{inner: %Nx.BinaryBackend{}} = hd(binary_logits).data

      # Every op is bit-identical with BinaryBackend except the transcendental functions, within
      # 1 ulp (2u relative) of the result: per layer the norms' rsqrt (2, + 2 with q/k norms),
      # RoPE's cos/sin, softmax's exp, SwiGLU's sigmoid, and the final norm's rsqrt. To first
      # order each such relative perturbation reaches the logits through at most |h| . |E|
      # (gain 1, as above). (In practice both call the same libm functions in double: the
      # logits are bit-identical.)
      transcendental = @cfg.layers * (if(@cfg.qk_norm, do: 4, else: 2) + 3) + 1

      for {l, bl, calls, s} <- Enum.zip([logits, binary_logits, steps, 0..(@steps - 1)]) do
        {x, embedding} = List.last(calls)

        bound =
          x
          |> Nx.abs()
          |> Nx.dot([-1], abs_weight(embedding), [1])
          |> Nx.multiply(2 * u * transcendental)

        assert_within(l, bl, bound, "step #{s} logits")
      end

      assert tokens == binary_tokens
    end

    test "Nx.Defn.jit of the step (default evaluator) gives the eager step's logits bit for bit" do
      {tokens, logits, _} = run(@native)
      {jit_tokens, jit_logits, _} = run(@native, jit: true)
      assert tokens == jit_tokens

      for {l, jl} <- Enum.zip(logits, jit_logits) do
        assert Nx.to_binary(l) == Nx.to_binary(jl)
      end
    end
  end
end
