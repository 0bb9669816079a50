// The x86 int8 GEMV of the E2M1 modes (int8.h), generic over the byte dot product: included by
// gemv_int8_avx2.cpp (vpmaddubsw + vpmaddwd, or AVX-VNNI) and gemv_int8_avx512.cpp (AVX-512
// VNNI), each compiled for its ISA. Everything here has internal linkage (the anonymous
// namespace), so the two files' copies never merge across ISAs.
//
// W is read one row at a time (a row of 4096 codes is 2 KB: it stays in L1 while up to 4 rows of
// x pass over it) and prefetched into L2 kPrefetchRows rows ahead. Per step of 64 bytes and row of
// x: 4 byte dots of 32 codes (the 4 runs of int8.h) into 8 int32 lanes, minus the lanes' offset
// sums, one conversion, and one FMA with (d * scale) per lane. A row's result does not depend on
// m, on its row block or thread.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "microscaled/int8/int8.h"
#include "unroll.h"

namespace nx_quant::microscaled::int8 {
namespace {

constexpr size_t kPrefetchRows = 8;
constexpr size_t kMaxXRows = 4;  // rows of x per pass over a W row

inline float hsum8(__m256 a) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

// nvfp4: the 8 lanes' scales of a pair from its 8 E4M3 scale bytes `s` (`count` of them in the
// row, fewer in a last partial pair, whose missing groups read code 0), times `factor`: in the
// high half of a 16-bit lane, one arithmetic shift and a mask make each byte the f16 of
// value / 256 (0x7F / 0xFF decode to +-480, as in MLX), which vcvtph2ps converts exactly; the
// 256 is in `factor`. (Decoding in the loop, not in a pass over the row's 896 scale bytes first,
// took nvfp4 from 48-50% to 93% of the read; mxfp4's 4 bytes per pair decoded the same way,
// from E8M0 exponents, ran at 35% against 80% with the pass, a cause not found: mxfp4 keeps it.)
NXQ_ALWAYS_INLINE inline __m256 nvfp4_pair_scales(const uint8_t* s, size_t count,
                                                  __m256i lane_group, __m256 factor) {
  uint64_t bytes = 0;
  if (__builtin_expect(count >= 8, 1)) {
    std::memcpy(&bytes, s, 8);  // a fixed size: one load
  } else {
    std::memcpy(&bytes, s, count);
  }
  const __m128i raw = _mm_cvtsi64_si128(static_cast<long long>(bytes));
  const __m128i h = _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(_mm_setzero_si128(), raw), 1),
                                  _mm_set1_epi16(-16512));  // 0xBF80
  return _mm256_mul_ps(_mm256_permutevar8x32_ps(_mm256_cvtph_ps(h), lane_group), factor);
}

