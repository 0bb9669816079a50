// AVX-512 GEMV for transpose = false (W stored [K, N], quantized along N; the layout of Axon's
// dense kernels), small m.
//
// out[i, n] = sum_k x[i, k] * (s[k, g(n)] * q[k, n] + b[k, g(n)])
//           = sum_k (x[i, k] * s[k, g(n)]) * q[k, n]  +  sum_k x[i, k] * b[k, g(n)].
// The thread's output columns are accumulated in an L1/L2-resident f32 buffer. W is walked in
// blocks of 16 rows: for each tile of columns (256 for one row of x, 128 for two: 16
// accumulators either way) the tile's accumulators are loaded into registers, the 16 rows'
// packed bytes are unpacked and a * q added (a = x[i, k] * s[k, g], computed per block with the
// bias sums), and the accumulators stored back. So a block's rows are read whole, left to right,
// in a short window (DRAM-friendly), while accumulator traffic is 2 vectors per 16 rows.
// Every output is summed over k in order by one thread: bit-identical whatever the thread count.
// For 4 bits the zero-extend / AND / shift split leaves even and odd columns in separate
// vectors; the accumulators keep that order and are interleaved back when stored.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "gemv_loops.h"
#include "row_params_avx512.h"
#include "simd_kernels.h"
#include "unpack_avx512.h"
#include "unroll.h"

namespace nx_quant::avx512 {

namespace {

constexpr size_t kChunk = 32;         // columns per unpack step
constexpr size_t kRowBlock = 16;      // W rows per pass over the thread's columns
constexpr size_t kPrefetchTiles = 2;  // each row's bytes are prefetched this many tiles ahead

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

// For rows k0 .. k0+kb of W and groups [g_begin, g_begin + g_count):
//   a[(r * kRowBlock + kk) * g_count + g] = x[r, k0 + kk] * s[k0 + kk, g_begin + g]
//   bias[r * g_count + g] += x[r, k] * b[k, g_begin + g]    (k in order)
template <DType D>
void block_params(const float* x, size_t k_dim, int mr, const QuantizedMatrix& w, size_t k0,
                  size_t kb, size_t g_begin, size_t g_count, float* a, float* bias) {
  const size_t groups = w.cols / static_cast<size_t>(w.spec.group_size);
  for (size_t g = 0; g < g_count; g += 16) {
    const __mmask16 live =
        g_count - g >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (g_count - g)) - 1);
    __m512 b_sum[2];
    for (int r = 0; r < mr; ++r) b_sum[r] = _mm512_maskz_loadu_ps(live, bias + r * g_count + g);
    for (size_t kk = 0; kk < kb; ++kk) {
      const size_t k = k0 + kk;
      const __m512 sv = load_params<D>(w.scales.data, k * groups + g_begin + g, live);
      const __m512 bv = load_params<D>(w.biases.data, k * groups + g_begin + g, live);
      for (int r = 0; r < mr; ++r) {
        const __m512 xr = _mm512_set1_ps(x[r * k_dim + k]);
        _mm512_mask_storeu_ps(a + (r * kRowBlock + kk) * g_count + g, live, _mm512_mul_ps(xr, sv));
        b_sum[r] = _mm512_fmadd_ps(xr, bv, b_sum[r]);
      }
    }
    for (int r = 0; r < mr; ++r) _mm512_mask_storeu_ps(bias + r * g_count + g, live, b_sum[r]);
  }
}

struct Scratch {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> acc;  // [MR][columns], 64-byte aligned
  std::vector<float> a, bias;
  explicit Scratch(size_t acc_floats)
      : acc(static_cast<float*>(std::aligned_alloc(64, ((acc_floats * 4 + 63) / 64) * 64))) {
    if (!acc) throw std::bad_alloc();
  }
};

