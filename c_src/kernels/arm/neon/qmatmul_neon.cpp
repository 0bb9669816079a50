// NEON fused quantized matmul (exact mode: f32 products accumulated in f32), the AVX2 kernels'
// structure (qmatmul_avx2.cpp) on 128-bit registers:
//   * gemv_nk (transpose = true, small m): per output, per group, t = sum of q * x over the
//     group (4 lanes, one FMA chain), acc += t * scale (4 lanes), bias_sum += bias * sum(x_g)
//     (scalar); result = sum of acc's lanes + bias_sum. The order depends on neither m nor the
//     column split. W is read in blocks of 4 rows that stay in L1 while every pair of x rows
//     uses them (detail::for_gemv_blocks).
//   * gemv_kn (transpose = false, small m): per 32-column strip (inside one group), two rows
//     of x at a time, K streamed in order: acc += (x_k * scale_k) * q_k (8 registers per row)
//     and bias_sum += x_k * bias_k; result = acc + bias_sum.
//   * gemm (any m): a 256 x 32 f32 panel of W dequantized (scale * q + bias, fused) and reused
//     by a 4-row x 16-column microkernel for every row of x.
// q values come from Unpack32 (unpack_neon.h), 32 at a time, widened to f32.
#include <arm_neon.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "arm/neon/neon_kernels.h"
#include "arm/neon/unpack_neon.h"
#include "gemv_loops.h"
#include "unroll.h"

namespace nx_quant::neon {

namespace {

constexpr size_t kMaxGroupBytes = 128;
constexpr size_t kTmpBytes = kMaxGroupBytes + 32;

struct Packed {
  const uint8_t* bytes;
  size_t total;      // bytes of the whole packed buffer
  size_t row_bytes;  // bytes of one stored row
};

// The 32 q values of the block at p as 8 f32 vectors.
template <int Bits>
inline void block_as_f32(const Unpack32<Bits>& unpack, const uint8_t* p, float32x4_t q[8]) {
  uint8x16_t v0, v1;
  unpack(p, v0, v1);
  widen_to_f32(v0, q);
  widen_to_f32(v1, q + 4);
}

void store_row(const float* values, size_t count, DType dtype, void* out, size_t offset) {
  size_t j = 0;
  if (dtype == DType::F32) {
    std::memcpy(static_cast<float*>(out) + offset, values, count * sizeof(float));
    return;
  }
  auto* dst = static_cast<uint16_t*>(out) + offset;
  for (; j + 4 <= count; j += 4) {
    const float32x4_t v = vld1q_f32(values + j);
    vst1_u16(dst + j, dtype == DType::F16 ? f16_bits(v) : bf16_bits(v));
  }
  for (; j < count; ++j) store_from_f32(out, dtype, offset + j, values[j]);
}

// ---- GEMV, transpose = true ------------------------------------------------------------------
constexpr int kBlockRows = 4;          // W rows per block
constexpr size_t kPrefetchBlocks = 2;  // blocks ahead that W is prefetched

template <int Bits, int MR, int NW>
void gemv_block(const float* x, size_t k_dim, const float* xsum, size_t groups, const Packed& w,
                const QuantizedMatrix& wm, size_t n, size_t gs, const Unpack32<Bits>& unpack,
                uint8_t (*tmp)[kTmpBytes], float* result /* [MR][NW] */) {
  constexpr size_t kBlockBytes = Unpack32<Bits>::kBlockBytes;
  float32x4_t acc[MR][NW];
  float bias_sum[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      acc[r][v] = vdupq_n_f32(0.0f);
      bias_sum[r][v] = 0.0f;
    }
  }
  const size_t blocks_per_group = gs / 32;
  const size_t group_bytes = blocks_per_group * kBlockBytes;
  const uint8_t* rows = w.bytes + n * w.row_bytes;
  for (size_t g = 0; g < groups; ++g) {
    float32x4_t t[MR][NW];
    const uint8_t* src[NW];
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) t[r][v] = vdupq_n_f32(0.0f);
      const uint8_t* p = rows + v * w.row_bytes + g * group_bytes;
      __builtin_prefetch(p + kPrefetchBlocks * kBlockRows * w.row_bytes, 0, 2);
      src[v] = guarded<Bits>(p, group_bytes, w.bytes, w.total, tmp[v]);
    }
    const float* xg = x + g * gs;
    for (size_t c = 0; c < blocks_per_group; ++c) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        float32x4_t q[8];
        block_as_f32(unpack, src[v] + c * kBlockBytes, q);
        NXQ_UNROLL
        for (int r = 0; r < MR; ++r) {
          const float* xr = xg + r * k_dim + c * 32;
          NXQ_UNROLL
          for (int l = 0; l < 8; ++l) t[r][v] = vfmaq_f32(t[r][v], q[l], vld1q_f32(xr + 4 * l));
        }
      }
    }
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const size_t p = (n + v) * groups + g;
      const float scale = load_as_f32(wm.scales.data, wm.dtype, p);
      const float bias = load_as_f32(wm.biases.data, wm.dtype, p);
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        acc[r][v] = vfmaq_n_f32(acc[r][v], t[r][v], scale);
        bias_sum[r][v] += bias * xsum[r * groups + g];
      }
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) result[r * NW + v] = vaddvq_f32(acc[r][v]) + bias_sum[r][v];
  }
}

