// quantize and dequantize: every optimised kernel against the reference, bit for bit, on
// data built to hit the edge cases of the vector code: NaN, infinities, signed zeros,
// subnormals (f16 and f32), constant groups, huge values that overflow f16 after rounding,
// rows whose length leaves a final half chunk (cols = 64 * n + 32), and NaN/inf scales.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

// The portable kernel, and each SIMD one this CPU can run (Auto is the widest).
std::vector<KernelChoice> conversion_kernels() {
  std::vector<KernelChoice> kernels = {KernelChoice::Portable, KernelChoice::Auto};
  if (detail::cpu_features().avx2_fma) kernels.push_back(KernelChoice::Avx2);
  if (detail::cpu_features().neon) kernels.push_back(KernelChoice::Neon);
  return kernels;
}

std::vector<float> nasty_values(size_t count, uint32_t seed) {
  auto v = random_values(count, seed, 32);
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            0.0f,
                            -0.0f,
                            1e-40f,    // f32 subnormal
                            -3e-6f,    // f16 subnormal
                            65519.0f,  // rounds to the largest f16
                            70000.0f,  // beyond f16
                            1e30f};
  // Row 0: untouched; then one special per 96-value window, and whole constant groups.
  for (size_t i = 96; i < count; i += 97) v[i] = specials[(i / 97) % 10];
  for (size_t i = 0; i < 32 && 640 + i < count; ++i) v[640 + i] = 2.5f;
  for (size_t i = 0; i < 32 && 704 + i < count; ++i) v[704 + i] = -0.0f;
  for (size_t i = 0; i < 32 && 768 + i < count; ++i) v[768 + i] = 1e-41f * static_cast<float>(i);
  return v;
}

// AVX-512 dequantizes 5-8-bit bf16 with vcvtneps2bf16 where AVX512_BF16 is present: test with
// and without it.
std::vector<detail::CpuFeatures> bf16_variants() {
  std::vector<detail::CpuFeatures> variants = {detail::cpu_features()};
  if (variants[0].avx512_bf16) {
    variants.push_back(variants[0]);
    variants.back().avx512_bf16 = false;
  }
  return variants;
}

}  // namespace

TEST(Conversion, QuantizeMatchesReferenceOnSpecialValuesAndHalfChunks) {
  for (KernelChoice kernel : conversion_kernels()) {
    for (int bits : kAllBits) {
      for (int gs : kAllGroupSizes) {
        for (DType dtype : kAllDtypes) {
          const size_t cols = gs == 32 ? 160 : 384, rows = 6;
          TypedBuffer dense(dtype, nasty_values(rows * cols, bits + gs));
          OwnedQuantized expected(dense, rows, cols, {bits, gs}, KernelChoice::Reference);
          OwnedQuantized got(dense, rows, cols, {bits, gs}, kernel, 2);
          ASSERT_EQ(got.packed, expected.packed)
              << "kernel " << int(kernel) << " " << bits << "/" << gs << "/" << dtype_name(dtype);
          ASSERT_EQ(got.scales.bytes, expected.scales.bytes) << bits << "/" << gs;
          ASSERT_EQ(got.biases.bytes, expected.biases.bytes) << bits << "/" << gs;
        }
      }
    }
  }
}

TEST(Conversion, DequantizeMatchesReferenceWithSpecialScalesBothOrientations) {
  for (const auto& features : bf16_variants()) {
    detail::ScopedCpuFeatures scoped(features);
    for (KernelChoice kernel : conversion_kernels()) {
      for (int bits : kAllBits) {
        for (int gs : kAllGroupSizes) {
          for (DType dtype : kAllDtypes) {
            const size_t rows = 5, cols = gs == 32 ? 160 : 384;
            TypedBuffer dense(dtype, random_values(rows * cols, bits, cols));
            OwnedQuantized q(dense, rows, cols, {bits, gs}, KernelChoice::Reference);
            // Overwrite some scales and biases with specials and extreme values.
            const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                                      std::numeric_limits<float>::infinity(),
                                      -0.0f,
                                      6e-8f,
                                      60000.0f,
                                      -1e-39f};
            for (size_t i = 0; i < q.scales.count(); i += 3) {
              store_from_f32(q.scales.bytes.data(), dtype, i, specials[i % 6]);
              store_from_f32(q.biases.bytes.data(), dtype, (i + 1) % q.biases.count(),
                             specials[(i + 2) % 6]);
            }
            for (bool transpose_out : {false, true}) {
              TypedBuffer expected(dtype, rows * cols), got(dtype, rows * cols);
              reference::dequantize(q.matrix, expected.bytes.data(), transpose_out);
              ExecOptions options;
              options.kernel = kernel;
              options.threads = 2;
              dequantize(q.matrix, got.mbuf(), transpose_out, options);
              ASSERT_EQ(got.bytes, expected.bytes)
                  << "kernel " << int(kernel) << " bits " << bits << " gs " << gs << " "
                  << dtype_name(dtype) << " transpose " << transpose_out;
            }
          }
        }
      }
    }
  }
}

