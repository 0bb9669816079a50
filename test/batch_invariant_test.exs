defmodule NxQuant.BatchInvariantTest do
  # The :batch_invariant option through Core and the NIF: a row's result is the same bits
  # alone, in a batch of any size (both sides of the 8-row GEMV/GEMM boundary), however the
  # rows are split between calls and whatever the thread count; for both layouts, every
  # width, f32/bf16 activations and the int8 mode; through batched weights and gather_qmm too.
  use ExUnit.Case, async: false

  alias NxQuant.{Core, Dense}
  alias NxQuant.TestReference, as: Ref

  setup do
    previous = Application.fetch_env(:nx_quant, :batch_invariant)

    on_exit(fn ->
      case previous do
        {:ok, value} -> Application.put_env(:nx_quant, :batch_invariant, value)
        :error -> Application.delete_env(:nx_quant, :batch_invariant)
      end
    end)
  end

  @k 256
  @rows 20

  defp x_rows(%Dense{data: data, type: {_, size} = type}, first, count) do
    bytes = div(size, 8) * @k
    Dense.new(binary_part(data, first * bytes, count * bytes), {count, @k}, type)
  end

  defp out_rows(out, first, count, n), do: binary_part(out.data, first * n * 4, count * n * 4)

  for bits <- [2, 3, 4, 8],
      transpose <- [true, false],
      type <- [{:f, 32}, {:bf, 16}],
      precision <- [:exact, :int8] do
    test "#{bits} bits, transpose #{transpose}, #{inspect(type)} x, #{precision}: rows alone = rows in any batch" do
      bits = unquote(bits)
      transpose = unquote(transpose)
      type = unquote(type)
      precision = unquote(precision)
      n = 64
      shape = if transpose, do: {n, @k}, else: {@k, n}
      qt = Core.quantize(Ref.random_dense(shape, {:f, 32}, bits), bits: bits, group_size: 64)
      x = Ref.random_dense({@rows, @k}, type, 7 + bits)

      opts = [
        transpose: transpose,
        out_type: {:f, 32},
        precision: precision,
        batch_invariant: true
      ]

      alone =
        for i <- 0..(@rows - 1) do
          Core.quantized_matmul(x_rows(x, i, 1), qt, [threads: 1] ++ opts).data
        end

      for {first, count, threads} <- [{0, @rows, 2}, {0, 9, 1}, {0, 8, 2}, {3, 5, 2}, {9, 11, 0}] do
        out = Core.quantized_matmul(x_rows(x, first, count), qt, [threads: threads] ++ opts)

        for i <- 0..(count - 1) do
          assert out_rows(out, i, 1, n) == Enum.at(alone, first + i),
                 "row #{first + i} in rows [#{first}, #{first + count}) differs from it alone"
        end
      end
    end
  end

  test "the default comes from config :nx_quant, :batch_invariant; bad values are ArgumentErrors" do
    qt = Core.quantize(Ref.random_dense({64, @k}, {:f, 32}, 1), bits: 4, group_size: 64)
    x = Ref.random_dense({12, @k}, {:f, 32}, 2)
    on = Core.quantized_matmul(x, qt, batch_invariant: true)
    Application.put_env(:nx_quant, :batch_invariant, true)
    assert Core.quantized_matmul(x, qt) == on
    assert Core.quantized_matmul(x_rows(x, 11, 1), qt).data == out_rows(on, 11, 1, 64)
    Application.put_env(:nx_quant, :batch_invariant, :yes)

    assert_raise ArgumentError, ~r/config :nx_quant, :batch_invariant must be a boolean/, fn ->
      Core.quantized_matmul(x, qt)
    end

    assert_raise ArgumentError, ~r/option :batch_invariant must be a boolean, got: 1/, fn ->
      Core.quantized_matmul(x, qt, batch_invariant: 1)
    end
  end

  test "batched weights and gather_qmm pass the option on" do
    qt = Core.quantize(Ref.random_dense({3, 64, @k}, {:f, 32}, 3), bits: 4, group_size: 64)
    x = Ref.random_dense({3, 12, @k}, {:f, 32}, 4)
    all = Core.quantized_matmul(x, qt, batch_invariant: true)
    one = Core.quantized_matmul(%{x | shape: {3, 12, @k}}, qt, batch_invariant: true)
    assert one == all

    # expert 1, rows 0..11 of batch 1 of x, against the same rows one at a time
    x1 = Dense.new(binary_part(x.data, 12 * @k * 4, 12 * @k * 4), {1, 12, @k}, {:f, 32})
    rhs = %Dense{data: <<1::signed-64-native>>, shape: {1}, type: {:s, 64}}
    lhs = %Dense{data: <<0::signed-64-native>>, shape: {1}, type: {:s, 64}}
    batch = Core.gather_qmm(x1, qt, lhs_indices: lhs, rhs_indices: rhs, batch_invariant: true)

    for i <- 0..11 do
      xi = Dense.new(binary_part(x1.data, i * @k * 4, @k * 4), {1, 1, @k}, {:f, 32})
      single = Core.gather_qmm(xi, qt, lhs_indices: lhs, rhs_indices: rhs, batch_invariant: true)
      assert single.data == binary_part(batch.data, i * 64 * 4, 64 * 4)
      assert out_rows(all, 12 + i, 1, 64) == single.data
    end
  end
end
