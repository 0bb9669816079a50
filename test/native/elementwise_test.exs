defmodule NxQuant.Native.ElementwiseTest do
  # NxQuant.Native's element-wise ops (unary, binary with broadcasting, select, clip, as_type)
  # against the pure-Elixir reference (BinaryBackend's rules), every supported type.
  use ExUnit.Case, async: true

  import NxQuant.NativeCase
  alias NxQuant.{Dense, Native}
  alias NxQuant.NativeReference, as: Ref

  @shapes [{}, {0}, {7}, {3, 5}, {2, 0, 3}, {2, 3, 4}, {1, 33}]
  @specials [:nan, :infinity, :neg_infinity, :neg_zero, 0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5]

  # ---- unary -----------------------------------------------------------------------------

  # Ops that are one correctly rounded operation (or exact): bit-identical results.
  @exact_float [:negate, :abs, :sign, :floor, :ceil, :round, :sqrt, :is_nan, :is_infinity] ++
                 [:logical_not]
  @exact_int [:negate, :abs, :sign, :floor, :ceil, :round, :bitwise_not, :logical_not] ++
               [:is_nan, :is_infinity]

  # Transcendental ops and the input range each is tested on (inside the domain).
  @math [
    exp: {-4.0, 4.0},
    expm1: {-2.0, 2.0},
    log: :positive,
    log1p: {-0.5, 4.0},
    sigmoid: {-6.0, 6.0},
    tanh: {-4.0, 4.0},
    rsqrt: :positive,
    cbrt: {-4.0, 4.0},
    cos: {-4.0, 4.0},
    sin: {-4.0, 4.0},
    tan: {-1.5, 1.5},
    acos: {-1.0, 1.0},
    asin: {-1.0, 1.0},
    atan: {-4.0, 4.0},
    cosh: {-4.0, 4.0},
    sinh: {-4.0, 4.0},
    acosh: {1.0, 5.0},
    asinh: {-4.0, 4.0},
    atanh: {-0.99, 0.99},
    erf: {-3.0, 3.0},
    erfc: {-3.0, 3.0},
    erf_inv: {-0.99, 0.99}
  ]

  defp out_type(op, _type) when op in [:is_nan, :is_infinity, :logical_not], do: {:u, 8}
  defp out_type(_op, type), do: type

  describe "unary" do
    for type <- NxQuant.NativeCase.float_types(), op <- @exact_float do
      test "#{op} #{inspect(type)} bit-identical, special values included" do
        op = unquote(op)
        type = unquote(type)

        for shape <- @shapes do
          t = Ref.random(shape, type, specials: unquote(@specials), seed: 3)
          out = out_type(op, type)
          assert_same(Native.unary(op, t, out), Ref.unary(op, t, out), "#{op} #{inspect(shape)}")
        end
      end
    end

    for type <- NxQuant.NativeCase.int_types(), op <- @exact_int do
      test "#{op} #{inspect(type)} bit-identical (wrapping)" do
        op = unquote(op)
        type = unquote(type)

        for shape <- @shapes do
          t = Ref.random(shape, type, seed: 5)
          out = out_type(op, type)
          assert_same(Native.unary(op, t, out), Ref.unary(op, t, out), "#{op} #{inspect(shape)}")
        end
      end
    end

    for type <- NxQuant.NativeCase.float_types(), {op, range} <- @math do
      test "#{op} #{inspect(type)} within 1 ulp of BinaryBackend's formula" do
        op = unquote(op)
        type = unquote(type)

        opts =
          case unquote(Macro.escape(range)) do
            :positive -> [positive: true]
            range -> [range: range]
          end

        for shape <- [{}, {0}, {5, 13}], seed <- [1, 2] do
          t = Ref.random(shape, type, [seed: seed] ++ opts)
          assert_close(Native.unary(op, t, type), Ref.unary(op, t, type), 1, "#{op}")
        end
      end
    end

    test "transcendental ops of an integer tensor read it exactly (s32 -> f32, u8 -> f64)" do
      for {in_type, out} <- [{{:s, 32}, {:f, 32}}, {{:u, 8}, {:f, 64}}, {{:s, 64}, {:f, 32}}] do
        t = Ref.random({4, 5}, in_type, range: {0, 50})

        for op <- [:exp, :log1p, :sqrt, :sigmoid, :tanh, :sin] do
          assert_close(Native.unary(op, t, out), Ref.unary(op, t, out), 1, "#{op}")
        end
      end
    end

    test "special values of the transcendental ops (IEEE results)" do
      for type <- [{:f, 32}, {:f, 64}] do
        t = Ref.tensor([:nan, :infinity, :neg_infinity, 0.0, :neg_zero], {5}, type)

        for op <- [:exp, :expm1, :log, :sqrt, :tanh, :sigmoid, :erf, :erfc, :atan, :cbrt] do
          assert_close(Native.unary(op, t, type), Ref.unary(op, t, type), 1, "#{op}")
        end
      end
    end

    test "round is half away from zero and gives +0.0 for (-0.5, 0.0] as Erlang's round/1" do
      t = Ref.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -0.2, :neg_zero, 1.0e20], {8}, {:f, 32})

      got = Native.unary(:round, t, {:f, 32})
      big = Ref.round_to(1.0e20, {:f, 32})
      assert Ref.values(got) == [1.0, 2.0, 3.0, -1.0, -2.0, 0.0, 0.0, big]
      # +0.0 (the integer 0 written), not the -0.0 of C's round()
      assert binary_part(got.data, 20, 8) == <<0::64>>
      assert_same(Native.unary(:round, t, {:f, 32}), Ref.unary(:round, t, {:f, 32}))
    end
  end

  # ---- binary ----------------------------------------------------------------------------

  @broadcasts [
    {{}, {}, {}},
    {{5}, {5}, {5}},
    {{3, 4}, {}, {3, 4}},
    {{}, {3, 4}, {3, 4}},
    {{3, 1, 4}, {2, 1}, {3, 2, 4}},
    {{1, 4}, {3, 1}, {3, 4}},
    {{4}, {2, 3, 4}, {2, 3, 4}},
    {{0, 3}, {3}, {0, 3}},
    {{2, 1}, {2, 0}, {2, 0}},
    {{1, 2048}, {1, 2048}, {1, 2048}}
  ]

  @float_binary [:add, :subtract, :multiply, :divide, :max, :min, :equal, :not_equal, :less] ++
                  [:less_equal, :greater, :greater_equal, :logical_and, :logical_or] ++
                  [:logical_xor]
  @int_binary [:add, :subtract, :multiply, :max, :min, :equal, :not_equal, :less, :less_equal] ++
                [:greater, :greater_equal, :logical_and, :logical_or, :logical_xor] ++
                [:bitwise_and, :bitwise_or, :bitwise_xor]
  @compare [:equal, :not_equal, :less, :less_equal, :greater, :greater_equal] ++
             [:logical_and, :logical_or, :logical_xor]

  defp binary_out(op, _type) when op in @compare, do: {:u, 8}
  defp binary_out(_op, type), do: type

  describe "binary" do
    for type <- NxQuant.NativeCase.float_types(), op <- @float_binary do
      test "#{op} #{inspect(type)} with broadcasting, bit-identical, specials included" do
        op = unquote(op)
        type = unquote(type)
        out = binary_out(op, type)

        for {sa, sb, so} <- @broadcasts do
          a = Ref.random(sa, type, specials: unquote(@specials), seed: 7)
          b = Ref.random(sb, type, specials: unquote(Enum.reverse(@specials)), seed: 8)
          context = "#{op} #{inspect(sa)} #{inspect(sb)}"
          assert_same(Native.binary(op, a, b, so, out), Ref.binary(op, a, b, so, out), context)
        end
      end
    end

    for type <- NxQuant.NativeCase.int_types(), op <- @int_binary do
      test "#{op} #{inspect(type)} with broadcasting, wrapping" do
        op = unquote(op)
        type = unquote(type)
        out = binary_out(op, type)

        for {sa, sb, so} <- @broadcasts do
          a = Ref.random(sa, type, seed: 9)
          b = Ref.random(sb, type, seed: 10)
          context = "#{op} #{inspect(sa)} #{inspect(sb)}"
          assert_same(Native.binary(op, a, b, so, out), Ref.binary(op, a, b, so, out), context)
        end
      end
    end

    for type <- NxQuant.NativeCase.int_types() do
      test "quotient, remainder, pow and shifts #{inspect(type)}" do
        type = unquote(type)
        {_, bits} = type
        a = Ref.random({6, 7}, type, seed: 11)
        d = Ref.random({7}, type, seed: 12) |> nonzero()

        assert_same(
          Native.binary(:quotient, a, d, {6, 7}, type),
          Ref.binary(:quotient, a, d, {6, 7}, type)
        )

        assert_same(
          Native.binary(:remainder, a, d, {6, 7}, type),
          Ref.binary(:remainder, a, d, {6, 7}, type)
        )

        e = Ref.random({7}, type, range: {0, 9}, seed: 13)

        assert_same(
          Native.binary(:pow, a, e, {6, 7}, type),
          Ref.binary(:pow, a, e, {6, 7}, type),
          "pow"
        )

        # shift amounts up to beyond the width: BinaryBackend's bsl/bsr on integers, wrapped
        s = Ref.random({7}, type, range: {0, bits + 3}, seed: 14)

        for op <- [:left_shift, :right_shift] do
          assert_same(
            Native.binary(op, a, s, {6, 7}, type),
            Ref.binary(op, a, s, {6, 7}, type),
            "#{op}"
          )
        end
      end
    end

    for type <- NxQuant.NativeCase.float_types() do
      test "pow, remainder, atan2, quotient-free float ops #{inspect(type)} within 1 ulp" do
        type = unquote(type)
        a = Ref.random({5, 6}, type, positive: true, seed: 15)
        b = Ref.random({6}, type, range: {-3.0, 3.0}, seed: 16)

        for op <- [:pow, :remainder, :atan2] do
          assert_close(
            Native.binary(op, a, b, {5, 6}, type),
            Ref.binary(op, a, b, {5, 6}, type),
            1,
            "#{op}"
          )
        end
      end
    end

    test "mixed input types are read exactly (s32 + f32 -> f32, u8 * bf16 -> bf16, s64 < f64)" do
      cases = [
        {{:s, 32}, {:f, 32}, :add, {:f, 32}},
        {{:u, 8}, {:bf, 16}, :multiply, {:bf, 16}},
        {{:s, 64}, {:f, 64}, :less, {:u, 8}},
        {{:f, 16}, {:f, 32}, :subtract, {:f, 32}},
        {{:u, 8}, {:s, 8}, :add, {:s, 16}},
        {{:s, 16}, {:f, 16}, :divide, {:f, 16}}
      ]

      for {ta, tb, op, out} <- cases do
        a = Ref.random({3, 4}, ta, range: if(ta in int_types(), do: {-50, 50}, else: {-4.0, 4.0}))
        a = if ta in [{:u, 8}], do: Ref.random({3, 4}, ta), else: a
        b = Ref.random({4}, tb, seed: 3) |> nonzero()

        assert_same(
          Native.binary(op, a, b, {3, 4}, out),
          Ref.binary(op, a, b, {3, 4}, out),
          "#{op}"
        )
      end
    end

    test "integer operands with a float output divide in double (Nx.divide of s32)" do
      a = Ref.random({10}, {:s, 32}, seed: 4)
      b = Ref.random({10}, {:s, 32}, seed: 5) |> nonzero()

      assert_same(
        Native.binary(:divide, a, b, {10}, {:f, 32}),
        Ref.binary(:divide, a, b, {10}, {:f, 32})
      )
    end

    test "f32 results are the f64 result rounded (bit-identical with BinaryBackend)" do
      # values whose exact sum/product needs more than f32 precision: the double rounding
      # f64 -> f32 must equal the single f32 rounding
      a = Ref.tensor([1.0, 16_777_216.0, 0.1, 3.4e38, 1.0e-45, -1.5], {6}, {:f, 32})
      b = Ref.tensor([5.960464477539063e-8, 1.0, 0.2, 3.4e38, 1.0e-45, 1.0e-7], {6}, {:f, 32})

      for op <- [:add, :subtract, :multiply, :divide] do
        assert_same(
          Native.binary(op, a, b, {6}, {:f, 32}),
          Ref.binary(op, a, b, {6}, {:f, 32}),
          "#{op}"
        )
      end
    end
  end

  # ---- select, clip, as_type -------------------------------------------------------------

  describe "select" do
    test "any predicate type (NaN is true, -0.0 false), broadcasting of all three" do
      for pred_type <- [{:u, 8}, {:s, 32}, {:f, 32}, {:bf, 16}],
          {sp, st, sf, so} <- [
            {{3, 4}, {3, 4}, {3, 4}, {3, 4}},
            {{}, {3, 4}, {4}, {3, 4}},
            {{3, 1}, {}, {1, 4}, {3, 4}},
            {{0}, {}, {}, {0}}
          ] do
        pred =
          if pred_type in float_types(),
            do: Ref.random(sp, pred_type, specials: [:nan, :neg_zero, 0.0, 0.0]),
            else: Ref.random(sp, pred_type, range: {0, 2})

        on_true = Ref.random(st, {:f, 32}, seed: 2)
        on_false = Ref.random(sf, {:s, 16}, seed: 3)

        for out <- [{:f, 32}, {:f, 16}] do
          assert_same(
            Native.select(pred, on_true, on_false, so, out),
            Ref.select(pred, on_true, on_false, so, out),
            "#{inspect(pred_type)} #{inspect(sp)}"
          )
        end
      end
    end
  end

  describe "clip" do
    test "scalar bounds, every type; NaN clips to the lower bound as BinaryBackend does" do
      for type <- all_types() do
        t =
          if type in float_types(),
            do: Ref.random({4, 5}, type, specials: [:nan, :infinity, :neg_infinity]),
            else: Ref.random({4, 5}, type)

        {lo, hi} =
          if type in float_types(),
            do: {Ref.tensor([-1.0], {}, type), Ref.tensor([2.0], {}, type)},
            else: {Ref.tensor([3], {}, type), Ref.tensor([100], {}, type)}

        assert_same(Native.clip(t, lo, hi, type), Ref.clip(t, lo, hi, type), inspect(type))
      end
    end

    test "bounds that broadcast along an axis" do
      t = Ref.random({3, 4}, {:f, 32})
      lo = Ref.tensor([-1.0, 0.0, 1.0, -3.0], {4}, {:f, 32})
      hi = Ref.tensor([0.5], {1}, {:f, 32})
      assert_same(Native.clip(t, lo, hi, {:f, 32}), Ref.clip(t, lo, hi, {:f, 32}))
    end
  end

  describe "as_type" do
    @conversion_specials [:nan, :infinity, :neg_infinity, :neg_zero, 1.0e10, -1.0e10, 300.7] ++
                           [-129.5, 65504.0, 70_000.0, 255.9, -0.9, 3.4e38, 1.0e-8]

    for from <- NxQuant.NativeCase.all_types(),
        to <- NxQuant.NativeCase.all_types(),
        from != to do
      test "#{inspect(from)} -> #{inspect(to)}" do
        {from, to} = {unquote(from), unquote(to)}

        t =
          if from in float_types(),
            do: Ref.random({3, 17}, from, specials: @conversion_specials),
            else: Ref.random({3, 17}, from)

        assert_same(Native.as_type(t, to), Ref.as_type(t, to))
        assert_same(Native.as_type(%{t | shape: {51}}, to), Ref.as_type(%{t | shape: {51}}, to))
      end
    end

    test "the same type returns the tensor itself" do
      t = Ref.random({3}, {:f, 32})
      assert Native.as_type(t, {:f, 32}) === t
    end

    test "bf16 is the f32 rounding truncated (BinaryBackend's dump_bf16), not rounded to nearest" do
      # 1.0 + 2^-8 + 2^-20: bf16 round-to-nearest gives 1.0078125, truncation gives 1.0
      t = Ref.tensor([1.00390720367431640625], {1}, {:f, 64})
      assert %Dense{data: <<0x80, 0x3F>>} = Native.as_type(t, {:bf, 16})
    end
  end
end
