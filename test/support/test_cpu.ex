defmodule NxQuant.TestCpu do
  @moduledoc false
  # What the kernel that actually runs here computes, from the CPU features dispatch uses
  # (NxQuant.NIF.cpu_info/0: after the NX_QUANT_MAX_ISA cap), so that tests expect it.

  # Whether precision: :int8 approximates for a decode shape (transpose: true, fewer than 8
  # rows of x) with `bits`-bit weights, as c_src/kernels/api.cpp dispatches it: AVX-512 with
  # VNNI, NEON with dotprod and the portable loop (no AVX2, no NEON) have an int8 path for
  # every width, AVX2 (with or without AVX-VNNI) for 2, 4 and 8 bits; AVX-512 without VNNI,
  # NEON without dotprod, and AVX2 at 3, 5 and 6 bits compute exactly.
  def int8_approximates?(bits \\ 4) do
    case NxQuant.NIF.cpu_info() do
      %{neon: true, neon_dotprod: dotprod} -> dotprod
      %{avx512: true, avx512_vnni: vnni} -> vnni
      %{avx2_fma: true} -> bits in [2, 4, 8]
      %{} -> true
    end
  end

  # Whether Precision int8 approximates for the E2M1 microscaled modes (mxfp4, nvfp4): every
  # kernel but NEON's (mxfp8 always computes exactly).
  def microscaled_int8_approximates? do
    not match?(%{neon: true}, NxQuant.NIF.cpu_info())
  end
end
