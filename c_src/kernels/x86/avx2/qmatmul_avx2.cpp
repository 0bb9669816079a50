// AVX2 + FMA (+ F16C) fused quantized matmul, the GEMM path (prefill, and transpose = false):
// the AVX-512 kernels (qmatmul_avx512.cpp) ported to 256-bit registers and 16 architectural
// registers. The decode GEMVs (transpose = true, m <= 8) are in x86/avx2/.
//
// Unpacking works on chunks of 16 consecutive values of a stored row, which span exactly 2*bits
// bytes; a chunk yields two __m256 of 8 values each (lo: values 0..7, hi: values 8..15).
//   * 2 and 4 bits: one 32-bit word holds 16 resp. 8 values: broadcast it (a plain load on
//     every AVX2 CPU), shift each lane by its own amount (vpsrlvd), mask.
//   * 8 bits: zero-extend 8 bytes to 8 dwords (vpmovzxbd).
//   * 3, 5 and 6 bits: broadcast the 16 bytes starting at the chunk into both 128-bit lanes; one
//     in-lane byte shuffle (vpshufb) gathers, for lane i, the two bytes starting at byte
//     (i*bits)/8 (a value spans at most two bytes); then shift by (i*bits)%8 and mask.
//     That 16-byte load reads up to 16 - 2*bits bytes past the chunk, which is harmless inside
//     the buffer but not at its end: a group whose over-read would leave the packed buffer is
//     first copied into a zeroed local (see `guarded`). The 2/4/8-bit unpackers read exactly
//     the chunk's bytes.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "gemv_loops.h"
#include "simd_kernels.h"
#include "unroll.h"
#include "x86/avx2/gemv_common_avx2.h"

namespace nx_quant::avx2 {

namespace {

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int Bits>
struct Unpacker {
  static constexpr size_t kChunkBytes = 2 * Bits;  // bytes holding 16 values
  // Bytes a chunk's load may read past the chunk (see the file comment).
  static constexpr size_t kOverread = (32 % Bits == 0) ? 0 : 16 - kChunkBytes;

  __m256i index_lo, index_hi;  // 3/5/6 bits: byte shuffles
  __m256i shift_lo, shift_hi;
  __m256i mask;

  Unpacker() {
    alignas(32) uint8_t idx[2][32];
    alignas(32) uint32_t sh[2][8];
    for (int h = 0; h < 2; ++h) {
      for (int l = 0; l < 8; ++l) {
        const int i = 8 * h + l;  // value within the chunk
        int bit = i * Bits;
        if (Bits == 2) bit = (8 * h + l) * 2;  // shift inside the chunk's single word
        if (Bits == 4) bit = l * 4;            // lo and hi each read their own word
        sh[h][l] = static_cast<uint32_t>((32 % Bits == 0) ? bit : bit & 7);
        for (int j = 0; j < 4; ++j) {
          const int byte = (bit >> 3) + j;
          idx[h][4 * l + j] =
              (j < 2 && byte < static_cast<int>(kChunkBytes)) ? static_cast<uint8_t>(byte) : 0x80;
        }
      }
    }
    index_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx[0]));
    index_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx[1]));
    shift_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(sh[0]));
    shift_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(sh[1]));
    mask = _mm256_set1_epi32((1 << Bits) - 1);
  }

  // Values 0..7 of the chunk at p.
  __m256 lo(const uint8_t* p) const {
    __m256i v;
    if constexpr (Bits == 8) {
      return _mm256_cvtepi32_ps(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    } else if constexpr (Bits == 2 || Bits == 4) {
      v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(load_u32(p))), shift_lo);
    } else {
      v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      v = _mm256_srlv_epi32(_mm256_shuffle_epi8(v, index_lo), shift_lo);
    }
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
  }

  // Values 8..15 of the chunk at p.
  __m256 hi(const uint8_t* p) const {
    __m256i v;
    if constexpr (Bits == 8) {
      return _mm256_cvtepi32_ps(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))));
    } else if constexpr (Bits == 2) {
      v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(load_u32(p))), shift_hi);
    } else if constexpr (Bits == 4) {
      v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(load_u32(p + 4))), shift_lo);
    } else {
      v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      v = _mm256_srlv_epi32(_mm256_shuffle_epi8(v, index_hi), shift_hi);
    }
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
  }
};

