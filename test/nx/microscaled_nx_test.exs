if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.MicroscaledNxTest do
    # The microscaled modes (mxfp4, mxfp8, nvfp4) on Nx tensors: the same bytes as the Nx-free
    # core, config/1 and inspect showing the mode, Nx.dot against the dequantized weight.
    use ExUnit.Case, async: true
    @moduletag :nx

    alias NxQuant.{Config, Core}

    for mode <- [:mxfp4, :mxfp8, :nvfp4] do
      test "#{mode}: parts, config, inspect, dequantize and dot" do
        mode = unquote(mode)
        w = Nx.iota({8, 64}, type: :f32) |> Nx.subtract(200) |> Nx.divide(37)
        qw = NxQuant.quantize(w, mode: mode)
        {bits, gs} = NxQuant.Validate.mode_spec(mode)

        assert NxQuant.quantized?(qw)
        assert qw.type == {:s, bits}

        assert %Config{mode: mode_name, bits: ^bits, group_size: ^gs, scales: s, biases: nil} =
                 NxQuant.config(qw)

        assert mode_name == Atom.to_string(mode)
        assert s.type == {:u, 8} and s.shape == {8, div(64, gs)}
        assert inspect(qw) =~ "quantized #{mode} (#{bits}-bit, group_size #{gs}, uint8 scales)"

        core = Core.quantize(NxQuant.Backend.to_dense(w), mode: mode)
        assert Nx.to_binary(NxQuant.parts(qw).packed) == Core.parts(core).packed.data
        assert Nx.to_binary(s) == Core.parts(core).scales.data

        dq = NxQuant.dequantize(qw)
        assert Nx.to_binary(dq) == Core.dequantize(core).data

        x = Nx.iota({3, 64}, type: :f32) |> Nx.divide(64)
        out = Nx.dot(x, [1], qw, [1])
        expected = Nx.dot(x, [1], dq, [1])
        assert Nx.all_close(out, expected, atol: 1.0e-4, rtol: 1.0e-4) |> Nx.to_number() == 1

        rebuilt =
          NxQuant.quantized_tensor(NxQuant.parts(qw).packed, s, nil, {8, 64},
            mode: mode,
            dtype: :f32
          )

        assert Nx.to_binary(NxQuant.dequantize(rebuilt)) == Nx.to_binary(dq)
      end
    end

    test "a mode with a mismatched group size raises" do
      assert_raise ArgumentError, ~r/mode :mxfp4 has group_size 32, got: 64/, fn ->
        NxQuant.quantize(Nx.iota({2, 64}, type: :f32), mode: :mxfp4, group_size: 64)
      end
    end
  end
end
