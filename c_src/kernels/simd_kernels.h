// Entry points of the ISA-specific kernels (compiled only on x86-64; see CMakeLists.txt).
// Arguments are validated by api.cpp; x is already f32, row-major [m, K].
#pragma once

#include <cstddef>
#include <vector>

#include "int8_activations.h"
#include "nx_quant/kernels.h"

namespace nx_quant::avx512 {

// Output columns are split in blocks of this many for the GEMM path.
constexpr size_t kGemmBlock = 32;

// transpose=true, for small m (decode): output columns [n_begin, n_end), any boundaries.
void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);

// transpose=false, for small m (decode). gemv_kn_slice computes output columns
// [n_begin, n_end) (n_begin a multiple of kGemvKnTile) over one slice of W's rows (K) into that
// slice's partial sums; gemv_kn_combine adds the slices in order for columns [n_begin, n_end).
// With at most kGemvKnSplitKMaxColumns columns, K is cut into slices of kGemvKnSliceRows and
// each thread computes whole slices (all columns: it streams its own part of W, and its
// accumulators still fit L1); wider weights are one slice whose columns are split between
// threads (each thread's accumulators fit L1). Either way results depend on the shape only,
// never on the thread count or on which thread ran what.
constexpr size_t kGemvKnTile = 256;
constexpr size_t kGemvKnSliceRows = 1024;
constexpr size_t kGemvKnSplitKMaxColumns = 6144;
struct KnPartials {
  KnPartials(size_t m, const QuantizedMatrix& w);
  size_t m, n, groups, slice_rows, slices;
  std::vector<float> acc;   // [slice][m][n]: sum over the slice of x * scale * q
  std::vector<float> bias;  // [slice][m][groups]: sum over the slice of x * bias
};
void gemv_kn_slice(const float* x, const QuantizedMatrix& w, size_t slice, size_t n_begin,
                   size_t n_end, KnPartials& partials);
void gemv_kn_combine(const KnPartials& partials, size_t group_size, DType out_dtype, size_t n_begin,
                     size_t n_end, void* out);

// Both layouts, any m (prefill): W is dequantized tile by tile into an L1/L2-resident f32
// panel that a register-blocked microkernel reuses across all rows of x. n_begin must be a
// multiple of kGemmBlock.
void gemm(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
          size_t n_begin, size_t n_end, void* out);

// quantize / dequantize of rows [row_begin, row_end), bit-identical to the reference.
void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, void* scales, void* biases);
void dequantize_rows(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                     void* out);

// x quantized by detail::quantize_activations, rearranged once per call for gemv_nk_int8
// (the layout depends on the weights' bit width; see qmatmul_int8_avx512.cpp).
struct Int8Operand {
  const detail::Int8Activations* source = nullptr;  // must outlive the operand
  std::vector<int8_t> q;                            // m x k_padded
  std::vector<float> d;                             // m x chunks x 16: d of each int32 lane
  size_t q_stride = 0, d_stride = 0;
};
Int8Operand prepare_int8(const detail::Int8Activations& xa, int bits);

// Precision::Int8 GEMV (needs AVX-512 VNNI too): transpose = true, output columns
// [n_begin, n_end).
void gemv_nk_int8(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                  size_t n_end, void* out);

// x split exactly into bf16 parts for gemv_nk_4bit_bf16 (see qmatmul_bf16dot_avx512.cpp).
struct Bf16Operand {
  size_t m = 0, k = 0, chunks = 0;  // chunks of 128 values per row (the last may be partial)
  int splits = 1;                   // bf16 parts per value: 1 (bf16 x), 2 (f16 x) or 3 (f32 x)
  std::vector<uint16_t> words;      // per row: chunks x 4 nibble positions x splits x 32
  size_t row_stride = 0;
  std::vector<float> group_sum;  // m x groups: sum of x over each group, for the bias term
};
Bf16Operand prepare_bf16(const float* x, size_t m, size_t k, size_t group_size);

// The exact 4-bit GEMV on CPUs with AVX512_BF16 too: transpose = true, output columns
// [n_begin, n_end); faster than gemv_nk (bf16 dot products of exactly split x).
void gemv_nk_4bit_bf16(const Bf16Operand& x, const QuantizedMatrix& w, DType out_dtype,
                       size_t n_begin, size_t n_end, void* out);

// x rearranged for gemv_nk_f32lut with `bits`-bit weights, 2 or 4 (see
// qmatmul_f32lut_avx512.cpp).
struct F32Operand {
  size_t m = 0, k = 0, chunks = 0;  // chunks of 64 bytes of W: 512 / bits values (last partial)
  int bits = 4;
  std::vector<float> values;  // per row: chunks x (32 / bits) positions in a word x 16
  size_t row_stride = 0;
  std::vector<float> group_sum;  // m x groups: sum of x over each group, for the bias term
};
F32Operand prepare_f32(const float* x, size_t m, size_t k, size_t group_size, int bits);

// The exact 2- and 4-bit GEMV on AVX-512 F (f32 FMAs on q looked up as floats; small m):
// transpose = true, output columns [n_begin, n_end) of W, whose width is the operand's bits.
// Faster than gemv_nk, and than gemv_nk_4bit_bf16 when x needs two or three bf16 parts (f16,
// f32 activations). A row's result depends on that row of x only, not on m nor on how the
// columns were split.
void gemv_nk_f32lut(const F32Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                    size_t n_end, void* out);

// How many bf16 parts gemv_nk_4bit_bf16 needs for these values of x (1, 2 or 3; count a
// multiple of 16).
int bf16_parts(const float* x, size_t count);

}  // namespace nx_quant::avx512

namespace nx_quant::avx2 {

// Same contracts as the AVX-512 kernels above, for CPUs with AVX2 + FMA + F16C only.
// kGemmBlock is a multiple of every group size so transpose=false splits stay inside groups.
// The decode GEMVs (transpose = true, m <= 8) are in x86/avx2/gemv_avx2.h.
constexpr size_t kGemmBlock = 128;

void gemm(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
          size_t n_begin, size_t n_end, void* out);

// dequantize of rows [row_begin, row_end) into the stored layout (not transposed),
// bit-identical to the reference.
void dequantize_rows(const QuantizedMatrix& w, size_t row_begin, size_t row_end, void* out);

// quantize of rows [row_begin, row_end), bit-identical to the reference.
void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, void* scales, void* biases);

}  // namespace nx_quant::avx2
