defmodule NxQuant.NIF do
  @moduledoc false
  # Raw bindings to priv/libnx_quant_nif.so (c_src/nif/). Callers go through NxQuant.Core,
  # which validates arguments first; the NIF validates everything again and raises
  # ArgumentError naming the argument, so nothing here can crash the VM.
  #
  # If the library cannot be loaded the module still loads (so the error is not a confusing
  # UndefinedFunctionError) and every function raises with the reason.

  @on_load :load_nif

  @doc false
  def load_nif do
    with dir when is_list(dir) <- :code.priv_dir(:nx_quant),
         :ok <- :erlang.load_nif(:filename.join(dir, ~c"libnx_quant_nif"), 0) do
      :ok
    else
      {:error, {reason, text}} -> remember_load_error("#{reason}: #{text}")
      {:error, reason} -> remember_load_error("priv dir of :nx_quant: #{inspect(reason)}")
    end
  end

  defp remember_load_error(reason) do
    :persistent_term.put({__MODULE__, :load_error}, reason)
    :ok
  end

  # :erlang.nif_error/1 (not raise/1): Elixir's type checker then treats the stubs' results
  # as dynamic() instead of none(), which would flag every caller's match as unreachable.
  defp not_loaded! do
    reason = :persistent_term.get({__MODULE__, :load_error}, "unknown reason")

    :erlang.nif_error(
      RuntimeError.exception(
        "nx_quant's native library (priv/libnx_quant_nif.so) is not loaded: #{reason}"
      )
    )
  end

  @doc false
  def quantize(_dense, _rows, _cols, _dtype, _bits, _group_size, _threads), do: not_loaded!()

  # quantize/7 with a mode (:affine, :mxfp4, :mxfp8, :nvfp4) as the 8th argument.
  @doc false
  def quantize(_dense, _rows, _cols, _dtype, _bits, _group_size, _threads, _mode),
    do: not_loaded!()

  # quantize/8 with nvfp4's global scale (a positive float) as the 9th argument.
  @doc false
  def quantize(_dense, _rows, _cols, _dtype, _bits, _group_size, _threads, _mode, _global),
    do: not_loaded!()

  @doc false
  def dequantize(_ref, _transpose_out), do: not_loaded!()

  @doc false
  def quantized_matmul(_x, _x_dtype, _m, _ref, _transpose, _out_dtype, _threads, _precision),
    do: not_loaded!()

  # quantized_matmul/8 returning {result, nanoseconds in the kernel} (bench/nif_bench.exs).
  @doc false
  def quantized_matmul_timed(
        _x,
        _x_dtype,
        _m,
        _ref,
        _transpose,
        _out_dtype,
        _threads,
        _precision
      ),
      do: not_loaded!()

  # Batched weights (c_src/nif/batched_nif.cpp): the resource's stacked matrix split into the
  # batch shape w_batch; lhs / rhs are nil or {int64 binary, shape list}.
  @doc false
  def batched_matmul(_x, _x_dtype, _x_batch, _m, _ref, _w_batch, _transpose, _out, _thr, _prec),
    do: not_loaded!()

  @doc false
  def gather_qmm(_x, _xd, _x_batch, _m, _ref, _w_batch, _lhs, _rhs, _tr, _out, _thr, _prec),
    do: not_loaded!()

  @doc false
  def quantized_tensor(_packed, _scales, _biases, _rows, _cols, _dtype, _bits, _group_size),
    do: not_loaded!()

  # quantized_tensor/8 with a mode as the 9th argument (microscaled: uint8 scales, biases <<>>).
  @doc false
  def quantized_tensor(
        _packed,
        _scales,
        _biases,
        _rows,
        _cols,
        _dtype,
        _bits,
        _group_size,
        _mode
      ),
      do: not_loaded!()

  # quantized_tensor/9 with nvfp4's global scale as the 10th argument.
  @doc false
  def quantized_tensor(
        _packed,
        _scales,
        _biases,
        _rows,
        _cols,
        _dtype,
        _bits,
        _group_size,
        _mode,
        _global_scale
      ),
      do: not_loaded!()

  @doc false
  def parts(_ref), do: not_loaded!()

  @doc false
  def info(_ref), do: not_loaded!()

  # The resource's mode atom.
  @doc false
  def mode(_ref), do: not_loaded!()

  # The resource's nvfp4 global scale (0.0: none).
  @doc false
  def global_scale(_ref), do: not_loaded!()

  # The CPU features kernel dispatch uses and the NX_QUANT_MAX_ISA cap (c_src/nif/cpu_nif.cpp).
  @doc false
  def cpu_info, do: not_loaded!()

  @doc false
  def safetensors_open(_path, _mmap), do: not_loaded!()
  @doc false
  def safetensors_tensor(_file, _name), do: not_loaded!()
  @doc false
  def safetensors_quantized(_file, _weight, _scales, _biases, _rows, _cols, _bits, _group_size),
    do: not_loaded!()

  @doc false
  def safetensors_plan(_entries, _metadata), do: not_loaded!()
  @doc false
  def json_decode(_binary), do: not_loaded!()
  @doc false
  def json_encode(_term, _pretty), do: not_loaded!()
  @doc false
  def live_mappings, do: not_loaded!()

  # The dense ops of the native path (c_src/nif/dense_nif.cpp), called by NxQuant.Native.
  # An operand is {binary, type_atom, offset, strides}; see dense_nif.cpp for each signature.
  @doc false
  def dense_unary(_op, _out_type, _shape, _operand), do: not_loaded!()
  @doc false
  def dense_binary(_op, _out_type, _shape, _a, _b), do: not_loaded!()
  @doc false
  def dense_select(_out_type, _shape, _pred, _on_true, _on_false), do: not_loaded!()
  @doc false
  def dense_clip(_out_type, _shape, _operand, _lo, _hi), do: not_loaded!()
  @doc false
  def dense_assemble(_out_type, _out_shape, _fill, _pieces), do: not_loaded!()
  @doc false
  def dense_iota(_type, _shape, _axis), do: not_loaded!()
  @doc false
  def dense_reduce(_op, _out_type, _shape, _operand, _axes, _tie_break), do: not_loaded!()
  @doc false
  def dense_cumulative(_op, _out_type, _shape, _operand, _axis, _reverse), do: not_loaded!()
  @doc false
  def dense_sort(_shape, _operand, _axis, _descending, _index_type), do: not_loaded!()
  @doc false
  def dense_top_k(_shape, _operand, _k, _index_type), do: not_loaded!()
  @doc false
  def dense_gather(_in_shape, _operand, _indices, _index_count, _axes), do: not_loaded!()
  @doc false
  def dense_matmul(_out_type, _batch, _m, _n, _k, _a, _b), do: not_loaded!()

  # Versioned buffers (c_src/nif/versioned_resource.h): put_slice in place; a handle
  # {ref, version} is accepted wherever an operand takes a binary.
  @doc false
  def dense_put_slice(_out_type, _shape, _target, _piece), do: not_loaded!()
  @doc false
  def dense_versioned_binary(_handle), do: not_loaded!()
  # {version, newest_version, bytes, undo_bytes}
  @doc false
  def dense_versioned_info(_handle), do: not_loaded!()

  # %{reused, allocated, idle_bytes, limit_bytes} of the dense NIFs' output buffer pool
  # (c_src/nif/buffer_pool.h).
  @doc false
  def buffer_pool_stats, do: not_loaded!()
end
