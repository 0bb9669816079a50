// NEON quantize and dequantize, bit-identical to the reference (MLX's rules), as the x86
// kernels are:
//   * dequantize: w = round(round(q * scale) + bias), each rounding to the scales' dtype: bf16
//     in integer arithmetic (unpack_neon.h), f16 through FCVTN/FCVTL (round to nearest even);
//     never a fused multiply-add. 4 lanes at a time from each unpacked block of 32 q values.
//     The transposed output is dequantized row by row into a buffer, then scattered.
//   * quantize: per group, min and max 4 lanes at a time with compare-and-select (std::max(acc,
//     v) lane by lane: a NaN v leaves acc as it is), the scalar group_params_from_range, then
//     q = clamp(rint((w - bias) / scale)) with FRINTN (a NaN or negative t becomes 0 through
//     FMAXNM(t, 0)), narrowed to bytes and packed 32 values at a time.
#include <arm_neon.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "arm/neon/neon_kernels.h"
#include "arm/neon/unpack_neon.h"
#include "gemv_loops.h"
#include "nx_quant/reference.h"

namespace nx_quant::neon {

namespace {

constexpr size_t kMaxGroupBytes = 128;  // 128 values of 8 bits

// Stores the 4 dequantized values of q (f32 lanes) at dst (dtype D's storage).
template <DType D>
inline void store_dequantized(float32x4_t q, float32x4_t scale, float32x4_t bias, void* dst,
                              size_t index) {
  if constexpr (D == DType::F32) {
    vst1q_f32(static_cast<float*>(dst) + index, vaddq_f32(vmulq_f32(q, scale), bias));
  } else if constexpr (D == DType::F16) {
    const float32x4_t product = round_f16(vmulq_f32(q, scale));
    vst1_u16(static_cast<uint16_t*>(dst) + index, f16_bits(vaddq_f32(product, bias)));
  } else {
    const float32x4_t product = round_bf16(vmulq_f32(q, scale));
    vst1_u16(static_cast<uint16_t*>(dst) + index, bf16_bits(vaddq_f32(product, bias)));
  }
}

template <int Bits, DType D>
void dequantize_rows_of(const QuantizedMatrix& w, bool transpose_out, size_t row_begin,
                        size_t row_end, void* out) {
  using Storage = std::conditional_t<D == DType::F32, uint32_t, uint16_t>;
  const Unpack32<Bits> unpack;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * Bits / 8, group_bytes = gs * Bits / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  alignas(16) uint8_t tmp[kMaxGroupBytes + 32] = {};
  std::vector<Storage> row_buffer(transpose_out ? w.cols : 0);
  for (size_t r = row_begin; r < row_end; ++r) {
    void* dst = transpose_out ? static_cast<void*>(row_buffer.data()) : out;
    const size_t dst_base = transpose_out ? 0 : r * w.cols;
    for (size_t g = 0; g < groups; ++g) {
      const float32x4_t scale = vdupq_n_f32(load_as_f32(w.scales.data, w.dtype, r * groups + g));
      const float32x4_t bias = vdupq_n_f32(load_as_f32(w.biases.data, w.dtype, r * groups + g));
      const uint8_t* src = guarded<Bits>(bytes + r * row_bytes + g * group_bytes, group_bytes,
                                         bytes, w.packed.bytes, tmp);
      for (size_t c = 0; c < gs; c += 32) {
        uint8x16_t v[2];
        unpack(src + c * Bits / 8, v[0], v[1]);
        for (int h = 0; h < 2; ++h) {
          float32x4_t q[4];
          widen_to_f32(v[h], q);
          for (int l = 0; l < 4; ++l) {
            store_dequantized<D>(q[l], scale, bias, dst, dst_base + g * gs + c + 16 * h + 4 * l);
          }
        }
      }
    }
    if (transpose_out) {
      Storage* o = static_cast<Storage*>(out);
      for (size_t c = 0; c < w.cols; ++c) o[c * w.rows + r] = row_buffer[c];
    }
  }
}

// Writes 32 q values (bytes v0: values 0..15, v1: 16..31, each < 2^Bits) as their 4 * Bits
// bytes of the little-endian bit stream at out.
template <int Bits>
inline void pack32(uint8x16_t v0, uint8x16_t v1, uint8_t* out) {
  if constexpr (Bits == 8) {
    vst1q_u8(out, v0);
    vst1q_u8(out + 16, v1);
  } else if constexpr (Bits == 4) {  // byte j: value 2j low, 2j + 1 high
    vst1q_u8(out, vsliq_n_u8(vuzp1q_u8(v0, v1), vuzp2q_u8(v0, v1), 4));
  } else if constexpr (Bits == 2) {  // pairs of values into nibbles, then pairs of nibbles
    const uint8x16_t nibbles = vsliq_n_u8(vuzp1q_u8(v0, v1), vuzp2q_u8(v0, v1), 2);
    const uint8x16_t packed =
        vsliq_n_u8(vuzp1q_u8(nibbles, nibbles), vuzp2q_u8(nibbles, nibbles), 4);
    vst1_u8(out, vget_low_u8(packed));
  } else {  // 3, 5, 6 bits straddle bytes: a 64-bit bit buffer
    uint8_t q[32];
    vst1q_u8(q, v0);
    vst1q_u8(q + 16, v1);
    uint64_t buffer = 0;
    int buffered = 0;
    for (int j = 0; j < 32; ++j) {
      buffer |= static_cast<uint64_t>(q[j]) << buffered;
      buffered += Bits;
      while (buffered >= 8) {
        *out++ = static_cast<uint8_t>(buffer);
        buffer >>= 8;
        buffered -= 8;
      }
    }
  }
}

// q of 4 values as u32 lanes: clamp(rint((v - bias) / scale), 0, top).
inline uint32x4_t quantize4(float32x4_t v, float32x4_t bias, float32x4_t scale, float32x4_t top) {
  const float32x4_t t = vrndnq_f32(vdivq_f32(vsubq_f32(v, bias), scale));
  return vcvtq_u32_f32(vminq_f32(vmaxnmq_f32(t, vdupq_n_f32(0.0f)), top));
}

template <int Bits, DType D>
void quantize_rows_of(const void* dense, size_t cols, size_t gs, size_t row_begin, size_t row_end,
                      uint32_t* packed, void* scales, void* biases) {
  const size_t groups = cols / gs;
  const size_t row_bytes = cols * Bits / 8;
  auto* out = reinterpret_cast<uint8_t*>(packed);
  const float32x4_t top = vdupq_n_f32(static_cast<float>((1 << Bits) - 1));
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups; ++g) {
      const size_t base = r * cols + g * gs;
      float32x4_t w_max = vdupq_n_f32(-std::numeric_limits<float>::infinity());
      float32x4_t w_min = vdupq_n_f32(std::numeric_limits<float>::infinity());
      for (size_t j = 0; j < gs; j += 4) {
        const float32x4_t v = load4<D>(dense, base + j);
        w_max = vbslq_f32(vcltq_f32(w_max, v), v, w_max);  // std::max(acc, v)
        w_min = vbslq_f32(vcltq_f32(v, w_min), v, w_min);  // std::min(acc, v)
      }
      // No lane holds a NaN, so the order of the fold cannot change the parameters.
      const auto params =
          reference::group_params_from_range(vminvq_f32(w_min), vmaxvq_f32(w_max), Bits);
      const float32x4_t scale = vdupq_n_f32(params.scale), bias = vdupq_n_f32(params.bias);
      for (size_t c = 0; c < gs; c += 32) {
        uint16x8_t q16[4];
        for (int k = 0; k < 4; ++k) {
          const uint32x4_t a = quantize4(load4<D>(dense, base + c + 8 * k), bias, scale, top);
          const uint32x4_t b = quantize4(load4<D>(dense, base + c + 8 * k + 4), bias, scale, top);
          q16[k] = vcombine_u16(vmovn_u32(a), vmovn_u32(b));
        }
        pack32<Bits>(vcombine_u8(vmovn_u16(q16[0]), vmovn_u16(q16[1])),
                     vcombine_u8(vmovn_u16(q16[2]), vmovn_u16(q16[3])),
                     out + r * row_bytes + (g * gs + c) * Bits / 8);
      }
      store_from_f32(scales, D, r * groups + g, params.scale);
      store_from_f32(biases, D, r * groups + g, params.bias);
    }
  }
}

}  // namespace

void dequantize_rows(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                     void* out) {
  detail::with_bits(w.spec.bits, [&](auto bits) {
    detail::with_dtype(w.dtype, [&](auto d) {
      dequantize_rows_of<decltype(bits)::value, decltype(d)::value>(w, transpose_out, row_begin,
                                                                    row_end, out);
    });
  });
}

void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, void* scales, void* biases) {
  const size_t gs = static_cast<size_t>(spec.group_size);
  detail::with_bits(spec.bits, [&](auto bits) {
    detail::with_dtype(dtype, [&](auto d) {
      quantize_rows_of<decltype(bits)::value, decltype(d)::value>(dense, cols, gs, row_begin,
                                                                  row_end, packed, scales, biases);
    });
  });
}

}  // namespace nx_quant::neon
