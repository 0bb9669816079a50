#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "nx_quant/dtype.h"

using namespace nx_quant;

TEST(Dtype, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16_bits(1.0f), 0x3F80);
  // 1 + 2^-8 is exactly half way between bf16 1.0 (even) and 1 + 2^-7: ties to even -> 1.0.
  EXPECT_EQ(f32_to_bf16_bits(bit_cast<float>(0x3F808000u)), 0x3F80);
  // 1 + 3*2^-8 is half way between 1 + 2^-7 (odd) and 1 + 2^-6: ties to even -> up.
  EXPECT_EQ(f32_to_bf16_bits(bit_cast<float>(0x3F818000u)), 0x3F82);
  EXPECT_EQ(f32_to_bf16_bits(bit_cast<float>(0x3F808001u)), 0x3F81);  // just above the tie
  EXPECT_EQ(f32_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  EXPECT_EQ(f32_to_bf16_bits(3.4028235e38f), 0x7F80);  // FLT_MAX rounds up to infinity
  EXPECT_EQ(bf16_bits_to_f32(0xC040), -3.0f);
}

TEST(Dtype, F16RoundsToNearestEvenWithSubnormalsAndOverflow) {
  EXPECT_EQ(f32_to_f16_bits(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16_bits(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16_bits(65519.0f), 0x7BFF);               // below the half-way point to 65536
  EXPECT_EQ(f32_to_f16_bits(65520.0f), 0x7C00);               // the tie rounds to even: infinity
  EXPECT_EQ(f32_to_f16_bits(1.0f + 1.0f / 2048.0f), 0x3C00);  // tie -> even (down)
  EXPECT_EQ(f32_to_f16_bits(1.0f + 3.0f / 2048.0f), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie with 0 -> 0 (even)
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.5f, -25)), 0x0001);  // above the tie
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp tie -> even 2
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16_bits(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(f32_to_f16_bits(std::numeric_limits<float>::quiet_NaN()) & 0x7E00, 0x7E00);
  EXPECT_EQ(f16_bits_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_bits_to_f32(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(0x7E00)));
  EXPECT_TRUE(std::signbit(f16_bits_to_f32(0x8000)));
}

TEST(Dtype, F16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_bits_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16_bits(f), h) << "half 0x" << std::hex << h;
  }
}
