// The exact AVX2 decode GEMV for every bit width (transpose = true, m <= 8): f32 FMAs on q
// isolated by one AND, for f32, f16 and bf16 activations alike (all arrive as f32).
//
// A W row is read in chunks of 8 lanes of 32 bits. For 2, 4 and 8 bits a chunk is 32 bytes and
// lane L is word L, holding P = 32 / bits values (P*L .. P*L + P-1); for 3, 5 and 6 bits a
// chunk is 24, 20 resp. 24 bytes, and one vpermd + one vpshufb give each lane the 3 bytes
// holding its P values (3 bits: 8 values, 5 and 6 bits: 4; for 5 bits the odd lanes' values
// start 4 bits into their first byte). Position j of every lane is then q << offset(j, L):
// one AND with a mask isolates it, and vcvtdq2ps converts it exactly (at most 8 significant
// bits). x is stored once per call pre-multiplied by 2^-offset(j, L) (offsets up to 28: exact
// unless |x| < 2^-98, where the scaled value is subnormal and a product may be off by up to
// q * 2^-122, far inside the documented error bound), so the FMA forms q * x exactly: two
// instructions per 8 weights besides the FMA, where shifting each position down first takes three.
// The top position of a word (2/4/8 bits) would set the sign bit: it is shifted down instead and
// its x is not scaled.
//
// Order of the sums, the same for every output whatever m, the row block it falls in or the
// thread that computes it: per chunk one chain of P FMAs per lane from zero, then one FMA by
// the chunk's per-lane scales into the output's accumulator; then the 8 lanes reduced in a
// fixed order, plus the bias term sum_g bias_g * sum(x_g) (an 8-lane dot in a fixed order).
// So a row's result depends on that row of x only (batch invariance), not on m, the other
// rows, nor the column split.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemv_loops.h"
#include "nx_quant/dtype.h"
#include "unroll.h"
#include "x86/avx2/gemv_avx2.h"
#include "x86/avx2/gemv_common_avx2.h"

namespace nx_quant::avx2 {

namespace {

template <int Bits>
struct Layout {
  static constexpr int kPositions = Bits == 2 ? 16 : (Bits == 3 || Bits == 4) ? 8 : 4;
  static constexpr int kValues = 8 * kPositions;     // values per chunk
  static constexpr int kBytes = kValues * Bits / 8;  // packed bytes per chunk
  static constexpr bool kWords = 32 % Bits == 0;     // lane L is word L
  static constexpr int kTopShift = Bits * (kPositions - 1);
  // Bit of lane `lane` where position j's value starts.
  static constexpr int offset(int j, int lane) {
    return Bits * j + ((Bits == 5 && (lane & 1)) ? 4 : 0);
  }
  // Whether position j is shifted down (the top of a word) rather than masked in place.
  static constexpr bool shifted(int j) { return kWords && j == kPositions - 1; }
  // The power of two (negated exponent) x of position j in lane `lane` is stored scaled by.
  static constexpr int x_offset(int j, int lane) { return shifted(j) ? 0 : offset(j, lane); }
  // 3/5/6 bits: first byte of lane `lane`'s 3 bytes within the chunk.
  static constexpr int lane_byte(int lane) {
    return Bits == 5 ? (lane / 2) * 5 + (lane & 1) * 2 : 3 * lane;
  }
};

template <int Bits, int GS>
struct Unpack {
  using L = Layout<Bits>;
  static constexpr int kGroupsPerChunk = L::kValues >= GS ? L::kValues / GS : 1;
  __m256i mask[L::kPositions];
  __m256i perm, shuf;  // 3/5/6 bits: bytes to lanes
  __m256i group_of_lane;

