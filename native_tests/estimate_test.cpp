// estimated_matmul_ns, estimated_quantize_ns, estimated_dequantize_ns: the run-time estimates
// the NIF uses to choose a normal or dirty scheduler.
#include <gtest/gtest.h>

#include "cpu_features.h"
#include "nx_quant/kernels.h"

using namespace nx_quant;

namespace {

QuantizedMatrix shape_only(size_t rows, size_t cols, int bits) {
  QuantizedMatrix w;  // estimated_matmul_ns reads shape and spec only
  w.rows = rows;
  w.cols = cols;
  w.spec = {bits, 64};
  return w;
}

ExecOptions with_kernel(KernelChoice kernel) {
  ExecOptions o;
  o.kernel = kernel;
  return o;
}

}  // namespace

TEST(EstimatedMatmulNs, GrowsWithTheWork) {
  const auto w = shape_only(4096, 4096, 4);
  EXPECT_LT(estimated_matmul_ns(1, w, true), estimated_matmul_ns(2, w, true));
  EXPECT_LT(estimated_matmul_ns(8, w, true), estimated_matmul_ns(512, w, true));
  EXPECT_LT(estimated_matmul_ns(1, w, true),
            estimated_matmul_ns(1, shape_only(11008, 4096, 4), true));
  // Other widths and transpose=false (dequantized panels) are slower paths.
  EXPECT_LT(estimated_matmul_ns(1, w, true),
            estimated_matmul_ns(1, shape_only(4096, 4096, 3), true));
  EXPECT_LT(estimated_matmul_ns(1, w, true), estimated_matmul_ns(1, w, false));
}

TEST(EstimatedMatmulNs, BatchInvariantCallsAreEstimatedAsTheirGemvRowBlocks) {
  // batch_invariant runs 512 rows as 64 blocks of the 8-row decode GEMV, slower than the GEMM
  // the estimate must not be the GEMM's (an underestimate keeps a long call on a normal
  // scheduler).
  for (int bits : {4, 3, 8}) {
    const auto w = shape_only(4096, 4096, bits);
    ExecOptions invariant;
    invariant.batch_invariant = true;
    EXPECT_GE(estimated_matmul_ns(512, w, true, invariant),
              512 * estimated_matmul_ns(1, w, true, invariant))
        << bits;
    EXPECT_GE(estimated_matmul_ns(9, w, true, invariant),
              16 * estimated_matmul_ns(1, w, true, invariant))
        << bits;
    EXPECT_GE(estimated_matmul_ns(512, w, true, invariant), estimated_matmul_ns(512, w, true))
        << bits;
    EXPECT_DOUBLE_EQ(estimated_matmul_ns(3, w, true, invariant), estimated_matmul_ns(3, w, true))
        << bits;
  }
}

TEST(EstimatedMatmulNs, PortableIsEstimatedSlowerThanSimd) {
  if (!detail::cpu_features().avx2_fma && !detail::cpu_features().neon) {
    GTEST_SKIP() << "no SIMD kernel on this CPU";
  }
  const auto w = shape_only(1024, 1024, 4);
  const double portable = estimated_matmul_ns(1, w, true, with_kernel(KernelChoice::Portable));
  EXPECT_GT(portable, estimated_matmul_ns(1, w, true, with_kernel(KernelChoice::Auto)) * 10);
}

TEST(EstimatedMatmulNs, AnUnavailableKernelIsEstimatedAsPortable) {
  // The call itself will be refused; the estimate must not throw, and must not be optimistic.
  const auto w = shape_only(1024, 1024, 4);
  for (KernelChoice k : {KernelChoice::Avx2, KernelChoice::Avx512}) {
    EXPECT_GE(estimated_matmul_ns(1, w, true, with_kernel(k)),
              estimated_matmul_ns(1, w, true, with_kernel(KernelChoice::Auto)));
  }
}