// One W row against MR rows of x from row i0: sums[r]. nvfp4: `scale_bytes`, the row's;
// mxfp4: `scales`, the row's row_scales.
template <class Dot, bool Nv, int MR>
void row_dot(const Int8Operand& x, size_t i0, const uint8_t* row, size_t row_bytes,
             const uint8_t* scale_bytes, const float* scales, size_t groups, __m256i lane_group,
             __m256 factor, float* sums) {
  const __m256i lut =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kOffsetCodes)));
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  constexpr int kGroupsPerPair = Nv ? 8 : 4;
  __m256 acc[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) acc[r] = _mm256_setzero_ps();
  const size_t full = row_bytes / kPairBytes;
  alignas(32) uint8_t tail[kPairBytes];
  for (size_t c = 0; c < x.pairs; ++c) {
    const uint8_t* p = row + c * kPairBytes;
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchRows * row_bytes), _MM_HINT_T1);
    if (__builtin_expect(c >= full, 0)) {  // the row's last partial pair: zero codes past it
      std::memset(tail, 0, sizeof(tail));
      std::memcpy(tail, p, row_bytes - c * kPairBytes);
      p = tail;
    }
    const __m256 r0 = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m256 r1 =
        _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    __m256i t[2];
    if constexpr (Nv) {
      t[0] = _mm256_castps_si256(_mm256_shuffle_ps(r0, r1, _MM_SHUFFLE(2, 0, 2, 0)));
      t[1] = _mm256_castps_si256(_mm256_shuffle_ps(r0, r1, _MM_SHUFFLE(3, 1, 3, 1)));
    } else {
      t[0] = _mm256_castps_si256(_mm256_shuffle_ps(r0, r1, _MM_SHUFFLE(1, 0, 1, 0)));
      t[1] = _mm256_castps_si256(_mm256_shuffle_ps(r0, r1, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    __m256i u[4];  // run 2t + j: u(code) of chunk t's nibbles j
    NXQ_UNROLL
    for (int tt = 0; tt < 2; ++tt) {
      u[2 * tt] = _mm256_shuffle_epi8(lut, _mm256_and_si256(t[tt], nibble));
      u[2 * tt + 1] =
          _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(t[tt], 4), nibble));
    }
    __m256 scale;
    if constexpr (Nv) {
      scale = nvfp4_pair_scales(scale_bytes + c * kGroupsPerPair, groups - c * kGroupsPerPair,
                                lane_group, factor);
    } else {
      scale = _mm256_permutevar8x32_ps(_mm256_loadu_ps(scales + c * kGroupsPerPair), lane_group);
    }
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      const size_t slot = (i0 + r) * x.pairs + c;
      const int8_t* xq = x.q.data() + slot * kPairValues;
      const __m256i dot = _mm256_sub_epi32(
          Dot::dot4(u, xq),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bias.data() + slot * kLanes)));
      const __m256 d = _mm256_loadu_ps(x.d.data() + slot * kLanes);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, scale), acc[r]);
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) sums[r] = hsum8(acc[r]);
}

template <class Dot, bool Nv>
void gemv_rows(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out) {
  const size_t k = w.cols, groups = k / static_cast<size_t>(w.spec.group_size);
  const size_t row_bytes = k / 2;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  alignas(32) int32_t lanes[kLanes];
  for (int p = 0; p < kLanes; ++p) lanes[p] = group_of_lane(Nv, p);
  const __m256i lane_group = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
  const auto* scale_bytes = static_cast<const uint8_t*>(w.scales.data);
  // Halved (the codes are twice the values), nvfp4's global factor and its f16 256.
  float f = 0.5f;
  if constexpr (Nv) {
    f *= 256.0f;
    if (w.spec.global_scale != 0.0f) f *= w.spec.global_scale / 2688.0f;
  }
  const __m256 factor = _mm256_set1_ps(f);
  std::vector<float> scales(Nv ? 0 : groups + kLanes);
  float sums[kMaxXRows];
  for (size_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row_scale_bytes = scale_bytes + n * groups;
    _mm_prefetch(reinterpret_cast<const char*>(row_scale_bytes + kPrefetchRows * groups),
                 _MM_HINT_T1);
    if constexpr (!Nv) row_scales(w, n, scales.data());
    const uint8_t* row = bytes + n * row_bytes;
    for (size_t i0 = 0; i0 < x.m; i0 += kMaxXRows) {
      const size_t mr = std::min(kMaxXRows, x.m - i0);
      auto run = [&](auto rows) {
        row_dot<Dot, Nv, decltype(rows)::value>(x, i0, row, row_bytes, row_scale_bytes,
                                                scales.data(), groups, lane_group, factor, sums);
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
      for (size_t i = 0; i < mr; ++i)
        store_from_f32(out, out_dtype, (i0 + i) * w.rows + n, sums[i]);
    }
  }
}

template <class Dot>
void gemv(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
          size_t n_end, void* out) {
  if (x.nvfp4) {
    gemv_rows<Dot, true>(x, w, out_dtype, n_begin, n_end, out);
  } else {
    gemv_rows<Dot, false>(x, w, out_dtype, n_begin, n_end, out);
  }
}

}  // namespace
}  // namespace nx_quant::microscaled::int8
