// Precision::Int8 for the E2M1 modes (mxfp4, nvfp4): twice an E2M1 value is an integer in
// [-12, 12], so a W row meets x's int8 blocks (int8_activations.h, 32 values, d = max|x| / 127)
// through integer dot products exactly as llama.cpp's MXFP4 x Q8_0 does; per group
//   out += scale_g * sum_blocks d_b * (sum_k 2 * E2M1(c_k) * xq_k) / 2,
// the integer sums exact, the rest in f32. The error per output is at most
// sum_k |scale_k * E2M1(c_k)| * d_k / 2 (x's rounding to its int8 grid; README). mxfp8's E4M3
// values are not small integers: it computes exactly in this mode.
//
// The SIMD GEMVs (AVX2 vpmaddubsw or AVX-VNNI, AVX-512 VNNI on 256-bit vectors) read W 64 bytes
// (a pair of 32-byte chunks, 128 codes) at a time and regroup the two chunks' dwords with one
// in-lane shuffle so that int32 lane p of the dot sums 16 codes of one group and one x block:
//   mxfp4 (groups of 32): T_t lane p = chunk (p % 4) / 2, dword 4 * (p / 4) + p % 2 + 2t
//   nvfp4 (groups of 16): T_t lane p = chunk (p % 4) / 2, dword 4 * (p / 4) + 2 * (p % 2) + t
// Byte i of a dword holds codes 2i (low nibble) and 2i + 1. The nibbles index a vpshufb table
// of u(c) = 2 * E2M1(c) + 12 (unsigned, 0..24, as vpmaddubsw / vpdpbusd want), and the lane's
// 12 * sum(xq), stored with x, is subtracted from the int32 dot. x is stored once per call in
// that order (Int8Operand), so the kernels load it straight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "int8_activations.h"
#include "nx_quant/kernels.h"

namespace nx_quant::microscaled::int8 {

// Whether `mode` has an int8 path (mxfp4 and nvfp4).
bool has_int8_path(QuantMode mode);

constexpr int kPairBytes = 64;    // W bytes per step
constexpr int kPairValues = 128;  // codes per step
constexpr int kLanes = 8;
// The u(c) table (vpshufb): code -> 2 * E2M1(code) + 12.
inline constexpr int8_t kOffsetCodes[16] = {12, 13, 14, 15, 16, 18, 20, 24,
                                            12, 11, 10, 9,  8,  6,  4,  0};
constexpr int kCodeOffset = 12;

// Where lane p of regrouped chunk t reads from (see the header comment).
constexpr int source_chunk(int p) {
  return (p % 4) / 2;
}
constexpr int source_dword(bool nvfp4, int t, int p) {
  return nvfp4 ? 4 * (p / 4) + 2 * (p % 2) + t : 4 * (p / 4) + p % 2 + 2 * t;
}
// The code (0..127) of the pair that byte i, nibble j (0 low) of lane p of chunk t holds.
constexpr int source_value(bool nvfp4, int t, int j, int p, int i) {
  return 64 * source_chunk(p) + 8 * source_dword(nvfp4, t, p) + 2 * i + j;
}

// x in the kernels' order: per row, per pair of W chunks, 128 int8 values in 4 runs of 32 (run
// 2t + j: byte 4p + i holds source_value(t, j, p, i)), then per lane the block's d and
// 12 * the lane's sum of xq. Zero past K.
struct Int8Operand {
  size_t m = 0, pairs = 0;
  bool nvfp4 = false;
  std::vector<int8_t> q;      // [m][pairs][128]
  std::vector<float> d;       // [m][pairs][8]
  std::vector<int32_t> bias;  // [m][pairs][8]: 12 * sum of the lane's xq
};
Int8Operand prepare(const detail::Int8Activations& xa, QuantMode mode);

// The group (0 .. 128 / group_size - 1) of the pair that lane p sums.
int group_of_lane(bool nvfp4, int p);

// (The portable loop.) The scales of W row n as f32, each halved (the codes are twice the values) and times nvfp4's
// global factor, then 8 zeros (a last partial pair's lanes past the row read 0).
void row_scales(const QuantizedMatrix& w, size_t n, float* out);

// out[:, n_begin:n_end) = x . W^T (transpose = true), x quantized as `xa`.
// portable: the formula in the header comment, one group after another (scalar).
void gemv_portable(const detail::Int8Activations& xa, const QuantizedMatrix& w, DType out_dtype,
                   size_t n_begin, size_t n_end, void* out);
#if defined(__x86_64__)
// vnni: AVX-VNNI vpdpbusd instead of vpmaddubsw + vpmaddwd (the same integers).
void gemv_avx2(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out, bool vnni);
// AVX-512 VNNI's vpdpbusd on 256-bit vectors (the step is 64 bytes of W either way).
void gemv_avx512(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                 size_t n_end, void* out);
#endif

}  // namespace nx_quant::microscaled::int8
