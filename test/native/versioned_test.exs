defmodule NxQuant.Native.VersionedTest do
  # put_slice into a versioned buffer (NxQuant.Native.Versioned): written in place, yet every
  # earlier tensor reads what it did — checked against NativeReference's put_slice chain, with
  # each old tensor read back after later writes (directly, as an operand, as a put_slice
  # target), forks, type changes, the undo log's cap, concurrent writers and forged handles.
  use ExUnit.Case, async: true

  import NxQuant.NativeCase
  alias NxQuant.{Dense, Native}
  alias NxQuant.Native.Versioned
  alias NxQuant.NativeReference, as: Ref

  # {heads, positions, head_dim} f32: 64 KB, the smallest versioned size
  @shape {8, 64, 32}

  defp cache(type \\ {:f, 32}), do: Ref.random(@shape, type, seed: 3)
  defp row(seed, type \\ {:f, 32}), do: Ref.random({8, 1, 32}, type, seed: seed)

  # the chain t_0 (a binary) -> t_1 -> ... and the reference's, step i writing row i at i
  defp chain(steps, type \\ {:f, 32}) do
    Enum.scan(1..steps, {cache(type), cache(type)}, fn i, {t, ref} ->
      r = row(100 + i, type)

      {Native.put_slice(t, [0, rem(i, 64), 0], r),
       Ref.put_slice(ref, [0, rem(i, 64), 0], r, type)}
    end)
  end

  test "small tensors stay binaries; from 64 KB a put_slice returns a versioned buffer" do
    small = Ref.random({8, 63, 32}, {:f, 32}, seed: 1)
    assert is_binary(Native.put_slice(small, [0, 1, 0], row(2)).data)

    assert %Versioned{bytes: 65_536, version: 0} =
             Native.put_slice(cache(), [0, 1, 0], row(2)).data
  end

  test "a chain of put_slices writes one buffer in place, and every version reads as it was" do
    steps = chain(20)

    refs = for {%Dense{data: %Versioned{ref: ref}}, _} <- steps, do: ref
    assert refs |> Enum.uniq() |> length() == 1
    assert Enum.map(steps, fn {t, _} -> t.data.version end) == Enum.to_list(0..19)

    assert %{newest_version: 19, undo_bytes: 19_456} =
             Versioned.info(hd(steps) |> elem(0) |> Map.get(:data))

    # read back after all the writes: as bytes, and through kernels that take operands
    for {{t, expected}, i} <- Enum.with_index(steps) do
      assert_same(t, expected, "version #{i}")
      assert_same(Native.unary(:negate, t, {:f, 32}), Ref.unary(:negate, expected, {:f, 32}))

      assert_same(
        Native.slice(t, [0, 2, 0], [8, 4, 32], [1, 1, 1]),
        Ref.slice(expected, [0, 2, 0], [8, 4, 32], [1, 1, 1])
      )
    end
  end

  test "a put_slice into an old version forks a new buffer and leaves the chain alone" do
    steps = chain(6)
    {old, old_ref} = Enum.at(steps, 2)
    {newest, newest_ref} = List.last(steps)
    r = row(7)

    fork = Native.put_slice(old, [0, 40, 0], r)
    assert fork.data.ref != old.data.ref and fork.data.version == 0
    assert_same(fork, Ref.put_slice(old_ref, [0, 40, 0], r, {:f, 32}))
    assert_same(newest, newest_ref)
    assert_same(old, old_ref)

    # the newest version still takes in-place writes after the fork
    next = Native.put_slice(newest, [0, 41, 0], r)
    assert next.data.ref == newest.data.ref and next.data.version == newest.data.version + 1
    assert_same(next, Ref.put_slice(newest_ref, [0, 41, 0], r, {:f, 32}))
  end

  test "a slice of another type converts into a new buffer of the merged type" do
    # a bf16 cache of 64 KB, versioned after one put_slice
    big = Ref.random({8, 128, 32}, {:bf, 16}, seed: 9)
    bf16_row = Ref.random({8, 1, 32}, {:bf, 16}, seed: 10)
    v = Native.put_slice(big, [0, 0, 0], bf16_row)
    assert %Versioned{} = v.data
    v_ref = Ref.put_slice(big, [0, 0, 0], bf16_row, {:bf, 16})

    f32_row = row(11)
    out = Native.put_slice(v, [0, 5, 0], f32_row)
    assert out.type == {:f, 32} and out.data.ref != v.data.ref
    assert_same(out, Ref.put_slice(v_ref, [0, 5, 0], f32_row, {:f, 32}))
    assert_same(v, v_ref)
  end

  test "the tensor put into itself is copied, not written while read" do
    [{t, ref} | _] = chain(1)
    out = Native.put_slice(t, [0, 0, 0], t)
    assert out.data.ref != t.data.ref
    assert_same(out, ref)
    assert_same(t, ref)
  end

  test "when the undo log reaches half the buffer a fresh buffer starts; all versions still read" do
    # 1 KB rows into a 64 KB buffer: 32 in-place writes fill the log's 32 KB
    steps = chain(70)
    refs = Enum.map(steps, fn {t, _} -> t.data.ref end)
    assert refs |> Enum.dedup() |> length() == 3

    for {%Dense{data: data}, _} <- steps do
      assert Versioned.info(data).undo_bytes <= 32 * 1024
    end

    for {{t, expected}, i} <- Enum.with_index(steps), do: assert_same(t, expected, "step #{i}")
  end

  test "concurrent writers of one version and readers of it all get their own answers" do
    [{base, base_ref} | _] = chain(1)

    results =
      1..8
      |> Task.async_stream(
        fn i ->
          r = row(200 + i)
          t = Native.put_slice(base, [0, 10 + i, 0], r)
          # read the base while others write into it
          _ = Native.unary(:negate, base, {:f, 32})
          {t, Ref.put_slice(base_ref, [0, 10 + i, 0], r, {:f, 32})}
        end,
        max_concurrency: 8
      )
      |> Enum.map(fn {:ok, pair} -> pair end)

    # exactly one writer got the base's buffer in place (the others found it taken or busy)
    in_place = Enum.count(results, fn {t, _} -> t.data.ref == base.data.ref end)
    assert in_place <= 1
    for {t, expected} <- results, do: assert_same(t, expected)
    assert_same(base, base_ref)
  end

  test "forged handles: a version that does not exist, a type the buffer does not hold" do
    [{t, _} | _] = chain(1)
    future = %{t | data: %{t.data | version: 5}}

    assert_raise ArgumentError,
                 ~r/version 5 of a versioned buffer whose newest version is 0/,
                 fn ->
                   Native.unary(:negate, future, {:f, 32})
                 end

    assert_raise ArgumentError, ~r/version 5/, fn -> Native.to_binary(future) end

    as_s32 = %{t | type: {:s, 32}}

    assert_raise ArgumentError, ~r/has type s32 but its versioned buffer holds f32/, fn ->
      Native.unary(:negate, as_s32, {:s, 32})
    end

    wrong_size = %{t | shape: {8, 64, 16}}

    assert_raise ArgumentError, ~r/65536 bytes of data, expected 32768/, fn ->
      Native.unary(:negate, wrong_size, {:f, 32})
    end
  end
end
