// AVX2 GEMV of the microscaled modes with transpose = true (w is [N, K]), any m (up to 4 rows
// of x per pass), W one row at a time, prefetched into L2 a few rows ahead (scale bytes too): 4-bit
// rows through a vpshufb table lookup and one AND (or shift) + vcvtdq2ps per weight position
// (rows_dot4), mxfp8 bytes as f16 bit patterns through vcvtph2ps (rows_dot8). f32 FMAs, exact
// products, f32 sums; a row's result does not depend on m (each row of x runs the same code).
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

// W is read one row at a time (one stream; a row of 4096 columns is 2 or 4 KB and stays in L1
// while the groups of up to 4 x rows pass over it) and prefetched into L2 this many rows ahead, its
// scale bytes too. (Two rows per pass had GCC share each x load between the rows and keep
// the shared vectors and the accumulators on the stack: a store per load.)
constexpr size_t kPrefetchRows = 8;

inline float hsum(__m256 a) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

inline void prefetch_scales(const uint8_t* scales, size_t groups) {
  const uint8_t* ahead = scales + kPrefetchRows * groups;
  for (size_t s = 0; s < groups; s += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(ahead + s), _MM_HINT_T1);
  }
}

// mxfp8: one W row (scales one byte per 32 columns) against MR rows of x (k apart): sums[i].
// Per 32 columns (one group) one 32-byte load; vpunpck{l,h}bw with zero puts each E4M3 byte in
// the high half of a 16-bit lane (lane order: columns 0-7 and 16-23, then 8-15 and 24-31), one
// arithmetic shift and a mask make it the f16 of value / 256, which vcvtph2ps converts exactly.
template <int MR>
void rows_dot8(const float* x, size_t k, const uint8_t* bytes, size_t row_bytes,
               const uint8_t* scales, size_t groups, float* sums) {
  const Tables& t = tables();
  const __m256i zero = _mm256_setzero_si256();
  const __m256i f16_mask = _mm256_set1_epi16(-16512);  // 0xBF80: sign, exponent, mantissa
  __m256 acc[MR];
  NXQ_UNROLL
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  prefetch_scales(scales, groups);
  const size_t blocks = k / 32;  // K is a multiple of the group size, 32
  for (size_t b = 0; b < blocks; ++b) {
    const uint8_t* p = bytes + 32 * b;
    if ((b & 1) == 0) {  // one prefetch per 64-byte line
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchRows * row_bytes), _MM_HINT_T1);
    }
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    // f16 bits: sign at bit 15, exponent and mantissa at bits 7..13 (value / 256).
    const __m256i lo = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(zero, raw), 1),
                                        f16_mask);  // columns 0-7 | 16-23
    const __m256i hi = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(zero, raw), 1),
                                        f16_mask);  // columns 8-15 | 24-31
    const __m256 v0 = _mm256_cvtph_ps(_mm256_castsi256_si128(lo));
    const __m256 v1 = _mm256_cvtph_ps(_mm256_castsi256_si128(hi));
    const __m256 v2 = _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1));
    const __m256 v3 = _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1));
    const __m256 scale = _mm256_broadcast_ss(t.e8m0 + scales[b]);
    NXQ_UNROLL
    for (int i = 0; i < MR; ++i) {
      const float* xb = x + i * k + 32 * b;
      const __m256 sa =
          _mm256_fmadd_ps(v1, _mm256_loadu_ps(xb + 8), _mm256_mul_ps(v0, _mm256_loadu_ps(xb)));
      const __m256 sb = _mm256_fmadd_ps(v3, _mm256_loadu_ps(xb + 24),
                                        _mm256_mul_ps(v2, _mm256_loadu_ps(xb + 16)));
      acc[i] = _mm256_fmadd_ps(sa, scale, _mm256_fmadd_ps(sb, scale, acc[i]));
    }
  }
  NXQ_UNROLL
  for (int i = 0; i < MR; ++i) sums[i] = hsum(acc[i]) * 256.0f;
}

