// One dispatch point per operation: each kernel set (x86/avx512, x86/avx2, arm/neon, portable,
// and the reference oracle) describes itself with a KernelPlan, a table of the operations it
// plans whole (which loop, which thresholds and thread splits, what the activations need) and
// of its run-time estimates, as ggml's per-type trait tables do. api.cpp validates the
// arguments, resolves the KernelChoice and calls the plan's entry; microscaled modes have their
// own module (microscaled/). Arguments reaching a plan are valid; m and N are not zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "nx_quant/kernels.h"

namespace nx_quant::detail {

// x as the caller passed it: row-major [m, k] of `dtype`. A plan reads it in the form its loop
// needs; f32() gives f32 values, in place when x already is f32 (no copy).
struct Activations {
  const void* data = nullptr;
  DType dtype = DType::F32;
  size_t m = 0, k = 0;

  // x as f32: `data` itself if x is f32 and float-aligned, else converted once into `scratch`.
  const float* f32(std::vector<float>& scratch) const;
};

struct KernelPlan {
  void (*quantize)(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
                   uint32_t* packed, void* scales, void* biases, int threads);
  void (*dequantize)(const QuantizedMatrix& w, bool transpose_out, void* out, int threads);
  void (*quantized_matmul)(const Activations& x, const QuantizedMatrix& w, bool transpose,
                           DType out_dtype, void* out, const ExecOptions& options);
  // quantized_matmul's run time on one thread in ns, deliberately high (see kernels.h).
  double (*estimated_matmul_ns)(size_t m, const QuantizedMatrix& w, bool transpose);
  // quantize's and dequantize's compute time relative to the x86 SIMD kernels' (the estimates
  // in api.cpp add the page faults of fresh output).
  double quantize_slowdown, dequantize_slowdown;
};

// The plan of a resolved kernel choice (never Auto; only the kernel sets this build has).
const KernelPlan& plan_for(KernelChoice kernel);

// The shape model the estimates share, calibrated on the AVX-512 kernels (bench/RESULTS.md):
// decode GEMVs cost ~0.05 ns per multiply-add at 4 bits and ~0.1 at other widths, the GEMM path
// dequantizes every weight once per call (~0.4 ns each) and then runs at ~0.03 ns per
// multiply-add. Each plan scales it by its own speed (or replaces it where it measured its own).
double avx512_calibrated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose);

}  // namespace nx_quant::detail

namespace nx_quant::avx512 {
extern const detail::KernelPlan kPlan;
}
namespace nx_quant::avx2 {
extern const detail::KernelPlan kPlan;
}
namespace nx_quant::neon {
extern const detail::KernelPlan kPlan;
}
namespace nx_quant::portable {
extern const detail::KernelPlan kPlan;
}
