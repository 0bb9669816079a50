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
              uint32_t* packed, uint8_t* scales, KernelChoice kernel, int threads);
void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out, KernelChoice kernel,
                int threads);
// precision Int8 takes the int8 path of the E2M1 modes (int8/int8.h) for transpose = true and
// m <= kGemvMaxRows on every kernel but Reference and Neon; otherwise it computes exactly.
void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out, KernelChoice kernel, int threads,
                      Precision precision = Precision::Exact);

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

#if defined(__x86_64__)
// transpose = true (w is [N, K]), output rows [n_begin, n_end), any m (gemv_avx512.cpp,
// gemv_avx2.cpp: E2M1 decoded by vpermw / vpermps (AVX-512) or vpshufb (AVX2) table lookups,
// E4M3 through the f16 converter).
namespace avx512 {
// x rearranged once per call for gemv_nk (w's mode fixes the order); bf16: 4-bit w and every x
// exactly a bf16 on a CPU with AVX512_BF16 (words, for vdpbf16ps), else f32 values.
struct XOperand {
  size_t m = 0, k = 0, row_stride = 0;  // row_stride: k rounded up to the 64/128-column chunk
  bool bf16 = false;
  std::vector<float> values;
  std::vector<uint16_t> words;
};
XOperand prepare_x(const float* x, size_t m, const QuantizedMatrix& w);
void gemv_nk(const XOperand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
// Panels-then-FMA (gemm_avx512.cpp): transpose = false (w is [K, N]), output columns
// [n_begin, n_end) on 32-column boundaries (a last 16 for nvfp4), any m; and transpose = true
// for GEMM-sized m, output columns (w's rows) [n_begin, n_end).
void matmul_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out);
void gemm_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
}  // namespace avx512
namespace avx2 {
// x for the 4-bit gemv_nk: per 64 columns 9 vectors of 8, vector 2p + h holding columns
// 8l + 2p + h times 2^(-8p) / 2 (p < 3; 2^-1 for p = 3), the last -6 * the sum of columns
// 8l .. 8l+7; zero past K.
// mxfp8 takes x as it is.
std::vector<float> prepare_x4(const float* x, size_t m, size_t k);
void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
// As avx512:: (gemm_avx2.cpp); transpose = false splits on 16-column boundaries.
void matmul_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out);
void gemm_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
}  // namespace avx2
#endif
#if defined(__aarch64__)
// matmul_neon.cpp: gemv_nk for transpose = true and small m; matmul_kn (transpose = false,
// columns on 16-column boundaries) and gemm_nk as on x86.
namespace neon {
void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
void matmul_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out);
void gemm_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);
}  // namespace neon
#endif
// Above this many rows of x, transpose = true runs gemm_nk instead of gemv_nk (which reads W
// once per pair of x rows).
constexpr size_t kGemvMaxRows = 8;

}  // namespace nx_quant::microscaled
