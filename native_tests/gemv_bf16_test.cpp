// The exact 4-bit GEMV through bf16 dot products (CPUs with AVX512_BF16): the exact split of x
// into bf16 parts against hand-computed words, results that need every part, agreement with the
// f32-FMA GEMV it replaces, and non-finite activations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"
#if defined(__x86_64__)
#include "simd_kernels.h"  // the x86 kernels' internals (prepare_bf16)
#endif

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

bool have_bf16_dot() {
  return detail::cpu_features().avx512_bf16;
}

[[maybe_unused]] uint16_t high_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

[[maybe_unused]] float from_high_half(uint16_t h) {
  const uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A 4-bit [n, k] matrix with every value q and f32 scale 1, bias 0: w = q exactly.
struct ConstantNibbles {
  std::vector<uint32_t> packed;
  std::vector<float> scales, biases;
  QuantizedMatrix matrix;
  ConstantNibbles(size_t n, size_t k, int group_size, uint32_t q)
      : packed(n * k / 8, q * 0x11111111u),
        scales(n * k / group_size, 1.0f),
        biases(n * k / group_size, 0.0f) {
    matrix.packed = {packed.data(), packed.size() * 4};
    matrix.scales = {scales.data(), scales.size() * 4};
    matrix.biases = {biases.data(), biases.size() * 4};
    matrix.dtype = DType::F32;
    matrix.rows = n;
    matrix.cols = k;
    matrix.spec = {4, group_size};
  }
};

}  // namespace

