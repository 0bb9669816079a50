// AVX2 matmul of the microscaled modes with transpose = true (w is [N, K]), for any m in passes
// of up to 4 rows of x: as gemv_avx512.cpp with 8-lane vectors, E2M1 codes looked up by vpshufb
// in a table of twice their values (int8), E4M3 bytes through vcvtph2ps.
#include <immintrin.h>

#include <algorithm>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"

namespace nx_quant::microscaled::avx2 {

namespace {

constexpr size_t kBlock = 32;  // columns per step: one mxfp group, two nvfp4 groups

// One block of 32 columns into acc (one accumulator per row of x).
template <int MR, int Bits, bool Nv>
inline __attribute__((always_inline)) void block(const float* x, size_t k, const uint8_t* bytes,
                                                 const uint8_t* scales, size_t b, const Tables& t,
                                                 __m256 (&acc)[MR]) {
  // E2M1 values times 2 as int8: vpshufb looks a 4-bit code up directly.
  const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  const __m128i nibble = _mm_set1_epi8(0x0F);
  // Per block four vectors of 8 columns: v[0], v[1] even columns 0-7 and 8-15 of the block's
  // de-interleaved x (bytes 0-7, 8-15), v[2], v[3] the odd ones; scale per half block.
  __m256 v[4];
  __m256 scale_a, scale_b;
  // Two KB ahead (prefetches never fault; past the matrix they are wasted, not wrong).
  _mm_prefetch(reinterpret_cast<const char*>(bytes + Bits * 4 * b + 2048), _MM_HINT_T0);
  if constexpr (Bits == 4) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 16 * b));
    const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(raw, nibble));
    const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(raw, 4), nibble));
    v[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    v[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    v[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    v[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
    if constexpr (Nv) {
      scale_a = _mm256_set1_ps(t.e4m3[scales[2 * b]]);
      scale_b = _mm256_set1_ps(t.e4m3[scales[2 * b + 1]]);
    } else {
      scale_a = scale_b = _mm256_set1_ps(t.e8m0[scales[b]]);
    }
  } else {
    for (int h = 0; h < 2; ++h) {
      const __m256i w16 = _mm256_cvtepu8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 32 * b + 16 * h)));
      // f16 bits: sign at bit 15, exponent and mantissa at bits 7..13 (value / 256).
      const __m256i f16 =
          _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi16(w16, 8), _mm256_set1_epi16(-32768)),
                          _mm256_and_si256(_mm256_slli_epi16(w16, 7), _mm256_set1_epi16(0x3F80)));
      v[2 * h] = _mm256_cvtph_ps(_mm256_castsi256_si128(f16));
      v[2 * h + 1] = _mm256_cvtph_ps(_mm256_extracti128_si256(f16, 1));
    }
    scale_a = scale_b = _mm256_set1_ps(t.e8m0[scales[b]]);
  }
  for (int i = 0; i < MR; ++i) {
    const float* xb = x + i * k + kBlock * b;
    __m256 sa, sb;
    if constexpr (Bits == 4) {  // x: 16 even then 16 odd columns
      sa =
          _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xb + 16), _mm256_mul_ps(v[0], _mm256_loadu_ps(xb)));
      sb = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24),
                           _mm256_mul_ps(v[1], _mm256_loadu_ps(xb + 8)));
    } else {  // natural order
      sa = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xb + 8), _mm256_mul_ps(v[0], _mm256_loadu_ps(xb)));
      sb = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24),
                           _mm256_mul_ps(v[2], _mm256_loadu_ps(xb + 16)));
    }
    acc[i] = _mm256_fmadd_ps(sa, scale_a, _mm256_fmadd_ps(sb, scale_b, acc[i]));
  }
}

template <int MR, int Bits, bool Nv>
void rows_dot(const float* x, size_t k, const uint8_t* bytes, const uint8_t* scales, float global,
              float* sums) {
  const Tables& t = tables();
  // Two accumulator sets (even and odd blocks): two independent FMA chains per row.
  __m256 acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  const size_t blocks = k / kBlock;
  size_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    block<MR, Bits, Nv>(x, k, bytes, scales, b, t, acc0);
    block<MR, Bits, Nv>(x, k, bytes, scales, b + 1, t, acc1);
  }
  if (b < blocks) block<MR, Bits, Nv>(x, k, bytes, scales, b, t, acc0);
  for (int i = 0; i < MR; ++i) {
    const __m256 a = _mm256_add_ps(acc0[i], acc1[i]);
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    float sum = _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
    sum *= Bits == 8 ? 256.0f : 0.5f;
    // An nvfp4 tail group of 16 columns (K % 32 == 16), in natural order.
    for (size_t c = blocks * kBlock; c < k; ++c) {
      const float element = kE2m1Values[(bytes[c / 2] >> (4 * (c % 2))) & 0xF];
      sum += x[i * k + c] * element * t.e4m3[scales[c / 16]];
    }
    sums[i] = sum * global;
  }
}

template <int Bits, bool Nv>
void gemv_rows(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out) {
  const size_t k = w.cols;
  const size_t row_bytes = k * Bits / 8;
  const size_t groups = k / static_cast<size_t>(w.spec.group_size);
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  const auto* scales = static_cast<const uint8_t*>(w.scales.data);
  const float global = Nv && w.spec.global_scale != 0.0f ? w.spec.global_scale / 2688.0f : 1.0f;
  float sums[4];
  for (size_t i0 = 0; i0 < m; i0 += 4) {
    const size_t mr = std::min<size_t>(4, m - i0);
    const float* xi = x + i0 * k;
    for (size_t n = n_begin; n < n_end; ++n) {
      const uint8_t* rb = bytes + n * row_bytes;
      const uint8_t* rs = scales + n * groups;
      switch (mr) {
        case 1:
          rows_dot<1, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
        case 2:
          rows_dot<2, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
        case 3:
          rows_dot<3, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
        default:
          rows_dot<4, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
      }
      for (size_t i = 0; i < mr; ++i) {
        store_from_f32(out, out_dtype, (i0 + i) * w.rows + n, sums[i]);
      }
    }
  }
}

}  // namespace

void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  if (w.spec.mode == QuantMode::Mxfp8) {
    gemv_rows<8, false>(x, m, w, out_dtype, n_begin, n_end, out);
    return;
  }
  if (w.spec.mode == QuantMode::Nvfp4) {
    gemv_rows<4, true>(x, m, w, out_dtype, n_begin, n_end, out);
  } else {
    gemv_rows<4, false>(x, m, w, out_dtype, n_begin, n_end, out);
  }
}

}  // namespace nx_quant::microscaled::avx2
