if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.ShimProbeBackend do
    @moduledoc false
    # Nx.BinaryBackend under another name (its tensors stay %Nx.BinaryBackend{}), reporting to
    # the calling process the default backend each callback sees; subtract/3 raises.
    for {name, arity} <- Nx.Backend.behaviour_info(:callbacks), name != :init do
      args = Macro.generate_arguments(arity, __MODULE__)

      def unquote(name)(unquote_splicing(args)) do
        send(self(), {:probe, unquote(name), Process.get({Nx, :default_backend})})
        if unquote(name) == :subtract, do: raise(RuntimeError, "probe: subtract")
        apply(Nx.BinaryBackend, unquote(name), unquote(args))
      end
    end

    def init(opts), do: opts
  end

  defmodule NxQuant.ShimDefaultBackendTest do
    # Every call NxQuant.Backend delegates runs with the inner backend as the process's default
    # backend (Nx.BinaryBackend's own implementations create tensors on the default backend
    # and read them as their own), and the caller's default is restored afterwards.
    use ExUnit.Case, async: true
    @moduletag :nx

    @shim {NxQuant.Backend, backend: Nx.BinaryBackend}
    @probe {NxQuant.Backend, backend: NxQuant.ShimProbeBackend}
    @key {Nx, :default_backend}

    test "Nx keeps the default backend under the key the shim sets" do
      Nx.with_default_backend(Nx.BinaryBackend, fn ->
        assert Process.get(@key) == {Nx.BinaryBackend, []}
      end)
    end

    test "a delegated callback sees the inner backend as the default; the caller's comes back" do
      Nx.with_default_backend(@probe, fn ->
        caller = Process.get(@key)
        a = Nx.tensor([1.0, 2.0])
        assert_received {:probe, :from_binary, {NxQuant.ShimProbeBackend, []}}
        assert Process.get(@key) == caller

        assert Nx.to_flat_list(Nx.add(a, a)) == [2.0, 4.0]
        assert_received {:probe, :add, {NxQuant.ShimProbeBackend, []}}
        assert_received {:probe, :to_binary, {NxQuant.ShimProbeBackend, []}}
        assert Process.get(@key) == caller

        # Restored when the inner backend raises too.
        assert_raise RuntimeError, "probe: subtract", fn -> Nx.subtract(a, a) end
        assert_received {:probe, :subtract, {NxQuant.ShimProbeBackend, []}}
        assert Process.get(@key) == caller
      end)
    end

    test "with no default set in the process, none is left behind" do
      {:ok, a} = Nx.with_default_backend(@probe, fn -> {:ok, Nx.tensor([1.0, 2.0])} end)

      Process.delete(@key)
      assert Nx.to_flat_list(Nx.multiply(a, a)) == [1.0, 4.0]
      assert_received {:probe, :multiply, {NxQuant.ShimProbeBackend, []}}
      assert Process.get(@key) == nil
    end

    test "block/4's dense branch runs the inner backend's implementation under its default" do
      Nx.with_default_backend(@probe, fn ->
        t = Nx.tensor([3.0, 1.0, 2.0])
        {values, indices} = Nx.top_k(t, k: 2)
        assert_received {:probe, :block, {NxQuant.ShimProbeBackend, []}}
        assert Nx.to_flat_list(values) == [3.0, 2.0]
        assert Nx.to_flat_list(indices) == [0, 2]
        assert %NxQuant.Backend{} = values.data
      end)
    end

    # The operations whose Nx 0.13.1 doctests failed under the shim (FunctionClauseError in
    # Nx.BinaryBackend.to_binary/1) give Nx.BinaryBackend's results.
    defp both(fun) do
      plain = Nx.with_default_backend(Nx.BinaryBackend, fun)
      shim = Nx.with_default_backend(@shim, fun)
      {plain, shim}
    end

    defp assert_same({plain, shim}) do
      for {p, s} <- Enum.zip(List.wrap(plain), List.wrap(shim)) do
        assert %NxQuant.Backend{} = s.data
        assert {s.shape, s.type, s.names} == {p.shape, p.type, p.names}
        assert Nx.to_binary(s) == Nx.to_binary(p)
      end
    end

    test "top_k, take_along_axis, mode" do
      assert_same(
        both(fn -> Tuple.to_list(Nx.top_k(Nx.tensor([[3, 1, 2], [0, 5, 4]]), k: 2)) end)
      )

      assert_same(
        both(fn ->
          t = Nx.tensor([[1, 2, 3], [4, 5, 6]])
          Nx.take_along_axis(t, Nx.tensor([[0, 0, 2, 2, 1, 1], [2, 2, 1, 1, 0, 0]]), axis: 1)
        end)
      )

      assert_same(both(fn -> Nx.mode(Nx.tensor([[1, 2, 2, 3], [4, 4, 5, 5]]), axis: 1) end))
    end

    test "conv, window_reduce, window_scatter_max/min" do
      assert_same(
        both(fn ->
          Nx.conv(Nx.iota({1, 1, 3, 3}, type: :f32), Nx.iota({4, 1, 1, 1}, type: :f32),
            strides: [1, 1]
          )
        end)
      )

      assert_same(
        both(fn ->
          Nx.window_reduce(Nx.tensor([[1, 2, 3], [4, 5, 6]]), 0, {1, 2}, fn x, acc ->
            max(x, acc)
          end)
        end)
      )

      for scatter <- [&Nx.window_scatter_max/5, &Nx.window_scatter_min/5] do
        assert_same(
          both(fn ->
            t =
              Nx.tensor([
                [7, 2, 5, 3, 10, 2],
                [3, 8, 9, 3, 4, 2],
                [1, 5, 7, 5, 6, 1],
                [0, 6, 2, 7, 2, 8]
              ])

            scatter.(t, Nx.tensor([[2, 6], [3, 1]]), 0, {2, 3}, padding: :valid, strides: [2, 3])
          end)
        )
      end
    end

    test "Nx.Random.shuffle" do
      assert_same(
        both(fn ->
          key = Nx.Random.key(10)
          t = Nx.iota({3, 4}, axis: 1)
          {shuffled, _key} = Nx.Random.shuffle(key, t, independent: true, axis: 1)
          shuffled
        end)
      )
    end
  end
end
