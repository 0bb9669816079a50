// The portable module's plan (see plan.h): plain C++ loops for any CPU, the columns split
// between threads (on group boundaries for transpose = false), the int8 mode's loop for decode.
#include "int8_activations.h"
#include "parallel.h"
#include "plan.h"
#include "portable/portable.h"

namespace nx_quant::portable {

namespace {

// Up to this many rows of x the int8 mode applies (as kernels.h documents for every kernel).
constexpr size_t kInt8MaxRows = 8;

void quantize_all(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
                  uint32_t* packed, void* scales, void* biases, int threads) {
  detail::parallel_for(rows, 1, threads, [&](size_t begin, size_t end) {
    quantize(dense, dtype, cols, spec, begin, end, packed, scales, biases);
  });
}

void dequantize_all(const QuantizedMatrix& w, bool transpose_out, void* out, int threads) {
  detail::parallel_for(w.rows, 1, threads, [&](size_t begin, size_t end) {
    dequantize(w, transpose_out, begin, end, out);
  });
}

void quantized_matmul(const detail::Activations& x, const QuantizedMatrix& w, bool transpose,
                      DType out_dtype, void* out, const ExecOptions& options) {
  const size_t m = x.m;
  const size_t n_dim = transpose ? w.rows : w.cols;
  std::vector<float> scratch;
  const float* xf = x.f32(scratch);
  if (options.precision == Precision::Int8 && transpose && m <= kInt8MaxRows) {
    const auto xa =
        detail::quantize_activations(xf, m, x.k, static_cast<size_t>(w.spec.group_size));
    detail::parallel_for(n_dim, 1, options.threads, [&](size_t begin, size_t end) {
      matmul_nk_int8(xa, w, out_dtype, begin, end, out);
    });
    return;
  }
  const size_t grain = transpose ? 1 : static_cast<size_t>(w.spec.group_size);
  detail::parallel_for(n_dim, grain, options.threads, [&](size_t begin, size_t end) {
    matmul(xf, m, w, transpose, out_dtype, begin, end, out);
  });
}

double estimated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose) {
  return detail::avx512_calibrated_matmul_ns(m, w, transpose) * 40.0;  // scalar loops
}

}  // namespace

const detail::KernelPlan kPlan = {
    quantize_all, dequantize_all, quantized_matmul, estimated_matmul_ns, 5.0, 3.0};

}  // namespace nx_quant::portable
