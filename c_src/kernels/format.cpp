#include "nx_quant/format.h"

#include <cmath>
#include <limits>
#include <string>

namespace nx_quant {

void validate_spec(const QuantSpec& spec) {
  if (static_cast<unsigned>(spec.mode) > static_cast<unsigned>(QuantMode::Nvfp4)) {
    throw InvalidArgument("mode is not a QuantMode value (got enum value " +
                          std::to_string(static_cast<unsigned>(spec.mode)) + ")");
  }
  if (spec.global_scale != 0.0f) {
    if (spec.mode != QuantMode::Nvfp4) {
      throw InvalidArgument(std::string("a global scale is only supported for mode nvfp4 (got ") +
                            mode_name(spec.mode) + ")");
    }
    if (!std::isfinite(spec.global_scale)) {
      throw InvalidArgument("global_scale must be finite");
    }
  }
  if (is_microscaled(spec.mode)) {
    const int group = spec.mode == QuantMode::Nvfp4 ? 16 : 32;
    const int bits = spec.mode == QuantMode::Mxfp8 ? 8 : 4;
    if (spec.group_size != group || spec.bits != bits) {
      throw InvalidArgument(std::string(mode_name(spec.mode)) + " needs group_size " +
                            std::to_string(group) + " and bits " + std::to_string(bits) +
                            " (got group_size " + std::to_string(spec.group_size) + ", bits " +
                            std::to_string(spec.bits) + ")");
    }
    return;
  }
  if (!is_supported_bits(spec.bits)) {
    throw InvalidArgument("bits must be one of 2, 3, 4, 5, 6, 8 (got " + std::to_string(spec.bits) +
                          ")");
  }
  if (!is_supported_group_size(spec.group_size)) {
    throw InvalidArgument("group_size must be one of 32, 64, 128 (got " +
                          std::to_string(spec.group_size) + ")");
  }
}

size_t checked_mul(size_t a, size_t b, const char* what) {
  if (a != 0 && b > std::numeric_limits<size_t>::max() / a) {
    throw InvalidArgument(std::string(what) + " overflows size_t (" + std::to_string(a) + " * " +
                          std::to_string(b) + ")");
  }
  return a * b;
}

QuantizedLayout::QuantizedLayout(size_t rows_, size_t cols_, const QuantSpec& spec, DType dtype)
    : rows(rows_), cols(cols_) {
  validate_spec(spec);
  if (cols == 0) throw InvalidArgument("cols (the quantized axis) must be positive (got 0)");
  if (cols % static_cast<size_t>(spec.group_size) != 0) {
    throw InvalidArgument("cols (" + std::to_string(cols) + ") must be divisible by group_size (" +
                          std::to_string(spec.group_size) + ")");
  }
  // group_size is a multiple of 32 (nvfp4: 16 at 4 bits), so cols * bits is a multiple of 32.
  const size_t stream_bits = checked_mul(cols, static_cast<size_t>(spec.bits), "cols * bits");
  words_per_row = stream_bits / 32;
  groups_per_row = cols / static_cast<size_t>(spec.group_size);
  const size_t words = checked_mul(rows, words_per_row, "rows * packed words per row");
  packed_bytes = checked_mul(words, 4, "packed byte size");
  const size_t groups = checked_mul(rows, groups_per_row, "rows * groups per row");
  scales_bytes =
      checked_mul(groups, is_microscaled(spec.mode) ? 1 : dtype_size(dtype), "scales byte size");
  biases_bytes = is_microscaled(spec.mode) ? 0 : scales_bytes;
  checked_mul(rows, cols, "rows * cols");
}

}  // namespace nx_quant
