// The exact AVX2 decode GEMV (x86/avx2/gemv_lut_avx2.cpp), every width: x's layout against
// hand-computed positions and scalings, every shape, tail, group size and dtype against the
// scalar reference within the documented bound, exact products summed in f32 in the
// documented order, and batch invariance: a row's result bit-identical whatever m, however the
// rows of x are split between calls and the columns between threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"
#if defined(__x86_64__)
#include "x86/avx2/gemv_avx2.h"
#endif

using namespace nx_quant;
using namespace nx_quant::testing;

#if defined(__x86_64__)
namespace {

bool have_avx2() {
  return detail::cpu_features().avx2_fma;
}

// out[m][n] (as f32) of the kernel over columns [n_begin, n_end) of W (other columns 0).
std::vector<float> run_lut(const std::vector<float>& x, size_t m, const QuantizedMatrix& w,
                           size_t n_begin, size_t n_end, DType out_dtype = DType::F32) {
  const auto xs = avx2::prepare_lut(x.data(), m, w.cols, w.spec.group_size, w.spec.bits);
  TypedBuffer out(out_dtype, m * w.rows);
  avx2::gemv_nk_lut(xs, w, out_dtype, n_begin, n_end, out.bytes.data());
  std::vector<float> result(m * w.rows);
  for (size_t i = 0; i < result.size(); ++i) result[i] = out.at(i);
  return result;
}

// out[m][n] through the public entry point with the AVX2 kernel.
std::vector<float> run_api(const std::vector<float>& x, size_t m, const QuantizedMatrix& w,
                           int threads = 0) {
  std::vector<float> out(m * w.rows);
  ExecOptions options;
  options.kernel = KernelChoice::Avx2;
  options.threads = threads;
  quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w, true, DType::F32,
                   {out.data(), out.size() * 4}, options);
  return out;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, 4) == 0;
}

// Positions per lane and values per chunk, as documented in gemv_avx2.h.
int positions(int bits) {
  return bits == 2 ? 16 : (bits == 3 || bits == 4) ? 8 : 4;
}

// The bit where position j of lane l starts, and whether it is shifted down (the top of a
// 32-bit word) rather than masked in place.
int offset(int bits, int j, int l) {
  return bits * j + (bits == 5 && l % 2 == 1 ? 4 : 0);
}
bool shifted(int bits, int j) {
  return 32 % bits == 0 && j == positions(bits) - 1;
}

}  // namespace

TEST(Avx2LutGemv, XIsStoredInLaneOrderScaledByEachPositionsOffset) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  const size_t m = 2, k = 288;  // partial last chunks at every width with 64+ values per chunk
  const std::vector<float> x = random_values(m * k, 3);
  for (int bits : kAllBits) {
    const int p = positions(bits);
    const size_t chunk = 8 * static_cast<size_t>(p);
    const auto xs = avx2::prepare_lut(x.data(), m, k, 32, bits);
    ASSERT_EQ(xs.positions, p);
    ASSERT_EQ(xs.chunks, (k + chunk - 1) / chunk);
    ASSERT_EQ(xs.row_stride, xs.chunks * chunk);
    for (size_t i = 0; i < m; ++i) {
      for (size_t c = 0; c < xs.chunks; ++c) {
        for (int j = 0; j < p; ++j) {
          for (int l = 0; l < 8; ++l) {
            const size_t value = c * chunk + static_cast<size_t>(p * l + j);
            const int e = shifted(bits, j) ? 0 : offset(bits, j, l);
            const float expected = value < k ? std::ldexp(x[i * k + value], -e) : 0.0f;
            ASSERT_EQ(xs.values[i * xs.row_stride + (c * p + j) * 8 + l], expected)
                << bits << " bits, row " << i << " chunk " << c << " j " << j << " lane " << l;
          }
        }
      }
    }
    ASSERT_EQ(xs.group_sum.size(), m * k / 32);
    for (size_t g = 0; g < m * k / 32; ++g) {
      double sum = 0.0;
      for (size_t v = 0; v < 32; ++v) sum += x[g * 32 + v];
      ASSERT_NEAR(xs.group_sum[g], sum, 1e-5);
    }
  }
}

