if Code.ensure_loaded?(Nx) do
  defmodule NxQuant.NxHelpers do
    @moduledoc false
    import ExUnit.Assertions

    # A deterministic dense weight with a spread of magnitudes and signs, and its quantized form.
    def weight(shape, opts \\ []) do
      type = Keyword.get(opts, :type, :f32)
      bits = Keyword.get(opts, :bits, 4)
      group_size = Keyword.get(opts, :group_size, 32)
      w = wave(shape, 0.37, type)
      {w, NxQuant.quantize(w, type: {:s, bits}, group_size: group_size)}
    end

    def activation(shape, type \\ :f32), do: wave(shape, 0.91, type)

    defp wave(shape, phase, type) do
      n = Tuple.product(shape)

      Nx.iota({n}, type: :f32)
      |> Nx.multiply(phase)
      |> Nx.sin()
      |> Nx.multiply(Nx.add(Nx.remainder(Nx.iota({n}), 7), 1) |> Nx.divide(4))
      |> Nx.reshape(shape)
      |> Nx.as_type(type)
    end

    # The weight the fused kernel multiplies by: scale * q + bias evaluated in f32. (dequantize/1
    # rounds each weight to the scales' type, as MLX does; for f16/bf16 scales the kernel is more
    # precise than that.) Built from the same packed words with the scales and biases widened
    # to f32, which is exact.
    def kernel_weight(qw) do
      %{packed: packed, scales: scales, biases: biases} = NxQuant.parts(qw)
      %NxQuant.Config{bits: bits, group_size: gs} = NxQuant.config(qw)
      stored = NxQuant.Backend.quantized(qw)
      {rows, cols} = NxQuant.QuantizedTensor.stored_shape(stored)

      w =
        NxQuant.quantized_tensor(
          packed,
          Nx.as_type(scales, :f32),
          Nx.as_type(biases, :f32),
          {rows, cols},
          type: {:s, bits},
          group_size: gs
        )
        |> NxQuant.dequantize()

      if stored.transposed, do: Nx.transpose(w), else: Nx.reshape(w, qw.shape)
    end

    def tolerance(:f32), do: 1.0e-4
    def tolerance(_), do: 1.0e-2

    # Agreement relative to the size of the result (the kernel and Nx.BinaryBackend add in
    # different orders).
    def assert_close(got, expected, rtol \\ 1.0e-4) do
      assert got.shape == expected.shape
      got = Nx.as_type(got, :f64)
      expected = Nx.as_type(expected, :f64)
      scale = max(Nx.to_number(Nx.reduce_max(Nx.abs(expected))), 1.0)
      err = Nx.to_number(Nx.reduce_max(Nx.abs(Nx.subtract(got, expected))))

      assert err <= rtol * scale,
             "max abs error #{err} > #{rtol} * #{scale}\ngot: #{inspect(got)}\nexpected: #{inspect(expected)}"
    end
  end
end
