// The exact 4-bit GEMV with table-looked-up q and f32 FMAs (AVX-512, the f32-activation path):
// x's layout against hand-computed positions, every shape, tail, group size and dtype against
// the scalar reference within the documented bound, exact products, results independent of m
// and of the column split, and which activations the dispatch sends to it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"
#if defined(__x86_64__)
#include "simd_kernels.h"  // the x86 kernels' internals (prepare_f32, gemv_nk_4bit_f32)
#endif

using namespace nx_quant;
using namespace nx_quant::testing;

#if defined(__x86_64__)
namespace {

bool have_avx512() {
  return detail::cpu_features().avx512;
}

// out[m][n] (f32) of the table-lookup kernel over columns [n_begin, n_end) of W.
std::vector<float> run_lut(const std::vector<float>& x, size_t m, const QuantizedMatrix& w,
                           size_t n_begin, size_t n_end, DType out_dtype = DType::F32) {
  const auto xs = avx512::prepare_f32(x.data(), m, w.cols, w.spec.group_size, w.spec.bits);
  TypedBuffer out(out_dtype, m * w.rows);
  avx512::gemv_nk_f32lut(xs, w, out_dtype, n_begin, n_end, out.bytes.data());
  std::vector<float> result(m * w.rows);
  for (size_t i = 0; i < result.size(); ++i) result[i] = out.at(i);
  return result;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, 4) == 0;
}

}  // namespace

TEST(F32LutGemv, XIsStoredInWordOrderWithGroupSums) {
  if (!have_avx512()) GTEST_SKIP() << "no AVX-512 (or capped by NX_QUANT_MAX_ISA)";
  // Two rows of k = 288: 4 bits, two full chunks of 128 values and a partial one of 32;
  // 2 bits, one full chunk of 256 values and a partial one of 32.
  const size_t m = 2, k = 288;
  const std::vector<float> x = random_values(m * k, 3);
  for (int bits : {2, 4}) {
    const size_t per_word = 32 / bits, chunk = 16 * per_word;
    const auto p = avx512::prepare_f32(x.data(), m, k, 32, bits);
    ASSERT_EQ(p.bits, bits);
    ASSERT_EQ(p.chunks, bits == 4 ? 3u : 2u);
    ASSERT_EQ(p.row_stride, p.chunks * chunk);
    for (size_t i = 0; i < m; ++i) {
      for (size_t c = 0; c < p.chunks; ++c) {
        for (size_t j = 0; j < per_word; ++j) {
          for (size_t lane = 0; lane < 16; ++lane) {
            // Lane L of position j holds value per_word * L + j of the chunk: value j of word L.
            const size_t value = c * chunk + per_word * lane + j;
            const float expected = value < k ? x[i * k + value] : 0.0f;
            ASSERT_EQ(p.values[i * p.row_stride + (c * per_word + j) * 16 + lane], expected)
                << bits << " bits, row " << i << " chunk " << c << " j " << j << " lane " << lane;
          }
        }
      }
    }
  }
  const auto p = avx512::prepare_f32(x.data(), m, k, 32, 4);
  ASSERT_EQ(p.group_sum.size(), m * k / 32);
  for (size_t g = 0; g < m * k / 32; ++g) {
    double sum = 0.0;
    for (size_t v = 0; v < 32; ++v) sum += x[g * 32 + v];
    EXPECT_NEAR(p.group_sum[g], sum, 1e-5);
  }
}

TEST(F32LutGemv, MatchesTheReferenceEveryShapeGroupSizeAndDtype) {
  if (!have_avx512()) GTEST_SKIP() << "no AVX-512 (or capped by NX_QUANT_MAX_ISA)";
  // K: one chunk, partial last chunks of 32, 64 and 96 values, several chunks; N: partial
  // 4-row blocks; m: 1 .. 8 (pairs of x rows and a last single one).
  // 2 bits: chunks of 256 values, so K = 160 .. 384 also leave partial ones.
  for (int bits : {2, 4}) {
    for (DType w_dtype : kAllDtypes) {
      for (int gs : kAllGroupSizes) {
        for (size_t k : {128, 160, 192, 224, 256, 384, 672}) {
          if (k % gs != 0) continue;
          const size_t n = 23;
          TypedBuffer dense(w_dtype, random_values(n * k, 11 + gs, k));
          OwnedQuantized w(dense, n, k, {bits, gs});
          TypedBuffer wd(w_dtype, n * k);
          dequantize(w.matrix, wd.mbuf());
          for (size_t m = 1; m <= 8; ++m) {
            const std::vector<float> x = random_values(m * k, 12 + m);
            std::vector<float> expected(m * n);
            reference::quantized_matmul(x.data(), DType::F32, m, w.matrix, true, DType::F32,
                                        expected.data());
            for (DType out_dtype : kAllDtypes) {
              const std::vector<float> out = run_lut(x, m, w.matrix, 0, n, out_dtype);
              ASSERT_TRUE(within_f32_gemv_bound(out, expected, x, wd, m, n, k, out_dtype))
                  << bits << " bits, w " << dtype_name(w_dtype) << " gs " << gs << " k " << k
                  << " m " << m;
            }
          }
        }
      }
    }
  }
}

