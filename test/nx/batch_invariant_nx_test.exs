if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.BatchInvariantNxTest do
    # Batch invariance from the Nx face: NxQuant.quantized_matmul's :batch_invariant option and
    # Nx.dot following config :nx_quant, :batch_invariant. A row of a 20-row batch (GEMM-sized
    # without the option) gives the same bits as that row alone. The kernels themselves are
    # checked in native_tests/batch_invariant_test.cpp and test/batch_invariant_test.exs.
    use ExUnit.Case, async: false
    @moduletag :nx

    import NxQuant.NxHelpers

    setup do
      previous = Application.fetch_env(:nx_quant, :batch_invariant)

      on_exit(fn ->
        case previous do
          {:ok, value} -> Application.put_env(:nx_quant, :batch_invariant, value)
          :error -> Application.delete_env(:nx_quant, :batch_invariant)
        end
      end)
    end

    defp row(t, i), do: t |> Nx.slice_along_axis(i, 1, axis: 0) |> Nx.to_binary()

    test "NxQuant.quantized_matmul(x, qw, batch_invariant: true): rows alone = rows in a batch" do
      {_w, qw} = weight({64, 256}, group_size: 64)
      x = activation({20, 256})
      batch = NxQuant.quantized_matmul(x, qw, batch_invariant: true)

      for i <- [0, 7, 19] do
        alone =
          NxQuant.quantized_matmul(Nx.slice_along_axis(x, i, 1, axis: 0), qw,
            batch_invariant: true
          )

        assert row(batch, i) == Nx.to_binary(alone)
      end

      jitted = Nx.Defn.jit(&NxQuant.quantized_matmul(&1, &2, batch_invariant: true)).(x, qw)
      assert Nx.to_binary(jitted) == Nx.to_binary(batch)

      assert_raise ArgumentError, ~r/option :batch_invariant must be a boolean/, fn ->
        NxQuant.quantized_matmul(x, qw, batch_invariant: :yes)
      end
    end

    test "Nx.dot follows config :nx_quant, :batch_invariant" do
      {_w, qw} = weight({64, 256}, group_size: 64)
      x = activation({20, 256})
      Application.put_env(:nx_quant, :batch_invariant, true)
      batch = Nx.dot(x, [1], qw, [1])

      for i <- [0, 19] do
        alone = Nx.dot(Nx.slice_along_axis(x, i, 1, axis: 0), [1], qw, [1])
        assert row(batch, i) == Nx.to_binary(alone)
      end

      assert Nx.to_binary(batch) ==
               Nx.to_binary(NxQuant.quantized_matmul(x, qw, batch_invariant: true))
    end
  end
end
