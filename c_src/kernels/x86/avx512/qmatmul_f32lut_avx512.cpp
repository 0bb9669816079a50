// 2- and 4-bit GEMV for f32 (and f16) activations (AVX-512 F; transpose = true, small m).
// Exact: every product q * x is formed without rounding (inside an f32 FMA) and summed in f32,
// group by group, then scaled, as in the other exact GEMVs: sum_g scale_g * sum(q * x) +
// sum_g bias_g * sum(x).
//
// Why it is faster than the bf16 dot products for f32 x: an f32 x needs three bf16 parts, so
// 32 weights cost three vdpbf16ps (half the throughput of an FMA here); an FMA per 16 weights
// does the same work with one instruction per 16 products. A 4-bit value becomes an f32 with
// one instruction: vpermps reads only the low 4 bits of each 32-bit index, so with the packed
// word itself as index (shifted by 4j) it looks up float(q) of nibble j in a 16-entry table.
// 2 bits: the word shifted by 4 * (j / 2), looked up in a table of i & 3 (even j) or of
// (i >> 2) & 3 (odd j). A 64-byte load of a W row holds 16 words of V = 32 / bits values
// (values V*L .. V*L + V-1 in word L): lane L of position j holds value V*L + j, and x is
// stored once per call in that order.
// Per 128 4-bit weights: 8 vpermps, 7 shifts, 8 FMAs (measured on a Sapphire Rapids-class
// Xeon, weights in L2, one thread: 2.0-2.7x faster than three-part bf16 dot products, 1.5-1.9x
// than two-part (f16 x); ~1.1x than the f32-FMA GEMV's nibble unpacking). 2 bits: per 256
// weights 16 vpermps, 7 shifts, 16 FMAs, where gemv_nk's generic unpacking takes 4
// instructions and an FMA per 16 weights.
//
// Every output is summed in the same order whatever m, the row block it falls in or the
// thread that computes it (per 64-byte chunk one chain of 32 / bits FMAs, then one scaled FMA
// into the row's accumulator; chunks overlap out of order, so one chain per output is
// enough), so a row's result does not depend on the other rows of x nor on how W's rows were
// shared.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gemv_loops.h"
#include "row_params_avx512.h"
#include "simd_kernels.h"
#include "unroll.h"

namespace nx_quant::avx512 {

namespace {

constexpr int kBlockRows = 4;          // W rows per block: read from memory once, reused from L1
constexpr size_t kPrefetchBlocks = 2;  // W is prefetched into L2 this many blocks ahead

__mmask64 byte_mask(size_t bytes) {
  return bytes >= 64 ? ~__mmask64{0} : _cvtu64_mask64((uint64_t{1} << bytes) - 1);
}

}  // namespace

F32Operand prepare_f32(const float* x, size_t m, size_t k, size_t group_size, int bits) {
  F32Operand p;
  p.m = m;
  p.k = k;
  p.bits = bits;
  const int per_word = 32 / bits;                     // values per 32-bit word: 8 or 16
  const size_t chunk_values = 16 * size_t(per_word);  // values per 64-byte chunk
  p.chunks = (k + chunk_values - 1) / chunk_values;
  p.row_stride = p.chunks * chunk_values;
  p.values.assign(m * p.row_stride, 0.0f);
  // Per row, chunk c and position j in the word: 16 floats, lane L = x[c * chunk_values +
  // per_word * L + j]; zero past k.
  alignas(64) int32_t order[16];
  for (int l = 0; l < 16; ++l) order[l] = per_word * l;
  const __m512i base_index = _mm512_load_si512(order);
  for (size_t i = 0; i < m; ++i) {
    const float* row = x + i * k;
    float* dst = p.values.data() + i * p.row_stride;
    for (size_t c = 0; c < p.chunks; ++c) {
      for (int j = 0; j < per_word; ++j) {
        const __m512i index =
            _mm512_add_epi32(base_index, _mm512_set1_epi32(static_cast<int>(c * chunk_values) + j));
        const __mmask16 live =
            _mm512_cmplt_epi32_mask(index, _mm512_set1_epi32(static_cast<int>(k)));
        _mm512_storeu_ps(dst + (c * per_word + j) * 16,
                         _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, index, row, 4));
      }
    }
  }
  p.group_sum = group_sums(x, m * (k / group_size), group_size);
  return p;
}