// The bf16 dequantize of 5-8-bit values rounds with vcvtneps2bf16 only in groups whose scale and
// bias keep every intermediate a normal number (or 0 or inf): at and around that bound,
// denormal products (scale 1e-39), denormal sums of normal operands (1.5 * 2^-126 - 2^-126) and
// overflowing products, the result is still the reference's bit for bit.
TEST(Conversion, DequantizeBf16RoundingAtTinyAndHugeScales) {
  const std::pair<float, float> scale_bias[] = {
      {0x1.8p-126f, -0x1p-126f}, {0x1p-100f, -0x1.8p-100f}, {-0x1p-100f, 0.0f},
      {0x1.8p-101f, 0x1p-101f},  {0x1p-100f, -0x1p-107f},   {1e-39f, 0x1p-126f},
      {-0x1p-120f, 0x1.4p-119f}, {3e36f, -1e38f},           {-3e36f, 3e38f},
      {0x1p-99f, -0x1p-92f}};
  for (const auto& features : bf16_variants()) {
    detail::ScopedCpuFeatures scoped(features);
    for (int bits : {5, 6, 8}) {
      for (int gs : kAllGroupSizes) {
        const size_t rows = 4, cols = 2 * static_cast<size_t>(gs) * 5;
        TypedBuffer dense(DType::BF16, random_values(rows * cols, bits + gs, cols));
        OwnedQuantized q(dense, rows, cols, {bits, gs}, KernelChoice::Reference);
        for (size_t g = 0; g < q.scales.count(); ++g) {
          const auto [s, b] = scale_bias[g % std::size(scale_bias)];
          store_from_f32(q.scales.bytes.data(), DType::BF16, g, s);
          store_from_f32(q.biases.bytes.data(), DType::BF16, g, b);
        }
        TypedBuffer expected(DType::BF16, rows * cols), got(DType::BF16, rows * cols);
        reference::dequantize(q.matrix, expected.bytes.data(), false);
        dequantize(q.matrix, got.mbuf(), false, {});
        ASSERT_EQ(got.bytes, expected.bytes)
            << "bits " << bits << " gs " << gs << " bf16 " << features.avx512_bf16;
      }
    }
  }
}

// Values a few ulps either side of every bias + (k + 0.5) * scale: (w - bias) / scale lands on
// and around half-integers, where rint's ties-to-even and any shortcut for the division (such
// as a multiplication by the reciprocal, which parts from it there) show.
TEST(Conversion, QuantizeValuesAtHalfIntegerQuotients) {
  for (KernelChoice kernel : conversion_kernels()) {
    for (int bits : kAllBits) {
      const int gs = 64;
      const size_t rows = 8, cols = 64 * static_cast<size_t>(gs);
      const int n_bins = (1 << bits) - 1;
      std::vector<float> values(rows * cols);
      size_t next = 0;  // which (half-integer, ulp offset) pair comes next
      for (size_t g = 0; g < rows * cols / gs; ++g) {
        float* group = values.data() + g * gs;
        const float lo = -0.7f - 0.011f * static_cast<float>(g % 17);
        const float hi = 1.1f + 0.013f * static_cast<float>(g % 23);
        const reference::GroupParams p = reference::group_params_from_range(lo, hi, bits);
        group[0] = lo;
        group[1] = hi;
        for (int i = 2; i < gs; ++i, ++next) {
          const int half = static_cast<int>(next / 15 % static_cast<size_t>(n_bins));
          const int ulps = static_cast<int>(next % 15) - 7;
          float v = p.bias + (static_cast<float>(half) + 0.5f) * p.scale;
          for (int s = 0; s < std::abs(ulps); ++s) v = std::nextafter(v, ulps > 0 ? hi : lo);
          group[i] = std::clamp(v, lo, hi);
        }
      }
      TypedBuffer dense(DType::F32, values);
      OwnedQuantized expected(dense, rows, cols, {bits, gs}, KernelChoice::Reference);
      OwnedQuantized got(dense, rows, cols, {bits, gs}, kernel, 2);
      ASSERT_EQ(got.packed, expected.packed) << "kernel " << int(kernel) << " bits " << bits;
    }
  }
}

// NaN scales and biases that are not the canonical quiet NaN (negative, with payload bits): the
// reference gives the canonical NaN (bf16 0x7FC0) for every NaN result, so a kernel that
// rounds a NaN like a number (0xFFC1 stays 0xFFC1, 0x7FFF carries into the sign) is caught.
TEST(Conversion, DequantizeNonCanonicalNaNScalesAndBiases) {
  const uint16_t nan_bits[] = {0xFFC1, 0x7FFF, 0xFF81, 0x7FC0};
  for (const auto& features : bf16_variants()) {
    detail::ScopedCpuFeatures scoped(features);
    for (KernelChoice kernel : conversion_kernels()) {
      for (int bits : kAllBits) {
        const int gs = 32;
        const size_t rows = 3, cols = 256;
        TypedBuffer dense(DType::BF16, random_values(rows * cols, bits, cols));
        OwnedQuantized q(dense, rows, cols, {bits, gs}, KernelChoice::Reference);
        auto* scales = reinterpret_cast<uint16_t*>(q.scales.bytes.data());
        auto* biases = reinterpret_cast<uint16_t*>(q.biases.bytes.data());
        for (size_t g = 0; g < q.scales.count(); g += 2) {
          if (g % 4 == 0) {
            scales[g] = nan_bits[g / 4 % 4];
          } else {
            biases[g] = nan_bits[g / 4 % 4];
          }
        }
        TypedBuffer expected(DType::BF16, rows * cols), got(DType::BF16, rows * cols);
        reference::dequantize(q.matrix, expected.bytes.data(), false);
        ExecOptions options;
        options.kernel = kernel;
        dequantize(q.matrix, got.mbuf(), false, options);
        ASSERT_EQ(got.bytes, expected.bytes) << "kernel " << int(kernel) << " bits " << bits;
      }
    }
  }
}
