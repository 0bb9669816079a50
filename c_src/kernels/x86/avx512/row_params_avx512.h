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
#include "unroll.h"

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

// The sum of each of `count` consecutive groups of x (group_size values each), for the bias
// term, in a fixed order (16 lanes, then a fixed reduction).
inline std::vector<float> group_sums(const float* x, size_t count, size_t group_size) {
  std::vector<float> sums(count);
  for (size_t g = 0; g < count; ++g) {
    __m512 s = _mm512_setzero_ps();
    for (size_t c = 0; c < group_size; c += 16) {
      s = _mm512_add_ps(s, _mm512_loadu_ps(x + g * group_size + c));
    }
    sums[g] = _mm512_reduce_add_ps(s);
  }
  return sums;
}

// Where a GEMV row block finds its scales and biases, row v's `groups` values starting at
// v * groups: in W itself when they are f32 or bf16, so that no per-block copy is made
// (converting each block's parameters, storing them and loading them back cost ~10% of a
// decode GEMV); f16 parameters are first converted into a RowParams copy (as f32).
template <DType D>
struct ParamRows {
  static_assert(D == DType::F32 || D == DType::BF16, "f16 parameters are read from f32 copies");
  static constexpr DType kDType = D;
  const void* scales;
  const void* biases;
  size_t groups;

  const void* scale_row(int v) const { return element(scales, v * groups); }
  const void* bias_row(int v) const { return element(biases, v * groups); }
  static const void* element(const void* p, size_t i) {
    return static_cast<const char*>(p) + i * (D == DType::F32 ? 4 : 2);
  }
};

// The scales of chunk c (kValues values) of one row for a dot product whose 16 lanes each sum
// kValues / 16 consecutive values of the chunk: lane L holds the scale of the group of value
// L * kValues / 16. `live_groups` (those of the chunk inside the row; fewer only in a row's
// last, partial chunk) bounds what is read, and the lanes past them get 0.
template <int kValues, int GS, DType D>
NXQ_ALWAYS_INLINE inline __m512 chunk_scales(const void* row_scales, size_t c, int live_groups) {
  constexpr int kGroups = kValues >= GS ? kValues / GS : 1;
  static_assert(kGroups <= 8, "at most 8 groups per chunk");
  const size_t first = c * kValues / GS;
  if constexpr (kGroups == 1) {
    if constexpr (D == DType::F32) {
      return _mm512_set1_ps(static_cast<const float*>(row_scales)[first]);
    } else {
      const uint32_t bits = static_cast<const uint16_t*>(row_scales)[first];
      return _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(bits << 16)));
    }
  } else {
    // 32-bit lane L takes parameter kGroups * L / 16 (a bf16 one as its high half).
    constexpr __mmask16 kFull = (1u << kGroups) - 1;
    const __mmask16 live = live_groups >= kGroups ? kFull : (1u << live_groups) - 1;
    if constexpr (D == DType::F32) {
      const __m512i index = _mm512_set_epi32(
          kGroups * 15 / 16, kGroups * 14 / 16, kGroups * 13 / 16, kGroups * 12 / 16,
          kGroups * 11 / 16, kGroups * 10 / 16, kGroups * 9 / 16, kGroups * 8 / 16,
          kGroups * 7 / 16, kGroups * 6 / 16, kGroups * 5 / 16, kGroups * 4 / 16, kGroups * 3 / 16,
          kGroups * 2 / 16, kGroups * 1 / 16, 0);
      const __m256 v = _mm256_maskz_loadu_ps(static_cast<__mmask8>(live),
                                             static_cast<const float*>(row_scales) + first);
      return _mm512_permutexvar_ps(index, _mm512_castps256_ps512(v));
    } else {
      const __m512i index = _mm512_set_epi16(
          kGroups * 15 / 16, 0, kGroups * 14 / 16, 0, kGroups * 13 / 16, 0, kGroups * 12 / 16, 0,
          kGroups * 11 / 16, 0, kGroups * 10 / 16, 0, kGroups * 9 / 16, 0, kGroups * 8 / 16, 0,
          kGroups * 7 / 16, 0, kGroups * 6 / 16, 0, kGroups * 5 / 16, 0, kGroups * 4 / 16, 0,
          kGroups * 3 / 16, 0, kGroups * 2 / 16, 0, kGroups * 1 / 16, 0, 0, 0);
      const __m128i v = _mm_maskz_loadu_epi16(static_cast<__mmask8>(live),
                                              static_cast<const uint16_t*>(row_scales) + first);
      // Odd words (the high halves) take the bf16 scale, even words are zeroed.
      return _mm512_castsi512_ps(
          _mm512_maskz_permutexvar_epi16(0xAAAAAAAA, index, _mm512_castsi128_si512(v)));
    }
  }
}

// sum_g biases[g] * b[g] over one row's `count` biases, in dot_f32's order (the same result).
template <DType D>
inline float bias_dot(const void* row_biases, const float* b, size_t count) {
  if constexpr (D == DType::F32) {
    return dot_f32(static_cast<const float*>(row_biases), b, count);
  } else {
    const auto* h = static_cast<const uint16_t*>(row_biases);
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < count; i += 16) {
      const __mmask16 live =
          count - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (count - i)) - 1);
      const __m512 a = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, h + i)), 16));
      acc = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(live, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
  }
}

// Per row block, the GEMV kernels' view of W's scales and biases: f32 and bf16 ones are read in
// place (load() only prefetches those `ahead` rows on); f16 ones are converted to f32 copies of
// up to kRows rows.
template <int kRows>
struct RowParams {
  size_t groups;
  bool convert;
  std::vector<float> scales, biases;
  RowParams(const QuantizedMatrix& w, size_t groups_per_row)
      : groups(groups_per_row),
        convert(w.dtype == DType::F16),
        scales(convert ? kRows * groups : 0),
        biases(convert ? kRows * groups : 0) {}
  // Rows n .. n+count of w (count <= kRows).
  void load(const QuantizedMatrix& w, size_t n, int count, size_t ahead) {
    detail::prefetch_row_params(w, groups, n + ahead, kRows);
    if (!convert) return;
    for (int v = 0; v < count; ++v) {
      params_to_f32(w.scales.data, w.dtype, (n + v) * groups, groups, scales.data() + v * groups);
      params_to_f32(w.biases.data, w.dtype, (n + v) * groups, groups, biases.data() + v * groups);
    }
  }
};

// f(ParamRows<...>) for W rows n.. (those `params` last loaded).
template <int kRows, typename F>
void with_row_params(const QuantizedMatrix& w, const RowParams<kRows>& params, size_t n, F&& f) {
  const size_t groups = params.groups;
  if (params.convert) {
    f(ParamRows<DType::F32>{params.scales.data(), params.biases.data(), groups});
  } else if (w.dtype == DType::F32) {
    f(ParamRows<DType::F32>{static_cast<const float*>(w.scales.data) + n * groups,
                            static_cast<const float*>(w.biases.data) + n * groups, groups});
  } else {
    f(ParamRows<DType::BF16>{static_cast<const uint16_t*>(w.scales.data) + n * groups,
                             static_cast<const uint16_t*>(w.biases.data) + n * groups, groups});
  }
}

}  // namespace nx_quant::avx512
