defmodule NxQuant.Native.BackendPlanTest do
  # The Nx-free decisions of NxQuant.NativeBackend (runs in CI, without Nx).
  use ExUnit.Case, async: true

  alias NxQuant.Native.BackendPlan, as: Plan

  test "the covered element-wise and reduction callbacks" do
    assert :exp in Plan.unary_ops() and :erf_inv in Plan.unary_ops()
    assert :is_nan in Plan.unary_ops() and :bitwise_not in Plan.unary_ops()
    # Complex-only and bit-counting callbacks are not covered: they fall back.
    for op <- [:conjugate, :real, :imag, :count_leading_zeros, :population_count] do
      refute op in Plan.unary_ops()
    end

    assert length(Plan.unary_ops()) == 32
    assert Plan.unary_ops() == Enum.uniq(Plan.unary_ops())

    # Every element-wise binary callback of Nx.Backend.
    assert length(Plan.binary_ops()) == 24
    assert Plan.binary_ops() == Enum.uniq(Plan.binary_ops())
    assert :right_shift in Plan.binary_ops() and :logical_xor in Plan.binary_ops()

    assert Plan.reduce_ops() == [:sum, :product, :reduce_max, :reduce_min, :all, :any]
  end

  test "block structs: native ones by name, every other one Nx's default composition" do
    assert Plan.block(Nx.Block.CumulativeSum) == {:cumulative, :cumulative_sum}
    assert Plan.block(Nx.Block.CumulativeProduct) == {:cumulative, :cumulative_product}
    assert Plan.block(Nx.Block.CumulativeMax) == {:cumulative, :cumulative_max}
    assert Plan.block(Nx.Block.CumulativeMin) == {:cumulative, :cumulative_min}
    assert Plan.block(Nx.Block.TopK) == :top_k
    assert Plan.block(Nx.Block.Take) == :take
    assert Plan.block(Nx.Block.TakeAlongAxis) == :take_along_axis
    assert Plan.block(Nx.Block.LogicalNot) == :logical_not

    for other <- [Nx.Block.LinAlg.QR, Nx.Block.AllClose, Nx.Block.Phase, Nx.Block.FFT2, Foo] do
      assert Plan.block(other) == :default
    end
  end

  test "pad: scalars are returned as they are, a type change falls back" do
    assert Plan.pad(0, {:f, 32}, {:f, 32}) == :identity
    assert Plan.pad(0, {:s, 32}, {:f, 32}) == :identity
    assert Plan.pad(2, {:bf, 16}, {:bf, 16}) == :native
    assert Plan.pad(1, {:s, 32}, {:f, 32}) == :fallback
    assert Plan.pad(3, {:f, 16}, {:f, 32}) == :fallback
  end

  test "sort/argsort: scalars fall back" do
    assert Plan.sort(0) == :fallback
    assert Plan.sort(1) == :native
    assert Plan.sort(4) == :native
  end

  test "clamp_starts: into [0, dim - length] per axis" do
    assert Plan.clamp_starts({4, 5}, [1, 2], [2, 3]) == [1, 2]
    assert Plan.clamp_starts({4, 5}, [3, 4], [2, 3]) == [2, 2]
    assert Plan.clamp_starts({4, 5}, [-1, -100], [2, 3]) == [0, 0]
    assert Plan.clamp_starts({4, 5}, [100, 0], [4, 5]) == [0, 0]
    assert Plan.clamp_starts({}, [], []) == []
  end

  test "index: a scalar integer tensor's value, any integer type; :error otherwise" do
    assert Plan.index(<<-3::signed-native-32>>, {:s, 32}) == -3
    assert Plan.index(<<-3::signed-native-64>>, {:s, 64}) == -3
    assert Plan.index(<<200>>, {:u, 8}) == 200
    assert Plan.index(<<-1::signed-native-8>>, {:s, 8}) == -1
    assert Plan.index(<<65_535::unsigned-native-16>>, {:u, 16}) == 65_535
    assert Plan.index(<<2 ** 63::unsigned-native-64>>, {:u, 64}) == 2 ** 63
    assert Plan.index(<<1.0::float-native-32>>, {:f, 32}) == :error
    assert Plan.index(<<1, 2>>, {:s, 32}) == :error
    assert Plan.index(<<1::4>>, {:u, 4}) == :error
  end

  test "prefix: the first `limit` elements, also of sub-byte types" do
    data = <<1, 2, 3, 4, 5, 6, 7, 8>>
    assert Plan.prefix(data, 2, {:s, 16}) == <<1, 2, 3, 4>>
    assert Plan.prefix(data, 4, {:s, 16}) == data
    assert Plan.prefix(data, 0, {:f, 32}) == <<>>
    assert Plan.prefix(data, 10, {:u, 8}) == data
    assert Plan.prefix(<<0b1011::4, 0b0110::4, 0b1111::4>>, 2, {:u, 4}) == <<0b10110110>>
    assert Plan.prefix(<<0b10::2, 0b01::2, 0b11::2>>, 1, {:u, 2}) == <<0b10::2>>
  end

  test "repeat: count copies of one element" do
    assert Plan.repeat(<<1, 2>>, 3) == <<1, 2, 1, 2, 1, 2>>
    assert Plan.repeat(<<7>>, 1) == <<7>>
    assert Plan.repeat(<<7>>, 0) == <<>>
    assert Plan.repeat(<<0b101::3>>, 3) == <<0b101101101::9>>
  end
end
