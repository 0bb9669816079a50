// NEON (aarch64) matmul of the microscaled modes, both layouts, any m. Weights are decoded 16 at
// a time (one scale each in every mode) into four f32 vectors, each weight its element times
// its scale (exact): E2M1 codes by TBL in a table of twice their values (int8; the low and high
// nibbles zipped back to column order, widened, converted, halved into the scale), E4M3 bytes as
// f16 bit patterns (value / 256) through FCVTL. Products with x by FMA (exact inside it), f32
// sums.
//   transpose = true, m <= kGemvMaxRows: per W row, x's rows four at a time.
//   otherwise (transpose = false, or GEMM-sized m): panels of 16 columns of W decoded into f32
//   (transpose = false: 16 rows of W at a time, streamed left to right across the thread's
//   columns; transpose = true: 16 rows of W x 256 columns, transposed 4 x 4 in registers) and a
//   4 x 16 microkernel over every row of x.
#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"

namespace nx_quant::microscaled::neon {

namespace {

constexpr size_t kNR = 16;   // panel columns (four q registers)
constexpr size_t kKB = 256;  // transpose = true: K per panel
constexpr size_t kKR = 16;   // transpose = false: W rows per block
constexpr int kMR = 4;       // rows of x per microkernel call: 16 accumulators

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

  // Stored row `row`, columns [col, col + 16) (col a multiple of 16) into v[0..4).
  inline void operator()(size_t row, size_t col, float32x4_t (&v)[4]) const {
    const uint8_t* p = bytes + row * row_bytes + col * static_cast<size_t>(w.spec.bits) / 8;
    if (w.spec.bits == 4) {
      static const int8_t kTwice[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
      const int8x16_t lut = vld1q_s8(kTwice);
      const uint8x8_t raw = vld1_u8(p);
      const int8x8_t lo = vqtbl1_s8(lut, vand_u8(raw, vdup_n_u8(0x0F)));
      const int8x8_t hi = vqtbl1_s8(lut, vshr_n_u8(raw, 4));
      const int16x8_t a = vmovl_s8(vzip1_s8(lo, hi));  // columns 0-7
      const int16x8_t b = vmovl_s8(vzip2_s8(lo, hi));  // 8-15
      const float s = 0.5f * scale(row, col);          // exact: a power of 2 apart
      v[0] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))), s);
      v[1] = vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(a)), s);
      v[2] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))), s);
      v[3] = vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(b)), s);
      return;
    }
    const uint8x16_t raw = vld1q_u8(p);
    const uint16x8_t mask = vdupq_n_u16(0xBF80);  // sign, exponent, mantissa of the f16
    // b << 8, then an arithmetic shift by 1: sign at bits 15 and 14, the rest at bits 7..13.
    const uint16x8_t h0 = vandq_u16(vreinterpretq_u16_s16(vshrq_n_s16(
                                        vreinterpretq_s16_u16(vshll_n_u8(vget_low_u8(raw), 8)), 1)),
                                    mask);
    const uint16x8_t h1 = vandq_u16(
        vreinterpretq_u16_s16(vshrq_n_s16(vreinterpretq_s16_u16(vshll_high_n_u8(raw, 8)), 1)),
        mask);
    const float16x8_t f0 = vreinterpretq_f16_u16(h0), f1 = vreinterpretq_f16_u16(h1);
    v[0] = vcvt_f32_f16(vget_low_f16(f0));
    v[1] = vcvt_high_f32_f16(f0);
    v[2] = vcvt_f32_f16(vget_low_f16(f1));
    v[3] = vcvt_high_f32_f16(f1);
    // value / 256 as f16: times 256, then times the scale (not by 256 * scale at once, which
    // could overflow for huge scales). Both exact.
    const float s = scale(row, col);
    for (int i = 0; i < 4; ++i) v[i] = vmulq_n_f32(vmulq_n_f32(v[i], 256.0f), s);
  }
};

// GEMV, transpose = true: rows [n_begin, n_end) of W against MR rows of x.
template <int MR>
void gemv_rows(const Decoder& decode, const float* x, size_t k, size_t n_begin, size_t n_end,
               float* sums /* [MR][n_end - n_begin] */) {
  for (size_t n = n_begin; n < n_end; ++n) {
    float32x4_t acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
    for (size_t c = 0; c < k; c += 16) {
      float32x4_t v[4];
      decode(n, c, v);
      for (int r = 0; r < MR; ++r) {
        const float* xc = x + r * k + c;
        acc[r][0] = vfmaq_f32(acc[r][0], v[0], vld1q_f32(xc));
        acc[r][1] = vfmaq_f32(acc[r][1], v[1], vld1q_f32(xc + 4));
        acc[r][0] = vfmaq_f32(acc[r][0], v[2], vld1q_f32(xc + 8));
        acc[r][1] = vfmaq_f32(acc[r][1], v[3], vld1q_f32(xc + 12));
      }
    }
    for (int r = 0; r < MR; ++r) {
      sums[r * (n_end - n_begin) + (n - n_begin)] = vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1]));
    }
  }
}

