// Portable C++ dequantize and matmul of the microscaled modes (table-driven decoding).
#include <algorithm>
#include <vector>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"

namespace nx_quant::microscaled {

namespace {

size_t words_per_row(const QuantizedMatrix& w) {
  return w.cols * static_cast<size_t>(w.spec.bits) / 32;
}

}  // namespace

void decode_row_f32(const QuantizedMatrix& w, size_t row, size_t col_begin, size_t col_end,
                    float* out) {
  const Tables& t = tables();
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const uint8_t* scale_bytes = static_cast<const uint8_t*>(w.scales.data) + row * groups;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(
      static_cast<const uint32_t*>(w.packed.data) + row * words_per_row(w));
  const float global =
      w.spec.global_scale != 0.0f ? w.spec.global_scale / 2688.0f : 1.0f;  // nvfp4 only
  size_t c = col_begin;
  while (c < col_end) {
    const size_t g = c / gs;
    const size_t stop = std::min(col_end, (g + 1) * gs);
    const uint8_t sb = scale_bytes[g];
    float scale;
    if (w.spec.mode == QuantMode::Nvfp4) {
      scale = t.e4m3[sb];
      if (w.spec.global_scale != 0.0f) scale *= global;
    } else {
      scale = t.e8m0[sb];
    }
    if (w.spec.bits == 4) {
      for (; c < stop; ++c)
        out[c - col_begin] = kE2m1Values[(bytes[c / 2] >> (4 * (c % 2))) & 0xF] * scale;
    } else {
      for (; c < stop; ++c) out[c - col_begin] = t.e4m3[bytes[c]] * scale;
    }
  }
}

namespace portable {

void dequantize_rows(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                     void* out) {
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t c = 0; c < w.cols; ++c) {
      const size_t index = transpose_out ? c * w.rows + r : r * w.cols + c;
      store_from_f32(out, w.dtype, index, reference::dequantize_value(w, r, c));
    }
  }
}

void matmul(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
            size_t n_begin, size_t n_end, void* out) {
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  if (transpose) {
    // One decoded row of W^T per output column, dotted with every row of x.
    std::vector<float> row(k_dim);
    for (size_t n = n_begin; n < n_end; ++n) {
      decode_row_f32(w, n, 0, k_dim, row.data());
      for (size_t i = 0; i < m; ++i) {
        const float* xi = x + i * k_dim;
        float acc[8] = {};
        size_t k = 0;
        for (; k + 8 <= k_dim; k += 8) {
          for (int j = 0; j < 8; ++j) acc[j] += xi[k + j] * row[k + j];
        }
        for (; k < k_dim; ++k) acc[0] += xi[k] * row[k];
        const float sum =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        store_from_f32(out, out_dtype, i * n_dim + n, sum);
      }
    }
    return;
  }
  // W is [K, N]: decode columns [n_begin, n_end) of each row k and accumulate x[:, k] * W[k, :].
  const size_t width = n_end - n_begin;
  std::vector<float> acc(m * width, 0.0f);
  std::vector<float> row(width);
  for (size_t k = 0; k < k_dim; ++k) {
    decode_row_f32(w, k, n_begin, n_end, row.data());
    for (size_t i = 0; i < m; ++i) {
      const float xk = x[i * k_dim + k];
      float* a = acc.data() + i * width;
      for (size_t j = 0; j < width; ++j) a[j] += xk * row[j];
    }
  }
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < width; ++j)
      store_from_f32(out, out_dtype, i * n_dim + n_begin + j, acc[i * width + j]);
  }
}

}  // namespace portable

}  // namespace nx_quant::microscaled
