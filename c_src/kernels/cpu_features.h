// Runtime CPU-feature detection for kernel dispatch: one binary runs on any x86-64 (and the
// portable kernels everywhere else).
#pragma once

namespace nx_quant::detail {

struct CpuFeatures {
  bool avx2_fma = false;     // AVX2 + FMA + F16C
  bool avx512 = false;       // AVX-512 F, BW, VL, DQ and VBMI (byte permutes unpack any bit width)
  bool avx512_vnni = false;  // avx512 plus VNNI (int8 dot products, the Precision::Int8 path)
  bool avx512_bf16 = false;  // avx512 plus BF16 (bf16 dot products, the exact 4-bit GEMV)
};

// What this CPU supports, narrowed while a ScopedCpuFeatures is alive.
const CpuFeatures& cpu_features();

// Tests and benchmarks run every code path on one machine by switching features off (never
// on) for a scope. Not thread-safe: create it while no kernel runs.
class ScopedCpuFeatures {
 public:
  explicit ScopedCpuFeatures(const CpuFeatures& allowed);
  ~ScopedCpuFeatures();
  ScopedCpuFeatures(const ScopedCpuFeatures&) = delete;
  ScopedCpuFeatures& operator=(const ScopedCpuFeatures&) = delete;

 private:
  CpuFeatures saved_;
};

}  // namespace nx_quant::detail
