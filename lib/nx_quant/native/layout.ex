defmodule NxQuant.Native.Layout do
  @moduledoc """
  Shape and stride planning for `NxQuant.Native`: pure functions, no NIF, no Nx.

  Tensors are row-major. A *view* of a tensor is `{offset, strides}` (in elements): the element
  at multi-index `i` of the view's iteration shape is element `offset + sum(i_k * strides_k)`
  of the tensor's binary. Broadcasting, transposing, reversing and slicing are views (stride
  0 on broadcast axes, negative on reversed ones), so every one of them is a single strided
  copy; padding, concatenation and put_slice are a fill plus strided writes into the output
  ("pieces": `{shape, view, out_offset, out_strides}`).

  Every function raises `ArgumentError` on invalid input; `fun` names the caller in messages.
  """

  @type shape :: tuple()
  @type view :: {integer(), tuple()}

  # ---- shapes ------------------------------------------------------------------------------

  @doc "The number of elements of a valid shape, or nil when `shape` is not a valid shape."
  def size(shape) when is_tuple(shape), do: size(shape, tuple_size(shape), 1)
  def size(_), do: nil

  defp size(_shape, 0, acc), do: acc

  defp size(shape, i, acc) do
    case elem(shape, i - 1) do
      d when is_integer(d) and d >= 0 -> size(shape, i - 1, acc * d)
      _ -> nil
    end
  end

  @doc "Raises unless `shape` is a tuple of non-negative integers."
  def shape!(shape, fun, name) do
    if size(shape) == nil do
      raise ArgumentError,
            "#{fun}: #{name} must be a tuple of non-negative integers, got: #{inspect(shape)}"
    end

    shape
  end

  @doc "Row-major contiguous strides of a shape."
  def strides({}), do: {}
  def strides({_}), do: {1}
  def strides({_, b}), do: {b, 1}
  def strides({_, b, c}), do: {b * c, c, 1}
  def strides({_, b, c, d}), do: {b * c * d, c * d, d, 1}
  def strides(shape), do: shape |> strides_list() |> List.to_tuple()

  @doc "Row-major contiguous strides as a list."
  def strides_list(shape) do
    {list, _} =
      shape
      |> Tuple.to_list()
      |> List.foldr({[], 1}, fn d, {acc, s} -> {[s | acc], s * d} end)

    list
  end

  # ---- broadcasting ------------------------------------------------------------------------

  @doc """
  The strides (a tuple) that read a contiguous tensor of `shape` as `out_shape` under Nx's
  implicit broadcasting: trailing axes aligned, an axis of size 1 (or a missing leading axis)
  repeated. Raises when the shapes are not compatible.
  """
  def broadcast_strides(shape, shape, _fun, _name), do: strides(shape)

  def broadcast_strides(shape, out_shape, fun, name) do
    rank = tuple_size(shape)
    out_rank = tuple_size(out_shape)
    lead = out_rank - rank

    if lead < 0 do
      broadcast_error!(shape, out_shape, fun, name)
    end

    in_strides = strides(shape)

    for j <- 0..(out_rank - 1)//1 do
      i = j - lead

      cond do
        i < 0 ->
          0

        true ->
          d = elem(shape, i)
          o = elem(out_shape, j)

          cond do
            d == 1 -> 0
            d == o -> elem(in_strides, i)
            true -> broadcast_error!(shape, out_shape, fun, name)
          end
      end
    end
    |> List.to_tuple()
  end

  defp broadcast_error!(shape, out_shape, fun, name) do
    raise ArgumentError,
          "#{fun}: #{name} of shape #{inspect(shape)} cannot be broadcast to #{inspect(out_shape)}"
  end

  @doc """
  Nx.Backend.broadcast/4's view: axis `i` of `shape` becomes axis `axes[i]` of `out_shape`
  (axes strictly increasing; each dimension equal to its target or 1), every other output
  axis repeats. Returns the strides tuple.
  """
  def broadcast_axes_strides(shape, out_shape, axes, fun) do
    rank = tuple_size(shape)
    out_rank = tuple_size(out_shape)

    valid =
      is_list(axes) and length(axes) == rank and
        Enum.all?(axes, &(is_integer(&1) and &1 >= 0 and &1 < out_rank)) and
        increasing?(axes) and
        axes
        |> Enum.with_index()
        |> Enum.all?(fn {axis, i} ->
          elem(shape, i) in [1, elem(out_shape, axis)]
        end)

    unless valid do
      raise ArgumentError,
            "#{fun}: cannot broadcast a tensor of shape #{inspect(shape)} to " <>
              "#{inspect(out_shape)} with axes #{inspect(axes)} (one strictly increasing axis " <>
              "of the output per input axis, each input dimension 1 or equal to its target)"
    end

    in_strides = strides(shape)
    out = :erlang.make_tuple(out_rank, 0)

    axes
    |> Enum.with_index()
    |> Enum.reduce(out, fn {axis, i}, acc ->
      if elem(shape, i) == 1, do: acc, else: put_elem(acc, axis, elem(in_strides, i))
    end)
  end

  defp increasing?([a, b | rest]) when a < b, do: increasing?([b | rest])
  defp increasing?([_, _ | _]), do: false
  defp increasing?(_), do: true

  # ---- views -------------------------------------------------------------------------------

  @doc """
  Nx.transpose's view: `{out_shape, strides}` for a permutation `axes` of the axes of `shape`.
  """
  def transpose_view(shape, axes, fun) do
    rank = tuple_size(shape)

    unless is_list(axes) and Enum.sort(axes) == Enum.to_list(0..(rank - 1)//1) do
      raise ArgumentError,
            "#{fun}: axes must be a permutation of 0..#{rank - 1} for shape #{inspect(shape)}, " <>
              "got: #{inspect(axes)}"
    end

    in_strides = strides(shape)

    {axes |> Enum.map(&elem(shape, &1)) |> List.to_tuple(),
     axes |> Enum.map(&elem(in_strides, &1)) |> List.to_tuple()}
  end

  @doc "Nx.reverse's view: `{offset, strides}` reading the given axes backwards."
  def reverse_view(shape, axes, fun) do
    axes!(axes, tuple_size(shape), fun, "axes")
    in_strides = strides(shape)

    Enum.reduce(axes, {0, in_strides}, fn axis, {offset, strides} ->
      d = elem(shape, axis)
      s = elem(strides, axis)
      offset = if d > 0, do: offset + (d - 1) * s, else: offset
      {offset, put_elem(strides, axis, -s)}
    end)
  end

  @doc """
  Nx.slice's view: `{out_shape, offset, strides}`. Start indices are clamped as
  Nx.BinaryBackend does (`min(max(start, 0), dim - length)`); the output has
  `ceil(length / stride)` elements along each axis.
  """
  def slice_view(shape, starts, lengths, steps, fun) do
    rank = tuple_size(shape)
    in_strides = strides(shape)
    slice_axes(shape, in_strides, starts, lengths, steps, 0, rank, [], 0, [], {starts, fun})
  end

  # One pass over the axes (this runs for every slice of a decode step: no intermediate lists).
  defp slice_axes(
         shape,
         in_strides,
         [start | ss],
         [len | ls],
         [step | ps],
         axis,
         rank,
         dims,
         offset,
         strides,
         info
       )
       when axis < rank and is_integer(start) and is_integer(len) and is_integer(step) do
    dim = elem(shape, axis)

    cond do
      len < 0 or len > dim ->
        raise ArgumentError,
              "#{elem(info, 1)}: length #{len} at axis #{axis} must be in 0..#{dim} for shape " <>
                "#{inspect(shape)}"

      step < 1 ->
        raise ArgumentError,
              "#{elem(info, 1)}: stride #{step} at axis #{axis} must be at least 1"

      true ->
        s = elem(in_strides, axis)
        start = min(max(start, 0), dim - len)

        slice_axes(
          shape,
          in_strides,
          ss,
          ls,
          ps,
          axis + 1,
          rank,
          [div(len + step - 1, step) | dims],
          offset + start * s,
          [s * step | strides],
          info
        )
    end
  end

  defp slice_axes(_shape, _in_strides, [], [], [], rank, rank, dims, offset, strides, _info) do
    {dims |> :lists.reverse() |> List.to_tuple(), offset,
     strides |> :lists.reverse() |> List.to_tuple()}
  end

  defp slice_axes(shape, _, _, _, _, _, rank, _, _, _, {_starts, fun}) do
    raise ArgumentError,
          "#{fun}: start_indices, lengths and strides must be lists of #{rank} integers for " <>
            "shape #{inspect(shape)}"
  end

  @doc "Validates a list of distinct axes of a rank-`rank` tensor."
  def axes!(axes, rank, fun, name) do
    unless is_list(axes) and Enum.all?(axes, &(is_integer(&1) and &1 >= 0 and &1 < rank)) and
             length(Enum.uniq(axes)) == length(axes) do
      raise ArgumentError,
            "#{fun}: #{name} must be a list of distinct axes in 0..#{rank - 1}, got: " <>
              inspect(axes)
    end

    axes
  end

  @doc "Validates one axis of a rank-`rank` tensor."
  def axis!(axis, rank, fun, name \\ "axis") do
    unless is_integer(axis) and axis >= 0 and axis < rank do
      raise ArgumentError,
            "#{fun}: #{name} must be an axis in 0..#{rank - 1}, got: #{inspect(axis)}"
    end

    axis
  end

  # ---- assembling outputs ------------------------------------------------------------------

  @doc """
  Nx.pad: `{out_shape, piece}` where `piece` is nil (nothing of the operand survives) or
  `{shape, {offset, strides}, out_offset, out_strides}`: the operand's elements that land in
  the output (negative low/high padding crops them) and where they go (`interior` padding
  spreads them out). The rest of the output is the padding value.
  """
  def pad_plan(shape, config, fun) do
    rank = tuple_size(shape)

    valid =
      is_list(config) and length(config) == rank and
        Enum.all?(config, fn
          {lo, hi, interior} -> is_integer(lo) and is_integer(hi) and is_integer(interior)
          _ -> false
        end)

    unless valid do
      raise ArgumentError,
            "#{fun}: padding_config must be a list of #{rank} {low, high, interior} integer " <>
              "tuples for shape #{inspect(shape)}, got: #{inspect(config)}"
    end

    out_dims =
      config
      |> Enum.zip(Tuple.to_list(shape))
      |> Enum.with_index()
      |> Enum.map(fn {{{lo, hi, interior}, d}, axis} ->
        if interior < 0 do
          raise ArgumentError,
                "#{fun}: interior padding must be non-negative, got #{interior} at axis #{axis}"
        end

        out = d + max(d - 1, 0) * interior + lo + hi
        out = if d == 0, do: lo + hi - interior, else: out

        if out < 0 do
          raise ArgumentError,
                "#{fun}: padding #{inspect({lo, hi, interior})} leaves a negative size (#{out}) " <>
                  "at axis #{axis} of shape #{inspect(shape)}"
        end

        out
      end)

    out_shape = List.to_tuple(out_dims)
    out_strides = strides_list(out_shape)
    in_strides = strides_list(shape)

    # Along each axis, operand element k lands at lo + k * (interior + 1); keep the k in range.
    ranges =
      [config, Tuple.to_list(shape), out_dims, in_strides, out_strides]
      |> Enum.zip()
      |> Enum.map(fn {{lo, _hi, interior}, d, out, s, os} ->
        step = interior + 1
        k0 = if lo >= 0, do: 0, else: div(-lo + step - 1, step)
        k1 = min(d - 1, floor_div(out - 1 - lo, step))
        {max(k1 - k0 + 1, 0), k0 * s, s, (lo + k0 * step) * os, step * os}
      end)

    piece =
      if Enum.any?(ranges, fn {n, _, _, _, _} -> n == 0 end) do
        nil
      else
        {ranges |> Enum.map(&elem(&1, 0)) |> List.to_tuple(),
         {ranges |> Enum.map(&elem(&1, 1)) |> Enum.sum(),
          ranges |> Enum.map(&elem(&1, 2)) |> List.to_tuple()},
         ranges |> Enum.map(&elem(&1, 3)) |> Enum.sum(),
         ranges |> Enum.map(&elem(&1, 4)) |> List.to_tuple()}
      end

    {out_shape, piece}
  end

  defp floor_div(a, b) when a >= 0, do: div(a, b)
  defp floor_div(a, b), do: -div(-a + b - 1, b)

  @doc """
  Nx.put_slice: the start indices clamped as Nx.BinaryBackend does
  (`min(max(start, 0), dim - slice_dim)`) and the slice's `{out_offset, out_strides}` in the
  output (which has `shape`).
  """
  def put_slice_window(shape, starts, slice_shape, fun) do
    rank = tuple_size(shape)
    out_strides = strides(shape)

    unless tuple_size(slice_shape) == rank do
      put_slice_error!(shape, slice_shape, fun)
    end

    {put_slice_offset(shape, slice_shape, out_strides, starts, 0, rank, 0, fun), out_strides}
  end

  defp put_slice_offset(shape, slice_shape, out_strides, [start | rest], axis, rank, acc, fun)
       when axis < rank and is_integer(start) do
    room = elem(shape, axis) - elem(slice_shape, axis)
    if room < 0, do: put_slice_error!(shape, slice_shape, fun)
    start = min(max(start, 0), room)
    acc = acc + start * elem(out_strides, axis)
    put_slice_offset(shape, slice_shape, out_strides, rest, axis + 1, rank, acc, fun)
  end

  defp put_slice_offset(_shape, _slice_shape, _out_strides, [], rank, rank, acc, _fun), do: acc

  defp put_slice_offset(_shape, _slice_shape, _out_strides, starts, _axis, rank, _acc, fun) do
    raise ArgumentError,
          "#{fun}: start_indices must be a list of #{rank} integers, got: #{inspect(starts)}"
  end

  defp put_slice_error!(shape, slice_shape, fun) do
    raise ArgumentError,
          "#{fun}: the slice's shape #{inspect(slice_shape)} must have the rank of the " <>
            "tensor's #{inspect(shape)} and no larger dimension"
  end

  @doc """
  Nx.concatenate: `{out_shape, offsets}` for tensors of `shapes` joined along `axis`
  (every other dimension equal); `offsets` are where each one starts in the output.
  """
  def concatenate_plan([first | _] = shapes, axis, fun) do
    rank = tuple_size(first)
    axis!(axis, rank, fun)
    pattern = put_elem(first, axis, 0)

    total =
      Enum.reduce(shapes, 0, fn shape, total ->
        unless tuple_size(shape) == rank and put_elem(shape, axis, 0) == pattern do
          raise ArgumentError,
                "#{fun}: every shape must match #{inspect(put_elem(first, axis, :*))} " <>
                  "on the axes other than #{axis}, got: #{inspect(shape)}"
        end

        total + elem(shape, axis)
      end)

    out_shape = put_elem(first, axis, total)
    step = elem(strides(out_shape), axis)

    {offsets, _} =
      Enum.map_reduce(shapes, 0, fn shape, along -> {along * step, along + elem(shape, axis)} end)

    {out_shape, offsets}
  end

  # ---- reductions --------------------------------------------------------------------------

  @doc """
  The reduced axes (sorted) and output shape of a reduction over `axes` (nil: all axes);
  `keep_axes` keeps reduced axes as size 1.
  """
  def reduce_plan(shape, axes, keep_axes, fun) do
    rank = tuple_size(shape)

    axes =
      if axes == nil, do: Enum.to_list(0..(rank - 1)//1), else: axes!(axes, rank, fun, "axes")

    axes = Enum.sort(axes)

    out_shape =
      if keep_axes do
        Enum.reduce(axes, shape, &put_elem(&2, &1, 1))
      else
        axes |> Enum.reverse() |> Enum.reduce(shape, &Tuple.delete_at(&2, &1))
      end

    {axes, out_shape}
  end

  # ---- dot ---------------------------------------------------------------------------------

  @doc """
  Plans Nx.dot(a, contract_a, batch_a, b, contract_b, batch_b) as one batched matmul
  `out[batch, m, n] = sum_k a[batch, m, k] * b[batch, k, n]`:

    * batch: the batch axes (paired in order), m: a's free axes, n: b's free axes, k: the
      contracted axes in the order given (k runs row-major over contract_a, which is the
      order BinaryBackend accumulates in);
    * the output is `{batch..., a's free..., b's free...}` as Nx.dot returns it.

  Returns a map with `:batch, :m, :n, :k, :out_shape` and, for each operand, `:a` / `:b`:
  `{:view, offset, {s_batch, s_m, s_k}}` (resp. `{s_batch, s_k, s_n}`) when each group of
  axes collapses to one stride, else `{:copy, axes, shape, strides}`: the permutation `axes`
  that makes the operand contiguous as `[batch, m, k]` / `[batch, k, n]` (permuted `shape`),
  after which `strides` read it as the matmul operand.
  """
  def dot_plan(a_shape, contract_a, batch_a, b_shape, contract_b, batch_b, fun) do
    ra = tuple_size(a_shape)
    rb = tuple_size(b_shape)
    axes!(contract_a ++ batch_a, ra, fun, "the contract and batch axes of a")
    axes!(contract_b ++ batch_b, rb, fun, "the contract and batch axes of b")

    if length(contract_a) != length(contract_b) or length(batch_a) != length(batch_b) do
      raise ArgumentError,
            "#{fun}: a and b must have as many contract axes (#{inspect(contract_a)}, " <>
              "#{inspect(contract_b)}) and batch axes (#{inspect(batch_a)}, #{inspect(batch_b)})"
    end

    for {name, xs, ys} <- [{"contract", contract_a, contract_b}, {"batch", batch_a, batch_b}],
        {x, y} <- Enum.zip(xs, ys),
        elem(a_shape, x) != elem(b_shape, y) do
      raise ArgumentError,
            "#{fun}: #{name} axis #{x} of a (shape #{inspect(a_shape)}) and axis #{y} of b " <>
              "(shape #{inspect(b_shape)}) have different sizes"
    end

    free_a = Enum.to_list(0..(ra - 1)//1) -- (contract_a ++ batch_a)
    free_b = Enum.to_list(0..(rb - 1)//1) -- (contract_b ++ batch_b)
    dims = fn shape, axes -> Enum.map(axes, &elem(shape, &1)) end
    prod = &Enum.reduce(&1, 1, fn d, acc -> d * acc end)

    batch_dims = dims.(a_shape, batch_a)
    batch = prod.(batch_dims)
    m = prod.(dims.(a_shape, free_a))
    n = prod.(dims.(b_shape, free_b))
    k = prod.(dims.(a_shape, contract_a))

    out_shape = List.to_tuple(batch_dims ++ dims.(a_shape, free_a) ++ dims.(b_shape, free_b))

    %{
      batch: batch,
      m: m,
      n: n,
      k: k,
      out_shape: out_shape,
      a: operand_plan(a_shape, [batch_a, free_a, contract_a], {m * k, k, 1}),
      b: operand_plan(b_shape, [batch_b, contract_b, free_b], {k * n, n, 1})
    }
  end

  defp operand_plan(shape, groups, contiguous) do
    in_strides = strides(shape)

    case Enum.map(groups, &group_stride(&1, shape, in_strides)) do
      [{:ok, s0}, {:ok, s1}, {:ok, s2}] ->
        {:view, 0, {s0, s1, s2}}

      _ ->
        axes = Enum.concat(groups)
        {:copy, axes, axes |> Enum.map(&elem(shape, &1)) |> List.to_tuple(), contiguous}
    end
  end

  # One stride that walks `axes` row-major (axes of size 1 ignored), if there is one.
  defp group_stride(axes, shape, strides) do
    case Enum.reject(axes, &(elem(shape, &1) == 1)) do
      [] -> {:ok, 0}
      [x | rest] -> chain_stride(x, rest, shape, strides)
    end
  end

  defp chain_stride(x, [], _shape, strides), do: {:ok, elem(strides, x)}

  defp chain_stride(x, [y | rest], shape, strides) do
    if elem(strides, x) == elem(strides, y) * elem(shape, y),
      do: chain_stride(y, rest, shape, strides),
      else: :error
  end

  # ---- gather ------------------------------------------------------------------------------

  @doc """
  Nx.gather's output shape: the indices' shape without its last axis, then the axes of
  `shape` not in `axes`, in order. Validates that the indices' last axis has one entry per
  gathered axis.
  """
  def gather_shape(shape, indices_shape, axes, fun) do
    rank = tuple_size(shape)
    axes!(axes, rank, fun, "axes")
    irank = tuple_size(indices_shape)

    if irank == 0 or elem(indices_shape, irank - 1) != length(axes) do
      raise ArgumentError,
            "#{fun}: indices must have rank >= 1 and a last axis of #{length(axes)} " <>
              "(one index per gathered axis #{inspect(axes)}), got shape #{inspect(indices_shape)}"
    end

    outer = indices_shape |> Tuple.to_list() |> Enum.drop(-1)
    inner = for i <- 0..(rank - 1)//1, i not in axes, do: elem(shape, i)
    List.to_tuple(outer ++ inner)
  end

  @doc "Nx.take's output shape: `shape` with `axis` replaced by the indices' axes."
  def take_shape(shape, indices_shape, axis) do
    {lead, [_ | trail]} = shape |> Tuple.to_list() |> Enum.split(axis)
    List.to_tuple(lead ++ Tuple.to_list(indices_shape) ++ trail)
  end
end
