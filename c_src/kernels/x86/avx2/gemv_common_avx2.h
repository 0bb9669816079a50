// What the AVX2 decode GEMVs share: fixed-order reductions and the per-block f32 copy of W's
// scales and biases. Include only from *_avx2.cpp files.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "nx_quant/dtype.h"
#include "nx_quant/kernels.h"

namespace nx_quant::avx2 {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sum_i a[i] * b[i] in a fixed order: 8 lanes, a fixed reduction, then the tail in order.
inline float dot(const float* a, const float* b, size_t count) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  }
  float s = hsum(acc);
  for (; i < count; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

// dst[0..count) = src[offset..offset + count) as f32.
inline void params_to_f32(const void* src, DType dtype, size_t offset, size_t count, float* dst) {
  if (dtype == DType::F32) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, count * sizeof(float));
    return;
  }
  const auto* h = static_cast<const uint16_t*>(src) + offset;
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
    const __m256 f = dtype == DType::F16
                         ? _mm256_cvtph_ps(v)
                         : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
    _mm256_storeu_ps(dst + i, f);
  }
  for (; i < count; ++i) dst[i] = load_as_f32(src, dtype, offset + i);
}

constexpr int kMaxBlockRows = 4;       // W rows per block: read from memory once, reused from L1
constexpr size_t kPrefetchBlocks = 2;  // W is prefetched into L2 this many blocks ahead

// The scales and biases of one block of W rows as f32, each row followed by zeros so that a
// partial last chunk's dead lanes (and the 4-wide loads of chunk_scale) read 0, never the next
// row's parameters.
struct BlockParams {
  size_t groups, stride;
  std::vector<float> scales, biases;
  explicit BlockParams(size_t g)
      : groups(g),
        stride(g + 8),
        scales(kMaxBlockRows * stride, 0.0f),
        biases(kMaxBlockRows * stride, 0.0f) {}
  void load(const QuantizedMatrix& w, size_t n, int count) {
    for (int v = 0; v < count; ++v) {
      params_to_f32(w.scales.data, w.dtype, (n + v) * groups, groups, scales.data() + v * stride);
      params_to_f32(w.biases.data, w.dtype, (n + v) * groups, groups, biases.data() + v * stride);
    }
  }
};

}  // namespace nx_quant::avx2
