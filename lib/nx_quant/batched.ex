defmodule NxQuant.Batched do
  @moduledoc """
  Shapes of batched quantized weights (`{E, ..., rows, cols}`, MLX's layout for mixtures of
  experts) and of `NxQuant.Core.gather_qmm/3`: broadcasting, output shapes and index
  conversion. Nx-free and NIF-free.

  A batched quantized tensor's resource holds the stacked `{prod(batch) * rows, cols}` matrix;
  its batch shape is the struct's leading axes, and every call passes it to the NIF, which
  checks that the stacked rows split into it.
  """

  @int_types for k <- [:s, :u], s <- [8, 16, 32, 64], do: {k, s}

  @doc "`{batch, {rows, cols}}` of a quantized tensor's logical shape (a transposed view: no batch)."
  @spec split(tuple(), boolean()) :: {tuple(), {non_neg_integer(), non_neg_integer()}}
  def split(shape, transposed \\ false)

  def split({a, b}, true), do: {{}, {b, a}}
  # a rank-1 quantized tensor is one stored row
  def split({cols}, _transposed), do: {{}, {1, cols}}

  def split(shape, _transposed) when tuple_size(shape) >= 2 do
    rank = tuple_size(shape)
    batch = shape |> Tuple.to_list() |> Enum.take(rank - 2) |> List.to_tuple()
    {batch, {elem(shape, rank - 2), elem(shape, rank - 1)}}
  end

  @doc """
  numpy's broadcast of two shapes (aligned on their last axes, a 1 stretches): `{:ok, shape}`
  or `{:error, message}`.
  """
  @spec broadcast(tuple(), tuple()) :: {:ok, tuple()} | {:error, String.t()}
  def broadcast(a, b) do
    rank = max(tuple_size(a), tuple_size(b))
    pa = List.duplicate(1, rank - tuple_size(a)) ++ Tuple.to_list(a)
    pb = List.duplicate(1, rank - tuple_size(b)) ++ Tuple.to_list(b)

    Enum.zip(pa, pb)
    |> Enum.reduce_while({:ok, []}, fn
      {x, x}, {:ok, acc} -> {:cont, {:ok, [x | acc]}}
      {1, y}, {:ok, acc} -> {:cont, {:ok, [y | acc]}}
      {x, 1}, {:ok, acc} -> {:cont, {:ok, [x | acc]}}
      _, _ -> {:halt, {:error, "#{inspect(a)} and #{inspect(b)} do not broadcast"}}
    end)
    |> case do
      {:ok, dims} -> {:ok, dims |> Enum.reverse() |> List.to_tuple()}
      error -> error
    end
  end

  @doc """
  `{x_batch, m}` of an activation of shape `{..., m, k}` whose last axis must be `k`, or
  `{:error, message}`.
  """
  @spec x_dims(tuple(), non_neg_integer()) ::
          {:ok, tuple(), non_neg_integer()} | {:error, String.t()}
  def x_dims(x_shape, k) do
    rank = tuple_size(x_shape)

    cond do
      rank < 2 ->
        {:error,
         "must have rank >= 2 ({..., m, k}) against a batched weight, got shape " <>
           inspect(x_shape)}

      elem(x_shape, rank - 1) != k ->
        {:error, "has shape #{inspect(x_shape)}: its last axis must be #{k}"}

      true ->
        {batch, {m, _}} = split(x_shape)
        {:ok, batch, m}
    end
  end

  @doc "`shape` followed by `m` and `n`."
  @spec out_shape(tuple(), non_neg_integer(), non_neg_integer()) :: tuple()
  def out_shape(batch, m, n), do: List.to_tuple(Tuple.to_list(batch) ++ [m, n])

  @doc "True for the integer types index tensors may have."
  @spec index_type?(term()) :: boolean()
  def index_type?(type), do: type in @int_types

  @doc """
  The native-endian int64 binary of an integer tensor's `data` of `type` (as the NIF takes
  indices). u64 values above the int64 range become negative (and are then out of range).
  """
  @spec to_s64(binary(), {atom(), pos_integer()}) :: binary()
  def to_s64(data, {:s, 64}), do: data

  def to_s64(data, {:s, size}),
    do: for(<<v::size(size)-signed-native <- data>>, into: <<>>, do: <<v::64-signed-native>>)

  def to_s64(data, {:u, size}),
    do: for(<<v::size(size)-unsigned-native <- data>>, into: <<>>, do: <<v::64-signed-native>>)
end
