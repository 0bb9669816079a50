// Per-row helpers shared by the AVX-512 GEMV kernels. Include only from *_avx512.cpp files.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemv_loops.h"
#include "nx_quant/dtype.h"
#include "nx_quant/kernels.h"

namespace nx_quant::avx512 {

// dst[0..count) = src[offset..offset+count) as f32.
inline void params_to_f32(const void* src, DType dtype, size_t offset, size_t count, float* dst) {
  if (dtype == DType::F32) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, count * sizeof(float));
    return;
  }
  const auto* h = static_cast<const uint16_t*>(src) + offset;
  for (size_t i = 0; i < count; i += 16) {
    const __mmask16 live =
        count - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m256i v = _mm256_maskz_loadu_epi16(live, h + i);
    const __m512 f = dtype == DType::F16
                         ? _mm512_cvtph_ps(v)
                         : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
    _mm512_mask_storeu_ps(dst + i, live, f);
  }
}

// sum_g a[g] * b[g] in a fixed order (16 lanes, then a fixed reduction).
inline float dot_f32(const float* a, const float* b, size_t count) {
  __m512 acc = _mm512_setzero_ps();
  for (size_t i = 0; i < count; i += 16) {
    const __mmask16 live =
        count - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (count - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, a + i), _mm512_maskz_loadu_ps(live, b + i),
                          acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// The scales and biases of up to kRows consecutive W rows as f32, for the GEMV kernels that
// take lane-wise scales per 128-value chunk: a chunk may read up to 4 scales past its row, so
// each row's scales are `stride` = groups + 4 apart and the padding stays zero.
template <int kRows>
struct RowParams {
  size_t groups, stride;
  std::vector<float> scales, biases;
  explicit RowParams(size_t groups_per_row)
      : groups(groups_per_row),
        stride(groups_per_row + 4),
        scales(kRows * stride, 0.0f),
        biases(kRows * groups_per_row) {}
  // Rows n .. n+count of w (count <= kRows); prefetches the parameters of the `ahead` rows on.
  void load(const QuantizedMatrix& w, size_t n, int count, size_t ahead) {
    detail::prefetch_row_params(w, groups, n + ahead, kRows);
    for (int v = 0; v < count; ++v) {
      params_to_f32(w.scales.data, w.dtype, (n + v) * groups, groups, scales.data() + v * stride);
      params_to_f32(w.biases.data, w.dtype, (n + v) * groups, groups, biases.data() + v * groups);
    }
  }
};

}  // namespace nx_quant::avx512
