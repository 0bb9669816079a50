// Public entry points: validate everything, then one dispatch per operation to the plan of the
// kernel set that runs (plan.h; microscaled modes to their own module).
#include <algorithm>
#include <string>
#include <vector>

#include "batch_invariant.h"
#include "cpu_features.h"
#include "microscaled/microscaled.h"
#include "nx_quant/kernels.h"
#include "plan.h"

namespace nx_quant {

namespace {

void validate_dtype(DType t, const char* name) {
  if (static_cast<unsigned>(t) > static_cast<unsigned>(DType::BF16)) {
    throw InvalidArgument(std::string(name) + " dtype must be f32, f16 or bf16 (got enum value " +
                          std::to_string(static_cast<unsigned>(t)) + ")");
  }
}

void validate_buffer(const void* data, size_t bytes, size_t expected, const char* name,
                     const std::string& what_for) {
  if (bytes != expected) {
    throw InvalidArgument(std::string(name) + " has " + std::to_string(bytes) +
                          " bytes, expected " + std::to_string(expected) + " for " + what_for);
  }
  if (data == nullptr && expected != 0) {
    throw InvalidArgument(std::string(name) + " is a null pointer");
  }
}

std::string matrix_desc(size_t rows, size_t cols, const QuantSpec& spec) {
  return "a " + std::to_string(rows) + " x " + std::to_string(cols) + " matrix at " +
         std::to_string(spec.bits) + " bits, group_size " + std::to_string(spec.group_size);
}

void validate_options(const ExecOptions& options) {
  if (options.threads < 0) {
    throw InvalidArgument("threads must be >= 0 (got " + std::to_string(options.threads) + ")");
  }
  if (static_cast<unsigned>(options.kernel) > static_cast<unsigned>(KernelChoice::Neon)) {
    throw InvalidArgument("kernel choice is not a KernelChoice value");
  }
  if (static_cast<unsigned>(options.precision) > static_cast<unsigned>(Precision::Int8)) {
    throw InvalidArgument("precision is not a Precision value");
  }
}

// The kernel a call runs: Auto becomes the best one this CPU supports; an explicit choice the
// CPU (or this build) cannot run is an error rather than a silent fallback.
KernelChoice resolve_kernel(KernelChoice choice) {
  const auto& cpu = detail::cpu_features();
#if defined(__x86_64__)
  const bool have_avx512 = cpu.avx512;
  const bool have_avx2 = cpu.avx2_fma;
#else
  const bool have_avx512 = false, have_avx2 = false;
#endif
#if defined(__aarch64__)
  const bool have_neon = cpu.neon;
#else
  const bool have_neon = false;
#endif
  (void)cpu;
  switch (choice) {
    case KernelChoice::Auto:
      if (have_neon) return KernelChoice::Neon;
      if (have_avx512) return KernelChoice::Avx512;
      return have_avx2 ? KernelChoice::Avx2 : KernelChoice::Portable;
    case KernelChoice::Avx512:
      if (!have_avx512) {
        throw InvalidArgument(
            "kernel Avx512 needs AVX-512 F/BW/VL/DQ/VBMI, which this CPU does not have");
      }
      return choice;
    case KernelChoice::Avx2:
      if (!have_avx2) {
        throw InvalidArgument("kernel Avx2 needs AVX2, FMA and F16C, which this CPU does not have");
      }
      return choice;
    case KernelChoice::Neon:
      if (!have_neon) {
        throw InvalidArgument("kernel Neon needs an aarch64 CPU with Advanced SIMD (NEON)");
      }
      return choice;
    default:
      return choice;
  }
}

}  // namespace

void validate_quantized_matrix(const QuantizedMatrix& w, const char* name) {
  validate_dtype(w.dtype, name);
  const std::string prefix = std::string(name) + ": ";
  QuantizedLayout layout;
  try {
    layout = QuantizedLayout(w.rows, w.cols, w.spec, w.dtype);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(prefix + e.what());
  }
  const std::string desc = matrix_desc(w.rows, w.cols, w.spec);
  validate_buffer(w.packed.data, w.packed.bytes, layout.packed_bytes,
                  (std::string(name) + ".packed").c_str(), desc);
  validate_buffer(w.scales.data, w.scales.bytes, layout.scales_bytes,
                  (std::string(name) + ".scales").c_str(),
                  desc + " with " + dtype_name(w.dtype) + " scales");
  if (is_microscaled(w.spec.mode)) {
    validate_buffer(w.biases.data, w.biases.bytes, 0, (std::string(name) + ".biases").c_str(),
                    desc + std::string(" in mode ") + mode_name(w.spec.mode) + " (no biases)");
    return;
  }
  validate_buffer(w.biases.data, w.biases.bytes, layout.scales_bytes,
                  (std::string(name) + ".biases").c_str(),
                  desc + " with " + dtype_name(w.dtype) + " biases");
}

void quantize(ConstBuffer dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              MutableBuffer packed, MutableBuffer scales, MutableBuffer biases,
              const ExecOptions& options) {
  validate_options(options);
  validate_dtype(dtype, "dense");
  const QuantizedLayout layout(rows, cols, spec, dtype);
  const std::string desc = matrix_desc(rows, cols, spec);
  const size_t dense_bytes =
      checked_mul(checked_mul(rows, cols, "rows * cols"), dtype_size(dtype), "dense byte size");
  validate_buffer(dense.data, dense.bytes, dense_bytes, "dense", desc + " of " + dtype_name(dtype));
  validate_buffer(packed.data, packed.bytes, layout.packed_bytes, "packed", desc);
  validate_buffer(scales.data, scales.bytes, layout.scales_bytes, "scales", desc);
  validate_buffer(biases.data, biases.bytes, layout.biases_bytes, "biases", desc);
  auto* words = static_cast<uint32_t*>(packed.data);
  if (is_microscaled(spec.mode)) {
    const KernelChoice kernel = options.kernel == KernelChoice::Reference
                                    ? KernelChoice::Reference
                                    : resolve_kernel(options.kernel);
    microscaled::quantize(dense.data, dtype, rows, cols, spec, words,
                          static_cast<uint8_t*>(scales.data), kernel, options.threads);
    return;
  }
  const KernelChoice kernel = resolve_kernel(options.kernel);
  detail::plan_for(kernel).quantize(dense.data, dtype, rows, cols, spec, words, scales.data,
                                    biases.data, options.threads);
}

void dequantize(const QuantizedMatrix& w, MutableBuffer out, bool transpose_out,
                const ExecOptions& options) {
  validate_options(options);
  validate_quantized_matrix(w, "w");
  const size_t out_bytes =
      checked_mul(checked_mul(w.rows, w.cols, "rows * cols"), dtype_size(w.dtype), "out bytes");
  validate_buffer(out.data, out.bytes, out_bytes, "out",
                  "the dequantized " + std::to_string(w.rows) + " x " + std::to_string(w.cols) +
                      " " + dtype_name(w.dtype) + " matrix");
  if (is_microscaled(w.spec.mode)) {
    const KernelChoice kernel = options.kernel == KernelChoice::Reference
                                    ? KernelChoice::Reference
                                    : resolve_kernel(options.kernel);
    microscaled::dequantize(w, out.data, transpose_out, kernel, options.threads);
    return;
  }
  const KernelChoice kernel = resolve_kernel(options.kernel);
  detail::plan_for(kernel).dequantize(w, transpose_out, out.data, options.threads);
}

void quantized_matmul(ConstBuffer x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, MutableBuffer out,
                      const ExecOptions& options) {
  validate_options(options);
  validate_dtype(x_dtype, "x");
  validate_dtype(out_dtype, "out");
  validate_quantized_matrix(w, "w");
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  const size_t x_bytes =
      checked_mul(checked_mul(m, k_dim, "m * K"), dtype_size(x_dtype), "x bytes");
  const size_t out_bytes =
      checked_mul(checked_mul(m, n_dim, "m * N"), dtype_size(out_dtype), "out bytes");
  const std::string layout =
      transpose ? " (transpose=true: w is [N, K])" : " (transpose=false: w is [K, N])";
  validate_buffer(x.data, x.bytes, x_bytes, "x",
                  "x of shape [" + std::to_string(m) + ", " + std::to_string(k_dim) + "] in " +
                      dtype_name(x_dtype) + layout);
  validate_buffer(out.data, out.bytes, out_bytes, "out",
                  "out of shape [" + std::to_string(m) + ", " + std::to_string(n_dim) + "] in " +
                      dtype_name(out_dtype));
  resolve_kernel(options.kernel);  // an unavailable explicit choice fails before any work
  if (m == 0 || n_dim == 0) return;
  if (is_microscaled(w.spec.mode)) {  // Precision::Int8: mxfp4 and nvfp4 (microscaled.h)
    const KernelChoice kernel = options.kernel == KernelChoice::Reference
                                    ? KernelChoice::Reference
                                    : resolve_kernel(options.kernel);
    if (options.batch_invariant) {
      return detail::batch_invariant_microscaled_matmul(x.data, x_dtype, m, w, transpose, out_dtype,
                                                        out.data, kernel, options.threads,
                                                        options.precision);
    }
    microscaled::quantized_matmul(x.data, x_dtype, m, w, transpose, out_dtype, out.data, kernel,
                                  options.threads, options.precision);
    return;
  }
  const KernelChoice kernel = resolve_kernel(options.kernel);
  const detail::Activations activations{x.data, x_dtype, m, k_dim};
  if (options.batch_invariant && kernel != KernelChoice::Reference) {
    // its own plan: every m through row blocks of a GEMV (batch_invariant.h)
    std::vector<float> scratch;
    return detail::batch_invariant_matmul(activations.f32(scratch), x_dtype, m, w, transpose,
                                          out_dtype, out.data, kernel, options);
  }
  detail::plan_for(kernel).quantized_matmul(activations, w, transpose, out_dtype, out.data,
                                            options);
}

namespace {

// The plan whose estimates apply: the kernel `options` selects, or the portable one where that
// kernel is unavailable (the call itself will fail; any estimate will do).
const detail::KernelPlan& estimating_plan(const ExecOptions& options) {
  try {
    return detail::plan_for(resolve_kernel(options.kernel));
  } catch (const InvalidArgument&) {
    return detail::plan_for(KernelChoice::Portable);
  }
}

constexpr double kFreshOutputNsPerByte = 0.6;

}  // namespace

double estimated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose,
                           const ExecOptions& options) {
  const detail::KernelPlan& plan = estimating_plan(options);
  if (options.batch_invariant && m > detail::kInvariantRowBlock) {
    // Every m runs as row blocks of the decode GEMV (batch_invariant.h), 1.2-3x the GEMM's
    // time from 16 rows on: estimated as whole blocks of rows at the one-row GEMV's rate, not
    // as the GEMM the plan would pick.
    const size_t blocks = (m + detail::kInvariantRowBlock - 1) / detail::kInvariantRowBlock;
    return std::max(static_cast<double>(blocks * detail::kInvariantRowBlock) *
                        plan.estimated_matmul_ns(1, w, transpose),
                    plan.estimated_matmul_ns(m, w, transpose));
  }
  return plan.estimated_matmul_ns(m, w, transpose);
}

