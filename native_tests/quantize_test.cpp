// MLX's per-group rules, each checked on the exact bits of the stored scale and bias.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

OwnedQuantized quantize_group(const std::vector<float>& group, int bits, DType dtype = DType::F32) {
  return OwnedQuantized(TypedBuffer(dtype, group), 1, group.size(),
                        {bits, static_cast<int>(group.size())});
}

uint32_t f32_bits(float f) {
  return bit_cast<uint32_t>(f);
}

}  // namespace

TEST(QuantizeRules, LargerMagnitudeEdgeIsExactAndOtherEdgeMayNotBe) {
  // {3, -1} at 4 bits: scale = -(4/15), q0 = rint(3 / scale) = -11, so scale = 3 / -11 and
  // bias = 3; -1 becomes q = 15 and dequantizes to 15 * (3 / -11) + 3 = -1.0909...
  std::vector<float> group(32);
  for (int i = 0; i < 32; ++i) group[i] = i % 2 ? -1.0f : 3.0f;
  auto q = quantize_group(group, 4);
  EXPECT_EQ(f32_bits(q.scales.at(0)), f32_bits(3.0f / -11.0f));
  EXPECT_EQ(q.biases.at(0), 3.0f);
  EXPECT_EQ(q.packed[0], 0xF0F0F0F0u);  // q = 0, 15, 0, 15, ...
  TypedBuffer out(DType::F32, 32);
  dequantize(q.matrix, out.mbuf());
  EXPECT_EQ(out.at(0), 3.0f);
  EXPECT_NEAR(out.at(1), -1.0909091f, 1e-6f);
}

TEST(QuantizeRules, NegativeEdgeDominates) {
  // {-4, 1} at 2 bits: |min| > |max| so scale = +5/3 and edge = -4: q0 = rint(-2.4) = -2,
  // scale = -4 / -2 = 2, bias = -4; 1 -> rint(5 / 2) = 2 (ties to even).
  std::vector<float> group(32);
  for (int i = 0; i < 32; ++i) group[i] = i % 2 ? 1.0f : -4.0f;
  auto q = quantize_group(group, 2);
  EXPECT_EQ(q.scales.at(0), 2.0f);
  EXPECT_EQ(q.biases.at(0), -4.0f);
  EXPECT_EQ(q.packed[0], 0x88888888u);  // q = 0, 2, 0, 2, ...
}

TEST(QuantizeRules, ConstantGroupStoresMinusEpsilonScaleAndTheConstantAsBias) {
  auto q = quantize_group(std::vector<float>(32, 0.5f), 4);
  // scale = -1e-7, q0 = rint(0.5 / -1e-7) = -5e6, then scale = 0.5 / -5e6, bias = 0.5.
  EXPECT_EQ(f32_bits(q.scales.at(0)), f32_bits(0.5f / std::rint(0.5f / -1e-7f)));
  EXPECT_NEAR(q.scales.at(0), -1e-7f, 1e-12f);
  EXPECT_EQ(q.biases.at(0), 0.5f);
  for (uint32_t w : q.packed) EXPECT_EQ(w, 0u);
}

TEST(QuantizeRules, ZeroAndSignedZeroGroupsStoreZeroBias) {
  for (float zero : {0.0f, -0.0f}) {
    for (DType dtype : kAllDtypes) {
      auto q = quantize_group(std::vector<float>(64, zero), 8, dtype);
      EXPECT_EQ(f32_bits(q.biases.at(0)), 0u) << dtype_name(dtype);  // +0, not -0
      EXPECT_EQ(q.scales.at(0), round_to_dtype(-1e-7f, dtype));
      for (uint32_t w : q.packed) EXPECT_EQ(w, 0u);
    }
  }
}

TEST(QuantizeRules, AllPositiveGroupHasNegativeScale) {
  std::vector<float> group(32);
  for (int i = 0; i < 32; ++i) group[i] = 1.0f + static_cast<float>(i);
  auto q = quantize_group(group, 4);
  EXPECT_LT(q.scales.at(0), 0.0f);
  EXPECT_EQ(q.biases.at(0), 32.0f);
}

TEST(QuantizeRules, RoundingTiesGoToEven) {
  // Values {0, 3} fix scale = -1, bias = 3 at 2 bits; q(w) = rint(3 - w), exactly computed.
  std::vector<float> group(32, 0.0f);
  group[1] = 3.0f;
  group[2] = 1.5f;  // rint(1.5) = 2
  group[3] = 2.5f;  // rint(0.5) = 0
  group[4] = 0.5f;  // rint(2.5) = 2
  auto q = quantize_group(group, 2);
  ASSERT_EQ(q.scales.at(0), -1.0f);
  ASSERT_EQ(q.biases.at(0), 3.0f);
  for (int i = 0; i < 5; ++i) {
    const uint32_t expected[] = {3, 0, 2, 0, 2};
    EXPECT_EQ(reference::unpack_value(q.packed.data(), i, 2), expected[i]) << i;
  }
}

