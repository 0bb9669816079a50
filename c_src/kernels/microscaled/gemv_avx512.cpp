// AVX-512 matmul of the microscaled modes with transpose = true (w is [N, K]), for any m in
// passes of up to 4 rows of x. Per 32 columns: E2M1 codes are looked up in the 16-entry value
// table by vpermps (the low and high nibbles of 16 bytes give the even and odd columns, so x is
// stored de-interleaved the same way); E4M3 bytes become f16 bit patterns (the E4M3 value
// / 256) and go through vcvtph2ps. f32 accumulation, the group scale applied once per group.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"

namespace nx_quant::microscaled::avx512 {

namespace {

constexpr size_t kBlock = 32;  // mxfp8 columns per step: one group

// mxfp8: one block of 32 columns (32 E4M3 bytes) into acc (one accumulator per row of x).
template <int MR>
inline __attribute__((always_inline)) void block8(const float* x, size_t k, const uint8_t* bytes,
                                                  const uint8_t* scales, size_t b, const Tables& t,
                                                  __m512 (&acc)[MR]) {
  // Two KB ahead (prefetches never fault; past the matrix they are wasted, not wrong).
  _mm_prefetch(reinterpret_cast<const char*>(bytes + 32 * b + 2048), _MM_HINT_T0);
  const __m512i w16 =
      _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + 32 * b)));
  // f16 bits: sign at bit 15, exponent and mantissa at bits 7..13 (value / 256).
  const __m512i h =
      _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi16(w16, 8), _mm512_set1_epi16(-32768)),
                      _mm512_and_si512(_mm512_slli_epi16(w16, 7), _mm512_set1_epi16(0x3F80)));
  const __m512 v0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
  const __m512 v1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  const __m512 scale = _mm512_set1_ps(t.e8m0[scales[b]]);
  for (int i = 0; i < MR; ++i) {
    const float* xb = x + i * k + kBlock * b;
    const __m512 s =
        _mm512_fmadd_ps(v1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(v0, _mm512_loadu_ps(xb)));
    acc[i] = _mm512_fmadd_ps(s, scale, acc[i]);
  }
}

// mxfp8 rows: two accumulator sets (even and odd blocks), two independent FMA chains per row.
template <int MR>
void rows_dot8(const float* x, size_t k, const uint8_t* bytes, const uint8_t* scales, float* sums) {
  const Tables& t = tables();
  __m512 acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  const size_t blocks = k / kBlock;
  size_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    block8<MR>(x, k, bytes, scales, b, t, acc0);
    block8<MR>(x, k, bytes, scales, b + 1, t, acc1);
  }
  if (b < blocks) block8<MR>(x, k, bytes, scales, b, t, acc0);
  for (int i = 0; i < MR; ++i) {
    sums[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i])) * 256.0f;
  }
}