// Rows i0 .. i0+MR of x against the columns [n_begin, n_end) (a multiple of 32 wide).
template <int MR, int CHUNKS, bool Nibbles, int GS, DType D>
void gemv_kn_rows(const float* x, size_t k_dim, const QuantizedMatrix& w, const Unpacker& unpack,
                  size_t n_begin, size_t n_end, DType out_dtype, void* out, size_t i0) {
  constexpr int kChunksPerGroup = GS / 32;
  constexpr size_t kTile = CHUNKS * kChunk;
  const size_t bits = static_cast<size_t>(w.spec.bits);
  const size_t row_bytes = w.cols * bits / 8;
  const size_t n_dim = w.cols;
  const size_t columns = n_end - n_begin;
  const size_t g_begin = n_begin / GS, g_count = columns / GS;
  Scratch scratch(MR * columns);
  float* acc_mem = scratch.acc.get();
  std::fill(acc_mem, acc_mem + MR * columns, 0.0f);
  scratch.a.resize(MR * kRowBlock * g_count);
  scratch.bias.assign(MR * g_count, 0.0f);
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data) + n_begin * bits / 8;
  const __m512i low_nibble = _mm512_set1_epi32(0x0F);

  const size_t tiles = (columns + kTile - 1) / kTile;
  for (size_t k0 = 0; k0 < k_dim; k0 += kRowBlock) {
    const size_t kb = std::min(kRowBlock, k_dim - k0);
    block_params<D>(x, k_dim, MR, w, k0, kb, g_begin, g_count, scratch.a.data(),
                    scratch.bias.data());
    for (size_t t0 = 0; t0 < columns; t0 += kTile) {
      const int chunks = static_cast<int>(std::min(kTile, columns - t0) / kChunk);
      // The data kPrefetchTiles tiles later in (block, tile) order: further along these rows,
      // or at the start of the next block's rows (prefetches past the end are harmless).
      size_t ahead_tile = t0 / kTile + kPrefetchTiles, ahead_k0 = k0;
      if (ahead_tile >= tiles) {
        ahead_tile -= tiles;
        ahead_k0 += kRowBlock;
      }
      const uint8_t* ahead = bytes + ahead_k0 * row_bytes + ahead_tile * kTile * bits / 8;
      __m512 acc[MR][CHUNKS][2];
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int c = 0; c < CHUNKS; ++c) {
          if (c >= chunks) continue;  // (a guard, not a break: the loop stays unrollable)
          acc[r][c][0] = _mm512_load_ps(acc_mem + r * columns + t0 + c * kChunk);
          acc[r][c][1] = _mm512_load_ps(acc_mem + r * columns + t0 + c * kChunk + 16);
        }
      }
      const float* a_tile = scratch.a.data() + t0 / GS;
      for (size_t kk = 0; kk < kb; ++kk) {
        const uint8_t* row = bytes + (k0 + kk) * row_bytes + t0 * bits / 8;
        for (size_t line = 0; line < kTile * bits / 8; line += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + kk * row_bytes + line), _MM_HINT_T1);
        }
        NXQ_UNROLL
        for (int c = 0; c < CHUNKS; ++c) {
          if (c >= chunks) continue;  // (a guard, not a break: the loop stays unrollable)
          __m512 q0, q1;
          if constexpr (Nibbles) {
            const __m512i b = _mm512_cvtepu8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c * 16)));
            q0 = _mm512_cvtepi32_ps(_mm512_and_si512(b, low_nibble));  // even columns
            q1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));          // odd columns
          } else {
            q0 = unpack(row + c * 2 * unpack.chunk_bytes);
            q1 = unpack(row + (c * 2 + 1) * unpack.chunk_bytes);
          }
          const int g = c / kChunksPerGroup;
          NXQ_UNROLL
          for (int r = 0; r < MR; ++r) {
            const __m512 a = _mm512_set1_ps(a_tile[(r * kRowBlock + kk) * g_count + g]);
            acc[r][c][0] = _mm512_fmadd_ps(q0, a, acc[r][c][0]);
            acc[r][c][1] = _mm512_fmadd_ps(q1, a, acc[r][c][1]);
          }
        }
      }
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int c = 0; c < CHUNKS; ++c) {
          if (c >= chunks) continue;  // (a guard, not a break: the loop stays unrollable)
          _mm512_store_ps(acc_mem + r * columns + t0 + c * kChunk, acc[r][c][0]);
          _mm512_store_ps(acc_mem + r * columns + t0 + c * kChunk + 16, acc[r][c][1]);
        }
      }
    }
  }

  // Nibbles: (even, odd) -> natural order; then the bias sums, and the output dtype.
  alignas(64) int32_t lo_idx[16], hi_idx[16];
  for (int j = 0; j < 16; ++j) {
    lo_idx[j] = (j % 2) * 16 + j / 2;
    hi_idx[j] = (j % 2) * 16 + 8 + j / 2;
  }
  const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  for (int r = 0; r < MR; ++r) {
    float* row_acc = acc_mem + r * columns;
    for (size_t c = 0; c < columns; c += kChunk) {
      __m512 v0 = _mm512_load_ps(row_acc + c), v1 = _mm512_load_ps(row_acc + c + 16);
      if constexpr (Nibbles) {
        const __m512 even = v0, odd = v1;
        v0 = _mm512_permutex2var_ps(even, lo, odd);
        v1 = _mm512_permutex2var_ps(even, hi, odd);
      }
      const __m512 bias = _mm512_set1_ps(scratch.bias[r * g_count + c / GS]);
      _mm512_store_ps(row_acc + c, _mm512_add_ps(v0, bias));
      _mm512_store_ps(row_acc + c + 16, _mm512_add_ps(v1, bias));
    }
    const size_t offset = (i0 + r) * n_dim + n_begin;
    if (out_dtype == DType::F32) {
      std::copy(row_acc, row_acc + columns, static_cast<float*>(out) + offset);
    } else {
      for (size_t j = 0; j < columns; ++j) store_from_f32(out, out_dtype, offset + j, row_acc[j]);
    }
  }
}

}  // namespace

void gemv_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  const Unpacker unpack(w.spec.bits);
  const size_t k_dim = w.rows;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  auto rows = [&](auto mr, auto max_chunks, size_t i0) {
    constexpr int MR = decltype(mr)::value, CHUNKS = decltype(max_chunks)::value;
    detail::with_group_size(gs, [&](auto group_size) {
      constexpr int GS = decltype(group_size)::value;
      auto run = [&](auto nibbles, auto dtype) {
        gemv_kn_rows<MR, CHUNKS, decltype(nibbles)::value, GS, decltype(dtype)::value>(
            x + i0 * k_dim, k_dim, w, unpack, n_begin, n_end, out_dtype, out, i0);
      };
      auto with_dtype = [&](auto nibbles) {
        switch (w.dtype) {
          case DType::F32:
            return run(nibbles, std::integral_constant<DType, DType::F32>{});
          case DType::F16:
            return run(nibbles, std::integral_constant<DType, DType::F16>{});
          default:
            return run(nibbles, std::integral_constant<DType, DType::BF16>{});
        }
      };
      w.spec.bits == 4 ? with_dtype(std::true_type{}) : with_dtype(std::false_type{});
    });
  };
  size_t i0 = 0;
  for (; i0 + 2 <= m; i0 += 2) rows(detail::Int<2>{}, detail::Int<4>{}, i0);
  if (i0 < m) rows(detail::Int<1>{}, detail::Int<8>{}, i0);
}

}  // namespace nx_quant::avx512
