#include "microscaled/microscaled.h"

namespace nx_quant::microscaled::avx2 {

void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  portable::matmul(x, m, w, true, out_dtype, n_begin, n_end, out);
}

}  // namespace nx_quant::microscaled::avx2
