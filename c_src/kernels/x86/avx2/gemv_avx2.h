// The AVX2 decode GEMVs (transpose = true, m <= 8): exact f32 (gemv_lut_avx2.cpp) and the int8
// activation mode (gemv_int8_avx2.cpp). Compiled on x86-64 only; arguments validated by api.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "int8_activations.h"
#include "nx_quant/kernels.h"

namespace nx_quant::avx2 {

// Rows of x the decode GEMVs take (api.cpp sends transpose = true calls with m up to this to
// them instead of the GEMM, which dequantizes all of W per call).
constexpr size_t kGemvMaxRows = 8;

// x rearranged once per call for gemv_nk_lut with `bits`-bit weights: a W row is read in chunks
// of 8 lanes of 32 bits, lane L holding `positions` values (P*L .. P*L + P-1 of the chunk), and
// position j of each lane is isolated by an AND that leaves q << offset(j, L) (exactly
// representable in f32); x is stored pre-multiplied by 2^-offset(j, L), so q * x is formed
// exactly inside the FMA (see gemv_lut_avx2.cpp).
struct LutOperand {
  size_t m = 0, k = 0, chunks = 0;  // chunks per row (the last may be partial)
  int bits = 4, positions = 8;
  std::vector<float> values;  // per row: chunks x positions x 8 lanes
  size_t row_stride = 0;
  std::vector<float> group_sum;  // m x groups: sum of x over each group, for the bias term
};
LutOperand prepare_lut(const float* x, size_t m, size_t k, size_t group_size, int bits);

// The exact GEMV for every width: output columns [n_begin, n_end) of W. A row's result depends
// on that row of x only, never on m, on the other rows, nor on how the columns were split.
void gemv_nk_lut(const LutOperand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                 size_t n_end, void* out);

// Whether gemv_nk_int8 takes `bits`-bit weights (2, 4 and 8: values whole in bytes); other
// widths compute exactly in the int8 mode.
bool has_int8_path(int bits);

// x quantized by detail::quantize_activations, rearranged for gemv_nk_int8 (see
// gemv_int8_avx2.cpp).
struct Int8Operand {
  const detail::Int8Activations* source = nullptr;  // must outlive the operand
  int bits = 4;
  std::vector<int8_t> q;  // per pair of W chunks, per row: the int8 values in W's read order
  std::vector<float> d;   // per pair of W chunks, per row: the 8 lanes' steps
  size_t q_stride = 0, d_stride = 0;  // values and steps per row
};
Int8Operand prepare_int8(const detail::Int8Activations& xa, int bits);

// Precision::Int8 GEMV: transpose = true, output columns [n_begin, n_end). `vnni`: use AVX-VNNI
// vpdpbusd (VEX) instead of vpmaddubsw + vpmaddwd; both give the same bits.
void gemv_nk_int8(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                  size_t n_end, void* out, bool vnni);

}  // namespace nx_quant::avx2
