// Precision::Int8 GEMV with the dotprod extension (SDOT; this file is compiled with +dotprod and
// reached only on CPUs that report HWCAP_ASIMDDP). The formula is portable::matmul_nk_int8's:
// per output, per group g, acc += scale_g * sum_{blocks b in g} d_b * dot_b, and
// bias_acc += bias_g * sum(x_g); result = acc + bias_acc. dot_b, the block's integer dot
// product of q and x's int8 values, is exact (SDOT lanes of 4 products each); only the f32
// sums differ in order from the portable loop. SDOT multiplies signed bytes: q < 128 for up to
// 6 bits; 8-bit q is offset to q - 128 (q ^ 0x80) and 128 * sum(x_q) (an SDOT with ones) added
// back, still exactly.
#include <arm_neon.h>

#include <cstdint>

#include "arm/neon/neon_kernels.h"
#include "arm/neon/unpack_neon.h"
#include "gemv_loops.h"
#include "unroll.h"

namespace nx_quant::neon {

namespace {

constexpr int kBlockRows = 4;
constexpr size_t kTmpBytes = 128 + 32;

template <int Bits, int MR, int NW>
void int8_block(const detail::Int8Activations& xa, size_t i0, const QuantizedMatrix& w, size_t n,
                const Unpack32<Bits>& unpack, uint8_t (*tmp)[kTmpBytes],
                float* result /* [MR][NW] */) {
  constexpr size_t kBlockBytes = Unpack32<Bits>::kBlockBytes;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs, blocks_per_group = gs / 32;
  const size_t row_bytes = w.cols * Bits / 8, group_bytes = gs * Bits / 8;
  const size_t blocks_per_row = xa.k_padded / detail::kInt8Block;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  float32x4_t acc[MR][NW];
  float bias_acc[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      acc[r][v] = vdupq_n_f32(0.0f);
      bias_acc[r][v] = 0.0f;
    }
  }
  for (size_t g = 0; g < groups; ++g) {
    float32x4_t gacc[MR][NW];
    const uint8_t* src[NW];
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) gacc[r][v] = vdupq_n_f32(0.0f);
      const uint8_t* p = bytes + (n + v) * row_bytes + g * group_bytes;
      __builtin_prefetch(p + 2 * kBlockRows * row_bytes, 0, 2);
      src[v] = guarded<Bits>(p, group_bytes, bytes, w.packed.bytes, tmp[v]);
    }
    for (size_t b = 0; b < blocks_per_group; ++b) {
      const size_t k0 = g * gs + b * 32;
      int8x16_t x0[MR], x1[MR];
      float d[MR];
      int32x4_t xsum[MR];  // 8 bits: per-lane sums of x_q, for the offset
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        const int8_t* xq = xa.q.data() + (i0 + r) * xa.k_padded + k0;
        x0[r] = vld1q_s8(xq);
        x1[r] = vld1q_s8(xq + 16);
        d[r] = xa.d[(i0 + r) * blocks_per_row + k0 / 32];
        if constexpr (Bits == 8) {
          const int8x16_t ones = vdupq_n_s8(1);
          xsum[r] = vdotq_s32(vdotq_s32(vdupq_n_s32(0), ones, x0[r]), ones, x1[r]);
        }
      }
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        uint8x16_t q0, q1;
        unpack(src[v] + b * kBlockBytes, q0, q1);
        if constexpr (Bits == 8) {
          q0 = veorq_u8(q0, vdupq_n_u8(0x80));
          q1 = veorq_u8(q1, vdupq_n_u8(0x80));
        }
        const int8x16_t w0 = vreinterpretq_s8_u8(q0), w1 = vreinterpretq_s8_u8(q1);
        NXQ_UNROLL
        for (int r = 0; r < MR; ++r) {
          int32x4_t dot = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0[r]), w1, x1[r]);
          if constexpr (Bits == 8) dot = vmlaq_n_s32(dot, xsum[r], 128);
          gacc[r][v] = vfmaq_n_f32(gacc[r][v], vcvtq_f32_s32(dot), d[r]);
        }
      }
    }
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const float scale = load_as_f32(w.scales.data, w.dtype, (n + v) * groups + g);
      const float bias = load_as_f32(w.biases.data, w.dtype, (n + v) * groups + g);
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        acc[r][v] = vfmaq_n_f32(acc[r][v], gacc[r][v], scale);
        bias_acc[r][v] += bias * xa.group_sum[(i0 + r) * groups + g];
      }
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) result[r * NW + v] = vaddvq_f32(acc[r][v]) + bias_acc[r][v];
  }
}

template <int Bits>
void gemv_impl(const detail::Int8Activations& xa, const QuantizedMatrix& w, DType out_dtype,
               size_t n_begin, size_t n_end, void* out) {
  const Unpack32<Bits> unpack;
  const size_t groups = w.cols / static_cast<size_t>(w.spec.group_size);
  alignas(16) uint8_t tmp[kBlockRows][kTmpBytes] = {};
  float result[2 * kBlockRows];
  auto load_rows = [&](auto, size_t n) {
    detail::prefetch_row_params(w, groups, n + 2 * kBlockRows, kBlockRows);
  };
  auto run = [&](auto mr, auto nw, size_t n, size_t i0) {
    constexpr int MR = decltype(mr)::value, NW = decltype(nw)::value;
    int8_block<Bits, MR, NW>(xa, i0, w, n, unpack, tmp, result);
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NW; ++v)
        store_from_f32(out, out_dtype, (i0 + r) * w.rows + n + v, result[r * NW + v]);
  };
  detail::for_gemv_blocks<kBlockRows>(xa.m, n_begin, n_end, load_rows, run);
}

}  // namespace

void gemv_nk_int8_dotprod(const detail::Int8Activations& xa, const QuantizedMatrix& w,
                          DType out_dtype, size_t n_begin, size_t n_end, void* out) {
  if (xa.m == 0 || n_begin >= n_end) return;
  detail::with_bits(w.spec.bits, [&](auto bits) {
    gemv_impl<decltype(bits)::value>(xa, w, out_dtype, n_begin, n_end, out);
  });
}

}  // namespace nx_quant::neon