// Where to unpack `bytes` bytes at p from: p itself, or (when the unpacker's over-read would leave
// the packed buffer [base, base + total)) a copy in tmp, whose tail stays zero.
template <int Bits>
inline const uint8_t* guarded(const uint8_t* p, size_t bytes, const uint8_t* base, size_t total,
                              uint8_t* tmp) {
  if constexpr (Unpacker<Bits>::kOverread == 0) {
    return p;
  } else {
    if (static_cast<size_t>(p - base) + bytes + Unpacker<Bits>::kOverread <= total) return p;
    std::memcpy(tmp, p, bytes);
    return tmp;
  }
}

// Largest group: 128 values of 8 bits, plus room for an over-read.
constexpr size_t kMaxGroupBytes = 128;
constexpr size_t kTmpBytes = kMaxGroupBytes + 32;

struct Params {  // scales and biases, loaded as f32
  const void* scales;
  const void* biases;
  DType dtype;
  float scale(size_t i) const { return load_as_f32(scales, dtype, i); }
  float bias(size_t i) const { return load_as_f32(biases, dtype, i); }
};

template <typename T>
struct AlignedBuffer {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data;
  explicit AlignedBuffer(size_t count) {
    const size_t bytes = ((count * sizeof(T) + 63) / 64) * 64;
    data.reset(static_cast<T*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes)));
    if (!data) throw std::bad_alloc();
  }
  T* get() const { return data.get(); }
};

// Description of the packed matrix shared by the kernels.
struct Packed {
  const uint8_t* bytes;
  size_t total;      // bytes of the whole packed buffer
  size_t row_bytes;  // bytes of one stored row
};

// ---- GEMM ------------------------------------------------------------------------------------
constexpr size_t kNR = 32;   // output columns per panel (two 16-column microkernel halves)
constexpr size_t kKB = 256;  // K per panel: 256 x 32 f32 = 32 KB, L1/L2 resident
constexpr int kMR = 6;       // rows of x per microkernel call: 12 accumulators
static_assert(kGemmBlock % kNR == 0, "column splits must fall on panel boundaries");

// In-register 8 x 8 transpose: r[j] becomes column j.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
  NXQ_UNROLL
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  NXQ_UNROLL
  for (int i = 0; i < 2; ++i) {
    s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  NXQ_UNROLL
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
  }
}

// transpose = false: W is stored [K, N] packed along N; n0 is a multiple of 32 and N of the
// group size (>= 32), so a panel's 32 columns are always present and inside one group.
template <int Bits>
void dequantize_panel_kn(const QuantizedMatrix& w, const Packed& packed,
                         const Unpacker<Bits>& unpack, size_t n0, size_t k0, size_t kb,
                         float* panel) {
  using U = Unpacker<Bits>;
  const Params params{w.scales.data, w.biases.data, w.dtype};
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  alignas(32) uint8_t tmp[kTmpBytes] = {};
  for (size_t k = 0; k < kb; ++k) {
    const size_t g = (k0 + k) * groups + n0 / gs;
    const __m256 scale = _mm256_set1_ps(params.scale(g));
    const __m256 bias = _mm256_set1_ps(params.bias(g));
    const uint8_t* row = packed.bytes + (k0 + k) * packed.row_bytes + (n0 / 16) * U::kChunkBytes;
    row = guarded<Bits>(row, 2 * U::kChunkBytes, packed.bytes, packed.total, tmp);
    float* dst = panel + k * kNR;
    _mm256_store_ps(dst, _mm256_fmadd_ps(unpack.lo(row), scale, bias));
    _mm256_store_ps(dst + 8, _mm256_fmadd_ps(unpack.hi(row), scale, bias));
    _mm256_store_ps(dst + 16, _mm256_fmadd_ps(unpack.lo(row + U::kChunkBytes), scale, bias));
    _mm256_store_ps(dst + 24, _mm256_fmadd_ps(unpack.hi(row + U::kChunkBytes), scale, bias));
  }
}

