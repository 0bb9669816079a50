// The scalar oracle. Every line follows MLX's CPU quantizer (mlx/backend/cpu/quantized.cpp,
// `quantize`) and mlx/ops.cpp's affine_dequantize; see reference.h.
#include "nx_quant/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace nx_quant::reference {

uint32_t unpack_value(const uint32_t* row_words, size_t i, int bits) {
  const size_t bit = i * static_cast<size_t>(bits);
  const size_t word = bit / 32;
  const unsigned offset = static_cast<unsigned>(bit % 32);
  uint64_t v = row_words[word] >> offset;
  if (offset + static_cast<unsigned>(bits) > 32) {  // straddles into the next word (3/5/6 bits)
    v |= static_cast<uint64_t>(row_words[word + 1]) << (32 - offset);
  }
  return static_cast<uint32_t>(v & ((1u << bits) - 1u));
}

void pack_value(uint32_t* row_words, size_t i, int bits, uint32_t q) {
  const size_t bit = i * static_cast<size_t>(bits);
  const size_t word = bit / 32;
  const unsigned offset = static_cast<unsigned>(bit % 32);
  const uint64_t shifted = static_cast<uint64_t>(q) << offset;
  row_words[word] |= static_cast<uint32_t>(shifted);
  if (offset + static_cast<unsigned>(bits) > 32) {
    row_words[word + 1] |= static_cast<uint32_t>(shifted >> 32);
  }
}

GroupParams group_params(const float* values, int group_size, int bits) {
  // Fold from -inf/+inf with std::max(acc, v) / std::min(acc, v): a NaN v compares false and
  // leaves acc unchanged, so NaN values are skipped exactly as in MLX.
  float w_max = -std::numeric_limits<float>::infinity();
  float w_min = std::numeric_limits<float>::infinity();
  for (int j = 0; j < group_size; ++j) {
    w_max = std::max(w_max, values[j]);
    w_min = std::min(w_min, values[j]);
  }
  return group_params_from_range(w_min, w_max, bits);
}

GroupParams group_params_from_range(float w_min, float w_max, int bits) {
  const float n_bins = static_cast<float>((1 << bits) - 1);
  const float eps = 1e-7f;
  // The edge of larger magnitude becomes exactly representable: scale is chosen so that
  // edge / scale is an integer q0 and bias = edge. The scale's sign makes q0 land in [0, n_bins].
  const bool mask = std::abs(w_min) > std::abs(w_max);
  float scale = std::max((w_max - w_min) / n_bins, eps);
  scale = mask ? scale : -scale;
  const float edge = mask ? w_min : w_max;
  const float q0 = std::rint(edge / scale);
  float bias = 0.0f;
  if (q0 != 0.0f) {  // true for NaN q0 too, as in MLX
    scale = edge / q0;
    bias = edge;
  }
  return {scale, bias};
}

uint32_t quantize_value(float w, GroupParams params, int bits) {
  const float n_bins = static_cast<float>((1 << bits) - 1);
  const float q = std::rint((w - params.bias) / params.scale);
  // MLX clamps with std::max/std::min and casts; a NaN there reaches an out-of-range cast that
  // yields 0 on x86. `!(q >= 0)` maps NaN (and negatives) to 0 without undefined behaviour.
  if (!(q >= 0.0f)) return 0;
  if (q >= n_bins) return static_cast<uint32_t>(n_bins);
  return static_cast<uint32_t>(q);
}

void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, void* scales, void* biases) {
  const size_t gs = static_cast<size_t>(spec.group_size);
  const size_t words_per_row = cols * static_cast<size_t>(spec.bits) / 32;
  const size_t groups_per_row = cols / gs;
  std::vector<float> group(gs);
  for (size_t r = 0; r < rows; ++r) {
    uint32_t* row_words = packed + r * words_per_row;
    std::fill(row_words, row_words + words_per_row, 0u);
    for (size_t g = 0; g < groups_per_row; ++g) {
      for (size_t j = 0; j < gs; ++j) group[j] = load_as_f32(dense, dtype, r * cols + g * gs + j);
      const GroupParams params = group_params(group.data(), spec.group_size, spec.bits);
      for (size_t j = 0; j < gs; ++j) {
        pack_value(row_words, g * gs + j, spec.bits, quantize_value(group[j], params, spec.bits));
      }
      store_from_f32(scales, dtype, r * groups_per_row + g, params.scale);
      store_from_f32(biases, dtype, r * groups_per_row + g, params.bias);
    }
  }
}

void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out) {
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t words_per_row = w.cols * static_cast<size_t>(w.spec.bits) / 32;
  const size_t groups_per_row = w.cols / gs;
  const auto* packed = static_cast<const uint32_t*>(w.packed.data);
  for (size_t r = 0; r < w.rows; ++r) {
    for (size_t c = 0; c < w.cols; ++c) {
      const float scale = load_as_f32(w.scales.data, w.dtype, r * groups_per_row + c / gs);
      const float bias = load_as_f32(w.biases.data, w.dtype, r * groups_per_row + c / gs);
      const float q = static_cast<float>(unpack_value(packed + r * words_per_row, c, w.spec.bits));
      // Two operations, each rounded to the scales' dtype (not a fused multiply-add).
      const float value = round_to_dtype(round_to_dtype(q * scale, w.dtype) + bias, w.dtype);
      store_from_f32(out, w.dtype, transpose_out ? c * w.rows + r : r * w.cols + c, value);
    }
  }
}

void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out) {
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t words_per_row = w.cols * static_cast<size_t>(w.spec.bits) / 32;
  const size_t groups_per_row = w.cols / gs;
  const auto* packed = static_cast<const uint32_t*>(w.packed.data);
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  // W's values taken exactly (double) from the stored f32-converted scale and bias: the oracle
  // carries no rounding of its own beyond the final store.
  auto weight = [&](size_t r, size_t c) {
    const double scale = load_as_f32(w.scales.data, w.dtype, r * groups_per_row + c / gs);
    const double bias = load_as_f32(w.biases.data, w.dtype, r * groups_per_row + c / gs);
    return scale * unpack_value(packed + r * words_per_row, c, w.spec.bits) + bias;
  };
  for (size_t i = 0; i < m; ++i) {
    for (size_t n = 0; n < n_dim; ++n) {
      double acc = 0.0;
      for (size_t k = 0; k < k_dim; ++k) {
        const double xv = load_as_f32(x, x_dtype, i * k_dim + k);
        acc += xv * (transpose ? weight(n, k) : weight(k, n));
      }
      store_from_f32(out, out_dtype, i * n_dim + n, static_cast<float>(acc));
    }
  }
}

}  // namespace nx_quant::reference
