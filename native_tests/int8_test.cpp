// Precision::Int8 (the opt-in fast mode): the activation quantizer against hand-computed
// values, every int8 kernel against an independent double-precision evaluation of the same
// int8 formula, and the fast mode against the exact oracle within its documented error bound.
// Where the kernel that runs has no int8 path (AVX-512 without VNNI; AVX2 for 3-, 5- and 6-bit
// weights), the fast mode must instead give exactly the exact mode's bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "int8_activations.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

// A kernel choice and the CPU features it runs with (narrowed from what this CPU has, at or
// below NX_QUANT_MAX_ISA).
struct Int8Case {
  std::string name;
  KernelChoice kernel;
  detail::CpuFeatures features;
};

// Every kernel this CPU can run: the portable loop, Auto, each SIMD kernel explicitly, AVX2
// without AVX-VNNI (vpmaddubsw instead of vpdpbusd: the same bits), AVX-512 without VNNI
// (which computes exactly); NEON with i8mm, with dotprod only, and without either (which
// computes exactly).
std::vector<Int8Case> int8_cases() {
  const detail::CpuFeatures cpu = detail::cpu_features();
  std::vector<Int8Case> cases = {{"portable", KernelChoice::Portable, cpu},
                                 {"auto", KernelChoice::Auto, cpu}};
  if (cpu.avx2_fma) cases.push_back({"avx2", KernelChoice::Avx2, cpu});
  if (cpu.avx_vnni) {
    detail::CpuFeatures no_vnni = cpu;
    no_vnni.avx_vnni = false;
    cases.push_back({"avx2 without AVX-VNNI", KernelChoice::Avx2, no_vnni});
  }
  if (cpu.avx512) cases.push_back({"avx512", KernelChoice::Avx512, cpu});
  if (cpu.avx512_vnni) {
    detail::CpuFeatures no_vnni = cpu;
    no_vnni.avx512_vnni = false;
    cases.push_back({"avx512 without VNNI", KernelChoice::Avx512, no_vnni});
  }
  if (cpu.neon) cases.push_back({"neon", KernelChoice::Neon, cpu});
  if (cpu.neon_i8mm) {
    detail::CpuFeatures dotprod_only = cpu;
    dotprod_only.neon_i8mm = false;
    cases.push_back({"neon dotprod without i8mm", KernelChoice::Neon, dotprod_only});
  }
  if (cpu.neon_dotprod) {
    detail::CpuFeatures plain = cpu;
    plain.neon_dotprod = plain.neon_i8mm = false;
    cases.push_back({"neon without dotprod", KernelChoice::Neon, plain});
  }
  return cases;
}

// Whether Precision::Int8 approximates with `kernel` on the CPU features in force for `bits`-bit
// weights, as quantized_matmul dispatches it (c_src/kernels/api.cpp): the portable int8 loop,
// AVX-512 with VNNI, NEON with dotprod, AVX2 (with or without AVX-VNNI) for 2, 4 and 8 bits;
// every other kernel computes exactly. (Decode shapes only: transpose, m <= 8.)
bool int8_approximates(KernelChoice kernel, int bits) {
  const auto& cpu = detail::cpu_features();
  if (kernel == KernelChoice::Auto) {
    kernel = cpu.neon       ? KernelChoice::Neon
             : cpu.avx512   ? KernelChoice::Avx512
             : cpu.avx2_fma ? KernelChoice::Avx2
                            : KernelChoice::Portable;
  }
  return kernel == KernelChoice::Portable || (kernel == KernelChoice::Avx512 && cpu.avx512_vnni) ||
         (kernel == KernelChoice::Neon && cpu.neon_dotprod) ||
         (kernel == KernelChoice::Avx2 && (bits == 2 || bits == 4 || bits == 8));
}