  Unpack() {
    alignas(32) int32_t lanes[8];
    for (int j = 0; j < L::kPositions; ++j) {
      for (int l = 0; l < 8; ++l) {
        lanes[l] = static_cast<int32_t>(((1u << Bits) - 1) << L::offset(j, l));
      }
      mask[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
    }
    const int high = L::lane_byte(4) / 4;  // first dword the high half needs
    for (int l = 0; l < 8; ++l) lanes[l] = l < 4 ? l : high + l - 4;
    perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
    alignas(32) uint8_t bytes[32];
    for (int l = 0; l < 8; ++l) {
      const int first = L::lane_byte(l) - (l < 4 ? 0 : 4 * high);
      for (int b = 0; b < 4; ++b) {
        bytes[4 * l + b] = b < 3 ? static_cast<uint8_t>(first + b) : 0x80;
      }
    }
    shuf = _mm256_load_si256(reinterpret_cast<const __m256i*>(bytes));
    for (int l = 0; l < 8; ++l) lanes[l] = L::kPositions * l / GS;
    group_of_lane = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
  }

  NXQ_ALWAYS_INLINE __m256i load(const uint8_t* p) const {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (!L::kWords) {
      v = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(v, perm), shuf);
    }
    return v;
  }

  // float(q << offset(j, lane)) per lane (float(q) for a shifted position).
  NXQ_ALWAYS_INLINE __m256 position(__m256i raw, int j) const {
    if (L::shifted(j)) return _mm256_cvtepi32_ps(_mm256_srli_epi32(raw, L::kTopShift));
    return _mm256_cvtepi32_ps(_mm256_and_si256(raw, mask[j]));
  }

  // The scale of each lane's group in chunk c of a row whose f32 scales start at `row`.
  NXQ_ALWAYS_INLINE __m256 chunk_scale(const float* row, size_t c) const {
    const size_t first = c * L::kValues / GS;
    if constexpr (kGroupsPerChunk == 1) {
      return _mm256_broadcast_ss(row + first);
    } else {
      return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(row + first)),
                                      group_of_lane);
    }
  }
};

// W rows `rows` .. + NW (row_bytes apart; their f32 parameters `pstride` apart) against rows
// i0 .. i0+MR of x; results to out[r * out_stride + v].
template <int Bits, int GS, int MR, int NW>
NXQ_ALWAYS_INLINE inline void lut_block(const LutOperand& x, size_t i0, const Unpack<Bits, GS>& u,
                                        const uint8_t* rows, size_t row_bytes, const uint8_t* end,
                                        const float* scales, const float* biases, size_t pstride,
                                        size_t groups, float* out, size_t out_stride) {
  using L = Layout<Bits>;
  const float* xr[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) xr[r] = x.values.data() + (i0 + r) * x.row_stride;
  __m256 acc[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  alignas(32) uint8_t tmp[32];
  for (size_t c = 0; c < x.chunks; ++c) {
    __m256i raw[NW];
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = rows + v * row_bytes + c * L::kBytes;
      // The block's rows are contiguous: the same place a few blocks on is a later block's data.
      if (((c * L::kBytes) & 63) < static_cast<size_t>(L::kBytes)) {
        _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * NW * row_bytes),
                     _MM_HINT_T1);
      }
      if (__builtin_expect(p + 32 > end, 0)) {  // the load would leave the packed buffer
        std::memset(tmp, 0, sizeof(tmp));
        std::memcpy(tmp, p, static_cast<size_t>(end - p));
        p = tmp;
      }
      raw[v] = u.load(p);
    }
    __m256 t[MR][NW];
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) t[r][v] = _mm256_setzero_ps();
    }
    NXQ_UNROLL
    for (int j = 0; j < L::kPositions; ++j) {
      __m256 q[NW];
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) q[v] = u.position(raw[v], j);
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m256 xv = _mm256_loadu_ps(xr[r] + (c * L::kPositions + j) * 8);
        NXQ_UNROLL
        for (int v = 0; v < NW; ++v) t[r][v] = _mm256_fmadd_ps(q[v], xv, t[r][v]);
      }
    }
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const __m256 scale = u.chunk_scale(scales + v * pstride, c);
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) acc[r][v] = _mm256_fmadd_ps(t[r][v], scale, acc[r][v]);
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    const float* xsum = x.group_sum.data() + (i0 + r) * groups;
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      out[r * out_stride + v] = hsum(acc[r][v]) + dot(biases + v * pstride, xsum, groups);
    }
  }
}

