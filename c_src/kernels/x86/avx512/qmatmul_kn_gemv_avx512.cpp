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
// in a short window, while accumulator traffic is 2 vectors per 16 rows.
// Every output is summed over k in order by one thread: bit-identical whatever the thread count.
// 4 bits have a kernel of their own (a table lookup instead of unpack + convert, see
// gemv_kn_rows_4bit); every other width goes through the generic unpacker.
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

// The walk both GEMVs share, for rows i0 .. i0+MR of x and the columns [n_begin, n_end): W in
// blocks of kRowBlock rows (their a = x * s and bias sums computed first), each block in tiles
// of kTile columns. For each tile, kernel(t0, kb, row, a_row) accumulates the block's rows
// into registers, where row(kk) is row k0 + kk's packed bytes from column t0 on (its bytes
// kPrefetchTiles tiles later are prefetched) and a_row(r, kk) that row's a for x row r, per
// group from the tile's first one. Then finish(acc_mem) stores the outputs. acc_mem holds
// `acc_stride` floats per x row, in whatever order the kernel keeps them.
template <int MR, size_t kTile, int GS, DType D, typename Kernel, typename Finish>
void walk_kn(const float* x, size_t k_dim, const QuantizedMatrix& w, size_t k_begin, size_t k_end,
             size_t n_begin, size_t n_end, size_t acc_stride, Kernel&& kernel, Finish&& finish) {
  const size_t bits = static_cast<size_t>(w.spec.bits);
  const size_t row_bytes = w.cols * bits / 8;
  const size_t columns = n_end - n_begin;
  const size_t g_begin = n_begin / GS, g_count = columns / GS;
  Scratch scratch(MR * acc_stride);
  float* acc_mem = scratch.acc.get();
  std::fill(acc_mem, acc_mem + MR * acc_stride, 0.0f);
  // (+4: a kernel may read up to 4 groups' a from a tile's first group, past the last row's.)
  scratch.a.resize(MR * kRowBlock * g_count + 4);
  scratch.bias.assign(MR * g_count, 0.0f);
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data) + n_begin * bits / 8;

  const size_t tiles = (columns + kTile - 1) / kTile;
  for (size_t k0 = k_begin; k0 < k_end; k0 += kRowBlock) {
    const size_t kb = std::min(kRowBlock, k_end - k0);
    block_params<D>(x, k_dim, MR, w, k0, kb, g_begin, g_count, scratch.a.data(),
                    scratch.bias.data());
    for (size_t t0 = 0; t0 < columns; t0 += kTile) {
      // The data kPrefetchTiles tiles later in (block, tile) order: further along these rows,
      // or at the start of the next block's rows (prefetches past the end are harmless).
      size_t ahead_tile = t0 / kTile + kPrefetchTiles, ahead_k0 = k0;
      if (ahead_tile >= tiles) {
        ahead_tile -= tiles;
        ahead_k0 += kRowBlock;
      }
      const uint8_t* ahead = bytes + ahead_k0 * row_bytes + ahead_tile * kTile * bits / 8;
      auto row = [&](size_t kk) NXQ_ALWAYS_INLINE {
        for (size_t line = 0; line < kTile * bits / 8; line += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + kk * row_bytes + line), _MM_HINT_T1);
        }
        return bytes + (k0 + kk) * row_bytes + t0 * bits / 8;
      };
      const float* a_tile = scratch.a.data() + t0 / GS;
      auto a_row = [&](int r, size_t kk)
                       NXQ_ALWAYS_INLINE { return a_tile + (r * kRowBlock + kk) * g_count; };
      kernel(acc_mem, t0, std::min(kTile, columns - t0), kb, row, a_row);
    }
  }
  finish(acc_mem, scratch.bias.data(), g_count);
}

// Where rows i0 .. i0+MR of x leave their partial sums over one slice of K: acc[r * n + j] for
// the output columns and bias[r * groups + g] for the bias terms of the groups.
struct SliceOut {
  float* acc;
  float* bias;
  size_t n, groups;
};

