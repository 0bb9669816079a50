defmodule NxQuant.NativeCase do
  @moduledoc """
  Helpers for the NxQuant.Native tests: comparisons with the reference that report the first
  differing element, and the test matrix (types, shapes).
  """

  import ExUnit.Assertions
  alias NxQuant.Dense
  alias NxQuant.NativeReference, as: Ref

  @float_types [{:f, 16}, {:bf, 16}, {:f, 32}, {:f, 64}]
  @int_types [{:u, 8}, {:u, 16}, {:u, 32}, {:u, 64}, {:s, 8}, {:s, 16}, {:s, 32}, {:s, 64}]

  def float_types, do: @float_types
  def int_types, do: @int_types
  def all_types, do: @int_types ++ @float_types

  @doc "Asserts that two tensors are bit for bit the same (shape, type, data)."
  def assert_same(%Dense{} = got, %Dense{} = expected, context \\ "") do
    # a versioned buffer's data (NxQuant.Native.put_slice) compared as its bytes
    {got, expected} = {bytes(got), bytes(expected)}

    assert got.shape == expected.shape,
           "#{context}: shape #{inspect(got.shape)} != #{inspect(expected.shape)}"

    assert got.type == expected.type,
           "#{context}: type #{inspect(got.type)} != #{inspect(expected.type)}"

    if got.data != expected.data do
      {g, e} = {Ref.values(got), Ref.values(expected)}
      {gv, ev, i} = first_difference(got, expected, g, e)

      flunk(
        "#{context}: element #{i} (#{inspect(index_of(i, got.shape))}) is #{inspect(gv)}, " <>
          "expected #{inspect(ev)} (#{inspect(got.type)}, shape #{inspect(got.shape)})"
      )
    end

    got
  end

  defp bytes(%Dense{} = t), do: %{t | data: NxQuant.Native.to_binary(t)}

  defp first_difference(got, expected, g, e) do
    size = div(elem(got.type, 1), 8)

    0..(length(g) - 1)
    |> Enum.find(fn i ->
      binary_part(got.data, i * size, size) != binary_part(expected.data, i * size, size)
    end)
    |> then(&{Enum.at(g, &1), Enum.at(e, &1), &1})
  end

  defp index_of(i, shape) do
    shape
    |> Tuple.to_list()
    |> List.foldr({[], i}, fn d, {acc, rest} -> {[rem(rest, d) | acc], div(rest, d)} end)
    |> elem(0)
  end

  @doc "Asserts that two float tensors agree within `ulps` units in the last place."
  def assert_close(%Dense{} = got, %Dense{} = expected, ulps, context \\ "") do
    assert got.shape == expected.shape, "#{context}: shape"
    assert got.type == expected.type, "#{context}: type"
    distance = Ref.max_ulps(got, expected)

    if distance != 0 and (distance == :infinity or distance > ulps) do
      assert_same(got, expected, "#{context} (#{inspect(distance)} ulps, allowed #{ulps})")
    end

    got
  end

  @doc "The same tensor with every zero replaced by `value` (divisors)."
  def nonzero(%Dense{shape: shape, type: type} = t, value \\ 1) do
    t |> Ref.values() |> Enum.map(&if(&1 == 0, do: value, else: &1)) |> Ref.tensor(shape, type)
  end
end