// Sum of x over each group of each row ([rows][groups]), 4 lanes then across them.
std::vector<float> group_sums(const float* x, size_t rows, size_t k_dim, size_t gs) {
  const size_t groups = k_dim / gs;
  std::vector<float> sums(rows * groups);
  for (size_t i = 0; i < rows * groups; ++i) {
    float32x4_t s = vdupq_n_f32(0.0f);
    for (size_t c = 0; c < gs; c += 4) s = vaddq_f32(s, vld1q_f32(x + i * gs + c));
    sums[i] = vaddvq_f32(s);
  }
  return sums;
}

template <int Bits>
void gemv_nk_impl(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype,
                  size_t n_begin, size_t n_end, void* out) {
  const Unpack32<Bits> unpack;
  const size_t k_dim = w.cols, n_dim = w.rows;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = k_dim / gs;
  const Packed packed{static_cast<const uint8_t*>(w.packed.data), w.packed.bytes,
                      k_dim * static_cast<size_t>(Bits) / 8};
  alignas(16) uint8_t tmp[kBlockRows][kTmpBytes] = {};
  const std::vector<float> xsum = group_sums(x, m, k_dim, gs);
  float result[2 * kBlockRows];
  auto load_rows = [&](auto, size_t n) {
    detail::prefetch_row_params(w, groups, n + kPrefetchBlocks * kBlockRows, kBlockRows);
  };
  auto run = [&](auto mr, auto nw, size_t n, size_t i0) {
    constexpr int MR = decltype(mr)::value, NW = decltype(nw)::value;
    gemv_block<Bits, MR, NW>(x + i0 * k_dim, k_dim, xsum.data() + i0 * groups, groups, packed, w, n,
                             gs, unpack, tmp, result);
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NW; ++v)
        store_from_f32(out, out_dtype, (i0 + r) * n_dim + n + v, result[r * NW + v]);
  };
  detail::for_gemv_blocks<kBlockRows>(m, n_begin, n_end, load_rows, run);
}

// ---- GEMV, transpose = false -----------------------------------------------------------------
// Output columns [n0, n0 + 32) of rows i0 .. i0 + MR of x.
template <int Bits, int MR>
void gemv_kn_strip(const float* x, size_t k_dim, const QuantizedMatrix& w, const Packed& packed,
                   const Unpack32<Bits>& unpack, size_t n0, float* result /* [MR][32] */) {
  constexpr size_t kBlockBytes = Unpack32<Bits>::kBlockBytes;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs, g = n0 / gs;
  alignas(16) uint8_t tmp[kTmpBytes] = {};
  float32x4_t acc[MR][8];
  float bias_sum[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    bias_sum[r] = 0.0f;
    NXQ_UNROLL
    for (int l = 0; l < 8; ++l) acc[r][l] = vdupq_n_f32(0.0f);
  }
  const uint8_t* column = packed.bytes + n0 * Bits / 8;
  for (size_t k = 0; k < k_dim; ++k) {
    const uint8_t* p =
        guarded<Bits>(column + k * packed.row_bytes, kBlockBytes, packed.bytes, packed.total, tmp);
    __builtin_prefetch(column + (k + 16) * packed.row_bytes, 0, 2);
    float32x4_t q[8];
    block_as_f32(unpack, p, q);
    const float scale = load_as_f32(w.scales.data, w.dtype, k * groups + g);
    const float bias = load_as_f32(w.biases.data, w.dtype, k * groups + g);
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      const float xk = x[r * k_dim + k];
      const float a = xk * scale;
      bias_sum[r] += xk * bias;
      NXQ_UNROLL
      for (int l = 0; l < 8; ++l) acc[r][l] = vfmaq_n_f32(acc[r][l], q[l], a);
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int l = 0; l < 8; ++l) {
      vst1q_f32(result + r * 32 + 4 * l, vaddq_f32(acc[r][l], vdupq_n_f32(bias_sum[r])));
    }
  }
}

