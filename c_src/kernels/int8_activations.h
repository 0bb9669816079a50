// Activations quantized to int8 for the opt-in fast mode (Precision::Int8, see kernels.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace nx_quant::detail {

// Values per int8 block of x; every group size (32, 64, 128) is a multiple of it, so a block
// never straddles two weight groups.
constexpr size_t kInt8Block = 32;

struct Int8Activations {
  size_t m = 0;
  size_t k = 0;           // logical K
  size_t k_padded = 0;    // K rounded up to 128 (what one AVX-512 load of 4-bit weights holds)
  std::vector<int8_t> q;  // m x k_padded: round(x / d), in [-127, 127], zero padding
  std::vector<float> d;   // m x k_padded / 32: the block's step, max|x| / 127
  std::vector<float> group_sum;  // m x (k / group_size): exact f32 sum of x over each group
};

// Deterministic: the same x always gives the same bytes, on every CPU. Non-finite values make
// their block's d NaN (so the outputs that use them are NaN) and their q zero.
Int8Activations quantize_activations(const float* x, size_t m, size_t k, size_t group_size);

}  // namespace nx_quant::detail
