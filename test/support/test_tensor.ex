defmodule NxQuant.TestTensor do
  @moduledoc """
  Tiny row-major tensors as flat lists, for checking axis plans numerically without Nx:
  a generic permutation and a generic one-axis dot with Nx's output axis order.
  """

  @doc "Row-major strides of a shape."
  def strides(shape) do
    dims = Tuple.to_list(shape)
    {strides, _} = Enum.map_reduce(Enum.reverse(dims), 1, fn d, acc -> {acc, acc * d} end)
    Enum.reverse(strides)
  end

  @doc "All index tuples of a shape, in row-major order."
  def indices(shape) do
    Enum.reduce(Enum.reverse(Tuple.to_list(shape)), [[]], fn dim, acc ->
      for i <- 0..(dim - 1)//1, rest <- acc, do: [i | rest]
    end)
  end

  def at(values, shape, index) do
    offset = index |> Enum.zip(strides(shape)) |> Enum.map(fn {i, s} -> i * s end) |> Enum.sum()
    :array.get(offset, values)
  end

  @doc "Transposes flat `values` of `shape` by `perm` (Nx.transpose semantics)."
  def permute(values, shape, perm) do
    arr = :array.from_list(values)
    new_shape = List.to_tuple(Enum.map(perm, &elem(shape, &1)))

    values =
      for out_index <- indices(new_shape) do
        src = Enum.zip(perm, out_index) |> Enum.sort() |> Enum.map(&elem(&1, 1))
        at(arr, shape, src)
      end

    {values, new_shape}
  end

  @doc "Nx.dot(left, [cl], [], right, [cr], []) on flat lists: left free axes, then right's."
  def dot(left, left_shape, cl, right, right_shape, cr) do
    la = :array.from_list(left)
    ra = :array.from_list(right)
    l_free = for a <- 0..(tuple_size(left_shape) - 1), a != cl, do: a
    r_free = for a <- 0..(tuple_size(right_shape) - 1), a != cr, do: a

    out_shape =
      List.to_tuple(
        Enum.map(l_free, &elem(left_shape, &1)) ++ Enum.map(r_free, &elem(right_shape, &1))
      )

    k = elem(left_shape, cl)

    values =
      for out_index <- indices(out_shape) do
        {li, ri} = Enum.split(out_index, length(l_free))

        Enum.reduce(0..(k - 1), 0.0, fn j, acc ->
          lidx = insert(li, cl, j)
          ridx = insert(ri, cr, j)
          acc + at(la, left_shape, lidx) * at(ra, right_shape, ridx)
        end)
      end

    {values, out_shape}
  end

  defp insert(free_index, axis, value), do: List.insert_at(free_index, axis, value)
end
