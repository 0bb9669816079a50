// The dispatch table (plan_for), the reference oracle's plan and the shared estimate model.
#include "plan.h"

#include <cstring>

#include "nx_quant/reference.h"

namespace nx_quant::detail {

const float* Activations::f32(std::vector<float>& scratch) const {
  const size_t count = m * k;
  if (dtype == DType::F32 && reinterpret_cast<uintptr_t>(data) % alignof(float) == 0) {
    return static_cast<const float*>(data);
  }
  scratch.resize(count);
  if (dtype == DType::F32) {
    if (count != 0) std::memcpy(scratch.data(), data, count * sizeof(float));
  } else {
    for (size_t i = 0; i < count; ++i) scratch[i] = load_as_f32(data, dtype, i);
  }
  return scratch.data();
}

double avx512_calibrated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose) {
  const double macs =
      static_cast<double>(m) * static_cast<double>(w.rows) * static_cast<double>(w.cols);
  const double weights = static_cast<double>(w.rows) * static_cast<double>(w.cols);
  if (is_microscaled(w.spec.mode) && !transpose) {
    return weights * 3.0 + macs * 0.5;  // as the portable loop: high for the SIMD kernels (safe)
  }
  if (transpose && w.spec.bits == 4 && m < 9) return macs * 0.05;
  if (transpose && m < 8) return macs * 0.1;
  return weights * 0.4 + macs * 0.03;
}

namespace {

// The reference oracle: scalar, one thread, x read in its own dtype.
void reference_quantize(const void* dense, DType dtype, size_t rows, size_t cols,
                        const QuantSpec& spec, uint32_t* packed, void* scales, void* biases, int) {
  reference::quantize(dense, dtype, rows, cols, spec, packed, scales, biases);
}

void reference_dequantize(const QuantizedMatrix& w, bool transpose_out, void* out, int) {
  reference::dequantize(w, out, transpose_out);
}

void reference_matmul(const Activations& x, const QuantizedMatrix& w, bool transpose,
                      DType out_dtype, void* out, const ExecOptions&) {
  reference::quantized_matmul(x.data, x.dtype, x.m, w, transpose, out_dtype, out);
}

double reference_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose) {
  return avx512_calibrated_matmul_ns(m, w, transpose) * 40.0;
}

const KernelPlan kReferencePlan = {
    reference_quantize, reference_dequantize, reference_matmul, reference_matmul_ns, 5.0, 3.0};

}  // namespace

const KernelPlan& plan_for(KernelChoice kernel) {
  switch (kernel) {
#if defined(__x86_64__)
    case KernelChoice::Avx512:
      return avx512::kPlan;
    case KernelChoice::Avx2:
      return avx2::kPlan;
#endif
#if defined(__aarch64__)
    case KernelChoice::Neon:
      return neon::kPlan;
#endif
    case KernelChoice::Reference:
      return kReferencePlan;
    default:
      return portable::kPlan;
  }
}

}  // namespace nx_quant::detail
