// Loads of 8 values of a dtype as f32 (exact), shared by the AVX2 kernels. Include only from
// *_avx2.cpp files.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "nx_quant/dtype.h"

namespace nx_quant::avx2 {

template <DType D>
inline __m256 load8(const void* data, size_t index) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(data) + index);
  } else {
    const __m128i h = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(data) + index));
    if constexpr (D == DType::F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

}  // namespace nx_quant::avx2