// acc(r, j) (column n_begin + j) and the walk's bias sums into `out`.
template <int MR, int GS, typename Acc>
void store_partials(size_t n_begin, size_t columns, const float* bias, size_t g_count,
                    const SliceOut& out, Acc&& acc) {
  for (int r = 0; r < MR; ++r) {
    for (size_t j = 0; j < columns; ++j) out.acc[r * out.n + n_begin + j] = acc(r, j);
    for (size_t g = 0; g < g_count; ++g) {
      out.bias[r * out.groups + n_begin / GS + g] = bias[r * g_count + g];
    }
  }
}

// Any bit width: 16 values at a time through the generic unpacker, f32 FMAs.
template <int MR, int CHUNKS, int GS, DType D>
void gemv_kn_rows(const float* x, size_t k_dim, const QuantizedMatrix& w, const Unpacker& unpack,
                  size_t k_begin, size_t k_end, size_t n_begin, size_t n_end, const SliceOut& out) {
  constexpr int kChunksPerGroup = GS / 32;
  constexpr size_t kTile = CHUNKS * kChunk;
  const size_t columns = n_end - n_begin;
  auto kernel = [&](float* acc_mem, size_t t0, size_t width, size_t kb, auto&& row, auto&& a_row) {
    // C chunks from chunk c0; C is a compile-time count so that the accumulators stay in
    // registers (a run-time guard made GCC keep them on the stack).
    auto tile = [&](auto chunk_count, int c0) NXQ_ALWAYS_INLINE {
      constexpr int C = decltype(chunk_count)::value;
      float* acc_tile = acc_mem + t0 + c0 * kChunk;
      __m512 acc[MR][C][2];
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int c = 0; c < C; ++c) {
          acc[r][c][0] = _mm512_load_ps(acc_tile + r * columns + c * kChunk);
          acc[r][c][1] = _mm512_load_ps(acc_tile + r * columns + c * kChunk + 16);
        }
      }
      for (size_t kk = 0; kk < kb; ++kk) {
        const uint8_t* p = row(kk) + c0 * 2 * unpack.chunk_bytes;
        NXQ_UNROLL
        for (int c = 0; c < C; ++c) {
          const __m512 q0 = unpack(p + c * 2 * unpack.chunk_bytes);
          const __m512 q1 = unpack(p + (c * 2 + 1) * unpack.chunk_bytes);
          NXQ_UNROLL
          for (int r = 0; r < MR; ++r) {
            const __m512 a = _mm512_set1_ps(a_row(r, kk)[(c0 + c) / kChunksPerGroup]);
            acc[r][c][0] = _mm512_fmadd_ps(q0, a, acc[r][c][0]);
            acc[r][c][1] = _mm512_fmadd_ps(q1, a, acc[r][c][1]);
          }
        }
      }
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int c = 0; c < C; ++c) {
          _mm512_store_ps(acc_tile + r * columns + c * kChunk, acc[r][c][0]);
          _mm512_store_ps(acc_tile + r * columns + c * kChunk + 16, acc[r][c][1]);
        }
      }
    };
    const int chunks = static_cast<int>(width / kChunk);
    if (chunks == CHUNKS) {
      tile(detail::Int<CHUNKS>{}, 0);
    } else {
      for (int c = 0; c < chunks; ++c) tile(detail::Int<1>{}, c);
    }
  };
  auto finish = [&](const float* acc_mem, const float* bias, size_t g_count) {
    store_partials<MR, GS>(n_begin, columns, bias, g_count, out,
                           [&](int r, size_t j) { return acc_mem[r * columns + j]; });
  };
  walk_kn<MR, kTile, GS, D>(x, k_dim, w, k_begin, k_end, n_begin, n_end, columns, kernel, finish);
}

