defmodule NxQuant.PrecisionTest do
  # The opt-in int8 fast mode through the NIF: within its documented error bound of the exact
  # result (computed here from the parts, independently of the kernel), exact where it does
  # not apply, and selected by option or by application config. Where the kernel that runs has
  # no int8 path (AVX-512 without VNNI, AVX2 at 3/5/6 bits: NxQuant.TestCpu), it must give the
  # exact bits.
  use ExUnit.Case, async: false

  alias NxQuant.{Core, TestCpu, TestFloat}
  alias NxQuant.TestReference, as: Ref

  setup do
    previous = Application.fetch_env(:nx_quant, :matmul_precision)

    on_exit(fn ->
      case previous do
        {:ok, value} -> Application.put_env(:nx_quant, :matmul_precision, value)
        :error -> Application.delete_env(:nx_quant, :matmul_precision)
      end
    end)
  end

  # |int8 - exact| <= sum_k |scale_k * q_k| * d_k / 2, with d_k = max |x| over k's block of
  # 32 / 127, and scale * q = (dequantized w) - bias; plus f32 accumulation error.
  defp bound(x_row, w_rows, bias_rows, group_size) do
    d =
      x_row
      |> Enum.chunk_every(32)
      |> Enum.flat_map(fn block ->
        step = Enum.max(Enum.map(block, &abs/1)) / 127
        List.duplicate(step, 32)
      end)

    for {w_row, bias_row} <- Enum.zip(w_rows, bias_rows) do
      biases = Enum.flat_map(bias_row, &List.duplicate(&1, group_size))

      [w_row, biases, d, x_row]
      |> Enum.zip()
      |> Enum.reduce(0.0, fn {w, b, step, x}, acc ->
        acc + abs(w - b) * step / 2 + 1.0e-5 * abs(x * w)
      end)
    end
  end

  for bits <- [2, 4, 8], group_size <- [32, 64, 128] do
    test "#{bits}-bit g#{group_size}: int8 within the bound of exact (exact bits where no int8 path runs)" do
      bits = unquote(bits)
      group_size = unquote(group_size)

      qt =
        Core.quantize(Ref.random_dense({24, 384}, {:f, 32}, bits),
          bits: bits,
          group_size: group_size
        )

      x = Ref.random_dense({2, 384}, {:f, 32}, 100 + bits)
      exact_out = Core.quantized_matmul(x, qt, precision: :exact)
      fast_out = Core.quantized_matmul(x, qt, precision: :int8)

      if TestCpu.int8_approximates?(bits) do
        assert fast_out != exact_out
        assert_within_bound(x, qt, group_size, exact_out, fast_out)
      else
        assert fast_out == exact_out
      end
    end
  end

  defp assert_within_bound(x, qt, group_size, exact_out, fast_out) do
    exact = Ref.rows(exact_out)
    fast = Ref.rows(fast_out)

    w_rows = Ref.rows(Core.dequantize(qt))

    bias_rows =
      case Core.parts(qt) do
        # microscaled: no biases
        %{biases: nil} ->
          Enum.map(w_rows, fn row -> List.duplicate(0.0, div(length(row), group_size)) end)

        %{biases: biases} ->
          Ref.rows(biases)
      end

    for {x_row, exact_row, fast_row} <- Enum.zip([Ref.rows(x), exact, fast]) do
      for {e, f, b} <-
            Enum.zip([exact_row, fast_row, bound(x_row, w_rows, bias_rows, group_size)]) do
        assert abs(f - e) <= b, "int8 #{f} vs exact #{e}: beyond the bound #{b}"
      end
    end
  end

  for mode <- [:mxfp4, :nvfp4] do
    test "#{mode}: int8 within the bound of exact (exact bits where no int8 path runs)" do
      qt = Core.quantize(Ref.random_dense({24, 384}, {:f, 32}, 4), mode: unquote(mode))
      x = Ref.random_dense({3, 384}, {:f, 32}, 104)
      exact_out = Core.quantized_matmul(x, qt, precision: :exact)
      fast_out = Core.quantized_matmul(x, qt, precision: :int8)

      if TestCpu.microscaled_int8_approximates?() do
        assert fast_out != exact_out
        # no biases: scale * E2M1 is the dequantized weight itself
        assert_within_bound(x, qt, qt.config.group_size, exact_out, fast_out)
      else
        assert fast_out == exact_out
      end
    end
  end

  test "mxfp8 computes exactly in the int8 mode" do
    qt = Core.quantize(Ref.random_dense({16, 256}, {:f, 32}, 5), mode: :mxfp8)
    x = Ref.random_dense({2, 256}, {:f, 32}, 6)

    assert Core.quantized_matmul(x, qt, precision: :int8) ==
             Core.quantized_matmul(x, qt, precision: :exact)
  end

  test "shapes the fast mode does not cover compute exactly" do
    qt = Core.quantize(Ref.random_dense({64, 128}, {:bf, 16}, 7), group_size: 64)

    # transpose: false
    x = Ref.random_dense({1, 64}, {:bf, 16}, 8)

    assert Core.quantized_matmul(x, qt, transpose: false, precision: :int8) ==
             Core.quantized_matmul(x, qt, transpose: false, precision: :exact)

    # 9 rows of x: beyond the int8 mode's decode shapes (m <= 8)
    x = Ref.random_dense({9, 128}, {:f, 32}, 9)

    assert Core.quantized_matmul(x, qt, precision: :int8) ==
             Core.quantized_matmul(x, qt, precision: :exact)
  end

  test "the default comes from config :nx_quant, :matmul_precision" do
    qt = Core.quantize(Ref.random_dense({16, 256}, {:f, 32}, 11), group_size: 64)
    x = Ref.random_dense({1, 256}, {:f, 32}, 12)
    exact = Core.quantized_matmul(x, qt, precision: :exact)
    fast = Core.quantized_matmul(x, qt, precision: :int8)

    if TestCpu.int8_approximates?(),
      do: assert(exact != fast),
      else: assert(exact == fast)

    assert Core.quantized_matmul(x, qt) == exact
    Application.put_env(:nx_quant, :matmul_precision, :int8)
    assert Core.quantized_matmul(x, qt) == fast
    assert Core.quantized_matmul(x, qt, precision: :exact) == exact

    Application.put_env(:nx_quant, :matmul_precision, :fast)

    assert_raise ArgumentError,
                 ~r/config :nx_quant, :matmul_precision must be :exact or :int8/,
                 fn ->
                   Core.quantized_matmul(x, qt)
                 end
  end

  test "a bad :precision is an ArgumentError naming it" do
    qt = Core.quantize(Ref.random_dense({4, 64}, {:f, 32}, 13), group_size: 64)
    x = Ref.random_dense({1, 64}, {:f, 32}, 14)

    assert_raise ArgumentError, ~r/option :precision must be :exact or :int8, got: "int8"/, fn ->
      Core.quantized_matmul(x, qt, precision: "int8")
    end
  end

  test "non-finite activations give non-finite outputs in the fast mode" do
    qt = Core.quantize(Ref.random_dense({8, 64}, {:f, 32}, 15), group_size: 32)
    values = List.replace_at(Ref.random_values(64, 16), 40, :nan)
    x = NxQuant.Dense.new(TestFloat.encode(values, {:f, 32}), {1, 64}, {:f, 32})
    out = Ref.rows(Core.quantized_matmul(x, qt, precision: :int8))
    assert Enum.all?(hd(out), &(&1 == :nan))
  end
end
