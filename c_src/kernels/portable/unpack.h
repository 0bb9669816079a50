// Unpacking a run of q values that starts on a group boundary.
//
// Groups hold a multiple of 32 values, and 32 values of `bits` bits fill exactly `bits` words,
// so every group starts on a word boundary: a group's values can be read from its own words
// alone, without looking at the neighbours (and without reading past the row's last word).
#pragma once

#include <cstddef>
#include <cstdint>

namespace nx_quant::detail {

template <int Bits>
inline void unpack_aligned(const uint32_t* words, size_t count, uint8_t* q) {
  constexpr uint32_t mask = (1u << Bits) - 1u;
  if constexpr (32 % Bits == 0) {
    constexpr int per_word = 32 / Bits;
    for (size_t w = 0; w < count / per_word; ++w) {
      const uint32_t v = words[w];
      for (int j = 0; j < per_word; ++j) q[w * per_word + j] = (v >> (j * Bits)) & mask;
    }
  } else {  // 3, 5, 6 bits: values straddle words; feed a 64-bit bit buffer a word at a time
    uint64_t buffer = 0;
    int buffered = 0;
    for (size_t i = 0; i < count; ++i) {
      if (buffered < Bits) {
        buffer |= static_cast<uint64_t>(*words++) << buffered;
        buffered += 32;
      }
      q[i] = static_cast<uint8_t>(buffer & mask);
      buffer >>= Bits;
      buffered -= Bits;
    }
  }
}

inline void unpack_aligned(int bits, const uint32_t* words, size_t count, uint8_t* q) {
  switch (bits) {
    case 2:
      return unpack_aligned<2>(words, count, q);
    case 3:
      return unpack_aligned<3>(words, count, q);
    case 4:
      return unpack_aligned<4>(words, count, q);
    case 5:
      return unpack_aligned<5>(words, count, q);
    case 6:
      return unpack_aligned<6>(words, count, q);
    default:
      return unpack_aligned<8>(words, count, q);
  }
}

}  // namespace nx_quant::detail
