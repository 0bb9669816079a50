// 4-bit GEMV through bf16 dot products (AVX-512 BF16; transpose = true, small m). Exact: every
// product q * x is formed without rounding and summed in f32, as in the f32-FMA GEMV.
//
// Why it is faster: vdpbf16ps multiplies 32 bf16 pairs into 16 f32 lanes per instruction,
// twice the work of an f32 FMA, and a 4-bit value becomes a bf16 with one instruction:
// vpermw with the packed 16-bit word itself as index looks up bf16(q) in a 32-entry table
// (the low 5 bits index it; bit 4 belongs to the next nibble, so the table holds 0..15 twice).
// A 64-byte load of a W row holds 32 words of 4 nibbles (values 4i .. 4i+3 of word i): nibble
// position j is looked up after a shift by 4j, and lane L of the dot product sums words 2L and
// 2L+1, i.e. values 8L+j and 8L+4+j. x is stored once per call in that order.
//
// x is f32; it is split exactly into bf16 parts, x = hi + mid + lo (each part is the top 8
// significant bits of what the previous ones left; an f32 has 24). bf16 activations need only
// hi, f16 ones hi + mid: the number of parts is the fewest that represent every x exactly, so
// a bf16 model pays one dot product per 32 weights and an f32 one three.
// Limits, both far below f32 resolution of any realistic result: vdpbf16ps treats bf16
// denormals as zero, so a part below 2^-126 is dropped (|x| < ~1e-33 loses low bits, |x| <
// 1.2e-38 is zero), and a non-finite x gives NaN outputs for its row.
#include <immintrin.h>

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

constexpr size_t kChunkValues = 128;   // values per 64-byte chunk of a 4-bit row
constexpr size_t kPrefetchBlocks = 2;  // W is prefetched into L2 this many NW-row blocks ahead

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

__mmask64 byte_mask(size_t bytes) {
  return bytes >= 64 ? ~__mmask64{0} : _cvtu64_mask64((uint64_t{1} << bytes) - 1);
}

// The top 8 significant bits of each lane (truncated): a bf16, and v - part is exact in f32.
__m512 top_part(__m512 v) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

}  // namespace

