defmodule NxQuant.DotPlan do
  @moduledoc """
  Decides how `Nx.dot/6` is computed when an operand is quantized. Nx-free: it works on
  descriptions of the operands, so every decision is tested without Nx.

  `Nx.dot(left, contract_left, batch_left, right, contract_right, batch_right)` returns the
  batch axes, then `left`'s free axes, then `right`'s free axes. The fused kernel
  (`NxQuant.Core.quantized_matmul/3`) computes `x . stored^T` (`transpose: true`) or
  `x . stored` (`transpose: false`) with x's *last* axis contracted, and returns x's other axes
  followed by the weight's free axis. A plan says how to get from one to the other:

    * `:activation` - which operand is the dense one (`:left` or `:right`);
    * `:activation_perm` - the axis order that moves the activation's contracted axis last
      (`nil` when it already is);
    * `:transpose` - the kernel's layout flag: contracting the weight's *stored* `cols` (K of an
      MLX `{N, K}` weight) is `transpose: true`, its stored `rows` is `transpose: false`. A
      transposed view (`Nx.transpose/1` of a quantized tensor) swaps which logical axis is which;
    * `:out_perm` - the axis order that turns the kernel's output into Nx's (`nil` when it
      already is: the quantized operand on the right). With the quantized operand on the left,
      its free axis must come first;
    * `:activation_type` - the type the activation is given to the kernel in (f32, f16 and bf16
      as they are, anything else as f32);
    * `:kernel_type` / `:out_type` - the kernel's output type and the type Nx expects (the
      caller's `out` type, which Nx computes as `Nx.Type.merge/2` of the operands' types: for a
      float activation, the activation's type). When they differ the result is cast.

  A result type Nx computes as an integer (an integer activation against the weight's nominal
  `{:s, bits}` type) is an error: the product is real-valued. (Two quantized operands also get
  an integer type from Nx; their dot dequantizes the left one and runs the fused kernel on the right one; the result
  takes the dequantized operand's float type.)

  A quantized operand may be a *broadcast view* (`NxQuant.QuantizedOps`): `lead` leading axes
  of size-anything in front of the 2-D matrix, every position holding the same matrix. That
  is what `Nx.vectorize`d activations make of a weight. When those leading axes are exactly
  the dot's batch axes on the quantized side, the batch axes of the activation are just more
  rows for the kernel: the activation is permuted to `batch ++ free ++ [contracted]` and the
  kernel's output is already Nx's `batch ++ free ++ [N]` (with the quantized operand on the
  left, `N` is moved in front of the activation's free axes).

  Batched weights (`NxQuant.Batched`): a quantized operand of rank > 2 whose leading axes are
  exactly the dot's batch axes (in order) gets a plan with `:batched` (`x_shape`: the permuted
  activation as `batch ++ [m, K]`, `out_shape`: the kernel's result as `batch ++ free ++ [N]`
  before `:out_perm`), run by the batched `NxQuant.Core.quantized_matmul/3`. A *take view*
  (`describe/3` with the index rank: `Nx.take/3` of experts, `index_shape ++ {rows, cols}`)
  whose batch axes are its leading index axes gets `:gather` (`x_shape`, `lhs_shape`: the
  arange over the batch as `lhs_indices`, `out_shape` and `out_perm` of the
  `NxQuant.Core.gather_qmm/3` result), with the view's indices as `rhs_indices`.

  Cases without a fused kernel return `{:dequantize, sides, reason}`: the quantized operand(s)
  on `sides` are dequantized and the dense dot runs on the result — a correct answer that costs
  memory, never a silently wrong one. They are: both operands quantized (the left one is
  dequantized), batch axes other than a view's broadcast axes, a contraction over zero or
  several axes, and a quantized operand whose matrix is not 2-D. The weight there is the same
  as the kernel's: `scale * q + bias` in f32 (`NxQuant.QuantizedOps.dequantize_f32/1`), so
  the paths differ only by f32 accumulation order.
  """

  alias NxQuant.QuantizedTensor

  @kernel_types [{:f, 32}, {:f, 16}, {:bf, 16}]

  @type type :: {atom(), pos_integer()}
  @type operand ::
          {:dense, tuple(), type()}
          | {:quantized,
             %{
               shape: tuple(),
               lead: non_neg_integer(),
               transposed: boolean(),
               dtype: type(),
               bits: pos_integer(),
               group_size: pos_integer()
             }}
  @type kernel_plan :: %{
          activation: :left | :right,
          activation_perm: [non_neg_integer()] | nil,
          activation_type: type(),
          transpose: boolean(),
          out_perm: [non_neg_integer()] | nil,
          out_shape: tuple(),
          kernel_type: type(),
          out_type: type()
        }

  @doc """
  Describes a quantized tensor for `plan/7`; `shape` is the Nx tensor's (a broadcast view's
  shape is `lead ++ qt.shape`).
  """
  @spec describe(QuantizedTensor.t(), tuple(), non_neg_integer() | nil) :: operand()
  def describe(qt, shape \\ nil, gathered \\ nil)

  # A take view (NxQuant.QuantizedOps.take_experts/4): shape `index_shape ++ {rows, cols}`
  # over the experts of a batched tensor; `gathered` is the rank of the index shape.
  def describe(%QuantizedTensor{} = qt, shape, gathered) when is_integer(gathered) do
    {:quantized,
     %{
       shape: shape,
       lead: 0,
       gathered: gathered,
       transposed: false,
       dtype: qt.dtype,
       bits: qt.config.bits,
       group_size: qt.config.group_size
     }}
  end

  def describe(%QuantizedTensor{} = qt, shape, nil) do
    shape = shape || qt.shape

    {:quantized,
     %{
       shape: shape,
       lead: tuple_size(shape) - tuple_size(qt.shape),
       transposed: qt.transposed,
       dtype: qt.dtype,
       bits: qt.config.bits,
       group_size: qt.config.group_size
     }}
  end

  @doc """
  Plans `Nx.dot(left, contract_left, batch_left, right, contract_right, batch_right)` whose
  result Nx expects in `out_type`. Axes are normalized (non-negative) axis lists, as Nx passes
  them to a backend.

  Returns `:dense` (no operand is quantized), `{:kernel, plan}`, `{:dequantize, sides, reason}`
  or `{:error, message}`.
  """
  @spec plan(type(), operand(), [integer()], [integer()], operand(), [integer()], [integer()]) ::
          :dense
          | {:kernel, kernel_plan()}
          | {:dequantize, [:left | :right], String.t()}
          | {:error, String.t()}
  def plan(out_type, left, contract_left, batch_left, right, contract_right, batch_right) do
    with :ok <- check_axes(left, contract_left, batch_left, "left"),
         :ok <- check_out_type(out_type, left, right),
         :ok <- check_axes(right, contract_right, batch_right, "right"),
         :ok <- check_sizes(left, contract_left, right, contract_right, "contracted"),
         :ok <- check_sizes(left, batch_left, right, batch_right, "batch") do
      case {left, right} do
        {{:dense, _, _}, {:dense, _, _}} ->
          :dense

        {{:quantized, _}, {:quantized, _}} ->
          {:dequantize, [:left],
           "both operands are quantized and the fused kernel needs one dense operand"}

        {{:quantized, q}, {:dense, _, _} = x} ->
          kernel_or_dequantize(
            :left,
            q,
            contract_left,
            batch_left,
            x,
            contract_right,
            batch_right,
            out_type
          )

        {{:dense, _, _} = x, {:quantized, q}} ->
          kernel_or_dequantize(
            :right,
            q,
            contract_right,
            batch_right,
            x,
            contract_left,
            batch_left,
            out_type
          )
      end
    end
  end

  defp kernel_or_dequantize(q_side, q, q_contract, q_batch, x, x_contract, x_batch, out_type) do
    {:dense, x_shape, x_type} = x
    lead = Map.get(q, :lead, 0)
    rank = tuple_size(q.shape)

    cond do
      Map.has_key?(q, :gathered) ->
        gather_or_dequantize(q_side, q, q_contract, q_batch, x, x_contract, x_batch, out_type)

      lead == 0 and rank > 2 and q_batch == Enum.to_list(0..(rank - 3)) and
        length(q_contract) == 1 and hd(q_contract) >= rank - 2 ->
        [q_axis] = q_contract
        [x_axis] = x_contract
        matrix = {elem(q.shape, rank - 2), elem(q.shape, rank - 1)}

        plan =
          kernel_plan(
            q_side,
            q,
            matrix,
            q_axis - (rank - 2),
            x_shape,
            x_type,
            x_axis,
            x_batch,
            out_type
          )

        {:kernel,
         Map.put(
           plan,
           :batched,
           batched_shapes(x_shape, x_batch, x_axis, matrix, q_axis - (rank - 2))
         )}

      rank - lead != 2 ->
        {:dequantize, [q_side],
         "the fused kernel needs a 2-D quantized operand, got shape #{inspect(q.shape)}" <>
           if(lead > 0, do: " (#{lead} broadcast axes)", else: "")}

      Enum.sort(q_batch) != Enum.to_list(0..(lead - 1)//1) and lead == 0 ->
        {:dequantize, [q_side],
         "batch axes over a quantized operand have no fused kernel (batch_axes: #{inspect(q_batch)} / #{inspect(x_batch)})"}

      Enum.sort(q_batch) != Enum.to_list(0..(lead - 1)//1) ->
        {:dequantize, [q_side],
         "the fused kernel needs the broadcast axes #{inspect(Enum.to_list(0..(lead - 1)))} " <>
           "of a quantized view to be exactly its batch axes, got batch_axes #{inspect(q_batch)}"}

      length(q_contract) != 1 ->
        {:dequantize, [q_side],
         "the fused kernel contracts exactly one axis, got contraction axes #{inspect(q_contract)}"}

      true ->
        [q_axis] = q_contract
        [x_axis] = x_contract
        matrix = {elem(q.shape, lead), elem(q.shape, lead + 1)}

        {:kernel,
         kernel_plan(q_side, q, matrix, q_axis - lead, x_shape, x_type, x_axis, x_batch, out_type)}
    end
  end

  defp kernel_plan(q_side, q, matrix, q_axis, x_shape, x_type, x_axis, x_batch, out_type) do
    # The weight's stored matrix is {rows, cols}; a transposed view shows it as {cols, rows}.
    stored_axis = if q.transposed, do: 1 - q_axis, else: q_axis
    q_free = elem(matrix, 1 - q_axis)
    rank = tuple_size(x_shape)
    x_free_axes = for axis <- 0..(rank - 1)//1, axis != x_axis, axis not in x_batch, do: axis
    batch_dims = Enum.map(x_batch, &elem(x_shape, &1))
    free_dims = Enum.map(x_free_axes, &elem(x_shape, &1))

    # The kernel contracts x's last axis and treats every other axis as rows: batch axes first
    # (in the order Nx pairs them), then the free axes, as Nx orders its result.
    order = x_batch ++ x_free_axes ++ [x_axis]
    activation_perm = if order == Enum.to_list(0..(rank - 1)//1), do: nil, else: order

    nb = length(x_batch)
    nf = length(x_free_axes)

    {out_perm, out_dims} =
      case {q_side, nf} do
        {:right, _} ->
          {nil, batch_dims ++ free_dims ++ [q_free]}

        {:left, 0} ->
          {nil, batch_dims ++ [q_free]}

        {:left, nf} ->
          perm = Enum.to_list(0..(nb - 1)//1) ++ [nb + nf] ++ Enum.to_list(nb..(nb + nf - 1))
          {perm, batch_dims ++ [q_free] ++ free_dims}
      end

    %{
      activation: if(q_side == :left, do: :right, else: :left),
      activation_perm: activation_perm,
      activation_type: if(x_type in @kernel_types, do: x_type, else: {:f, 32}),
      transpose: stored_axis == 1,
      out_perm: out_perm,
      out_shape: List.to_tuple(out_dims),
      kernel_type: if(out_type in @kernel_types, do: out_type, else: {:f, 32}),
      out_type: out_type
    }
  end

  # The batched kernel (NxQuant.Core.quantized_matmul/3 on a rank > 2 weight) wants x as
  # `batch ++ [m, K]`: the permuted activation's free axes are flattened into m, and the
  # kernel's `batch ++ [m, N]` is split back into `batch ++ free ++ [N]` (before :out_perm).
  defp batched_shapes(x_shape, x_batch, x_axis, matrix, q_axis) do
    {batch_dims, free_dims, k} = x_parts(x_shape, x_batch, x_axis)
    n = elem(matrix, 1 - q_axis)

    %{
      x_shape: List.to_tuple(batch_dims ++ [Enum.product(free_dims), k]),
      out_shape: List.to_tuple(batch_dims ++ free_dims ++ [n])
    }
  end

  defp x_parts(x_shape, x_batch, x_axis) do
    rank = tuple_size(x_shape)
    free = for axis <- 0..(rank - 1)//1, axis != x_axis, axis not in x_batch, do: axis

    {Enum.map(x_batch, &elem(x_shape, &1)), Enum.map(free, &elem(x_shape, &1)),
     elem(x_shape, x_axis)}
  end

  # A take view `index_shape ++ {rows, cols}` of a batched weight: gather_qmm with the view's
  # indices as rhs_indices. The dot's batch axes must be the view's leading index axes (in
  # order); the other index axes are free axes of the view. x is permuted to
  # `batch ++ free ++ [K]` and given as `batch ++ [m, K]` with lhs_indices an arange over the
  # batch (shape `batch ++ 1s`, so it broadcasts against the index shape from the left).
  defp gather_or_dequantize(q_side, q, q_contract, q_batch, x, x_contract, x_batch, out_type) do
    {:dense, x_shape, x_type} = x
    g = q.gathered
    nb = length(q_batch)

    cond do
      length(q_contract) != 1 or hd(q_contract) < g ->
        {:dequantize, [q_side],
         "the gathered kernel contracts one of the last two axes of a take view, got " <>
           "contraction axes #{inspect(q_contract)}"}

      q_batch != Enum.to_list(0..(nb - 1)//1) ->
        {:dequantize, [q_side],
         "the gathered kernel needs the batch axes of a take view to be its leading index " <>
           "axes in order, got #{inspect(q_batch)}"}

      true ->
        [q_axis] = q_contract
        [x_axis] = x_contract
        matrix = {elem(q.shape, g), elem(q.shape, g + 1)}

        plan =
          kernel_plan(q_side, q, matrix, q_axis - g, x_shape, x_type, x_axis, x_batch, out_type)

        {batch_dims, free_dims, k} = x_parts(x_shape, x_batch, x_axis)
        n = elem(matrix, 1 - (q_axis - g))
        g_free = q.shape |> Tuple.to_list() |> Enum.slice(nb, g - nb)
        nf = length(free_dims)
        ngf = length(g_free)
        batch_axes = Enum.to_list(0..(nb - 1)//1)
        g_axes = Enum.to_list(nb..(nb + ngf - 1)//1)
        f_axes = Enum.to_list((nb + ngf)..(nb + ngf + nf - 1)//1)
        last = nb + ngf + nf

        perm =
          if q_side == :right,
            do: batch_axes ++ f_axes ++ g_axes ++ [last],
            else: batch_axes ++ g_axes ++ [last] ++ f_axes

        {:kernel,
         plan
         |> Map.put(:out_perm, nil)
         |> Map.put(
           :out_shape,
           List.to_tuple(
             if(q_side == :right,
               do: batch_dims ++ free_dims ++ g_free ++ [n],
               else: batch_dims ++ g_free ++ [n] ++ free_dims
             )
           )
         )
         |> Map.put(:gather, %{
           x_shape: List.to_tuple(batch_dims ++ [Enum.product(free_dims), k]),
           lhs_shape: List.to_tuple(batch_dims ++ List.duplicate(1, g - nb)),
           out_shape: List.to_tuple(batch_dims ++ g_free ++ free_dims ++ [n]),
           out_perm: if(perm == Enum.to_list(0..last), do: nil, else: perm)
         })}
    end
  end

  defp check_axes(operand, contract, batch, side) do
    rank = tuple_size(shape(operand))
    axes = contract ++ batch

    cond do
      not Enum.all?(axes, &(is_integer(&1) and &1 >= 0 and &1 < rank)) ->
        {:error,
         "#{side} axes #{inspect(axes)} are not valid axes of shape #{inspect(shape(operand))}"}

      length(Enum.uniq(axes)) != length(axes) ->
        {:error, "#{side} axes #{inspect(axes)} repeat an axis"}

      true ->
        :ok
    end
  end

  # A quantized operand's nominal type is {:s, bits}, so Nx computes an integer result type
  # when the other operand is an integer tensor too; casting the real-valued product to an
  # integer would be a silently wrong answer.
  defp check_out_type({kind, _} = out_type, left, right) when kind in [:s, :u] do
    if match?({:quantized, _}, left) != match?({:quantized, _}, right) do
      {:error,
       "the result type would be #{inspect(out_type)} because the dense operand has an " <>
         "integer type; the product with a quantized weight is real-valued, so cast the " <>
         "dense operand to a float type first (Nx.as_type(x, :f32))"}
    else
      :ok
    end
  end

  defp check_out_type(_out_type, _left, _right), do: :ok

  defp check_sizes(left, axes_left, right, axes_right, what) do
    left_sizes = Enum.map(axes_left, &elem(shape(left), &1))
    right_sizes = Enum.map(axes_right, &elem(shape(right), &1))

    if left_sizes == right_sizes do
      :ok
    else
      {:error,
       "#{what} axes differ in size: left #{inspect(axes_left)} of #{inspect(shape(left))} vs right #{inspect(axes_right)} of #{inspect(shape(right))}"}
    end
  end

  defp shape({:dense, shape, _}), do: shape
  defp shape({:quantized, %{shape: shape}}), do: shape
end
