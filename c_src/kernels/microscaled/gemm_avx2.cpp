// AVX2 panels-then-FMA matmul of the microscaled modes, as gemm_avx512.cpp with 8-lane vectors
// and 16-column panels: transpose = false for every m, transpose = true for GEMM-sized m.
// Weights are decoded 16 at a time (one scale each in every mode): E2M1 codes by vpshufb in a
// table of twice their values (int8, interleaved back to column order, converted, halved),
// E4M3 bytes as f16 bit patterns through vcvtph2ps; each weight is element times scale
// (exact), and the microkernel adds x[i, k] * weight by FMA over k in order.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"

namespace nx_quant::microscaled::avx2 {

namespace {

constexpr size_t kNR = 16;   // panel columns (two ymm)
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

// Stored row `row`, columns [col, col + 16) (col a multiple of 16) into v[0], v[1].
struct Decoder {
  const QuantizedMatrix& w;
  const uint8_t* bytes;
  const uint8_t* scales;
  size_t row_bytes, groups;
  const Tables& t;
  float global;
  int group_shift;  // log2 of the group size (16 or 32)

  explicit Decoder(const QuantizedMatrix& m)
      : w(m),
        bytes(static_cast<const uint8_t*>(m.packed.data)),
        scales(static_cast<const uint8_t*>(m.scales.data)),
        row_bytes(m.cols * static_cast<size_t>(m.spec.bits) / 8),
        groups(m.cols / static_cast<size_t>(m.spec.group_size)),
        t(tables()),
        global(m.spec.global_scale != 0.0f ? m.spec.global_scale / 2688.0f : 1.0f),
        group_shift(m.spec.group_size == 16 ? 4 : 5) {}

  float scale(size_t row, size_t col) const {
    const uint8_t b = scales[row * groups + (col >> group_shift)];
    if (w.spec.mode == QuantMode::Nvfp4) {
      const float s = t.e4m3[b];
      return w.spec.global_scale != 0.0f ? s * global : s;
    }
    return t.e8m0[b];
  }

  inline __attribute__((always_inline)) void operator()(size_t row, size_t col,
                                                        __m256 (&v)[2]) const {
    const uint8_t* p = bytes + row * row_bytes + col * static_cast<size_t>(w.spec.bits) / 8;
    if (w.spec.bits == 4) {
      const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
      const __m128i nibble = _mm_set1_epi8(0x0F);
      const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
      const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(raw, nibble));
      const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(raw, 4), nibble));
      const __m128i q = _mm_unpacklo_epi8(lo, hi);              // twice the values, column order
      const __m256 s = _mm256_set1_ps(0.5f * scale(row, col));  // exact: a power of 2 apart
      v[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s);
      v[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), s);
      return;
    }
    const __m256i w16 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w16, 8), 1),
                                       _mm256_set1_epi16(-16512));
    // value / 256 as f16, times 256 (exact), times the scale (exact).
    const __m256 s = _mm256_set1_ps(scale(row, col));
    const __m256 k256 = _mm256_set1_ps(256.0f);
    v[0] = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), k256), s);
    v[1] = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), k256), s);
  }
};

// In-register 8 x 8 transpose: r[j] becomes column j.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

template <int MR>
void microkernel(const float* x, size_t ldx, const float* panel, size_t kb, float* c, size_t ldc) {
  __m256 a0[MR], a1[MR];
  for (int r = 0; r < MR; ++r) {
    a0[r] = _mm256_loadu_ps(c + r * ldc);
    a1[r] = _mm256_loadu_ps(c + r * ldc + 8);
  }
  for (size_t k = 0; k < kb; ++k) {
    const __m256 b0 = _mm256_load_ps(panel + k * kNR);
    const __m256 b1 = _mm256_load_ps(panel + k * kNR + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 xr = _mm256_broadcast_ss(x + r * ldx + k);
      a0[r] = _mm256_fmadd_ps(xr, b0, a0[r]);
      a1[r] = _mm256_fmadd_ps(xr, b1, a1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(c + r * ldc, a0[r]);
    _mm256_storeu_ps(c + r * ldc + 8, a1[r]);
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
      for (size_t j = 0; j < width; ++j) {
        store_from_f32(out, dtype, i * n_dim + n0 + j, c[i * ldc + j]);
      }
    }
  }
}

}  // namespace

void matmul_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out) {
  const Decoder decode(w);
  const size_t k_dim = w.rows, n_dim = w.cols;
  const size_t width = n_end - n_begin;  // a multiple of 16 (of the group size)
  const size_t tiles = width / kNR;
  AlignedFloats c(m * width);
  std::fill(c.get(), c.get() + m * width, 0.0f);
  AlignedFloats panel(kKR * kNR);
  for (size_t k0 = 0; k0 < k_dim; k0 += kKR) {
    const size_t kb = std::min(kKR, k_dim - k0);
    for (size_t tile = 0; tile < tiles; ++tile) {
      const size_t col = n_begin + tile * kNR;
      for (size_t kk = 0; kk < kb; ++kk) {
        if (tile % 4 == 0) {  // one line of 4-bit rows per 4 tiles: the same columns 2 blocks on
          _mm_prefetch(
              reinterpret_cast<const char*>(decode.bytes + (k0 + kk + 2 * kKR) * decode.row_bytes +
                                            col * static_cast<size_t>(w.spec.bits) / 8),
              _MM_HINT_T1);
        }
        __m256 v[2];
        decode(k0 + kk, col, v);
        _mm256_store_ps(panel.get() + kk * kNR, v[0]);
        _mm256_store_ps(panel.get() + kk * kNR + 8, v[1]);
      }
      microkernels(m, x + k0, k_dim, panel.get(), kb, c.get() + tile * kNR, width);
    }
  }
  store_rows(c.get(), m, width, width, out_dtype, out, n_dim, n_begin);
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
      const size_t kb = std::min(kKB, k_dim - k0);  // a multiple of 16
      for (size_t half = 0; half < 2; ++half) {
        for (size_t kc = 0; kc < kb; kc += 16) {
          __m256 r[2][8];
          for (size_t j = 0; j < 8; ++j) {
            const size_t n = n0 + half * 8 + j;
            if (n >= n_end) {
              r[0][j] = r[1][j] = _mm256_setzero_ps();
              continue;
            }
            __m256 v[2];
            decode(n, k0 + kc, v);
            r[0][j] = v[0];
            r[1][j] = v[1];
          }
          for (size_t s = 0; s < 2; ++s) {
            transpose8(r[s]);
            for (size_t i = 0; i < 8; ++i) {
              _mm256_store_ps(panel.get() + (kc + 8 * s + i) * kNR + half * 8, r[s][i]);
            }
          }
        }
      }
      microkernels(m, x + k0, k_dim, panel.get(), kb, c.get(), kNR);
    }
    store_rows(c.get(), m, nr, kNR, out_dtype, out, n_dim, n0);
  }
}

}  // namespace nx_quant::microscaled::avx2
