defmodule NxQuant.Native.SchedulingTest do
  # Calls estimated above ~1 ms move to a dirty CPU scheduler (the NIF re-runs itself
  # there); results do not depend on where a call ran, nor on concurrent callers.
  use ExUnit.Case, async: true

  import NxQuant.NativeCase
  alias NxQuant.Native
  alias NxQuant.NativeReference, as: Ref

  test "a large transcendental call (dirty) gives the reference's bits" do
    t = Ref.random({120_000}, {:f, 32}, seed: 21)
    assert_close(Native.unary(:exp, t, {:f, 32}), Ref.unary(:exp, t, {:f, 32}), 1, "exp")
  end

  test "a large matmul (dirty) equals the same products computed in small (normal) pieces" do
    # 8.4M multiply-adds (~1.7 ms estimated) against eight 1M pieces (~0.2 ms each).
    a = Ref.random({16, 512}, {:bf, 16}, seed: 22)
    b = Ref.random({512, 1024}, {:bf, 16}, seed: 23)
    whole = Native.dot(a, [1], [], b, [0], [], {:f, 32})

    pieces =
      for j <- 0..7 do
        block = Native.slice(b, [0, j * 128], [512, 128], [1, 1])
        Native.dot(a, [1], [], block, [0], [], {:f, 32})
      end

    assert_same(whole, Native.concatenate(pieces, 1, {:f, 32}))
  end

  test "concurrent callers (small and large calls) get the results of a lone caller" do
    small = Ref.random({4, 1024}, {:f, 32}, seed: 24)
    large = Ref.random({300, 1024}, {:f, 32}, seed: 25)

    work = fn ->
      [
        Native.binary(:add, small, small, {4, 1024}, {:f, 32}),
        Native.unary(:tanh, large, {:f, 32}),
        Native.reduce(:sum, large, [1], false, {:f, 32}),
        Native.transpose(large, [1, 0]),
        Native.dot(small, [1], [], large, [1], [], {:f, 32})
      ]
    end

    expected = work.()

    1..8
    |> Enum.map(fn _ -> Task.async(fn -> for _ <- 1..5, do: work.() end) end)
    |> Enum.flat_map(&Task.await(&1, 60_000))
    |> Enum.each(fn results ->
      Enum.zip_with(results, expected, &assert_same/2)
    end)
  end
end
