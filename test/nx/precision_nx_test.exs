if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.PrecisionNxTest do
    # The int8 fast mode from the Nx face: NxQuant.quantized_matmul's :precision option, and
    # Nx.dot following config :nx_quant, :matmul_precision. The numbers themselves are checked
    # against the bound in test/precision_test.exs; here: the option reaches the kernel. Where
    # the kernel that runs has no int8 path (NxQuant.TestCpu), int8 must give the exact bits.
    use ExUnit.Case, async: false
    @moduletag :nx

    import NxQuant.NxHelpers
    alias NxQuant.TestCpu

    setup do
      previous = Application.fetch_env(:nx_quant, :matmul_precision)

      on_exit(fn ->
        case previous do
          {:ok, value} -> Application.put_env(:nx_quant, :matmul_precision, value)
          :error -> Application.delete_env(:nx_quant, :matmul_precision)
        end
      end)
    end

    test "NxQuant.quantized_matmul(x, qw, precision: :int8) runs the fast mode" do
      {_w, qw} = weight({32, 256}, group_size: 64)
      x = activation({1, 256})
      exact = NxQuant.quantized_matmul(x, qw)
      fast = NxQuant.quantized_matmul(x, qw, precision: :int8)

      if TestCpu.int8_approximates?() do
        assert Nx.to_binary(exact) != Nx.to_binary(fast)
        assert_close(fast, exact, 2.0e-2)
      else
        assert Nx.to_binary(exact) == Nx.to_binary(fast)
      end

      jitted = Nx.Defn.jit(&NxQuant.quantized_matmul(&1, &2, precision: :int8)).(x, qw)
      assert Nx.to_binary(jitted) == Nx.to_binary(fast)

      assert_raise ArgumentError, ~r/option :precision must be :exact or :int8/, fn ->
        NxQuant.quantized_matmul(x, qw, precision: :fast)
      end
    end

    test "Nx.dot follows config :nx_quant, :matmul_precision" do
      {_w, qw} = weight({32, 256}, group_size: 64)
      x = activation({1, 256})
      exact = Nx.dot(x, [1], qw, [1])
      Application.put_env(:nx_quant, :matmul_precision, :int8)
      fast = Nx.dot(x, [1], qw, [1])
      assert Nx.to_binary(fast) == Nx.to_binary(NxQuant.quantized_matmul(x, qw, precision: :int8))

      if TestCpu.int8_approximates?(),
        do: assert(Nx.to_binary(fast) != Nx.to_binary(exact)),
        else: assert(Nx.to_binary(fast) == Nx.to_binary(exact))
    end
  end
end
