// AVX-512 panels-then-FMA matmul of the microscaled modes: transpose = false (w is [K, N]) for
// every m, and transpose = true for GEMM-sized m. A panel is W[k0 .. k0+kb][n0 .. n0+32) in
// f32, each weight its element times its group's scale (exact: E2M1 has 2 significant bits,
// E4M3 4, so element * E8M0 or E4M3 scale needs at most 8), decoded 32 at a time from a row:
// 4-bit codes looked up by vpermps (the 16 bytes zero-extended to 16 lanes give the even
// columns, shifted right by 4 the odd ones, then interleaved), E4M3 bytes as f16 bit patterns
// through vcvtph2ps. A 6 x 32 microkernel then adds x[i, k] * panel[k] over k in order: every
// product exact inside its FMA, f32 sums.
//   transpose = false: blocks of 16 rows of W, each walked left to right across the thread's
//     columns (one 32-column panel at a time), so the packed rows stream in order; the outputs
//     accumulate in an f32 buffer of the thread's columns (m x width).
//   transpose = true: panels of 32 rows of W x 256 columns, decoded row by row and transposed
//     16 x 16 in registers; each panel serves every row of x.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"
#include "x86/avx512/transpose_avx512.h"

namespace nx_quant::microscaled::avx512 {

namespace {

constexpr size_t kNR = 32;   // panel columns (two zmm)
constexpr size_t kKB = 256;  // transpose = true: K per panel
constexpr size_t kKR = 16;   // transpose = false: W rows per block
constexpr int kMR = 6;       // rows of x per microkernel call: 12 accumulators

struct AlignedFloats {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data;
  explicit AlignedFloats(size_t count) {
    const size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
    data.reset(static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes)));
    if (!data) throw std::bad_alloc();
  }
  float* get() const { return data.get(); }
};

// Decodes stored row `row`, columns [col, col + 32) (col a multiple of 32; a multiple of 16
// with `half`: only the first 16 columns, the rest 0) into v[0] (first 16) and v[1].
struct Decoder {
  const QuantizedMatrix& w;
  const uint8_t* bytes;
  const uint8_t* scales;
  size_t row_bytes, groups;
  const Tables& t;
  float global;
  int group_shift;  // log2 of the group size (16 or 32)
  __m512 lut;
  __m512i even_odd_lo, even_odd_hi;

  explicit Decoder(const QuantizedMatrix& m)
      : w(m),
        bytes(static_cast<const uint8_t*>(m.packed.data)),
        scales(static_cast<const uint8_t*>(m.scales.data)),
        row_bytes(m.cols * static_cast<size_t>(m.spec.bits) / 8),
        groups(m.cols / static_cast<size_t>(m.spec.group_size)),
        t(tables()),
        global(m.spec.global_scale != 0.0f ? m.spec.global_scale / 2688.0f : 1.0f),
        group_shift(m.spec.group_size == 16 ? 4 : 5) {
    lut = _mm512_loadu_ps(kE2m1Values);
    alignas(64) int32_t lo[16], hi[16];
    for (int i = 0; i < 16; ++i) {
      lo[i] = (i % 2) * 16 + i / 2;  // column i of 0..15: even -> e[i/2], odd -> o[i/2]
      hi[i] = (i % 2) * 16 + 8 + i / 2;
    }
    even_odd_lo = _mm512_load_si512(lo);
    even_odd_hi = _mm512_load_si512(hi);
  }

  float scale(size_t row, size_t col) const {
    const uint8_t b = scales[row * groups + (col >> group_shift)];
    if (w.spec.mode == QuantMode::Nvfp4) {
      const float s = t.e4m3[b];
      return w.spec.global_scale != 0.0f ? s * global : s;
    }
    return t.e8m0[b];
  }

  inline __attribute__((always_inline)) void operator()(size_t row, size_t col, bool half,
                                                        __m512 (&v)[2]) const {
    const uint8_t* p = bytes + row * row_bytes + col * static_cast<size_t>(w.spec.bits) / 8;
    if (w.spec.bits == 4) {
      const __m128i raw = half ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))
                               : _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m512i b = _mm512_cvtepu8_epi32(raw);
      const __m512 e = _mm512_permutexvar_ps(b, lut);
      const __m512 o = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);
      v[0] = _mm512_permutex2var_ps(e, even_odd_lo, o);
      v[1] = _mm512_permutex2var_ps(e, even_odd_hi, o);
      if (w.spec.mode == QuantMode::Nvfp4) {
        v[0] = _mm512_mul_ps(v[0], _mm512_set1_ps(scale(row, col)));
        v[1] =
            half ? _mm512_setzero_ps() : _mm512_mul_ps(v[1], _mm512_set1_ps(scale(row, col + 16)));
      } else {
        const __m512 s = _mm512_set1_ps(scale(row, col));
        v[0] = _mm512_mul_ps(v[0], s);
        v[1] = _mm512_mul_ps(v[1], s);
      }
      return;
    }
    const __m512i w16 =
        _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512i h = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(w16, 8), 1),
                                       _mm512_set1_epi16(-16512));
    // value / 256 as f16, times 256 (exact), times the scale (exact).
    const __m512 s = _mm512_set1_ps(scale(row, col));
    const __m512 k256 = _mm512_set1_ps(256.0f);
    v[0] = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), k256), s);
    v[1] = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), k256), s);
  }
};

