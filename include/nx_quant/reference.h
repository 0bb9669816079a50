// The scalar reference implementation: the test oracle for every optimised kernel.
//
// Written for obviousness, one value at a time, straight from MLX's rules (see
// ../shared/MLX_FORMAT.md in the project's steering docs and the comments in reference.cpp).
// These functions do NOT validate: call them only with arguments that passed the checks of
// the public API in kernels.h (the public functions route KernelChoice::Reference here).
#pragma once

#include <cstddef>
#include <cstdint>

#include "nx_quant/dtype.h"
#include "nx_quant/format.h"
#include "nx_quant/kernels.h"

namespace nx_quant::reference {

// Value i (0-based) of a row's little-endian bit stream of `bits`-bit values.
uint32_t unpack_value(const uint32_t* row_words, size_t i, int bits);

// Write value i of a row's bit stream (the row's words must start zeroed).
void pack_value(uint32_t* row_words, size_t i, int bits, uint32_t q);

// One group's scale and bias, in f32, before rounding to the storage dtype (MLX's rule).
struct GroupParams {
  float scale;
  float bias;
};
GroupParams group_params(const float* values, int group_size, int bits);

// The same from the group's NaN-skipping min and max (-inf / +inf folds; the sign of a zero
// min or max does not change the result).
GroupParams group_params_from_range(float w_min, float w_max, int bits);

// q for one value given its group's f32 scale and bias: clamp(rint((w - bias) / scale)),
// with NaN mapped to 0.
uint32_t quantize_value(float w, GroupParams params, int bits);

void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, void* scales, void* biases);

void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out = false);

// Dequantize-then-dot in double (W taken exactly from its f32 scale and bias, no dtype
// rounding), result rounded to out_dtype.
void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out);

}  // namespace nx_quant::reference