TEST(EstimatedMatmulNs, DecodeOfA4096SquareLayerFitsANormalSchedulerSlice) {
  if (!detail::cpu_features().avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  // The policy in numbers (bench/RESULTS.md): a 4-bit 4096 x 4096 decode step (~0.3-0.7 ms
  // measured on one thread) stays under 1 ms; a 512-row prefill of it does not.
  const auto w = shape_only(4096, 4096, 4);
  EXPECT_LT(estimated_matmul_ns(1, w, true), 1e6);
  EXPECT_GT(estimated_matmul_ns(512, w, true), 1e6);
  EXPECT_GT(estimated_matmul_ns(1, shape_only(11008, 4096, 4), true), 1e6);
}

TEST(EstimatedMatmulNs, Avx2DecodeOfA4096SquareLayerFitsANormalSchedulerSlice) {
  if (!detail::cpu_features().avx2_fma) GTEST_SKIP() << "no AVX2 on this CPU";
  // The AVX2 decode GEMV (m <= 8) reads W once: a 4-bit 4096 x 4096 step (~0.8 ms on one
  // loaded thread) stays on a normal scheduler; 8 rows, a prefill, or 8 bits do not.
  const auto w = shape_only(4096, 4096, 4);
  const ExecOptions avx2 = with_kernel(KernelChoice::Avx2);
  EXPECT_LT(estimated_matmul_ns(1, w, true, avx2), 1e6);
  EXPECT_GT(estimated_matmul_ns(8, w, true, avx2), 1e6);
  EXPECT_GT(estimated_matmul_ns(512, w, true, avx2), estimated_matmul_ns(8, w, true, avx2));
  EXPECT_GT(estimated_matmul_ns(1, shape_only(4096, 4096, 8), true, avx2), 1e6);
}

// estimated_quantize_ns / estimated_dequantize_ns: the NIF sends conversions estimated over
// 0.1 ms to a dirty scheduler (c_src/nif/terms.h kConversionBudgetNs).
TEST(EstimatedConversionNs, GrowWithTheWorkAndTheOutput) {
  const QuantSpec spec{4, 64};
  EXPECT_LT(estimated_quantize_ns(32, 1024, spec, DType::F32),
            estimated_quantize_ns(64, 1024, spec, DType::F32));
  EXPECT_LT(estimated_quantize_ns(64, 1024, {4, 64}, DType::F32),
            estimated_quantize_ns(64, 1024, {8, 64}, DType::F32));
  auto w = shape_only(64, 1024, 4);
  w.dtype = DType::BF16;
  const double bf16 = estimated_dequantize_ns(w, false);
  w.dtype = DType::F32;
  EXPECT_LT(bf16, estimated_dequantize_ns(w, false));  // half the output bytes
  EXPECT_LT(estimated_dequantize_ns(w, false), estimated_dequantize_ns(w, true));
}

TEST(EstimatedConversionNs, PortableIsEstimatedSlowerThanSimd) {
  if (!detail::cpu_features().avx2_fma) GTEST_SKIP() << "no SIMD kernel on this CPU";
  const QuantSpec spec{4, 64};
  EXPECT_GT(estimated_quantize_ns(64, 1024, spec, DType::F32, with_kernel(KernelChoice::Portable)),
            estimated_quantize_ns(64, 1024, spec, DType::F32) * 3);
  for (KernelChoice k : {KernelChoice::Avx2, KernelChoice::Avx512}) {  // maybe unavailable
    EXPECT_GE(estimated_quantize_ns(64, 1024, spec, DType::F32, with_kernel(k)),
              estimated_quantize_ns(64, 1024, spec, DType::F32));
  }
}

TEST(EstimatedConversionNs, TheIssuesHalfMillisecondQuantizeIsOverTheBudget) {
  if (!detail::cpu_features().avx2_fma) GTEST_SKIP() << "no SIMD kernel on this CPU";
  // The policy in numbers: a 192 x 1024 f32 quantize (0.2-0.45 ms measured, loaded machine)
  // and a 64 x 1024 dequantize (~0.3 ms) are over 0.1 ms; 32 x 1024 / 16 x 1024 are under.
  EXPECT_GT(estimated_quantize_ns(192, 1024, {4, 64}, DType::F32), 1e5);
  EXPECT_LT(estimated_quantize_ns(32, 1024, {4, 64}, DType::F32), 1e5);
  auto w = shape_only(64, 1024, 4);
  w.dtype = DType::F32;
  EXPECT_GT(estimated_dequantize_ns(w, false), 1e5);
  w.rows = 16;
  EXPECT_LT(estimated_dequantize_ns(w, false), 1e5);
}