#if defined(__x86_64__)
TEST(Bf16Dot, SplitsAreTheFewestThatRepresentXExactly) {
  if (!have_bf16_dot()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  const size_t k = 64;
  std::vector<float> x(k, 1.0f);
  x[3] = 0.15625f;  // 8 significant bits: one part
  EXPECT_EQ(avx512::prepare_bf16(x.data(), 1, k, 32).splits, 1);
  x[5] = 1.0f + 1.0f / 1024;  // 11 bits, an f16 value: two parts
  EXPECT_EQ(avx512::prepare_bf16(x.data(), 1, k, 32).splits, 2);
  x[7] = 1.0f + 1.0f / 256 + std::ldexp(1.0f, -23);  // 24 bits: three
  EXPECT_EQ(avx512::prepare_bf16(x.data(), 1, k, 32).splits, 3);
  std::vector<float> y(k, 2.0f);
  y[60] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(avx512::prepare_bf16(y.data(), 1, k, 32).splits, 3);
}

TEST(Bf16Dot, WordsHoldThePartsInNibbleOrder) {
  if (!have_bf16_dot()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  // Two rows of k = 160: one full chunk of 128 values and a partial one of 32.
  const size_t m = 2, k = 160;
  const std::vector<float> x = random_values(m * k, 3);
  const auto p = avx512::prepare_bf16(x.data(), m, k, 32);
  ASSERT_EQ(p.splits, 3);
  ASSERT_EQ(p.chunks, 2u);
  for (size_t i = 0; i < m; ++i) {
    for (size_t c = 0; c < 2; ++c) {
      for (size_t j = 0; j < 4; ++j) {
        for (size_t w = 0; w < 32; ++w) {
          // Word 2L holds value 8L + j of the chunk, word 2L+1 value 8L + 4 + j.
          const size_t value = c * 128 + 8 * (w / 2) + 4 * (w % 2) + j;
          float sum = 0.0f;
          for (int s = 0; s < 3; ++s) {
            sum += from_high_half(p.words[i * p.row_stride + ((c * 4 + j) * 3 + s) * 32 + w]);
          }
          const float expected = value < k ? x[i * k + value] : 0.0f;
          ASSERT_EQ(sum, expected) << "row " << i << " chunk " << c << " j " << j << " word " << w;
          if (value < k) {
            ASSERT_EQ(p.words[i * p.row_stride + ((c * 4 + j) * 3) * 32 + w],
                      high_half(expected) & 0xFFFF)
                << "the first part is x truncated to bf16";
          }
        }
      }
    }
  }
  // Group sums for the bias term.
  for (size_t g = 0; g < m * k / 32; ++g) {
    double sum = 0.0;
    for (size_t v = 0; v < 32; ++v) sum += x[g * 32 + v];
    EXPECT_NEAR(p.group_sum[g], sum, 1e-5);
  }
}

#endif  // __x86_64__

TEST(Bf16Dot, EveryBitOfF32ActivationsCounts) {
  // w = 1 everywhere and x = 1 + 2^-8 + 2^-23 (three bf16 parts): every partial sum is exact
  // in f32, so the result is exactly k * x; dropping the last part would lose 2^-16 of it.
  const float x_value = 1.0f + 1.0f / 256 + std::ldexp(1.0f, -23);
  for (size_t k : {128, 256}) {
    for (size_t m : {1, 2, 8}) {
      ConstantNibbles w(12, k, 64, 1);
      std::vector<float> x(m * k, x_value), out(m * 12);
      quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w.matrix, true, DType::F32,
                       {out.data(), out.size() * 4});
      const float expected = static_cast<float>(k) * x_value;  // exact: k is a power of 2
      for (float v : out) ASSERT_EQ(v, expected) << "k " << k << " m " << m;
    }
  }
}

#if defined(__x86_64__)
TEST(Bf16Dot, AgreesWithTheF32FmaGemv) {
  if (!have_bf16_dot()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  for (DType x_dtype : kAllDtypes) {
    for (int gs : kAllGroupSizes) {
      for (size_t k : {96, 256, 448}) {  // partial last chunks of 96 and 64 values
        if (k % gs != 0) continue;
        const size_t n = 37, m = 3;
        TypedBuffer dense(DType::BF16, random_values(n * k, 11, k));
        OwnedQuantized w(dense, n, k, {4, gs});
        TypedBuffer x(x_dtype, random_values(m * k, 12));
        // The kernels themselves: the dispatch sends f32 and f16 x to the table-lookup GEMV.
        std::vector<float> xf(m * k), fast(m * n), fma(m * n);
        for (size_t i = 0; i < xf.size(); ++i) xf[i] = x.at(i);
        const auto xs = avx512::prepare_bf16(xf.data(), m, k, gs);
        ASSERT_EQ(xs.splits, x_dtype == DType::F32 ? 3 : x_dtype == DType::F16 ? 2 : 1);
        avx512::gemv_nk_4bit_bf16(xs, w.matrix, DType::F32, 0, n, fast.data());
        avx512::gemv_nk(xf.data(), m, w.matrix, DType::F32, 0, n, fma.data());
        TypedBuffer wd(DType::BF16, n * k);
        dequantize(w.matrix, wd.mbuf());
        for (size_t i = 0; i < m; ++i) {
          for (size_t j = 0; j < n; ++j) {
            float sum_abs = 0.0f;
            for (size_t c = 0; c < k; ++c) sum_abs += std::abs(x.at(i * k + c) * wd.at(j * k + c));
            // Both are f32 sums of the same exact products, in different orders: closer to
            // each other than the documented 1e-5 * sum |x * w| bound to the exact result.
            ASSERT_NEAR(fast[i * n + j], fma[i * n + j], 2e-6f * sum_abs)
                << dtype_name(x_dtype) << " gs " << gs << " k " << k << " at " << i << ", " << j;
          }
        }
      }
    }
  }
}

#endif  // __x86_64__

TEST(QuantizedMatmul, NonFiniteActivationsGiveNonFiniteRowsOnEveryGemv) {
  const size_t n = 20, k = 256;
  TypedBuffer dense(DType::F32, random_values(n * k, 21, k));
  OwnedQuantized w(dense, n, k, {4, 64});
  detail::CpuFeatures no_bf16;
  no_bf16.avx2_fma = no_bf16.avx512 = no_bf16.avx512_vnni = true;
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    for (bool fma_only : {false, true}) {
      std::vector<float> x = random_values(2 * k, 22), out(2 * n);
      x[k + 77] = bad;  // row 1 only
      detail::CpuFeatures all;
      all.avx2_fma = all.avx512 = all.avx512_vnni = all.avx512_bf16 = true;
      detail::ScopedCpuFeatures scoped(fma_only ? no_bf16 : all);
      quantized_matmul({x.data(), x.size() * 4}, DType::F32, 2, w.matrix, true, DType::F32,
                       {out.data(), out.size() * 4});
      for (size_t j = 0; j < n; ++j) {
        EXPECT_TRUE(std::isfinite(out[j])) << "row 0 is untouched, column " << j;
        EXPECT_FALSE(std::isfinite(out[n + j])) << bad << " in row 1, column " << j;
      }
    }
  }
}