template <int MR>
void microkernel(const float* x, size_t ldx, const float* panel, size_t kb, float* c, size_t ldc) {
  float32x4_t a[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) a[r][j] = vld1q_f32(c + r * ldc + 4 * j);
  for (size_t k = 0; k < kb; ++k) {
    float32x4_t b[4];
    for (int j = 0; j < 4; ++j) b[j] = vld1q_f32(panel + k * kNR + 4 * j);
    for (int r = 0; r < MR; ++r) {
      const float xr = x[r * ldx + k];
      for (int j = 0; j < 4; ++j) a[r][j] = vfmaq_n_f32(a[r][j], b[j], xr);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) vst1q_f32(c + r * ldc + 4 * j, a[r][j]);
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
      default:
        microkernel<4>(xi, ldx, panel, kb, ci, ldc);
        break;
    }
  }
}

void store_rows(const float* c, size_t m, size_t width, size_t ldc, DType dtype, void* out,
                size_t n_dim, size_t n0) {
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < width; ++j)
      store_from_f32(out, dtype, i * n_dim + n0 + j, c[i * ldc + j]);
  }
}

}  // namespace

void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  const Decoder decode(w);
  const size_t k = w.cols, width = n_end - n_begin;
  std::vector<float> sums(4 * width);
  for (size_t i0 = 0; i0 < m; i0 += 4) {
    const size_t mr = std::min<size_t>(4, m - i0);
    const float* xi = x + i0 * k;
    switch (mr) {
      case 1:
        gemv_rows<1>(decode, xi, k, n_begin, n_end, sums.data());
        break;
      case 2:
        gemv_rows<2>(decode, xi, k, n_begin, n_end, sums.data());
        break;
      case 3:
        gemv_rows<3>(decode, xi, k, n_begin, n_end, sums.data());
        break;
      default:
        gemv_rows<4>(decode, xi, k, n_begin, n_end, sums.data());
        break;
    }
    for (size_t r = 0; r < mr; ++r) {
      for (size_t j = 0; j < width; ++j) {
        store_from_f32(out, out_dtype, (i0 + r) * w.rows + n_begin + j, sums[r * width + j]);
      }
    }
  }
}

void matmul_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out) {
  const Decoder decode(w);
  const size_t k_dim = w.rows, n_dim = w.cols;
  const size_t width = n_end - n_begin;  // a multiple of 16 (of the group size)
  std::vector<float> c(m * width, 0.0f);
  alignas(16) float panel[kKR * kNR];
  for (size_t k0 = 0; k0 < k_dim; k0 += kKR) {
    const size_t kb = std::min(kKR, k_dim - k0);
    for (size_t col = n_begin; col < n_end; col += kNR) {
      for (size_t kk = 0; kk < kb; ++kk) {
        float32x4_t v[4];
        decode(k0 + kk, col, v);
        for (int j = 0; j < 4; ++j) vst1q_f32(panel + kk * kNR + 4 * j, v[j]);
      }
      microkernels(m, x + k0, k_dim, panel, kb, c.data() + (col - n_begin), width);
    }
  }
  store_rows(c.data(), m, width, width, out_dtype, out, n_dim, n_begin);
}

void gemm_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  const Decoder decode(w);
  const size_t k_dim = w.cols, n_dim = w.rows;
  std::vector<float> panel(kKB * kNR);
  std::vector<float> c(m * kNR);
  for (size_t n0 = n_begin; n0 < n_end; n0 += kNR) {
    const size_t nr = std::min(kNR, n_end - n0);
    std::fill(c.begin(), c.end(), 0.0f);
    for (size_t k0 = 0; k0 < k_dim; k0 += kKB) {
      const size_t kb = std::min(kKB, k_dim - k0);  // a multiple of 16
      for (size_t kc = 0; kc < kb; kc += 16) {
        // 4 x 4 blocks: rows n0 + 4q .. +4 of W, columns kc + 4j .. +4.
        for (size_t q = 0; q < 4; ++q) {
          float32x4_t r[4][4];  // r[row][j]
          for (size_t i = 0; i < 4; ++i) {
            const size_t n = n0 + 4 * q + i;
            if (n >= n_end) {
              for (int j = 0; j < 4; ++j) r[i][j] = vdupq_n_f32(0.0f);
              continue;
            }
            decode(n, k0 + kc, r[i]);
          }
          for (int j = 0; j < 4; ++j) {
            // Transpose the 4 x 4 block of rows i, columns 4j..4j+3.
            const float32x4_t t0 = vtrn1q_f32(r[0][j], r[1][j]);
            const float32x4_t t1 = vtrn2q_f32(r[0][j], r[1][j]);
            const float32x4_t t2 = vtrn1q_f32(r[2][j], r[3][j]);
            const float32x4_t t3 = vtrn2q_f32(r[2][j], r[3][j]);
            const float32x4_t c0 = vreinterpretq_f32_f64(
                vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
            const float32x4_t c1 = vreinterpretq_f32_f64(
                vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
            const float32x4_t c2 = vreinterpretq_f32_f64(
                vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
            const float32x4_t c3 = vreinterpretq_f32_f64(
                vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
            float* base = panel.data() + (kc + 4 * j) * kNR + 4 * q;
            vst1q_f32(base, c0);
            vst1q_f32(base + kNR, c1);
            vst1q_f32(base + 2 * kNR, c2);
            vst1q_f32(base + 3 * kNR, c3);
          }
        }
      }
      microkernels(m, x + k0, k_dim, panel.data(), kb, c.data(), kNR);
    }
    store_rows(c.data(), m, nr, kNR, out_dtype, out, n_dim, n0);
  }
}

}  // namespace nx_quant::microscaled::neon
#endif
