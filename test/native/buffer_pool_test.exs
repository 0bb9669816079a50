defmodule NxQuant.Native.BufferPoolTest do
  # Not async: it reads the process-wide pool's counters.
  use ExUnit.Case, async: false

  alias NxQuant.{Dense, Native, NIF}

  @count 65_536

  defp ramp(count), do: for(i <- 0..(count - 1), into: <<>>, do: <<i + 0.5::float-32-native>>)

  test "large outputs come from recycled buffers once the previous ones are garbage collected" do
    a = %Dense{data: ramp(@count), shape: {@count}, type: {:f, 32}}
    expected = for i <- 0..(@count - 1), into: <<>>, do: <<-(i + 0.5)::float-32-native>>
    before = NIF.buffer_pool_stats()

    # (in a function of its own, so that no stack slot keeps the result alive)
    negate_is_right = fn -> Native.unary(:negate, a, {:f, 32}).data == expected end

    for _ <- 1..20 do
      # each result is correct although its buffer held the previous result's bytes
      assert negate_is_right.()
      :erlang.garbage_collect()
    end

    stats = NIF.buffer_pool_stats()
    assert stats.reused - before.reused >= 5
    assert stats.idle_bytes <= stats.limit_bytes
  end

  test "outputs below the pooled size are ordinary binaries and not counted" do
    a = %Dense{data: ramp(16), shape: {16}, type: {:f, 32}}
    before = NIF.buffer_pool_stats()
    for _ <- 1..10, do: Native.unary(:negate, a, {:f, 32})
    stats = NIF.buffer_pool_stats()
    assert stats.reused + stats.allocated == before.reused + before.allocated
  end

  test "a pooled binary stays valid while referenced, also as a sub-binary" do
    a = %Dense{data: ramp(@count), shape: {@count}, type: {:f, 32}}
    kept = Native.unary(:negate, a, {:f, 32}).data
    part = binary_part(kept, 4, 8)

    for _ <- 1..5 do
      Native.unary(:abs, a, {:f, 32})
      :erlang.garbage_collect()
    end

    assert part == <<-1.5::float-32-native, -2.5::float-32-native>>
    assert byte_size(kept) == 4 * @count
  end
end