// out[m, n] in f32 from x [m, k] against w stored [n, k], fast mode (or `precision`).
std::vector<float> run_int8(const std::vector<float>& x, size_t m, const QuantizedMatrix& w,
                            KernelChoice kernel, int threads,
                            Precision precision = Precision::Int8) {
  std::vector<float> out(m * w.rows);
  ExecOptions options;
  options.kernel = kernel;
  options.threads = threads;
  options.precision = precision;
  quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w, true, DType::F32,
                   {out.data(), out.size() * 4}, options);
  return out;
}

// Where `kernel` has no int8 path: the fast mode's result is the exact mode's, bit for bit.
void expect_exact_bits(const std::vector<float>& fast, const std::vector<float>& x, size_t m,
                       const QuantizedMatrix& w, KernelChoice kernel, const std::string& what) {
  const auto exact = run_int8(x, m, w, kernel, 0, Precision::Exact);
  ASSERT_EQ(fast.size(), exact.size());
  ASSERT_EQ(0, std::memcmp(fast.data(), exact.data(), fast.size() * 4))
      << what << ": without an int8 path the fast mode must compute exactly";
}

// The int8 formula evaluated independently in double: per group g,
// scale_g * sum_{b in g} d_b * sum_j q_j * xq_j  +  bias_g * sum_{j in g} x_j.
double int8_formula(const detail::Int8Activations& xa, size_t i, const QuantizedMatrix& w, size_t n,
                    double* sum_abs) {
  const auto* words = static_cast<const uint32_t*>(w.packed.data);
  const size_t words_per_row = w.cols * w.spec.bits / 32;
  const size_t gs = w.spec.group_size, groups = w.cols / gs;
  double total = 0.0;
  *sum_abs = 0.0;
  for (size_t g = 0; g < groups; ++g) {
    const double scale = load_as_f32(w.scales.data, w.dtype, n * groups + g);
    const double bias = load_as_f32(w.biases.data, w.dtype, n * groups + g);
    for (size_t k = g * gs; k < (g + 1) * gs; ++k) {
      const double q = reference::unpack_value(words + n * words_per_row, k, w.spec.bits);
      const double term =
          scale * xa.d[i * (xa.k_padded / 32) + k / 32] * xa.q[i * xa.k_padded + k] * q;
      total += term;
      *sum_abs += std::abs(term);
    }
    total += bias * xa.group_sum[i * groups + g];
    *sum_abs += std::abs(bias * xa.group_sum[i * groups + g]);
  }
  return total;
}

}  // namespace

TEST(Int8Activations, HandComputedBlock) {
  // One 32-value block with max |x| = 127, so d = 1 and q = round-half-even(x).
  std::vector<float> x(64, 0.0f);
  x[0] = 127.0f;
  x[1] = -63.5f;  // -> -64 (ties to even)
  x[2] = 0.5f;    // -> 0
  x[3] = 1.5f;    // -> 2
  x[4] = -2.25f;  // -> -2
  // Second block: max |x| = 2.54, d = 0.02, q = x / 0.02.
  x[32] = 2.54f;
  x[33] = -1.0f;  // -> -50
  const auto xa = detail::quantize_activations(x.data(), 1, 64, 32);
  ASSERT_EQ(xa.k_padded, 128u);
  EXPECT_EQ(xa.d[0], 1.0f);
  EXPECT_EQ(xa.d[1], 2.54f / 127.0f);
  const int8_t expected_first[] = {127, -64, 0, 2, -2, 0};
  for (int j = 0; j < 6; ++j) EXPECT_EQ(xa.q[j], expected_first[j]) << j;
  EXPECT_EQ(xa.q[32], 127);
  EXPECT_EQ(xa.q[33], -50);
  EXPECT_EQ(xa.group_sum[0], 127.0f - 63.5f + 0.5f + 1.5f - 2.25f);
  EXPECT_EQ(xa.group_sum[1], 2.54f - 1.0f);
}

