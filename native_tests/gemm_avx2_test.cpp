// The AVX2 GEMM with transpose = true (m > 8; qmatmul_avx2.cpp): every width, group size and
// dtype against the scalar reference within the documented bound across its blockings (x
// blocks of <= 256 rows, 768-column blocks, 6-row W panels, 16- and 8-row slivers, partial K
// blocks), exact products summed in f32 in K order, and the same bits however the columns are
// split between threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

#if defined(__x86_64__)
namespace {

bool have_avx2() {
  return detail::cpu_features().avx2_fma;
}

std::vector<float> run_avx2(const std::vector<float>& x, size_t m, const QuantizedMatrix& w,
                            int threads, DType out_dtype = DType::F32) {
  TypedBuffer out(out_dtype, m * w.rows);
  ExecOptions options;
  options.kernel = KernelChoice::Avx2;
  options.threads = threads;
  quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w, true, out_dtype, out.mbuf(),
                   options);
  std::vector<float> result(m * w.rows);
  for (size_t i = 0; i < result.size(); ++i) result[i] = out.at(i);
  return result;
}

void expect_matches_reference(int bits, int gs, DType w_dtype, size_t n, size_t k, size_t m,
                              int threads, DType out_dtype) {
  TypedBuffer dense(w_dtype, random_values(n * k, 3 * bits + gs, k));
  OwnedQuantized w(dense, n, k, {bits, gs});
  TypedBuffer wd(w_dtype, n * k);
  dequantize(w.matrix, wd.mbuf());
  const std::vector<float> x = random_values(m * k, 5 + m);
  std::vector<float> expected(m * n);
  reference::quantized_matmul(x.data(), DType::F32, m, w.matrix, true, DType::F32, expected.data());
  const std::vector<float> out = run_avx2(x, m, w.matrix, threads, out_dtype);
  ASSERT_TRUE(within_f32_gemv_bound(out, expected, x, wd, m, n, k, out_dtype))
      << bits << " bits, gs " << gs << ", w " << dtype_name(w_dtype) << ", n " << n << ", k " << k
      << ", m " << m << ", threads " << threads;
}

}  // namespace

TEST(Avx2Gemm, MatchesTheReferenceEveryWidthGroupSizeAndDtype) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  // N = 781: one full 768-column block and a partial one, panels of 6 with 1 live row at the
  // end (and the last row's loads at the end of the packed buffer); K = 640: a partial last
  // K block; m = 9 (one 16-row sliver, 9 live), 30 (16 + 14).
  int seed = 0;
  for (int bits : kAllBits) {
    for (int gs : kAllGroupSizes) {
      const DType w_dtype = kAllDtypes[seed % 3];
      const DType out_dtype = kAllDtypes[(seed / 3) % 3];
      ++seed;
      for (size_t m : {9, 30})
        expect_matches_reference(bits, gs, w_dtype, 781, 640, m, 2, out_dtype);
    }
  }
}

TEST(Avx2Gemm, MatchesTheReferenceAcrossXBlocksAndSlivers) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  // m = 270: two x blocks of 144 and 126 rows, the last sliver 14 rows; m = 265: a last
  // sliver of 1 live row (the 8-row microkernel).
  for (int bits : {3, 4}) {
    for (size_t m : {265, 270})
      expect_matches_reference(bits, 64, DType::BF16, 50, 512, m, 1, DType::F32);
  }
}

TEST(Avx2Gemm, ProductsAreExactAndSummedInF32InKOrder) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  // Every q the largest, scale 1, bias 0, x = 1 + 2^-8 + 2^-23 (24 significant bits): q * x
  // has more bits than an f32, so only products formed exactly inside FMAs and accumulated in
  // f32 one k after the other (across K blocks too) give the chain computed here.
  const size_t n = 7, k = 768;
  const float xv = 1.0f + 1.0f / 256 + std::ldexp(1.0f, -23);
  for (int bits : kAllBits) {
    const float q = static_cast<float>((1 << bits) - 1);
    std::vector<uint32_t> packed(n * k * bits / 32, 0xFFFFFFFFu);
    std::vector<float> scales(n * k / 64, 1.0f), biases(n * k / 64, 0.0f);
    QuantizedMatrix w;
    w.packed = {packed.data(), packed.size() * 4};
    w.scales = {scales.data(), scales.size() * 4};
    w.biases = {biases.data(), biases.size() * 4};
    w.dtype = DType::F32;
    w.rows = n;
    w.cols = k;
    w.spec = {bits, 64};
    float expected = 0.0f;
    for (size_t c = 0; c < k; ++c) expected = std::fma(q, xv, expected);
    ASSERT_NE(expected, q * k * (1.0f + 1.0f / 256)) << "the last part of x must count";
    for (size_t m : {9, 20}) {
      const std::vector<float> x(m * k, xv);
      for (float v : run_avx2(x, m, w, 1)) ASSERT_EQ(v, expected) << bits << " bits, m " << m;
    }
  }
}

TEST(Avx2Gemm, SameBitsWhateverTheColumnSplit) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  const size_t n = 900, k = 256, m = 40;
  TypedBuffer dense(DType::BF16, random_values(n * k, 9, k));
  OwnedQuantized w(dense, n, k, {4, 64});
  const std::vector<float> x = random_values(m * k, 10);
  const std::vector<float> one = run_avx2(x, m, w.matrix, 1);
  for (int threads : {2, 3, 7}) {
    const std::vector<float> split = run_avx2(x, m, w.matrix, threads);
    ASSERT_EQ(std::memcmp(one.data(), split.data(), one.size() * 4), 0) << threads << " threads";
  }
}
#endif