// c[r][0..16) += sum_k x[r][k] * panel[k][0..16) for r < MR, k < kb (k in order); panel and c
// have row stride kNR.
template <int MR>
void microkernel(const float* x, size_t ldx, const float* panel, size_t kb, float* c) {
  __m256 a0[MR], a1[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    a0[r] = _mm256_loadu_ps(c + r * kNR);
    a1[r] = _mm256_loadu_ps(c + r * kNR + 8);
  }
  for (size_t k = 0; k < kb; ++k) {
    const __m256 b0 = _mm256_load_ps(panel + k * kNR);
    const __m256 b1 = _mm256_load_ps(panel + k * kNR + 8);
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 xr = _mm256_broadcast_ss(x + r * ldx + k);
      a0[r] = _mm256_fmadd_ps(xr, b0, a0[r]);
      a1[r] = _mm256_fmadd_ps(xr, b1, a1[r]);
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(c + r * kNR, a0[r]);
    _mm256_storeu_ps(c + r * kNR + 8, a1[r]);
  }
}

void microkernel_tail(int rows, const float* x, size_t ldx, const float* panel, size_t kb,
                      float* c) {
  switch (rows) {
    case 1:
      return microkernel<1>(x, ldx, panel, kb, c);
    case 2:
      return microkernel<2>(x, ldx, panel, kb, c);
    case 3:
      return microkernel<3>(x, ldx, panel, kb, c);
    case 4:
      return microkernel<4>(x, ldx, panel, kb, c);
    case 5:
      return microkernel<5>(x, ldx, panel, kb, c);
    default:
      return microkernel<6>(x, ldx, panel, kb, c);
  }
}

void store_row(const float* values, size_t count, DType dtype, void* out, size_t offset) {
  if (dtype == DType::F32) {
    std::memcpy(static_cast<float*>(out) + offset, values, count * sizeof(float));
  } else if (dtype == DType::F16) {
    auto* dst = static_cast<uint16_t*>(out) + offset;
    size_t j = 0;
    for (; j + 8 <= count; j += 8) {
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(values + j), _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), h);
    }
    for (; j < count; ++j) dst[j] = f32_to_f16_bits(values[j]);
  } else {
    for (size_t j = 0; j < count; ++j) store_from_f32(out, dtype, offset + j, values[j]);
  }
}

// transpose = false: W stored [K, N]; panels of 32 output columns x 256 K, rows of x
// broadcast against them.
template <int Bits>
void gemm_kn_impl(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype,
                  size_t n_begin, size_t n_end, void* out) {
  const Unpacker<Bits> unpack;
  const size_t k_dim = w.rows;
  const size_t n_dim = w.cols;
  const Packed packed{static_cast<const uint8_t*>(w.packed.data), w.packed.bytes,
                      w.cols * static_cast<size_t>(Bits) / 8};
  AlignedBuffer<float> panel(kKB * kNR);
  AlignedBuffer<float> c(m * kNR);
  for (size_t n0 = n_begin; n0 < n_end; n0 += kNR) {
    const size_t nr = std::min(kNR, n_end - n0);
    std::fill(c.get(), c.get() + m * kNR, 0.0f);
    for (size_t k0 = 0; k0 < k_dim; k0 += kKB) {
      const size_t kb = std::min(kKB, k_dim - k0);
      dequantize_panel_kn<Bits>(w, packed, unpack, n0, k0, kb, panel.get());
      for (size_t i0 = 0; i0 < m; i0 += kMR) {
        const int rows = static_cast<int>(std::min<size_t>(kMR, m - i0));
        for (size_t half = 0; half < 2; ++half) {
          microkernel_tail(rows, x + i0 * k_dim + k0, k_dim, panel.get() + half * 16, kb,
                           c.get() + i0 * kNR + half * 16);
        }
      }
    }
    for (size_t i = 0; i < m; ++i) store_row(c.get() + i * kNR, nr, out_dtype, out, i * n_dim + n0);
  }
}

