defmodule NxQuant.Native.Versioned do
  @moduledoc """
  The data of a dense tensor held in a versioned buffer (`c_src/nif/versioned_resource.h`):
  what `NxQuant.Native.put_slice/4` returns for large tensors, in place of a binary. No Nx.

  Nx tensors are immutable, so `Nx.put_slice` into a KV cache must leave the old tensor as it
  was; with binaries that means copying the whole cache every token. A versioned buffer is
  written in place instead — the piece only — and remembers what each write overwrote, so every
  earlier version still reads exactly as before (rebuilt into a copy when read, which a decode
  loop never does). `ref` is the buffer, `version` the one this tensor is, `bytes` its size.

  Every `NxQuant.Native` function accepts it wherever it accepts a binary; `to_binary/1` gives
  the bytes as an ordinary binary (a copy).
  """

  alias NxQuant.NIF

  @enforce_keys [:ref, :version, :bytes]
  defstruct [:ref, :version, :bytes]

  @type t :: %__MODULE__{ref: reference(), version: non_neg_integer(), bytes: non_neg_integer()}

  @doc false
  # From the NIF's handle {ref, version}.
  def new({ref, version}, bytes), do: %__MODULE__{ref: ref, version: version, bytes: bytes}

  @doc "The handle the NIFs take in an operand's data position."
  def handle(%__MODULE__{ref: ref, version: version}), do: {ref, version}

  @doc "This version's bytes as a new binary."
  def to_binary(%__MODULE__{} = v), do: NIF.dense_versioned_binary(handle(v))

  @doc """
  `%{version: v, newest_version: n, bytes: b, undo_bytes: u}`: this tensor's version, the
  buffer's newest one (equal unless later put_slices wrote into it), its size and the bytes its
  undo log holds.
  """
  def info(%__MODULE__{} = v) do
    {version, newest, bytes, undo} = NIF.dense_versioned_info(handle(v))
    %{version: version, newest_version: newest, bytes: bytes, undo_bytes: undo}
  end
end

defimpl Inspect, for: NxQuant.Native.Versioned do
  def inspect(%{version: version, bytes: bytes}, _opts),
    do: "#NxQuant.Native.Versioned<version #{version}, #{bytes} bytes>"
end