template <int Bits>
void gemv_kn_impl(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype,
                  size_t n_begin, size_t n_end, void* out) {
  const Unpack32<Bits> unpack;
  const size_t k_dim = w.rows, n_dim = w.cols;
  const Packed packed{static_cast<const uint8_t*>(w.packed.data), w.packed.bytes,
                      n_dim * static_cast<size_t>(Bits) / 8};
  alignas(16) float result[2 * 32];
  for (size_t n0 = n_begin; n0 < n_end; n0 += 32) {  // N is a multiple of 32
    for (size_t i0 = 0; i0 < m; i0 += 2) {
      const bool pair = m - i0 >= 2;
      if (pair) {
        gemv_kn_strip<Bits, 2>(x + i0 * k_dim, k_dim, w, packed, unpack, n0, result);
      } else {
        gemv_kn_strip<Bits, 1>(x + i0 * k_dim, k_dim, w, packed, unpack, n0, result);
      }
      for (size_t r = 0; r < (pair ? 2u : 1u); ++r) {
        store_row(result + r * 32, 32, out_dtype, out, (i0 + r) * n_dim + n0);
      }
    }
  }
}

// ---- GEMM ------------------------------------------------------------------------------------
constexpr size_t kNR = 32;   // output columns per panel (two 16-column microkernel halves)
constexpr size_t kKB = 256;  // K per panel: 256 x 32 f32 = 32 KB
constexpr int kMR = 4;       // rows of x per microkernel call: 16 accumulators
static_assert(kGemmBlock % kNR == 0, "column splits must fall on panel boundaries");