// ---- GEMM, transpose = true (W stored [N, K]) ------------------------------------------------
// Vectors run along the rows of x, broadcasts along W's rows, so that W is dequantized row by
// row as it is stored (no transposition) and x once per block into the microkernel's order:
//   for each block of kNB output columns and kXB rows of x (x block: kXB x 256 f32 = 256 KB),
//     for each 256-deep K block: pack x (slivers of 16 rows, k-major), then for each group of
//       6 W rows: dequantize them (6 x 256 f32 = 6 KB, stays in L1) and run the 16 x 6
//       microkernel over every sliver (12 accumulators, 2 loads of x + 6 broadcasts of W per
//       12 FMAs), accumulating into a column-major block of the result.
// Each output is sum over K blocks in order of (sum over k in order of x * w): the same order
// as the kn GEMM above, exact f32 products.
constexpr int kWR = 6;             // W rows (output columns) per microkernel
constexpr size_t kXR = 16;         // rows of x per sliver (two vectors)
constexpr size_t kXB = 256;        // rows of x per block
constexpr size_t kNB = 128 * kWR;  // output columns per block (768)

// The f32 values of W rows n .. n+6 (those < n_end; zeros past it) at k0 .. k0 + kb into
// panel[j * kKB + k]. params: the f32 scales then biases of those rows' groups at k0 ...
template <int Bits, int GS>
void dequantize_rows_nk(const Packed& packed, const Unpacker<Bits>& unpack, size_t n, size_t n_end,
                        size_t k0, size_t kb, const float* scales, const float* biases,
                        float* panel, uint8_t* tmp) {
  using U = Unpacker<Bits>;
  for (int j = 0; j < kWR; ++j) {
    float* dst = panel + j * kKB;
    if (n + j >= n_end) {
      std::fill(dst, dst + kb, 0.0f);
      continue;
    }
    const uint8_t* row = packed.bytes + (n + j) * packed.row_bytes + (k0 / 16) * U::kChunkBytes;
    for (size_t g = 0; g < kb / GS; ++g) {
      const __m256 scale = _mm256_set1_ps(scales[j * (kKB / 32) + g]);
      const __m256 bias = _mm256_set1_ps(biases[j * (kKB / 32) + g]);
      NXQ_UNROLL
      for (size_t c = 0; c < GS / 16; ++c) {
        const size_t k = g * GS + 16 * c;
        const uint8_t* p = guarded<Bits>(row + (k / 16) * U::kChunkBytes, U::kChunkBytes,
                                         packed.bytes, packed.total, tmp);
        _mm256_store_ps(dst + k, _mm256_fmadd_ps(unpack.lo(p), scale, bias));
        _mm256_store_ps(dst + k + 8, _mm256_fmadd_ps(unpack.hi(p), scale, bias));
      }
    }
  }
}

// xp[s][k][0..16) = x[i0 + 16 s + r][k0 + k] for the rows of [i0, i1) (zero past i1), k < kb.
void pack_x(const float* x, size_t k_dim, size_t i0, size_t i1, size_t k0, size_t kb, float* xp) {
  for (size_t s0 = i0; s0 < i1; s0 += kXR) {
    float* sliver = xp + ((s0 - i0) / kXR) * kb * kXR;
    for (size_t h = 0; h < 2; ++h) {
      const size_t r0 = s0 + 8 * h;
      for (size_t kc = 0; kc < kb; kc += 8) {
        __m256 r[8];
        NXQ_UNROLL
        for (size_t i = 0; i < 8; ++i) {
          r[i] =
              r0 + i < i1 ? _mm256_loadu_ps(x + (r0 + i) * k_dim + k0 + kc) : _mm256_setzero_ps();
        }
        transpose8(r);
        NXQ_UNROLL
        for (size_t j = 0; j < 8; ++j) _mm256_store_ps(sliver + (kc + j) * kXR + 8 * h, r[j]);
      }
    }
  }
}