// c[r * ldc + 0..32) += sum_k x[r * ldx + k] * panel[k][0..32) for r < MR, k < kb (in order).
template <int MR>
void microkernel(const float* x, size_t ldx, const float* panel, size_t kb, float* c, size_t ldc) {
  __m512 a0[MR], a1[MR];
  for (int r = 0; r < MR; ++r) {
    a0[r] = _mm512_loadu_ps(c + r * ldc);
    a1[r] = _mm512_loadu_ps(c + r * ldc + 16);
  }
  for (size_t k = 0; k < kb; ++k) {
    const __m512 b0 = _mm512_load_ps(panel + k * kNR);
    const __m512 b1 = _mm512_load_ps(panel + k * kNR + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r * ldx + k]);
      a0[r] = _mm512_fmadd_ps(xr, b0, a0[r]);
      a1[r] = _mm512_fmadd_ps(xr, b1, a1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * ldc, a0[r]);
    _mm512_storeu_ps(c + r * ldc + 16, a1[r]);
  }
}

void microkernels(size_t m, const float* x, size_t ldx, const float* panel, size_t kb, float* c,
                  size_t ldc) {
  for (size_t i0 = 0; i0 < m; i0 += kMR) {
    const float* xi = x + i0 * ldx;
    float* ci = c + i0 * ldc;
    switch (std::min<size_t>(kMR, m - i0)) {
      case 1:
        microkernel<1>(xi, ldx, panel, kb, ci, ldc);
        break;
      case 2:
        microkernel<2>(xi, ldx, panel, kb, ci, ldc);
        break;
      case 3:
        microkernel<3>(xi, ldx, panel, kb, ci, ldc);
        break;
      case 4:
        microkernel<4>(xi, ldx, panel, kb, ci, ldc);
        break;
      case 5:
        microkernel<5>(xi, ldx, panel, kb, ci, ldc);
        break;
      default:
        microkernel<6>(xi, ldx, panel, kb, ci, ldc);
        break;
    }
  }
}

void store_rows(const float* c, size_t m, size_t width, size_t ldc, DType dtype, void* out,
                size_t n_dim, size_t n0) {
  for (size_t i = 0; i < m; ++i) {
    if (dtype == DType::F32) {
      std::memcpy(static_cast<float*>(out) + i * n_dim + n0, c + i * ldc, width * sizeof(float));
    } else {
      for (size_t j = 0; j < width; ++j)
        store_from_f32(out, dtype, i * n_dim + n0 + j, c[i * ldc + j]);
    }
  }
}

}  // namespace

void matmul_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out) {
  const Decoder decode(w);
  const size_t k_dim = w.rows, n_dim = w.cols;
  const size_t width = n_end - n_begin;
  const size_t tiles = (width + kNR - 1) / kNR;
  const size_t ldc = tiles * kNR;
  AlignedFloats c(m * ldc);
  std::fill(c.get(), c.get() + m * ldc, 0.0f);
  AlignedFloats panel(kKR * kNR);
  for (size_t k0 = 0; k0 < k_dim; k0 += kKR) {
    const size_t kb = std::min(kKR, k_dim - k0);
    for (size_t tile = 0; tile < tiles; ++tile) {
      const size_t col = n_begin + tile * kNR;
      const bool half = n_end - col < kNR;  // an nvfp4 tail of 16 columns
      for (size_t kk = 0; kk < kb; ++kk) {
        // The same columns two blocks of rows on, into L2.
        _mm_prefetch(
            reinterpret_cast<const char*>(decode.bytes + (k0 + kk + 2 * kKR) * decode.row_bytes +
                                          col * static_cast<size_t>(w.spec.bits) / 8),
            _MM_HINT_T1);
        __m512 v[2];
        decode(k0 + kk, col, half, v);
        _mm512_store_ps(panel.get() + kk * kNR, v[0]);
        _mm512_store_ps(panel.get() + kk * kNR + 16, v[1]);
      }
      microkernels(m, x + k0, k_dim, panel.get(), kb, c.get() + tile * kNR, ldc);
    }
  }
  store_rows(c.get(), m, width, ldc, out_dtype, out, n_dim, n_begin);
}

void gemm_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  const Decoder decode(w);
  const size_t k_dim = w.cols, n_dim = w.rows;
  AlignedFloats panel(kKB * kNR);
  AlignedFloats c(m * kNR);
  for (size_t n0 = n_begin; n0 < n_end; n0 += kNR) {
    const size_t nr = std::min(kNR, n_end - n0);
    std::fill(c.get(), c.get() + m * kNR, 0.0f);
    for (size_t k0 = 0; k0 < k_dim; k0 += kKB) {
      const size_t kb = std::min(kKB, k_dim - k0);
      // kb is a multiple of 16 (K is one of the group size); 32-column pieces, and a last 16.
      for (size_t half = 0; half < 2; ++half) {
        for (size_t kc = 0; kc < kb; kc += 16) {
          __m512 r[16];
          for (size_t j = 0; j < 16; ++j) {
            const size_t n = n0 + half * 16 + j;
            if (n >= n_end) {
              r[j] = _mm512_setzero_ps();
              continue;
            }
            // Rows are decoded 32 columns at a time: the even 16-column pieces keep v[0], the
            // odd ones v[1].
            __m512 v[2];
            const size_t col = k0 + (kc & ~size_t{31});
            decode(n, col, k_dim - col < 32, v);
            r[j] = (kc & 16) ? v[1] : v[0];
          }
          nx_quant::avx512::transpose16(r);
          for (size_t i = 0; i < 16; ++i)
            _mm512_store_ps(panel.get() + (kc + i) * kNR + half * 16, r[i]);
        }
      }
      microkernels(m, x + k0, k_dim, panel.get(), kb, c.get(), kNR);
    }
    store_rows(c.get(), m, nr, kNR, out_dtype, out, n_dim, n0);
  }
}

}  // namespace nx_quant::microscaled::avx512
