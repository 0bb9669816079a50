defmodule NxQuant.Native do
  @moduledoc """
  Dense tensor operations with `Nx.BinaryBackend`'s semantics, run by native kernels on the
  tensors' binaries (the native dense path; the Nx glue is `NxQuant.NativeBackend`). No Nx.

  Tensors are `%NxQuant.Dense{data: binary, shape: tuple, type: type}` of a supported type
  (`supported_type?/1`: `{:u | :s, 8 | 16 | 32 | 64}`, `{:f, 16 | 32 | 64}`, `{:bf, 16}`);
  build the struct directly. Every function returns a new `%NxQuant.Dense{}` (one fresh
  binary; inputs are read in place) and raises `ArgumentError` naming the problem on bad
  input. Output types are the caller's (the Nx glue passes Nx's): `out_type` arguments.

  The one exception: `put_slice/4` of a tensor of at least 64 KB returns its data as an
  `NxQuant.Native.Versioned` buffer, which the next `put_slice/4` into it updates in place (a
  KV cache then costs the slice per token, not a copy of the cache) while every earlier tensor
  keeps reading what it did. Every function here accepts such data wherever it takes a binary;
  `to_binary/1` gives its bytes.

  Shapes, strides and axes are planned here (`NxQuant.Native.Layout`, pure Elixir): a
  transpose, slice, broadcast or reverse is a single strided copy; pad, concatenate, stack
  and put_slice write strided pieces into one output; a dot is one batched matmul over
  strided views (after one contiguous copy of an operand only when its axes do not collapse
  to single strides).

  Numerics (the kernels', `include/nx_quant/dense_ops.h`): element-wise ops and conversions
  give BinaryBackend's bits (one correctly rounded operation; bf16 written by truncating the
  f32 rounding, as BinaryBackend does); transcendental functions use BinaryBackend's formulas
  (`expm1` is `exp(x) - 1`, `sigmoid` `1 / (1 + exp(-x))`, ...) with the C library in double
  (`exp` and `sigmoid` written as f32/bf16/f16: a SIMD exp in double on AVX2 CPUs), within 1 ulp
  of it; sums, products and dot products accumulate in double in BinaryBackend's
  order, and cumulative ops follow Nx's associative scan, so both are bit-identical too.
  Integer arithmetic wraps. BinaryBackend's quirks are kept (`sign` of NaN and of both
  infinities is 1; `clip` of NaN is the lower bound; argmax/argmin pick the last NaN).
  Out-of-range gather/take indices raise, as in BinaryBackend. The tests
  (`test/native/*_test.exs`) compare every function with a pure-Elixir transcription of
  BinaryBackend's rules (`test/support/native_reference.ex`).

  Calls estimated above ~1 ms of work (one thread) run on a dirty CPU scheduler, as the
  quantized matmul's do; shorter ones stay on the calling scheduler and are charged to it (a
  small call costs well under a microsecond on top of the kernel).
  """

  alias NxQuant.{Dense, NIF}
  alias NxQuant.Native.{Layout, Types, Versioned}

  # put_slice outputs of at least this many bytes are versioned buffers (updated in place by
  # the next put_slice); smaller ones are binaries (the same bound as the output buffer pool's).
  @versioned_min_bytes 64 * 1024

  @unary_ops [:negate, :abs, :sign, :floor, :ceil, :round, :exp, :expm1, :log, :log1p] ++
               [:sigmoid, :tanh, :sqrt, :rsqrt, :cbrt, :cos, :sin, :tan, :acos, :asin, :atan] ++
               [:cosh, :sinh, :acosh, :asinh, :atanh, :erf, :erfc, :erf_inv, :is_nan] ++
               [:is_infinity, :logical_not, :bitwise_not]

  @binary_ops [:add, :subtract, :multiply, :divide, :pow, :max, :min, :quotient] ++
                [:remainder, :atan2, :equal, :not_equal, :less, :less_equal, :greater] ++
                [:greater_equal, :logical_and, :logical_or, :logical_xor, :bitwise_and] ++
                [:bitwise_or, :bitwise_xor, :left_shift, :right_shift]

  @reduce_ops [:sum, :product, :reduce_max, :reduce_min, :all, :any]
  @cumulative_ops [:cumulative_sum, :cumulative_product, :cumulative_max, :cumulative_min]

  @doc "The element-wise unary ops of `unary/3`."
  def unary_ops, do: @unary_ops
  @doc "The element-wise binary ops of `binary/5`."
  def binary_ops, do: @binary_ops
  @doc "The ops of `reduce/5`."
  def reduce_ops, do: @reduce_ops
  @doc "The ops of `cumulative/5`."
  def cumulative_ops, do: @cumulative_ops

  @doc """
  The bytes of a tensor's data as a binary: the binary itself, or a copy of a versioned
  buffer's version (`NxQuant.Native.Versioned`).
  """
  def to_binary(%Dense{data: %Versioned{} = data}), do: Versioned.to_binary(data)
  def to_binary(%Dense{data: data}) when is_binary(data), do: data

  @doc "True for the types the native path computes on."
  @spec supported_type?(term()) :: boolean()
  def supported_type?(type), do: Types.supported?(type)

  # ---- element-wise --------------------------------------------------------------------------

  @doc """
  An element-wise unary op (see `unary_ops/0`), written as `out_type` (Nx's output type:
  `{:u, 8}` for `:is_nan`, `:is_infinity`, `:logical_not`).
  """
  def unary(op, t, out_type) do
    fun = "NxQuant.Native.unary/3"
    unless op in @unary_ops, do: op_error!(fun, op, @unary_ops)
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    out = type!(out_type, fun, "out_type")

    data
    |> operand(type, 0, Layout.strides(shape))
    |> then(&NIF.dense_unary(op, out, shape, &1))
    |> dense(shape, out_type)
  end

  @doc """
  An element-wise binary op (see `binary_ops/0`) with Nx's implicit broadcasting of `a` and
  `b` to `out_shape` (trailing axes aligned, size-1 axes repeated), written as `out_type`.
  """
  def binary(op, a, b, out_shape, out_type) do
    fun = "NxQuant.Native.binary/5"
    unless op in @binary_ops, do: op_error!(fun, op, @binary_ops)
    %Dense{data: a_data, shape: a_shape, type: a_type} = tensor!(a, fun, "a")
    %Dense{data: b_data, shape: b_shape, type: b_type} = tensor!(b, fun, "b")
    out = type!(out_type, fun, "out_type")
    Layout.shape!(out_shape, fun, "out_shape")

    NIF.dense_binary(
      op,
      out,
      out_shape,
      operand(a_data, a_type, 0, Layout.broadcast_strides(a_shape, out_shape, fun, "a")),
      operand(b_data, b_type, 0, Layout.broadcast_strides(b_shape, out_shape, fun, "b"))
    )
    |> dense(out_shape, out_type)
  end

  @doc """
  Nx.select: `on_true` where `pred` is non-zero, else `on_false`; all three broadcast to
  `out_shape` as in `binary/5`.
  """
  def select(pred, on_true, on_false, out_shape, out_type) do
    fun = "NxQuant.Native.select/5"
    out = type!(out_type, fun, "out_type")
    Layout.shape!(out_shape, fun, "out_shape")

    NIF.dense_select(
      out,
      out_shape,
      broadcast_operand(pred, out_shape, fun, "pred"),
      broadcast_operand(on_true, out_shape, fun, "on_true"),
      broadcast_operand(on_false, out_shape, fun, "on_false")
    )
    |> dense(out_shape, out_type)
  end

  @doc "Nx.clip: `lo` and `hi` (usually scalars) broadcast to `t`'s shape."
  def clip(t, lo, hi, out_type) do
    fun = "NxQuant.Native.clip/4"
    %Dense{shape: shape} = t = tensor!(t, fun, "tensor")
    out = type!(out_type, fun, "out_type")

    NIF.dense_clip(
      out,
      shape,
      broadcast_operand(t, shape, fun, "tensor"),
      broadcast_operand(lo, shape, fun, "lo"),
      broadcast_operand(hi, shape, fun, "hi")
    )
    |> dense(shape, out_type)
  end

  @doc """
  Nx.as_type: float -> float rounds to nearest (bf16: the f32 rounding truncated, as
  BinaryBackend writes it), float -> integer truncates (NaN -> 0, infinities -> the type's
  max / min), integer -> integer wraps. The same type returns `t` itself.
  """
  def as_type(t, out_type) do
    fun = "NxQuant.Native.as_type/2"
    %Dense{data: data, shape: shape, type: type} = t = tensor!(t, fun, "tensor")
    out = type!(out_type, fun, "out_type")

    if type == out_type do
      t
    else
      NIF.dense_unary(:copy, out, shape, operand(data, type, 0, Layout.strides(shape)))
      |> dense(shape, out_type)
    end
  end

  # ---- views: one strided copy ---------------------------------------------------------------

  @doc "Nx.transpose: `axes` is the permutation (output axis i is input axis axes[i])."
  def transpose(t, axes) do
    fun = "NxQuant.Native.transpose/2"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    {out_shape, strides} = Layout.transpose_view(shape, axes, fun)
    copy(data, type, 0, strides, out_shape)
  end

  @doc """
  Nx.Backend.broadcast/4: axis i of `t` becomes axis `axes[i]` of `out_shape` (a size-1 axis
  repeats), every other axis of `out_shape` repeats `t`.
  """
  def broadcast(t, out_shape, axes) do
    fun = "NxQuant.Native.broadcast/3"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    Layout.shape!(out_shape, fun, "out_shape")
    strides = Layout.broadcast_axes_strides(shape, out_shape, axes, fun)
    copy(data, type, 0, strides, out_shape)
  end

  @doc "Nx.reverse along `axes`."
  def reverse(t, axes) do
    fun = "NxQuant.Native.reverse/2"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    {offset, strides} = Layout.reverse_view(shape, axes, fun)
    copy(data, type, offset, strides, shape)
  end

  @doc """
  Nx.slice with integer start indices (clamped as BinaryBackend does), lengths and strides;
  the output has `ceil(length / stride)` elements along each axis.
  """
  def slice(t, start_indices, lengths, strides) do
    fun = "NxQuant.Native.slice/4"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")

    {out_shape, offset, view_strides} =
      Layout.slice_view(shape, start_indices, lengths, strides, fun)

    copy(data, type, offset, view_strides, out_shape)
  end

  defp copy(data, type, offset, strides, out_shape) do
    atom = Types.atom(type)

    NIF.dense_unary(:copy, atom, out_shape, operand(data, type, offset, strides))
    |> dense(out_shape, type)
  end

  # ---- assembled outputs ---------------------------------------------------------------------

  @doc """
  Nx.put_slice: `t` with `slice` written at `start_indices` (clamped as BinaryBackend does:
  `min(max(start, 0), dim - slice_dim)`), as `out_type` (default: Nx's merge of both types).
  """
  def put_slice(t, start_indices, slice, out_type \\ nil) do
    fun = "NxQuant.Native.put_slice/4"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    %Dense{data: s_data, shape: s_shape, type: s_type} = tensor!(slice, fun, "slice")
    out_type = out_type || Types.merge(type, s_type)
    out = type!(out_type, fun, "out_type")
    {offset, out_strides} = Layout.put_slice_window(shape, start_indices, s_shape, fun)
    target = operand(data, type, 0, out_strides)
    piece = {s_shape, operand(s_data, s_type, 0, Layout.strides(s_shape)), offset, out_strides}
    bytes = Layout.size(shape) * Types.size(out_type)

    if bytes >= @versioned_min_bytes do
      NIF.dense_put_slice(out, shape, target, piece)
      |> Versioned.new(bytes)
      |> dense(shape, out_type)
    else
      NIF.dense_assemble(out, shape, nil, [{shape, target, 0, out_strides}, piece])
      |> dense(shape, out_type)
    end
  end

  @doc "Nx.concatenate of a non-empty list along `axis`, as `out_type`."
  def concatenate(tensors, axis, out_type) do
    fun = "NxQuant.Native.concatenate/3"
    tensors = list!(tensors, fun)
    out = type!(out_type, fun, "out_type")
    shapes = Enum.map(tensors, & &1.shape)
    {out_shape, offsets} = Layout.concatenate_plan(shapes, axis, fun)
    out_strides = Layout.strides(out_shape)

    pieces =
      Enum.zip_with(tensors, offsets, fn %Dense{data: data, shape: shape, type: type}, offset ->
        {shape, operand(data, type, 0, Layout.strides(shape)), offset, out_strides}
      end)

    NIF.dense_assemble(out, out_shape, nil, pieces) |> dense(out_shape, out_type)
  end

  @doc "Nx.stack of a non-empty list of tensors of one shape along a new `axis`."
  def stack(tensors, axis, out_type) do
    fun = "NxQuant.Native.stack/3"
    [%Dense{shape: shape} | _] = tensors = list!(tensors, fun)
    out = type!(out_type, fun, "out_type")
    Layout.axis!(axis, tuple_size(shape) + 1, fun)

    for %Dense{shape: other} <- tensors, other != shape do
      raise ArgumentError,
            "#{fun}: every tensor must have shape #{inspect(shape)}, got: #{inspect(other)}"
    end

    # Each tensor is a piece of shape `shape` with a size-1 axis inserted at `axis`.
    piece_shape = Tuple.insert_at(shape, axis, 1)
    piece_strides = shape |> Layout.strides() |> Tuple.insert_at(axis, 0)
    out_shape = put_elem(piece_shape, axis, length(tensors))
    out_strides = Layout.strides(out_shape)
    step = elem(out_strides, axis)

    pieces =
      tensors
      |> Enum.with_index()
      |> Enum.map(fn {%Dense{data: data, type: type}, i} ->
        {piece_shape, operand(data, type, 0, piece_strides), i * step, out_strides}
      end)

    NIF.dense_assemble(out, out_shape, nil, pieces) |> dense(out_shape, out_type)
  end

  @doc """
  Nx.pad: `pad_value` is a scalar `%Dense{}`; `padding_config` one `{low, high, interior}`
  per axis (low/high may be negative: the operand is cropped), as `out_type`.
  """
  def pad(t, pad_value, padding_config, out_type) do
    fun = "NxQuant.Native.pad/4"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    %Dense{data: v_data, shape: v_shape, type: v_type} = tensor!(pad_value, fun, "pad_value")
    out = type!(out_type, fun, "out_type")

    if v_shape != {} do
      raise ArgumentError, "#{fun}: pad_value must be a scalar, got shape #{inspect(v_shape)}"
    end

    {out_shape, piece} = Layout.pad_plan(shape, padding_config, fun)

    pieces =
      case piece do
        nil ->
          []

        {in_shape, {offset, strides}, out_offset, out_strides} ->
          [{in_shape, operand(data, type, offset, strides), out_offset, out_strides}]
      end

    NIF.dense_assemble(out, out_shape, operand(v_data, v_type, 0, {}), pieces)
    |> dense(out_shape, out_type)
  end

  @doc "Nx.iota: the index along `axis`, or the flat row-major index when `axis` is nil."
  def iota(shape, type, axis) do
    fun = "NxQuant.Native.iota/3"
    Layout.shape!(shape, fun, "shape")
    atom = type!(type, fun, "type")
    axis = if axis == nil, do: -1, else: Layout.axis!(axis, tuple_size(shape), fun)
    NIF.dense_iota(atom, shape, axis) |> dense(shape, type)
  end

  # ---- reductions ----------------------------------------------------------------------------

  @doc """
  Nx.sum / product / reduce_max / reduce_min / all / any over `axes` (nil: all), keeping
  reduced axes as size 1 when `keep_axes`, written as `out_type`.
  """
  def reduce(op, t, axes, keep_axes, out_type) do
    fun = "NxQuant.Native.reduce/5"
    unless op in @reduce_ops, do: op_error!(fun, op, @reduce_ops)
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    out = type!(out_type, fun, "out_type")
    {axes, out_shape} = Layout.reduce_plan(shape, axes, keep_axes == true, fun)

    NIF.dense_reduce(
      op,
      out,
      shape,
      operand(data, type, 0, Layout.strides(shape)),
      List.to_tuple(axes),
      :low
    )
    |> dense(out_shape, out_type)
  end

  @doc """
  Nx.argmax / argmin (`op`): the index along `axis`, or the flat index over the whole tensor
  when `axis` is nil (output `{}`); `tie_break` `:low` or `:high`.
  """
  def arg_reduce(op, t, axis, keep_axis, tie_break, out_type) do
    fun = "NxQuant.Native.arg_reduce/6"
    unless op in [:argmax, :argmin], do: op_error!(fun, op, [:argmax, :argmin])
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    out = type!(out_type, fun, "out_type")

    unless tie_break in [:low, :high] do
      raise ArgumentError, "#{fun}: tie_break must be :low or :high, got: #{inspect(tie_break)}"
    end

    unless Types.integer?(out_type) do
      raise ArgumentError, "#{fun}: out_type must be an integer type, got: #{inspect(out_type)}"
    end

    {axes, out_shape} =
      if axis == nil do
        {Enum.to_list(0..(tuple_size(shape) - 1)//1), {}}
      else
        Layout.axis!(axis, tuple_size(shape), fun)
        Layout.reduce_plan(shape, [axis], keep_axis == true, fun)
      end

    reduced = axes |> Enum.map(&elem(shape, &1)) |> Enum.product()

    if reduced == 0 and Layout.size(out_shape) > 0 do
      raise ArgumentError,
            "#{fun}: cannot take the #{op} over an empty axis of shape #{inspect(shape)}"
    end

    NIF.dense_reduce(
      op,
      out,
      shape,
      operand(data, type, 0, Layout.strides(shape)),
      List.to_tuple(axes),
      tie_break
    )
    |> dense(out_shape, out_type)
  end

  @doc "Nx.cumulative_sum / _product / _max / _min along `axis` (from the end if `reverse`)."
  def cumulative(op, t, axis, reverse, out_type) do
    fun = "NxQuant.Native.cumulative/5"
    unless op in @cumulative_ops, do: op_error!(fun, op, @cumulative_ops)
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    out = type!(out_type, fun, "out_type")
    Layout.axis!(axis, tuple_size(shape), fun)

    NIF.dense_cumulative(
      op,
      out,
      shape,
      operand(data, type, 0, Layout.strides(shape)),
      axis,
      reverse == true
    )
    |> dense(shape, out_type)
  end

  # ---- sorting -------------------------------------------------------------------------------

  @doc "Nx.sort along `axis`, `direction` `:asc` or `:desc` (NaN sorts above everything)."
  def sort(t, axis, direction) do
    fun = "NxQuant.Native.sort/3"
    %Dense{shape: shape, type: type} = t = tensor!(t, fun, "tensor")
    descending = direction!(direction, fun)

    if shape == {} do
      t
    else
      sort_nif(t, axis, descending, nil, fun) |> dense(shape, type)
    end
  end

  @doc "Nx.argsort along `axis` (stable), indices as `out_type`."
  def argsort(t, axis, direction, out_type) do
    fun = "NxQuant.Native.argsort/4"
    %Dense{shape: shape} = t = tensor!(t, fun, "tensor")
    descending = direction!(direction, fun)
    out = type!(out_type, fun, "out_type")

    unless Types.integer?(out_type) do
      raise ArgumentError, "#{fun}: out_type must be an integer type, got: #{inspect(out_type)}"
    end

    if shape == {} do
      iota({}, out_type, nil)
    else
      sort_nif(t, axis, descending, out, fun) |> dense(shape, out_type)
    end
  end

  defp sort_nif(%Dense{data: data, shape: shape, type: type}, axis, descending, index, fun) do
    Layout.axis!(axis, tuple_size(shape), fun)
    NIF.dense_sort(shape, operand(data, type, 0, Layout.strides(shape)), axis, descending, index)
  end

  defp direction!(:asc, _fun), do: false
  defp direction!(:desc, _fun), do: true

  defp direction!(other, fun) do
    raise ArgumentError, "#{fun}: direction must be :asc or :desc, got: #{inspect(other)}"
  end

  @doc """
  Nx.top_k along the last axis: `{values, indices}` of the `k` largest (as Nx: a stable
  descending sort, NaN first), indices as `index_type`.
  """
  def top_k(t, k, index_type) do
    fun = "NxQuant.Native.top_k/3"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    index = type!(index_type, fun, "index_type")
    rank = tuple_size(shape)

    unless Types.integer?(index_type) do
      raise ArgumentError,
            "#{fun}: index_type must be an integer type, got: #{inspect(index_type)}"
    end

    if rank == 0 do
      raise ArgumentError, "#{fun}: the tensor must have rank >= 1, got shape {}"
    end

    last = elem(shape, rank - 1)

    unless is_integer(k) and k >= 1 and k <= last do
      raise ArgumentError,
            "#{fun}: k must be an integer in 1..#{last} (the last axis), got: #{inspect(k)}"
    end

    out_shape = put_elem(shape, rank - 1, k)

    {values, indices} =
      NIF.dense_top_k(shape, operand(data, type, 0, Layout.strides(shape)), k, index)

    {dense(values, out_shape, type), dense(indices, out_shape, index_type)}
  end

  # ---- indexing ------------------------------------------------------------------------------

  @doc """
  Nx.gather: `indices` of shape `{..., length(axes)}` (an integer type) pick slices of `t`
  over `axes`; the output is the indices' leading shape followed by the other axes of `t`.
  `out_shape` (Nx's) must be that shape. Indices out of range raise, as in BinaryBackend.
  """
  def gather(t, indices, axes, out_shape) do
    fun = "NxQuant.Native.gather/4"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    %Dense{data: i_data, shape: i_shape, type: i_type} = indices!(indices, fun)
    expected = Layout.gather_shape(shape, i_shape, axes, fun)
    out_shape!(out_shape, expected, fun)
    depth = length(axes)
    count = if depth == 0, do: div_shape(i_shape), else: div(Layout.size(i_shape), depth)

    NIF.dense_gather(
      shape,
      operand(data, type, 0, Layout.strides(shape)),
      operand(i_data, i_type, 0, {depth, 1}),
      count,
      List.to_tuple(axes)
    )
    |> dense(out_shape, type)
  end

  # The number of index tuples when each is empty: the leading axes' size.
  defp div_shape(i_shape) do
    i_shape |> Tuple.delete_at(tuple_size(i_shape) - 1) |> Layout.size()
  end

  @doc """
  Nx.take: the entries of `t` along `axis` at `indices` (any shape, an integer type); the
  output is `t`'s shape with `axis` replaced by the indices' shape (`out_shape`).
  """
  def take(t, indices, axis, out_shape) do
    fun = "NxQuant.Native.take/4"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    %Dense{data: i_data, shape: i_shape, type: i_type} = indices!(indices, fun)
    rank = tuple_size(shape)
    Layout.axis!(axis, rank, fun)
    out_shape!(out_shape, Layout.take_shape(shape, i_shape, axis), fun)
    count = Layout.size(i_shape)

    # gather along `axis`: {indices..., the other axes...}
    gathered =
      NIF.dense_gather(
        shape,
        operand(data, type, 0, Layout.strides(shape)),
        operand(i_data, i_type, 0, {1, 1}),
        count,
        {axis}
      )

    lead = shape |> Tuple.to_list() |> Enum.take(axis)

    if axis == 0 or Enum.product(lead) == 1 or count == 1 do
      dense(gathered, out_shape, type)
    else
      # move the indices' axes after the leading axes
      irank = tuple_size(i_shape)

      g_shape =
        List.to_tuple(Tuple.to_list(i_shape) ++ (Tuple.to_list(shape) |> List.delete_at(axis)))

      n_lead = length(lead)
      perm = Enum.to_list(irank..(irank + n_lead - 1)//1) ++ Enum.to_list(0..(irank - 1)//1)
      perm = perm ++ Enum.to_list((irank + n_lead)..(tuple_size(g_shape) - 1)//1)
      {^out_shape, strides} = Layout.transpose_view(g_shape, perm, fun)
      copy(gathered, type, 0, strides, out_shape)
    end
  end

  @doc """
  Nx.take_along_axis: `indices` has `t`'s shape except along `axis`; output element i is
  `t` at i with its `axis` coordinate replaced by `indices[i]`. `out_shape` is the indices'
  shape.
  """
  def take_along_axis(t, indices, axis, out_shape) do
    fun = "NxQuant.Native.take_along_axis/4"
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, "tensor")
    %Dense{data: i_data, shape: i_shape, type: i_type} = indices!(indices, fun)
    rank = tuple_size(shape)
    Layout.axis!(axis, rank, fun)

    unless tuple_size(i_shape) == rank and
             Enum.all?(0..(rank - 1)//1, &(&1 == axis or elem(i_shape, &1) == elem(shape, &1))) do
      raise ArgumentError,
            "#{fun}: indices of shape #{inspect(i_shape)} must match the tensor's shape " <>
              "#{inspect(shape)} except along axis #{axis}"
    end

    out_shape!(out_shape, i_shape, fun)

    # Full index tuples {i_0, ..., indices[i], ..., i_{r-1}} (s64): each coordinate read from
    # one iota of the largest dimension through a view that only moves along its own axis.
    longest = i_shape |> Tuple.to_list() |> Enum.max(fn -> 0 end)
    iota = NIF.dense_iota(:s64, {longest}, 0)
    full_shape = Tuple.insert_at(i_shape, rank, rank)
    full_strides = Layout.strides(full_shape)
    window = Tuple.delete_at(full_strides, rank)
    zeros = :erlang.make_tuple(rank, 0)

    pieces =
      for j <- 0..(rank - 1) do
        if j == axis do
          {i_shape, operand(i_data, i_type, 0, Layout.strides(i_shape)), j, window}
        else
          {i_shape, {iota, :s64, 0, put_elem(zeros, j, 1)}, j, window}
        end
      end

    full = NIF.dense_assemble(:s64, full_shape, nil, pieces)
    count = Layout.size(i_shape)

    NIF.dense_gather(
      shape,
      operand(data, type, 0, Layout.strides(shape)),
      {full, :s64, 0, {rank, 1}},
      count,
      List.to_tuple(Enum.to_list(0..(rank - 1)))
    )
    |> dense(out_shape, type)
  end

  # ---- dot -----------------------------------------------------------------------------------

  @doc """
  Nx.dot/6: contracts `contract_a` of `a` with `contract_b` of `b` (paired in order) over the
  batch axes `batch_a` / `batch_b`; the output is `{batch..., a's free axes..., b's free
  axes...}` as `out_type`. Products are accumulated in double in the order of the contracted
  axes (row-major over `contract_a`), as BinaryBackend does.
  """
  def dot(a, contract_a, batch_a, b, contract_b, batch_b, out_type) do
    fun = "NxQuant.Native.dot/7"
    %Dense{shape: a_shape} = a = tensor!(a, fun, "a")
    %Dense{shape: b_shape} = b = tensor!(b, fun, "b")
    out = type!(out_type, fun, "out_type")

    for {list, name} <- [
          {contract_a, "contract_a"},
          {batch_a, "batch_a"},
          {contract_b, "contract_b"},
          {batch_b, "batch_b"}
        ],
        not is_list(list) do
      raise ArgumentError, "#{fun}: #{name} must be a list of axes, got: #{inspect(list)}"
    end

    plan = Layout.dot_plan(a_shape, contract_a, batch_a, b_shape, contract_b, batch_b, fun)

    NIF.dense_matmul(
      out,
      plan.batch,
      plan.m,
      plan.n,
      plan.k,
      matmul_operand(a, plan.a),
      matmul_operand(b, plan.b)
    )
    |> dense(plan.out_shape, out_type)
  end

  defp matmul_operand(%Dense{data: data, type: type}, {:view, offset, strides}) do
    operand(data, type, offset, strides)
  end

  defp matmul_operand(%Dense{data: data, shape: shape, type: type}, {:copy, axes, _, strides}) do
    {permuted, view} = Layout.transpose_view(shape, axes, "NxQuant.Native.dot/7")
    atom = Types.atom(type)
    contiguous = NIF.dense_unary(:copy, atom, permuted, operand(data, type, 0, view))
    {contiguous, atom, 0, strides}
  end

  # ---- helpers -------------------------------------------------------------------------------

  defp operand(%Versioned{} = data, type, offset, strides),
    do: {Versioned.handle(data), Types.atom(type), offset, strides}

  defp operand(data, type, offset, strides), do: {data, Types.atom(type), offset, strides}

  defp broadcast_operand(t, out_shape, fun, name) do
    %Dense{data: data, shape: shape, type: type} = tensor!(t, fun, name)
    operand(data, type, 0, Layout.broadcast_strides(shape, out_shape, fun, name))
  end

  defp dense(data, shape, type), do: %Dense{data: data, shape: shape, type: type}

  defp data_bytes(%Versioned{bytes: bytes}), do: bytes
  defp data_bytes(binary), do: byte_size(binary)

  # A %Dense{} of a supported type whose binary matches its shape.
  defp tensor!(%Dense{data: data, shape: shape, type: type} = t, fun, name)
       when is_binary(data) or is_struct(data, Versioned) do
    size = Types.size(type)
    count = Layout.size(shape)

    cond do
      size == nil ->
        raise ArgumentError,
              "#{fun}: #{name} has type #{inspect(type)}, which the native path does not " <>
                "support (supported: #{inspect(Types.all())})"

      count == nil ->
        raise ArgumentError,
              "#{fun}: #{name} has shape #{inspect(shape)}, not a tuple of non-negative integers"

      data_bytes(data) != count * size ->
        raise ArgumentError,
              "#{fun}: #{name} has #{data_bytes(data)} bytes of data, expected #{count * size} " <>
                "for shape #{inspect(shape)} and type #{inspect(type)}"

      true ->
        t
    end
  end

  defp tensor!(other, fun, name) do
    raise ArgumentError,
          "#{fun}: #{name} must be an %NxQuant.Dense{} with a binary (or a versioned buffer), got: " <>
            inspect(other, limit: 5, printable_limit: 40)
  end

  defp indices!(indices, fun) do
    %Dense{type: type} = t = tensor!(indices, fun, "indices")

    unless Types.integer?(type) do
      raise ArgumentError, "#{fun}: indices must have an integer type, got: #{inspect(type)}"
    end

    t
  end

  defp type!(type, fun, name) do
    Types.atom(type) ||
      raise ArgumentError,
            "#{fun}: #{name} must be one of #{inspect(Types.all())}, got: #{inspect(type)}"
  end

  defp list!([%Dense{} | _] = tensors, fun) do
    Enum.each(tensors, &tensor!(&1, fun, "every tensor"))
    tensors
  end

  defp list!(other, fun) do
    raise ArgumentError,
          "#{fun}: expected a non-empty list of %NxQuant.Dense{}, got: " <>
            inspect(other, limit: 3, printable_limit: 40)
  end

  defp out_shape!(out_shape, expected, fun) do
    if out_shape != expected do
      raise ArgumentError,
            "#{fun}: out_shape #{inspect(out_shape)} does not match the result's shape " <>
              inspect(expected)
    end
  end

  defp op_error!(fun, op, ops) do
    raise ArgumentError, "#{fun}: unknown op #{inspect(op)}, expected one of #{inspect(ops)}"
  end
end
