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

bool simd_exp_doubles(double* v, int64_t n, bool sigmoid) {
#if defined(__x86_64__)
  if (nx_quant::detail::cpu_features().avx2_fma) {
    avx2_exp_doubles(v, n, sigmoid);
    return true;
  }
#endif
  (void)v;
  (void)n;
  (void)sigmoid;
  return false;
}

bool simd_exp_f32(const float* in, float* out, int64_t n, bool sigmoid) {
#if defined(__x86_64__)
  if (nx_quant::detail::cpu_features().avx2_fma) {
    avx2_exp_f32(in, out, n, sigmoid);
    return true;
  }
#endif
  (void)in;
  (void)out;
  (void)n;
  (void)sigmoid;
  return false;
}

}  // namespace nx_quant::dense::detail
