// The fast microscaled quantizer's shared parts (quantize_fast.h) and its portable rows: one
// group at a time, loaded once as f32, the dtype a template parameter.
#include "microscaled/quantize_fast.h"

#include <algorithm>
#include <cmath>

#include "gemv_loops.h"

namespace nx_quant::microscaled::fast {

int e8m0_exponent_reference(float scale, DType dtype) {
  // reference.cpp's quantize_rows, for scale != 0.
  const float log2 = round_to_dtype(std::log2(scale), dtype);
  return x86_f32_to_i32(std::rint(log2));
}

namespace {

struct Thresholds {
  uint32_t by_dtype[3][256];
};

Thresholds build_thresholds() {
  Thresholds t;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    uint32_t* thr = t.by_dtype[static_cast<int>(dtype)];
    thr[0] = thr[255] = 1u << 23;
    for (uint32_t exponent = 1; exponent < 255; ++exponent) {
      const int k = static_cast<int>(exponent) - 127;
      auto above = [&](uint32_t mantissa) {
        return e8m0_exponent_reference(bit_cast<float>((exponent << 23) | mantissa), dtype) > k;
      };
      // The smallest mantissa whose exponent is k + 1 (the step is monotone: log2, the dtype
      // rounding and rint all are).
      uint32_t lo = 0, hi = 1u << 23;  // answer in [lo, hi]
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (above(mid)) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      thr[exponent] = lo;
    }
  }
  return t;
}

template <DType T>
inline float load(const void* data, size_t i) {
  if constexpr (T == DType::F32) {
    return static_cast<const float*>(data)[i];
  } else if constexpr (T == DType::F16) {
    return f16_bits_to_f32(static_cast<const uint16_t*>(data)[i]);
  } else {
    return bf16_bits_to_f32(static_cast<const uint16_t*>(data)[i]);
  }
}

template <DType T>
inline float round_to(float v) {
  if constexpr (T == DType::F32) {
    return v;
  } else if constexpr (T == DType::F16) {
    return f16_bits_to_f32(f32_to_f16_bits(v));
  } else {
    // f32_to_bf16_bits without its NaN case: no NaN reaches the fast path.
    uint32_t u = bit_cast<uint32_t>(v);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return bit_cast<float>(u & 0xFFFF0000u);
  }
}

// e4m3_from_f32 (codec.h) with its three cases computed and selected, as the SIMD kernels do.
inline uint32_t e4m3_branchless(float x) {
  const uint32_t u = bit_cast<uint32_t>(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t bits = u & 0x7FFFFFFFu;
  const uint32_t small = bit_cast<uint32_t>(bit_cast<float>(bits) + 16384.0f) - 0x46800000u;
  const uint32_t normal = (bits - (120u << 23) + 0x7FFFFu + ((bits >> 20) & 1u)) >> 20;
  uint32_t magnitude = bits < 0x3C800000u ? small : normal;
  magnitude = bits >= 0x43E00000u ? 0x7Eu : magnitude;
  return (magnitude & 0xFFu) | sign;
}

template <DType T>
void rows(const void* dense, size_t cols, const QuantSpec& spec, size_t row_begin, size_t row_end,
          uint32_t* packed, uint8_t* scales) {
  const Context c(T, spec);
  const size_t gs = static_cast<size_t>(spec.group_size);
  const size_t groups = cols / gs;
  const size_t words_per_group = gs * static_cast<size_t>(spec.bits) / 32;
  const size_t words_per_row = groups * words_per_group;
  const bool nv = spec.mode == QuantMode::Nvfp4;
  float v[32];
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups; ++g) {
      const size_t base = r * cols + g * gs;
      uint32_t amax_bits = 0;
      for (size_t i = 0; i < gs; ++i) {
        v[i] = load<T>(dense, base + i);
        amax_bits = std::max(amax_bits, bit_cast<uint32_t>(v[i]) & 0x7FFFFFFFu);
      }
      GroupScale s;
      if (!c.fast() || !group_scale<T>(c, amax_bits, &s)) {
        reference_group(dense, T, cols, spec, r, g, packed, scales);
        continue;
      }
      scales[r * groups + g] = s.byte;
      uint32_t* words = packed + r * words_per_row + g * words_per_group;
      if (s.zero_codes) {
        for (size_t w = 0; w < words_per_group; ++w) words[w] = 0;
        continue;
      }
      if (spec.bits == 8) {
        uint32_t code[32];
        for (size_t i = 0; i < gs; ++i) code[i] = e4m3_branchless(round_to<T>(v[i] * s.factor));
        for (size_t w = 0; w < words_per_group; ++w) {
          const uint32_t* k = code + 4 * w;
          words[w] = k[0] | k[1] << 8 | k[2] << 16 | k[3] << 24;
        }
        continue;
      }
      // Straight-line loops over the group (q, then codes, then bytes) that compilers vectorize.
      float q[32];
      if (nv) {
        for (size_t i = 0; i < gs; ++i) q[i] = round_to<T>(v[i] / s.factor) * c.encode;
      } else {
        for (size_t i = 0; i < gs; ++i) q[i] = round_to<T>(v[i] * s.factor);
      }
      uint32_t code[32];
      for (size_t i = 0; i < gs; ++i) code[i] = e2m1_code_by_compares(q[i]);
      for (size_t w = 0; w < words_per_group; ++w) {
        const uint32_t* k = code + 8 * w;
        words[w] = k[0] | k[1] << 4 | k[2] << 8 | k[3] << 12 | k[4] << 16 | k[5] << 20 |
                   k[6] << 24 | k[7] << 28;
      }
    }
  }
}

}  // namespace

const uint32_t* e8m0_thresholds(DType dtype) {
  static const Thresholds t = build_thresholds();
  return t.by_dtype[static_cast<int>(dtype)];
}

Context::Context(DType t, const QuantSpec& spec)
    : dtype(t),
      mode(spec.mode),
      group_size(spec.group_size),
      bits(spec.bits),
      maxval(spec.bits == 4 ? 6.0f : 448.0f),
      encode(spec.global_scale != 0.0f ? 2688.0f / spec.global_scale : 1.0f),
      thresholds(spec.mode == QuantMode::Nvfp4 ? nullptr : e8m0_thresholds(t)),
      e4m3(tables().e4m3),
      e_min(t == DType::F16 ? -24 : -126),
      e_max(t == DType::F16 ? 15 : 126) {}

void reference_group(const void* dense, DType dtype, size_t cols, const QuantSpec& spec, size_t r,
                     size_t g, uint32_t* packed, uint8_t* scales) {
  const size_t gs = static_cast<size_t>(spec.group_size);
  const size_t groups = cols / gs;
  const size_t words_per_group = gs * static_cast<size_t>(spec.bits) / 32;
  const auto* base = static_cast<const uint8_t*>(dense) + (r * cols + g * gs) * dtype_size(dtype);
  // The group as a one-row matrix of gs columns: the reference treats groups independently.
  reference::quantize_rows(base, dtype, gs, spec, 0, 1,
                           packed + r * groups * words_per_group + g * words_per_group,
                           scales + r * groups + g);
}

void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, uint8_t* scales) {
  detail::with_dtype(dtype, [&](auto d) {
    rows<decltype(d)::value>(dense, cols, spec, row_begin, row_end, packed, scales);
  });
}

}  // namespace nx_quant::microscaled::fast
