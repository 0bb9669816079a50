// The int8 mode of the E2M1 modes: x's layout for the SIMD kernels and the portable loop (see
// int8.h).
#include "microscaled/int8/int8.h"

#include "microscaled/tables.h"

namespace nx_quant::microscaled::int8 {

bool has_int8_path(QuantMode mode) {
  return mode == QuantMode::Mxfp4 || mode == QuantMode::Nvfp4;
}

int group_of_lane(bool nvfp4, int p) {
  return source_value(nvfp4, 0, 0, p, 0) / (nvfp4 ? 16 : 32);
}

namespace {

float global_factor(const QuantizedMatrix& w) {
  return w.spec.mode == QuantMode::Nvfp4 && w.spec.global_scale != 0.0f
             ? w.spec.global_scale / 2688.0f  // 448 * 6, as dequantize multiplies back
             : 1.0f;
}

}  // namespace

void row_scales(const QuantizedMatrix& w, size_t n, float* out) {
  const size_t groups = w.cols / static_cast<size_t>(w.spec.group_size);
  const auto* s = static_cast<const uint8_t*>(w.scales.data) + n * groups;
  const float* table = w.spec.mode == QuantMode::Nvfp4 ? tables().e4m3 : tables().e8m0;
  const float factor = 0.5f * global_factor(w);
  for (size_t g = 0; g < groups; ++g) out[g] = table[s[g]] * factor;
  for (size_t g = groups; g < groups + kLanes; ++g) out[g] = 0.0f;
}

Int8Operand prepare(const detail::Int8Activations& xa, QuantMode mode) {
  Int8Operand x;
  x.m = xa.m;
  x.nvfp4 = mode == QuantMode::Nvfp4;
  x.pairs = (xa.k + kPairValues - 1) / kPairValues;  // xa.k_padded holds whole pairs
  x.q.assign(x.m * x.pairs * kPairValues, 0);
  x.d.assign(x.m * x.pairs * kLanes, 0.0f);
  x.bias.assign(x.m * x.pairs * kLanes, 0);
  const size_t blocks = xa.k_padded / detail::kInt8Block;
  for (size_t r = 0; r < x.m; ++r) {
    const int8_t* src = xa.q.data() + r * xa.k_padded;
    for (size_t c = 0; c < x.pairs; ++c) {
      const size_t slot = r * x.pairs + c, base = c * kPairValues;
      int8_t* dst = x.q.data() + slot * kPairValues;
      for (int t = 0; t < 2; ++t) {
        for (int j = 0; j < 2; ++j) {
          for (int p = 0; p < kLanes; ++p) {
            for (int i = 0; i < 4; ++i) {
              const int8_t v = src[base + source_value(x.nvfp4, t, j, p, i)];
              dst[32 * (2 * t + j) + 4 * p + i] = v;
              x.bias[slot * kLanes + p] += kCodeOffset * v;
            }
          }
        }
      }
      for (int p = 0; p < kLanes; ++p) {
        const size_t value = base + static_cast<size_t>(source_value(x.nvfp4, 0, 0, p, 0));
        x.d[slot * kLanes + p] = xa.d[r * blocks + value / detail::kInt8Block];
      }
    }
  }
  return x;
}

void gemv_portable(const detail::Int8Activations& xa, const QuantizedMatrix& w, DType out_dtype,
                   size_t n_begin, size_t n_end, void* out) {
  const size_t k = w.cols, gs = static_cast<size_t>(w.spec.group_size), groups = k / gs;
  const size_t blocks = xa.k_padded / detail::kInt8Block;
  const auto* words = static_cast<const uint32_t*>(w.packed.data);
  std::vector<float> scales(groups + kLanes);
  for (size_t n = n_begin; n < n_end; ++n) {
    row_scales(w, n, scales.data());
    const uint32_t* row = words + n * (k / 8);
    for (size_t i = 0; i < xa.m; ++i) {
      const int8_t* q = xa.q.data() + i * xa.k_padded;
      float acc = 0.0f;
      for (size_t g = 0; g < groups; ++g) {
        int32_t dot = 0;
        for (size_t col = g * gs; col < (g + 1) * gs; ++col) {
          const unsigned code = (row[col / 8] >> (4 * (col % 8))) & 0xFu;
          dot += (kOffsetCodes[code] - kCodeOffset) * q[col];
        }
        acc +=
            static_cast<float>(dot) * (xa.d[i * blocks + g * gs / detail::kInt8Block] * scales[g]);
      }
      store_from_f32(out, out_dtype, i * w.rows + n, acc);
    }
  }
}

}  // namespace nx_quant::microscaled::int8