template <int Bits, int GS>
void gemv_lut_impl(const LutOperand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                   size_t n_end, void* out) {
  const Unpack<Bits, GS> u;
  const size_t m = x.m, k_dim = w.cols;
  const size_t groups = k_dim / GS;
  const size_t row_bytes = k_dim * Bits / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  const uint8_t* end = bytes + w.packed.bytes;
  BlockParams params(groups);
  std::vector<float> result(m * kMaxBlockRows);
  const size_t ps = params.stride;

  // Rows of x in fours, then a pair, then a single one, against `nw` W rows from n (row v0 of
  // the block's parameters).
  auto rows_of_x = [&](auto nw, size_t n, int v0) {
    constexpr int NW = decltype(nw)::value;
    const uint8_t* rows = bytes + n * row_bytes;
    const float* s = params.scales.data() + v0 * ps;
    const float* b = params.biases.data() + v0 * ps;
    float* res = result.data() + v0;
    size_t i0 = 0;
    for (; i0 + 4 <= m; i0 += 4) {
      lut_block<Bits, GS, 4, NW>(x, i0, u, rows, row_bytes, end, s, b, ps, groups,
                                 res + i0 * kMaxBlockRows, kMaxBlockRows);
    }
    if (m - i0 >= 2) {
      lut_block<Bits, GS, 2, NW>(x, i0, u, rows, row_bytes, end, s, b, ps, groups,
                                 res + i0 * kMaxBlockRows, kMaxBlockRows);
      i0 += 2;
    }
    if (i0 < m) {
      lut_block<Bits, GS, 1, NW>(x, i0, u, rows, row_bytes, end, s, b, ps, groups,
                                 res + i0 * kMaxBlockRows, kMaxBlockRows);
    }
  };
  // One or two x rows: four W rows per block; more: two (the accumulators must fit 16 registers).
  const size_t block = m <= 2 ? 4 : 2;
  for_each_row_block(w, params, block, n_begin, n_end, m, result, out_dtype, out, rows_of_x);
}

}  // namespace

LutOperand prepare_lut(const float* x, size_t m, size_t k, size_t group_size, int bits) {
  LutOperand p;
  p.m = m;
  p.k = k;
  p.bits = bits;
  detail::with_bits(bits, [&](auto b) {
    using L = Layout<decltype(b)::value>;
    constexpr int P = L::kPositions;
    p.positions = P;
    p.chunks = (k + L::kValues - 1) / L::kValues;
    p.row_stride = p.chunks * L::kValues;
    p.values.assign(m * p.row_stride, 0.0f);
    float scale[P][8];
    for (int j = 0; j < P; ++j) {
      for (int l = 0; l < 8; ++l) scale[j][l] = std::ldexp(1.0f, -L::x_offset(j, l));
    }
    for (size_t i = 0; i < m; ++i) {
      const float* row = x + i * k;
      float* dst = p.values.data() + i * p.row_stride;
      for (size_t c = 0; c < p.chunks; ++c) {
        for (int j = 0; j < P; ++j) {
          for (int l = 0; l < 8; ++l) {
            const size_t value = c * L::kValues + static_cast<size_t>(P * l + j);
            if (value < k) dst[(c * P + j) * 8 + l] = row[value] * scale[j][l];
          }
        }
      }
    }
  });
  const size_t count = m * (k / group_size);
  p.group_sum.resize(count);
  for (size_t g = 0; g < count; ++g) {
    __m256 s = _mm256_setzero_ps();
    for (size_t c = 0; c < group_size; c += 8) {
      s = _mm256_add_ps(s, _mm256_loadu_ps(x + g * group_size + c));
    }
    p.group_sum[g] = hsum(s);
  }
  return p;
}

void gemv_nk_lut(const LutOperand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                 size_t n_end, void* out) {
  if (x.m == 0 || n_begin >= n_end) return;
  detail::with_bits(w.spec.bits, [&](auto bits) {
    detail::with_group_size(static_cast<size_t>(w.spec.group_size), [&](auto gs) {
      gemv_lut_impl<decltype(bits)::value, decltype(gs)::value>(x, w, out_dtype, n_begin, n_end,
                                                                out);
    });
  });
}

}  // namespace nx_quant::avx2
