if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.NativeBackendTest do
    # NxQuant.NativeBackend against Nx.BinaryBackend: every covered callback gives the same
    # result (type, shape, names, bits; transcendental functions within 1 ulp) for every type,
    # broadcasting, axes and NaN/Inf/-0.0 case, and runs natively (strict mode: a native call
    # that raises re-raises, and a fallback is recorded and fails the test). Ops without a kernel
    # fall back to BinaryBackend and give its answer.
    use ExUnit.Case, async: true
    @moduletag :nx

    import Bitwise

    alias NxQuant.NativeBackend, as: NB

    @floats [{:f, 32}, {:f, 16}, {:bf, 16}, {:f, 64}]
    @signed [{:s, 8}, {:s, 16}, {:s, 32}, {:s, 64}]
    @unsigned [{:u, 8}, {:u, 16}, {:u, 32}, {:u, 64}]
    @ints @signed ++ @unsigned
    @types @floats ++ @ints

    setup do
      NB.__strict__(true)
      NB.__fallbacks__()
      :ok
    end

    ## Data ----------------------------------------------------------------------------------

    @float_values [1.5, -0.0, 0.0, -2.25, :nan, 3.0, :infinity, 0.1, -7.0, :neg_infinity] ++
                    [1.0e-3, 100.5, -0.5, 2.0, 1.0, 0.75, -3.0e4, 6.0e-8, 2.5, -1.0]
    @finite_values [1.5, -0.0, 0.0, -2.25, 0.3, 3.0, 0.1, -7.0, 1.0e-3, 100.5, -0.5, 2.0] ++
                     [1.0, 0.75, -30.0, 2.5, -1.0, 0.9, -0.2, 5.0]
    @signed_values [3, -1, 0, 7, -128, 127, 2, -5, 100, 1, -2, 42, -7, 9, 0, -100, 5, 3, 8, -4]
    @unsigned_values [3, 0, 255, 7, 1, 128, 2, 5, 100, 1, 200, 42, 0, 9, 17, 250, 5, 3, 8, 4]

    defp pool({:f, _}, :finite), do: @finite_values
    defp pool({:bf, _}, :finite), do: @finite_values
    defp pool({:f, _}, _), do: @float_values
    defp pool({:bf, _}, _), do: @float_values
    defp pool({:s, _}, _), do: @signed_values
    defp pool({:u, _}, _), do: @unsigned_values

    # A deterministic BinaryBackend tensor of `shape` whose values cycle through the type's pool
    # from `salt`.
    defp t(type, shape, opts \\ []) do
      salt = Keyword.get(opts, :salt, 0)
      pool = Keyword.get(opts, :pool) || pool(type, Keyword.get(opts, :values))
      n = Tuple.product(shape)
      values = for i <- 0..(n - 1), do: Enum.at(pool, rem(i * 7 + salt, length(pool)))

      case shape do
        {} -> Nx.tensor(hd(values), type: type, backend: Nx.BinaryBackend)
        _ -> Nx.tensor(values, type: type, backend: Nx.BinaryBackend) |> Nx.reshape(shape)
      end
    end

    defp to_nb(%Nx.Tensor{} = t), do: Nx.backend_copy(t, NB)
    defp to_nb(list) when is_list(list), do: Enum.map(list, &to_nb/1)
    defp to_nb(other), do: other

    # Runs `fun` on BinaryBackend and on NativeBackend (inputs copied, default backend set) and
    # compares. When BinaryBackend raises (Erlang arithmetic errors, rejected input) there is
    # nothing to compare with.
    defp check(fun, inputs, opts \\ []) do
      expected =
        try do
          {:ok, Nx.with_default_backend(Nx.BinaryBackend, fn -> fun.(inputs) end)}
        rescue
          e -> {:error, e}
        end

      case expected do
        {:error, _} ->
          :skipped

        {:ok, expected} ->
          NB.__fallbacks__()
          actual = Nx.with_default_backend(NB, fn -> fun.(to_nb(inputs)) end)
          fallbacks = NB.__fallbacks__()
          context = {Keyword.get(opts, :label), Enum.map(inputs, &describe/1)}

          unless opts[:fallback] do
            assert fallbacks == [], "fell back: #{inspect(fallbacks)} #{inspect(context)}"
          end

          assert_same(actual, expected, Keyword.get(opts, :ulp, 0), context)
          :ok
      end
    end

    defp describe(%Nx.Tensor{type: type, shape: shape}), do: {type, shape}
    defp describe(other), do: other

    defp assert_same(actual, expected, ulp, context) when is_tuple(expected) do
      assert is_tuple(actual) and tuple_size(actual) == tuple_size(expected)

      Enum.zip(Tuple.to_list(actual), Tuple.to_list(expected))
      |> Enum.each(fn {a, e} -> assert_same(a, e, ulp, context) end)
    end

    defp assert_same(%Nx.Tensor{} = actual, %Nx.Tensor{} = expected, ulp, context) do
      assert {actual.type, actual.shape, actual.names, actual.vectorized_axes} ==
               {expected.type, expected.shape, expected.names, expected.vectorized_axes},
             inspect(context)

      assert %NB{} = actual.data, "result not on NativeBackend: #{inspect(context)}"
      a = Nx.to_binary(actual)
      e = Nx.to_binary(expected)

      if ulp == 0 or a == e or not float?(expected.type) do
        assert a == e,
               "#{inspect(context)}\nnative: #{inspect(actual)}\nbinary: #{inspect(expected)}"
      else
        worst = max_ulp(a, e, expected.type)

        assert worst <= ulp,
               "#{inspect(context)}: #{worst} ulp apart\nnative: #{inspect(actual)}\nbinary: #{inspect(expected)}"
      end
    end

    defp assert_same(actual, expected, _ulp, context),
      do: assert(actual == expected, inspect(context))

    defp float?({kind, _}), do: kind in [:f, :bf]

    # The largest distance in units in the last place between two float binaries; NaN equals
    # only NaN.
    defp max_ulp(a, b, {_, size} = type) do
      {exp_bits, mant_bits} = layout(type)

      Enum.zip(
        for(<<x::size(size)-native <- a>>, do: x),
        for(<<y::size(size)-native <- b>>, do: y)
      )
      |> Enum.map(fn {x, y} ->
        case {nan?(x, exp_bits, mant_bits), nan?(y, exp_bits, mant_bits)} do
          {true, true} -> 0
          {false, false} -> abs(ordered(x, size) - ordered(y, size))
          _ -> :infinity
        end
      end)
      |> Enum.max(fn -> 0 end)
    end

    defp layout({:f, 16}), do: {5, 10}
    defp layout({:bf, 16}), do: {8, 7}
    defp layout({:f, 32}), do: {8, 23}
    defp layout({:f, 64}), do: {11, 52}

    defp nan?(bits, e, m),
      do: (bits >>> m &&& (1 <<< e) - 1) == (1 <<< e) - 1 and (bits &&& (1 <<< m) - 1) != 0

    defp ordered(bits, size) do
      magnitude = bits &&& (1 <<< (size - 1)) - 1
      if bits >>> (size - 1) == 1, do: -magnitude, else: magnitude
    end

    ## Element-wise unary ------------------------------------------------------------------

    @transcendental [:exp, :expm1, :log, :log1p, :sigmoid, :cos, :sin, :tan, :cosh, :sinh] ++
                      [:tanh, :acos, :asin, :atan, :acosh, :asinh, :atanh, :rsqrt, :cbrt] ++
                      [:erf, :erfc, :erf_inv]

    test "transcendental functions: within 1 ulp, every type (integers give floats)" do
      for op <- @transcendental, type <- @types, values <- [:all, :finite] do
        x = t(type, {4, 5}, values: values)
        check(&apply(Nx, op, &1), [x], ulp: 1, label: {op, type})
      end

      # Inputs in every function's domain, also negative ones for the odd functions.
      small = Nx.tensor([-0.9, -0.5, -0.1, -0.0, 0.0, 0.2, 0.45, 0.7, 0.99, 0.05], type: :f64)

      for op <- @transcendental, type <- @floats do
        check(&apply(Nx, op, &1), [Nx.as_type(small, type)], ulp: 1, label: {op, type})
      end
    end

    test "correctly rounded unary ops are bit-identical: sqrt, negate, abs, sign, floor, ceil, round" do
      for op <- [:sqrt, :negate, :abs, :sign, :floor, :ceil, :round], type <- @types do
        check(&apply(Nx, op, &1), [t(type, {4, 5})], label: {op, type})
        check(&apply(Nx, op, &1), [t(type, {}, salt: 3)], label: {op, type})
      end
    end

    test "predicates and bitwise/logical not" do
      for op <- [:is_nan, :is_infinity, :logical_not], type <- @types do
        check(&apply(Nx, op, &1), [t(type, {2, 10})], label: {op, type})
      end

      for type <- @ints, do: check(&Nx.bitwise_not(hd(&1)), [t(type, {20})], label: type)
    end

    ## Element-wise binary -----------------------------------------------------------------

    @shapes [
      {{4, 5}, {4, 5}},
      {{4, 5}, {5}},
      {{4, 1}, {1, 5}},
      {{}, {4, 5}},
      {{2, 3, 1}, {2, 1, 4}},
      {{3, 1, 2}, {}}
    ]

    @arith [:add, :subtract, :multiply, :divide, :max, :min]
    @compare [:equal, :not_equal, :less, :less_equal, :greater, :greater_equal]
    @logical [:logical_and, :logical_or, :logical_xor]

    test "add, subtract, multiply, divide, max, min, comparisons, logical ops: every type, broadcasting" do
      for op <- @arith ++ @compare ++ @logical, type <- @types, {sa, sb} <- @shapes do
        a = t(type, sa)
        b = t(type, sb, salt: 5)
        check(fn [a, b] -> apply(Nx, op, [a, b]) end, [a, b], label: {op, type, sa, sb})
      end
    end

    test "mixed operand types and number operands" do
      pairs = [
        {{:f, 32}, {:s, 32}},
        {{:u, 8}, {:s, 8}},
        {{:bf, 16}, {:f, 16}},
        {{:f, 64}, {:f, 32}},
        {{:u, 64}, {:s, 64}},
        {{:u, 8}, {:f, 16}},
        {{:s, 16}, {:bf, 16}},
        {{:u, 32}, {:u, 8}}
      ]

      for op <- @arith ++ @compare ++ @logical, {ta, tb} <- pairs do
        a = t(ta, {3, 4})
        b = t(tb, {4}, salt: 2)
        check(fn [a, b] -> apply(Nx, op, [a, b]) end, [a, b], label: {op, ta, tb})
        check(fn [a, b] -> apply(Nx, op, [b, a]) end, [a, b], label: {op, tb, ta})
      end

      for op <- @arith ++ @compare, type <- @types, number <- [2, -3, 0.5, -0.0] do
        a = t(type, {3, 4})
        check(fn [a] -> apply(Nx, op, [a, number]) end, [a], label: {op, type, number})
        check(fn [a] -> apply(Nx, op, [number, a]) end, [a], label: {op, number, type})
      end
    end

    test "pow and atan2 (within 1 ulp for floats, exact for integers)" do
      for op <- [:pow, :atan2], type <- @types, {sa, sb} <- @shapes do
        a = t(type, sa, values: :finite)
        b = if type in @ints, do: t(type, sb, pool: [0, 1, 2, 3, 5]), else: t(type, sb, salt: 3)
        check(fn [a, b] -> apply(Nx, op, [a, b]) end, [a, b], ulp: 1, label: {op, type})
      end

      check(fn [a] -> Nx.pow(a, 2) end, [t({:f, 32}, {4, 5})], ulp: 1)
      check(fn [a] -> Nx.pow(a, 0.5) end, [t({:f, 32}, {4, 5}, pool: [0.5, 2.0, 9.0])], ulp: 1)
      check(fn [a] -> Nx.pow(a, 3) end, [t({:s, 32}, {4, 5})])
    end

    test "integer-only ops: quotient, remainder, bitwise, shifts (wraparound)" do
      for type <- @ints, {sa, sb} <- @shapes do
        a = t(type, sa)
        d = t(type, sb, pool: [1, 2, 3, 7, 5, 100])
        s = t(type, sb, pool: [0, 1, 3, 7, 2])

        for op <- [:quotient, :remainder] do
          check(fn [a, b] -> apply(Nx, op, [a, b]) end, [a, d], label: {op, type})
        end

        for op <- [:bitwise_and, :bitwise_or, :bitwise_xor] do
          check(fn [a, b] -> apply(Nx, op, [a, b]) end, [a, t(type, sb, salt: 1)],
            label: {op, type}
          )
        end

        for op <- [:left_shift, :right_shift] do
          check(fn [a, b] -> apply(Nx, op, [a, b]) end, [a, s], label: {op, type})
        end
      end

      for type <- @floats do
        check(fn [a, b] -> Nx.remainder(a, b) end, [t(type, {4, 5}), t(type, {5}, salt: 4)])
      end
    end

    test "select: predicate of any type (NaN is true), broadcasting, a scalar predicate" do
      for ptype <- [{:u, 8}, {:f, 32}, {:s, 64}, {:bf, 16}], type <- [{:f, 32}, {:s, 8}] do
        pred = t(ptype, {3, 4}, pool: [0, 1, 0, 2] ++ if(ptype in @ints, do: [], else: [:nan]))
        check(fn [p, a, b] -> Nx.select(p, a, b) end, [pred, t(type, {3, 4}), t(type, {4})])
        check(fn [p, a, b] -> Nx.select(p, a, b) end, [pred, t(type, {}), t({:f, 16}, {3, 1})])
      end

      for p <- [0, 1] do
        pred = Nx.tensor(p, type: :u8, backend: Nx.BinaryBackend)

        check(fn [p, a, b] -> Nx.select(p, a, b) end, [
          pred,
          t({:f, 32}, {3, 4}),
          t({:s, 32}, {4})
        ])
      end
    end

    test "clip: every type, NaN, mixed bound types" do
      for type <- @types do
        lo = Nx.tensor(1, type: type, backend: Nx.BinaryBackend)
        hi = Nx.tensor(5, type: type, backend: Nx.BinaryBackend)
        check(fn [x, lo, hi] -> Nx.clip(x, lo, hi) end, [t(type, {4, 5}), lo, hi])
      end

      check(fn [x] -> Nx.clip(x, -1, 2.5) end, [t({:s, 32}, {4, 5})])
      check(fn [x] -> Nx.clip(x, -1.5, 2.5) end, [t({:bf, 16}, {4, 5})])
      check(fn [x] -> Nx.clip(x, 0, 10) end, [t({:u, 8}, {4, 5})])
    end

    test "as_type between every pair of types: rounding, truncation, NaN/Inf to integers, wraparound" do
      big = [1.0e10, -1.0e10, 3.0e38, -3.5e38, 65520.0, 65504.0, 1.0e300, 300.0, -1.5, 255.9]
      bigs = [300, -1, 65_536, -70_000, 4_294_967_296, -9_223_372_036_854_775_808, 16_777_217]

      for from <- @types, to <- @types, from != to do
        check(&Nx.as_type(hd(&1), to), [t(from, {4, 5})], label: {from, to})

        extra =
          cond do
            from in @floats -> t(from, {10}, pool: big)
            from in @signed -> t(from, {7}, pool: bigs)
            true -> t(from, {7}, pool: Enum.map(bigs, &abs/1))
          end

        check(&Nx.as_type(hd(&1), to), [extra], label: {from, to, :extremes})
      end
    end

    ## Reductions ---------------------------------------------------------------------------

    @axes [nil, [0], [1], [2], [0, 2], [2, 0], [1, 2], [0, 1, 2], [-1]]

    test "sum, product, reduce_max, reduce_min, all, any: every type, axes, keep_axes" do
      for op <- [:sum, :product, :reduce_max, :reduce_min, :all, :any],
          type <- @types,
          axes <- @axes,
          keep <- [false, true] do
        opts = if axes, do: [axes: axes, keep_axes: keep], else: [keep_axes: keep]
        x = t(type, {2, 3, 4}, values: if(op == :product, do: :finite))
        check(&apply(Nx, op, [hd(&1), opts]), [x], label: {op, type, opts})
      end

      # NaN and infinities reach max/min/sum as BinaryBackend sees them.
      check(&Nx.reduce_max(hd(&1), axes: [1]), [t({:f, 32}, {4, 5})])

      check(&Nx.sum(hd(&1)), [
        Nx.tensor([:infinity, :neg_infinity, 1.0], backend: Nx.BinaryBackend)
      ])

      check(&Nx.sum(hd(&1), axes: [0]), [t({:f, 16}, {40, 3}, values: :finite)])
      check(&Nx.sum(hd(&1)), [t({:bf, 16}, {200}, values: :finite)])
    end

    test "argmax, argmin: every type, axis, keep_axis, tie_break, NaN" do
      for op <- [:argmax, :argmin],
          type <- @types,
          axis <- [nil, 0, 1, 2],
          keep <- [false, true],
          tie <- [:low, :high],
          values <- [:all, :finite] do
        opts = [tie_break: tie, keep_axis: keep] ++ if(axis, do: [axis: axis], else: [])
        x = t(type, {2, 3, 4}, values: values, salt: 1)
        check(&apply(Nx, op, [hd(&1), opts]), [x], label: {op, type, opts})
        ties = t(type, {3, 4}, pool: [1, 2, 2, 1, 0])
        check(&apply(Nx, op, [hd(&1), Keyword.delete(opts, :axis)]), [ties], label: {op, type})
      end

      check(&Nx.argmax(hd(&1), axis: 1, type: :u8), [t({:f, 32}, {3, 5})])
      check(&Nx.argmin(hd(&1), type: :s64), [t({:f, 32}, {3, 5})])
    end

    ## Dot -----------------------------------------------------------------------------------

    test "dot: contraction and batch axes of any order, every type, mixed types" do
      cases = [
        {{3, 4}, [1], [], {4, 5}, [0], []},
        {{4, 3}, [0], [], {4, 5}, [0], []},
        {{3, 4}, [1], [], {5, 4}, [1], []},
        {{2, 3, 4}, [2, 1], [], {4, 3, 5}, [0, 1], []},
        {{2, 3, 4}, [1, 2], [], {3, 4}, [0, 1], []},
        {{2, 3, 4}, [2], [0], {2, 4, 5}, [1], [0]},
        {{2, 3, 4, 2}, [2], [0, 3], {2, 2, 4, 5}, [2], [0, 1]},
        {{2, 4, 3}, [1], [0], {2, 5, 4}, [2], [0]},
        {{5}, [0], [], {5}, [0], []},
        {{3, 4}, [], [], {2}, [], []}
      ]

      for {sa, ca, ba, sb, cb, bb} <- cases, type <- @types do
        a = t(type, sa, values: :finite)
        b = t(type, sb, values: :finite, salt: 3)
        dot = fn [a, b] -> Nx.dot(a, ca, ba, b, cb, bb) end
        check(dot, [a, b], label: {type, sa, sb})
      end

      for {ta, tb} <- [{{:f, 32}, {:s, 32}}, {{:bf, 16}, {:f, 16}}, {{:u, 8}, {:s, 8}}] do
        check(fn [a, b] -> Nx.dot(a, b) end, [t(ta, {3, 4}), t(tb, {4, 2})])
      end

      # NaN and infinities propagate as in BinaryBackend's sums.
      check(fn [a, b] -> Nx.dot(a, b) end, [t({:f, 32}, {3, 4}), t({:f, 32}, {4, 2}, salt: 1)])
      # A longer contraction: f32 accumulation order matters here.
      check(fn [a, b] -> Nx.dot(a, b) end, [
        t({:f, 32}, {2, 300}, values: :finite),
        t({:f, 32}, {300, 3}, values: :finite, salt: 2)
      ])
    end

    ## Shape and data movement --------------------------------------------------------------

    test "transpose, reshape, squeeze, broadcast, reverse: every type" do
      for type <- @types do
        x = t(type, {2, 3, 4})
        check(&Nx.transpose(hd(&1)), [x])
        check(&Nx.transpose(hd(&1), axes: [1, 0, 2]), [x])
        check(&Nx.transpose(hd(&1), axes: [0, 2, 1]), [x])
        check(&Nx.reshape(hd(&1), {4, 6}), [x])
        check(&Nx.squeeze(hd(&1)), [t(type, {1, 3, 1})])
        check(&Nx.broadcast(hd(&1), {2, 3, 4}), [t(type, {3, 1})])
        check(&Nx.broadcast(hd(&1), {3, 2, 4}, axes: [0]), [t(type, {3})])
        check(&Nx.broadcast(hd(&1), {2, 3}), [t(type, {})])
        check(&Nx.reverse(hd(&1)), [x])
        check(&Nx.reverse(hd(&1), axes: [1]), [x])
        check(&Nx.reverse(hd(&1), axes: [0, 2]), [x])
        check(&Nx.bitcast(hd(&1), type), [x])
      end

      check(&Nx.bitcast(hd(&1), :s32), [t({:f, 32}, {2, 3})])
      check(&Nx.transpose(hd(&1), axes: [:y, :x]), [Nx.iota({2, 3}, names: [:x, :y])])
    end

    test "slice: strides, clamped starts, starts given as tensors of any integer type" do
      for type <- @types do
        x = t(type, {4, 5, 6})
        check(&Nx.slice(hd(&1), [1, 0, 2], [2, 5, 3]), [x])
        check(&Nx.slice(hd(&1), [0, 1, 0], [4, 3, 6], strides: [2, 1, 3]), [x])
        check(&Nx.slice(hd(&1), [3, 4, 5], [2, 2, 2]), [x])
        check(&Nx.slice(hd(&1), [2, 0, 0], [2, 5, 6]), [x])
      end

      x = t({:f, 32}, {4, 5})

      for itype <- [{:s, 32}, {:s, 64}, {:u, 8}, {:s, 8}], start <- [0, 2, 4, -1, 100] do
        start = if itype in @unsigned, do: abs(start), else: start
        s = Nx.tensor(start, type: itype, backend: Nx.BinaryBackend)
        check(fn [x, s] -> Nx.slice(x, [s, 1], [2, 3]) end, [x, s], label: {itype, start})
        check(fn [x, s] -> Nx.slice_along_axis(x, s, 2, axis: 1) end, [x, s])
      end
    end

    test "put_slice: types converted to the output's, clamped and tensor starts (a KV-cache update)" do
      for type <- @types, stype <- [type, {:f, 32}, {:s, 8}] do
        x = t(type, {4, 5})
        s = t(stype, {2, 3}, salt: 4)
        check(fn [x, s] -> Nx.put_slice(x, [1, 1], s) end, [x, s], label: {type, stype})
        check(fn [x, s] -> Nx.put_slice(x, [3, 4], s) end, [x, s], label: {type, stype})
      end

      cache = t({:bf, 16}, {1, 2, 8, 4}, values: :finite)
      kv = t({:bf, 16}, {1, 2, 1, 4}, salt: 9, values: :finite)

      for pos <- [0, 5, 7, 9] do
        pos = Nx.tensor(pos, type: :s64, backend: Nx.BinaryBackend)
        check(fn [c, kv, p] -> Nx.put_slice(c, [0, 0, p, 0], kv) end, [cache, kv, pos])
      end
    end

    test "put_slice into a large cache updates it in place; every earlier tensor keeps its values" do
      # {1, 8, 64, 32} f32 = 64 KB: put_slice results are versioned buffers (NxQuant.Native.Versioned)
      base = Nx.iota({1, 8, 64, 32}, type: :f32, backend: NB)
      on_bb = Nx.backend_copy(base, Nx.BinaryBackend)

      {tensors, expected} =
        Enum.scan(0..39, {base, on_bb}, fn i, {c, c_bb} ->
          row = Nx.iota({1, 8, 1, 32}, type: :f32, backend: NB) |> Nx.add(1000.0 * (i + 1))
          row_bb = Nx.backend_copy(row, Nx.BinaryBackend)
          pos = rem(i * 7, 64)
          {Nx.put_slice(c, [0, 0, pos, 0], row), Nx.put_slice(c_bb, [0, 0, pos, 0], row_bb)}
        end)
        |> Enum.unzip()

      assert %NB{state: %NxQuant.Native.Versioned{}} = hd(tensors).data
      assert Enum.map(tensors, & &1.data.state.ref) |> Enum.uniq() |> length() <= 2

      # read back after every write: bytes, an op, a dot (attention over the cache), a transfer
      q = Nx.iota({1, 8, 1, 32}, type: :f32, backend: NB) |> Nx.divide(100)
      q_bb = Nx.backend_copy(q, Nx.BinaryBackend)

      for {t, e} <- Enum.zip(tensors, expected) do
        assert Nx.to_binary(t) == Nx.to_binary(e)

        assert Nx.to_binary(Nx.exp(Nx.divide(t, 1.0e5))) ==
                 Nx.to_binary(Nx.exp(Nx.divide(e, 1.0e5)))

        assert Nx.to_binary(Nx.dot(q, [3], [0, 1], t, [3], [0, 1])) ==
                 Nx.to_binary(Nx.dot(q_bb, [3], [0, 1], e, [3], [0, 1]))

        assert Nx.backend_transfer(t, Nx.BinaryBackend) == e
        assert Nx.reshape(t, {8, 64, 32}) |> Nx.to_binary() == Nx.to_binary(e)
      end

      assert NB.__fallbacks__() == []
    end

    test "concatenate and stack: axes, mixed types" do
      for type <- @types, axis <- [0, 1, 2] do
        a = t(type, {2, 3, 4})
        b = t(type, {2, 3, 4}, salt: 6)
        check(&Nx.concatenate(&1, axis: axis), [a, b, a])
        check(&Nx.stack(&1, axis: axis), [a, b])
      end

      check(&Nx.concatenate(&1, axis: 1), [
        t({:f, 32}, {2, 3}),
        t({:s, 8}, {2, 1}),
        t({:bf, 16}, {2, 2})
      ])

      check(&Nx.stack(&1, axis: 1), [t({:u, 8}, {3}), t({:s, 64}, {3})])
      check(&Nx.stack(&1), [t({:f, 16}, {}), t({:f, 16}, {}, salt: 1)])
    end

    test "pad: edges, interior, negative padding; a pad value of another type falls back" do
      configs = [
        [{1, 2, 0}, {0, 1, 1}],
        [{-1, 1, 0}, {2, -2, 1}],
        [{0, 0, 2}, {-2, -1, 0}],
        [{0, 0, 0}, {0, 0, 0}]
      ]

      for type <- @types, config <- configs do
        pv = Nx.tensor(7, type: type, backend: Nx.BinaryBackend)
        check(fn [x, v] -> Nx.pad(x, v, config) end, [t(type, {3, 4}), pv], label: {type, config})
      end

      check(fn [x] -> Nx.pad(x, 0, [{1, 1, 1}]) end, [t({:f, 32}, {5})])

      check(fn [x] -> Nx.pad(x, 1.5, [{1, 0, 0}, {0, 2, 0}, {1, 1, 0}]) end, [
        t({:f, 16}, {2, 2, 2})
      ])

      check(fn [x] -> Nx.pad(x, 0.5, [{1, 1, 0}]) end, [t({:s, 32}, {3})], fallback: true)
      check(fn [x] -> Nx.pad(x, 0, []) end, [t({:f, 32}, {})])
    end

    test "gather, take and take_along_axis (embeddings)" do
      for type <- @types do
        x = t(type, {4, 3, 2})
        idx = Nx.tensor([[1, 2], [3, 0], [0, 1]], backend: Nx.BinaryBackend)
        check(fn [x, i] -> Nx.gather(x, i) end, [x, idx])
        check(fn [x, i] -> Nx.gather(x, i, axes: [0, 2]) end, [x, Nx.tensor([[1, 1], [3, 0]])])
        check(fn [x, i] -> Nx.gather(x, i, axes: [1]) end, [x, Nx.tensor([[2], [0]], type: :u8)])

        ids = Nx.tensor([[3, 0, 1], [2, 2, 0]], type: :s64, backend: Nx.BinaryBackend)
        check(fn [x, i] -> Nx.take(x, i) end, [x, ids])
        check(fn [x, i] -> Nx.take(x, i, axis: 1) end, [x, Nx.tensor([2, 0, 1, 1])])
        check(fn [x, i] -> Nx.take(x, i, axis: 2) end, [x, Nx.tensor(1)])

        along = Nx.tensor([[[1], [0], [1]], [[0], [0], [1]]], backend: Nx.BinaryBackend)
        check(fn [x, i] -> Nx.take_along_axis(x, i, axis: 2) end, [t(type, {2, 3, 2}), along])
        along1 = Nx.tensor([[2, 0, 1, 1], [1, 1, 0, 2]], type: :u16, backend: Nx.BinaryBackend)
        check(fn [x, i] -> Nx.take_along_axis(x, i, axis: 1) end, [t(type, {2, 3}), along1])
      end

      # A quantized-model-sized embedding lookup.
      emb = t({:bf, 16}, {50, 16}, values: :finite)

      check(fn [e, i] -> Nx.take(e, i) end, [
        emb,
        Nx.tensor([[7, 49, 0]], backend: Nx.BinaryBackend)
      ])
    end

    test "input the kernels reject is rerun on BinaryBackend: its error, its message" do
      x = Nx.iota({3, 2}, backend: NB)
      assert_raise ArgumentError, fn -> Nx.gather(x, Nx.tensor([[3]], backend: NB)) end

      NB.__strict__(false)
      message = "index 3 is out of bounds for axis 0 in shape {3, 2}"
      assert_raise ArgumentError, message, fn -> Nx.gather(x, Nx.tensor([[3]], backend: NB)) end
      assert_raise ArgumentError, message, fn -> Nx.take(x, Nx.tensor([3], backend: NB)) end
      ints = Nx.tensor([7, -7], backend: NB)
      assert_raise ArithmeticError, fn -> Nx.quotient(ints, Nx.tensor([0, 1], backend: NB)) end
      assert_raise ArithmeticError, fn -> Nx.remainder(ints, 0) end
    end

    test "where BinaryBackend raises on Erlang float arithmetic, the result is IEEE's" do
      f = Nx.tensor([1.0, -1.0, 0.0], backend: NB)
      assert Nx.to_flat_list(Nx.divide(f, 0.0)) == [:infinity, :neg_infinity, :nan]
      assert Nx.to_flat_list(Nx.sqrt(f)) == [1.0, :nan, 0.0]
      big = Nx.tensor([1.0e308], type: :f64, backend: NB)
      assert Nx.to_flat_list(Nx.multiply(big, 10)) == [:infinity]
      assert Nx.to_flat_list(Nx.exp(Nx.tensor([1000.0], type: :f64, backend: NB))) == [:infinity]
    end

    test "iota: axes and types; eye falls back" do
      for type <- @types,
          {shape, axis} <- [{{}, nil}, {{5}, nil}, {{2, 3, 4}, nil}, {{2, 3, 4}, 1}, {{2, 3}, 0}] do
        opts = if axis, do: [type: type, axis: axis], else: [type: type]
        check(fn [] -> Nx.iota(shape, opts) end, [], label: {type, shape, axis})
      end

      check(fn [] -> Nx.iota({300}, type: :u8) end, [])
      check(fn [] -> Nx.iota({3000}, type: :f16) end, [])
      check(fn [] -> Nx.eye({3, 4}, type: :bf16) end, [], fallback: true)
    end

    ## Sorting, top_k, cumulative -------------------------------------------------------------

    test "sort and argsort: direction, axis, NaN/Inf/-0.0 and ties (stable), index types" do
      for type <- @types, axis <- [0, 1], dir <- [:asc, :desc] do
        x = t(type, {4, 5}, salt: 2)
        check(&Nx.sort(hd(&1), axis: axis, direction: dir), [x], label: {type, axis, dir})
        check(&Nx.argsort(hd(&1), axis: axis, direction: dir), [x], label: {type, axis, dir})

        check(&Nx.argsort(hd(&1), axis: axis, direction: dir, stable: true), [x])
        ties = t(type, {3, 6}, pool: [0, 1, 1, 0, 2, 2, 1])
        check(&Nx.argsort(hd(&1), axis: axis, direction: dir), [ties])
      end

      zeros = Nx.tensor([0.0, -0.0, 1.0, -0.0, 0.0, :nan, :nan, -1.0], backend: Nx.BinaryBackend)

      for dir <- [:asc, :desc] do
        check(&Nx.sort(hd(&1), direction: dir), [zeros])
        check(&Nx.argsort(hd(&1), direction: dir), [zeros])
        check(&Nx.argsort(hd(&1), direction: dir, type: :u8), [zeros])
        check(&Nx.argsort(hd(&1), direction: dir, type: :s64, axis: 2), [t({:f, 16}, {2, 2, 5})])
      end
    end

    test "top_k (sampling)" do
      for type <- @types, k <- [1, 3, 5] do
        check(&Nx.top_k(hd(&1), k: k), [t(type, {3, 5}, salt: 1)], label: {type, k})
        check(&Nx.top_k(hd(&1), k: k), [t(type, {5})], label: {type, k})
      end

      check(&Nx.top_k(hd(&1), k: 4), [t({:f, 32}, {2, 3, 6}, pool: [0, 1, 1, 0, 2, 2, 1])])
    end

    test "cumulative_sum/product/max/min: axis, reverse, every type" do
      for op <- [:cumulative_sum, :cumulative_product, :cumulative_max, :cumulative_min],
          type <- @types,
          axis <- [0, 1, 2],
          reverse <- [false, true] do
        x = t(type, {3, 4, 5}, values: :finite)
        opts = [axis: axis, reverse: reverse]
        check(&apply(Nx, op, [hd(&1), opts]), [x], label: {op, type, opts})
      end

      # Non-finite values in max/min.
      for op <- [:cumulative_max, :cumulative_min] do
        check(&apply(Nx, op, [hd(&1)]), [t({:f, 32}, {20})])
      end
    end

    ## Creation, reading, transfers, inspect ---------------------------------------------------

    test "constants, from_binary, to_binary with a limit, transfers" do
      for type <- @types do
        check(fn [] -> Nx.broadcast(Nx.tensor(3, type: type), {2, 3}) end, [])
        check(fn [] -> Nx.tensor([[1, 2], [3, 4]], type: type) end, [])
        check(fn [] -> Nx.from_binary(<<1, 2, 3, 4, 5, 6, 7, 8>>, type) end, [])
        x = t(type, {3, 4}) |> Nx.backend_copy(NB)

        assert Nx.to_binary(x, limit: 5) ==
                 Nx.to_binary(Nx.backend_copy(x, Nx.BinaryBackend), limit: 5)
      end

      check(fn [] -> Nx.broadcast(Nx.tensor(:nan, type: :bf16), {4}) end, [])
      check(fn [] -> Nx.tensor(Complex.new(1, 2)) |> Nx.broadcast({2}) end, [], fallback: true)

      x = Nx.iota({2, 3}, backend: NB)
      assert %NB{} = x.data
      assert %Nx.BinaryBackend{} = Nx.backend_transfer(x, Nx.BinaryBackend).data
      assert Nx.backend_copy(x, NB) == x
      assert Nx.backend_copy(x, Nx.BinaryBackend) |> Nx.backend_copy(NB) == x
      assert Nx.backend_transfer(x) |> Nx.to_binary() == Nx.to_binary(x)
      assert Nx.backend_deallocate(x) == :ok
      assert NB.init([]) == []

      assert_raise ArgumentError, ~r/NxQuant.NativeBackend accepts no options/, fn ->
        NB.init(foo: 1)
      end

      batches = Nx.to_batched(Nx.iota({5, 2}, backend: NB), 2) |> Enum.to_list()
      assert Enum.map(batches, &Nx.to_flat_list/1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
      assert Enum.all?(batches, &match?(%NB{}, &1.data))
    end

    test "inspect prints as on BinaryBackend" do
      for x <- [
            Nx.iota({2, 3}, names: [:a, :b]),
            Nx.tensor([1.5, :nan, :infinity, -0.0], type: :bf16),
            Nx.iota({100}),
            Nx.tensor(3, type: :u8),
            Nx.tensor(Complex.new(1, -2))
          ] do
        assert inspect(Nx.backend_copy(x, NB)) == inspect(x)
        assert inspect(Nx.backend_copy(x, NB), limit: 3) == inspect(x, limit: 3)
      end
    end

    ## Larger tensors: the kernels' vectorized and multithreaded paths -----------------------

    # Pseudo-random values of every magnitude class (a seeded generator, deterministic).
    defp random(type, shape, seed) do
      :rand.seed(:exsss, {seed, 7, 11})
      n = Tuple.product(shape)

      values =
        for _ <- 1..n do
          case type do
            {:u, _} -> :rand.uniform(200)
            {:s, _} -> :rand.uniform(200) - 100
            _ -> (:rand.uniform() - 0.5) * 8
          end
        end

      Nx.tensor(values, type: type, backend: Nx.BinaryBackend) |> Nx.reshape(shape)
    end

    test "larger tensors: element-wise, reductions, dot, conversions, sort" do
      for type <- [{:f, 32}, {:bf, 16}, {:f, 16}, {:s, 32}] do
        a = random(type, {64, 1024}, 1)
        b = random(type, {1024}, 2)
        check(fn [a, b] -> Nx.add(a, b) end, [a, b], label: {:add, type})
        check(fn [a, b] -> Nx.multiply(a, b) end, [a, b], label: {:multiply, type})
        check(fn [a, b] -> Nx.max(a, b) end, [a, b], label: {:max, type})
        check(fn [a, b] -> Nx.less(a, b) end, [a, b], label: {:less, type})
        check(&Nx.exp(hd(&1)), [a], ulp: 1, label: {:exp, type})
        check(&Nx.sum(hd(&1), axes: [1]), [a], label: {:sum1, type})
        check(&Nx.sum(hd(&1), axes: [0]), [a], label: {:sum0, type})
        check(&Nx.reduce_max(hd(&1), axes: [1], keep_axes: true), [a], label: {:max1, type})
        check(&Nx.argmax(hd(&1), axis: 1), [a], label: {:argmax, type})
        check(&Nx.as_type(hd(&1), :bf16), [a], label: {:as_type, type})
        check(&Nx.transpose(hd(&1)), [a], label: {:transpose, type})
        check(&Nx.argsort(hd(&1), axis: 1, direction: :desc), [a], label: {:argsort, type})
      end

      for type <- [{:f, 32}, {:bf, 16}, {:f, 16}] do
        x = random(type, {8, 512}, 3)
        w = random(type, {512, 96}, 4)
        check(fn [x, w] -> Nx.dot(x, w) end, [x, w], label: {:dot, type})

        check(fn [x, w] -> Nx.dot(x, [1], Nx.transpose(w), [1]) end, [x, w], label: {:dot_t, type})

        q = random(type, {2, 4, 8, 64}, 5)
        k = random(type, {2, 4, 16, 64}, 6)
        check(fn [q, k] -> Nx.dot(q, [3], [0, 1], k, [3], [0, 1]) end, [q, k], label: type)
      end
    end

    test "a decoder's building blocks compose to BinaryBackend's bits" do
      x = random({:f, 32}, {4, 256}, 8)
      g = random({:f, 32}, {256}, 9)

      rms_norm = fn [x, g] ->
        var = x |> Nx.pow(2) |> Nx.mean(axes: [-1], keep_axes: true)
        x |> Nx.multiply(Nx.rsqrt(Nx.add(var, 1.0e-6))) |> Nx.multiply(g)
      end

      softmax = fn [x] ->
        e = Nx.exp(Nx.subtract(x, Nx.reduce_max(x, axes: [-1], keep_axes: true)))
        Nx.divide(e, Nx.sum(e, axes: [-1], keep_axes: true))
      end

      silu = fn [x] -> Nx.multiply(x, Nx.sigmoid(x)) end

      check(rms_norm, [x, g], ulp: 1)
      check(softmax, [x], ulp: 1)
      check(silu, [x], ulp: 1)
      check(fn [x] -> x |> softmax.() |> List.wrap() |> then(&Nx.top_k(hd(&1), k: 5)) end, [x])
    end

    ## Mixed backends, vectorized tensors, defn, the shim -----------------------------------

    test "a BinaryBackend operand next to a native one: the result is native" do
      a = Nx.iota({2, 3}, type: :f32, backend: NB)
      b = Nx.iota({3}, backend: Nx.BinaryBackend)
      assert %NB{} = Nx.add(a, b).data

      assert Nx.to_binary(Nx.add(a, b)) ==
               Nx.to_binary(Nx.add(Nx.backend_copy(a, Nx.BinaryBackend), b))

      assert %NB{} = Nx.dot(b, Nx.transpose(a)).data
    end

    test "vectorized tensors" do
      x = t({:f, 32}, {3, 4}, values: :finite)
      y = t({:f, 32}, {4}, values: :finite, salt: 2)

      check(
        fn [x, y] ->
          x = Nx.vectorize(x, :rows)
          {Nx.add(x, y), Nx.sum(x), Nx.argmax(x), Nx.dot(x, y), Nx.cumulative_sum(x)}
        end,
        [x, y]
      )
    end

    test "defn (Nx.Defn.Evaluator) runs on the backend" do
      fun = Nx.Defn.jit(fn x, y -> Nx.sum(Nx.exp(x) * y, axes: [1]) end)
      x = t({:f, 32}, {3, 4}, values: :finite)
      y = t({:f, 32}, {4}, values: :finite, salt: 1)
      check(fn [x, y] -> fun.(x, y) end, [x, y], ulp: 1)
    end

    test "as NxQuant.Backend's inner backend" do
      shim = {NxQuant.Backend, backend: NB}
      x = Nx.iota({2, 3}, type: :f32, backend: shim)
      assert %NxQuant.Backend{inner: %NB{}} = x.data
      y = Nx.multiply(Nx.add(x, 1), x) |> Nx.sum(axes: [1])
      assert Nx.to_flat_list(y) == [8.0, 62.0]
      assert %NxQuant.Backend{inner: %NB{}} = y.data
    end

    ## Fallbacks --------------------------------------------------------------------------

    test "ops without a kernel fall back to BinaryBackend and give its answer" do
      x = t({:f, 32}, {1, 2, 5, 5}, values: :finite)
      k = t({:f, 32}, {3, 2, 2, 2}, values: :finite, salt: 1)
      check(fn [x, k] -> Nx.conv(x, k, padding: :same) end, [x, k], fallback: true)

      w = t({:f, 32}, {4, 6}, values: :finite)
      check(&Nx.window_sum(hd(&1), {2, 2}), [w], fallback: true)
      check(&Nx.window_max(hd(&1), {2, 3}, strides: [1, 2], padding: :same), [w], fallback: true)

      check(
        &Nx.window_scatter_max(hd(&1), Nx.iota({2, 3}, type: :f32), 0.0, {2, 2}, strides: [2, 2]),
        [w],
        fallback: true
      )

      check(&Nx.reduce(hd(&1), 0, [axes: [1]], fn a, b -> Nx.add(a, b) end), [w], fallback: true)
      check(&Nx.mode(hd(&1), axis: 1), [t({:s, 32}, {3, 6}, pool: [1, 2, 2, 3])], fallback: true)

      idx = Nx.tensor([[0, 1], [2, 3], [0, 1]], backend: Nx.BinaryBackend)
      upd = Nx.tensor([1.0, 2.0, 3.0], backend: Nx.BinaryBackend)
      check(fn [w, i, u] -> Nx.indexed_add(w, i, u) end, [w, idx, upd], fallback: true)
      check(fn [w, i, u] -> Nx.indexed_put(w, i, u) end, [w, idx, upd], fallback: true)

      check(&Nx.fft(hd(&1)), [t({:f, 32}, {8}, values: :finite)], fallback: true)
      check(&Nx.population_count(hd(&1)), [t({:u, 8}, {8})], fallback: true)
      check(&Nx.add(hd(&1), Complex.new(1, 1)), [t({:f, 32}, {3})], fallback: true)
      check(&Nx.add(hd(&1), hd(&1)), [Nx.tensor([1, 2, 3], type: :u4)], fallback: true)
    end

    test "LinAlg and Random compose from the backend's ops" do
      a =
        Nx.tensor([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]], backend: Nx.BinaryBackend)

      b = Nx.tensor([1.0, 2.0, 3.0], backend: Nx.BinaryBackend)
      check(&Nx.LinAlg.determinant(hd(&1)), [a], fallback: true)
      check(fn [a, b] -> Nx.LinAlg.solve(a, b) end, [a, b], fallback: true)
      check(&Nx.LinAlg.cholesky(hd(&1)), [a], fallback: true)
      check(&Nx.LinAlg.qr(hd(&1)), [a], fallback: true)
      check(&Nx.LinAlg.triangular_solve(hd(&1), Nx.tensor([1.0, 2.0, 3.0])), [a], fallback: true)

      check(
        fn [] ->
          key = Nx.Random.key(42)
          {u, key} = Nx.Random.uniform(key, shape: {3, 4})
          {n, _} = Nx.Random.normal(key, shape: {4})
          {u, n, Nx.Random.shuffle(key, Nx.iota({6})) |> elem(0)}
        end,
        [],
        fallback: true
      )
    end
  end
end
