// The AVX2 module's plan of each operation (see plan.h): the decode GEMVs (exact LUT and int8)
// up to kGemvMaxRows rows of x, the panel GEMM beyond, and what the activations need. Compiled
// without AVX2 flags (CMakeLists.txt): it only chooses; the kernels are the *_avx2.cpp files.
#include "cpu_features.h"
#include "int8_activations.h"
#include "parallel.h"
#include "plan.h"
#include "portable/portable.h"
#include "simd_kernels.h"
#include "x86/avx2/gemv_avx2.h"

namespace nx_quant::avx2 {

namespace {

// Up to this many rows of x the int8 mode applies (as kernels.h documents for every kernel).
constexpr size_t kInt8MaxRows = 8;

void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, void* scales, void* biases, int threads) {
  detail::parallel_for(rows, 1, threads, [&](size_t begin, size_t end) {
    quantize_rows(dense, dtype, cols, spec, begin, end, packed, scales, biases);
  });
}

void dequantize(const QuantizedMatrix& w, bool transpose_out, void* out, int threads) {
  detail::parallel_for(w.rows, 1, threads, [&](size_t begin, size_t end) {
    // The transposed layout has no AVX2 loop: the portable one writes it.
    if (transpose_out) return portable::dequantize(w, true, begin, end, out);
    dequantize_rows(w, begin, end, out);
  });
}

void quantized_matmul(const detail::Activations& x, const QuantizedMatrix& w, bool transpose,
                      DType out_dtype, void* out, const ExecOptions& options) {
  const size_t m = x.m, k_dim = x.k;
  const size_t n_dim = transpose ? w.rows : w.cols;
  const int threads = options.threads;
  std::vector<float> scratch;
  const float* xf = x.f32(scratch);  // every AVX2 loop reads (or re-packs) f32 x
  if (options.precision == Precision::Int8 && transpose && m <= kInt8MaxRows &&
      has_int8_path(w.spec.bits)) {
    const auto xa =
        detail::quantize_activations(xf, m, k_dim, static_cast<size_t>(w.spec.group_size));
    const auto operand = prepare_int8(xa, w.spec.bits);
    const bool vnni = detail::cpu_features().avx_vnni;
    detail::parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
      gemv_nk_int8(operand, w, out_dtype, begin, end, out, vnni);
    });
    return;
  }
  // Other widths compute exactly in the int8 mode (it permits approximation, never needs it).
  if (transpose && m <= kGemvMaxRows) {  // decode: W read once, never dequantized
    const auto xs = prepare_lut(xf, m, k_dim, w.spec.group_size, w.spec.bits);
    detail::parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
      gemv_nk_lut(xs, w, out_dtype, begin, end, out);
    });
    return;
  }
  detail::parallel_for(n_dim, kGemmBlock, threads, [&](size_t begin, size_t end) {
    gemm(xf, m, w, transpose, out_dtype, begin, end, out);
  });
}

double estimated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose) {
  if (transpose && m <= kGemvMaxRows) {
    // The decode GEMV, one thread (bench/RESULTS.md, run h19x, loaded Xeon): ~0.045 ns per
    // multiply-add at m = 1 for 2 and 4 bits (estimated 0.055, not below AVX-512's estimate),
    // up to 0.07 for the other widths, ~0.035 more per further row of x (FMA-bound).
    const double weights = static_cast<double>(w.rows) * static_cast<double>(w.cols);
    const double macs = static_cast<double>(m) * weights;
    return weights * (w.spec.bits == 2 || w.spec.bits == 4 ? 0.02 : 0.035) + macs * 0.035;
  }
  // Elsewhere about twice as long as AVX-512 (half the vector width).
  return detail::avx512_calibrated_matmul_ns(m, w, transpose) * 2.0;
}

}  // namespace

const detail::KernelPlan kPlan = {quantize, dequantize, quantized_matmul, estimated_matmul_ns,
                                  1.0,      1.0};

}  // namespace nx_quant::avx2
