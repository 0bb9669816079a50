// AVX-512 GEMV for transpose = false (W stored [K, N], quantized along N; the layout of Axon's
// dense kernels), small m.
//
// out[i, n] = sum_k x[i, k] * (s[k, g(n)] * q[k, n] + b[k, g(n)])
//           = sum_k (x[i, k] * s[k, g(n)]) * q[k, n]  +  sum_k x[i, k] * b[k, g(n)].
// A tile of output columns (256 for one row of x, 128 for two: 16 accumulators either way)
// stays in registers while the kernel walks down all K rows of W: per row it reads the tile's
// packed bytes, unpacks them and adds a * q with a = x[i, k] * s[k, g] (computed for the tile
// beforehand, with the bias sums). W is read once per tile, as one strided stream prefetched
// a few rows ahead. Every output is summed over k in order, by one thread: bit-identical
// whatever the thread count. For 4 bits the zero-extend / AND / shift split leaves even and odd
// columns in separate vectors; the tile is interleaved back when stored.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemv_loops.h"
#include "row_params_avx512.h"
#include "simd_kernels.h"
#include "unpack_avx512.h"
#include "unroll.h"

namespace nx_quant::avx512 {

namespace {

constexpr size_t kPrefetchRows = 6;  // W rows ahead that the tile's bytes are prefetched
constexpr size_t kChunk = 32;        // columns per unpack step

// Per tile: a[r][k * G + g] = x[r, k] * s[k, g0 + g] and bias[r][g] = sum_k x[r, k] * b[k, g0 + g].
struct TileParams {
  std::vector<float> a;
  std::vector<float> bias;
};

// `count` (<= 16) scales or biases of one W row as f32 lanes (the rest zero).
template <DType D>
NXQ_ALWAYS_INLINE inline __m512 load_params(const void* base, size_t offset, __mmask16 live) {
  if constexpr (D == DType::F32) {
    return _mm512_maskz_loadu_ps(live, static_cast<const float*>(base) + offset);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(live, static_cast<const uint16_t*>(base) + offset);
    if constexpr (D == DType::F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

template <DType D>
void tile_params_as(const float* x, size_t k_dim, int mr, const QuantizedMatrix& w, size_t g0,
                    size_t g_count, TileParams& p) {
  const size_t groups = w.cols / static_cast<size_t>(w.spec.group_size);
  p.a.resize(static_cast<size_t>(mr) * k_dim * g_count);
  p.bias.assign(static_cast<size_t>(mr) * 16, 0.0f);
  const __mmask16 live = static_cast<__mmask16>((1u << g_count) - 1);
  __m512 bias[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  for (size_t k = 0; k < k_dim; ++k) {
    const __m512 sv = load_params<D>(w.scales.data, k * groups + g0, live);
    const __m512 bv = load_params<D>(w.biases.data, k * groups + g0, live);
    for (int r = 0; r < mr; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r * k_dim + k]);
      _mm512_mask_storeu_ps(p.a.data() + (r * k_dim + k) * g_count, live, _mm512_mul_ps(xr, sv));
      bias[r] = _mm512_fmadd_ps(xr, bv, bias[r]);
    }
  }
  for (int r = 0; r < mr; ++r) _mm512_storeu_ps(p.bias.data() + r * 16, bias[r]);
}

void tile_params(const float* x, size_t k_dim, int mr, const QuantizedMatrix& w, size_t g0,
                 size_t g_count, TileParams& p) {
  switch (w.dtype) {
    case DType::F32:
      return tile_params_as<DType::F32>(x, k_dim, mr, w, g0, g_count, p);
    case DType::F16:
      return tile_params_as<DType::F16>(x, k_dim, mr, w, g0, g_count, p);
    default:
      return tile_params_as<DType::BF16>(x, k_dim, mr, w, g0, g_count, p);
  }
}

// Columns [n0, n0 + chunks * 32) of rows i0 .. i0+MR: CHUNKS is the tile's maximum, `chunks`
// this tile's (fewer at the end of N).
template <int MR, int CHUNKS, bool Nibbles, int GS>
void gemv_kn_tile(const float* x, size_t k_dim, const QuantizedMatrix& w, const Unpacker& unpack,
                  size_t n0, int chunks, DType out_dtype, size_t n_dim, void* out, size_t i0,
                  TileParams& params) {
  constexpr int kChunksPerGroup = GS / 32;
  const size_t bits = static_cast<size_t>(w.spec.bits);
  const size_t row_bytes = w.cols * bits / 8;
  const size_t g0 = n0 / GS;
  const size_t g_count = (static_cast<size_t>(chunks) * kChunk + GS - 1) / GS;
  tile_params(x, k_dim, MR, w, g0, g_count, params);

  const auto* bytes = static_cast<const uint8_t*>(w.packed.data) + n0 * bits / 8;
  const size_t tile_bytes = static_cast<size_t>(chunks) * kChunk * bits / 8;
  const __m512i low_nibble = _mm512_set1_epi32(0x0F);
  __m512 acc[MR][CHUNKS][2];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int c = 0; c < CHUNKS; ++c) acc[r][c][0] = acc[r][c][1] = _mm512_setzero_ps();
  }
  for (size_t k = 0; k < k_dim; ++k) {
    const uint8_t* row = bytes + k * row_bytes;
    const uint8_t* ahead = row + kPrefetchRows * row_bytes;
    for (size_t line = 0; line < tile_bytes; line += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + line), _MM_HINT_T0);
    }
    NXQ_UNROLL
    for (int c = 0; c < CHUNKS; ++c) {
      if (c >= chunks) break;
      __m512 q0, q1;
      if constexpr (Nibbles) {
        const __m512i b =
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c * 16)));
        q0 = _mm512_cvtepi32_ps(_mm512_and_si512(b, low_nibble));  // even columns
        q1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));          // odd columns
      } else {
        q0 = unpack(row + c * 2 * unpack.chunk_bytes);
        q1 = unpack(row + (c * 2 + 1) * unpack.chunk_bytes);
      }
      const int g = c / kChunksPerGroup;
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 a = _mm512_set1_ps(params.a[(r * k_dim + k) * g_count + g]);
        acc[r][c][0] = _mm512_fmadd_ps(q0, a, acc[r][c][0]);
        acc[r][c][1] = _mm512_fmadd_ps(q1, a, acc[r][c][1]);
      }
    }
  }

  // Nibbles: (even, odd) -> natural order.
  alignas(64) int32_t lo_idx[16], hi_idx[16];
  for (int j = 0; j < 16; ++j) {
    lo_idx[j] = (j % 2) * 16 + j / 2;
    hi_idx[j] = (j % 2) * 16 + 8 + j / 2;
  }
  const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  alignas(64) float values[CHUNKS * kChunk];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int c = 0; c < CHUNKS; ++c) {
      if (c >= chunks) break;
      const __m512 bias = _mm512_set1_ps(params.bias[r * 16 + c / kChunksPerGroup]);
      __m512 v0 = acc[r][c][0], v1 = acc[r][c][1];
      if constexpr (Nibbles) {
        const __m512 even = v0, odd = v1;
        v0 = _mm512_permutex2var_ps(even, lo, odd);
        v1 = _mm512_permutex2var_ps(even, hi, odd);
      }
      _mm512_store_ps(values + c * kChunk, _mm512_add_ps(v0, bias));
      _mm512_store_ps(values + c * kChunk + 16, _mm512_add_ps(v1, bias));
    }
    const size_t count = static_cast<size_t>(chunks) * kChunk;
    const size_t offset = (i0 + r) * n_dim + n0;
    if (out_dtype == DType::F32) {
      std::copy(values, values + count, static_cast<float*>(out) + offset);
    } else {
      for (size_t j = 0; j < count; ++j) store_from_f32(out, out_dtype, offset + j, values[j]);
    }
  }
}

}  // namespace

