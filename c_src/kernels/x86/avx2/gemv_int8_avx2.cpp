// The AVX2 GEMV of the int8 activation mode (Precision::Int8; transpose = true, m <= 8) for 2-,
// 4- and 8-bit weights, whose values sit whole in bytes. (3, 5 and 6 bits straddle bytes, and
// AVX2 has no per-byte shift to pull them apart: those widths compute exactly, which Int8
// permits.)
//
// A 32-byte load of a W row holds 32 * P values, P = 8 / bits per byte; plane j (a 16-bit shift
// by bits * j and a byte mask) leaves in byte B value P*B + j. x's int8 values are stored once
// per call in that order, plane by plane, so one unsigned x signed byte dot product per plane
// sums, in int32 lane L, the 4P values 4P*L .. 4P*L + 4P-1 (all in one 32-value block of x and
// one group of W): on AVX-VNNI one vpdpbusd per plane; otherwise vpmaddubsw per plane (pairs
// to int16: at most 2 * 15 * 127 per pair and 4 planes of 2 bits, no saturation), the planes
// added in int16, then vpmaddwd by ones to int32. 8-bit bytes would saturate vpmaddubsw, so
// there the low and high nibbles go through it separately and the high sum is shifted by 4.
// Both give the same exact integers, hence the same bits.
//
// Then, per chunk and lane, as the AVX-512 VNNI kernel: acc += float(dot) * (d_block *
// scale_group), and the result is the 8 lanes reduced in a fixed order plus sum_g bias_g *
// sum(x_g) (x's exact f32 group sums). Every output is computed in the same order whatever m,
// its row block or thread: a row's result depends on that row of x only.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemv_loops.h"
#include "unroll.h"
#include "x86/avx2/gemv_avx2.h"
#include "x86/avx2/gemv_common_avx2.h"

namespace nx_quant::avx2 {

namespace {

template <int Bits>
struct Int8Layout {
  static constexpr int kPlanes = 8 / Bits;         // values per byte
  static constexpr int kValues = 32 * kPlanes;     // values per 32-byte chunk: 128, 64 or 32
  static constexpr int kLaneValues = 4 * kPlanes;  // values summed in one int32 lane
};

// acc + sum of the 4 byte products w (unsigned) x x (signed) in each int32 lane: AVX-VNNI's
// vpdpbusd (VEX-encoded: the AVX-512 EVEX form needs AVX512_VNNI), as inline assembly so that
// this file needs no compiler flag beyond AVX2, and is only run where the CPU has it.
NXQ_ALWAYS_INLINE inline __m256i dpbusd_vex(__m256i acc, __m256i w, __m256i x) {
  asm("%{vex%} vpdpbusd %[x], %[w], %[acc]" : [acc] "+x"(acc) : [w] "x"(w), [x] "x"(x));
  return acc;
}

// The int32 dots of one chunk: lane L sums values 4P*L .. 4P*L + 4P-1 of the chunk `raw`
// times x's int8 values `xq` (stored plane by plane).
template <int Bits, bool Vnni>
NXQ_ALWAYS_INLINE inline __m256i chunk_dot(__m256i raw, const int8_t* xq) {
  using L = Int8Layout<Bits>;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << Bits) - 1));
  auto plane = [&](int j) NXQ_ALWAYS_INLINE {
    if (Bits == 8) return raw;
    return _mm256_and_si256(j == 0 ? raw : _mm256_srli_epi16(raw, Bits * j), mask);
  };
  auto xplane = [&](int j) NXQ_ALWAYS_INLINE {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * j));
  };
  if constexpr (Vnni) {
    __m256i acc = _mm256_setzero_si256();
    NXQ_UNROLL
    for (int j = 0; j < L::kPlanes; ++j) acc = dpbusd_vex(acc, plane(j), xplane(j));
    return acc;
  } else {
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (Bits == 8) {
      const __m256i low = _mm256_set1_epi8(0x0F);
      const __m256i x0 = xplane(0);
      const __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(raw, low), x0);
      const __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low), x0);
      return _mm256_add_epi32(_mm256_madd_epi16(lo, ones),
                              _mm256_slli_epi32(_mm256_madd_epi16(hi, ones), 4));
    } else {
      __m256i s16 = _mm256_maddubs_epi16(plane(0), xplane(0));
      NXQ_UNROLL
      for (int j = 1; j < L::kPlanes; ++j) {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(plane(j), xplane(j)));
      }
      return _mm256_madd_epi16(s16, ones);
    }
  }
}