int bf16_parts(const float* x, size_t count) {
  __mmask16 need_mid = 0, need_lo = 0;
  for (size_t i = 0; i < count; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 r1 = _mm512_sub_ps(v, top_part(v));
    const __m512 lo = _mm512_sub_ps(r1, top_part(r1));
    // Unordered compares: a non-finite x (r1 = NaN) takes every part.
    need_mid |= _mm512_cmp_ps_mask(r1, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    need_lo |= _mm512_cmp_ps_mask(lo, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  }
  return need_lo ? 3 : need_mid ? 2 : 1;
}

Bf16Operand prepare_bf16(const float* x, size_t m, size_t k, size_t group_size) {
  Bf16Operand p;
  p.m = m;
  p.k = k;
  p.chunks = (k + kChunkValues - 1) / kChunkValues;
  auto part = top_part;
  // How many parts represent every x exactly (k is a multiple of 16: of the group size).
  p.splits = bf16_parts(x, m * k);
  // Per row, chunk, nibble position j and part s: 32 bf16 words, word 2L = x[8L + j] and
  // word 2L+1 = x[8L + 4 + j] of the chunk; zero past k. Two gathers fetch the 32 values of
  // (chunk, j); each part's 32 words are the high halves of its two f32 vectors.
  p.row_stride = p.chunks * 4 * static_cast<size_t>(p.splits) * 32;
  p.words.assign(m * p.row_stride, 0);
  alignas(64) int32_t order[16];
  alignas(64) uint16_t high_halves[32];
  for (int w = 0; w < 16; ++w) order[w] = 8 * (w / 2) + 4 * (w % 2);
  for (int w = 0; w < 32; ++w) high_halves[w] = static_cast<uint16_t>(2 * w + 1);
  const __m512i base_index = _mm512_load_si512(order);
  const __m512i pack = _mm512_load_si512(high_halves);
  for (size_t i = 0; i < m; ++i) {
    const float* row = x + i * k;
    uint16_t* dst = p.words.data() + i * p.row_stride;
    for (size_t c = 0; c < p.chunks; ++c) {
      for (int j = 0; j < 4; ++j) {
        __m512 half[2];
        for (int h = 0; h < 2; ++h) {
          const __m512i index = _mm512_add_epi32(
              base_index, _mm512_set1_epi32(static_cast<int>(c * kChunkValues) + 64 * h + j));
          const __mmask16 live =
              _mm512_cmplt_epi32_mask(index, _mm512_set1_epi32(static_cast<int>(k)));
          half[h] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, index, row, 4);
        }
        for (int s = 0; s < p.splits; ++s) {
          const __m512 hi0 = part(half[0]), hi1 = part(half[1]);
          _mm512_storeu_si512(
              dst + ((c * 4 + j) * p.splits + s) * 32,
              _mm512_permutex2var_epi16(_mm512_castps_si512(hi0), pack, _mm512_castps_si512(hi1)));
          half[0] = _mm512_sub_ps(half[0], hi0);
          half[1] = _mm512_sub_ps(half[1], hi1);
        }
      }
    }
  }
  p.group_sum = group_sums(x, m * (k / group_size), group_size);
  return p;
}

namespace {

// Rows n .. n+NW of W against rows i0 .. i0+MR of x, with NS parts per x value.
template <int MR, int NW, int NS, int GS, DType PD>
void gemv_bf16_block(const Bf16Operand& x, size_t i0, const uint8_t* rows, size_t row_bytes,
                     const ParamRows<PD>& params, size_t groups, float* result /* [MR][NW] */) {
  // Lane L of a chunk holds values 8L .. 8L+7: group (c * 128 + 8L) / GS.
  constexpr int kGroupsPerChunk = GS <= 128 ? 128 / GS : 1;
  // Accumulator chains per output. With several parts, the first part has a chain of its own
  // and the small parts are summed apart from it, combined smallest first (as accurate as adding
  // whole values). One x row gives few independent chains (NW), so there each part gets its own
  // (a chain of 4 dependent dot products per chunk, not 8, keeps latency hidden), and with a
  // single part two chains alternate.
  constexpr int kChains = MR == 1 ? (NS > 2 ? NS : 2) : (NS > 1 ? 2 : 1);
  alignas(64) uint16_t bf16_of[32];
  for (int i = 0; i < 32; ++i) bf16_of[i] = static_cast<uint16_t>(f32_bits(float(i & 15)) >> 16);
  const __m512i table = _mm512_load_si512(bf16_of);

  const uint16_t* xw[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) xw[r] = x.words.data() + (i0 + r) * x.row_stride;
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
      // The NW rows are contiguous: the same place NW rows on is a later block's data.
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * NW * row_bytes),
                   _MM_HINT_T1);
      raw[v] = _mm512_maskz_loadu_epi8(load, p);
      scale[v] = chunk_scales<kChunkValues, GS, PD>(params.scale_row(v), c, live_groups);
    }
    __m512 t[MR][NW][kChains];
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        NXQ_UNROLL
        for (int h = 0; h < kChains; ++h) t[r][v][h] = _mm512_setzero_ps();
      }
    }
    NXQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      __m512bh q[NW];
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        const __m512i index = j == 0 ? raw[v] : _mm512_srli_epi16(raw[v], 4 * j);
        q[v] = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(index, table));
      }
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int s = 0; s < NS; ++s) {
          const __m512bh xs =
              reinterpret_cast<__m512bh>(_mm512_loadu_si512(xw[r] + ((c * 4 + j) * NS + s) * 32));
          NXQ_UNROLL
          for (int v = 0; v < NW; ++v) {
            __m512& chain = t[r][v][NS == 1 ? j % kChains : MR == 1 ? s : (s > 0)];
            chain = _mm512_dpbf16_ps(chain, q[v], xs);
          }
        }
      }
    }
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        __m512 sum = t[r][v][kChains - 1];
        NXQ_UNROLL
        for (int h = kChains - 2; h >= 0; --h) sum = _mm512_add_ps(sum, t[r][v][h]);
        acc[r][v] = _mm512_fmadd_ps(sum, scale[v], acc[r][v]);
      }
    }
  };
  const size_t full_chunks = x.k / kChunkValues;
  for (size_t c = 0; c < full_chunks; ++c) step(c, ~__mmask64{0}, kGroupsPerChunk);
  if (x.chunks > full_chunks) {
    const size_t tail = x.k % kChunkValues;
    step(full_chunks, byte_mask(tail / 2), static_cast<int>(tail / GS));
  }

  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      result[r * NW + v] =
          _mm512_reduce_add_ps(acc[r][v]) +
          bias_dot<PD>(params.bias_row(v), x.group_sum.data() + (i0 + r) * groups, groups);
    }
  }
}

}  // namespace

void gemv_nk_4bit_bf16(const Bf16Operand& x, const QuantizedMatrix& w, DType out_dtype,
                       size_t n_begin, size_t n_end, void* out) {
  const size_t m = x.m, k_dim = w.cols, n_dim = w.rows;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = k_dim / gs;
  const size_t row_bytes = k_dim / 2;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);

  constexpr int kNW = 4;
  RowParams<kNW> params(w, groups);
  float result[2 * kNW];

  auto load_rows = [&](auto nw, size_t n) {
    params.load(w, n, decltype(nw)::value, kPrefetchBlocks * kNW);
  };
  auto run = [&](auto mr, auto nw, size_t n, size_t i0) {
    constexpr int MR = decltype(mr)::value, NW = decltype(nw)::value;
    const uint8_t* rows = bytes + n * row_bytes;
    auto block = [&](auto splits, auto group_size) {
      auto with_params = [&](const auto& p) {
        gemv_bf16_block<MR, NW, decltype(splits)::value, decltype(group_size)::value,
                        std::decay_t<decltype(p)>::kDType>(x, i0, rows, row_bytes, p, groups,
                                                           result);
      };
      with_row_params(w, params, n, with_params);
    };
    detail::with_group_size(gs, [&](auto group_size) {
      switch (x.splits) {
        case 1:
          return block(detail::Int<1>{}, group_size);
        case 2:
          return block(detail::Int<2>{}, group_size);
        default:
          return block(detail::Int<3>{}, group_size);
      }
    });
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NW; ++v)
        store_from_f32(out, out_dtype, (i0 + r) * n_dim + n + v, result[r * NW + v]);
  };
  detail::for_gemv_blocks<kNW>(m, n_begin, n_end, load_rows, run);
}

}  // namespace nx_quant::avx512