void gemv_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  const Unpacker unpack(w.spec.bits);
  const size_t k_dim = w.rows, n_dim = w.cols;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  TileParams params;
  auto tiles = [&](auto mr, auto max_chunks, size_t i0) {
    constexpr int MR = decltype(mr)::value, CHUNKS = decltype(max_chunks)::value;
    for (size_t n0 = n_begin; n0 < n_end; n0 += CHUNKS * kChunk) {
      const int chunks = static_cast<int>(std::min<size_t>(CHUNKS, (n_end - n0) / kChunk));
      detail::with_group_size(gs, [&](auto group_size) {
        constexpr int GS = decltype(group_size)::value;
        if (w.spec.bits == 4) {
          gemv_kn_tile<MR, CHUNKS, true, GS>(x + i0 * k_dim, k_dim, w, unpack, n0, chunks,
                                             out_dtype, n_dim, out, i0, params);
        } else {
          gemv_kn_tile<MR, CHUNKS, false, GS>(x + i0 * k_dim, k_dim, w, unpack, n0, chunks,
                                              out_dtype, n_dim, out, i0, params);
        }
      });
    }
  };
  size_t i0 = 0;
  for (; i0 + 2 <= m; i0 += 2) tiles(detail::Int<2>{}, detail::Int<4>{}, i0);
  if (i0 < m) tiles(detail::Int<1>{}, detail::Int<8>{}, i0);
}

}  // namespace nx_quant::avx512
