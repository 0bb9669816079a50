#include "portable.h"

#include <cstring>
#include <vector>

#include "nx_quant/reference.h"
#include "unpack.h"

namespace nx_quant::portable {

void quantize(const void* dense, DType dtype, size_t cols, const QuantSpec& spec, size_t row_begin,
              size_t row_end, uint32_t* packed, void* scales, void* biases) {
  // Same per-group helpers as the reference, so the output is bit-identical by construction;
  // only the packing is done word by word instead of value by value.
  const size_t gs = static_cast<size_t>(spec.group_size);
  const size_t words_per_row = cols * static_cast<size_t>(spec.bits) / 32;
  const size_t groups_per_row = cols / gs;
  const size_t words_per_group = gs * static_cast<size_t>(spec.bits) / 32;
  std::vector<float> group(gs);
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups_per_row; ++g) {
      const size_t base = r * cols + g * gs;
      for (size_t j = 0; j < gs; ++j) group[j] = load_as_f32(dense, dtype, base + j);
      const auto params = reference::group_params(group.data(), spec.group_size, spec.bits);
      uint32_t* words = packed + r * words_per_row + g * words_per_group;
      uint64_t buffer = 0;
      int buffered = 0;
      for (size_t j = 0; j < gs; ++j) {
        buffer |= static_cast<uint64_t>(reference::quantize_value(group[j], params, spec.bits))
                  << buffered;
        buffered += spec.bits;
        if (buffered >= 32) {
          *words++ = static_cast<uint32_t>(buffer);
          buffer >>= 32;
          buffered -= 32;
        }
      }
      store_from_f32(scales, dtype, r * groups_per_row + g, params.scale);
      store_from_f32(biases, dtype, r * groups_per_row + g, params.bias);
    }
  }
}

namespace {

// w = round(round(q * scale) + bias), MLX's rounding: the product rounded to the dtype, then
// the sum rounded.
inline float dequantized_value(uint32_t q, float scale, float bias, DType dtype) {
  return round_to_dtype(round_to_dtype(static_cast<float>(q) * scale, dtype) + bias, dtype);
}

// fn(r, g, q, scale, bias) for every group g of rows [row_begin, row_end): q its unpacked
// values, scale and bias as f32.
template <typename F>
void for_each_group(const QuantizedMatrix& w, size_t row_begin, size_t row_end, F&& fn) {
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t words_per_row = w.cols * static_cast<size_t>(w.spec.bits) / 32;
  const size_t words_per_group = gs * static_cast<size_t>(w.spec.bits) / 32;
  const size_t groups_per_row = w.cols / gs;
  const auto* packed = static_cast<const uint32_t*>(w.packed.data);
  std::vector<uint8_t> q(gs);
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups_per_row; ++g) {
      detail::unpack_aligned(w.spec.bits, packed + r * words_per_row + g * words_per_group, gs,
                             q.data());
      fn(r, g, q.data(), load_as_f32(w.scales.data, w.dtype, r * groups_per_row + g),
         load_as_f32(w.biases.data, w.dtype, r * groups_per_row + g));
    }
  }
}

// Up to 4 bits a group has at most 16 distinct outputs: each is computed once, stored as the
// dtype's bits, and the group's values are table lookups (the same values, far less work).
template <typename Storage>  // uint32_t for f32, uint16_t for f16/bf16
void dequantize_by_table(const QuantizedMatrix& w, bool transpose_out, size_t row_begin,
                         size_t row_end, void* out) {
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  auto* out_bits = static_cast<Storage*>(out);
  alignas(4) unsigned char raw_table[16 * sizeof(Storage)];  // store_from_f32 writes dtype bits
  Storage table[16];
  for_each_group(
      w, row_begin, row_end, [&](size_t r, size_t g, const uint8_t* q, float scale, float bias) {
        for (uint32_t v = 0; v < (1u << w.spec.bits); ++v) {
          store_from_f32(raw_table, w.dtype, v, dequantized_value(v, scale, bias, w.dtype));
        }
        std::memcpy(table, raw_table, sizeof table);
        const size_t c0 = g * gs;
        if (transpose_out) {
          for (size_t j = 0; j < gs; ++j) out_bits[(c0 + j) * w.rows + r] = table[q[j]];
        } else {
          Storage* dst = out_bits + r * w.cols + c0;
          for (size_t j = 0; j < gs; ++j) dst[j] = table[q[j]];
        }
      });
}

}  // namespace

void dequantize(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                void* out) {
  if (w.spec.bits <= 4) {
    if (w.dtype == DType::F32)
      return dequantize_by_table<uint32_t>(w, transpose_out, row_begin, row_end, out);
    return dequantize_by_table<uint16_t>(w, transpose_out, row_begin, row_end, out);
  }
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  for_each_group(w, row_begin, row_end,
                 [&](size_t r, size_t g, const uint8_t* q, float scale, float bias) {
                   for (size_t j = 0; j < gs; ++j) {
                     const size_t c = g * gs + j;
                     store_from_f32(out, w.dtype, transpose_out ? c * w.rows + r : r * w.cols + c,
                                    dequantized_value(q[j], scale, bias, w.dtype));
                   }
                 });
}