TEST(Int8Activations, PaddingZeroAndNonFiniteBlocks) {
  // K = 96: padded to 128 with zero q and zero d; an all-zero block has d = 0; a block with an
  // infinity gets d = NaN and q = 0.
  std::vector<float> x(96, 0.0f);
  x[40] = std::numeric_limits<float>::infinity();
  x[41] = 3.0f;
  x[64] = 1e-40f;  // denormal: 127 / max overflows, so the block counts as zero
  const auto xa = detail::quantize_activations(x.data(), 1, 96, 32);
  ASSERT_EQ(xa.k_padded, 128u);
  ASSERT_EQ(xa.d.size(), 4u);
  EXPECT_EQ(xa.d[0], 0.0f);
  EXPECT_TRUE(std::isnan(xa.d[1]));
  EXPECT_EQ(xa.d[2], 0.0f);
  EXPECT_EQ(xa.d[3], 0.0f);
  for (size_t j = 0; j < 128; ++j) EXPECT_EQ(xa.q[j], 0) << j;
}

TEST(Int8Matmul, EveryKernelMatchesTheInt8FormulaAllBitsGroupsDtypes) {
  for (const Int8Case& c : int8_cases()) {
    detail::ScopedCpuFeatures scope(c.features);
    for (int bits : kAllBits) {
      const bool approximates = int8_approximates(c.kernel, bits);
      for (int gs : kAllGroupSizes) {
        for (DType wt : kAllDtypes) {
          // K = 3 * 128 + gs: not a multiple of 64 when gs = 32 (a final half chunk).
          const size_t k = 3 * 128 + gs, n = 37, m = bits == 4 ? 8 : bits == 2 ? 7 : 3;
          TypedBuffer dense(wt, random_values(n * k, bits * 7 + gs, k));
          OwnedQuantized w(dense, n, k, {bits, gs});
          const auto x = random_values(m * k, 5 + bits);
          const auto out = run_int8(x, m, w.matrix, c.kernel, 0);
          const std::string what = c.name + " bits " + std::to_string(bits) + " gs " +
                                   std::to_string(gs) + " " + dtype_name(wt);
          if (!approximates) {
            expect_exact_bits(out, x, m, w.matrix, c.kernel, what);
            continue;
          }
          const auto xa = detail::quantize_activations(x.data(), m, k, gs);
          for (size_t i = 0; i < m; ++i) {
            for (size_t j = 0; j < n; ++j) {
              double sum_abs;
              const double e = int8_formula(xa, i, w.matrix, j, &sum_abs);
              ASSERT_NEAR(out[i * n + j], e, 2e-6 * sum_abs + 1e-30)
                  << what << " at (" << i << ", " << j << ")";
            }
          }
        }
      }
    }
  }
}

TEST(Int8Matmul, WithinTheDocumentedBoundOfTheExactResult) {
  // |int8 - exact| <= sum_k |scale_k * q_k| * d_k / 2 (x's rounding to the int8 grid), plus
  // f32 accumulation error (1e-5 of sum |x * w|, as for the exact kernels).
  const size_t k = 1024, n = 64, m = 2;
  for (const Int8Case& c : int8_cases()) {
    detail::ScopedCpuFeatures scope(c.features);
    for (int bits : {2, 4, 8}) {
      const bool approximates = int8_approximates(c.kernel, bits);
      TypedBuffer dense(DType::BF16, random_values(n * k, 77 + bits, k));
      OwnedQuantized w(dense, n, k, {bits, 64});
      const auto x = random_values(m * k, 123);
      const auto out = run_int8(x, m, w.matrix, c.kernel, 0);
      if (!approximates) {
        expect_exact_bits(out, x, m, w.matrix, c.kernel, c.name + " bits " + std::to_string(bits));
        continue;
      }
      std::vector<double> exact(m * n);
      {
        std::vector<float> e(m * n);
        reference::quantized_matmul(x.data(), DType::F32, m, w.matrix, true, DType::F32, e.data());
        for (size_t i = 0; i < m * n; ++i) exact[i] = e[i];
      }
      const auto xa = detail::quantize_activations(x.data(), m, k, 64);
      const auto* words = static_cast<const uint32_t*>(w.matrix.packed.data);
      double worst_ratio = 0.0;
      for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j < n; ++j) {
          double bound = 0.0, sum_abs = 0.0;
          for (size_t kk = 0; kk < k; ++kk) {
            const double scale = w.scales.at(j * (k / 64) + kk / 64);
            const double bias = w.biases.at(j * (k / 64) + kk / 64);
            const double q = reference::unpack_value(words + j * (k * bits / 32), kk, bits);
            bound += std::abs(scale * q) * xa.d[i * (k / 32) + kk / 32] / 2;
            sum_abs += std::abs(x[i * k + kk] * (scale * q + bias));
          }
          const double err = std::abs(out[i * n + j] - exact[i * n + j]);
          ASSERT_LE(err, bound + 1e-5 * sum_abs)
              << c.name << " bits " << bits << " at (" << i << ", " << j << ")";
          worst_ratio = std::max(worst_ratio, err / bound);
        }
      }
      // The bound is not vacuous: the int8 rounding really moves the result.
      EXPECT_GT(worst_ratio, 0.01) << c.name << " bits " << bits;
    }
  }
}