// 4-bit rows, 64 columns (32 bytes) per step, with no shuffle per weight (the shuffle port is
// what limits a vpshufb + vpmovsxbd decode): vpshufb looks the low and high nibbles of all 32
// bytes up at once in a table of t(c) = 2 * E2M1(c) + 12 (0..24, unsigned), so lane L (bytes
// 4L .. 4L+3) holds t of columns 8L + 2p + h in byte p (h: high nibble); one AND isolates byte p
// (p < 3; byte 3 is shifted down instead) and vcvtdq2ps converts t * 2^(8p) (t for p = 3)
// exactly. x comes multiplied by 2^(-8p) / 2 (2^-1 for p = 3) in that order (prepare_x4), so
// each FMA adds x * (E2M1 + 6) exactly; per lane -6 * (its 8 columns' x), prepared alongside,
// starts the chain of the low nibbles, and the group's scale multiplies the lane's sum. (The
// scaled x is exact unless |x| < 2^-109, where it is subnormal: inside the documented error
// bound.) Per step and row of x two chains of 4 FMAs (low nibbles, high nibbles), then added:
// the same operations for a row whatever m.
template <int MR, bool Nv>
struct Dot4 {
  const float* x;
  size_t x_stride;
  const float* table;  // scale byte -> value
  __m256i lut, nibble;
  __m256 acc[MR];

  // The step at `raw` (32 bytes), x at 72 * c, with the 8 lanes' scales.
  NXQ_ALWAYS_INLINE inline void step(__m256i raw, size_t c, __m256 scale) {
    const __m256i t_even = _mm256_shuffle_epi8(lut, _mm256_and_si256(raw, nibble));
    const __m256i t_odd =
        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble));
    NXQ_UNROLL
    for (int i = 0; i < MR; ++i) {
      const float* xc = x + i * x_stride + 72 * c;
      // Byte p of each lane: masked in place (p < 3) or shifted down (p = 3); the even chain
      // starts from the lanes' offset, -6 * their x.
      __m256 te = _mm256_loadu_ps(xc + 64), to = _mm256_setzero_ps();
      NXQ_UNROLL
      for (int pos = 0; pos < 4; ++pos) {
        __m256i e, o;
        if (pos < 3) {
          const __m256i mask = _mm256_set1_epi32(static_cast<int>(0xFFu << (8 * pos)));
          e = _mm256_and_si256(t_even, mask);
          o = _mm256_and_si256(t_odd, mask);
        } else {
          e = _mm256_srli_epi32(t_even, 24);
          o = _mm256_srli_epi32(t_odd, 24);
        }
        te = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e), _mm256_loadu_ps(xc + 16 * pos), te);
        const __m256 xo = _mm256_loadu_ps(xc + 16 * pos + 8);
        to = pos == 0 ? _mm256_mul_ps(_mm256_cvtepi32_ps(o), xo)
                      : _mm256_fmadd_ps(_mm256_cvtepi32_ps(o), xo, to);
      }
      acc[i] = _mm256_fmadd_ps(_mm256_add_ps(te, to), scale, acc[i]);
    }
  }
};

// The 8 lanes' scales of step c (lane L: group 2c + L / 4 for mxfp4, 4c + L / 2 for nvfp4).
template <bool Nv>
NXQ_ALWAYS_INLINE inline __m256 step_scale(const float* table, const uint8_t* rs) {
  if constexpr (Nv) {
    const __m256 s01 = _mm256_blend_ps(_mm256_broadcast_ss(table + rs[0]),
                                       _mm256_broadcast_ss(table + rs[1]), 0x0C);
    const __m256 s23 = _mm256_blend_ps(_mm256_broadcast_ss(table + rs[2]),
                                       _mm256_broadcast_ss(table + rs[3]), 0xC0);
    return _mm256_blend_ps(s01, s23, 0xF0);
  } else {
    return _mm256_blend_ps(_mm256_broadcast_ss(table + rs[0]), _mm256_broadcast_ss(table + rs[1]),
                           0xF0);
  }
}

