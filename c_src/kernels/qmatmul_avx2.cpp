// AVX2 + FMA fused quantized matmul. PLACEHOLDER: forwards to the portable kernels until the
// vectorised version lands.
#include "portable.h"
#include "simd_kernels.h"

namespace nx_quant::avx2 {

void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  portable::matmul(x, m, w, true, out_dtype, n_begin, n_end, out);
}

void gemm(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
          size_t n_begin, size_t n_end, void* out) {
  portable::matmul(x, m, w, transpose, out_dtype, n_begin, n_end, out);
}

}  // namespace nx_quant::avx2
