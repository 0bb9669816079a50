// SIMD runs of the hottest element-wise cases, reached through runtime CPU-feature dispatch
// (elementwise_avx2.cpp is compiled for AVX2 + F16C only; nothing in it runs unless the CPU has
// them). Each computes exactly what the portable code does (the same IEEE operations in f32,
// then the same rounding and canonical NaN), only wider.
#pragma once

#include <cstdint>

#include "nx_quant/dense_ops.h"

namespace nx_quant::dense::detail {

// out[i] = op(a[i * sa], b[i * sb]) for n elements of one type (f32, bf16 or f16), output
// contiguous, strides 0 or 1 each; op one of add, subtract, multiply, divide, max, min.
using SimdBinaryRun = void (*)(const void* a, int64_t sa, const void* b, int64_t sb, void* out,
                               int64_t n);

// The run for (op, t) on this CPU, or nullptr (no SIMD kernel for it, or no AVX2).
SimdBinaryRun simd_binary_run(BinaryOp op, Type t);

// Contiguous f16 <-> f32 conversions (F16C: exact, round to nearest even, NaN written as the
// canonical NaN both ways), or nullptr.
using SimdConvertRun = void (*)(const void* src, void* dst, int64_t n);
SimdConvertRun simd_f16_to_f32();
SimdConvertRun simd_f32_to_f16();

// exp (or, with sigmoid, 1 / (exp(-x) + 1)) of n doubles in place, for results that are then
// written as f32, bf16 or f16: within 1 ulp of those types' rounding of the C library's
// result (see elementwise_avx2.cpp), NaN kept. False (nothing done) without AVX2.
bool simd_exp_doubles(double* v, int64_t n, bool sigmoid);
// The same from contiguous f32 to contiguous f32 (NaN written as the canonical NaN).
bool simd_exp_f32(const float* in, float* out, int64_t n, bool sigmoid);

#if defined(__x86_64__)
// Defined in elementwise_avx2.cpp (call only when cpu_features().avx2_fma).
void avx2_exp_doubles(double* v, int64_t n, bool sigmoid);
void avx2_exp_f32(const float* in, float* out, int64_t n, bool sigmoid);
SimdBinaryRun avx2_binary_run(BinaryOp op, Type t);
void avx2_f16_to_f32(const void* src, void* dst, int64_t n);
void avx2_f32_to_f16(const void* src, void* dst, int64_t n);
#endif

}  // namespace nx_quant::dense::detail
