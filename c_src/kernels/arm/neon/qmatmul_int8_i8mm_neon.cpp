// Precision::Int8 GEMV with the i8mm extension (USMMLA; this file is compiled with +i8mm and
// reached only on CPUs that report HWCAP2_I8MM). The formula is the dotprod kernel's
// (qmatmul_int8_dotprod_neon.cpp): per group, scale * sum_blocks(d * dot) + bias * sum(x).
// One USMMLA multiplies a 2 x 8 block of unsigned bytes (8 q values of two W rows) by a 2 x 8
// block of signed bytes (8 x values of two rows of x) into the 2 x 2 int32 products
// {W0.x0, W0.x1, W1.x0, W1.x1}: four of them give a 32-value block's four integer dots
// exactly, lanes that stay apart until the result is stored (each lane scaled by its own
// row's d, scale and bias). x is interleaved in row pairs once per call; an odd last row of
// x is paired with a zero row, an odd last row of W with itself, and those lanes discarded.
#include <arm_neon.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "arm/neon/neon_kernels.h"
#include "arm/neon/unpack_neon.h"
#include "gemv_loops.h"
#include "unroll.h"

namespace nx_quant::neon {

namespace {

constexpr size_t kTmpBytes = 128 + 32;

inline uint8x16_t low_halves(uint8x16_t a, uint8x16_t b) {
  return vreinterpretq_u8_u64(vzip1q_u64(vreinterpretq_u64_u8(a), vreinterpretq_u64_u8(b)));
}
inline uint8x16_t high_halves(uint8x16_t a, uint8x16_t b) {
  return vreinterpretq_u8_u64(vzip2q_u64(vreinterpretq_u64_u8(a), vreinterpretq_u64_u8(b)));
}

// W rows a and b (b may equal a) against pairs p0 .. p0 + P of x rows; result[p] holds
// {out(2q, a), out(2q + 1, a), out(2q, b), out(2q + 1, b)} for q = p0 + p.
template <int Bits, int P>
void row_pair(const Int8Pairs& x, size_t p0, const QuantizedMatrix& w, size_t a, size_t b,
              const Unpack32<Bits>& unpack, uint8_t (*tmp)[kTmpBytes], float32x4_t* result) {
  constexpr size_t kBlockBytes = Unpack32<Bits>::kBlockBytes;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs, blocks_per_group = gs / 32;
  const size_t row_bytes = w.cols * Bits / 8, group_bytes = gs * Bits / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  float32x4_t acc[P], bias_acc[P];
  NXQ_UNROLL
  for (int p = 0; p < P; ++p) acc[p] = bias_acc[p] = vdupq_n_f32(0.0f);
  for (size_t g = 0; g < groups; ++g) {
    const uint8_t* pa = bytes + a * row_bytes + g * group_bytes;
    const uint8_t* pb = bytes + b * row_bytes + g * group_bytes;
    __builtin_prefetch(pa + 4 * row_bytes, 0, 2);
    __builtin_prefetch(pb + 4 * row_bytes, 0, 2);
    const uint8_t* sa = guarded<Bits>(pa, group_bytes, bytes, w.packed.bytes, tmp[0]);
    const uint8_t* sb = guarded<Bits>(pb, group_bytes, bytes, w.packed.bytes, tmp[1]);
    float32x4_t gacc[P];
    NXQ_UNROLL
    for (int p = 0; p < P; ++p) gacc[p] = vdupq_n_f32(0.0f);
    for (size_t blk = 0; blk < blocks_per_group; ++blk) {
      uint8x16_t a0, a1, b0, b1;
      unpack(sa + blk * kBlockBytes, a0, a1);
      unpack(sb + blk * kBlockBytes, b0, b1);
      const uint8x16_t m0 = low_halves(a0, b0), m1 = high_halves(a0, b0);
      const uint8x16_t m2 = low_halves(a1, b1), m3 = high_halves(a1, b1);
      const size_t k0 = g * gs + blk * 32;
      NXQ_UNROLL
      for (int p = 0; p < P; ++p) {
        const int8_t* xq = x.q.data() + (p0 + p) * 2 * x.k_padded + 2 * k0;
        int32x4_t dot = vusmmlaq_s32(vdupq_n_s32(0), m0, vld1q_s8(xq));
        dot = vusmmlaq_s32(dot, m1, vld1q_s8(xq + 16));
        dot = vusmmlaq_s32(dot, m2, vld1q_s8(xq + 32));
        dot = vusmmlaq_s32(dot, m3, vld1q_s8(xq + 48));
        const float32x4_t d = vld1q_f32(x.d.data() + ((p0 + p) * x.blocks + k0 / 32) * 4);
        gacc[p] = vfmaq_f32(gacc[p], vcvtq_f32_s32(dot), d);
      }
    }
    const float sa_ = load_as_f32(w.scales.data, w.dtype, a * groups + g);
    const float sb_ = load_as_f32(w.scales.data, w.dtype, b * groups + g);
    const float ba = load_as_f32(w.biases.data, w.dtype, a * groups + g);
    const float bb = load_as_f32(w.biases.data, w.dtype, b * groups + g);
    const float32x4_t scale = vcombine_f32(vdup_n_f32(sa_), vdup_n_f32(sb_));
    const float32x4_t bias = vcombine_f32(vdup_n_f32(ba), vdup_n_f32(bb));
    NXQ_UNROLL
    for (int p = 0; p < P; ++p) {
      acc[p] = vfmaq_f32(acc[p], gacc[p], scale);
      bias_acc[p] =
          vfmaq_f32(bias_acc[p], bias, vld1q_f32(x.gsum.data() + ((p0 + p) * x.groups + g) * 4));
    }
  }
  NXQ_UNROLL
  for (int p = 0; p < P; ++p) result[p] = vaddq_f32(acc[p], bias_acc[p]);
}

// Pairs p0 .. p0 + P of x against W rows [n_begin, n_end).
template <int Bits, int P>
void gemv_impl(const Int8Pairs& x, size_t p0, const QuantizedMatrix& w, DType out_dtype,
               size_t n_begin, size_t n_end, void* out) {
  const Unpack32<Bits> unpack;
  const size_t groups = w.cols / static_cast<size_t>(w.spec.group_size);
  alignas(16) uint8_t tmp[2][kTmpBytes] = {};
  for (size_t n = n_begin; n < n_end; n += 2) {
    const bool both = n + 1 < n_end;
    detail::prefetch_row_params(w, groups, n + 8, 2);
    float32x4_t result[P];
    row_pair<Bits, P>(x, p0, w, n, both ? n + 1 : n, unpack, tmp, result);
    for (int p = 0; p < P; ++p) {
      float lanes[4];
      vst1q_f32(lanes, result[p]);
      const size_t i0 = 2 * (p0 + p);
      for (size_t r = 0; r < 2 && i0 + r < x.m; ++r) {
        store_from_f32(out, out_dtype, (i0 + r) * w.rows + n, lanes[r]);
        if (both) store_from_f32(out, out_dtype, (i0 + r) * w.rows + n + 1, lanes[2 + r]);
      }
    }
  }
}

}  // namespace

Int8Pairs prepare_int8_pairs(const detail::Int8Activations& xa, size_t group_size) {
  Int8Pairs x;
  x.m = xa.m;
  x.pairs = (xa.m + 1) / 2;
  x.k_padded = xa.k_padded;
  x.blocks = xa.k_padded / detail::kInt8Block;
  x.groups = xa.k / group_size;
  x.q.assign(x.pairs * 2 * x.k_padded, 0);
  x.d.assign(x.pairs * x.blocks * 4, 0.0f);
  x.gsum.assign(x.pairs * x.groups * 4, 0.0f);
  for (size_t i = 0; i < xa.m; ++i) {
    const size_t p = i / 2, r = i % 2;
    for (size_t s = 0; s < x.k_padded / 8; ++s) {
      std::memcpy(x.q.data() + p * 2 * x.k_padded + s * 16 + r * 8,
                  xa.q.data() + i * xa.k_padded + s * 8, 8);
    }
    for (size_t b = 0; b < x.blocks; ++b) {
      x.d[(p * x.blocks + b) * 4 + r] = x.d[(p * x.blocks + b) * 4 + 2 + r] =
          xa.d[i * x.blocks + b];
    }
    for (size_t g = 0; g < x.groups; ++g) {
      x.gsum[(p * x.groups + g) * 4 + r] = x.gsum[(p * x.groups + g) * 4 + 2 + r] =
          xa.group_sum[i * x.groups + g];
    }
  }
  return x;
}

void gemv_nk_int8_i8mm(const Int8Pairs& x, const QuantizedMatrix& w, DType out_dtype,
                       size_t n_begin, size_t n_end, void* out) {
  if (x.m == 0 || n_begin >= n_end) return;
  detail::with_bits(w.spec.bits, [&](auto bits) {
    constexpr int Bits = decltype(bits)::value;
    for (size_t p0 = 0; p0 < x.pairs; p0 += 4) {  // up to 4 pairs (8 rows of x) per pass
      switch (std::min<size_t>(x.pairs - p0, 4)) {
        case 1:
          gemv_impl<Bits, 1>(x, p0, w, out_dtype, n_begin, n_end, out);
          break;
        case 2:
          gemv_impl<Bits, 2>(x, p0, w, out_dtype, n_begin, n_end, out);
          break;
        case 3:
          gemv_impl<Bits, 3>(x, p0, w, out_dtype, n_begin, n_end, out);
          break;
        default:
          gemv_impl<Bits, 4>(x, p0, w, out_dtype, n_begin, n_end, out);
          break;
      }
    }
  });
}

}  // namespace nx_quant::neon
