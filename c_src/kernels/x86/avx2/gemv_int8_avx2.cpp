// The AVX2 GEMV of the int8 activation mode (Precision::Int8; transpose = true, m <= 8) for 2-,
// 4- and 8-bit weights, whose values sit whole in bytes. (3, 5 and 6 bits straddle bytes, and
// AVX2 has no per-byte shift to pull them apart: those widths compute exactly, which Int8
// permits.)
//
// A 32-byte load (a chunk) of a W row holds 32 * P values, P = 8 / bits per byte; plane j (a
// 16-bit shift by bits * j and a byte mask) leaves in byte B value P*B + j. W is read 64 bytes
// (a pair of chunks) at a time, the two chunks' dwords regrouped by one in-lane shuffle so that
// dword p of both halves lies in one 32-value block of x and one group of W (see regroup). x's
// int8 values are stored once per call in that order, plane by plane, pair by pair with the m
// rows of a pair together, so one unsigned x signed byte dot product per plane and half sums,
// in int32 lane p, 8P values of one block: on AVX-VNNI one vpdpbusd each; otherwise vpmaddubsw
// (pairs to int16: at most 2 * 15 * 127 per pair, and 2 * 4 planes of 2 bits or 2 * 2 of 4
// bits add up below 2^15), added in int16, then vpmaddwd by ones to int32. 8-bit bytes would
// saturate vpmaddubsw, so there the low and high nibbles go through it separately and the high
// sum is shifted by 4. Both give the same exact integers, hence the same bits.
//
// Then, per pair and lane: acc += float(dot) * (d_block * scale_group) (one conversion per row
// of x and 64 bytes of W), and the result is the 8 lanes reduced in a fixed order plus sum_g
// bias_g * sum(x_g) (x's exact f32 group sums). Every output is computed in the same order
// whatever m, its row block or thread: a row's result depends on that row of x only. For
// m >= 2 one W row meets up to 8 rows of x at a time (8 accumulators and the row's planes fit
// in the 16 registers).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemv_loops.h"
#include "unroll.h"
#include "x86/avx2/dpbusd_vex.h"
#include "x86/avx2/gemv_avx2.h"
#include "x86/avx2/gemv_common_avx2.h"

namespace nx_quant::avx2 {

namespace {

template <int Bits>
struct Int8Layout {
  static constexpr int kPlanes = 8 / Bits;         // values per byte
  static constexpr int kValues = 32 * kPlanes;     // values per 32-byte chunk: 128, 64 or 32
  static constexpr int kPairValues = 2 * kValues;  // values per pair of chunks (one 64-byte line)
};

// A pair of chunks R0, R1 (64 bytes of a W row) is regrouped by one in-lane shuffle into T0, T1
// so that dword p of T0 and of T1 come from one 32-value block of x (one d): 2 bits (blocks of
// 2 dwords) T_t = (R0[4h + t], R0[4h + 2 + t], R1[4h + t], R1[4h + 2 + t]) in each half h; 4 and
// 8 bits (blocks of 4 and 8 dwords) T_t = (R0[4h + 2t], R0[4h + 2t + 1], R1[..], R1[..]). The
// integer dots of T0 and T1 then add up in one lane before a single conversion to f32: one
// cvt + mul + fma per row of x and 64 bytes of W instead of per 32.
template <int Bits>
NXQ_ALWAYS_INLINE inline void regroup(__m256i r0, __m256i r1, __m256i* t0, __m256i* t1) {
  const __m256 a = _mm256_castsi256_ps(r0), b = _mm256_castsi256_ps(r1);
  if constexpr (Bits == 2) {
    *t0 = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    *t1 = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  } else {
    *t0 = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)));
    *t1 = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
}

// The chunk (0 = R0, 1 = R1) and dword of the pair that dword p of T_t holds (see regroup).
template <int Bits>
constexpr int source_chunk(int p) {
  return (p % 4) / 2;
}
template <int Bits>
constexpr int source_dword(int t, int p) {
  return Bits == 2 ? 4 * (p / 4) + 2 * (p % 2) + t : 4 * (p / 4) + (p % 2) + 2 * t;
}

