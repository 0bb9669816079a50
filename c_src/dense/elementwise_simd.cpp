// Runtime dispatch to the SIMD element-wise runs (elementwise_simd.h).
#include "elementwise_simd.h"

#include "cpu_features.h"

namespace nx_quant::dense::detail {

SimdBinaryRun simd_binary_run(BinaryOp op, Type t) {
#if defined(__x86_64__)
  if (nx_quant::detail::cpu_features().avx2_fma) return avx2_binary_run(op, t);
#endif
  (void)op;
  (void)t;
  return nullptr;
}

SimdConvertRun simd_f16_to_f32() {
#if defined(__x86_64__)
  if (nx_quant::detail::cpu_features().avx2_fma) return &avx2_f16_to_f32;
#endif
  return nullptr;
}

SimdConvertRun simd_f32_to_f16() {
#if defined(__x86_64__)
  if (nx_quant::detail::cpu_features().avx2_fma) return &avx2_f32_to_f16;
#endif
  return nullptr;
}

}  // namespace nx_quant::dense::detail
