// Helpers shared by the native tests: deterministic data and typed buffers.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "nx_quant/dtype.h"
#include "nx_quant/kernels.h"

namespace nx_quant::testing {

inline constexpr DType kAllDtypes[] = {DType::F32, DType::F16, DType::BF16};
inline constexpr int kAllBits[] = {2, 3, 4, 5, 6, 8};
inline constexpr int kAllGroupSizes[] = {32, 64, 128};

// A row-major buffer of `count` values of `dtype`, filled from f32 values (rounded RNE).
struct TypedBuffer {
  DType dtype;
  std::vector<uint8_t> bytes;

  TypedBuffer(DType t, size_t count) : dtype(t), bytes(count * dtype_size(t)) {}
  TypedBuffer(DType t, const std::vector<float>& values) : TypedBuffer(t, values.size()) {
    for (size_t i = 0; i < values.size(); ++i) store_from_f32(bytes.data(), t, i, values[i]);
  }
  float at(size_t i) const { return load_as_f32(bytes.data(), dtype, i); }
  size_t count() const { return bytes.size() / dtype_size(dtype); }
  ConstBuffer cbuf() const { return {bytes.data(), bytes.size()}; }
  MutableBuffer mbuf() { return {bytes.data(), bytes.size()}; }
};

// Gaussian values whose scale varies row by row, like real weights.
inline std::vector<float> random_values(size_t count, uint32_t seed, size_t row_len = 0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(count);
  float row_scale = 1.0f;
  for (size_t i = 0; i < count; ++i) {
    if (row_len && i % row_len == 0) row_scale = 0.01f + static_cast<float>(rng() % 100) / 25.0f;
    v[i] = normal(rng) * row_scale;
  }
  return v;
}

// A quantized matrix together with the storage it points into.
struct OwnedQuantized {
  std::vector<uint32_t> packed;
  TypedBuffer scales;
  TypedBuffer biases;
  QuantizedMatrix matrix;

  OwnedQuantized(const TypedBuffer& dense, size_t rows, size_t cols, QuantSpec spec,
                 KernelChoice kernel = KernelChoice::Auto, int threads = 0)
      : packed(rows * cols * spec.bits / 32),
        scales(dense.dtype, rows * cols / spec.group_size),
        biases(dense.dtype, rows * cols / spec.group_size) {
    ExecOptions options;
    options.kernel = kernel;
    options.threads = threads;
    quantize(dense.cbuf(), dense.dtype, rows, cols, spec, {packed.data(), packed.size() * 4},
             scales.mbuf(), biases.mbuf(), options);
    matrix.packed = {packed.data(), packed.size() * 4};
    matrix.scales = scales.cbuf();
    matrix.biases = biases.cbuf();
    matrix.dtype = dense.dtype;
    matrix.rows = rows;
    matrix.cols = cols;
    matrix.spec = spec;
  }
};

}  // namespace nx_quant::testing