// 4-bit rows, 128 columns (16 words) per step: lane w of a 16-word vector holds columns 8w..8w+7
// of the step, and `vpermps` of the words shifted right by 4j looks up nibble j of every lane
// at once (it reads 4 index bits); x comes rearranged to match (prepare_x4). Each lane's sum is
// scaled by its group's scale (mxfp4: lanes 4g..4g+3 are group g; nvfp4: lanes 2g, 2g+1).
template <int MR, bool Nv>
void rows_dot4(const float* x, size_t k, const uint8_t* bytes, const uint8_t* scales, float global,
               float* sums) {
  const Tables& t = tables();
  const __m512 lut = _mm512_loadu_ps(kE2m1Values);
  const __m128i spread = Nv ? _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)
                            : _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  const size_t steps = k / 128;
  for (size_t c = 0; c < steps; ++c) {
    // Two KB ahead (prefetches never fault; past the matrix they are wasted, not wrong).
    _mm_prefetch(reinterpret_cast<const char*>(bytes + 64 * c + 2048), _MM_HINT_T0);
    const __m512i words = _mm512_loadu_si512(bytes + 64 * c);
    __m512 scale;
    if constexpr (Nv) {
      const __m128i sb = _mm_shuffle_epi8(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + 8 * c)), spread);
      const __m256i w16 = _mm256_cvtepu8_epi16(sb);
      // E4M3 as f16 bits (value / 256; the 256 is applied to the sum).
      const __m256i h =
          _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi16(w16, 8), _mm256_set1_epi16(-32768)),
                          _mm256_and_si256(_mm256_slli_epi16(w16, 7), _mm256_set1_epi16(0x3F80)));
      scale = _mm512_cvtph_ps(h);
    } else {
      uint32_t four;
      std::memcpy(&four, scales + 4 * c, 4);
      const __m512i e =
          _mm512_cvtepu8_epi32(_mm_shuffle_epi8(_mm_cvtsi32_si128(static_cast<int>(four)), spread));
      // 2^(e - 127) is the float with exponent field e; e = 0 is the subnormal 2^-127.
      scale = _mm512_mask_mov_ps(_mm512_castsi512_ps(_mm512_slli_epi32(e, 23)),
                                 _mm512_testn_epi32_mask(e, e),
                                 _mm512_castsi512_ps(_mm512_set1_epi32(0x00400000)));
    }
    __m512 even[MR], odd[MR];
    const float* xc = x + 128 * c;
    {
      const __m512 v0 = _mm512_permutexvar_ps(words, lut);
      const __m512 v1 = _mm512_permutexvar_ps(_mm512_srli_epi32(words, 4), lut);
      for (int i = 0; i < MR; ++i) {
        even[i] = _mm512_mul_ps(v0, _mm512_loadu_ps(xc + i * k));
        odd[i] = _mm512_mul_ps(v1, _mm512_loadu_ps(xc + i * k + 16));
      }
    }
    for (int j = 2; j < 8; j += 2) {
      const __m512 v0 = _mm512_permutexvar_ps(_mm512_srli_epi32(words, 4 * j), lut);
      const __m512 v1 = _mm512_permutexvar_ps(_mm512_srli_epi32(words, 4 * j + 4), lut);
      for (int i = 0; i < MR; ++i) {
        even[i] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xc + i * k + 16 * j), even[i]);
        odd[i] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xc + i * k + 16 * j + 16), odd[i]);
      }
    }
    for (int i = 0; i < MR; ++i)
      acc[i] = _mm512_fmadd_ps(_mm512_add_ps(even[i], odd[i]), scale, acc[i]);
  }
  for (int i = 0; i < MR; ++i) {
    float sum = _mm512_reduce_add_ps(acc[i]);
    if constexpr (Nv) sum *= 256.0f;
    // Columns past the last full step (K % 128), in natural order.
    for (size_t col = steps * 128; col < k; ++col) {
      const float element = kE2m1Values[(bytes[col / 2] >> (4 * (col % 2))) & 0xF];
      const uint8_t sb = scales[col / (Nv ? 16 : 32)];
      sum += x[i * k + col] * element * (Nv ? t.e4m3[sb] : t.e8m0[sb]);
    }
    sums[i] = sum * global;
  }
}

template <int MR, int Bits, bool Nv>
void row_dot(const float* x, size_t k, const uint8_t* bytes, const uint8_t* scales, float global,
             float* sums) {
  if constexpr (Bits == 4) {
    rows_dot4<MR, Nv>(x, k, bytes, scales, global, sums);
  } else {
    rows_dot8<MR>(x, k, bytes, scales, sums);
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
          row_dot<1, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
        case 2:
          row_dot<2, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
        case 3:
          row_dot<3, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
        default:
          row_dot<4, Bits, Nv>(xi, k, rb, rs, global, sums);
          break;
      }
      for (size_t i = 0; i < mr; ++i) {
        store_from_f32(out, out_dtype, (i0 + i) * w.rows + n, sums[i]);
      }
    }
  }
}

}  // namespace

std::vector<float> prepare_x4(const float* x, size_t m, size_t k) {
  std::vector<float> out(x, x + m * k);
  for (size_t i = 0; i < m; ++i) {
    for (size_t c = 0; c + 128 <= k; c += 128) {
      for (size_t j = 0; j < 8; ++j) {
        for (size_t w = 0; w < 16; ++w) out[i * k + c + 16 * j + w] = x[i * k + c + 8 * w + j];
      }
    }
  }
  return out;
}

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

}  // namespace nx_quant::microscaled::avx512
