// Runtime CPU-feature detection for kernel dispatch: one binary runs on any x86-64 (and the
// portable kernels everywhere else).
#pragma once

namespace nx_quant::detail {

struct CpuFeatures {
  bool avx2_fma = false;     // AVX2 + FMA + F16C
  bool avx512 = false;       // AVX-512 F, BW, VL, DQ and VBMI (byte permutes unpack any bit width)
  bool avx512_vnni = false;  // avx512 plus VNNI (int8 dot products, the Precision::Int8 path)
};

const CpuFeatures& cpu_features();

}  // namespace nx_quant::detail