TEST(QuantizeRules, NaNValuesAreSkippedForRangeAndQuantizeToZero) {
  std::vector<float> group(32, 1.0f);
  group[0] = 0.0f;
  group[5] = std::numeric_limits<float>::quiet_NaN();
  auto q = quantize_group(group, 4);
  EXPECT_EQ(q.biases.at(0), 1.0f);  // range [0, 1]: NaN ignored
  EXPECT_EQ(reference::unpack_value(q.packed.data(), 5, 4), 0u);
  EXPECT_EQ(reference::unpack_value(q.packed.data(), 0, 4), 15u);
}

TEST(QuantizeRules, InfinityGivesNaNScaleAndInfiniteBias) {
  std::vector<float> group(32, 1.0f);
  group[3] = std::numeric_limits<float>::infinity();
  for (DType dtype : kAllDtypes) {
    auto q = quantize_group(group, 4, dtype);
    EXPECT_TRUE(std::isnan(q.scales.at(0))) << dtype_name(dtype);
    EXPECT_EQ(q.biases.at(0), std::numeric_limits<float>::infinity());
    for (uint32_t w : q.packed) EXPECT_EQ(w, 0u);  // every q is NaN -> 0
  }
}

TEST(QuantizeRules, ScalesAndBiasesAreRoundedToTheInputDtype) {
  std::vector<float> group(32);
  for (int i = 0; i < 32; ++i) group[i] = 0.1f * static_cast<float>(i) - 1.3f;
  for (DType dtype : kAllDtypes) {
    TypedBuffer dense(dtype, group);
    std::vector<float> loaded(32);
    for (int i = 0; i < 32; ++i) loaded[i] = dense.at(i);
    const auto params = reference::group_params(loaded.data(), 32, 4);
    auto q = quantize_group(group, 4, dtype);
    EXPECT_EQ(f32_bits(q.scales.at(0)), f32_bits(round_to_dtype(params.scale, dtype)));
    EXPECT_EQ(f32_bits(q.biases.at(0)), f32_bits(round_to_dtype(params.bias, dtype)));
  }
}

TEST(Quantize, OptimisedKernelsMatchTheReferenceBitForBit) {
  const size_t rows = 7;
  for (int bits : kAllBits) {
    for (int gs : kAllGroupSizes) {
      for (DType dtype : kAllDtypes) {
        const size_t cols = 2 * 128;
        TypedBuffer dense(dtype, random_values(rows * cols, bits * 1000 + gs, cols));
        OwnedQuantized expected(dense, rows, cols, {bits, gs}, KernelChoice::Reference);
        for (int threads : {1, 2, 3}) {
          OwnedQuantized got(dense, rows, cols, {bits, gs}, KernelChoice::Auto, threads);
          ASSERT_EQ(got.packed, expected.packed) << bits << "/" << gs << "/" << dtype_name(dtype);
          ASSERT_EQ(got.scales.bytes, expected.scales.bytes);
          ASSERT_EQ(got.biases.bytes, expected.biases.bytes);
        }
      }
    }
  }
}

// MLX makes the larger-magnitude edge exact by rescaling, so the grid bias + scale * [0, n_bins]
// may stop short of the other edge (the {3, -1} case above): values inside the grid's span come
// back within half a step, values beyond it come back as the nearest end of the span.
TEST(Quantize, RoundTripErrorIsWithinHalfAStepOfTheGroupsGrid) {
  const size_t rows = 5, cols = 256;
  for (int bits : kAllBits) {
    const float n_bins = static_cast<float>((1 << bits) - 1);
    for (int gs : kAllGroupSizes) {
      for (DType dtype : kAllDtypes) {
        TypedBuffer dense(dtype, random_values(rows * cols, 7 * bits + gs, cols));
        OwnedQuantized q(dense, rows, cols, {bits, gs});
        TypedBuffer out(dtype, rows * cols);
        dequantize(q.matrix, out.mbuf());
        for (size_t i = 0; i < rows * cols; ++i) {
          const float scale = q.scales.at(i / gs), bias = q.biases.at(i / gs);
          const float lo = std::min(bias, bias + n_bins * scale);
          const float hi = std::max(bias, bias + n_bins * scale);
          const float w = dense.at(i);
          const float outside = std::max({0.0f, lo - w, w - hi});
          // q was chosen with the f32 scale and bias; storing them in the dtype moves q * scale
          // and bias by up to one relative rounding each (2x margin), and the result rounds too.
          const float eps =
              dtype == DType::F32 ? 1e-6f : (dtype == DType::F16 ? 0x1p-10f : 0x1p-7f);
          const float tolerance = std::abs(scale) * 0.5f + outside +
                                  eps * (n_bins * std::abs(scale) + std::abs(bias) + std::abs(w));
          ASSERT_NEAR(out.at(i), w, tolerance)
              << bits << "/" << gs << "/" << dtype_name(dtype) << " at " << i;
        }
      }
    }
  }
}
