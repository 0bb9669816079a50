// AVX2 GEMV of the microscaled modes with transpose = true (w is [N, K]), any m (rows of x in
// pairs), W in blocks of 2 rows prefetched into L2 (scale bytes too): 4-bit rows through a
// vpshufb table lookup and one AND + vcvtdq2ps per weight position (rows_dot4), mxfp8 bytes as
// f16 bit patterns through vcvtph2ps (rows_dot8). f32 FMAs, exact products, f32 sums.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"
#include "unroll.h"

namespace nx_quant::microscaled::avx2 {

namespace {

constexpr size_t kBlock = 32;          // mxfp8 columns per step: one group
constexpr int kNW = 2;                 // W rows per block (16 ymm registers)
constexpr size_t kPrefetchBlocks = 4;  // W (and its scales) prefetched this many blocks ahead

// mxfp8: one block of 32 columns (one group) of W row `bytes` into acc (one per row of x).
template <int MR>
inline __attribute__((always_inline)) void block8(const float* const* xr, const uint8_t* bytes,
                                                  size_t row_bytes, const uint8_t* scales, size_t b,
                                                  const Tables& t, __m256 (&acc)[MR]) {
  __m256 v[4];
  // The rows are contiguous: the same place kPrefetchBlocks blocks on is a later row's.
  _mm_prefetch(reinterpret_cast<const char*>(bytes + 32 * b + kPrefetchBlocks * kNW * row_bytes),
               _MM_HINT_T1);
  for (int h = 0; h < 2; ++h) {
    const __m256i w16 = _mm256_cvtepu8_epi16(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 32 * b + 16 * h)));
    // f16 bits: sign at bit 15, exponent and mantissa at bits 7..13 (value / 256).
    const __m256i f16 = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w16, 8), 1),
                                         _mm256_set1_epi16(-16512));
    v[2 * h] = _mm256_cvtph_ps(_mm256_castsi256_si128(f16));
    v[2 * h + 1] = _mm256_cvtph_ps(_mm256_extracti128_si256(f16, 1));
  }
  const __m256 scale = _mm256_set1_ps(t.e8m0[scales[b]]);
  for (int i = 0; i < MR; ++i) {
    const float* xb = xr[i] + kBlock * b;
    const __m256 sa =
        _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xb + 8), _mm256_mul_ps(v[0], _mm256_loadu_ps(xb)));
    const __m256 sb = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24),
                                      _mm256_mul_ps(v[2], _mm256_loadu_ps(xb + 16)));
    acc[i] = _mm256_fmadd_ps(sa, scale, _mm256_fmadd_ps(sb, scale, acc[i]));
  }
}

inline float hsum(__m256 a) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

// mxfp8: NW rows of W (row_bytes apart, scales `groups` apart) against MR rows of x:
// sums[i * NW + v].
template <int MR, int NW>
void rows_dot8(const float* x, size_t k, const uint8_t* bytes, size_t row_bytes,
               const uint8_t* scales, size_t groups, float* sums) {
  const Tables& t = tables();
  const float* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = x + i * k;
  __m256 acc[NW][MR];
  for (int v = 0; v < NW; ++v)
    for (int i = 0; i < MR; ++i) acc[v][i] = _mm256_setzero_ps();
  // Scale bytes of later blocks, into L2 with the packed words.
  for (size_t s = 0; s < NW * groups; s += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(scales + kPrefetchBlocks * kNW * groups + s),
                 _MM_HINT_T1);
  }
  const size_t blocks = k / kBlock;  // K is a multiple of the group size, 32
  for (size_t b = 0; b < blocks; ++b) {
    for (int v = 0; v < NW; ++v) {
      block8<MR>(xr, bytes + v * row_bytes, row_bytes, scales + v * groups, b, t, acc[v]);
    }
  }
  for (int v = 0; v < NW; ++v)
    for (int i = 0; i < MR; ++i) sums[i * NW + v] = hsum(acc[v][i]) * 256.0f;
}

