defmodule NxQuant.TestCpu do
  @moduledoc false
  # What the kernel that actually runs here computes, from the CPU features dispatch uses
  # (NxQuant.NIF.cpu_info/0: after the NX_QUANT_MAX_ISA cap), so that tests expect it.

  # Whether precision: :int8 approximates for a decode shape (transpose: true, fewer than 8
  # rows of x), as c_src/kernels/api.cpp dispatches it: AVX-512 with VNNI, NEON with dotprod,
  # or the portable loop (no AVX2, no NEON) have an int8 path; AVX2, AVX-512 without VNNI and
  # NEON without dotprod compute exactly.
  def int8_approximates? do
    case NxQuant.NIF.cpu_info() do
      %{neon: true, neon_dotprod: dotprod} -> dotprod
      %{avx512: true, avx512_vnni: vnni} -> vnni
      %{avx2_fma: true} -> false
      %{} -> true
    end
  end
end