// c[j * ldc + v * 8 .. + 8) += sum_k w[j][k] * x[k][v * 8 .. + 8) for j < 6, v < V, k < kb in
// order. x: one sliver (16 floats per k), w: a dequantized panel (row stride kKB). Not inlined:
// it needs 15 of the 16 ymm registers, which the caller's loop constants would take.
template <int V>
__attribute__((noinline)) void microkernel_nk(const float* xp, const float* wp, size_t kb, float* c,
                                              size_t ldc) {
  __m256 acc[kWR][V];
  NXQ_UNROLL
  for (int j = 0; j < kWR; ++j) {
    NXQ_UNROLL
    for (int v = 0; v < V; ++v) acc[j][v] = _mm256_load_ps(c + j * ldc + 8 * v);
  }
  for (size_t k0 = 0; k0 < kb; k0 += 4) {  // kb is a multiple of 32; unrolled: ~95% of peak
    NXQ_UNROLL
    for (size_t k = k0; k < k0 + 4; ++k) {
      __m256 xv[V];
      NXQ_UNROLL
      for (int v = 0; v < V; ++v) xv[v] = _mm256_load_ps(xp + k * kXR + 8 * v);
      NXQ_UNROLL
      for (int j = 0; j < kWR; ++j) {
        const __m256 wj = _mm256_broadcast_ss(wp + j * kKB + k);
        NXQ_UNROLL
        for (int v = 0; v < V; ++v) acc[j][v] = _mm256_fmadd_ps(xv[v], wj, acc[j][v]);
      }
    }
  }
  NXQ_UNROLL
  for (int j = 0; j < kWR; ++j) {
    NXQ_UNROLL
    for (int v = 0; v < V; ++v) _mm256_store_ps(c + j * ldc + 8 * v, acc[j][v]);
  }
}

