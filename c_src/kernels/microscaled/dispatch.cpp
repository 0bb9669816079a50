// Which microscaled implementation runs for a (validated) call.
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "microscaled/microscaled.h"
#include "parallel.h"

namespace nx_quant::microscaled {

void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, uint8_t* scales, int threads) {
  // One implementation, the reference: MLX's per-operation dtype rounding is the point here.
  detail::parallel_for(rows, 1, threads, [&](size_t begin, size_t end) {
    reference::quantize_rows(dense, dtype, cols, spec, begin, end, packed, scales);
  });
}

void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out, KernelChoice kernel,
                int threads) {
  if (kernel == KernelChoice::Reference) {
    reference::dequantize(w, out, transpose_out);
    return;
  }
  detail::parallel_for(w.rows, 1, threads, [&](size_t begin, size_t end) {
    portable::dequantize_rows(w, transpose_out, begin, end, out);
  });
}

void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out, KernelChoice kernel,
                      int threads) {
  if (kernel == KernelChoice::Reference) {
    reference::quantized_matmul(x, x_dtype, m, w, transpose, out_dtype, out);
    return;
  }
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  std::vector<float> xf(m * k_dim);
  for (size_t i = 0; i < xf.size(); ++i) xf[i] = load_as_f32(x, x_dtype, i);
#if defined(__x86_64__)
  if (transpose && (kernel == KernelChoice::Avx512 || kernel == KernelChoice::Avx2)) {
    if (w.spec.bits == 4) {
      xf = kernel == KernelChoice::Avx512 ? avx512::prepare_x4(xf.data(), m, k_dim)
                                          : deinterleave_blocks(xf.data(), m, k_dim);
    }
    detail::parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
      if (kernel == KernelChoice::Avx512) {
        avx512::gemv_nk(xf.data(), m, w, out_dtype, begin, end, out);
      } else {
        avx2::gemv_nk(xf.data(), m, w, out_dtype, begin, end, out);
      }
    });
    return;
  }
#endif
  // transpose = false splits columns on 64-column boundaries (whole groups, whole words).
  detail::parallel_for(n_dim, transpose ? 1 : 64, threads, [&](size_t begin, size_t end) {
    portable::matmul(xf.data(), m, w, transpose, out_dtype, begin, end, out);
  });
}

}  // namespace nx_quant::microscaled
