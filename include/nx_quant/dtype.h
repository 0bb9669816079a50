// Element types nx_quant computes with, and exact scalar conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace nx_quant {

// Floating dtypes of activations, dense weights, scales and biases.
enum class DType : uint8_t { F32 = 0, F16 = 1, BF16 = 2 };

inline constexpr size_t dtype_size(DType t) {
  return t == DType::F32 ? 4 : 2;
}

inline constexpr const char* dtype_name(DType t) {
  return t == DType::F32 ? "f32" : (t == DType::F16 ? "f16" : "bf16");
}

template <typename To, typename From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast size mismatch");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// f32 -> bf16, round to nearest even. NaN becomes the canonical quiet NaN 0x7FC0, as MLX does.
inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = bit_cast<uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_bits_to_f32(uint16_t h) {
  return bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

// f32 -> IEEE binary16, round to nearest even, subnormals and overflow to infinity handled
// exactly (same results as a hardware conversion, e.g. F16C's vcvtps2ph with RNE).
inline uint16_t f32_to_f16_bits(float f) {
  uint32_t u = bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u >= 0x47800000u) {  // |f| >= 2^16: infinity, or NaN (kept quiet, payload top bits kept)
    if (u > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((u >> 13) & 0x3FFu));
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (u < 0x38800000u) {  // below the smallest normal half (2^-14): the FPU rounds for us
    // Adding 0.5f puts the half-subnormal ulp (2^-24) at the float's last mantissa bit.
    float shifted = bit_cast<float>(u) + 0.5f;
    return static_cast<uint16_t>(sign | (bit_cast<uint32_t>(shifted) - 0x3F000000u));
  }
  const uint32_t mantissa_odd = (u >> 13) & 1u;
  u += 0xC8000FFFu + mantissa_odd;  // rebias exponent (127 -> 15) and round half to even
  return static_cast<uint16_t>(sign | (u >> 13));
}

inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // 2^-24
    return sign ? -magnitude : magnitude;
  }
  return bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Load element i of a buffer of the given dtype as f32.
inline float load_as_f32(const void* data, DType t, size_t i) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(data)[i];
    case DType::F16:
      return f16_bits_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::BF16:
    default:
      return bf16_bits_to_f32(static_cast<const uint16_t*>(data)[i]);
  }
}

// Store an f32 into element i of a buffer of the given dtype (round to nearest even).
inline void store_from_f32(void* data, DType t, size_t i, float v) {
  switch (t) {
    case DType::F32:
      static_cast<float*>(data)[i] = v;
      break;
    case DType::F16:
      static_cast<uint16_t*>(data)[i] = f32_to_f16_bits(v);
      break;
    case DType::BF16:
    default:
      static_cast<uint16_t*>(data)[i] = f32_to_bf16_bits(v);
      break;
  }
}

// Round an f32 to the given dtype and back: the value a store + load would give.
inline float round_to_dtype(float v, DType t) {
  switch (t) {
    case DType::F32:
      return v;
    case DType::F16:
      return f16_bits_to_f32(f32_to_f16_bits(v));
    case DType::BF16:
    default:
      return bf16_bits_to_f32(f32_to_bf16_bits(v));
  }
}

}  // namespace nx_quant
