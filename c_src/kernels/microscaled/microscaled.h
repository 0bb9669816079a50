// MLX's microscaled modes (mxfp4, mxfp8, nvfp4): the implementations behind kernels.h's entry
// points when spec.mode is not Affine. Arguments are validated by the public API first.
//
// Layout (MLX's): a row of `cols` values is cut into groups of spec.group_size, each with one
// uint8 scale. mxfp4/nvfp4 rows are E2M1 codes, 8 per uint32 word, element i at bits 4*(i%8)
// of word i/8 (so byte j holds elements 2j, low nibble, and 2j+1); mxfp8 rows are E4M3 bytes,
// 4 per word, element i in byte i. The matrix's dtype is the dtype of the dense values (the
// input of quantize, the output of dequantize); no biases.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "nx_quant/kernels.h"

namespace nx_quant::microscaled {

// Entry points (api.cpp routes here after validating; kernel is resolved: never Auto).
void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, uint8_t* scales, int threads);
void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out, KernelChoice kernel,
                int threads);
void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out, KernelChoice kernel, int threads);

// The scalar reference: every MLX operation of fp_quantize / fp_dequantize replayed one value
// at a time, each result rounded to the dtype MLX computes it in.
namespace reference {

// Rows [row_begin, row_end) of a rows x cols matrix; scales: one byte per group.
void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, uint8_t* scales);

// The value MLX's dequantize gives for element `col` of row `row`, as f32 (already rounded to
// w.dtype).
float dequantize_value(const QuantizedMatrix& w, size_t row, size_t col);

void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out);

// Dequantize-then-dot in double (the element times its scale, exact), rounded to out_dtype.
void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out);

}  // namespace reference

// f32 weights of one row (row_values) for the matmul kernels: element times decoded scale, in
// f32 (exact: E2M1/E4M3 values have at most 4 significant bits), columns [col_begin, col_end).
void decode_row_f32(const QuantizedMatrix& w, size_t row, size_t col_begin, size_t col_end,
                    float* out);

namespace portable {

void dequantize_rows(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                     void* out);

// out[:, n_begin:n_end] of x[m, K] . W, x already f32; f32 accumulation.
void matmul(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
            size_t n_begin, size_t n_end, void* out);

}  // namespace portable

// Rows of x for the 4-bit SIMD kernels: each full block of 32 columns reordered to its 16 even
// then 16 odd columns (byte j of a block holds columns 2j and 2j+1); a tail of 16 (nvfp4,
// K % 32 == 16) stays as it is.
std::vector<float> deinterleave_blocks(const float* x, size_t m, size_t k);

#if defined(__x86_64__)
// transpose = true (w is [N, K]), output rows [n_begin, n_end), any m; E2M1 decoded by
// vpermps (AVX-512) / vpshufb (AVX2) table lookups, E4M3 through the f16 converter. For 4-bit
// modes x comes from avx512::prepare_x4 / deinterleave_blocks (AVX2).
namespace avx512 {
// x for the AVX-512 4-bit kernel: each full step of 128 columns as 8 vectors of 16, vector j
// holding columns 8w + j (w = 0..15); columns past the last step stay in place.
std::vector<float> prepare_x4(const float* x, size_t m, size_t k);
void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
}  // namespace avx512
namespace avx2 {
void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
}
#endif

}  // namespace nx_quant::microscaled
