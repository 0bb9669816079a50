defmodule NxQuant.Native.BackendPlan do
  @moduledoc """
  The decisions of `NxQuant.NativeBackend` (the Nx glue over `NxQuant.Native`), kept Nx-free so
  CI tests them without Nx: which callbacks have a native implementation, which `Nx.Block`
  structs run natively, and the few places where `Nx.BinaryBackend`'s result is not what the
  op's definition alone says (so the glue must fall back to reproduce it exactly).

  Nx structs are referred to by their module names only (atoms), never used.
  """

  # Unary callbacks covered by NxQuant.Native.unary/3: Nx's unary math functions and the other
  # element-wise unary ops with a real (non-complex) meaning. Not covered (they fall back):
  # conjugate, real, imag (complex), count_leading_zeros, population_count.
  @unary_ops [:exp, :expm1, :log, :log1p, :sigmoid, :cos, :sin, :tan, :cosh, :sinh, :tanh] ++
               [:acos, :asin, :atan, :acosh, :asinh, :atanh, :sqrt, :rsqrt, :cbrt] ++
               [:erf, :erfc, :erf_inv, :negate, :abs, :sign, :floor, :ceil, :round] ++
               [:is_nan, :is_infinity, :bitwise_not]

  # Every element-wise binary callback of Nx.Backend (NxQuant.Native.binary/5).
  @binary_ops [:add, :subtract, :multiply, :divide, :pow, :max, :min, :quotient, :remainder] ++
                [:atan2, :equal, :not_equal, :less, :less_equal, :greater, :greater_equal] ++
                [:logical_and, :logical_or, :logical_xor, :bitwise_and, :bitwise_or] ++
                [:bitwise_xor, :left_shift, :right_shift]

  # Reductions over :axes (NxQuant.Native.reduce/5).
  @reduce_ops [:sum, :product, :reduce_max, :reduce_min, :all, :any]

  @doc "Unary callbacks computed by `NxQuant.Native.unary/3`."
  @spec unary_ops() :: [atom()]
  def unary_ops, do: @unary_ops

  @doc "Binary callbacks computed by `NxQuant.Native.binary/5`."
  @spec binary_ops() :: [atom()]
  def binary_ops, do: @binary_ops

  @doc "Reduction callbacks (`opts[:axes]`, `opts[:keep_axes]`) computed by `NxQuant.Native.reduce/5`."
  @spec reduce_ops() :: [atom()]
  def reduce_ops, do: @reduce_ops

  @doc """
  What `block/4` does with a block struct (given by its module name):

    * `{:cumulative, op}` - `Nx.Block.CumulativeSum/Product/Max/Min`: `NxQuant.Native.cumulative/5`
      with the struct's `:axis` and `:reverse`;
    * `:top_k`, `:take`, `:take_along_axis` - the native functions of those names;
    * `:logical_not` - `NxQuant.Native.unary(:logical_not, ...)`;
    * `:default` - any other block: Nx's own composition, `apply(fun, [struct | args])`, whose
      ops then run on the backend one by one (that is also all `Nx.BinaryBackend.block/4` does).
  """
  @spec block(module()) ::
          {:cumulative, atom()} | :top_k | :take | :take_along_axis | :logical_not | :default
  def block(Nx.Block.CumulativeSum), do: {:cumulative, :cumulative_sum}
  def block(Nx.Block.CumulativeProduct), do: {:cumulative, :cumulative_product}
  def block(Nx.Block.CumulativeMax), do: {:cumulative, :cumulative_max}
  def block(Nx.Block.CumulativeMin), do: {:cumulative, :cumulative_min}
  def block(Nx.Block.TopK), do: :top_k
  def block(Nx.Block.Take), do: :take
  def block(Nx.Block.TakeAlongAxis), do: :take_along_axis
  def block(Nx.Block.LogicalNot), do: :logical_not
  def block(_), do: :default

  @doc """
  `Nx.pad/3`'s callback: `:identity` for a scalar (BinaryBackend returns the tensor itself),
  `:native` when the tensor already has the output type, else `:fallback`. (Nx types the output
  as the merge of the tensor's and the pad value's types; BinaryBackend then writes the tensor's
  elements unconverted next to pad values converted to that type and keeps the tensor's type:
  only a fallback reproduces that.)
  """
  @spec pad(non_neg_integer(), tuple(), tuple()) :: :identity | :native | :fallback
  def pad(0, _in_type, _out_type), do: :identity
  def pad(_rank, type, type), do: :native
  def pad(_rank, _in_type, _out_type), do: :fallback

  @doc """
  `sort/3` and `argsort/3`: a scalar falls back (BinaryBackend returns it unchanged from `sort`
  and has its own scalar rule for `argsort`), every other rank is native.
  """
  @spec sort(non_neg_integer()) :: :native | :fallback
  def sort(0), do: :fallback
  def sort(_rank), do: :native

  @doc """
  Start indices clamped as BinaryBackend clamps them (`slice/5`, `put_slice/4`): each into
  `[0, dim - length]`. `starts` are integers (scalar tensors already read with `index/2`).
  """
  @spec clamp_starts(tuple(), [integer()], [non_neg_integer()]) :: [non_neg_integer()]
  def clamp_starts(shape, starts, lengths) do
    Enum.zip_with([Tuple.to_list(shape), starts, lengths], fn [dim, start, len] ->
      start |> max(0) |> min(dim - len)
    end)
  end

  @doc """
  The integer in a scalar tensor's binary (native endian, as `Nx.to_binary/1` gives it), for a
  start index given as a tensor; `:error` for a non-integer type or a binary of the wrong size.
  """
  @spec index(bitstring(), tuple()) :: integer() | :error
  def index(bin, {:s, size}) when bit_size(bin) == size and size in [8, 16, 32, 64] do
    <<v::signed-native-size(size)>> = bin
    v
  end

  def index(bin, {:u, size}) when bit_size(bin) == size and size in [8, 16, 32, 64] do
    <<v::unsigned-native-size(size)>> = bin
    v
  end

  def index(_bin, _type), do: :error

  @doc """
  The first `limit` elements of a tensor's data (`to_binary/2`), for any element size including
  sub-byte ones.
  """
  @spec prefix(bitstring(), non_neg_integer(), tuple()) :: bitstring()
  def prefix(data, limit, {_, size}) do
    bits = min(limit * size, bit_size(data))
    <<part::bitstring-size(bits), _::bitstring>> = data
    part
  end

  @doc """
  `count` copies of a one-element binary (`constant/3`); byte-sized elements use
  `:binary.copy/2`, sub-byte ones are concatenated.
  """
  @spec repeat(bitstring(), non_neg_integer()) :: bitstring()
  def repeat(element, count) when is_binary(element), do: :binary.copy(element, count)

  def repeat(element, count) when is_bitstring(element),
    do: :erlang.list_to_bitstring(List.duplicate(element, count))
end
