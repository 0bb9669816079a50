// What the NEON kernels share: unpacking 32 packed q values (one block: 4 * bits bytes, a
// block never straddles a group) to bytes, widening them to f32, and rounding f32 lanes to
// f16/bf16 exactly as dtype.h does. Everything here has internal linkage: the header is
// included by files compiled for different -march extensions (dotprod, i8mm), whose copies
// must not be merged with the baseline ones by the linker.
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "nx_quant/dtype.h"

namespace nx_quant::neon {
namespace {

// Unpacks a block of 32 values of `Bits` bits, little-endian bit stream order, to bytes:
//   * 2 bits: 8 bytes, four 2-bit fields per byte, interleaved back into value order by zips;
//   * 4 bits: 16 bytes, low and high nibbles zipped;
//   * 8 bits: the 32 bytes themselves;
//   * 3, 5, 6 bits: a 32-byte table lookup (TBL) brings the two bytes holding value i to
//     16-bit lane i, a per-lane shift (USHL by -(i * Bits % 8)) and a mask isolate it.
// The 3/5/6-bit load reads 32 bytes from p, kOverread past the block: callers pass blocks
// whose over-read would leave the packed buffer through `guarded`.
template <int Bits>
struct Unpack32 {
  static constexpr size_t kBlockBytes = 4 * Bits;
  static constexpr size_t kLoadBytes = Bits == 2 ? 8 : (Bits == 4 ? 16 : 32);
  static constexpr size_t kOverread = kLoadBytes - kBlockBytes;

  uint8x16_t index[4];  // 3/5/6 bits: byte pairs of values 8c .. 8c + 7
  int16x8_t shift[4];

  Unpack32() {
    if constexpr (Bits == 3 || Bits == 5 || Bits == 6) {
      for (int c = 0; c < 4; ++c) {
        uint8_t idx[16];
        int16_t sh[8];
        for (int l = 0; l < 8; ++l) {
          const int bit = (8 * c + l) * Bits;
          idx[2 * l] = static_cast<uint8_t>(bit / 8);
          idx[2 * l + 1] = static_cast<uint8_t>(bit / 8 + 1);  // < 32; masked off if unused
          sh[l] = static_cast<int16_t>(-(bit % 8));
        }
        index[c] = vld1q_u8(idx);
        shift[c] = vld1q_s16(sh);
      }
    }
  }

  // Values 0..15 in v0, 16..31 in v1.
  inline void operator()(const uint8_t* p, uint8x16_t& v0, uint8x16_t& v1) const {
    if constexpr (Bits == 8) {
      v0 = vld1q_u8(p);
      v1 = vld1q_u8(p + 16);
    } else if constexpr (Bits == 4) {
      const uint8x16_t b = vld1q_u8(p);
      const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(b, 4);
      v0 = vzip1q_u8(lo, hi);
      v1 = vzip2q_u8(lo, hi);
    } else if constexpr (Bits == 2) {
      const uint8x8_t b = vld1_u8(p);
      const uint8x8_t three = vdup_n_u8(3);
      const uint8x8_t f0 = vand_u8(b, three), f1 = vand_u8(vshr_n_u8(b, 2), three);
      const uint8x8_t f2 = vand_u8(vshr_n_u8(b, 4), three), f3 = vshr_n_u8(b, 6);
      // Byte j holds values 4j .. 4j + 3 in fields f0 .. f3.
      const uint16x8_t f01 = vreinterpretq_u16_u8(vcombine_u8(vzip1_u8(f0, f1), vzip2_u8(f0, f1)));
      const uint16x8_t f23 = vreinterpretq_u16_u8(vcombine_u8(vzip1_u8(f2, f3), vzip2_u8(f2, f3)));
      v0 = vreinterpretq_u8_u16(vzip1q_u16(f01, f23));
      v1 = vreinterpretq_u8_u16(vzip2q_u16(f01, f23));
    } else {
      const uint8x16x2_t table = {{vld1q_u8(p), vld1q_u8(p + 16)}};
      const uint16x8_t mask = vdupq_n_u16((1u << Bits) - 1u);
      uint8x8_t part[4];
      for (int c = 0; c < 4; ++c) {
        const uint16x8_t pairs = vreinterpretq_u16_u8(vqtbl2q_u8(table, index[c]));
        part[c] = vmovn_u16(vandq_u16(vshlq_u16(pairs, shift[c]), mask));
      }
      v0 = vcombine_u8(part[0], part[1]);
      v1 = vcombine_u8(part[2], part[3]);
    }
  }
};

// Where to unpack a run of `bytes` bytes at p from: p itself, or, when Unpack32's over-read
// would leave the packed buffer [base, base + total), a copy in tmp (which must hold
// bytes + 32 bytes; its tail stays zero).
template <int Bits>
inline const uint8_t* guarded(const uint8_t* p, size_t bytes, const uint8_t* base, size_t total,
                              uint8_t* tmp) {
  if constexpr (Unpack32<Bits>::kOverread == 0) {
    return p;
  } else {
    if (static_cast<size_t>(p - base) + bytes + Unpack32<Bits>::kOverread <= total) return p;
    std::memcpy(tmp, p, bytes);
    return tmp;
  }
}

// 16 bytes as four f32 vectors (values 0..3, 4..7, 8..11, 12..15).
inline void widen_to_f32(uint8x16_t v, float32x4_t f[4]) {
  const uint16x8_t lo = vmovl_u8(vget_low_u8(v)), hi = vmovl_high_u8(v);
  f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
  f[1] = vcvtq_f32_u32(vmovl_high_u16(lo));
  f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
  f[3] = vcvtq_f32_u32(vmovl_high_u16(hi));
}

// f32 lanes to bf16 bits, round to nearest even, NaN -> 0x7FC0 (f32_to_bf16_bits).
inline uint16x4_t bf16_bits(float32x4_t v) {
  const uint32x4_t u = vreinterpretq_u32_f32(v);
  const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
  const uint32x4_t rounded = vaddq_u32(u, vaddq_u32(vdupq_n_u32(0x7FFF), odd));
  const uint32x4_t is_nan = vmvnq_u32(vceqq_f32(v, v));
  const uint32x4_t bits = vbslq_u32(is_nan, vdupq_n_u32(0x7FC00000u), rounded);
  return vshrn_n_u32(bits, 16);
}

inline float32x4_t from_bf16_bits(uint16x4_t h) {
  return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

// f32 lanes to f16 bits (FCVTN: round to nearest even under the default FPCR, as
// f32_to_f16_bits) and back (exact).
inline uint16x4_t f16_bits(float32x4_t v) {
  return vreinterpret_u16_f16(vcvt_f16_f32(v));
}
inline float32x4_t from_f16_bits(uint16x4_t h) {
  return vcvt_f32_f16(vreinterpret_f16_u16(h));
}

inline float32x4_t round_bf16(float32x4_t v) {
  return from_bf16_bits(bf16_bits(v));
}
inline float32x4_t round_f16(float32x4_t v) {
  return from_f16_bits(f16_bits(v));
}

// 4 values of dtype D at data[index..] as f32 (exact).
template <DType D>
inline float32x4_t load4(const void* data, size_t index) {
  if constexpr (D == DType::F32) {
    return vld1q_f32(static_cast<const float*>(data) + index);
  } else if constexpr (D == DType::F16) {
    return from_f16_bits(vld1_u16(static_cast<const uint16_t*>(data) + index));
  } else {
    return from_bf16_bits(vld1_u16(static_cast<const uint16_t*>(data) + index));
  }
}

}  // namespace
}  // namespace nx_quant::neon