template <int Bits, int GS>
void gemm_nk_impl(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype,
                  size_t n_begin, size_t n_end, void* out) {
  const Unpacker<Bits> unpack;
  const size_t k_dim = w.cols, n_dim = w.rows, groups = k_dim / GS;
  const Packed packed{static_cast<const uint8_t*>(w.packed.data), w.packed.bytes,
                      w.cols * static_cast<size_t>(Bits) / 8};
  // x blocks of at most kXB rows, as even as slivers allow.
  const size_t x_blocks = (m + kXB - 1) / kXB;
  const size_t xb = ((m + x_blocks - 1) / x_blocks + kXR - 1) / kXR * kXR;
  // c[col][row]: columns padded to whole microkernels and to 8 for the final transposition.
  const size_t nb_max = std::min(kNB, (n_end - n_begin + kWR - 1) / kWR * kWR);
  const size_t c_cols = (nb_max + 7) / 8 * 8;
  AlignedBuffer<float> xp(xb * kKB);
  AlignedBuffer<float> panel(kWR * kKB);
  AlignedBuffer<float> c(c_cols * xb);
  AlignedBuffer<float> rows8(8 * c_cols);  // 8 rows of the result, row-major
  float scales[kWR * (kKB / 32)], biases[kWR * (kKB / 32)];
  alignas(32) uint8_t tmp[kTmpBytes] = {};
  for (size_t nb0 = n_begin; nb0 < n_end; nb0 += kNB) {
    const size_t nb1 = std::min(nb0 + kNB, n_end);
    for (size_t i0 = 0; i0 < m; i0 += xb) {
      const size_t i1 = std::min(i0 + xb, m);
      const size_t rows = (i1 - i0 + kXR - 1) / kXR * kXR;  // ldc: rows of c per column
      std::fill(c.get(), c.get() + c_cols * rows, 0.0f);
      for (size_t k0 = 0; k0 < k_dim; k0 += kKB) {
        const size_t kb = std::min(kKB, k_dim - k0);
        pack_x(x, k_dim, i0, i1, k0, kb, xp.get());
        for (size_t n = nb0; n < nb1; n += kWR) {
          // The next panel's W bytes and parameters: a panel's rows are row_bytes apart, too
          // short a run for the hardware prefetchers.
          for (size_t j = n + kWR; j < std::min(n + 2 * kWR, n_dim); ++j) {
            const uint8_t* p = packed.bytes + j * packed.row_bytes + k0 * Bits / 8;
            const size_t skew = reinterpret_cast<uintptr_t>(p) % 64;  // every line it touches
            for (size_t b = 0; b < skew + kb * Bits / 8; b += 64) {
              _mm_prefetch(reinterpret_cast<const char*>(p - skew + b), _MM_HINT_T0);
            }
            const size_t g = j * groups + k0 / GS, size = dtype_size(w.dtype);
            _mm_prefetch(static_cast<const char*>(w.scales.data) + g * size, _MM_HINT_T0);
            _mm_prefetch(static_cast<const char*>(w.biases.data) + g * size, _MM_HINT_T0);
          }
          for (int j = 0; j < kWR && n + j < nb1; ++j) {
            const size_t g = (n + j) * groups + k0 / GS;
            params_to_f32(w.scales.data, w.dtype, g, kb / GS, scales + j * (kKB / 32));
            params_to_f32(w.biases.data, w.dtype, g, kb / GS, biases + j * (kKB / 32));
          }
          dequantize_rows_nk<Bits, GS>(packed, unpack, n, nb1, k0, kb, scales, biases, panel.get(),
                                       tmp);
          float* cn = c.get() + (n - nb0) * rows;
          for (size_t s = 0; s < rows; s += kXR) {
            const float* sliver = xp.get() + (s / kXR) * kb * kXR;
            if (i1 - i0 - s > 8) {
              microkernel_nk<2>(sliver, panel.get(), kb, cn + s, rows);
            } else {
              microkernel_nk<1>(sliver, panel.get(), kb, cn + s, rows);
            }
          }
        }
      }
      // Back to row-major, 8 x 8 blocks at a time.
      for (size_t r0 = i0; r0 < i1; r0 += 8) {
        for (size_t col = 0; col < c_cols; col += 8) {
          __m256 v[8];
          NXQ_UNROLL
          for (size_t j = 0; j < 8; ++j)
            v[j] = _mm256_load_ps(c.get() + (col + j) * rows + r0 - i0);
          transpose8(v);
          NXQ_UNROLL
          for (size_t i = 0; i < 8; ++i) _mm256_store_ps(rows8.get() + i * c_cols + col, v[i]);
        }
        for (size_t i = r0; i < std::min(r0 + 8, i1); ++i) {
          store_row(rows8.get() + (i - r0) * c_cols, nb1 - nb0, out_dtype, out, i * n_dim + nb0);
        }
      }
    }
  }
}

}  // namespace

void gemm(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
          size_t n_begin, size_t n_end, void* out) {
  if (m == 0 || n_begin >= n_end) return;
  detail::with_bits(w.spec.bits, [&](auto bits) {
    constexpr int B = decltype(bits)::value;
    if (transpose) {
      detail::with_group_size(static_cast<size_t>(w.spec.group_size), [&](auto gs) {
        gemm_nk_impl<B, decltype(gs)::value>(x, m, w, out_dtype, n_begin, n_end, out);
      });
    } else {
      gemm_kn_impl<B>(x, m, w, out_dtype, n_begin, n_end, out);
    }
  });
}

}  // namespace nx_quant::avx2