double estimated_quantize_ns(size_t rows, size_t cols, const QuantSpec& spec, DType dtype,
                             const ExecOptions& options) {
  // Measured (bench machine, loaded): ~1.1 ns per value with AVX2/AVX-512, ~7 portable.
  const double values = static_cast<double>(rows) * static_cast<double>(cols);
  if (is_microscaled(spec.mode)) {
    // Measured (BM_QuantizeMicroscaled: bf16 4096 x 4096, 1 thread, shared machine): ~0.3-0.46
    // ns per value with AVX-512, ~0.6-0.8 AVX2, ~1.7-3.3 portable C++ (which NEON runs too),
    // 6-36 the scalar reference (real time up to 3x that when the machine was loaded); about
    // 2-3x that here, plus the page faults of the fresh output.
    KernelChoice kernel = KernelChoice::Portable;
    try {
      kernel = options.kernel == KernelChoice::Reference ? KernelChoice::Reference
                                                         : resolve_kernel(options.kernel);
    } catch (const InvalidArgument&) {
    }
    const double per_value = kernel == KernelChoice::Reference ? 80.0
                             : kernel == KernelChoice::Avx512  ? 1.0
                             : kernel == KernelChoice::Avx2    ? 1.8
                                                               : 8.0;
    const double out_bytes = spec.bits / 8.0 + 1.0 / spec.group_size;
    return values * (per_value + out_bytes * kFreshOutputNsPerByte);
  }
  const double out_bytes_per_value =
      spec.bits / 8.0 + 2.0 * static_cast<double>(dtype_size(dtype)) / spec.group_size;
  return values * (2.0 * estimating_plan(options).quantize_slowdown +
                   out_bytes_per_value * kFreshOutputNsPerByte);
}

double estimated_dequantize_ns(const QuantizedMatrix& w, bool transpose_out,
                               const ExecOptions& options) {
  // Measured: ~2.1 ns per f32 value (mostly page faults of the output), ~3.9 transposed.
  const double values = static_cast<double>(w.rows) * static_cast<double>(w.cols);
  const double compute = (transpose_out ? 3.0 : 1.0) * estimating_plan(options).dequantize_slowdown;
  return values * (compute + static_cast<double>(dtype_size(w.dtype)) * kFreshOutputNsPerByte);
}

}  // namespace nx_quant
