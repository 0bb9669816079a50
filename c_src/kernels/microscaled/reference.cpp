// The scalar reference of the microscaled modes, replaying MLX's fp_quantize / fp_dequantize
// (ops.cpp) operation by operation. MLX computes each array operation in the weight's dtype
// (f16/bf16 operations go through f32 and round back), so every intermediate here is rounded
// with round_to_dtype where MLX would hold it in that dtype; where MLX promotes to f32 (nvfp4's
// scale encoding) we stay in f32.
#include <cmath>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"

namespace nx_quant::microscaled::reference {

namespace {

// MLX's power(2, e) for the integer-valued e it holds in a float: 0 below any float's range.
float pow2(float e) {
  if (!(e > -1000.0f)) return 0.0f;
  if (e > 1000.0f) return INFINITY;
  return std::ldexp(1.0f, static_cast<int>(e));
}

// max(abs(group)) as MLX reduces it: a NaN anywhere makes the result NaN.
float abs_max(const void* dense, DType dtype, size_t base, int n) {
  float best = -INFINITY;
  for (int i = 0; i < n; ++i) {
    const float a = std::fabs(load_as_f32(dense, dtype, base + static_cast<size_t>(i)));
    if (std::isnan(a)) return a;
    if (a > best) best = a;
  }
  return best;
}

// argmin over the 16 table entries of |q - entry|, differences rounded to `dtype`: the first
// smallest wins (ties go to the smaller magnitude, -0 to code 0) and a NaN distance never
// wins, so NaN and +-Inf give code 0.
uint32_t nearest_e2m1(float q, DType dtype) {
  uint32_t best_code = 0;
  float best = std::fabs(round_to_dtype(q - kE2m1Values[0], dtype));
  for (uint32_t c = 1; c < 16; ++c) {
    const float d = std::fabs(round_to_dtype(q - kE2m1Values[c], dtype));
    if (d < best) {
      best = d;
      best_code = c;
    }
  }
  return best_code;
}

void store_code(uint32_t* row_words, size_t i, int bits, uint32_t code) {
  if (bits == 4) {
    row_words[i / 8] |= code << (4 * (i % 8));
  } else {
    row_words[i / 4] |= code << (8 * (i % 4));
  }
}

}  // namespace

void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, uint8_t* scales) {
  const int gs = spec.group_size;
  const size_t groups = cols / static_cast<size_t>(gs);
  const size_t words_per_row = cols * static_cast<size_t>(spec.bits) / 32;
  const float maxval = spec.bits == 4 ? 6.0f : 448.0f;
  const bool nv = spec.mode == QuantMode::Nvfp4;
  // nvfp4's scale encoding factor, an f32 array in MLX (so the products below promote to f32).
  const float encode = spec.global_scale != 0.0f ? 2688.0f / spec.global_scale : 1.0f;
  for (size_t r = row_begin; r < row_end; ++r) {
    uint32_t* row_words = packed + r * words_per_row;
    for (size_t w = 0; w < words_per_row; ++w) row_words[w] = 0;
    for (size_t g = 0; g < groups; ++g) {
      const size_t base = r * cols + g * static_cast<size_t>(gs);
      const float scale = round_to_dtype(abs_max(dense, dtype, base, gs) / maxval, dtype);
      uint8_t scale_byte;
      float divisor;  // the dtype value each element is divided by
      if (nv) {
        scale_byte = e4m3_from_f32(scale * encode);
        divisor = e4m3_to_f32(scale_byte);
      } else {
        // e = rint(log2(scale)) in the dtype, through int32 (NaN / Inf -> INT32_MIN), 0 for a
        // zero scale; stored as uint8(e + 127) with no clamp.
        float e = 0.0f;
        if (scale != 0.0f) {
          const float log2 = round_to_dtype(std::log2(scale), dtype);
          e = round_to_dtype(static_cast<float>(x86_f32_to_i32(std::rint(log2))), dtype);
        }
        divisor = round_to_dtype(pow2(e), dtype);
        scale_byte = x86_f32_to_u8(round_to_dtype(e + 127.0f, dtype));
      }
      scales[r * groups + g] = scale_byte;
      for (int i = 0; i < gs; ++i) {
        float q = round_to_dtype(load_as_f32(dense, dtype, base + static_cast<size_t>(i)) / divisor,
                                 dtype);
        uint32_t code;
        if (nv) {
          q *= encode;  // f32 from here on
          code = nearest_e2m1(q, DType::F32);
        } else if (spec.bits == 4) {
          code = nearest_e2m1(q, dtype);
        } else {
          code = e4m3_from_f32(q);
        }
        store_code(row_words, g * static_cast<size_t>(gs) + static_cast<size_t>(i), spec.bits,
                   code);
      }
    }
  }
}