// One 4-bit W row against MR rows of x (prepare_x4's layout, x_stride apart): sums[i].
template <int MR, bool Nv>
void rows_dot4(const float* x, size_t x_stride, size_t k, const uint8_t* bytes, size_t row_bytes,
               const uint8_t* scales, size_t groups, float* sums) {
  Dot4<MR, Nv> d;
  d.x = x;
  d.x_stride = x_stride;
  d.table = Nv ? tables().e4m3 : tables().e8m0;
  d.lut = _mm256_broadcastsi128_si256(
      _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  d.nibble = _mm256_set1_epi8(0x0F);
  NXQ_UNROLL
  for (int i = 0; i < MR; ++i) d.acc[i] = _mm256_setzero_ps();
  prefetch_scales(scales, groups);
  constexpr size_t kGroups = Nv ? 4 : 2;  // per step
  const size_t full = k / 64;
#pragma GCC unroll 2
  for (size_t c = 0; c < full; ++c) {
    const uint8_t* p = bytes + 32 * c;
    if ((c & 1) == 0) {  // one prefetch per 64-byte line
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchRows * row_bytes), _MM_HINT_T1);
    }
    d.step(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), c,
           step_scale<Nv>(d.table, scales + kGroups * c));
  }
  if (k % 64 != 0) {  // code 8 (-0) has t = 12, as code 0: the padding adds 12 * 0 (x is 0 there)
    alignas(32) uint8_t tail[32] = {};
    std::memcpy(tail, bytes + 32 * full, k % 64 / 2);
    // Groups past the row read scale 0 (their lanes are 0 anyway).
    uint8_t rs[kGroups] = {};
    const size_t left = groups - kGroups * full;
    std::memcpy(rs, scales + kGroups * full, left);
    alignas(32) float s[8];
    const float* table = d.table;
    for (int l = 0; l < 8; ++l) {
      const size_t g = static_cast<size_t>(l) / (Nv ? 2 : 4);
      s[l] = g < left ? table[rs[g]] : 0.0f;
    }
    d.step(_mm256_load_si256(reinterpret_cast<const __m256i*>(tail)), full, _mm256_load_ps(s));
  }
  NXQ_UNROLL
  for (int i = 0; i < MR; ++i) sums[i] = hsum(d.acc[i]);
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
  const size_t stride = Bits == 4 ? (k + 63) / 64 * 72 : k;  // x from prepare_x4, or as it is
  constexpr size_t kMaxRows = 4;  // rows of x per pass over a W row (sharing its decode)
  float sums[kMaxRows];
  for (size_t n = n_begin; n < n_end; ++n) {
    const uint8_t* rb = bytes + n * row_bytes;
    const uint8_t* rs = scales + n * groups;
    for (size_t i0 = 0; i0 < m; i0 += kMaxRows) {
      const size_t mr = std::min(kMaxRows, m - i0);
      const float* xi = x + i0 * stride;
      auto run = [&](auto rows) {
        constexpr int MR = decltype(rows)::value;
        if constexpr (Bits == 4) {
          rows_dot4<MR, Nv>(xi, stride, k, rb, row_bytes, rs, groups, sums);
        } else {
          rows_dot8<MR>(xi, k, rb, row_bytes, rs, groups, sums);
        }
      };
      switch (mr) {
        case 1:
          run(std::integral_constant<int, 1>{});
          break;
        case 2:
          run(std::integral_constant<int, 2>{});
          break;
        case 3:
          run(std::integral_constant<int, 3>{});
          break;
        default:
          run(std::integral_constant<int, 4>{});
          break;
      }
      for (size_t i = 0; i < mr; ++i) {
        store_from_f32(out, out_dtype, (i0 + i) * w.rows + n, sums[i] * global);
      }
    }
  }
}

}  // namespace

std::vector<float> prepare_x4(const float* x, size_t m, size_t k) {
  static constexpr float kPositionScale[4] = {0x1p-1f, 0x1p-9f, 0x1p-17f,
                                              0x1p-1f};  // see rows_dot4
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
        dst[64 + lane] = static_cast<float>(-6.0 * sum);
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