// The int32 dots of one pair: lane p sums the values of T0's and T1's dword p times x's int8
// values `xq` (stored per t, plane by plane: 2 * P runs of 32 bytes).
template <int Bits, bool Vnni>
NXQ_ALWAYS_INLINE inline __m256i pair_dot(__m256i t0, __m256i t1, const int8_t* xq) {
  using L = Int8Layout<Bits>;
  constexpr int P = L::kPlanes;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << Bits) - 1));
  auto plane = [&](__m256i raw, int j) NXQ_ALWAYS_INLINE {
    if (Bits == 8) return raw;
    return _mm256_and_si256(j == 0 ? raw : _mm256_srli_epi16(raw, Bits * j), mask);
  };
  auto xplane = [&](int t, int j) NXQ_ALWAYS_INLINE {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * (t * P + j)));
  };
  if constexpr (Vnni) {
    __m256i acc = _mm256_setzero_si256();
    NXQ_UNROLL
    for (int j = 0; j < P; ++j) acc = dpbusd_vex(acc, plane(t0, j), xplane(0, j));
    NXQ_UNROLL
    for (int j = 0; j < P; ++j) acc = dpbusd_vex(acc, plane(t1, j), xplane(1, j));
    return acc;
  } else {
    // int16 sums stay below 2^15: at most 2 * P planes of pairs <= 2 * (2^Bits - 1) * 127
    // (8 bits: nibbles, 2 of them per t).
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (Bits == 8) {
      const __m256i low = _mm256_set1_epi8(0x0F);
      const __m256i x0 = xplane(0, 0), x1 = xplane(1, 0);
      const __m256i lo = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(t0, low), x0),
                                          _mm256_maddubs_epi16(_mm256_and_si256(t1, low), x1));
      const __m256i hi = _mm256_add_epi16(
          _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(t0, 4), low), x0),
          _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(t1, 4), low), x1));
      return _mm256_add_epi32(_mm256_madd_epi16(lo, ones),
                              _mm256_slli_epi32(_mm256_madd_epi16(hi, ones), 4));
    } else {
      __m256i s16 = _mm256_maddubs_epi16(plane(t0, 0), xplane(0, 0));
      NXQ_UNROLL
      for (int j = 1; j < P; ++j) {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(plane(t0, j), xplane(0, j)));
      }
      NXQ_UNROLL
      for (int j = 0; j < P; ++j) {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(plane(t1, j), xplane(1, j)));
      }
      return _mm256_madd_epi16(s16, ones);
    }
  }
}

// W rows `rows` .. + NW against rows i0 .. i0+MR of x; results to out[r * out_stride + v].
template <int Bits, int GS, int MR, int NW, bool Vnni>
NXQ_ALWAYS_INLINE inline void int8_block(const Int8Operand& x, size_t i0, size_t pairs,
                                         __m256i group_of_lane, const uint8_t* rows,
                                         size_t row_bytes, const uint8_t* end, const float* scales,
                                         const float* biases, size_t pstride, size_t groups,
                                         float* out, size_t out_stride) {
  using L = Int8Layout<Bits>;
  constexpr int kGroupsPerPair = L::kPairValues / GS;  // 0: a pair inside one group
  const size_t m = x.source->m;  // x is stored pair by pair, the m rows of a pair together
  const int8_t* xq = x.q.data() + i0 * L::kPairValues;
  const float* xd = x.d.data() + i0 * 8;
  __m256 acc[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  alignas(32) uint8_t tmp[64];
  for (size_t c = 0; c < pairs; ++c) {
    __m256i t0[NW], t1[NW];
    __m256 scale[NW];
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = rows + v * row_bytes + c * 64;
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * NW * row_bytes),
                   _MM_HINT_T1);
      if (__builtin_expect(p + 64 > end, 0)) {  // the loads would leave the packed buffer
        std::memset(tmp, 0, sizeof(tmp));
        if (p < end) std::memcpy(tmp, p, static_cast<size_t>(end - p));
        p = tmp;
      }
      regroup<Bits>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)), &t0[v], &t1[v]);
      const float* row_scales = scales + v * pstride;
      if constexpr (kGroupsPerPair <= 1) {
        scale[v] = _mm256_broadcast_ss(row_scales + c * L::kPairValues / GS);
      } else {
        scale[v] = _mm256_permutevar8x32_ps(_mm256_loadu_ps(row_scales + c * kGroupsPerPair),
                                            group_of_lane);
      }
    }
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 d = _mm256_loadu_ps(xd + r * 8);
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        const __m256i dot = pair_dot<Bits, Vnni>(t0[v], t1[v], xq + r * L::kPairValues);
        acc[r][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, scale[v]), acc[r][v]);
      }
    }
    xq += m * L::kPairValues;
    xd += m * 8;
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    const float* xsum = x.source->group_sum.data() + (i0 + r) * groups;
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      out[r * out_stride + v] = hsum(acc[r][v]) + dot(biases + v * pstride, xsum, groups);
    }
  }
}

