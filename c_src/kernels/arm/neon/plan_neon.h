// The NEON module's entry points for api.cpp (aarch64 only): each operation planned whole —
// loop, thresholds, thread split, the int8 mode where the CPU has dotprod or i8mm. Arguments
// have been validated; x is f32, row-major [m, K]; m and N are not zero.
#pragma once

#include <cstddef>
#include <cstdint>

#include "nx_quant/kernels.h"

namespace nx_quant::neon {

void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, void* scales, void* biases, int threads);

void dequantize(const QuantizedMatrix& w, bool transpose_out, void* out, int threads);

void quantized_matmul(const float* x, size_t m, const QuantizedMatrix& w, bool transpose,
                      DType out_dtype, void* out, const ExecOptions& options);

}  // namespace nx_quant::neon
