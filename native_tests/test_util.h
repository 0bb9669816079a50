// Helpers shared by the native tests: deterministic data and typed buffers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "nx_quant/dtype.h"
#include "nx_quant/kernels.h"

namespace nx_quant::testing {

// A kernel choice's name, for test messages.
inline const char* kernel_name(KernelChoice k) {
  switch (k) {
    case KernelChoice::Portable:
      return "portable";
    case KernelChoice::Avx2:
      return "avx2";
    case KernelChoice::Avx512:
      return "avx512";
    case KernelChoice::Neon:
      return "neon";
    default:
      return "other";
  }
}

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

// Whether `out` (m x n, rows of x against the rows of w, dequantized as wd) is within the
// documented bound of the exact `expected`: f32 accumulation error <= 1e-5 * sum |x * w|, plus
// the rounding to `out_dtype`. The failure names the first output outside it.
inline ::testing::AssertionResult within_f32_gemv_bound(const std::vector<float>& out,
                                                        const std::vector<float>& expected,
                                                        const std::vector<float>& x,
                                                        const TypedBuffer& wd, size_t m, size_t n,
                                                        size_t k, DType out_dtype) {
  const float out_eps = out_dtype == DType::F32 ? 0.0f : out_dtype == DType::F16 ? 1e-3f : 8e-3f;
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < n; ++j) {
      float sum_abs = 0.0f;
      for (size_t c = 0; c < k; ++c) sum_abs += std::abs(x[i * k + c] * wd.at(j * k + c));
      const float e = expected[i * n + j], got = out[i * n + j];
      const float bound = 1e-5f * sum_abs + out_eps * std::abs(e) + 1e-30f;
      if (!(std::abs(got - e) <= bound)) {
        return ::testing::AssertionFailure()
               << "out " << dtype_name(out_dtype) << " at " << i << ", " << j << ": " << got
               << " vs " << e << " (bound " << bound << ")";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace nx_quant::testing
