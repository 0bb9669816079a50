// estimated_matmul_ns: the run-time estimate the NIF uses to choose a normal or dirty scheduler.
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

TEST(EstimatedMatmulNs, PortableIsEstimatedSlowerThanSimd) {
  if (!detail::cpu_features().avx2_fma) GTEST_SKIP() << "no SIMD kernel on this CPU";
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