// W rows `rows` .. + NW against rows i0 .. i0+MR of x; results to out[r * out_stride + v].
template <int Bits, int GS, int MR, int NW, bool Vnni>
NXQ_ALWAYS_INLINE inline void int8_block(const Int8Operand& x, size_t i0, size_t chunks,
                                         __m256i group_of_lane, const uint8_t* rows,
                                         size_t row_bytes, const uint8_t* end, const float* scales,
                                         const float* biases, size_t pstride, size_t groups,
                                         float* out, size_t out_stride) {
  using L = Int8Layout<Bits>;
  constexpr int kGroupsPerChunk = L::kValues >= GS ? L::kValues / GS : 1;
  const int8_t* xq[MR];
  const float* xd[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    xq[r] = x.q.data() + (i0 + r) * x.q_stride;
    xd[r] = x.d.data() + (i0 + r) * x.d_stride;
  }
  __m256 acc[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  alignas(32) uint8_t tmp[32];
  for (size_t c = 0; c < chunks; ++c) {
    __m256i raw[NW];
    __m256 scale[NW];
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = rows + v * row_bytes + c * 32;
      if (c % 2 == 0) {  // once per cache line
        _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * NW * row_bytes),
                     _MM_HINT_T1);
      }
      if (__builtin_expect(p + 32 > end, 0)) {  // the load would leave the packed buffer
        std::memset(tmp, 0, sizeof(tmp));
        std::memcpy(tmp, p, static_cast<size_t>(end - p));
        p = tmp;
      }
      raw[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const float* row_scales = scales + v * pstride;
      const size_t first = c * L::kValues / GS;
      if constexpr (kGroupsPerChunk == 1) {
        scale[v] = _mm256_broadcast_ss(row_scales + first);
      } else {
        scale[v] = _mm256_permutevar8x32_ps(
            _mm256_castps128_ps256(_mm_loadu_ps(row_scales + first)), group_of_lane);
      }
    }
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 d = _mm256_loadu_ps(xd[r] + c * 8);
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        const __m256i dot = chunk_dot<Bits, Vnni>(raw[v], xq[r] + c * L::kValues);
        acc[r][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, scale[v]), acc[r][v]);
      }
    }
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
  const size_t chunks = x.q_stride / L::kValues;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  const uint8_t* end = bytes + w.packed.bytes;
  alignas(32) int32_t lanes[8];
  for (int l = 0; l < 8; ++l) lanes[l] = L::kLaneValues * l / GS;
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
    size_t i0 = 0;
    for (; i0 + 4 <= m; i0 += 4) {
      int8_block<Bits, GS, 4, NW, Vnni>(x, i0, chunks, group_of_lane, rows, row_bytes, end, s, b,
                                        ps, groups, res + i0 * kMaxBlockRows, kMaxBlockRows);
    }
    if (m - i0 >= 2) {
      int8_block<Bits, GS, 2, NW, Vnni>(x, i0, chunks, group_of_lane, rows, row_bytes, end, s, b,
                                        ps, groups, res + i0 * kMaxBlockRows, kMaxBlockRows);
      i0 += 2;
    }
    if (i0 < m) {
      int8_block<Bits, GS, 1, NW, Vnni>(x, i0, chunks, group_of_lane, rows, row_bytes, end, s, b,
                                        ps, groups, res + i0 * kMaxBlockRows, kMaxBlockRows);
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
    using L = Int8Layout<decltype(b)::value>;
    constexpr int P = L::kPlanes;
    const size_t chunks = (xa.k + L::kValues - 1) / L::kValues;
    p.q_stride = chunks * L::kValues;  // <= k_padded: every kValues divides 128
    p.d_stride = chunks * 8;
    p.q.assign(xa.m * p.q_stride, 0);
    p.d.assign(xa.m * p.d_stride, 0.0f);
    const size_t blocks = xa.k_padded / detail::kInt8Block;
    for (size_t i = 0; i < xa.m; ++i) {
      const int8_t* src = xa.q.data() + i * xa.k_padded;
      int8_t* dst = p.q.data() + i * p.q_stride;
      for (size_t c = 0; c < chunks; ++c) {
        for (int j = 0; j < P; ++j) {
          for (int byte = 0; byte < 32; ++byte) {
            dst[c * L::kValues + 32 * j + byte] = src[c * L::kValues + P * byte + j];
          }
        }
        for (int l = 0; l < 8; ++l) {
          const size_t block = (c * L::kValues + L::kLaneValues * l) / detail::kInt8Block;
          p.d[i * p.d_stride + c * 8 + l] = xa.d[i * blocks + block];
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
