if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.NativeBackend do
    @moduledoc """
    An `Nx.Backend` over binaries whose dense ops run as C++ kernels (`NxQuant.Native`), with
    `Nx.BinaryBackend`'s semantics. Use it alone (`Nx.default_backend(NxQuant.NativeBackend)`)
    or as `NxQuant.Backend`'s inner backend.

    A tensor's data is `%NxQuant.NativeBackend{state: binary}`: the same bytes, in the same
    layout, as `Nx.BinaryBackend`'s `state`, so moving between the two is a struct rewrap.
    The exception is a `put_slice` result of at least 64 KB, whose state is an
    `NxQuant.Native.Versioned` buffer: the next `put_slice` into it writes the slice in place
    instead of copying the tensor (a KV cache update costs its new row, not the cache) and every
    earlier tensor still reads what it did; the callbacks that need a binary (`to_binary`,
    transfers, the BinaryBackend fallback) copy its bytes out.

    Each callback runs natively when `NxQuant.Native` covers the op and every operand's and the
    output's type is one it supports (`NxQuant.Native.supported_type?/1`: u8-u64, s8-s64, f16,
    bf16, f32, f64). Otherwise — complex, f8 and sub-byte types, ops without a kernel (conv,
    window ops, indexed_add/put, reduce with a function, triangular_solve, fft, eye, ...) — it
    runs `Nx.BinaryBackend`'s callback on the same data, under
    `Nx.with_default_backend(Nx.BinaryBackend, ...)` (BinaryBackend creates tensors on the
    default backend and reads them as its own), and wraps the result back. A native call that
    raises `ArgumentError` is retried the same way, so inputs BinaryBackend rejects fail with
    its error and anything the kernels do not handle still gets its answer.

    Native: the element-wise unary ops (`NxQuant.Native.BackendPlan.unary_ops/0`), every binary
    op with broadcasting, comparisons, `select`, `clip`, `as_type`, the reductions (`sum`,
    `product`, `reduce_max/min`, `all`, `any`, `argmax/argmin` with `:axis`, `:keep_axis`,
    `:tie_break`), `dot` with any contraction and batch axes, `transpose`, `broadcast`,
    `slice`, `put_slice`, `concatenate`, `stack`, `pad`, `reverse`, `gather`, `iota`,
    `sort`/`argsort`, and in `block/4` `Nx.Block.TopK`, `Nx.Block.CumulativeSum/Product/Max/Min`,
    `Nx.Block.Take`, `Nx.Block.TakeAlongAxis` and `Nx.Block.LogicalNot`. `reshape`, `squeeze`
    and `bitcast` share the binary. Every other block runs Nx's own composition of ops on this
    backend. Creation, reading and transfers are this module's own.

    Results are BinaryBackend's bits (`NxQuant.Native`'s guarantees: element-wise ops,
    conversions and data movement exactly; sums, products, dot products and cumulative ops
    accumulated in BinaryBackend's order; transcendental functions through the C library in
    double, within 1 ulp and in practice identical; `exp`/`sigmoid` to f32/bf16/f16 through a
    SIMD exp in double, within 1 ulp, almost always identical). Where BinaryBackend raises because Erlang
    float arithmetic has no infinities or NaN (`Nx.divide(1.0, 0.0)`, an f64 overflow in `exp`
    or `multiply`, `sqrt`/`acos` out of their domain, `remainder` of infinities), the kernels
    return the IEEE result (Inf or NaN) instead.

    Like any backend other than `Nx.BinaryBackend`, its tensors cannot be captured as
    constants inside `defn`/`Nx.Defn.jit` functions (`Nx.Defn.Expr` inlines only BinaryBackend
    tensors): pass them as arguments, or `Nx.backend_copy/1` them to BinaryBackend first.
    """

    @behaviour Nx.Backend

    defstruct [:state]

    @type t :: %__MODULE__{state: bitstring() | NxQuant.Native.Versioned.t()}

    alias Nx.Tensor, as: T
    alias NxQuant.{Dense, Native}
    alias NxQuant.Native.BackendPlan, as: Plan
    alias NxQuant.Native.Versioned

    @unary Plan.unary_ops()
    @binary Plan.binary_ops()
    @reduce Plan.reduce_ops()

    # Written out below; every other callback falls back to Nx.BinaryBackend (generated).
    @own [
           init: 1,
           constant: 3,
           from_binary: 3,
           iota: 3,
           from_pointer: 5,
           to_pointer: 2,
           to_binary: 2,
           inspect: 2,
           backend_copy: 3,
           backend_transfer: 3,
           backend_deallocate: 1,
           to_batched: 3,
           block: 4,
           as_type: 2,
           bitcast: 2,
           reshape: 2,
           squeeze: 3,
           broadcast: 4,
           transpose: 3,
           reverse: 3,
           pad: 4,
           dot: 7,
           clip: 4,
           select: 4,
           slice: 5,
           put_slice: 4,
           gather: 4,
           concatenate: 3,
           stack: 3,
           argmax: 3,
           argmin: 3,
           sort: 3,
           argsort: 3
         ] ++
           Enum.map(@unary, &{&1, 2}) ++
           Enum.map(@binary, &{&1, 3}) ++ Enum.map(@reduce, &{&1, 3})

    @strict_key :nx_quant_native_strict

    @fallbacks_key :nx_quant_native_fallbacks

    @doc false
    # Test hooks: in strict mode (per process) a native call that raises re-raises instead of
    # falling back, and the callbacks that fell back are recorded for __fallbacks__/0.
    def __strict__(on?) when is_boolean(on?), do: Process.put(@strict_key, on?)

    @doc false
    def __fallbacks__, do: Enum.reverse(Process.put(@fallbacks_key, []) || [])

    ## Data -------------------------------------------------------------------------------

    # A tensor whose bytes the kernels can read (ours or BinaryBackend's, which Nx lets into our
    # callbacks beside ours), of a supported type.
    defp ok?(%T{type: type, data: %__MODULE__{}}), do: Native.supported_type?(type)
    defp ok?(%T{type: type, data: %Nx.BinaryBackend{}}), do: Native.supported_type?(type)
    defp ok?(_), do: false

    defp type_ok?(%T{type: type}), do: Native.supported_type?(type)

    defp dense(%T{data: %{state: data}, shape: shape, type: type}),
      do: %Dense{data: data, shape: shape, type: type}

    defp put(%T{} = out, %Dense{data: data}), do: %{out | data: %__MODULE__{state: data}}

    # The tensor's bytes as a binary (a versioned buffer's are copied out: see
    # NxQuant.Native.Versioned); shape-only callbacks keep `raw/1` instead.
    defp state(%T{data: %{state: %Versioned{} = data}}), do: Versioned.to_binary(data)
    defp state(%T{data: %{state: data}}), do: data

    defp raw(%T{data: %{state: data}}), do: data

    # The kernel call; an ArgumentError (input the kernels reject, e.g. an index out of range or
    # an integer division by zero, which BinaryBackend rejects too) reruns the callback on
    # BinaryBackend, which gives its answer or its error.
    defp native(name, args, fun) do
      fun.()
    rescue
      e in ArgumentError ->
        if Process.get(@strict_key), do: reraise(e, __STACKTRACE__), else: fallback(name, args)
    end

    ## Falling back to Nx.BinaryBackend ----------------------------------------------------

    @doc false
    def fallback(name, args) do
      if Process.get(@strict_key),
        do: Process.put(@fallbacks_key, [name | Process.get(@fallbacks_key, [])])

      args = Enum.map(args, &to_binary_backend/1)

      Nx.with_default_backend(Nx.BinaryBackend, fn -> apply(Nx.BinaryBackend, name, args) end)
      |> from_binary_backend()
    end

    defp to_binary_backend(%T{data: %__MODULE__{}} = t),
      do: %{t | data: %Nx.BinaryBackend{state: state(t)}}

    defp to_binary_backend(%T{} = t), do: t

    defp to_binary_backend(tuple) when is_tuple(tuple),
      do: tuple |> Tuple.to_list() |> Enum.map(&to_binary_backend/1) |> List.to_tuple()

    defp to_binary_backend(list) when is_list(list), do: Enum.map(list, &to_binary_backend/1)
    defp to_binary_backend(other), do: other

    defp from_binary_backend(%T{data: %Nx.BinaryBackend{state: data}} = t),
      do: %{t | data: %__MODULE__{state: data}}

    defp from_binary_backend(%T{} = t), do: t

    defp from_binary_backend(tuple) when is_tuple(tuple),
      do: tuple |> Tuple.to_list() |> Enum.map(&from_binary_backend/1) |> List.to_tuple()

    defp from_binary_backend(list) when is_list(list),
      do: Enum.map(list, &from_binary_backend/1)

    defp from_binary_backend(other), do: other

    for {name, arity} <- Nx.Backend.behaviour_info(:callbacks),
        {name, arity} not in @own do
      args = Macro.generate_arguments(arity, __MODULE__)
      @impl true
      def unquote(name)(unquote_splicing(args)), do: fallback(unquote(name), unquote(args))
    end

    ## Creation ---------------------------------------------------------------------------

    @impl true
    def init(opts) do
      if opts != [] do
        raise ArgumentError, "NxQuant.NativeBackend accepts no options, got: #{inspect(opts)}"
      end

      opts
    end

    @impl true
    def constant(%T{shape: shape} = out, number, _opts) do
      %T{data: %Nx.BinaryBackend{state: one}} =
        Nx.BinaryBackend.constant(%{out | shape: {}, names: []}, number, [])

      %{out | data: %__MODULE__{state: Plan.repeat(one, Nx.size(shape))}}
    end

    @impl true
    def from_binary(out, binary, _opts) when is_bitstring(binary),
      do: %{out | data: %__MODULE__{state: binary}}

    def from_binary(out, iodata, _opts),
      do: %{out | data: %__MODULE__{state: :erlang.list_to_bitstring(iodata)}}

    @impl true
    def iota(out, axis, opts) do
      if type_ok?(out) do
        native(:iota, [out, axis, opts], fn ->
          put(out, Native.iota(out.shape, out.type, axis))
        end)
      else
        fallback(:iota, [out, axis, opts])
      end
    end

    @impl true
    def from_pointer(_pointer, _type, _shape, _opts, _backend_opts),
      do: raise(ArgumentError, "#{inspect(__MODULE__)} does not support pointer manipulation")

    @impl true
    def to_pointer(_tensor, _opts),
      do: raise(ArgumentError, "#{inspect(__MODULE__)} does not support pointer manipulation")

    ## Reading and transfers --------------------------------------------------------------

    @impl true
    def to_binary(%T{type: type} = t, limit), do: Plan.prefix(state(t), limit, type)

    @impl true
    def inspect(tensor, inspect_opts) do
      limit = inspect_opts.limit
      binary = Nx.to_binary(tensor, if(limit == :infinity, do: [], else: [limit: limit + 1]))
      Nx.Backend.inspect(tensor, binary, inspect_opts)
    end

    @impl true
    def backend_copy(tensor, backend, opts), do: backend_transfer(tensor, backend, opts)

    @impl true
    def backend_transfer(tensor, backend, _opts) when backend in [__MODULE__, Nx.Tensor],
      do: tensor

    def backend_transfer(tensor, Nx.BinaryBackend, _opts), do: to_binary_backend(tensor)

    def backend_transfer(tensor, backend, opts),
      do: backend.from_binary(tensor, state(tensor), opts)

    @impl true
    def backend_deallocate(_tensor), do: :ok

    @impl true
    def to_batched(out, tensor, opts) do
      Nx.BinaryBackend.to_batched(out, to_binary_backend(tensor), opts)
      |> Stream.map(&from_binary_backend/1)
    end

    ## Shape: the same binary --------------------------------------------------------------

    @impl true
    def reshape(out, tensor), do: %{out | data: %__MODULE__{state: raw(tensor)}}

    @impl true
    def squeeze(out, tensor, _axes), do: %{out | data: %__MODULE__{state: raw(tensor)}}

    @impl true
    def bitcast(out, tensor), do: %{out | data: %__MODULE__{state: raw(tensor)}}

    ## Element-wise -------------------------------------------------------------------------

    for op <- @unary do
      @impl true
      def unquote(op)(out, t) do
        if ok?(t) and type_ok?(out) do
          native(unquote(op), [out, t], fn ->
            put(out, Native.unary(unquote(op), dense(t), out.type))
          end)
        else
          fallback(unquote(op), [out, t])
        end
      end
    end

    for op <- @binary do
      @impl true
      def unquote(op)(out, a, b) do
        if ok?(a) and ok?(b) and type_ok?(out) do
          native(unquote(op), [out, a, b], fn ->
            put(out, Native.binary(unquote(op), dense(a), dense(b), out.shape, out.type))
          end)
        else
          fallback(unquote(op), [out, a, b])
        end
      end
    end

    @impl true
    def select(out, pred, on_true, on_false) do
      args = [out, pred, on_true, on_false]

      if ok?(pred) and ok?(on_true) and ok?(on_false) and type_ok?(out) do
        native(:select, args, fn ->
          put(
            out,
            Native.select(dense(pred), dense(on_true), dense(on_false), out.shape, out.type)
          )
        end)
      else
        fallback(:select, args)
      end
    end

    @impl true
    def clip(out, t, min, max) do
      if ok?(t) and ok?(min) and ok?(max) and type_ok?(out) do
        native(:clip, [out, t, min, max], fn ->
          put(out, Native.clip(dense(t), dense(min), dense(max), out.type))
        end)
      else
        fallback(:clip, [out, t, min, max])
      end
    end

    @impl true
    def as_type(%T{type: type}, %T{type: type} = t), do: t

    def as_type(out, t) do
      if ok?(t) and type_ok?(out) do
        native(:as_type, [out, t], fn -> put(out, Native.as_type(dense(t), out.type)) end)
      else
        fallback(:as_type, [out, t])
      end
    end

    ## Reductions ---------------------------------------------------------------------------

    for op <- @reduce do
      @impl true
      def unquote(op)(out, t, opts) do
        if ok?(t) and type_ok?(out) do
          native(unquote(op), [out, t, opts], fn ->
            put(
              out,
              Native.reduce(
                unquote(op),
                dense(t),
                opts[:axes],
                opts[:keep_axes] || false,
                out.type
              )
            )
          end)
        else
          fallback(unquote(op), [out, t, opts])
        end
      end
    end

    for op <- [:argmax, :argmin] do
      @impl true
      def unquote(op)(out, t, opts) do
        if ok?(t) and type_ok?(out) do
          native(unquote(op), [out, t, opts], fn ->
            put(
              out,
              Native.arg_reduce(
                unquote(op),
                dense(t),
                opts[:axis],
                opts[:keep_axis] || false,
                opts[:tie_break] || :low,
                out.type
              )
            )
          end)
        else
          fallback(unquote(op), [out, t, opts])
        end
      end
    end

    ## Shape and data movement --------------------------------------------------------------

    @impl true
    def transpose(out, t, axes) do
      if ok?(t) do
        native(:transpose, [out, t, axes], fn -> put(out, Native.transpose(dense(t), axes)) end)
      else
        fallback(:transpose, [out, t, axes])
      end
    end

    @impl true
    def broadcast(out, t, shape, axes) do
      if ok?(t) do
        native(:broadcast, [out, t, shape, axes], fn ->
          put(out, Native.broadcast(dense(t), shape, axes))
        end)
      else
        fallback(:broadcast, [out, t, shape, axes])
      end
    end

    @impl true
    def reverse(out, t, axes) do
      if ok?(t) do
        native(:reverse, [out, t, axes], fn -> put(out, Native.reverse(dense(t), axes)) end)
      else
        fallback(:reverse, [out, t, axes])
      end
    end

    @impl true
    def pad(out, t, pad_value, config) do
      args = [out, t, pad_value, config]

      case Plan.pad(tuple_size(t.shape), t.type, out.type) do
        :identity ->
          t

        :native ->
          if ok?(t) and ok?(pad_value) do
            native(:pad, args, fn ->
              put(out, Native.pad(dense(t), dense(pad_value), config, out.type))
            end)
          else
            fallback(:pad, args)
          end

        :fallback ->
          fallback(:pad, args)
      end
    end

    @impl true
    def slice(out, t, starts, lengths, strides) do
      args = [out, t, starts, lengths, strides]

      with true <- ok?(t),
           {:ok, starts} <- indices(starts) do
        starts = Plan.clamp_starts(t.shape, starts, lengths)

        native(:slice, args, fn ->
          put(out, Native.slice(dense(t), starts, lengths, strides))
        end)
      else
        _ -> fallback(:slice, args)
      end
    end

    @impl true
    def put_slice(out, t, starts, slice) do
      args = [out, t, starts, slice]

      with true <- ok?(t) and ok?(slice) and type_ok?(out),
           {:ok, starts} <- indices(starts) do
        starts = Plan.clamp_starts(t.shape, starts, Tuple.to_list(slice.shape))

        native(:put_slice, args, fn ->
          put(out, Native.put_slice(dense(t), starts, dense(slice), out.type))
        end)
      else
        _ -> fallback(:put_slice, args)
      end
    end

    # Start indices are integers or scalar integer tensors (Nx.slice/put_slice with dynamic
    # starts).
    defp indices(starts) do
      Enum.reduce_while(starts, {:ok, []}, fn
        i, {:ok, acc} when is_integer(i) ->
          {:cont, {:ok, [i | acc]}}

        %T{shape: {}, type: type} = t, {:ok, acc} ->
          case Plan.index(state(t), type) do
            :error -> {:halt, :error}
            i -> {:cont, {:ok, [i | acc]}}
          end

        _, _ ->
          {:halt, :error}
      end)
      |> case do
        {:ok, acc} -> {:ok, Enum.reverse(acc)}
        :error -> :error
      end
    end

    @impl true
    def concatenate(out, tensors, axis) do
      if Enum.all?(tensors, &ok?/1) and type_ok?(out) do
        native(:concatenate, [out, tensors, axis], fn ->
          put(out, Native.concatenate(Enum.map(tensors, &dense/1), axis, out.type))
        end)
      else
        fallback(:concatenate, [out, tensors, axis])
      end
    end

    @impl true
    def stack(out, tensors, axis) do
      if Enum.all?(tensors, &ok?/1) and type_ok?(out) do
        native(:stack, [out, tensors, axis], fn ->
          put(out, Native.stack(Enum.map(tensors, &dense/1), axis, out.type))
        end)
      else
        fallback(:stack, [out, tensors, axis])
      end
    end

    @impl true
    def gather(out, t, indices, opts) do
      if ok?(t) and ok?(indices) do
        native(:gather, [out, t, indices, opts], fn ->
          put(out, Native.gather(dense(t), dense(indices), opts[:axes], out.shape))
        end)
      else
        fallback(:gather, [out, t, indices, opts])
      end
    end

    @impl true
    def dot(out, a, contract_a, batch_a, b, contract_b, batch_b) do
      args = [out, a, contract_a, batch_a, b, contract_b, batch_b]

      if ok?(a) and ok?(b) and type_ok?(out) do
        native(:dot, args, fn ->
          put(
            out,
            Native.dot(dense(a), contract_a, batch_a, dense(b), contract_b, batch_b, out.type)
          )
        end)
      else
        fallback(:dot, args)
      end
    end

    ## Sorting ------------------------------------------------------------------------------

    @impl true
    def sort(out, t, opts) do
      if ok?(t) and Plan.sort(tuple_size(t.shape)) == :native do
        native(:sort, [out, t, opts], fn ->
          put(out, Native.sort(dense(t), opts[:axis], opts[:direction] || :asc))
        end)
      else
        fallback(:sort, [out, t, opts])
      end
    end

    @impl true
    def argsort(out, t, opts) do
      if ok?(t) and type_ok?(out) and Plan.sort(tuple_size(t.shape)) == :native do
        native(:argsort, [out, t, opts], fn ->
          put(out, Native.argsort(dense(t), opts[:axis], opts[:direction] || :asc, out.type))
        end)
      else
        fallback(:argsort, [out, t, opts])
      end
    end

    ## Blocks -------------------------------------------------------------------------------

    @impl true
    def block(%module{} = struct, out, args, fun) do
      case Plan.block(module) do
        :default -> composition(struct, args, fun)
        kind -> native_block(kind, struct, out, args, fun)
      end
    end

    # Nx's own composition of the block (all Nx.BinaryBackend.block/4 does); its ops run on this
    # backend, also the tensors it creates.
    defp composition(struct, args, fun),
      do: Nx.with_default_backend(__MODULE__, fn -> apply(fun, [struct | args]) end)

    defp native_block(kind, struct, out, args, fun) do
      if Enum.all?(args, &ok?/1) and Enum.all?(outputs(out), &type_ok?/1) do
        try do
          run_block(kind, struct, out, args)
        rescue
          e in ArgumentError ->
            if Process.get(@strict_key),
              do: reraise(e, __STACKTRACE__),
              else: composition(struct, args, fun)
        end
      else
        composition(struct, args, fun)
      end
    end

    defp outputs(tuple) when is_tuple(tuple), do: Tuple.to_list(tuple)
    defp outputs(out), do: [out]

    defp run_block({:cumulative, op}, struct, out, [t]),
      do: put(out, Native.cumulative(op, dense(t), struct.axis, struct.reverse, out.type))

    defp run_block(:top_k, struct, {out_values, out_indices}, [t]) do
      {values, indices} = Native.top_k(dense(t), struct.k, out_indices.type)
      {put(out_values, values), put(out_indices, indices)}
    end

    defp run_block(:take, struct, out, [t, indices]),
      do: put(out, Native.take(dense(t), dense(indices), struct.axis, out.shape))

    defp run_block(:take_along_axis, struct, out, [t, indices]),
      do: put(out, Native.take_along_axis(dense(t), dense(indices), struct.axis, out.shape))

    defp run_block(:logical_not, _struct, out, [t]),
      do: put(out, Native.unary(:logical_not, dense(t), out.type))
  end
end