TEST(Avx2LutGemv, MatchesTheReferenceEveryWidthShapeGroupSizeAndDtype) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  // K: one chunk, partial last chunks, several chunks; N = 23: partial blocks of W rows (and
  // the last row's loads past the end of the packed buffer); m: 1 .. 8.
  for (int bits : kAllBits) {
    for (DType w_dtype : kAllDtypes) {
      for (int gs : kAllGroupSizes) {
        for (size_t k : {128, 160, 224, 384, 672}) {
          if (k % gs != 0) continue;
          const size_t n = 23;
          TypedBuffer dense(w_dtype, random_values(n * k, 11 + gs + bits, k));
          OwnedQuantized w(dense, n, k, {bits, gs});
          TypedBuffer wd(w_dtype, n * k);
          dequantize(w.matrix, wd.mbuf());
          for (size_t m : {1, 2, 3, 5, 8}) {
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

TEST(Avx2LutGemv, ProductsAreExactAndSummedInF32InTheDocumentedOrder) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  // Every q the largest, scale 1, bias 0, x = 1 + 2^-8 + 2^-23 (24 significant bits): q * x
  // has more bits than an f32, so only products formed exactly (inside FMAs, whatever power of
  // two x was stored scaled by) and summed in f32 in the kernel's order give the value computed
  // here with std::fma: per lane and chunk a chain of P FMAs from 0, chunk by chunk into the
  // lane's accumulator, then the 8 equal lanes reduced (exactly: powers of two).
  const size_t n = 6, k = 768;
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
    const std::vector<float> x(k, xv);
    const int p = positions(bits), chunks = static_cast<int>(k) / (8 * p);
    float t = 0.0f;
    for (int j = 0; j < p; ++j) t = std::fma(q, xv, t);
    float lane = 0.0f;
    for (int c = 0; c < chunks; ++c) lane = std::fma(t, 1.0f, lane);
    const float expected = 8.0f * lane;
    ASSERT_NE(expected, q * k * (1.0f + 1.0f / 256)) << "the last part of x must count";
    for (float v : run_lut(x, 1, w, 0, n)) ASSERT_EQ(v, expected) << bits << " bits";
  }
}

// Batch invariance: a row's result depends on that row of x only. The same 8 rows in one call,
// in every split between calls (as a server batching requests would send them), and with the
// columns split between threads at any boundary, give the same bits; through the public entry
// point with the AVX2 kernel (m <= 8: the decode GEMV).
TEST(Avx2LutGemv, BatchInvariantWhateverMTheRowSplitAndTheColumnSplit) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  const size_t n = 29, k = 448;
  for (int bits : kAllBits) {
    for (int gs : kAllGroupSizes) {
      if (k % gs != 0) continue;
      TypedBuffer dense(DType::BF16, random_values(n * k, 5 + bits, k));
      OwnedQuantized w(dense, n, k, {bits, gs});
      const std::vector<float> x8 = random_values(8 * k, 6);
      const std::vector<float> all = run_api(x8, 8, w.matrix, 1);
      const std::string what = std::to_string(bits) + " bits gs " + std::to_string(gs);
      // Rows [b, e) in one call, for every b < e.
      for (size_t b = 0; b < 8; ++b) {
        for (size_t e = b + 1; e <= 8; ++e) {
          const std::vector<float> part(x8.begin() + b * k, x8.begin() + e * k);
          const std::vector<float> out = run_api(part, e - b, w.matrix, 2);
          for (size_t i = 0; i < (e - b) * n; ++i) {
            ASSERT_TRUE(same_bits(out[i], all[b * n + i]))
                << what << " rows [" << b << ", " << e << ") at " << i;
          }
        }
      }
      // Columns split at boundaries that are not multiples of any block of W rows.
      std::vector<float> split(8 * n, 0.0f);
      for (auto [b, e] : {std::pair<size_t, size_t>{0, 3}, {3, 10}, {10, 13}, {13, n}}) {
        const std::vector<float> piece = run_lut(x8, 8, w.matrix, b, e);
        for (size_t i = 0; i < 8; ++i) {
          for (size_t j = b; j < e; ++j) split[i * n + j] = piece[i * n + j];
        }
      }
      for (size_t i = 0; i < 8 * n; ++i) ASSERT_TRUE(same_bits(split[i], all[i])) << what << i;
    }
  }
}

TEST(Avx2LutGemv, DispatchSendsEveryWidthUpToEightRowsHere) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  const size_t n = 40, k = 256;
  TypedBuffer dense(DType::BF16, random_values(n * k, 8, k));
  for (int bits : kAllBits) {
    OwnedQuantized w(dense, n, k, {bits, 64});
    for (size_t m : {1, 4, 8}) {
      for (DType x_dtype : kAllDtypes) {
        TypedBuffer x(x_dtype, random_values(m * k, 9));
        std::vector<float> xf(m * k);
        for (size_t i = 0; i < xf.size(); ++i) xf[i] = x.at(i);
        std::vector<float> out(m * n);
        ExecOptions options;
        options.kernel = KernelChoice::Avx2;
        quantized_matmul(x.cbuf(), x_dtype, m, w.matrix, true, DType::F32,
                         {out.data(), out.size() * 4}, options);
        const std::vector<float> expected = run_lut(xf, m, w.matrix, 0, n);
        for (size_t i = 0; i < m * n; ++i) {
          ASSERT_TRUE(same_bits(out[i], expected[i]))
              << bits << " bits, m " << m << " " << dtype_name(x_dtype) << " at " << i;
        }
      }
    }
  }
}
#endif  // __x86_64__

#if defined(__x86_64__)
// The AVX2 int8 GEMV: vpdpbusd (AVX-VNNI) and vpmaddubsw + vpmaddwd sum the same exact integers,
// so both give the same bits (the vpdpbusd path only where this CPU has AVX-VNNI); and a row's
// result does not depend on m.
TEST(Avx2Int8Gemv, AvxVnniAndMaddubswGiveTheSameBitsAndRowsDoNotDependOnM) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  const size_t n = 21, k = 416;  // partial last chunks at 2 and 4 bits
  for (int bits : {2, 4, 8}) {
    for (int gs : kAllGroupSizes) {
      if (k % gs != 0) continue;
      TypedBuffer dense(DType::F16, random_values(n * k, 40 + bits, k));
      OwnedQuantized w(dense, n, k, {bits, gs});
      const std::vector<float> x = random_values(8 * k, 41);
      auto run = [&](size_t m, const float* xp, bool vnni) {
        const auto xa = detail::quantize_activations(xp, m, k, gs);
        const auto operand = avx2::prepare_int8(xa, bits);
        std::vector<float> out(m * n);
        avx2::gemv_nk_int8(operand, w.matrix, DType::F32, 0, n, out.data(), vnni);
        return out;
      };
      // 8 rows: one pass of 8 rows of x per W row; 7: passes of 4, 2 and 1.
      const auto all = run(8, x.data(), false);
      const auto seven = run(7, x.data(), false);
      for (size_t j = 0; j < 7 * n; ++j)
        ASSERT_TRUE(same_bits(seven[j], all[j])) << bits << " " << gs;
      if (detail::cpu_features().avx_vnni) {
        const auto vnni = run(8, x.data(), true);
        ASSERT_EQ(0, std::memcmp(all.data(), vnni.data(), all.size() * 4)) << bits << " " << gs;
      }
      for (size_t i = 0; i < 8; ++i) {
        const auto one = run(1, x.data() + i * k, false);
        for (size_t j = 0; j < n; ++j) {
          ASSERT_TRUE(same_bits(one[j], all[i * n + j])) << bits << " gs " << gs << " row " << i;
        }
      }
    }
  }
}
// The int8 GEMV at every m up to 8 (m = 8 included, whatever the dispatch sends there) and both
// dot-product paths against the int8 formula evaluated in double: per group, scale_g * sum_b d_b
// * sum_j q_j * xq_j + bias_g * sum(x_g); partial last pairs of chunks at every width.
TEST(Avx2Int8Gemv, MatchesTheInt8FormulaUpToEightRows) {
  if (!have_avx2()) GTEST_SKIP() << "no AVX2 (or capped by NX_QUANT_MAX_ISA)";
  const size_t n = 13;
  for (int bits : {2, 4, 8}) {
    for (int gs : kAllGroupSizes) {
      for (size_t k : {128, 384, 640}) {
        if (k % gs != 0) continue;
        TypedBuffer dense(DType::BF16, random_values(n * k, 50 + bits + gs, k));
        OwnedQuantized w(dense, n, k, {bits, gs});
        const auto* words = static_cast<const uint32_t*>(w.matrix.packed.data);
        const size_t groups = k / gs;
        for (size_t m = 1; m <= 8; ++m) {
          const std::vector<float> x = random_values(m * k, 60 + m);
          const auto xa = detail::quantize_activations(x.data(), m, k, gs);
          const auto operand = avx2::prepare_int8(xa, bits);
          for (bool vnni : {false, true}) {
            if (vnni && !detail::cpu_features().avx_vnni) continue;
            std::vector<float> out(m * n);
            avx2::gemv_nk_int8(operand, w.matrix, DType::F32, 0, n, out.data(), vnni);
            for (size_t i = 0; i < m; ++i) {
              for (size_t j = 0; j < n; ++j) {
                double e = 0.0, sum_abs = 0.0;
                for (size_t g = 0; g < groups; ++g) {
                  const double scale =
                      load_as_f32(w.matrix.scales.data, DType::BF16, j * groups + g);
                  const double bias =
                      load_as_f32(w.matrix.biases.data, DType::BF16, j * groups + g);
                  for (size_t c = g * gs; c < (g + 1) * gs; ++c) {
                    const double q = reference::unpack_value(words + j * k * bits / 32, c, bits);
                    const double term = scale * xa.d[i * (xa.k_padded / 32) + c / 32] *
                                        xa.q[i * xa.k_padded + c] * q;
                    e += term;
                    sum_abs += std::abs(term);
                  }
                  e += bias * xa.group_sum[i * groups + g];
                  sum_abs += std::abs(bias * xa.group_sum[i * groups + g]);
                }
                ASSERT_NEAR(out[i * n + j], e, 2e-6 * sum_abs + 1e-30)
                    << bits << " bits, gs " << gs << ", k " << k << ", m " << m << ", vnni " << vnni
                    << " at (" << i << ", " << j << ")";
              }
            }
          }
        }
      }
    }
  }
}
#endif  // __x86_64__
