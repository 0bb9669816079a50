if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.Backend do
    @moduledoc """
    An `Nx.Backend` shim: dense tensors wrap a tensor of an inner backend (default
    `NxQuant.NativeBackend`, the native dense path over binaries with `Nx.BinaryBackend`'s
    semantics; `{NxQuant.Backend, backend: Nx.BinaryBackend}` turns it off,
    `{NxQuant.Backend, backend: EXLA.Backend}` picks another) and every
    callback delegates to it, except what touches a quantized tensor. So a plain
    `Nx.dot(x, qw)` with `qw` quantized runs the fused kernel and everything else runs where it
    ran before.

    A quantized tensor is an `%Nx.Tensor{}` whose shape is the logical dense shape and whose
    type is `{:s, bits}`; its data is this struct with `:quantized` set. What each callback
    does with one is the table in `NxQuant.QuantizedOps` (kept there, Nx-free, so it is
    tested without Nx): `dot/7` fused, `transpose/3` a free view, `gather/4` (`Nx.take/3`) of
    rows dequantizes only those rows, `as_type/2` to a float dequantizes, transfers to other
    backends dequantize, `to_binary/2` and everything else raise an `ArgumentError` that says
    what to do.

    `dot/7` follows `NxQuant.DotPlan`: the activation's contracted axis against the weight's K
    axis (`transpose: true`) or N axis (`transpose: false`), any activation rank, the quantized
    operand on either side, transposed views, `Nx.vectorize`d activations (the weight becomes a
    free broadcast view over the vectorized axes, whose batch axes the kernel takes as rows);
    other batch axes, both operands quantized or several contracted axes dequantize explicitly
    (logged at debug level). The result has the type Nx computed for the dot
    (`Nx.Type.merge/2` of the operands: the activation's float type).

    ## Which weight value

    Every path of `Nx.dot/6` multiplies by the same weight, `scale * q + bias` in f32: the
    fused kernel computes with it directly (accumulating in f32), the fallbacks dequantize to
    f32 (`NxQuant.QuantizedOps.dequantize_f32/1`) and run the inner backend's dense dot on
    that, then cast to Nx's result type. So a result differs between paths only by f32
    accumulation order. `NxQuant.dequantize/1`, `Nx.as_type/2`, row gathers and transfers
    return MLX's dequantize instead, rounded to the scales' type (for f16/bf16 scales a
    slightly different value; for f32 scales the same bits).

    ## The default backend inside delegated calls

    Every call delegated to the inner backend runs with the inner backend as the process's
    default backend (`Nx.default_backend/0`), as if it were `Nx.with_default_backend/2`:
    `Nx.BinaryBackend`'s own implementations (`top_k`, `take_along_axis`, `conv`,
    `window_*`, ...) build tensors on the default backend and then read them as their own.
    Only the process-dictionary entry Nx reads is set and restored (about 0.1 us per call).

    ## Captured in a `defn` closure

    A quantized tensor (like any tensor not on `Nx.BinaryBackend`, dense tensors of this
    backend included) cannot be captured by a function given to `Nx.Defn.jit/2`: Nx raises
    `Nx.Defn.IncompatibleBackendsError` when the traced expression meets it, before any
    backend is called. Pass it as an argument (`Nx.Defn.jit(fn x, w -> Nx.dot(x, w) end).(x,
    qw)`): the fused kernel runs as in eager mode.
    """

    @behaviour Nx.Backend

    alias NxQuant.{Core, Dense, DotPlan, QuantizedOps, QuantizedTensor}
    require Logger

    # The process-dictionary key under which Nx keeps the default backend (Nx.default_backend/0
    # and Nx.with_default_backend/2 read and write it).
    @default_backend_key (if Code.ensure_loaded?(Nx.Shared) and
                               function_exported?(Nx.Shared, :backend_pdict_key, 0) do
                            Nx.Shared.backend_pdict_key()
                          else
                            {Nx, :default_backend}
                          end)

    # take: nil, or the indices (an s64 NxQuant.Dense of the index shape) of a take view of a
    # batched quantized tensor (NxQuant.QuantizedOps.take_experts/4).
    defstruct inner: nil, quantized: nil, take: nil, backend: {NxQuant.NativeBackend, []}

    @type t :: %__MODULE__{
            inner: struct() | nil,
            quantized: QuantizedTensor.t() | nil,
            take: Dense.t() | nil,
            backend: {module(), term()}
          }

    # Written out below; every other callback is generated from the behaviour.
    @own [
      init: 1,
      constant: 3,
      eye: 2,
      iota: 3,
      from_binary: 3,
      from_pointer: 5,
      to_binary: 2,
      to_pointer: 2,
      inspect: 2,
      backend_copy: 3,
      backend_transfer: 3,
      backend_deallocate: 1,
      to_batched: 3,
      block: 4,
      optional: 3,
      dot: 7,
      transpose: 3,
      gather: 4,
      as_type: 2,
      reshape: 2,
      squeeze: 3,
      broadcast: 4
    ]

    ## Options and wrapping --------------------------------------------------------------

    @impl true
    def init(opts) do
      opts = Keyword.validate!(opts, backend: NxQuant.NativeBackend)
      [backend: inner_backend(opts)]
    end

    defp inner_backend(opts) do
      case Keyword.get(opts, :backend, NxQuant.NativeBackend) do
        {mod, mod_opts} when is_atom(mod) and is_list(mod_opts) ->
          {mod, mod.init(mod_opts)}

        mod when is_atom(mod) and mod != __MODULE__ ->
          {mod, mod.init([])}

        other ->
          raise ArgumentError,
                "NxQuant.Backend :backend must be a backend module or {module, opts}, got: #{inspect(other)}"
      end
    end

    @doc false
    def wrap(%Nx.Tensor{data: %__MODULE__{}} = t, _backend), do: t

    def wrap(%Nx.Tensor{data: data} = t, backend),
      do: %{t | data: %__MODULE__{inner: data, backend: backend}}

    def wrap(tuple, backend) when is_tuple(tuple),
      do: tuple |> Tuple.to_list() |> Enum.map(&wrap(&1, backend)) |> List.to_tuple()

    def wrap(list, backend) when is_list(list), do: Enum.map(list, &wrap(&1, backend))
    def wrap(other, _backend), do: other

    @doc "Builds the `%Nx.Tensor{}` for a core quantized tensor."
    @spec quantized_nx(QuantizedTensor.t(), {module(), term()}) :: Nx.Tensor.t()
    def quantized_nx(%QuantizedTensor{} = qt, backend \\ {NxQuant.NativeBackend, []}) do
      %Nx.Tensor{
        data: %__MODULE__{quantized: qt, backend: backend},
        shape: qt.shape,
        type: qt.type,
        names: List.duplicate(nil, tuple_size(qt.shape))
      }
    end

    @doc "The core quantized tensor inside an Nx tensor, or nil."
    @spec quantized(term()) :: QuantizedTensor.t() | nil
    def quantized(%Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{} = qt}}), do: qt
    def quantized(_), do: nil

    @doc "A dense Nx tensor as an `NxQuant.Dense` (its bytes, read once)."
    @spec to_dense(Nx.Tensor.t()) :: Dense.t()
    def to_dense(%Nx.Tensor{shape: shape, type: type} = t),
      do: %Dense{data: Nx.to_binary(t), shape: shape, type: type}

    @doc "An `NxQuant.Dense` as an Nx tensor on this backend over `backend`."
    @spec from_dense(Dense.t(), {module(), term()}) :: Nx.Tensor.t()
    def from_dense(%Dense{data: data, shape: shape, type: type}, {mod, mod_opts} = backend) do
      out = %Nx.Tensor{
        data: nil,
        shape: shape,
        type: type,
        names: List.duplicate(nil, tuple_size(shape))
      }

      wrap(mod.from_binary(out, data, mod_opts), backend)
    end

    # The inner tensors of the arguments; a quantized tensor where the callback has no meaning
    # for one raises.
    defp unwrap_out(%Nx.Tensor{data: %__MODULE__{inner: inner}} = t), do: %{t | data: inner}

    defp unwrap_out(tuple) when is_tuple(tuple),
      do: tuple |> Tuple.to_list() |> Enum.map(&unwrap_out/1) |> List.to_tuple()

    defp unwrap_out(other), do: other

    defp unwrap(
           %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{} = qt}} = t,
           name,
           arity
         ),
         do: raise(ArgumentError, QuantizedOps.unsupported_message(name, arity, qt, t.shape))

    defp unwrap(%Nx.Tensor{data: %__MODULE__{inner: inner}} = t, _, _), do: %{t | data: inner}

    defp unwrap(tuple, name, arity) when is_tuple(tuple),
      do: tuple |> Tuple.to_list() |> Enum.map(&unwrap(&1, name, arity)) |> List.to_tuple()

    defp unwrap(list, name, arity) when is_list(list),
      do: Enum.map(list, &unwrap(&1, name, arity))

    defp unwrap(other, _, _), do: other

    # The inner backend to run on: that of the first of our tensors among the arguments, else
    # the default.
    defp backend_of(args), do: find_backend(args) || {NxQuant.NativeBackend, []}

    defp find_backend(%Nx.Tensor{data: %__MODULE__{backend: backend}}), do: backend
    defp find_backend(%Nx.Tensor{}), do: nil
    defp find_backend([head | tail]), do: find_backend(head) || find_backend(tail)
    defp find_backend(tuple) when is_tuple(tuple), do: find_backend(Tuple.to_list(tuple))
    defp find_backend(_), do: nil

    defp tensors(%Nx.Tensor{} = t), do: [t]
    defp tensors(tuple) when is_tuple(tuple), do: Enum.flat_map(Tuple.to_list(tuple), &tensors/1)
    defp tensors(list) when is_list(list), do: Enum.flat_map(list, &tensors/1)
    defp tensors(_), do: []

    defp delegate(name, [out | args]) do
      arity = length(args) + 1
      {mod, _} = backend = backend_of(args)
      args = [unwrap_out(out) | unwrap(args, name, arity)]
      wrap(on_inner(backend, mod, name, args), backend)
    end

    # apply(mod, fun, args) with `backend` (an inner backend, `{module, initialized_options}`)
    # as the process's default backend: what `Nx.with_default_backend/2` does, without
    # re-running the backend's init/1 or allocating a closure (this is on every delegated
    # call's path). The inner backend's own code (Nx.BinaryBackend's conv, window_* and block
    # implementations, for one) creates tensors on the default backend and reads them as its own.
    defp on_inner(backend, mod, fun, args) do
      previous = Process.put(@default_backend_key, backend)

      try do
        apply(mod, fun, args)
      after
        if previous,
          do: Process.put(@default_backend_key, previous),
          else: Process.delete(@default_backend_key)
      end
    end

    ## Generated delegation ---------------------------------------------------------------

    for {name, arity} <- Nx.Backend.behaviour_info(:callbacks),
        {name, arity} not in @own do
      args = Macro.generate_arguments(arity, __MODULE__)
      @impl true
      def unquote(name)(unquote_splicing(args)), do: delegate(unquote(name), unquote(args))
    end

    ## Creation ---------------------------------------------------------------------------

    defp creation(name, out, args, opts) do
      {mod, mod_opts} = backend = inner_backend(opts)
      args = [unwrap_out(out) | args] ++ [mod_opts]
      wrap(on_inner(backend, mod, name, args), backend)
    end

    @impl true
    def constant(out, number, opts), do: creation(:constant, out, [number], opts)
    @impl true
    def eye(out, opts), do: creation(:eye, out, [], opts)
    @impl true
    def iota(out, axis, opts), do: creation(:iota, out, [axis], opts)
    @impl true
    def from_binary(out, binary, opts), do: creation(:from_binary, out, [binary], opts)

    @impl true
    def from_pointer(pointer, type, shape, opts, backend_opts) do
      {mod, mod_opts} = backend = inner_backend(opts)

      on_inner(backend, mod, :from_pointer, [pointer, type, shape, backend_opts, mod_opts])
      |> wrap(backend)
    end

    ## Reading ----------------------------------------------------------------------------

    @impl true
    def to_binary(tensor, limit) do
      {mod, _} = backend = tensor.data.backend
      inner = unwrap(tensor, :to_binary, 2)
      on_inner(backend, mod, :to_binary, [inner, limit])
    end

    @impl true
    def to_pointer(tensor, opts) do
      {mod, _} = backend = tensor.data.backend
      inner = unwrap(tensor, :to_pointer, 2)
      on_inner(backend, mod, :to_pointer, [inner, opts])
    end

    @impl true
    def inspect(%Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{} = qt}} = t, _opts),
      do: Inspect.Algebra.string(QuantizedOps.describe(qt, t.shape))

    def inspect(%Nx.Tensor{data: %__MODULE__{backend: {mod, _} = backend}} = tensor, opts) do
      inner = unwrap(tensor, :inspect, 2)
      on_inner(backend, mod, :inspect, [inner, opts])
    end

    @impl true
    def to_batched(out, tensor, opts) do
      {mod, _} = backend = backend_of([tensor])
      {out, tensor} = {unwrap_out(out), unwrap(tensor, :to_batched, 3)}

      on_inner(backend, mod, :to_batched, [out, tensor, opts])
      |> Stream.map(&wrap(&1, backend))
    end

    ## Transfers --------------------------------------------------------------------------

    @impl true
    def backend_copy(tensor, target, opts), do: transfer(:backend_copy, tensor, target, opts)
    @impl true
    def backend_transfer(tensor, target, opts),
      do: transfer(:backend_transfer, tensor, target, opts)

    defp transfer(
           _fun,
           %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{}}} = t,
           __MODULE__,
           _opts
         ),
         do: t

    defp transfer(
           _fun,
           %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{} = qt}} = t,
           target,
           opts
         ) do
      dense = Core.dequantize(qt)
      names = List.duplicate(nil, tuple_size(dense.shape))

      %Nx.Tensor{shape: dense.shape, type: dense.type, names: names, data: nil}
      |> target.from_binary(dense.data, opts)
      |> broadcast_to(t)
    end

    defp transfer(fun, %Nx.Tensor{data: %__MODULE__{backend: {mod, _}}} = t, __MODULE__, opts) do
      # Onto this backend again, possibly over another inner backend.
      {inner_mod, inner_opts} = backend = inner_backend(opts)
      inner = unwrap(t, fun, 3)
      wrap(on_inner(backend, mod, fun, [inner, inner_mod, inner_opts]), backend)
    end

    defp transfer(
           fun,
           %Nx.Tensor{data: %__MODULE__{backend: {mod, _} = backend}} = t,
           target,
           opts
         ) do
      inner = unwrap(t, fun, 3)
      on_inner(backend, mod, fun, [inner, target, opts])
    end

    @impl true
    def backend_deallocate(%Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{}}}), do: :ok

    def backend_deallocate(%Nx.Tensor{data: %__MODULE__{backend: {mod, _} = backend}} = t) do
      inner = unwrap(t, :backend_deallocate, 1)
      on_inner(backend, mod, :backend_deallocate, [inner])
    end

    ## Blocks -----------------------------------------------------------------------------

    @impl true
    def block(struct, out, args, fun) do
      if Enum.any?(tensors(args), &quantized/1) do
        # Nx's own composition: it reaches our dot/gather/transpose on the quantized tensor.
        apply(fun, [struct | args])
      else
        {mod, _} = backend = backend_of(args)
        {out, args} = {unwrap_out(out), unwrap(args, :block, 4)}
        wrap(on_inner(backend, mod, :block, [struct, out, args, fun]), backend)
      end
    end

    # Older Nx versions (before block/4) call optional/3 the same way.
    @doc false
    def optional(name, args, fun) do
      if Enum.any?(tensors(args), &quantized/1) do
        apply(fun, args)
      else
        {mod, _} = backend = backend_of(args)
        args = unwrap(args, :optional, 3)
        wrap(on_inner(backend, mod, :optional, [name, args, fun]), backend)
      end
    end

    ## What a quantized tensor takes part in -------------------------------------------------

    @impl true
    def dot(out, left, contract_left, batch_left, right, contract_right, batch_right) do
      dot(out, left, contract_left, batch_left, right, contract_right, batch_right, [])
    end

    # kernel_opts (e.g. `precision: :int8` from NxQuant.quantized_matmul/3) reach the kernel
    # when the plan is fused.
    @doc false
    def dot(out, left, contract_left, batch_left, right, contract_right, batch_right, kernel_opts) do
      operands = [left, right]

      case DotPlan.plan(
             out.type,
             operand(left),
             contract_left,
             batch_left,
             operand(right),
             contract_right,
             batch_right
           ) do
        :dense ->
          delegate(:dot, [
            out,
            left,
            contract_left,
            batch_left,
            right,
            contract_right,
            batch_right
          ])

        {:kernel, plan} ->
          fused_dot(out, left, right, plan, backend_of(operands), kernel_opts)

        {:dequantize, sides, reason} ->
          Logger.debug("NxQuant.Backend.dot/7 dequantizes #{inspect(sides)}: #{reason}")
          # Two quantized operands get an integer type from Nx; the product takes the
          # dequantized (left) operand's scales' type.
          type = if Nx.Type.float?(out.type), do: out.type, else: quantized(left).dtype
          left = if :left in sides, do: weight_nx(left), else: left
          right = if :right in sides, do: weight_nx(right), else: right

          Nx.dot(left, contract_left, batch_left, right, contract_right, batch_right)
          |> Nx.as_type(type)
          |> Nx.rename(out.names)

        {:error, message} ->
          raise ArgumentError, "Nx.dot with a quantized operand: #{message}"
      end
    end

    defp operand(t) do
      case {quantized(t), t.data} do
        {nil, _} -> {:dense, t.shape, t.type}
        {qt, %{take: %Dense{shape: g}}} -> DotPlan.describe(qt, t.shape, tuple_size(g))
        {qt, _} -> DotPlan.describe(qt, t.shape)
      end
    end

    defp fused_dot(out, left, right, plan, backend, kernel_opts) do
      {x, q} = if plan.activation == :left, do: {left, right}, else: {right, left}

      x = if plan.activation_perm, do: Nx.transpose(x, axes: plan.activation_perm), else: x
      x = if x.type == plan.activation_type, do: x, else: Nx.as_type(x, plan.activation_type)
      opts = [transpose: plan.transpose, out_type: plan.kernel_type] ++ kernel_opts

      result =
        case plan do
          %{gather: g} ->
            # a take view: gather_qmm reads only the experts its indices select
            lhs = arange_s64(g.lhs_shape)
            opts = [lhs_indices: lhs, rhs_indices: q.data.take] ++ opts

            %{to_dense(x) | shape: g.x_shape}
            |> Core.gather_qmm(quantized(q), opts)
            |> Map.put(:shape, g.out_shape)
            |> from_dense(backend)
            |> then(&if g.out_perm, do: Nx.transpose(&1, axes: g.out_perm), else: &1)

          %{batched: b} ->
            %{to_dense(x) | shape: b.x_shape}
            |> Core.quantized_matmul(quantized(q), opts)
            |> Map.put(:shape, b.out_shape)
            |> from_dense(backend)

          _ ->
            x |> to_dense() |> Core.quantized_matmul(quantized(q), opts) |> from_dense(backend)
        end

      result = if plan.out_perm, do: Nx.transpose(result, axes: plan.out_perm), else: result
      result = if result.type == out.type, do: result, else: Nx.as_type(result, out.type)
      Nx.rename(result, out.names)
    end

    defp arange_s64(shape) do
      n = Tuple.product(shape)
      data = for i <- 0..(n - 1)//1, into: <<>>, do: <<i::64-signed-native>>
      %Dense{data: data, shape: shape, type: {:s, 64}}
    end

    # The dense tensor a quantized tensor (or broadcast view) stands for: MLX's dequantize in
    # the scales' type (what NxQuant.dequantize/1, as_type and transfers return).
    @doc false
    def dequantize_nx(t) do
      case quantized(t) do
        nil -> t
        qt -> qt |> Core.dequantize() |> from_dense(t.data.backend) |> broadcast_to(t)
      end
    end

    # The weight Nx.dot multiplies by on every path: scale * q + bias in f32.
    defp weight_nx(t) do
      case quantized(t) do
        nil -> t
        qt -> qt |> QuantizedOps.dequantize_f32() |> from_dense(t.data.backend) |> broadcast_to(t)
      end
    end

    # A dense tensor of the quantized tensor's shape, broadcast to the view `t` (new leading
    # axes) and given its names.
    defp broadcast_to(dense, %Nx.Tensor{data: %{take: %Dense{} = ids}, names: names}) do
      # a take view: the selected experts of the dense tensor (a fallback: all are dequantized),
      # the indices on the dense tensor's backend (which a transfer may have changed)
      indices =
        ids.data
        |> Nx.from_binary({:s, 64}, backend: dense.data.__struct__)
        |> Nx.reshape(ids.shape)

      dense |> Nx.take(indices, axis: 0) |> Nx.rename(names)
    end

    defp broadcast_to(dense, %Nx.Tensor{shape: shape, names: names}) do
      dense = if dense.shape == shape, do: dense, else: Nx.broadcast(dense, shape)
      Nx.rename(dense, names)
    end

    @impl true
    def transpose(
          out,
          %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{} = qt}} = t,
          axes
        ) do
      if t.shape != qt.shape do
        raise ArgumentError,
              "transpose of a broadcast view of a quantized tensor " <>
                "(#{QuantizedOps.describe(qt, t.shape)}): transpose the 2-D tensor " <>
                "before adding axes, or call NxQuant.dequantize/1 first"
      end

      case QuantizedOps.transpose(qt, axes) do
        {:ok, view} -> %{out | data: %{t.data | quantized: view}, type: t.type}
        {:error, message} -> raise ArgumentError, message
      end
    end

    def transpose(out, tensor, axes), do: delegate(:transpose, [out, tensor, axes])

    @impl true
    def gather(
          out,
          %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{} = qt}} = t,
          indices,
          opts
        ) do
      if t.shape != qt.shape or t.data.take != nil do
        raise ArgumentError, QuantizedOps.unsupported_message(:gather, 4, qt, t.shape)
      end

      ids = Nx.to_flat_list(indices)

      if tuple_size(qt.shape) == 3 do
        take_view(out, t, indices, opts[:axes], ids)
      else
        gather_rows(out, t, qt, indices, opts, ids)
      end
    end

    def gather(out, tensor, indices, opts), do: delegate(:gather, [out, tensor, indices, opts])

    defp take_view(out, t, indices, axes, ids) do
      case QuantizedOps.take_experts(quantized(t), indices.shape, axes, ids) do
        {:ok, g} ->
          data = for i <- ids, into: <<>>, do: <<i::64-signed-native>>
          take = %Dense{data: data, shape: g, type: {:s, 64}}
          %{out | data: %{t.data | take: take}, type: t.type}

        {:error, message} ->
          raise ArgumentError, message
      end
    end

    defp gather_rows(out, t, qt, indices, opts, ids) do
      case QuantizedOps.gather_rows(qt, indices.shape, opts[:axes], ids) do
        {:ok, rows} ->
          qt
          |> QuantizedOps.take_rows(rows)
          |> from_dense(t.data.backend)
          |> Nx.reshape(out.shape, names: out.names)

        {:error, message} ->
          raise ArgumentError, message
      end
    end

    @impl true
    def as_type(out, %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{} = qt}} = t) do
      unless Nx.Type.float?(out.type) do
        raise ArgumentError,
              "Nx.as_type of a quantized tensor (#{QuantizedOps.describe(qt)}) to " <>
                "#{inspect(out.type)}: only float types (dequantize, then cast) are supported"
      end

      t |> dequantize_nx() |> Nx.as_type(out.type)
    end

    def as_type(out, tensor), do: delegate(:as_type, [out, tensor])

    # Shape-only callbacks: on a quantized tensor, a broadcast view when the result ends with
    # its shape (what Nx.dot/6 does to a weight against Nx.vectorize'd activations).
    @impl true
    def reshape(out, %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{}}} = t),
      do: view!(out, t, QuantizedOps.reshape(quantized(t), t.shape, out.shape))

    def reshape(out, tensor), do: delegate(:reshape, [out, tensor])

    @impl true
    def squeeze(out, %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{}}} = t, _axes),
      do: view!(out, t, QuantizedOps.reshape(quantized(t), t.shape, out.shape, :squeeze))

    def squeeze(out, tensor, axes), do: delegate(:squeeze, [out, tensor, axes])

    @impl true
    def broadcast(
          out,
          %Nx.Tensor{data: %__MODULE__{quantized: %QuantizedTensor{}}} = t,
          shape,
          axes
        ),
        do: view!(out, t, QuantizedOps.broadcast(quantized(t), t.shape, shape, axes))

    def broadcast(out, tensor, shape, axes), do: delegate(:broadcast, [out, tensor, shape, axes])

    defp view!(%{shape: shape}, %Nx.Tensor{data: %{take: %Dense{}}, shape: from} = t, :ok)
         when shape != from,
         do:
           raise(ArgumentError, QuantizedOps.unsupported_message(:reshape, 2, quantized(t), from))

    defp view!(out, t, :ok), do: %{out | data: t.data, type: t.type}
    defp view!(_out, _t, {:error, message}), do: raise(ArgumentError, message)
  end
end