namespace {

// W rows n .. n+NW (row v's parameters at params row v0 + v) against rows i0 .. i0+MR of x.
template <int Bits, int MR, int NW, int GS, DType PD>
NXQ_ALWAYS_INLINE inline void gemv_f32lut_block(const F32Operand& x, size_t i0, const uint8_t* rows,
                                                size_t row_bytes, const ParamRows<PD>& params,
                                                int v0, size_t groups, float* out_n,
                                                size_t out_stride) {
  constexpr int kPerWord = 32 / Bits;          // positions j per word
  constexpr int kChunkValues = 16 * kPerWord;  // values per 64-byte chunk
  constexpr int kGroupsPerChunk = GS <= kChunkValues ? kChunkValues / GS : 1;
  // float(q) for the low 4 bits of an index: q is its low Bits bits; for 2 bits a second
  // table takes q from bits 2-3, so one shift by 4 serves two positions.
  alignas(64) float float_of[16], float_of_high[16];
  for (int i = 0; i < 16; ++i) {
    float_of[i] = static_cast<float>(i & ((1 << Bits) - 1));
    float_of_high[i] = static_cast<float>((i >> 2) & 3);
  }
  const __m512 table = _mm512_load_ps(float_of);
  const __m512 table_high = _mm512_load_ps(float_of_high);

  const float* xr[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) xr[r] = x.values.data() + (i0 + r) * x.row_stride;
  __m512 acc[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm512_setzero_ps();
  }

  auto step = [&](size_t c, __mmask64 load, int live_groups) NXQ_ALWAYS_INLINE {
    __m512i raw[NW];
    __m512 scale[NW];
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = rows + v * row_bytes + c * 64;
      // The rows of W are contiguous: the same place a few blocks on is a later block's data.
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * kBlockRows * row_bytes),
                   _MM_HINT_T1);
      raw[v] = _mm512_maskz_loadu_epi8(load, p);
      scale[v] = chunk_scales<kChunkValues, GS, PD>(params.scale_row(v0 + v), c, live_groups);
    }
    __m512 t[MR][NW];
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) t[r][v] = _mm512_setzero_ps();
    }
    NXQ_UNROLL
    for (int j = 0; j < kPerWord; ++j) {
      __m512 q[NW];
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        const int shift = Bits == 2 ? 4 * (j / 2) : 4 * j;
        const __m512i index = shift == 0 ? raw[v] : _mm512_srli_epi32(raw[v], shift);
        q[v] = _mm512_permutexvar_ps(index, Bits == 2 && j % 2 ? table_high : table);
      }
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 xv = _mm512_loadu_ps(xr[r] + (c * kPerWord + j) * 16);
        NXQ_UNROLL
        for (int v = 0; v < NW; ++v) t[r][v] = _mm512_fmadd_ps(q[v], xv, t[r][v]);
      }
    }
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        acc[r][v] = _mm512_fmadd_ps(t[r][v], scale[v], acc[r][v]);
      }
    }
  };
  const size_t full_chunks = x.k / kChunkValues;
  for (size_t c = 0; c < full_chunks; ++c) step(c, ~__mmask64{0}, kGroupsPerChunk);
  if (x.chunks > full_chunks) {
    const size_t tail = x.k % kChunkValues;
    step(full_chunks, byte_mask(tail * Bits / 8), static_cast<int>(tail / GS));
  }

  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      out_n[r * out_stride + v] =
          _mm512_reduce_add_ps(acc[r][v]) +
          bias_dot<PD>(params.bias_row(v0 + v), x.group_sum.data() + (i0 + r) * groups, groups);
    }
  }
}

}  // namespace

void gemv_nk_f32lut(const F32Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                    size_t n_end, void* out) {
  const size_t m = x.m, k_dim = w.cols, n_dim = w.rows;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = k_dim / gs;
  const size_t row_bytes = k_dim * static_cast<size_t>(x.bits) / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);

  RowParams<kBlockRows> params(w, groups);
  // Results of one block of W rows for all m rows of x, [m][kBlockRows].
  std::vector<float> result(m * kBlockRows);

  // MR rows of x (1 or 2) against the `count` W rows n.. of the block: all four together, or
  // one at a time in a partial block. (Measured: four rows of x against two of W, or eight
  // against one, are slower: each FMA then needs its own load of x, from L2 when x is large.)
  auto rows_of_x = [&](auto mr, size_t n, int count, size_t i0) {
    constexpr int MR = decltype(mr)::value;
    auto with_params = [&](const auto& p) {
      using P = std::decay_t<decltype(p)>;
      auto with_bits = [&](auto bits, auto group_size) {
        constexpr int Bits = decltype(bits)::value;
        constexpr int GS = decltype(group_size)::value;
        if (count == kBlockRows) {
          gemv_f32lut_block<Bits, MR, kBlockRows, GS, P::kDType>(
              x, i0, bytes + n * row_bytes, row_bytes, p, 0, groups,
              result.data() + i0 * kBlockRows, kBlockRows);
          return;
        }
        for (int v = 0; v < count; ++v) {
          gemv_f32lut_block<Bits, MR, 1, GS, P::kDType>(
              x, i0, bytes + (n + v) * row_bytes, row_bytes, p, v, groups,
              result.data() + i0 * kBlockRows + v, kBlockRows);
        }
      };
      detail::with_group_size(gs, [&](auto group_size) {
        if (x.bits == 2) {
          with_bits(detail::Int<2>{}, group_size);
        } else {
          with_bits(detail::Int<4>{}, group_size);
        }
      });
    };
    with_row_params(w, params, n, with_params);
  };
  for (size_t n = n_begin; n < n_end; n += kBlockRows) {
    const int count = static_cast<int>(std::min<size_t>(kBlockRows, n_end - n));
    params.load(w, n, count, kPrefetchBlocks * kBlockRows);
    size_t i0 = 0;
    for (; i0 + 2 <= m; i0 += 2) rows_of_x(detail::Int<2>{}, n, count, i0);
    if (i0 < m) rows_of_x(detail::Int<1>{}, n, count, i0);
    for (size_t i = 0; i < m; ++i) {
      for (int v = 0; v < count; ++v) {
        store_from_f32(out, out_dtype, i * n_dim + n + v, result[i * kBlockRows + v]);
      }
    }
  }
}

}  // namespace nx_quant::avx512