// 4-bit rows, 64 columns (32 bytes) per step, with no shuffle per weight (the shuffle port is
// what limits a vpshufb + vpmovsxbd decode): vpshufb looks the low and high nibbles of all 32
// bytes up at once in a table of t(c) = 2 * E2M1(c) + 12 (0..24, unsigned), so lane L (bytes
// 4L .. 4L+3) holds t of columns 8L + 2p + h in byte p (h: high nibble); one AND isolates byte p
// and vcvtdq2ps converts t * 2^(8p) exactly. x comes multiplied by 2^(-8p) / 2 in that order
// (prepare_x4), so each FMA adds x * (E2M1 + 6) exactly, and per lane 6 * (its 8 columns' x),
// prepared alongside, is taken off before the group's scale multiplies the lane. (The scaled x
// is exact unless |x| < 2^-100, where it is subnormal: inside the documented error bound.)
template <int MR, int NW, bool Nv>
void rows_dot4(const float* x, size_t x_stride, size_t k, const uint8_t* bytes, size_t row_bytes,
               const uint8_t* scales, size_t groups, float* sums) {
  const __m256i lut = _mm256_broadcastsi128_si256(
      _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  __m256 acc[NW][MR];
  NXQ_UNROLL
  for (int v = 0; v < NW; ++v) NXQ_UNROLL
  for (int i = 0; i < MR; ++i) acc[v][i] = _mm256_setzero_ps();
  for (size_t s = 0; s < NW * groups; s += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(scales + kPrefetchBlocks * kNW * groups + s),
                 _MM_HINT_T1);
  }
  const Tables& t = tables();
  const size_t full = k / 64, steps = (k + 63) / 64;
  constexpr size_t kGroups = Nv ? 4 : 2;  // per step
  alignas(32) uint8_t tail[32];
  for (size_t c = 0; c < steps; ++c) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = bytes + v * row_bytes + 32 * c;
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * kNW * row_bytes),
                   _MM_HINT_T1);
      __m256i raw;
      if (c < full) {
        raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      } else {  // code 8 (-0) has t = 12, as code 0: the padding adds 12 * 0 (x is 0 there)
        std::memset(tail, 0, sizeof tail);
        std::memcpy(tail, p, k % 64 / 2);
        raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
      }
      const __m256i t_even = _mm256_shuffle_epi8(lut, _mm256_and_si256(raw, nibble));
      const __m256i t_odd =
          _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble));
      // The step's scales as 8 lanes; groups past the row read 0 (their lanes are 0 anyway).
      const uint8_t* rs = scales + v * groups + kGroups * c;
      // The step's scales as 8 lanes (lane L: group L / 4 for mxfp4, L / 2 for nvfp4), each a
      // broadcast of its decoded value; groups past the row are 0 (their lanes are 0 anyway).
      __m256 scale;
      {
        const float* table = Nv ? t.e4m3 : t.e8m0;
        __m256 s[kGroups];
        NXQ_UNROLL
        for (size_t g = 0; g < kGroups; ++g) {
          s[g] =
              kGroups * c + g < groups ? _mm256_broadcast_ss(table + rs[g]) : _mm256_setzero_ps();
        }
        if constexpr (Nv) {
          scale = _mm256_blend_ps(_mm256_blend_ps(s[0], s[1], 0x0C),
                                  _mm256_blend_ps(s[2], s[3], 0xC0), 0xF0);
        } else {
          scale = _mm256_blend_ps(s[0], s[1], 0xF0);
        }
      }
      NXQ_UNROLL
      for (int i = 0; i < MR; ++i) {
        const float* xc = x + i * x_stride + 72 * c;
        __m256 t = _mm256_setzero_ps();
        NXQ_UNROLL
        for (int pos = 0; pos < 4; ++pos) {
          const __m256i mask = _mm256_set1_epi32(static_cast<int>(0xFFu << (8 * pos)));
          t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(t_even, mask)),
                              _mm256_loadu_ps(xc + 16 * pos), t);
          t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(t_odd, mask)),
                              _mm256_loadu_ps(xc + 16 * pos + 8), t);
        }
        acc[v][i] = _mm256_fmadd_ps(_mm256_sub_ps(t, _mm256_loadu_ps(xc + 64)), scale, acc[v][i]);
      }
    }
  }
  NXQ_UNROLL
  for (int v = 0; v < NW; ++v) NXQ_UNROLL
  for (int i = 0; i < MR; ++i) sums[i * NW + v] = hsum(acc[v][i]);
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
  float sums[2 * kNW];
  auto rows_of_w = [&](auto nw, size_t n) {
    constexpr int NW = decltype(nw)::value;
    const uint8_t* rb = bytes + n * row_bytes;
    const uint8_t* rs = scales + n * groups;
    for (size_t i0 = 0; i0 < m; i0 += 2) {
      const size_t mr = std::min<size_t>(2, m - i0);
      if constexpr (Bits == 4) {
        const size_t stride = (k + 63) / 64 * 72;  // x from prepare_x4
        if (mr == 2) {
          rows_dot4<2, NW, Nv>(x + i0 * stride, stride, k, rb, row_bytes, rs, groups, sums);
        } else {
          rows_dot4<1, NW, Nv>(x + i0 * stride, stride, k, rb, row_bytes, rs, groups, sums);
        }
      } else if (mr == 2) {
        rows_dot8<2, NW>(x + i0 * k, k, rb, row_bytes, rs, groups, sums);
      } else {
        rows_dot8<1, NW>(x + i0 * k, k, rb, row_bytes, rs, groups, sums);
      }
      for (size_t i = 0; i < mr; ++i) {
        for (int v = 0; v < NW; ++v) {
          store_from_f32(out, out_dtype, (i0 + i) * w.rows + n + v, sums[i * NW + v] * global);
        }
      }
    }
  };
  size_t n = n_begin;
  for (; n + kNW <= n_end; n += kNW) rows_of_w(std::integral_constant<int, kNW>{}, n);
  for (; n < n_end; ++n) rows_of_w(std::integral_constant<int, 1>{}, n);
}

}  // namespace

std::vector<float> prepare_x4(const float* x, size_t m, size_t k) {
  static constexpr float kPositionScale[4] = {0x1p-1f, 0x1p-9f, 0x1p-17f, 0x1p-25f};  // 2^(-8p-1)
  const size_t steps = (k + 63) / 64, stride = steps * 72;
  std::vector<float> out(m * stride, 0.0f);
  for (size_t i = 0; i < m; ++i) {
    for (size_t c = 0; c < steps; ++c) {
      float* dst = out.data() + i * stride + 72 * c;
      for (size_t pos = 0; pos < 4; ++pos) {
        for (size_t h = 0; h < 2; ++h) {
          for (size_t lane = 0; lane < 8; ++lane) {
            const size_t col = 64 * c + 8 * lane + 2 * pos + h;
            if (col < k) dst[16 * pos + 8 * h + lane] = x[i * k + col] * kPositionScale[pos];
          }
        }
      }
      for (size_t lane = 0; lane < 8; ++lane) {
        double sum = 0;  // 6 * the lane's columns, rounded once
        for (size_t j = 0; j < 8; ++j) {
          const size_t col = 64 * c + 8 * lane + j;
          if (col < k) sum += x[i * k + col];
        }
        dst[64 + lane] = static_cast<float>(6.0 * sum);
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

}  // namespace nx_quant::microscaled::avx2