TEST(Int8Matmul, BitIdenticalAcrossThreadCounts) {
  const size_t k = 4096, n = 300, m = 3;
  TypedBuffer dense(DType::F16, random_values(n * k, 3, k));
  OwnedQuantized w(dense, n, k, {4, 64});
  const auto x = random_values(m * k, 4);
  for (const Int8Case& c : int8_cases()) {
    detail::ScopedCpuFeatures scope(c.features);
    const auto one = run_int8(x, m, w.matrix, c.kernel, 1);
    for (int threads : {2, 3, 0}) {
      const auto many = run_int8(x, m, w.matrix, c.kernel, threads);
      ASSERT_EQ(0, std::memcmp(one.data(), many.data(), one.size() * 4))
          << c.name << " " << threads;
    }
  }
}

TEST(Int8Matmul, OtherShapesComputeExactly) {
  // transpose = false, or m > 8, is unaffected by Precision::Int8: same bits as Exact.
  TypedBuffer dense(DType::F32, random_values(128 * 256, 9, 256));
  OwnedQuantized w(dense, 128, 256, {4, 64});
  for (bool transpose : {true, false}) {
    const size_t m = transpose ? 9 : 1, k = transpose ? 256 : 128, n = transpose ? 128 : 256;
    const auto x = random_values(m * k, 10);
    std::vector<float> exact(m * n), fast(m * n);
    ExecOptions options;
    quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w.matrix, transpose, DType::F32,
                     {exact.data(), exact.size() * 4}, options);
    options.precision = Precision::Int8;
    quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w.matrix, transpose, DType::F32,
                     {fast.data(), fast.size() * 4}, options);
    EXPECT_EQ(0, std::memcmp(exact.data(), fast.data(), exact.size() * 4)) << transpose;
  }
}

TEST(Int8Matmul, NonFiniteActivationsGiveNaN) {
  TypedBuffer dense(DType::F32, random_values(8 * 128, 11, 128));
  OwnedQuantized w(dense, 8, 128, {4, 32});
  for (const Int8Case& c : int8_cases()) {
    detail::ScopedCpuFeatures scope(c.features);
    auto x = random_values(128, 12);
    x[70] = std::numeric_limits<float>::quiet_NaN();
    for (float v : run_int8(x, 1, w.matrix, c.kernel, 0)) EXPECT_TRUE(std::isnan(v)) << c.name;
    x[70] = -std::numeric_limits<float>::infinity();
    for (float v : run_int8(x, 1, w.matrix, c.kernel, 0)) EXPECT_FALSE(std::isfinite(v)) << c.name;
  }
}

TEST(Int8Matmul, BadPrecisionValueIsRefused) {
  TypedBuffer dense(DType::F32, random_values(32, 1));
  OwnedQuantized w(dense, 1, 32, {4, 32});
  std::vector<float> x(32), out(1);
  ExecOptions options;
  options.precision = static_cast<Precision>(7);
  EXPECT_THROW(quantized_matmul({x.data(), 128}, DType::F32, 1, w.matrix, true, DType::F32,
                                {out.data(), 4}, options),
               InvalidArgument);
}
