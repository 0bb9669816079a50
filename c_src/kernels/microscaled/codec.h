// Scalar codecs of MLX's microscaled modes: E2M1 (4-bit elements), E4M3 (8-bit elements and
// nvfp4 scales) and E8M0 (mxfp4/mxfp8 scales), written from MLX's rules (ops.cpp fp_quantize /
// fp_dequantize, backend/cpu/unary_ops.h's fp8 conversions) as they behave on x86-64.
#pragma once

#include <cmath>
#include <cstdint>

#include "nx_quant/dtype.h"

namespace nx_quant::microscaled {

// The 16 E2M1 values by code: bit 3 is the sign.
inline constexpr float kE2m1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// f32 -> E4M3 byte as MLX converts: round to nearest even on the 3-bit mantissa (subnormals
// down to 2^-9), |x| >= 448 (Inf and NaN included) saturates to 448 (0x7E) with x's sign bit
// (MLX's ToFP8 compares with 543 << 21, the bits of 448.0f), so 0x7F is never produced.
inline uint8_t e4m3_from_f32(float x) {
  uint32_t bits = bit_cast<uint32_t>(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  bits &= 0x7FFFFFFFu;
  uint8_t magnitude;
  if (bits >= 0x43E00000u) {  // 448.0f
    magnitude = 0x7E;
  } else if (bits < 0x3C800000u) {  // below 2^-6, E4M3's smallest normal: multiples of 2^-9
    // Adding 2^14 leaves |x| rounded (RNE, by the FPU) to the float ulp 2^-9 in the low bits.
    const float shifted = bit_cast<float>(bits) + 16384.0f;
    magnitude = static_cast<uint8_t>(bit_cast<uint32_t>(shifted) - 0x46800000u);
  } else {
    const uint32_t odd = (bits >> 20) & 1u;
    // Rebias the exponent (127 -> 7) and round the 20 dropped mantissa bits half to even.
    const uint32_t rounded = bits - (120u << 23) + 0x7FFFFu + odd;
    magnitude = static_cast<uint8_t>(rounded >> 20);
  }
  return static_cast<uint8_t>(magnitude | sign);
}

// E4M3 byte -> f32, exact. No NaN: 0x7F / 0xFF decode to +-480 as in MLX.
inline float e4m3_to_f32(uint8_t b) {
  const int exponent = (b >> 3) & 0xF;
  const int mantissa = b & 7;
  const float magnitude = exponent == 0
                              ? std::ldexp(static_cast<float>(mantissa), -9)
                              : std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  return (b & 0x80) ? -magnitude : magnitude;
}

// E8M0 scale byte -> f32: 2^(b - 127), so 0 is 2^-127 and 255 is +Inf (MLX computes
// power(2, b - 127); it has no NaN code either).
inline float e8m0_to_f32(uint8_t b) {
  return std::ldexp(1.0f, static_cast<int>(b) - 127);
}

// float -> int32 the way x86-64's cvttss2si converts (what MLX's astype compiles to): truncate,
// with NaN and out-of-range values giving INT32_MIN.
inline int32_t x86_f32_to_i32(float v) {
  if (!(v > -2147483904.0f && v < 2147483648.0f)) return INT32_MIN;  // also NaN
  return static_cast<int32_t>(v);
}

// float -> uint8 likewise: the low byte of the int32 conversion, no clamping.
inline uint8_t x86_f32_to_u8(float v) {
  return static_cast<uint8_t>(static_cast<uint32_t>(x86_f32_to_i32(v)) & 0xFFu);
}

}  // namespace nx_quant::microscaled
