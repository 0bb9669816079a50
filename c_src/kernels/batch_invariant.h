// ExecOptions::batch_invariant: quantized_matmul planned so that every output row is computed
// in one fixed order that depends on that row of x (and on W) only: never on m, on the other
// rows, on how rows are split between calls, on the thread count or on the column split.
// Called by api.cpp after validation, with x converted to f32 and the kernel resolved.
#pragma once

#include <cstddef>

#include "nx_quant/kernels.h"

namespace nx_quant::detail {

// Rows of x each kernel call takes under batch_invariant: every m is cut into blocks of this
// many (the last may be shorter) and each block runs through a decode GEMV whose per-output
// order does not depend on the rows beside it. Eight keeps W read once per 8 rows and x's
// block in L1/L2; the order, and so the result, does not depend on this value.
constexpr size_t kInvariantRowBlock = 8;

// kernel: resolved (not Auto, not Reference; Reference is invariant by construction). x_dtype:
// the dtype x had (x itself is already f32), which alone picks the kernel, never x's values.
void batch_invariant_matmul(const float* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                            bool transpose, DType out_dtype, void* out, KernelChoice kernel,
                            const ExecOptions& options);

// The same for microscaled modes (x as passed, any dtype): rows in blocks of
// kInvariantRowBlock, each through the microscaled decode GEMV, never its panel GEMM (which sums
// in another order); with Precision::Int8 the E2M1 modes' int8 GEMV at every m. kernel:
// resolved, or Reference.
void batch_invariant_microscaled_matmul(const void* x, DType x_dtype, size_t m,
                                        const QuantizedMatrix& w, bool transpose, DType out_dtype,
                                        void* out, KernelChoice kernel, int threads,
                                        Precision precision);

}  // namespace nx_quant::detail