float dequantize_value(const QuantizedMatrix& w, size_t row, size_t col) {
  const size_t words_per_row = w.cols * static_cast<size_t>(w.spec.bits) / 32;
  const size_t groups = w.cols / static_cast<size_t>(w.spec.group_size);
  const uint32_t* row_words = static_cast<const uint32_t*>(w.packed.data) + row * words_per_row;
  const uint8_t scale_byte =
      static_cast<const uint8_t*>(w.scales.data)[row * groups + col / w.spec.group_size];
  float element;
  if (w.spec.bits == 4) {
    element = kE2m1Values[(row_words[col / 8] >> (4 * (col % 8))) & 0xFu];
  } else {
    element = e4m3_to_f32(static_cast<uint8_t>(row_words[col / 4] >> (8 * (col % 4))));
  }
  if (w.spec.mode != QuantMode::Nvfp4) {
    const float scale = round_to_dtype(e8m0_to_f32(scale_byte), w.dtype);
    return round_to_dtype(element * scale, w.dtype);
  }
  float scale = e4m3_to_f32(scale_byte);
  // With a global scale MLX multiplies by global_scale / 2688 in f32 (its result is then f32;
  // we round it to the matrix dtype).
  if (w.spec.global_scale != 0.0f) scale *= w.spec.global_scale / 2688.0f;
  return round_to_dtype(element * scale, w.dtype);
}

void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out) {
  for (size_t r = 0; r < w.rows; ++r) {
    for (size_t c = 0; c < w.cols; ++c) {
      const size_t index = transpose_out ? c * w.rows + r : r * w.cols + c;
      store_from_f32(out, w.dtype, index, dequantize_value(w, r, c));
    }
  }
}

void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out) {
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  const size_t groups = w.cols / static_cast<size_t>(w.spec.group_size);
  const auto* scale_bytes = static_cast<const uint8_t*>(w.scales.data);
  const size_t words_per_row = w.cols * static_cast<size_t>(w.spec.bits) / 32;
  const auto* words = static_cast<const uint32_t*>(w.packed.data);
  // W[k][n] in double: element times its decoded scale, no dtype rounding.
  auto weight = [&](size_t k, size_t n) {
    const size_t r = transpose ? n : k;
    const size_t c = transpose ? k : n;
    const uint32_t* row_words = words + r * words_per_row;
    const double element =
        w.spec.bits == 4 ? kE2m1Values[(row_words[c / 8] >> (4 * (c % 8))) & 0xFu]
                         : e4m3_to_f32(static_cast<uint8_t>(row_words[c / 4] >> (8 * (c % 4))));
    const uint8_t b = scale_bytes[r * groups + c / w.spec.group_size];
    double scale;
    if (w.spec.mode == QuantMode::Nvfp4) {
      scale = e4m3_to_f32(b);
      if (w.spec.global_scale != 0.0f) scale *= static_cast<double>(w.spec.global_scale) / 2688.0;
    } else {
      scale = std::ldexp(1.0, static_cast<int>(b) - 127);
    }
    return element * scale;
  };
  for (size_t i = 0; i < m; ++i) {
    for (size_t n = 0; n < n_dim; ++n) {
      double acc = 0.0;
      for (size_t k = 0; k < k_dim; ++k) {
        acc += static_cast<double>(load_as_f32(x, x_dtype, i * k_dim + k)) * weight(k, n);
      }
      store_from_f32(out, out_dtype, i * n_dim + n, static_cast<float>(acc));
    }
  }
}

}  // namespace nx_quant::microscaled::reference