template <int Bits, int GS, bool Vnni>
void gemv_int8_impl(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                    size_t n_end, void* out) {
  using L = Int8Layout<Bits>;
  const size_t m = x.source->m, k_dim = w.cols;
  const size_t groups = k_dim / GS;
  const size_t row_bytes = k_dim * Bits / 8;
  const size_t pairs = x.q_stride / L::kPairValues;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  const uint8_t* end = bytes + w.packed.bytes;
  alignas(32) int32_t lanes[8];
  for (int p = 0; p < 8; ++p) {
    const int value =
        source_chunk<Bits>(p) * L::kValues + 4 * L::kPlanes * source_dword<Bits>(0, p);
    lanes[p] = value / GS;
  }
  const __m256i group_of_lane = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
  BlockParams params(groups);
  const size_t ps = params.stride;
  std::vector<float> result(m * kMaxBlockRows);

  auto rows_of_x = [&](auto nw, size_t n, int v0) {
    constexpr int NW = decltype(nw)::value;
    const uint8_t* rows = bytes + n * row_bytes;
    const float* s = params.scales.data() + v0 * ps;
    const float* b = params.biases.data() + v0 * ps;
    float* res = result.data() + v0;
    if (m == 1) {
      int8_block<Bits, GS, 1, NW, Vnni>(x, 0, pairs, group_of_lane, rows, row_bytes, end, s, b, ps,
                                        groups, res, kMaxBlockRows);
      return;
    }
    // m >= 2: one W row against up to 8 rows of x at a time (8 accumulators, the row's
    // planes, its scales and x's steps fit in the 16 registers; the row stays in L1 between
    // passes).
    for (int v = 0; v < NW; ++v) {
      const uint8_t* row = rows + v * row_bytes;
      size_t i0 = 0;
      auto pass = [&](auto mr) {
        constexpr int MR = decltype(mr)::value;
        int8_block<Bits, GS, MR, 1, Vnni>(x, i0, pairs, group_of_lane, row, row_bytes, end,
                                          s + v * ps, b + v * ps, ps, groups,
                                          res + v + i0 * kMaxBlockRows, kMaxBlockRows);
        i0 += MR;
      };
      while (m - i0 >= 8) pass(detail::Int<8>{});
      if (m - i0 >= 4) pass(detail::Int<4>{});
      if (m - i0 >= 2) pass(detail::Int<2>{});
      if (m - i0 >= 1) pass(detail::Int<1>{});
    }
  };
  const size_t block = m == 1 ? 4 : 2;
  for_each_row_block(w, params, block, n_begin, n_end, m, result, out_dtype, out, rows_of_x);
}

template <typename F>
void with_int8_bits(int bits, F&& f) {
  switch (bits) {
    case 2:
      return f(detail::Int<2>{});
    case 4:
      return f(detail::Int<4>{});
    default:
      return f(detail::Int<8>{});
  }
}

}  // namespace

bool has_int8_path(int bits) {
  return bits == 2 || bits == 4 || bits == 8;
}

Int8Operand prepare_int8(const detail::Int8Activations& xa, int bits) {
  Int8Operand p;
  p.source = &xa;
  p.bits = bits;
  with_int8_bits(bits, [&](auto b) {
    constexpr int B = decltype(b)::value;
    using L = Int8Layout<B>;
    constexpr int P = L::kPlanes;
    const size_t pairs = (xa.k + L::kPairValues - 1) / L::kPairValues;
    p.q_stride = pairs * L::kPairValues;  // per row; stored [pair][row][kPairValues]
    p.d_stride = pairs * 8;               // per row; stored [pair][row][8]
    p.q.assign(xa.m * p.q_stride, 0);
    p.d.assign(xa.m * p.d_stride, 0.0f);
    const size_t blocks = xa.k_padded / detail::kInt8Block;
    // perm[b]: the value of the pair that byte b of the pair's x holds (byte i of dword p of T_t
    // in plane j at 32 * (t * P + j) + 4 * p + i).
    int perm[L::kPairValues];
    for (int t = 0; t < 2; ++t) {
      for (int j = 0; j < P; ++j) {
        for (int byte = 0; byte < 32; ++byte) {
          const int pos = byte / 4, i = byte % 4;
          perm[32 * (t * P + j) + byte] =
              source_chunk<B>(pos) * L::kValues + P * (4 * source_dword<B>(t, pos) + i) + j;
        }
      }
    }
    for (size_t c = 0; c < pairs; ++c) {
      const size_t base = c * L::kPairValues;
      const bool whole = base + L::kPairValues <= xa.k_padded;
      for (size_t r = 0; r < xa.m; ++r) {
        const int8_t* src = xa.q.data() + r * xa.k_padded + base;
        int8_t* dst = p.q.data() + (c * xa.m + r) * L::kPairValues;
        if (whole) {
          for (int b = 0; b < L::kPairValues; ++b) dst[b] = src[perm[b]];
        } else {
          for (int b = 0; b < L::kPairValues; ++b) {
            dst[b] = base + perm[b] < xa.k_padded ? src[perm[b]] : 0;
          }
        }
        for (int pos = 0; pos < 8; ++pos) {
          const size_t v = base + perm[4 * pos];  // T0, plane 0, byte 0 of dword pos
          p.d[(c * xa.m + r) * 8 + pos] =
              v < xa.k_padded ? xa.d[r * blocks + v / detail::kInt8Block] : 0.0f;
        }
      }
    }
  });
  return p;
}

void gemv_nk_int8(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                  size_t n_end, void* out, bool vnni) {
  if (x.source->m == 0 || n_begin >= n_end) return;
  with_int8_bits(w.spec.bits, [&](auto bits) {
    detail::with_group_size(static_cast<size_t>(w.spec.group_size), [&](auto gs) {
      constexpr int B = decltype(bits)::value, G = decltype(gs)::value;
      if (vnni) {
        gemv_int8_impl<B, G, true>(x, w, out_dtype, n_begin, n_end, out);
      } else {
        gemv_int8_impl<B, G, false>(x, w, out_dtype, n_begin, n_end, out);
      }
    });
  });
}

}  // namespace nx_quant::avx2
