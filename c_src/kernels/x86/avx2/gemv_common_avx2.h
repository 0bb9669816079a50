// What the AVX2 decode GEMVs share: fixed-order reductions, the per-block f32 copy of W's
// scales and biases, and the loop over blocks of W rows. Include only from *_avx2.cpp files.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemv_loops.h"
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

// The loop over W's rows both GEMVs share: blocks of `block` rows (4 or 2) from n_begin to n_end,
// each block's parameters loaded (a later block's prefetched), rows_of_x(Int<NW>, n, v0)
// computing the block into `result` ([m][kMaxBlockRows]; a partial last block row by row),
// then written to out as out_dtype.
template <typename RowsOfX>
void for_each_row_block(const QuantizedMatrix& w, BlockParams& params, size_t block, size_t n_begin,
                        size_t n_end, size_t m, const std::vector<float>& result, DType out_dtype,
                        void* out, RowsOfX&& rows_of_x) {
  const size_t n_dim = w.rows;
  for (size_t n = n_begin; n < n_end; n += block) {
    const int count = static_cast<int>(std::min(block, n_end - n));
    detail::prefetch_row_params(w, params.groups, n + kPrefetchBlocks * block, block);
    params.load(w, n, count);
    if (count == 4) {
      rows_of_x(detail::Int<4>{}, n, 0);
    } else if (count == 2) {
      rows_of_x(detail::Int<2>{}, n, 0);
    } else {
      for (int v = 0; v < count; ++v) rows_of_x(detail::Int<1>{}, n + v, v);
    }
    for (size_t i = 0; i < m; ++i) {
      for (int v = 0; v < count; ++v) {
        store_from_f32(out, out_dtype, i * n_dim + n + v, result[i * kMaxBlockRows + v]);
      }
    }
  }
}

}  // namespace nx_quant::avx2
