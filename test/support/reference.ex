defmodule NxQuant.TestReference do
  @moduledoc """
  Plain-Elixir references for tests: unpacking the bit stream, dequantizing from the parts,
  a dense dot product in doubles, and deterministic test data.
  """
  import Bitwise
  alias NxQuant.TestFloat

  @doc "The rows of a dense 2-D (or flattened) tensor as lists of floats."
  def rows(%NxQuant.Dense{data: data, type: type, shape: shape}) do
    cols = elem(shape, tuple_size(shape) - 1)
    values = TestFloat.decode(data, type)
    if cols == 0, do: [], else: Enum.chunk_every(values, cols)
  end

  @doc "q values of each row of packed words: one little-endian bit stream per row."
  def unpack(packed, rows, cols, bits) do
    words_per_row = div(cols * bits, 32)
    row_bytes = words_per_row * 4

    for r <- 0..(rows - 1)//1 do
      <<stream::size(row_bytes * 8)-little>> = binary_part(packed, r * row_bytes, row_bytes)
      for i <- 0..(cols - 1), do: stream >>> (i * bits) &&& (1 <<< bits) - 1
    end
  end

  @doc """
  MLX's dequantize from the parts: `q * scale` rounded to dtype, then `+ bias` rounded.
  Returns rows of floats.
  """
  def dequantize(%{packed: packed, scales: scales, biases: biases}, cols, bits, group_size) do
    {rows, _} = scales.shape
    dtype = scales.type
    qs = unpack(packed.data, rows, cols, bits)

    [qs, rows(scales), rows(biases)]
    |> Enum.zip()
    |> Enum.map(fn {q_row, scale_row, bias_row} ->
      q_row
      |> Enum.chunk_every(group_size)
      |> Enum.zip(Enum.zip(scale_row, bias_row))
      |> Enum.flat_map(fn {group, {scale, bias}} ->
        Enum.map(group, fn q ->
          TestFloat.round(TestFloat.round(q * scale, dtype) + bias, dtype)
        end)
      end)
    end)
  end

  @doc "x (rows of K) . w where w is K rows of N (transpose false) or N rows of K (true)."
  def dot(x_rows, w_rows, transpose) do
    w_by_output = if transpose, do: w_rows, else: transpose(w_rows)

    for x_row <- x_rows do
      for w_col <- w_by_output do
        x_row |> Enum.zip(w_col) |> Enum.reduce(0.0, fn {a, b}, acc -> acc + a * b end)
      end
    end
  end

  @doc "Sum of |x_k * w_k| per output: the scale of the rounding error of a dot product."
  def abs_dot(x_rows, w_rows, transpose) do
    abs_rows = fn rows -> Enum.map(rows, fn r -> Enum.map(r, &abs/1) end) end
    dot(abs_rows.(x_rows), abs_rows.(w_rows), transpose)
  end

  def transpose([]), do: []
  def transpose(rows), do: rows |> Enum.zip() |> Enum.map(&Tuple.to_list/1)

  @doc "n deterministic pseudo-random floats in [-1, 1) with a 1/8 chance of a x4 outlier."
  def random_values(n, seed) do
    :rand.seed(:exsss, {seed, seed * 7 + 1, seed * 13 + 2})

    for _ <- 1..n//1 do
      v = :rand.uniform() * 2 - 1
      if :rand.uniform(8) == 1, do: v * 4, else: v
    end
  end

  @doc "A dense tensor of deterministic values, exactly representable in `type`."
  def random_dense(shape, type, seed) do
    n = NxQuant.Validate.size(shape)
    values = n |> random_values(seed) |> Enum.map(&TestFloat.round(&1, type))
    NxQuant.Dense.new(TestFloat.encode(values, type), shape, type)
  end
end