// 4 bits: a 64-byte load holds 128 columns, lane d's 32-bit word columns 8d .. 8d+7 (one per
// nibble). vpermps looks up float(q) with the word itself as index (it reads only the low 4
// bits), so nibble j costs one shift and one lookup: no widening, no int-to-float conversion.
// Accumulator j of a piece of 128 columns holds columns 8d + j; finish() restores the order.
// Same products and the same order over k as the generic path: bit-identical results.
template <int MR, int CHUNKS, int GS, DType D>
void gemv_kn_rows_4bit(const float* x, size_t k_dim, const QuantizedMatrix& w, size_t k_begin,
                       size_t k_end, size_t n_begin, size_t n_end, const SliceOut& out) {
  constexpr size_t kPiece = 128;  // columns per 64-byte load
  constexpr int kPieces = CHUNKS * kChunk / kPiece;
  constexpr size_t kTile = kPieces * kPiece;
  constexpr int kGroupsPerPiece = kPiece / GS;
  const size_t columns = n_end - n_begin;
  const size_t stride = (columns + kPiece - 1) / kPiece * kPiece;
  alignas(64) float values[16];
  alignas(64) int32_t lane_group[16];
  for (int i = 0; i < 16; ++i) {
    values[i] = static_cast<float>(i);
    lane_group[i] = 8 * i / GS;
  }
  const __m512 table = _mm512_load_ps(values);
  const __m512i group_of_lane = _mm512_load_si512(lane_group);

  auto kernel = [&](float* acc_mem, size_t t0, size_t width, size_t kb, auto&& row, auto&& a_row) {
    const int pieces = static_cast<int>((width + kPiece - 1) / kPiece);
    // Bytes of the last piece (columns are a multiple of 32: whole 16-byte quarters).
    const size_t last_bytes = (width - (pieces - 1) * kPiece) / 2;
    const __mmask64 last_mask =
        last_bytes >= 64 ? ~__mmask64{0} : _cvtu64_mask64((uint64_t{1} << last_bytes) - 1);
    // P pieces, the last one masked; P is a compile-time count so that the accumulators stay
    // in registers (a run-time guard made GCC keep them on the stack).
    auto tile = [&](auto piece_count) NXQ_ALWAYS_INLINE {
      constexpr int P = decltype(piece_count)::value;
      __m512 acc[MR][P][8];
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int p = 0; p < P; ++p) {
          NXQ_UNROLL
          for (int j = 0; j < 8; ++j) {
            acc[r][p][j] = _mm512_load_ps(acc_mem + r * stride + t0 + p * kPiece + j * 16);
          }
        }
      }
      for (size_t kk = 0; kk < kb; ++kk) {
        const uint8_t* bytes = row(kk);
        NXQ_UNROLL
        for (int p = 0; p < P; ++p) {
          const __m512i raw =
              _mm512_maskz_loadu_epi8(p == P - 1 ? last_mask : ~__mmask64{0}, bytes + p * 64);
          __m512 a[MR];
          NXQ_UNROLL
          for (int r = 0; r < MR; ++r) {
            const float* ar = a_row(r, kk) + p * kGroupsPerPiece;
            if constexpr (kGroupsPerPiece == 1) {
              a[r] = _mm512_set1_ps(ar[0]);
            } else {
              a[r] = _mm512_permutexvar_ps(group_of_lane, _mm512_castps128_ps512(_mm_loadu_ps(ar)));
            }
          }
          NXQ_UNROLL
          for (int j = 0; j < 8; ++j) {
            const __m512i index = j == 0 ? raw : _mm512_srli_epi32(raw, 4 * j);
            const __m512 q = _mm512_permutexvar_ps(index, table);
            NXQ_UNROLL
            for (int r = 0; r < MR; ++r) acc[r][p][j] = _mm512_fmadd_ps(q, a[r], acc[r][p][j]);
          }
        }
      }
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int p = 0; p < P; ++p) {
          NXQ_UNROLL
          for (int j = 0; j < 8; ++j) {
            _mm512_store_ps(acc_mem + r * stride + t0 + p * kPiece + j * 16, acc[r][p][j]);
          }
        }
      }
    };
    static_assert(kPieces <= 2, "a partial tile is one piece");
    if (pieces == kPieces) {
      tile(detail::Int<kPieces>{});
    } else {
      tile(detail::Int<1>{});
    }
  };
  auto finish = [&](const float* acc_mem, const float* bias, size_t g_count) {
    store_partials<MR, GS>(n_begin, columns, bias, g_count, out, [&](int r, size_t j) {
      const size_t piece = j / kPiece * kPiece, within = j % kPiece;
      return acc_mem[r * stride + piece + (within % 8) * 16 + within / 8];
    });
  };
  walk_kn<MR, kTile, GS, D>(x, k_dim, w, k_begin, k_end, n_begin, n_end, stride, kernel, finish);
}

}  // namespace

