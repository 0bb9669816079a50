# The main job, end to end through the NIF: quantize a realistic 4096 x 4096 f32 weight to
# 4 bits (group 64), run the fused quantized matmul for a decode-sized x {1, 4096} and a
# prefill-sized x {32, 4096}, and report the error against dense results, the memory saved
# and timings. Run with scripts/demo (MIX_ENV=prod mix run bench/demo.exs).
#
# Dense references are computed in plain Elixir for a handful of output columns only (the
# full dense dot in Elixir would take minutes).

alias NxQuant.{Core, Dense}

defmodule Demo do
  @moduledoc false

  # Deterministic pseudo-random f32 values, roughly bell-shaped (sum of two uniforms) with a
  # few larger "outlier" rows, like a trained linear layer. AES-CTR gives the random bytes
  # fast; one comprehension turns them into floats.
  def weight(rows, cols, seed, outliers \\ true) do
    n = rows * cols
    zeros = :binary.copy(<<0>>, n * 4)
    raw = :crypto.crypto_one_time(:aes_128_ctr, <<seed::128>>, <<0::128>>, zeros, true)
    row_bytes = cols * 4

    for r <- 0..(rows - 1), into: <<>> do
      scale = if outliers and rem(r, 97) == 0, do: 4 * 3.0e-7, else: 3.0e-7
      row = binary_part(raw, r * row_bytes, row_bytes)
      for <<a::16, b::16 <- row>>, into: <<>>, do: <<(a + b - 65535) * scale::float-32-native>>
    end
  end

  def floats(binary), do: for(<<v::float-32-native <- binary>>, do: v)

  def dot(a, b), do: Enum.zip_reduce(a, b, 0.0, fn x, y, acc -> acc + x * y end)

  # {time in ms of the fastest run, median, result}
  def time(runs, fun) do
    results = for _ <- 1..runs, do: :timer.tc(fun)
    times = results |> Enum.map(&(elem(&1, 0) / 1000)) |> Enum.sort()
    {hd(times), Enum.at(times, div(runs, 2)), results |> hd() |> elem(1)}
  end

  def ms(t), do: :erlang.float_to_binary(t * 1.0, decimals: 2)
  def mb(bytes), do: :erlang.float_to_binary(bytes / 1_048_576, decimals: 2)
  def sci(x), do: :erlang.float_to_binary(x * 1.0, [{:scientific, 2}])
end

{rows, cols, bits, group} = {4096, 4096, 4, 64}
IO.puts("nx_quant demo: #{rows}x#{cols} f32 weight, #{bits}-bit, group_size #{group}")
IO.puts("schedulers online: #{System.schedulers_online()}\n")

{t_gen, w_bin} = :timer.tc(fn -> Demo.weight(rows, cols, 42) end)
w = Dense.new(w_bin, {rows, cols}, {:f, 32})
IO.puts("generated the weight in #{Demo.ms(t_gen / 1000)} ms")

{t_q, _, qw} = Demo.time(3, fn -> Core.quantize(w, type: {:s, bits}, group_size: group) end)
IO.puts("quantize:   #{Demo.ms(t_q)} ms (best of 3)")
{t_dq, _, deq} = Demo.time(3, fn -> Core.dequantize(qw) end)
IO.puts("dequantize: #{Demo.ms(t_dq)} ms (best of 3)\n")

parts = Core.parts(qw)

q_bytes =
  byte_size(parts.packed.data) + byte_size(parts.scales.data) + byte_size(parts.biases.data)

f32_bytes = byte_size(w.data)

IO.puts(
  "memory: packed #{Demo.mb(byte_size(parts.packed.data))} MB + scales " <>
    "#{Demo.mb(byte_size(parts.scales.data))} MB + biases #{Demo.mb(byte_size(parts.biases.data))} MB" <>
    " = #{Demo.mb(q_bytes)} MB vs f32 #{Demo.mb(f32_bytes)} MB " <>
    "(#{Float.round(f32_bytes / q_bytes, 2)}x smaller, #{Float.round(100 * (1 - q_bytes / f32_bytes), 1)}% saved)\n"
)

# Output columns checked against the dense references (spread over the matrix, including
# an "outlier" row of the weight).
sample = [0, 1, 97, 1000, 2047, 2048, 3333, 4095]
w_rows = Map.new(sample, &{&1, Demo.floats(binary_part(w.data, &1 * cols * 4, cols * 4))})
deq_rows = Map.new(sample, &{&1, Demo.floats(binary_part(deq.data, &1 * cols * 4, cols * 4))})

for m <- [1, 32] do
  x = Dense.new(Demo.weight(m, cols, 7 + m, false), {m, cols}, {:f, 32})
  runs = if m == 1, do: 50, else: 10
  {best, median, out} = Demo.time(runs, fn -> Core.quantized_matmul(x, qw) end)
  x_rows = x.data |> Demo.floats() |> Enum.chunk_every(cols)
  out_rows = out.data |> Demo.floats() |> Enum.chunk_every(rows)

  # relative L2 error sqrt(sum (a - b)^2 / sum b^2) over the sampled outputs
  rel = fn reference ->
    pairs =
      for {x_row, out_row} <- Enum.zip(x_rows, out_rows), j <- sample do
        {Enum.at(out_row, j), Demo.dot(x_row, reference[j])}
      end

    err = pairs |> Enum.map(fn {a, b} -> (a - b) * (a - b) end) |> Enum.sum()
    :math.sqrt(err / (pairs |> Enum.map(fn {_, b} -> b * b end) |> Enum.sum()))
  end

  bytes_read = q_bytes + byte_size(x.data)
  gbs = bytes_read / (best / 1000) / 1.0e9
  gflops = 2 * m * rows * cols / (best / 1000) / 1.0e9

  IO.puts("fused quantized_matmul, x {#{m}, #{cols}} -> {#{m}, #{rows}}:")
  IO.puts("  time: best #{Demo.ms(best)} ms, median #{Demo.ms(median)} ms over #{runs} runs")

  IO.puts(
    "  throughput: #{Float.round(gflops, 1)} GFLOP/s, #{Float.round(gbs, 2)} GB/s of weights read"
  )

  IO.puts(
    "  relative L2 error over #{m * length(sample)} outputs (#{length(sample)} columns): " <>
      "vs dequantize + dense dot #{Demo.sci(rel.(deq_rows))}, " <>
      "vs the original f32 weight #{Demo.sci(rel.(w_rows))}\n"
  )
end
