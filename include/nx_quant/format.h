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

// MLX's quantization modes. Affine is the scale/bias format above. The microscaled modes (see
// c_src/kernels/microscaled/) have fixed group_size and bits, one uint8 scale per group and no
// biases: Mxfp4 (32, 4: E2M1 codes, E8M0 scales), Mxfp8 (32, 8: E4M3 bytes, E8M0 scales),
// Nvfp4 (16, 4: E2M1 codes, E4M3 scales, optional f32 global scale).
enum class QuantMode : uint8_t { Affine = 0, Mxfp4 = 1, Mxfp8 = 2, Nvfp4 = 3 };

inline constexpr bool is_microscaled(QuantMode mode) {
  return mode != QuantMode::Affine;
}

// MLX's spelling: "affine", "mxfp4", "mxfp8", "nvfp4".
inline constexpr const char* mode_name(QuantMode mode) {
  return mode == QuantMode::Affine  ? "affine"
         : mode == QuantMode::Mxfp4 ? "mxfp4"
         : mode == QuantMode::Mxfp8 ? "mxfp8"
         : mode == QuantMode::Nvfp4 ? "nvfp4"
                                    : "unknown";
}

struct QuantSpec {
  int bits = 4;
  int group_size = 64;
  QuantMode mode = QuantMode::Affine;
  // Nvfp4 only: MLX's optional f32 global scale (scales are encoded times 448 * 6 / global_scale);
  // 0 means none.
  float global_scale = 0.0f;
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
// have dtype `dtype` (microscaled modes: uint8 scales, no biases; dtype is the matrix's).
// Construction validates spec and shape (cols divisible by group_size, cols * bits divisible by 32,
// no size_t overflow) and throws InvalidArgument otherwise.
struct QuantizedLayout {
  size_t rows = 0;
  size_t cols = 0;
  size_t words_per_row = 0;   // cols * bits / 32
  size_t groups_per_row = 0;  // cols / group_size
  size_t packed_bytes = 0;    // rows * words_per_row * 4
  size_t scales_bytes = 0;    // rows * groups_per_row * dtype_size (microscaled: * 1, uint8)
  size_t biases_bytes = 0;    // affine: scales_bytes; microscaled modes have no biases: 0

  QuantizedLayout() = default;
  QuantizedLayout(size_t rows, size_t cols, const QuantSpec& spec, DType dtype);
};

}  // namespace nx_quant
