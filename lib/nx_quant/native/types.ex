defmodule NxQuant.Native.Types do
  @moduledoc """
  The element types of the native dense path (`NxQuant.Native`): Nx-style type tuples, their
  NIF atoms and byte sizes, and Nx's type merging rule. No Nx.

  Supported: `{:u, 8 | 16 | 32 | 64}`, `{:s, 8 | 16 | 32 | 64}`, `{:f, 16 | 32 | 64}`,
  `{:bf, 16}`. (Complex, f8 and 2/4-bit integer types are not: the Nx glue falls back to
  `Nx.BinaryBackend` for them.)
  """

  @types [
    {{:u, 8}, :u8, 1},
    {{:u, 16}, :u16, 2},
    {{:u, 32}, :u32, 4},
    {{:u, 64}, :u64, 8},
    {{:s, 8}, :s8, 1},
    {{:s, 16}, :s16, 2},
    {{:s, 32}, :s32, 4},
    {{:s, 64}, :s64, 8},
    {{:f, 16}, :f16, 2},
    {{:bf, 16}, :bf16, 2},
    {{:f, 32}, :f32, 4},
    {{:f, 64}, :f64, 8}
  ]

  @doc "Every supported type."
  def all, do: unquote(Enum.map(@types, &elem(&1, 0)))

  @doc "True for a supported type."
  def supported?(type)

  @doc "The NIF atom of a supported type (`:f32`, `:bf16`, `:s64`, ...), or nil."
  def atom(type)

  @doc "Bytes per element of a supported type, or nil."
  def size(type)

  for {type, atom, size} <- @types do
    def supported?(unquote(type)), do: true
    def atom(unquote(type)), do: unquote(atom)
    def size(unquote(type)), do: unquote(size)
  end

  def supported?(_), do: false
  def atom(_), do: nil
  def size(_), do: nil

  @doc "True for `{:f, _}` and `{:bf, _}`."
  def float?({kind, _}) when kind in [:f, :bf], do: true
  def float?(_), do: false

  @doc "True for `{:s, _}` and `{:u, _}`."
  def integer?({kind, _}) when kind in [:s, :u], do: true
  def integer?(_), do: false

  @doc """
  Nx.Type.merge/2 for the supported types: the type both values fit in (`{:u, 8}` and
  `{:s, 8}` give `{:s, 16}`, `{:bf, 16}` and `{:f, 16}` give `{:f, 16}`, an integer and a
  float give the float).
  """
  def merge({kind, left}, {kind, right}), do: {kind, max(left, right)}

  def merge(left, right) do
    case sort(left, right) do
      {{:u, size1}, {:s, size2}} -> {:s, max(min(size1 * 2, 64), size2)}
      {_, type2} -> type2
    end
  end

  defp rank(:f), do: 3
  defp rank(:bf), do: 2
  defp rank(:s), do: 1
  defp rank(:u), do: 0

  defp sort({l, _} = left, {r, _} = right) do
    if rank(l) < rank(r), do: {left, right}, else: {right, left}
  end
end
