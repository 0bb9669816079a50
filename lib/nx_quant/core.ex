defmodule NxQuant.Core do
  @moduledoc """
  The Nx-free core: quantize, dequantize and the fused quantized matmul on `NxQuant.Dense`
  tensors and `NxQuant.QuantizedTensor`s, through the NIF.

  Shapes, types and options are validated here (cheaply, with Elixir-level messages); the NIF
  checks everything again as the last line of defence. Every error is an `ArgumentError`.
  """

  alias NxQuant.{Batched, Config, Dense, NIF, QuantizedTensor, Validate}

  @doc """
  Quantizes a dense float tensor of any rank >= 1 along its last axis (leading axes are
  flattened into rows).

  Options: `:type` (`{:s, 2 | 3 | 4 | 5 | 6 | 8}`, default `{:s, 4}`) or `:bits`,
  `:group_size` (32, 64 or 128, default 64), `:threads` (0: the library default), `:mode`
  (MLX's `:affine` (default), `:mxfp4`, `:mxfp8` or `:nvfp4`; the microscaled modes fix bits
  and group size (4/32, 8/32, 4/16) and options that disagree raise), `:global_scale`
  (nvfp4 only: MLX's optional f32 global scale, a positive finite number; scales are encoded
  times `448 * 6 / global_scale` and dequantize multiplies back by `global_scale / (448 * 6)`).

  A microscaled tensor's config has `{:u, 8}` scales (E8M0 exponents for mxfp4/mxfp8, E4M3
  for nvfp4) and `biases: nil`; its `dtype` is the input's type (dequantize's result type).

  The result has the input's shape, type `{:s, bits}` and `dtype` the input's type; its
  config's scales and biases are `{rows, cols / group_size}` dense tensors whose binaries
  point into the native resource (no copy).
  """
  @spec quantize(Dense.t(), keyword()) :: QuantizedTensor.t()
  def quantize(tensor, opts \\ []) do
    fun = "quantize/2"
    %Dense{data: data, shape: shape, type: type} = Validate.float_dense!(tensor, "#{fun} tensor")
    Validate.dense!(data, shape, type, "#{fun} tensor")

    opts =
      Validate.keyword!(opts, [:type, :bits, :group_size, :threads, :mode, :global_scale], fun)

    mode = Validate.mode!(opts, fun)
    {bits, group_size} = Validate.quant_spec!(opts, fun, mode)
    threads = Validate.threads!(opts, fun)
    global = global_scale!(opts, mode, fun)
    {rows, cols} = rows_cols!(shape, group_size, fun, "tensor")
    dtype = Validate.dtype_atom(type)

    ref =
      cond do
        global != nil ->
          NIF.quantize(data, rows, cols, dtype, bits, group_size, threads, mode, global)

        mode == :affine ->
          NIF.quantize(data, rows, cols, dtype, bits, group_size, threads)

        true ->
          NIF.quantize(data, rows, cols, dtype, bits, group_size, threads, mode)
      end

    wrap(ref, shape, type, bits, group_size, rows, cols, mode)
  end

  @doc """
  The dense tensor a quantized tensor stands for: shape `qt.shape`, type `qt.dtype`. A
  transposed view dequantizes to the transposed matrix.
  """
  @spec dequantize(QuantizedTensor.t()) :: Dense.t()
  def dequantize(qt) do
    %QuantizedTensor{ref: ref, shape: shape, dtype: dtype, transposed: transposed} =
      quantized!(qt, "dequantize/1")

    %Dense{data: NIF.dequantize(ref, transposed), shape: shape, type: dtype}
  end

  @doc """
  The fused quantized matmul on the STORED matrix `{rows, cols}` =
  `NxQuant.QuantizedTensor.stored_shape(qt)`:

    * `transpose: true` (default): `x . stored^T`; x's last axis must be `cols`, the
      output's last axis is `rows`.
    * `transpose: false`: `x . stored`; x's last axis must be `rows`, the output's last
      axis is `cols`.

  Against a 2-D weight, leading axes of `x` are rows (flattened for the kernel, restored on
  output). A batched weight `{B..., rows, cols}` (rank > 2) multiplies matrix by matrix as MLX
  does: x is `{Bx..., m, k}` (rank >= 2) and the result `{broadcast(Bx, B)..., m, n}`, the batch
  shapes broadcast numpy-style (an ArgumentError where they do not).
  Options: `:transpose`, `:out_type` (default x's type), `:threads`, and `:precision`:

    * `:exact` (the default): x stays f32; the result is dequantize-then-matmul within f32
      accumulation error.
    * `:int8`: opt-in fast mode for decode-shaped calls (`transpose: true` and at most 8
      rows of x), as llama.cpp does: x is quantized to int8 in blocks of 32 values and
      multiplied with the packed values by integer dot products (AVX-512 VNNI), about 2x
      faster; the added error per output is at most `sum_k |scale_k * q_k| * d_k / 2`
      (`d` = the block's max |x| / 127), see the README. mxfp4 and nvfp4 take the same
      route with twice their E2M1 values as the integers (every CPU but ARM's); mxfp8, other
      shapes, and kernels without an int8 path compute exactly.

  The default comes from `config :nx_quant, matmul_precision: :exact | :int8`, which is also
  what `Nx.dot/2` on a quantized tensor uses.

  `:batch_invariant` (default `config :nx_quant, batch_invariant: false`, which `Nx.dot/2`
  uses too): when true, every output row is computed in one fixed order that depends on that
  row of x and the weight only, so a row's result is bit-identical whatever the number of rows
  in the call, however rows are split between calls and whatever `:threads` (a batched server
  then gives the same tokens as single requests). Every size then runs through the decode
  GEMV in blocks of 8 rows: free up to 8 rows on AVX2, slower for larger batches (prefill);
  see the README. With `precision: :int8` the int8 mode then applies at every size.
  """
  @spec quantized_matmul(Dense.t(), QuantizedTensor.t(), keyword()) :: Dense.t()
  def quantized_matmul(x, qt, opts \\ []) do
    fun = "quantized_matmul/3"
    %Dense{data: data, shape: x_shape, type: x_type} = Validate.float_dense!(x, "#{fun} x")
    Validate.dense!(data, x_shape, x_type, "#{fun} x")
    qt = quantized!(qt, fun)

    opts =
      Validate.keyword!(
        opts,
        [:transpose, :out_type, :threads, :precision, :batch_invariant],
        fun
      )

    transpose = Validate.boolean_opt!(opts, :transpose, true, fun)
    out_type = Validate.float_type_opt!(opts, :out_type, x_type, fun)
    threads = Validate.threads!(opts, fun)
    precision = Validate.kernel_precision!(opts, fun)

    if tuple_size(qt.shape) > 2 do
      kernel = {transpose, out_type, threads, precision}
      batched_matmul(data, x_shape, x_type, qt, kernel, fun)
    else
      matmul_2d(data, x_shape, x_type, qt, transpose, out_type, threads, precision, fun)
    end
  end

  defp matmul_2d(
         data,
         x_shape,
         x_type,
         %QuantizedTensor{ref: ref} = qt,
         transpose,
         out_type,
         threads,
         precision,
         fun
       ) do
    {rows, cols} = QuantizedTensor.stored_shape(qt)
    {k, n, k_name} = if transpose, do: {cols, rows, "cols"}, else: {rows, cols, "rows"}
    rank = tuple_size(x_shape)

    if rank == 0 do
      raise ArgumentError, "#{fun} x must have rank >= 1, got shape {}"
    end

    last = elem(x_shape, rank - 1)

    if last != k do
      raise ArgumentError,
            "#{fun} x has shape #{inspect(x_shape)}: its last axis must be #{k}, the #{k_name} " <>
              "of the stored #{rows}x#{cols} weight, with transpose: #{transpose}"
    end

    m = x_shape |> Tuple.delete_at(rank - 1) |> Validate.size()

    out =
      NIF.quantized_matmul(
        data,
        Validate.dtype_atom(x_type),
        m,
        ref,
        transpose,
        Validate.dtype_atom(out_type),
        threads,
        precision
      )

    %Dense{data: out, shape: put_elem(x_shape, rank - 1, n), type: out_type}
  end

  @doc """
  MLX's `gather_qmm`: for every position `p` of `broadcast(lhs.shape, rhs.shape)`,
  `x[lhs[p]] . w[rhs[p]]`, the indices into the flattened batches of `x` (`{Bx..., m, k}`) and
  of the quantized weight (`{B..., rows, cols}`, e.g. `{experts, n, k}`). The result is
  `{broadcast(lhs, rhs)..., m, n}`.

  Options: `:lhs_indices`, `:rhs_indices` (`NxQuant.Dense` integer tensors; absent or `nil`:
  an arange over that operand's batch shape), and `:transpose` (default true), `:out_type`,
  `:threads`, `:precision` as in `quantized_matmul/3`. Every index is checked (an
  ArgumentError names the first out of range). Each selected matrix is read once per call,
  however many positions chose it, and unselected ones not at all: the mlx-lm top-k layout
  `x {t, 1, 1, k}`, `rhs_indices {t, top_k}` gives `{t, top_k, 1, n}` and streams only the
  chosen experts.
  """
  @spec gather_qmm(Dense.t(), QuantizedTensor.t(), keyword()) :: Dense.t()
  def gather_qmm(x, qt, opts \\ []) do
    fun = "gather_qmm/3"
    %Dense{data: data, shape: x_shape, type: x_type} = Validate.float_dense!(x, "#{fun} x")
    Validate.dense!(data, x_shape, x_type, "#{fun} x")
    %QuantizedTensor{ref: ref} = qt = quantized!(qt, fun)

    opts =
      Validate.keyword!(
        opts,
        [
          :lhs_indices,
          :rhs_indices,
          :transpose,
          :out_type,
          :threads,
          :precision,
          :batch_invariant
        ],
        fun
      )

    transpose = Validate.boolean_opt!(opts, :transpose, true, fun)
    out_type = Validate.float_type_opt!(opts, :out_type, x_type, fun)
    threads = Validate.threads!(opts, fun)
    precision = Validate.kernel_precision!(opts, fun)
    {w_batch, {rows, cols}} = Batched.split(qt.shape, qt.transposed)
    {k, n} = if transpose, do: {cols, rows}, else: {rows, cols}
    {x_batch, m} = x_dims!(x_shape, k, transpose, fun)
    {lhs, lhs_shape} = indices!(opts[:lhs_indices], x_batch, "lhs_indices", fun)
    {rhs, rhs_shape} = indices!(opts[:rhs_indices], w_batch, "rhs_indices", fun)

    out_batch =
      broadcast!(lhs_shape, rhs_shape, "the index shapes (lhs_indices, rhs_indices)", fun)

    out =
      NIF.gather_qmm(
        data,
        Validate.dtype_atom(x_type),
        Tuple.to_list(x_batch),
        m,
        ref,
        Tuple.to_list(w_batch),
        lhs,
        rhs,
        transpose,
        Validate.dtype_atom(out_type),
        threads,
        precision
      )

    %Dense{data: out, shape: Batched.out_shape(out_batch, m, n), type: out_type}
  end

  @doc """
  Builds a quantized tensor from its parts (e.g. read from a checkpoint).

    * `packed`: `%NxQuant.Dense{type: {:u, 32}}` or a raw binary of the packed words;
    * `scales`, `biases`: `%NxQuant.Dense{}` of one float type (f32, f16 or bf16);
    * `shape`: the logical dense shape, quantized along its last axis.

  Parts may have the stored 2-D shape `{rows, n}` or the logical shape's leading axes
  followed by `n`. Options: `:type` / `:bits`, `:group_size` (defaults `{:s, 4}` / 64), `:mode`
  (see `quantize/2`). The parts are copied once into the native resource.

  Microscaled modes (`mode: :mxfp4 | :mxfp8 | :nvfp4`): `scales` is `{:u, 8}`, `biases` must
  be `nil`, and option `:dtype` (default `{:bf, 16}`, MLX's) is the dequantized type; nvfp4
  takes `:global_scale` (see `quantize/2`).
  """
  @spec quantized_tensor(Dense.t() | binary(), Dense.t(), Dense.t(), tuple(), keyword()) ::
          QuantizedTensor.t()
  def quantized_tensor(packed, scales, biases, shape, opts \\ []) do
    fun = "quantized_tensor/5"
    opts = Validate.keyword!(opts, [:type, :bits, :group_size, :mode, :dtype, :global_scale], fun)
    mode = Validate.mode!(opts, fun)

    if mode != :affine do
      microscaled_tensor(packed, scales, biases, shape, mode, opts, fun)
    else
      affine_tensor(packed, scales, biases, shape, opts, fun)
    end
  end

  defp microscaled_tensor(packed, scales, biases, shape, mode, opts, fun) do
    {bits, group_size} = Validate.quant_spec!(opts, fun, mode)
    dtype = Validate.float_type_opt!(opts, :dtype, {:bf, 16}, fun)
    global = global_scale!(opts, mode, fun)

    if biases != nil do
      raise ArgumentError,
            "#{fun} biases must be nil for mode #{inspect(mode)} (MLX's microscaled modes " <>
              "have no biases), got: #{Validate.describe(biases)}"
    end

    Validate.shape!(shape, "#{fun} shape")
    {rows, cols} = rows_cols!(shape, group_size, fun, "shape")
    words = div(cols * bits, 32)
    groups = div(cols, group_size)
    packed_data = packed!(packed, shape, rows, words, bits, fun)

    case scales do
      %Dense{type: {:u, 8}, shape: s_shape, data: data} ->
        Validate.shape!(s_shape, "#{fun} scales")

        unless is_binary(data) and byte_size(data) == Validate.size(s_shape) do
          raise ArgumentError,
                "#{fun} scales data must be a binary of #{Validate.size(s_shape)} bytes " <>
                  "for shape #{inspect(s_shape)} and type {:u, 8}, got: #{Validate.describe(data)}"
        end

        unless s_shape in part_shapes(shape, rows, groups) do
          shape_error!("scales", s_shape, shape, rows, groups, "mode #{inspect(mode)}", fun)
        end

      other ->
        raise ArgumentError,
              "#{fun} scales must be an %NxQuant.Dense{type: {:u, 8}} for mode " <>
                "#{inspect(mode)}, got: #{Validate.describe(other)}"
    end

    args = [packed_data, scales.data, <<>>, rows, cols, Validate.dtype_atom(dtype), bits]
    args = args ++ [group_size, mode] ++ if(global, do: [global], else: [])

    NIF
    |> apply(:quantized_tensor, args)
    |> wrap(shape, dtype, bits, group_size, rows, cols, mode)
  end

  defp affine_tensor(packed, scales, biases, shape, opts, fun) do
    if Keyword.has_key?(opts, :dtype) do
      raise ArgumentError,
            "#{fun} option :dtype is for the microscaled modes (affine takes the scales' type)"
    end

    {bits, group_size} = Validate.quant_spec!(opts, fun)
    Validate.shape!(shape, "#{fun} shape")
    {rows, cols} = rows_cols!(shape, group_size, fun, "shape")
    words = div(cols * bits, 32)
    groups = div(cols, group_size)

    packed_data = packed!(packed, shape, rows, words, bits, fun)

    %Dense{type: dtype} = scales = part!(scales, "scales", shape, rows, groups, group_size, fun)

    %Dense{} = biases = part!(biases, "biases", shape, rows, groups, group_size, fun)

    if biases.type != dtype do
      raise ArgumentError,
            "#{fun} biases has type #{inspect(biases.type)}, expected scales' type #{inspect(dtype)}"
    end

    packed_data
    |> NIF.quantized_tensor(
      scales.data,
      biases.data,
      rows,
      cols,
      Validate.dtype_atom(dtype),
      bits,
      group_size
    )
    |> wrap(shape, dtype, bits, group_size, rows, cols)
  end

  @doc """
  The stored parts, as dense tensors whose binaries point into the native resource (no copy):
  packed `{rows, cols * bits / 32}` u32, scales and biases `{rows, cols / group_size}`.
  """
  @spec parts(QuantizedTensor.t()) :: %{
          packed: Dense.t(),
          scales: Dense.t(),
          biases: Dense.t() | nil
        }
  def parts(qt) do
    %QuantizedTensor{
      ref: ref,
      dtype: dtype,
      config: %Config{bits: bits, group_size: gs, mode: mode}
    } = qt = quantized!(qt, "parts/1")

    {rows, cols} = QuantizedTensor.stored_shape(qt)
    {packed, scales, biases} = NIF.parts(ref)
    affine = mode == "affine"

    %{
      packed: %Dense{data: packed, shape: {rows, div(cols * bits, 32)}, type: {:u, 32}},
      scales: %Dense{
        data: scales,
        shape: {rows, div(cols, gs)},
        type: if(affine, do: dtype, else: {:u, 8})
      },
      biases: if(affine, do: %Dense{data: biases, shape: {rows, div(cols, gs)}, type: dtype})
    }
  end

  @doc "True for an `NxQuant.QuantizedTensor`."
  @spec quantized?(term()) :: boolean()
  def quantized?(%QuantizedTensor{ref: ref}) when is_reference(ref), do: true
  def quantized?(_), do: false

  @doc false
  # A resource made by another NIF (e.g. over a mapped checkpoint) as a quantized tensor of the
  # logical `shape`.
  def wrap_ref(ref, shape, dtype, bits, group_size) do
    cols = elem(shape, tuple_size(shape) - 1)
    wrap(ref, shape, dtype, bits, group_size, div(Validate.size(shape), cols), cols)
  end

  # ---- helpers ---------------------------------------------------------------------------

  defp batched_matmul(data, x_shape, x_type, qt, {transpose, out_type, threads, precision}, fun) do
    {w_batch, {rows, cols}} = Batched.split(qt.shape)
    {k, n} = if transpose, do: {cols, rows}, else: {rows, cols}
    {x_batch, m} = x_dims!(x_shape, k, transpose, fun)
    out_batch = broadcast!(x_batch, w_batch, "the batch shapes of x and the weight", fun)

    out =
      NIF.batched_matmul(
        data,
        Validate.dtype_atom(x_type),
        Tuple.to_list(x_batch),
        m,
        qt.ref,
        Tuple.to_list(w_batch),
        transpose,
        Validate.dtype_atom(out_type),
        threads,
        precision
      )

    %Dense{data: out, shape: Batched.out_shape(out_batch, m, n), type: out_type}
  end

  defp x_dims!(x_shape, k, transpose, fun) do
    case Batched.x_dims(x_shape, k) do
      {:ok, batch, m} ->
        {batch, m}

      {:error, message} ->
        raise ArgumentError,
              "#{fun} x #{message} (the weight's #{if transpose, do: "cols", else: "rows"}, " <>
                "transpose: #{transpose})"
    end
  end

  defp broadcast!(a, b, what, fun) do
    case Batched.broadcast(a, b) do
      {:ok, shape} -> shape
      {:error, message} -> raise ArgumentError, "#{fun} #{what}: #{message}"
    end
  end

  defp indices!(nil, batch, _name, _fun), do: {nil, batch}

  defp indices!(%Dense{data: data, shape: shape, type: type}, _batch, name, fun) do
    unless Batched.index_type?(type) do
      raise ArgumentError, "#{fun} #{name} must have an integer type, got #{inspect(type)}"
    end

    Validate.shape!(shape, "#{fun} #{name}")
    {_, bits} = type

    if is_binary(data) and byte_size(data) * 8 == Validate.size(shape) * bits do
      {{Batched.to_s64(data, type), Tuple.to_list(shape)}, shape}
    else
      raise ArgumentError,
            "#{fun} #{name}'s data must be a binary of #{div(Validate.size(shape) * bits, 8)} " <>
              "bytes for shape #{inspect(shape)} and type #{inspect(type)}"
    end
  end

  defp indices!(other, _batch, name, fun) do
    raise ArgumentError,
          "#{fun} #{name} must be an %NxQuant.Dense{} integer tensor or nil, got: " <>
            Validate.describe(other)
  end

  # The :global_scale option: nil, or a positive finite number (nvfp4 only) as a float.
  defp global_scale!(opts, mode, fun) do
    case Keyword.get(opts, :global_scale) do
      nil ->
        nil

      g when mode != :nvfp4 ->
        raise ArgumentError,
              "#{fun} option :global_scale is for mode :nvfp4 only, got #{inspect(g)} with " <>
                "mode #{inspect(mode)}"

      g when is_number(g) and g > 0 and g <= 3.4028234663852886e38 ->
        g / 1

      other ->
        raise ArgumentError,
              "#{fun} option :global_scale must be a positive finite number (an f32), got: " <>
                Validate.describe(other)
    end
  end

  defp wrap(ref, shape, dtype, bits, group_size, rows, cols, mode \\ :affine) do
    {_packed, scales, biases} = NIF.parts(ref)
    global = if mode == :nvfp4, do: NIF.global_scale(ref)
    groups_shape = {rows, div(cols, group_size)}
    affine = mode == :affine

    %QuantizedTensor{
      ref: ref,
      shape: shape,
      type: {:s, bits},
      dtype: dtype,
      config: %Config{
        scales: %Dense{
          data: scales,
          shape: groups_shape,
          type: if(affine, do: dtype, else: {:u, 8})
        },
        biases: if(affine, do: %Dense{data: biases, shape: groups_shape, type: dtype}),
        bits: bits,
        group_size: group_size,
        mode: Atom.to_string(mode),
        global_scale: if(global != nil and global != 0.0, do: global)
      }
    }
  end

  # Every function reading a quantized tensor's data comes through here: the struct's fields
  # must agree with the resource (QuantizedTensor.check/2): NIF.info/1 and NIF.mode/1 calls
  # (~0.2 us each).
  defp quantized!(%QuantizedTensor{ref: ref} = qt, fun) when is_reference(ref) do
    info =
      try do
        info = NIF.info(ref)
        Tuple.insert_at(info, tuple_size(info), Atom.to_string(NIF.mode(ref)))
      rescue
        ArgumentError ->
          reraise ArgumentError,
                  "#{fun} quantized tensor's :ref must be a quantized tensor reference made " <>
                    "by nx_quant, got: #{inspect(ref)}",
                  __STACKTRACE__
      end

    case QuantizedTensor.check(qt, info) do
      :ok -> qt
      {:error, message} -> raise ArgumentError, "#{fun} #{message}"
    end
  end

  defp quantized!(other, fun) do
    raise ArgumentError,
          "#{fun} expects an %NxQuant.QuantizedTensor{}, got: #{Validate.describe(other)}"
  end

  # {rows, cols} of the stored matrix for a logical shape, checking the last axis.
  defp rows_cols!(shape, group_size, fun, name) do
    rank = tuple_size(shape)

    if rank == 0 do
      raise ArgumentError, "#{fun} #{name} must have rank >= 1 (got shape {})"
    end

    cols = elem(shape, rank - 1)

    if cols == 0 or rem(cols, group_size) != 0 do
      raise ArgumentError,
            "#{fun} #{name} has shape #{inspect(shape)}: its last axis (#{cols}) must be a " <>
              "positive multiple of group_size #{group_size}"
    end

    {div(Validate.size(shape), cols), cols}
  end

  # The accepted shapes of a part whose last axis holds `n` items: the stored 2-D form, or
  # the logical shape's leading axes followed by n. The first is the one named in errors.
  defp part_shapes(shape, rows, n) do
    leading = put_elem(shape, tuple_size(shape) - 1, n)
    if tuple_size(shape) == 2, do: [leading], else: [leading, {rows, n}]
  end

  defp shape_error!(name, got, shape, rows, n, what, fun) do
    expected = shape |> part_shapes(rows, n) |> Enum.map_join(" or ", &inspect/1)

    raise ArgumentError,
          "#{fun} #{name} has shape #{inspect(got)}, expected #{expected} " <>
            "for shape #{inspect(shape)} with #{what}"
  end

  defp packed!(packed, shape, rows, words, bits, fun) when is_binary(packed) do
    expected = rows * words * 4

    if byte_size(packed) != expected do
      raise ArgumentError,
            "#{fun} packed has #{byte_size(packed)} bytes, expected #{expected} " <>
              "(#{rows} x #{words} uint32 words) for shape #{inspect(shape)} with bits #{bits}"
    end

    packed
  end

  defp packed!(%Dense{type: {:u, 32}, shape: p_shape, data: data}, shape, rows, words, bits, fun) do
    Validate.dense!(data, p_shape, {:u, 32}, "#{fun} packed")

    unless p_shape in part_shapes(shape, rows, words) do
      shape_error!("packed", p_shape, shape, rows, words, "bits #{bits}", fun)
    end

    data
  end

  defp packed!(%Dense{type: type}, _shape, _rows, _words, _bits, fun) do
    raise ArgumentError, "#{fun} packed has type #{inspect(type)}, expected {:u, 32}"
  end

  defp packed!(other, _shape, _rows, _words, _bits, fun) do
    raise ArgumentError,
          "#{fun} packed must be a binary or an %NxQuant.Dense{type: {:u, 32}}, " <>
            "got: #{Validate.describe(other)}"
  end

  defp part!(part, name, shape, rows, groups, group_size, fun) do
    %Dense{data: data, shape: p_shape, type: type} = Validate.float_dense!(part, "#{fun} #{name}")

    Validate.dense!(data, p_shape, type, "#{fun} #{name}")

    unless p_shape in part_shapes(shape, rows, groups) do
      shape_error!(name, p_shape, shape, rows, groups, "group_size #{group_size}", fun)
    end

    part
  end
end
