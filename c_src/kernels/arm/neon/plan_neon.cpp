// The NEON module's plan for each operation (see plan.h; api.cpp validates the arguments and
// hands NEON calls here): which loop runs, with which thresholds and thread splits, and what
// the activations need.
#include "arm/neon/neon_kernels.h"
#include "cpu_features.h"
#include "int8_activations.h"
#include "parallel.h"
#include "plan.h"

namespace nx_quant::neon {

namespace {

// Decode-sized batches (fewer rows of x than this) stream W once per call; larger ones
// dequantize f32 panels of W and reuse them across rows (GEMM).
constexpr size_t kGemvMaxRows = 8;
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
    dequantize_rows(w, transpose_out, begin, end, out);
  });
}

void quantized_matmul(const detail::Activations& xs, const QuantizedMatrix& w, bool transpose,
                      DType out_dtype, void* out, const ExecOptions& options) {
  const size_t m = xs.m, k_dim = xs.k;
  const size_t n_dim = transpose ? w.rows : w.cols;
  std::vector<float> scratch;
  const float* x = xs.f32(scratch);  // every NEON loop reads (or quantizes) f32 x
  const auto& cpu = detail::cpu_features();
  if (options.precision == Precision::Int8 && transpose && m <= kInt8MaxRows && cpu.neon_dotprod) {
    const size_t gs = static_cast<size_t>(w.spec.group_size);
    const auto xa = detail::quantize_activations(x, m, k_dim, gs);
    if (cpu.neon_i8mm) {
      const auto pairs = prepare_int8_pairs(xa, gs);
      detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
        gemv_nk_int8_i8mm(pairs, w, out_dtype, begin, end, out);
      });
    } else {
      detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
        gemv_nk_int8_dotprod(xa, w, out_dtype, begin, end, out);
      });
    }
    return;
  }
  // Without dotprod the int8 mode computes exactly (it permits approximation, never needs it).
  if (transpose && m < kGemvMaxRows) {
    detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
      gemv_nk(x, m, w, out_dtype, begin, end, out);
    });
  } else if (!transpose && m < kGemvMaxRows) {
    detail::parallel_for(n_dim, kGemmBlock, options.threads, [&](size_t begin, size_t end) {
      gemv_kn(x, m, w, out_dtype, begin, end, out);
    });
  } else {
    detail::parallel_for(n_dim, kGemmBlock, options.threads, [&](size_t begin, size_t end) {
      gemm(x, m, w, transpose, out_dtype, begin, end, out);
    });
  }
}

double estimated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose) {
  // Not measured (no aarch64 machine; QEMU says nothing about speed). 128-bit vectors, two FMA
  // pipes on common server cores: taken as about twice AVX2, high rather than low.
  return detail::avx512_calibrated_matmul_ns(m, w, transpose) * 3.5;
}

}  // namespace

// Quantize and dequantize: not measured either; 4 lanes instead of 8 assumed.
const detail::KernelPlan kPlan = {quantize, dequantize, quantized_matmul, estimated_matmul_ns,
                                  1.5,      1.5};

}  // namespace nx_quant::neon
