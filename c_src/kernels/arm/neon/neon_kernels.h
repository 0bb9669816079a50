// Entry points of the aarch64 NEON kernels (compiled only for aarch64; see CMakeLists.txt).
// Arguments are validated by api.cpp; x is already f32, row-major [m, K]. Every kernel works on
// a sub-range so that detail::parallel_for can split the work, and a result never depends on
// how the range was split.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "int8_activations.h"
#include "nx_quant/kernels.h"

namespace nx_quant::neon {

// Column splits of the GEMM and the transpose=false GEMV fall on multiples of this (a multiple
// of every group size and of the GEMM's panel width).
constexpr size_t kGemmBlock = 128;

// transpose=true, small m (decode): output columns [n_begin, n_end), any boundaries.
void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);

// transpose=false, small m: output columns [n_begin, n_end), both multiples of kGemmBlock (or N).
// Streams W's rows once; the accumulators of a 128-column tile stay in L1.
void gemv_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out);

// Both layouts, any m (prefill): W dequantized panel by panel into f32 and reused across all
// rows of x by a register-blocked microkernel. n_begin a multiple of kGemmBlock.
void gemm(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
          size_t n_begin, size_t n_end, void* out);

// quantize / dequantize of rows [row_begin, row_end), bit-identical to the reference.
void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, void* scales, void* biases);
void dequantize_rows(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                     void* out);

// Precision::Int8, transpose = true, output columns [n_begin, n_end): the int8 formula of
// portable::matmul_nk_int8 (per group: scale * sum_blocks(d * int_dot) + bias * sum(x)) with
// the integer dot products done by SDOT (needs dotprod; 8-bit weights offset by 128 to fit
// int8, the offset added back exactly) ...
void gemv_nk_int8_dotprod(const detail::Int8Activations& xa, const QuantizedMatrix& w,
                          DType out_dtype, size_t n_begin, size_t n_end, void* out);

// ... or by USMMLA (needs i8mm): 2 rows of W times 2 rows of x per instruction, unsigned q
// times signed x. x is interleaved in row pairs once per call (prepare_int8_pairs).
// (An odd last row of x is paired with a zero row.)
struct Int8Pairs {
  size_t m = 0, pairs = 0, k_padded = 0, blocks = 0, groups = 0;
  std::vector<int8_t> q;    // per pair: for each 8 values, row 2p's 8 bytes then row 2p+1's
  std::vector<float> d;     // per pair, per block: {d(2p), d(2p+1), d(2p), d(2p+1)}
  std::vector<float> gsum;  // per pair, per group: the same for the groups' sums of x
};
Int8Pairs prepare_int8_pairs(const detail::Int8Activations& xa, size_t group_size);
void gemv_nk_int8_i8mm(const Int8Pairs& x, const QuantizedMatrix& w, DType out_dtype,
                       size_t n_begin, size_t n_end, void* out);

}  // namespace nx_quant::neon