inline void transpose4(float32x4_t& a, float32x4_t& b, float32x4_t& c, float32x4_t& d) {
  const float32x4_t t0 = vtrn1q_f32(a, b), t1 = vtrn2q_f32(a, b);
  const float32x4_t t2 = vtrn1q_f32(c, d), t3 = vtrn2q_f32(c, d);
  a = vreinterpretq_f32_f64(vzip1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  b = vreinterpretq_f32_f64(vzip1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
  c = vreinterpretq_f32_f64(vzip2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  d = vreinterpretq_f32_f64(vzip2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

// panel[k][0..32) = W[k0 + k][n0 .. n0 + 32) (W logical [K, N]) as f32 scale * q + bias.
// transpose = true: W is stored [N, K]; columns past N are zero. k0 and kb are multiples of 32.
template <int Bits>
void dequantize_panel_nk(const QuantizedMatrix& w, const Packed& packed,
                         const Unpack32<Bits>& unpack, size_t n0, size_t k0, size_t kb,
                         float* panel) {
  constexpr size_t kBlockBytes = Unpack32<Bits>::kBlockBytes;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  alignas(16) uint8_t tmp[kTmpBytes] = {};
  for (size_t quad = 0; quad < kNR / 4; ++quad) {
    for (size_t kc = 0; kc < kb; kc += 32) {
      const size_t k = k0 + kc;
      float32x4_t v[4][8];
      for (size_t j = 0; j < 4; ++j) {
        const size_t col = n0 + quad * 4 + j;
        if (col >= w.rows) {
          for (int l = 0; l < 8; ++l) v[j][l] = vdupq_n_f32(0.0f);
          continue;
        }
        const uint8_t* p = packed.bytes + col * packed.row_bytes + (k / 32) * kBlockBytes;
        p = guarded<Bits>(p, kBlockBytes, packed.bytes, packed.total, tmp);
        block_as_f32(unpack, p, v[j]);
        const float32x4_t scale =
            vdupq_n_f32(load_as_f32(w.scales.data, w.dtype, col * groups + k / gs));
        const float32x4_t bias =
            vdupq_n_f32(load_as_f32(w.biases.data, w.dtype, col * groups + k / gs));
        for (int l = 0; l < 8; ++l) v[j][l] = vfmaq_f32(bias, v[j][l], scale);
      }
      for (int l = 0; l < 8; ++l) {
        transpose4(v[0][l], v[1][l], v[2][l], v[3][l]);
        for (int t = 0; t < 4; ++t) vst1q_f32(panel + (kc + 4 * l + t) * kNR + quad * 4, v[t][l]);
      }
    }
  }
}

// transpose = false: W is stored [K, N] packed along N; n0 is a multiple of 32 and N of the
// group size, so a panel's 32 columns are present and inside one group.
template <int Bits>
void dequantize_panel_kn(const QuantizedMatrix& w, const Packed& packed,
                         const Unpack32<Bits>& unpack, size_t n0, size_t k0, size_t kb,
                         float* panel) {
  constexpr size_t kBlockBytes = Unpack32<Bits>::kBlockBytes;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  alignas(16) uint8_t tmp[kTmpBytes] = {};
  for (size_t k = 0; k < kb; ++k) {
    const size_t p = (k0 + k) * groups + n0 / gs;
    const float32x4_t scale = vdupq_n_f32(load_as_f32(w.scales.data, w.dtype, p));
    const float32x4_t bias = vdupq_n_f32(load_as_f32(w.biases.data, w.dtype, p));
    const uint8_t* row = packed.bytes + (k0 + k) * packed.row_bytes + (n0 / 32) * kBlockBytes;
    row = guarded<Bits>(row, kBlockBytes, packed.bytes, packed.total, tmp);
    float32x4_t q[8];
    block_as_f32(unpack, row, q);
    for (int l = 0; l < 8; ++l) vst1q_f32(panel + k * kNR + 4 * l, vfmaq_f32(bias, q[l], scale));
  }
}

// c[r][0..16) += sum_k x[r][k] * panel[k][0..16) for r < MR, k < kb (k in order, kb a multiple
// of 4); panel and c have row stride kNR.
template <int MR>
void microkernel(const float* x, size_t ldx, const float* panel, size_t kb, float* c) {
  float32x4_t acc[MR][4];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int j = 0; j < 4; ++j) acc[r][j] = vld1q_f32(c + r * kNR + 4 * j);
  }
  for (size_t k = 0; k < kb; k += 4) {
    float32x4_t xv[MR];
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) xv[r] = vld1q_f32(x + r * ldx + k);
    NXQ_UNROLL
    for (int lane = 0; lane < 4; ++lane) {
      float32x4_t b[4];
      NXQ_UNROLL
      for (int j = 0; j < 4; ++j) b[j] = vld1q_f32(panel + (k + lane) * kNR + 4 * j);
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        NXQ_UNROLL
        for (int j = 0; j < 4; ++j) {
          switch (lane) {  // the lane index must be a constant
            case 0:
              acc[r][j] = vfmaq_laneq_f32(acc[r][j], b[j], xv[r], 0);
              break;
            case 1:
              acc[r][j] = vfmaq_laneq_f32(acc[r][j], b[j], xv[r], 1);
              break;
            case 2:
              acc[r][j] = vfmaq_laneq_f32(acc[r][j], b[j], xv[r], 2);
              break;
            default:
              acc[r][j] = vfmaq_laneq_f32(acc[r][j], b[j], xv[r], 3);
              break;
          }
        }
      }
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int j = 0; j < 4; ++j) vst1q_f32(c + r * kNR + 4 * j, acc[r][j]);
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
    default:
      return microkernel<4>(x, ldx, panel, kb, c);
  }
}

template <int Bits>
void gemm_impl(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
               size_t n_begin, size_t n_end, void* out) {
  const Unpack32<Bits> unpack;
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  const Packed packed{static_cast<const uint8_t*>(w.packed.data), w.packed.bytes,
                      w.cols * static_cast<size_t>(Bits) / 8};
  std::vector<float> panel(kKB * kNR);
  std::vector<float> c(m * kNR);
  for (size_t n0 = n_begin; n0 < n_end; n0 += kNR) {
    const size_t nr = std::min(kNR, n_end - n0);
    std::fill(c.begin(), c.end(), 0.0f);
    for (size_t k0 = 0; k0 < k_dim; k0 += kKB) {
      const size_t kb = std::min(kKB, k_dim - k0);
      if (transpose) {
        dequantize_panel_nk<Bits>(w, packed, unpack, n0, k0, kb, panel.data());
      } else {
        dequantize_panel_kn<Bits>(w, packed, unpack, n0, k0, kb, panel.data());
      }
      for (size_t i0 = 0; i0 < m; i0 += kMR) {
        const int rows = static_cast<int>(std::min<size_t>(kMR, m - i0));
        for (size_t half = 0; half < 2; ++half) {
          microkernel_tail(rows, x + i0 * k_dim + k0, k_dim, panel.data() + half * 16, kb,
                           c.data() + i0 * kNR + half * 16);
        }
      }
    }
    for (size_t i = 0; i < m; ++i)
      store_row(c.data() + i * kNR, nr, out_dtype, out, i * n_dim + n0);
  }
}

}  // namespace

void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  if (m == 0 || n_begin >= n_end) return;
  detail::with_bits(w.spec.bits, [&](auto bits) {
    gemv_nk_impl<decltype(bits)::value>(x, m, w, out_dtype, n_begin, n_end, out);
  });
}

void gemv_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  if (m == 0 || n_begin >= n_end) return;
  detail::with_bits(w.spec.bits, [&](auto bits) {
    gemv_kn_impl<decltype(bits)::value>(x, m, w, out_dtype, n_begin, n_end, out);
  });
}

void gemm(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
          size_t n_begin, size_t n_end, void* out) {
  if (m == 0 || n_begin >= n_end) return;
  detail::with_bits(w.spec.bits, [&](auto bits) {
    gemm_impl<decltype(bits)::value>(x, m, w, transpose, out_dtype, n_begin, n_end, out);
  });
}

}  // namespace nx_quant::neon
