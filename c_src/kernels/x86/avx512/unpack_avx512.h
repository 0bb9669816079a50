// Unpacking 16 quantized values into f32 lanes with AVX-512 (F, BW, VBMI). Include only from
// files compiled for AVX-512 (*_avx512.cpp).
//
// 16 consecutive values of any bit width span exactly 2*bits bytes. A masked load reads those
// bytes (never past them), one byte permute (vpermb) gathers, for lane i, the four bytes
// starting at byte (i*bits)/8, a variable shift by (i*bits)%8 and a mask leave q_i in lane i.
// So 2-, 3-, 4-, 5-, 6- and 8-bit words all unpack with the same four instructions.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace nx_quant::avx512 {

struct Unpacker {
  __mmask64 load_mask;
  __m512i index;
  __m512i shift;
  __m512i mask;
  size_t chunk_bytes;  // bytes holding 16 values

  explicit Unpacker(int bits) : chunk_bytes(2 * static_cast<size_t>(bits)) {
    alignas(64) uint8_t idx[64];
    alignas(64) uint32_t sh[16];
    for (int i = 0; i < 16; ++i) {
      const int bit = i * bits;
      for (int j = 0; j < 4; ++j) idx[4 * i + j] = static_cast<uint8_t>((bit >> 3) + j);
      sh[i] = static_cast<uint32_t>(bit & 7);
    }
    index = _mm512_load_si512(idx);
    shift = _mm512_load_si512(sh);
    mask = _mm512_set1_epi32((1 << bits) - 1);
    load_mask = _cvtu64_mask64((uint64_t{1} << chunk_bytes) - 1);
  }

  // The 16 values as int32 lanes.
  __m512i indices(const uint8_t* p) const {
    const __m512i v = _mm512_permutexvar_epi8(index, _mm512_maskz_loadu_epi8(load_mask, p));
    return _mm512_and_si512(_mm512_srlv_epi32(v, shift), mask);
  }

  __m512 operator()(const uint8_t* p) const { return _mm512_cvtepi32_ps(indices(p)); }
};

}  // namespace nx_quant::avx512