namespace {

// transpose=true: W is stored [N, K]. Per output element, per group g:
//   acc += scale_g * sum_j(x_j * q_j) + bias_g * sum_j(x_j)
// (scale * dot first, then bias * xsum, then both added to acc), groups in order.
void matmul_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out) {
  const size_t k_dim = w.cols, n_dim = w.rows;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = k_dim / gs;
  const size_t words_per_row = k_dim * static_cast<size_t>(w.spec.bits) / 32;
  const size_t words_per_group = gs * static_cast<size_t>(w.spec.bits) / 32;
  const auto* packed = static_cast<const uint32_t*>(w.packed.data);

  std::vector<float> xsum(m * groups);
  for (size_t i = 0; i < m; ++i) {
    for (size_t g = 0; g < groups; ++g) {
      float s = 0.0f;
      for (size_t j = 0; j < gs; ++j) s += x[i * k_dim + g * gs + j];
      xsum[i * groups + g] = s;
    }
  }
  std::vector<uint8_t> q(gs);
  std::vector<float> acc(m);
  for (size_t n = n_begin; n < n_end; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (size_t g = 0; g < groups; ++g) {
      detail::unpack_aligned(w.spec.bits, packed + n * words_per_row + g * words_per_group, gs,
                             q.data());
      const float scale = load_as_f32(w.scales.data, w.dtype, n * groups + g);
      const float bias = load_as_f32(w.biases.data, w.dtype, n * groups + g);
      for (size_t i = 0; i < m; ++i) {
        const float* xg = x + i * k_dim + g * gs;
        float dot = 0.0f;
        for (size_t j = 0; j < gs; ++j) dot += xg[j] * static_cast<float>(q[j]);
        acc[i] += scale * dot + bias * xsum[i * groups + g];
      }
    }
    for (size_t i = 0; i < m; ++i) store_from_f32(out, out_dtype, i * n_dim + n, acc[i]);
  }
}

// transpose=false: W is stored [K, N], packed along N. Streams over k in order:
//   acc[n] += (x_k * scale_kg) * q_kn + x_k * bias_kg
void matmul_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out) {
  const size_t k_dim = w.rows, n_dim = w.cols;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = n_dim / gs;
  const size_t words_per_row = n_dim * static_cast<size_t>(w.spec.bits) / 32;
  const size_t words_per_group = gs * static_cast<size_t>(w.spec.bits) / 32;
  const auto* packed = static_cast<const uint32_t*>(w.packed.data);
  const size_t width = n_end - n_begin;
  const size_t g_begin = n_begin / gs, g_end = (n_end + gs - 1) / gs;

  std::vector<float> acc(m * width, 0.0f);
  std::vector<uint8_t> q(width);
  for (size_t k = 0; k < k_dim; ++k) {
    detail::unpack_aligned(w.spec.bits, packed + k * words_per_row + g_begin * words_per_group,
                           width, q.data());
    for (size_t g = g_begin; g < g_end; ++g) {
      const float scale = load_as_f32(w.scales.data, w.dtype, k * groups + g);
      const float bias = load_as_f32(w.biases.data, w.dtype, k * groups + g);
      const size_t j0 = g * gs - n_begin;
      for (size_t i = 0; i < m; ++i) {
        const float xk = x[i * k_dim + k];
        const float a = xk * scale, c = xk * bias;
        float* row = acc.data() + i * width + j0;
        for (size_t j = 0; j < gs; ++j) row[j] += a * static_cast<float>(q[j0 + j]) + c;
      }
    }
  }
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < width; ++j) {
      store_from_f32(out, out_dtype, i * n_dim + n_begin + j, acc[i * width + j]);
    }
  }
}

}  // namespace

void matmul_nk_int8(const detail::Int8Activations& xa, const QuantizedMatrix& w, DType out_dtype,
                    size_t n_begin, size_t n_end, void* out) {
  const size_t k_dim = w.cols, n_dim = w.rows;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = k_dim / gs;
  const size_t words_per_row = k_dim * static_cast<size_t>(w.spec.bits) / 32;
  const size_t words_per_group = gs * static_cast<size_t>(w.spec.bits) / 32;
  const size_t blocks_per_row = xa.k_padded / detail::kInt8Block;
  const auto* packed = static_cast<const uint32_t*>(w.packed.data);
  std::vector<uint8_t> q(gs);
  for (size_t n = n_begin; n < n_end; ++n) {
    for (size_t i = 0; i < xa.m; ++i) {
      const int8_t* xq = xa.q.data() + i * xa.k_padded;
      const float* d = xa.d.data() + i * blocks_per_row;
      const float* xsum = xa.group_sum.data() + i * groups;
      float acc = 0.0f, bias_acc = 0.0f;
      for (size_t g = 0; g < groups; ++g) {
        detail::unpack_aligned(w.spec.bits, packed + n * words_per_row + g * words_per_group, gs,
                               q.data());
        float blocks = 0.0f;
        for (size_t b = 0; b < gs / detail::kInt8Block; ++b) {
          const size_t k0 = g * gs + b * detail::kInt8Block;
          int32_t dot = 0;
          for (size_t j = 0; j < detail::kInt8Block; ++j) {
            dot += static_cast<int32_t>(q[b * detail::kInt8Block + j]) * xq[k0 + j];
          }
          blocks += d[k0 / detail::kInt8Block] * static_cast<float>(dot);
        }
        acc += load_as_f32(w.scales.data, w.dtype, n * groups + g) * blocks;
        bias_acc += load_as_f32(w.biases.data, w.dtype, n * groups + g) * xsum[g];
      }
      store_from_f32(out, out_dtype, i * n_dim + n, acc + bias_acc);
    }
  }
}

void matmul(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
            size_t n_begin, size_t n_end, void* out) {
  if (n_begin >= n_end || m == 0) return;
  if (transpose) {
    matmul_nk(x, m, w, out_dtype, n_begin, n_end, out);
  } else {
    matmul_kn(x, m, w, out_dtype, n_begin, n_end, out);
  }
}

}  // namespace nx_quant::portable
