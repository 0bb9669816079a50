if Code.ensure_loaded?(Nx) do
  defmodule NxQuant do
    @moduledoc """
    MLX-compatible affine group-wise quantization on `Nx.Tensor`s, with the API of
    `EMLX.Quantization`: code written for EMLX runs here by renaming the module, on any CPU.

        w = Nx.iota({512, 4096}, type: :f32)
        qw = NxQuant.quantize(w, type: {:s, 4}, group_size: 64)
        x = Nx.iota({1, 8, 4096}, type: :f32)
        NxQuant.quantized_matmul(x, qw)   # {1, 8, 512}
        Nx.dot(x, [2], qw, [1])           # the same fused kernel, through NxQuant.Backend

    A quantized tensor is an ordinary `%Nx.Tensor{}`: its shape is the logical dense shape, its
    type `{:s, bits}`, its data an `NxQuant.Backend` holding the packed words, scales and
    biases in a native resource. `w = scale * q + bias` per group of `group_size` values along
    the last axis, bit for bit as MLX computes it (see the README).

    `quantize/2`, `dequantize/2` and `quantized_matmul/3` go through `Nx.runtime_call/4` (when
    the Nx version has it), so they are safe inside `Nx.Defn.jit` with the default evaluator;
    `Nx.dot/2,4,6` on a quantized operand needs nothing special at all.

    ## Types

      * `quantize/2`: f32, f16 and bf16 are quantized as they are, f64 as f32; scales and
        biases take that type.
      * `dequantize/2`: the scales' type (inside `defn`, where the traced tensor does not show
        it, pass `:type`; the default there is f32).
      * `quantized_matmul/3`: the scales' type, as in EMLX (`:out_type` overrides; inside `defn`
        the default is the activation's type).
      * `Nx.dot/2,4,6`: the type Nx computes (the activation's float type).

    ## Values

    `Nx.dot/2,4,6` multiplies by the weight `scale * q + bias` in f32 on every path (fused, or
    the dequantize-then-dense fallbacks of `NxQuant.Backend`). `dequantize/2` (and
    `Nx.as_type/2`, row gathers, transfers) returns MLX's dequantize: `q * scale` rounded to the
    scales' type, then `+ bias` rounded; for f32 scales these are the same bits.

    Inside `Nx.Defn.jit`, pass a quantized tensor as an argument: one captured in the function's
    closure makes Nx raise `Nx.Defn.IncompatibleBackendsError` while tracing, before any backend
    is involved.
    """

    import Nx.Defn, only: [deftransform: 2]

    alias NxQuant.{Backend, Config, Core, Dense, Validate}

    @runtime_call? function_exported?(Nx, :runtime_call, 4)

    ## quantize -------------------------------------------------------------------------

    @doc """
    Quantizes a dense float tensor (rank >= 1, quantized along its last axis) and returns the
    quantized `%Nx.Tensor{}` of the same logical shape and type `{:s, bits}`.

    Options: `:type` (`{:s, 2 | 3 | 4 | 5 | 6 | 8}`, default `{:s, 4}`), `:group_size`
    (32, 64 or 128, default 64; must divide the last axis), `:threads`, `:mode` (MLX's
    `:affine` (default), `:mxfp4`, `:mxfp8`, `:nvfp4`: see `NxQuant.Core.quantize/2`),
    `:global_scale` (nvfp4 only, see `NxQuant.Core.quantize/2`).
    """
    deftransform quantize(tensor, opts \\ []) do
      tensor = Nx.to_tensor(tensor)
      fun = "NxQuant.quantize/2"
      opts = Validate.keyword!(opts, [:type, :group_size, :threads, :mode, :global_scale], fun)
      {bits, _group_size} = Validate.quant_spec!(opts, fun, Validate.mode!(opts, fun))

      call(
        template(tensor.shape, {:s, bits}, tensor.names),
        tensor,
        opts,
        &__MODULE__.__quantize__/2
      )
    end

    @doc """
    `quantize/2` run eagerly, without `Nx.runtime_call/4` (EMLX's name for the from-scratch
    path). Same options.
    """
    @spec from_dense(Nx.Tensor.t(), keyword()) :: Nx.Tensor.t()
    def from_dense(tensor, opts \\ []) do
      opts =
        Validate.keyword!(
          opts,
          [:type, :group_size, :threads, :mode, :global_scale],
          "NxQuant.from_dense/2"
        )

      __quantize__(Nx.to_tensor(tensor), opts)
    end

    @doc false
    def __quantize__(tensor, opts) do
      if Backend.quantized(tensor) do
        raise ArgumentError, "NxQuant.quantize/2 expects a dense tensor, got a quantized one"
      end

      tensor =
        case tensor.type do
          {:f, 64} ->
            Nx.as_type(tensor, :f32)

          {kind, _} when kind in [:f, :bf] ->
            tensor

          other ->
            raise ArgumentError,
                  "NxQuant.quantize/2 expects a float tensor, got type #{inspect(other)}"
        end

      tensor
      |> Backend.to_dense()
      |> Core.quantize(opts)
      |> Backend.quantized_nx(backend_of(tensor))
      |> Nx.rename(tensor.names)
    end

    ## dequantize -----------------------------------------------------------------------

    @doc """
    The dense tensor a quantized tensor stands for (a transposed view gives the transposed
    matrix, a broadcast view the broadcast tensor), in the scales' type: MLX's dequantize,
    bit for bit. Option `:type`: cast the result (the only way to name the type inside `defn`).
    """
    deftransform dequantize(tensor, opts \\ []) do
      opts = Validate.keyword!(opts, [:type], "NxQuant.dequantize/2")

      type =
        case {opts[:type], Backend.quantized(tensor)} do
          {nil, nil} -> {:f, 32}
          {nil, qt} -> qt.dtype
          {type, _} -> Nx.Type.normalize!(type)
        end

      call(
        template(tensor.shape, type, tensor.names),
        tensor,
        [type: type],
        &__MODULE__.__dequantize__/2
      )
    end

    @doc false
    def __dequantize__(tensor, opts) do
      quantized!(tensor, "NxQuant.dequantize/2")
      dense = Backend.dequantize_nx(tensor)
      if dense.type == opts[:type], do: dense, else: Nx.as_type(dense, opts[:type])
    end

    ## quantized_matmul -----------------------------------------------------------------

    @doc """
    `x . qwᵀ` with `qw` a quantized `{out_features, in_features}` weight (the MLX layout):
    x's last axis is contracted with qw's last axis. Output shape
    `{batch_dims..., out_features}`, type the scales' type (option `:out_type` overrides).
    A transposed view of `qw` is contracted the same way, on its logical last axis.

    Option `:precision`: `:exact` (default, or `config :nx_quant, :matmul_precision`) or
    `:int8`, the opt-in fast mode for decode-shaped calls (see `NxQuant.Core.quantized_matmul/3`).
    Option `:batch_invariant` (default `config :nx_quant, :batch_invariant`, else false): each
    row's result bit-identical whatever the number of rows (see `NxQuant.Core.quantized_matmul/3`).
    """
    deftransform quantized_matmul(x, qw, opts \\ []) do
      fun = "NxQuant.quantized_matmul/3"
      opts = Validate.keyword!(opts, [:out_type, :precision, :batch_invariant], fun)
      precision = Validate.precision!(opts, fun)
      batch_invariant = Validate.batch_invariant!(opts, fun)
      x = Nx.to_tensor(x)

      if tuple_size(qw.shape) != 2 do
        raise ArgumentError,
              "#{fun} expects a 2-D quantized weight, got shape #{inspect(qw.shape)}"
      end

      {out_features, in_features} = qw.shape
      rank = tuple_size(x.shape)

      if rank == 0 or elem(x.shape, rank - 1) != in_features do
        raise ArgumentError,
              "#{fun}: x's last axis must be the weight's in_features #{in_features}, got x " <>
                "of shape #{inspect(x.shape)} against a weight of shape #{inspect(qw.shape)}"
      end

      out_type =
        case {opts[:out_type], Backend.quantized(qw)} do
          {nil, nil} -> x.type
          {nil, qt} -> qt.dtype
          {type, _} -> Nx.Type.normalize!(type)
        end

      unless Nx.Type.float?(out_type) do
        raise ArgumentError, "#{fun} :out_type must be a float type, got #{inspect(out_type)}"
      end

      out_shape = put_elem(x.shape, rank - 1, out_features)
      names = List.replace_at(x.names, rank - 1, nil)

      call(
        template(out_shape, out_type, names),
        {x, qw},
        [out_type: out_type, precision: precision, batch_invariant: batch_invariant],
        &__MODULE__.__quantized_matmul__/2
      )
    end

    @doc false
    def __quantized_matmul__({x, qw}, opts) do
      quantized!(qw, "NxQuant.quantized_matmul/3")
      rank = tuple_size(x.shape)
      {out_features, _} = qw.shape
      out_shape = put_elem(x.shape, rank - 1, out_features)

      out = %{
        x
        | shape: out_shape,
          type: opts[:out_type],
          names: List.replace_at(x.names, rank - 1, nil)
      }

      Backend.dot(out, x, [rank - 1], [], qw, [1], [],
        precision: opts[:precision],
        batch_invariant: opts[:batch_invariant]
      )
    end

    ## quantized_tensor, parts, config, quantized? ----------------------------------------

    @doc """
    Builds a quantized tensor from checkpoint parts (e.g. MLX's `NAME.weight`, `NAME.scales`,
    `NAME.biases`): `packed` a u32 tensor `{rows, cols * bits / 32}` (or a binary of those
    words), `scales` and `biases` float tensors `{rows, cols / group_size}` of one type (or
    binaries, with the `:dtype` option), `shape` the logical dense shape `{..., cols}`.
    Every size is validated; the parts are copied once into the native resource.

    Options: `:type` (`{:s, bits}`, default `{:s, 4}`), `:group_size` (default 64), `:dtype`,
    `:mode`: with `mode: :mxfp4 | :mxfp8 | :nvfp4` scales are uint8, `biases` is `nil` and
    `:dtype` (default `:bf16`) is the dequantized type.
    """
    @spec quantized_tensor(term(), term(), term(), tuple(), keyword()) :: Nx.Tensor.t()
    def quantized_tensor(packed, scales, biases, shape, opts \\ []) do
      fun = "NxQuant.quantized_tensor/5"
      opts = Validate.keyword!(opts, [:type, :group_size, :dtype, :mode], fun)
      dtype = opts[:dtype] && Nx.Type.normalize!(opts[:dtype])
      affine = Validate.mode!(opts, fun) == :affine

      backend =
        Enum.find_value([packed, scales, biases], {NxQuant.NativeBackend, []}, &nx_backend/1)

      Validate.shape!(shape, "#{fun} shape")

      if tuple_size(shape) == 0 do
        raise ArgumentError, "#{fun} shape must have rank >= 1, got {}"
      end

      # Microscaled modes: uint8 scales, no biases, :dtype the dequantized type.
      Core.quantized_tensor(
        part(packed, {:u, 32}, "packed", fun, shape),
        part(scales, if(affine, do: dtype, else: {:u, 8}), "scales", fun, shape),
        if(affine or biases != nil, do: part(biases, dtype, "biases", fun, shape)),
        shape,
        if(affine or dtype == nil,
          do: Keyword.delete(opts, :dtype),
          else: Keyword.put(opts, :dtype, dtype)
        )
      )
      |> Backend.quantized_nx(backend)
    end

    defp part(%Nx.Tensor{} = t, _type, name, fun, _shape) do
      if Backend.quantized(t), do: raise(ArgumentError, "#{fun} #{name} is a quantized tensor")
      Backend.to_dense(t)
    end

    defp part(binary, {:u, 32}, "packed", _fun, _shape) when is_binary(binary), do: binary

    # A binary part has no shape of its own: it gets the stored {rows, n} shape of the logical
    # shape's rows (the core then checks n).
    defp part(binary, type, name, fun, shape) when is_binary(binary) do
      if type == nil do
        raise ArgumentError,
              "#{fun} #{name} given as a binary needs the :dtype option (e.g. dtype: :bf16)"
      end

      size = Validate.type_size(type)
      count = div(byte_size(binary), size)
      rows = shape |> Tuple.delete_at(tuple_size(shape) - 1) |> Validate.size()

      if rem(byte_size(binary), size) != 0 or rows == 0 or rem(count, rows) != 0 do
        raise ArgumentError,
              "#{fun} #{name} has #{byte_size(binary)} bytes: not #{rows} rows of " <>
                "#{inspect(type)} values for shape #{inspect(shape)}"
      end

      %Dense{data: binary, shape: {rows, div(count, rows)}, type: type}
    end

    defp part(other, _type, name, fun, _shape) do
      raise ArgumentError,
            "#{fun} #{name} must be an Nx tensor or a binary, got: #{Validate.describe(other)}"
    end

    @doc "The stored parts as Nx tensors: packed u32 `{rows, words}`, scales and biases `{rows, groups}`."
    @spec parts(Nx.Tensor.t()) :: %{
            packed: Nx.Tensor.t(),
            scales: Nx.Tensor.t(),
            biases: Nx.Tensor.t()
          }
    def parts(tensor) do
      qt = quantized!(tensor, "NxQuant.parts/1")
      backend = tensor.data.backend

      Map.new(Core.parts(qt), fn
        {key, nil} -> {key, nil}
        {key, dense} -> {key, Backend.from_dense(dense, backend)}
      end)
    end

    @doc "The quantization config (`NxQuant.Config`), scales and biases as Nx tensors."
    @spec config(Nx.Tensor.t()) :: Config.t()
    def config(tensor) do
      qt = quantized!(tensor, "NxQuant.config/1")
      %{scales: scales, biases: biases} = parts(tensor)
      %{qt.config | scales: scales, biases: biases}
    end

    @doc "True when `tensor` is a quantized `%Nx.Tensor{}` on `NxQuant.Backend`."
    @spec quantized?(term()) :: boolean()
    def quantized?(tensor), do: Backend.quantized(tensor) != nil

    ## checkpoints ----------------------------------------------------------------------

    @doc """
    Loads an MLX-community checkpoint (directory or .safetensors file) as
    `%{name => Nx.Tensor}`: each quantized layer's `"NAME.weight"` a quantized tensor, every
    other tensor dense (on the default backend). Options: `:only`, `:mode`, `:bits`, `:group_size`, `:dtype`,
    `:mmap` (see `NxQuant.Checkpoint.load/2` and, for mmap's risk, `NxQuant.Safetensors`). For lazy loading use `NxQuant.Checkpoint.open/2` and
    `fetch_checkpoint!/2`.
    """
    @spec load_checkpoint(Path.t(), keyword()) :: %{String.t() => Nx.Tensor.t()}
    def load_checkpoint(path, opts \\ []) do
      path |> NxQuant.Checkpoint.load(opts) |> Map.new(fn {k, v} -> {k, to_nx(v)} end)
    end

    @doc "One tensor of an opened `NxQuant.Checkpoint`, as an Nx tensor."
    @spec fetch_checkpoint!(NxQuant.Checkpoint.t(), String.t()) :: Nx.Tensor.t()
    def fetch_checkpoint!(ckpt, name), do: ckpt |> NxQuant.Checkpoint.fetch!(name) |> to_nx()

    @doc """
    Saves `%{name => Nx.Tensor}` (quantized and dense) as an MLX-community checkpoint
    directory, atomically. Options: `:config` (a map merged into config.json), `:force` (replace
    a non-empty directory; see `NxQuant.Checkpoint.save/3`).
    """
    @spec save_checkpoint(Path.t(), map(), keyword()) :: :ok
    def save_checkpoint(dir, tensors, opts \\ []) do
      tensors =
        Map.new(tensors, fn {name, t} ->
          {name, Backend.quantized(t) || Backend.to_dense(Nx.to_tensor(t))}
        end)

      NxQuant.Checkpoint.save(dir, tensors, opts)
    end

    defp to_nx(%NxQuant.QuantizedTensor{} = qt), do: Backend.quantized_nx(qt)

    defp to_nx(%Dense{data: data, shape: shape, type: type}),
      do: data |> Nx.from_binary(type) |> Nx.reshape(shape)

    ## helpers --------------------------------------------------------------------------

    defp quantized!(tensor, fun) do
      Backend.quantized(tensor) ||
        raise ArgumentError,
              "#{fun} expects a quantized tensor (from NxQuant.quantize/2 or " <>
                "NxQuant.quantized_tensor/5), got: #{Validate.describe(tensor)}"
    end

    defp template(shape, type, names),
      do: %Nx.Tensor{data: %Nx.TemplateBackend{}, shape: shape, type: type, names: names}

    defp backend_of(%Nx.Tensor{data: %Backend{backend: backend}}), do: backend

    # Plain Nx.BinaryBackend tensors (no backend chosen) get the native dense path: the same
    # results, computed natively.
    defp backend_of(%Nx.Tensor{data: %Nx.BinaryBackend{}}), do: {NxQuant.NativeBackend, []}

    defp backend_of(%Nx.Tensor{data: %mod{}}) when mod != Nx.TemplateBackend,
      do: {mod, mod.init([])}

    defp backend_of(_), do: {NxQuant.NativeBackend, []}

    defp nx_backend(%Nx.Tensor{} = t), do: backend_of(t)
    defp nx_backend(_), do: nil

    if @runtime_call? do
      defp call(template, args, opts, fun), do: Nx.runtime_call(template, args, opts, fun)
    else
      defp call(_template, args, opts, fun), do: fun.(args, opts)
    end
  end
end
