defmodule NxQuant.Config do
  @moduledoc """
  Quantization metadata of a quantized tensor, as in `EMLX.Quantization.Config`.

    * `:scales`, `:biases` - one per group, shape `{rows, cols / group_size}` of the *stored*
      matrix, in the quantized tensor's float dtype (microscaled modes: `{:u, 8}` scales and
      `biases: nil`). In the Nx-free core they are
      `NxQuant.Dense` structs whose binaries point into the native resource (no copy); in the
      Nx face they are `Nx.Tensor`s.
    * `:group_size` - 32, 64 or 128 (nvfp4: 16).
    * `:bits` - 2, 3, 4, 5, 6 or 8.
    * `:mode` - MLX's spelling: `"affine"` (`w = scale * q + bias`, the default), `"mxfp4"`,
      `"mxfp8"` or `"nvfp4"` (see the README's "Microscaled modes").
    * `:global_scale` - nvfp4's optional f32 global scale (MLX's `global_scale`: scales are
      encoded times `448 * 6 / global_scale`, dequantize multiplies by
      `global_scale / (448 * 6)`), `nil` when there is none.
  """

  @enforce_keys [:scales, :biases, :group_size, :bits]
  defstruct [:scales, :biases, :group_size, :bits, mode: "affine", global_scale: nil]

  @type t :: %__MODULE__{
          scales: term(),
          biases: term(),
          group_size: 16 | 32 | 64 | 128,
          bits: 2 | 3 | 4 | 5 | 6 | 8,
          mode: String.t(),
          global_scale: float() | nil
        }
end