KnPartials::KnPartials(size_t m_rows, const QuantizedMatrix& w)
    : m(m_rows),
      n(w.cols),
      groups(w.cols / static_cast<size_t>(w.spec.group_size)),
      slice_rows(w.cols <= kGemvKnSplitKMaxColumns ? kGemvKnSliceRows
                                                   : std::max<size_t>(w.rows, 1)),
      slices((w.rows + slice_rows - 1) / slice_rows),
      acc(slices * m * n),
      bias(slices * m * groups) {}

void gemv_kn_slice(const float* x, const QuantizedMatrix& w, size_t slice, size_t n_begin,
                   size_t n_end, KnPartials& partials) {
  const Unpacker unpack(w.spec.bits);
  const size_t k_dim = w.rows, m = partials.m;
  const size_t k_begin = slice * partials.slice_rows;
  const size_t k_end = std::min(k_dim, k_begin + partials.slice_rows);
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  auto rows = [&](auto mr, auto max_chunks, size_t i0) {
    constexpr int MR = decltype(mr)::value, CHUNKS = decltype(max_chunks)::value;
    const SliceOut out{partials.acc.data() + (slice * m + i0) * partials.n,
                       partials.bias.data() + (slice * m + i0) * partials.groups, partials.n,
                       partials.groups};
    detail::with_group_size(gs, [&](auto group_size) {
      constexpr int GS = decltype(group_size)::value;
      auto run = [&](auto dtype) {
        constexpr DType D = decltype(dtype)::value;
        if (w.spec.bits == 4) {
          gemv_kn_rows_4bit<MR, CHUNKS, GS, D>(x + i0 * k_dim, k_dim, w, k_begin, k_end, n_begin,
                                               n_end, out);
        } else {
          gemv_kn_rows<MR, CHUNKS, GS, D>(x + i0 * k_dim, k_dim, w, unpack, k_begin, k_end, n_begin,
                                          n_end, out);
        }
      };
      detail::with_dtype(w.dtype, run);
    });
  };
  size_t i0 = 0;
  for (; i0 + 2 <= m; i0 += 2) rows(detail::Int<2>{}, detail::Int<4>{}, i0);
  if (i0 < m) rows(detail::Int<1>{}, detail::Int<8>{}, i0);
}

void gemv_kn_combine(const KnPartials& partials, size_t group_size, DType out_dtype, size_t n_begin,
                     size_t n_end, void* out) {
  const size_t m = partials.m, n = partials.n, groups = partials.groups;
  // Slice by slice in order, then the bias terms likewise: a fixed order for every output.
  auto slice_sum = [&](const std::vector<float>& v, size_t row_size, size_t i, size_t j) {
    if (partials.slices == 0) return 0.0f;  // K = 0: an empty sum
    float sum = v[i * row_size + j];
    for (size_t s = 1; s < partials.slices; ++s) sum += v[(s * m + i) * row_size + j];
    return sum;
  };
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = n_begin; j < n_end; ++j) {
      const float value =
          slice_sum(partials.acc, n, i, j) + slice_sum(partials.bias, groups, i, j / group_size);
      store_from_f32(out, out_dtype, i * n + j, value);
    }
  }
}

}  // namespace nx_quant::avx512
