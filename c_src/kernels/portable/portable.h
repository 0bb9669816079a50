// Portable (plain C++) kernels: correct on any CPU, one pass over packed words, never a dense
// copy of W. Each works on a sub-range so a thread pool can split the work; the arguments have
// been validated by api.cpp.
#pragma once

#include <cstddef>

#include "int8_activations.h"
#include "nx_quant/kernels.h"

namespace nx_quant::portable {

// Rows [row_begin, row_end) of the dense matrix.
void quantize(const void* dense, DType dtype, size_t cols, const QuantSpec& spec, size_t row_begin,
              size_t row_end, uint32_t* packed, void* scales, void* biases);

// Rows [row_begin, row_end) of the stored matrix.
void dequantize(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                void* out);

// Output columns [n_begin, n_end) of out[m, N]; x already converted to f32 ([m, K], row-major).
// For transpose=false, n_begin and n_end must be multiples of group_size (or N).
// Every output element is accumulated in one fixed order, whatever the range split.
void matmul(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
            size_t n_begin, size_t n_end, void* out);

// Precision::Int8, transpose = true: output columns [n_begin, n_end) from x quantized by
// detail::quantize_activations. Per output, per group in order: the group's blocks' d * dot
// summed in order, times the scale; then sum_g bias_g * sum(x_g) in order, added last.
void matmul_nk_int8(const detail::Int8Activations& xa, const QuantizedMatrix& w, DType out_dtype,
                    size_t n_begin, size_t n_end, void* out);

}  // namespace nx_quant::portable
