// MLX's affine group-wise quantization format: parameters and buffer layout.
//
// A quantized matrix is stored as `rows` x `cols` logical values, quantized and packed along
// `cols` (the last axis). Each group of `group_size` consecutive values of a row has one scale
// and one bias: w ~= scale * q + bias, q an unsigned `bits`-bit integer. Each row of q values is
// one little-endian bit stream (value i occupies stream bits [i*bits, (i+1)*bits)) cut into
// uint32 words, so 3-, 5- and 6-bit values may straddle two words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "nx_quant/dtype.h"
#include "nx_quant/error.h"

namespace nx_quant {

struct QuantSpec {
  int bits = 4;
  int group_size = 64;
};

inline bool is_supported_bits(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
}

inline bool is_supported_group_size(int group_size) {
  return group_size == 32 || group_size == 64 || group_size == 128;
}

// Throws InvalidArgument unless bits and group_size are ones MLX supports.
void validate_spec(const QuantSpec& spec);

// a * b, throwing InvalidArgument naming `what` if it does not fit in size_t.
size_t checked_mul(size_t a, size_t b, const char* what);

// Sizes of the three buffers of a `rows` x `cols` quantized matrix whose scales and biases
// have dtype `dtype`. Construction validates spec and shape (cols divisible by group_size,
// cols * bits divisible by 32, no size_t overflow) and throws InvalidArgument otherwise.
struct QuantizedLayout {
  size_t rows = 0;
  size_t cols = 0;
  size_t words_per_row = 0;   // cols * bits / 32
  size_t groups_per_row = 0;  // cols / group_size
  size_t packed_bytes = 0;    // rows * words_per_row * 4
  size_t scales_bytes = 0;    // rows * groups_per_row * dtype_size (biases: the same)

  QuantizedLayout() = default;
  QuantizedLayout(size_t rows, size_t cols, const QuantSpec& spec, DType dtype);
};

}  // namespace nx_quant