TEST(F32LutGemv, ProductsAreExactAndSummedInF32) {
  if (!have_avx512()) GTEST_SKIP() << "no AVX-512 (or capped by NX_QUANT_MAX_ISA)";
  // Every q the largest (15 or 3), scale 1, bias 0, x = 1 + 2^-8 + 2^-23 (24 significant
  // bits): q * x has more bits than an f32, so only products formed exactly (inside FMAs) and
  // summed in f32 in the kernel's order give the value computed here with std::fma in that
  // order: per lane and 64-byte chunk a chain of 32 / bits FMAs from 0, chunk by chunk into
  // the lane's accumulator, then the 16 equal lanes reduced (exactly: powers of two).
  const size_t n = 8, k = 512;
  const float xv = 1.0f + 1.0f / 256 + std::ldexp(1.0f, -23);
  for (int bits : {2, 4}) {
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
    const std::vector<float> x(k, xv);
    const int per_word = 32 / bits, chunks = static_cast<int>(k) / (16 * per_word);
    float t = 0.0f;
    for (int j = 0; j < per_word; ++j) t = std::fma(q, xv, t);
    float lane = 0.0f;
    for (int c = 0; c < chunks; ++c) lane = std::fma(t, 1.0f, lane);
    const float expected = 16.0f * lane;
    ASSERT_NE(expected, q * k * (1.0f + 1.0f / 256)) << "the last part of x must count";
    for (float v : run_lut(x, 1, w, 0, n)) ASSERT_EQ(v, expected) << bits << " bits";
  }
}

TEST(F32LutGemv, ARowsResultDependsOnlyOnThatRowNotOnMOrTheColumnSplit) {
  if (!have_avx512()) GTEST_SKIP() << "no AVX-512 (or capped by NX_QUANT_MAX_ISA)";
  const size_t n = 29, k = 448;
  for (int bits : {2, 4}) {
    for (int gs : kAllGroupSizes) {
      if (k % gs != 0) continue;
      TypedBuffer dense(DType::BF16, random_values(n * k, 5, k));
      OwnedQuantized w(dense, n, k, {bits, gs});
      const std::vector<float> x8 = random_values(8 * k, 6);
      const std::vector<float> all = run_lut(x8, 8, w.matrix, 0, n);
      for (size_t m = 1; m <= 8; ++m) {
        // The first m rows alone, and the last row alone (a pair in m = 8, single here).
        const std::vector<float> part(x8.begin(), x8.begin() + m * k);
        const std::vector<float> out = run_lut(part, m, w.matrix, 0, n);
        for (size_t i = 0; i < m * n; ++i) {
          ASSERT_TRUE(same_bits(out[i], all[i])) << "gs " << gs << " m " << m << " at " << i;
        }
      }
      const std::vector<float> last(x8.end() - k, x8.end());
      const std::vector<float> alone = run_lut(last, 1, w.matrix, 0, n);
      for (size_t j = 0; j < n; ++j) ASSERT_TRUE(same_bits(alone[j], all[7 * n + j])) << j;
      // Columns split at boundaries that are not multiples of the 4-row block.
      std::vector<float> split(8 * n, 0.0f);
      for (auto [b, e] : {std::pair<size_t, size_t>{0, 3}, {3, 10}, {10, 13}, {13, n}}) {
        const std::vector<float> piece = run_lut(x8, 8, w.matrix, b, e);
        for (size_t i = 0; i < 8; ++i) {
          for (size_t j = b; j < e; ++j) split[i * n + j] = piece[i * n + j];
        }
      }
      for (size_t i = 0; i < 8 * n; ++i) ASSERT_TRUE(same_bits(split[i], all[i])) << i;
    }
  }
}

TEST(F32LutGemv, DispatchSends2BitsAndF32AndF16ActivationsHereAndBf16OnesToTheBf16Dots) {
  if (!have_avx512()) GTEST_SKIP() << "no AVX-512 (or capped by NX_QUANT_MAX_ISA)";
  const size_t n = 40, k = 256, m = 3;
  TypedBuffer dense(DType::BF16, random_values(n * k, 8, k));
  for (int bits : {2, 4}) {
    OwnedQuantized w(dense, n, k, {bits, 64});
    detail::CpuFeatures no_bf16;
    no_bf16.avx2_fma = no_bf16.avx512 = no_bf16.avx512_vnni = true;
    for (bool bf16_dots : {true, false}) {
      if (bf16_dots && !detail::cpu_features().avx512_bf16) continue;
      detail::ScopedCpuFeatures scoped(bf16_dots ? detail::cpu_features() : no_bf16);
      for (DType x_dtype : kAllDtypes) {
        TypedBuffer x(x_dtype, random_values(m * k, 9));
        std::vector<float> xf(m * k);
        for (size_t i = 0; i < xf.size(); ++i) xf[i] = x.at(i);
        std::vector<float> out(m * n);
        quantized_matmul(x.cbuf(), x_dtype, m, w.matrix, true, DType::F32,
                         {out.data(), out.size() * 4});
        std::vector<float> expected;
        if (bf16_dots && x_dtype == DType::BF16 && bits == 4) {
          const auto xs = avx512::prepare_bf16(xf.data(), m, k, 64);
          expected.resize(m * n);
          avx512::gemv_nk_4bit_bf16(xs, w.matrix, DType::F32, 0, n, expected.data());
        } else {
          expected = run_lut(xf, m, w.matrix, 0, n);
        }
        for (size_t i = 0; i < m * n; ++i) {
          ASSERT_TRUE(same_bits(out[i], expected[i]))
              << bits << " bits, " << dtype_name(x_dtype) << (bf16_dots ? " with" : " without")
              << " BF16, at " << i;
        }
      }
    }
  }
}
#endif  // __x86_64__
