defmodule NxQuant.ConcurrencyTest do
  # Many processes sharing one quantized tensor: every result is bit-identical to the
  # single-process one, whichever scheduler (normal or dirty) and thread split ran it.
  # Latency and memory figures are measured in bench/stress.exs, not asserted here.
  use ExUnit.Case, async: false

  alias NxQuant.{Core, Dense, TestFloat}

  defp dense(n, shape, seed) do
    :rand.seed(:exsss, {seed, seed * 3 + 1, seed * 7 + 2})
    values = for _ <- 1..n, do: :rand.normal()
    Dense.new(TestFloat.encode(values, {:f, 32}), shape, {:f, 32})
  end

  test "hundreds of processes running matmuls on one shared ref get identical results" do
    # 1024 x 1024 keeps some calls on dirty schedulers (m = 16) and others on normal ones (m = 1).
    qt = Core.quantize(dense(1024 * 1024, {1024, 1024}, 1), type: {:s, 4}, group_size: 64)
    inputs = for m <- [1, 16], do: {m, dense(m * 1024, {m, 1024}, m + 10)}
    expected = Map.new(inputs, fn {m, x} -> {m, Core.quantized_matmul(x, qt).data} end)

    results =
      1..300
      |> Task.async_stream(
        fn i ->
          {m, x} = Enum.at(inputs, rem(i, 2))
          threads = rem(i, 3)
          {m, Core.quantized_matmul(x, qt, threads: threads).data}
        end,
        max_concurrency: 300,
        timeout: 120_000
      )
      |> Enum.map(fn {:ok, result} -> result end)

    assert length(results) == 300
    for {m, data} <- results, do: assert(data == expected[m])
  end

  test "concurrent quantize, dequantize and parts on one ref do not interfere" do
    source = dense(256 * 512, {256, 512}, 2)
    qt = Core.quantize(source, type: {:s, 3}, group_size: 32)
    expected = Core.dequantize(qt).data

    1..200
    |> Task.async_stream(
      fn i ->
        case rem(i, 3) do
          0 ->
            assert Core.dequantize(qt).data == expected

          1 ->
            assert Core.dequantize(Core.quantize(source, type: {:s, 3}, group_size: 32)).data ==
                     expected

          2 ->
            %{packed: p, scales: s, biases: b} = Core.parts(qt)
            again = Core.quantized_tensor(p, s, b, {256, 512}, type: {:s, 3}, group_size: 32)
            assert Core.dequantize(again).data == expected
        end
      end,
      max_concurrency: 64,
      timeout: 120_000
    )
    |> Stream.run()
  end
end
