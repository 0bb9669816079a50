// Public entry points: validate everything, then dispatch to an implementation.
#include <cstring>
#include <string>
#include <vector>

#include "batch_invariant.h"
#include "cpu_features.h"
#include "microscaled/microscaled.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "parallel.h"
#include "portable.h"
#if defined(__x86_64__)
#include "simd_kernels.h"
#include "x86/avx2/gemv_avx2.h"
#endif
#if defined(__aarch64__)
#include "arm/neon/plan_neon.h"
#endif

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

std::vector<float> to_f32(ConstBuffer x, DType dtype, size_t count) {
  std::vector<float> out(count);
  if (count == 0) return out;  // K = 0 (a [0, N] weight): x may be an empty, null buffer
  if (dtype == DType::F32) {
    std::memcpy(out.data(), x.data, count * sizeof(float));
  } else {
    for (size_t i = 0; i < count; ++i) out[i] = load_as_f32(x.data, dtype, i);
  }
  return out;
}

// Below this many rows of x, transpose=false runs the [K, N] GEMV on AVX-512.
constexpr size_t kGemvKnMaxRows = 8;
// Below this many rows of x, transpose=true runs the GEMV kernel.
constexpr size_t kGemvMaxRows = 8;
// The AVX-512 exact GEMV unpacks 4-bit weights cheaply enough to beat the GEMM panels up to
// m = 8 too (measured: 4096 x 4096, m = 8, 2 threads: 2.1 ms vs 3.8 ms); other widths are
// faster through the panels from m = 8 on (8 bits: 4.2 ms vs 5.5 ms).
constexpr size_t kGemvMaxRows4Bit = 9;

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
    if (options.kernel != KernelChoice::Reference) resolve_kernel(options.kernel);
    microscaled::quantize(dense.data, dtype, rows, cols, spec, words,
                          static_cast<uint8_t*>(scales.data), options.threads);
    return;
  }
  if (options.kernel == KernelChoice::Reference) {
    reference::quantize(dense.data, dtype, rows, cols, spec, words, scales.data, biases.data);
    return;
  }
  const KernelChoice kernel = resolve_kernel(options.kernel);
#if defined(__x86_64__)
  if (kernel == KernelChoice::Avx512) {
    detail::parallel_for(rows, 1, options.threads, [&](size_t begin, size_t end) {
      avx512::quantize_rows(dense.data, dtype, cols, spec, begin, end, words, scales.data,
                            biases.data);
    });
    return;
  }
  if (kernel == KernelChoice::Avx2) {
    detail::parallel_for(rows, 1, options.threads, [&](size_t begin, size_t end) {
      avx2::quantize_rows(dense.data, dtype, cols, spec, begin, end, words, scales.data,
                          biases.data);
    });
    return;
  }
#endif
#if defined(__aarch64__)
  if (kernel == KernelChoice::Neon) {
    return neon::quantize(dense.data, dtype, rows, cols, spec, words, scales.data, biases.data,
                          options.threads);
  }
#endif
  (void)kernel;
  detail::parallel_for(rows, 1, options.threads, [&](size_t begin, size_t end) {
    portable::quantize(dense.data, dtype, cols, spec, begin, end, words, scales.data, biases.data);
  });
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
  if (options.kernel == KernelChoice::Reference) {
    reference::dequantize(w, out.data, transpose_out);
    return;
  }
  const KernelChoice kernel = resolve_kernel(options.kernel);
#if defined(__x86_64__)
  if (kernel == KernelChoice::Avx512) {
    detail::parallel_for(w.rows, 1, options.threads, [&](size_t begin, size_t end) {
      avx512::dequantize_rows(w, transpose_out, begin, end, out.data);
    });
    return;
  }
  if (kernel == KernelChoice::Avx2 && !transpose_out) {
    detail::parallel_for(w.rows, 1, options.threads, [&](size_t begin, size_t end) {
      avx2::dequantize_rows(w, begin, end, out.data);
    });
    return;
  }
#endif
#if defined(__aarch64__)
  if (kernel == KernelChoice::Neon) {
    return neon::dequantize(w, transpose_out, out.data, options.threads);
  }
#endif
  (void)kernel;
  detail::parallel_for(w.rows, 1, options.threads, [&](size_t begin, size_t end) {
    portable::dequantize(w, transpose_out, begin, end, out.data);
  });
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
  if (is_microscaled(w.spec.mode)) {  // Precision::Int8 has no microscaled path: exact
    const KernelChoice kernel = options.kernel == KernelChoice::Reference
                                    ? KernelChoice::Reference
                                    : resolve_kernel(options.kernel);
    microscaled::quantized_matmul(x.data, x_dtype, m, w, transpose, out_dtype, out.data, kernel,
                                  options.threads);
    return;
  }
  if (options.kernel == KernelChoice::Reference) {
    reference::quantized_matmul(x.data, x_dtype, m, w, transpose, out_dtype, out.data);
    return;
  }
  const std::vector<float> xf = to_f32(x, x_dtype, m * k_dim);
  const KernelChoice kernel = resolve_kernel(options.kernel);
  if (options.batch_invariant) {  // its own plan: every m through row blocks of a GEMV
    return detail::batch_invariant_matmul(xf.data(), x_dtype, m, w, transpose, out_dtype, out.data,
                                          kernel, options);
  }
#if defined(__aarch64__)
  if (kernel == KernelChoice::Neon) {  // the NEON module plans the whole call (arm/neon)
    return neon::quantized_matmul(xf.data(), m, w, transpose, out_dtype, out.data, options);
  }
#endif
  if (options.precision == Precision::Int8 && transpose && m < kGemvMaxRows) {
    const size_t gs = static_cast<size_t>(w.spec.group_size);
#if defined(__x86_64__)
    if (kernel == KernelChoice::Avx512 && detail::cpu_features().avx512_vnni) {
      const auto xa = detail::quantize_activations(xf.data(), m, k_dim, gs);
      const auto operand = avx512::prepare_int8(xa, w.spec.bits);
      detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
        avx512::gemv_nk_int8(operand, w, out_dtype, begin, end, out.data);
      });
      return;
    }
    if (kernel == KernelChoice::Avx2 && avx2::has_int8_path(w.spec.bits)) {
      const auto xa = detail::quantize_activations(xf.data(), m, k_dim, gs);
      const auto operand = avx2::prepare_int8(xa, w.spec.bits);
      const bool vnni = detail::cpu_features().avx_vnni;
      detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
        avx2::gemv_nk_int8(operand, w, out_dtype, begin, end, out.data, vnni);
      });
      return;
    }
#endif
    if (kernel == KernelChoice::Portable) {
      const auto xa = detail::quantize_activations(xf.data(), m, k_dim, gs);
      detail::parallel_for(n_dim, 1, options.threads, [&](size_t begin, size_t end) {
        portable::matmul_nk_int8(xa, w, out_dtype, begin, end, out.data);
      });
      return;
    }
    // Kernels without an int8 path compute exactly (Int8 permits approximation, never needs it).
  }
#if defined(__x86_64__)
  if (kernel == KernelChoice::Avx512) {
    // Decode-sized batches read each packed word once per 4 rows of x; larger ones dequantize
    // panels of W once and reuse them across all rows (GEMM). transpose=false always streams
    // W row by row through panels.
    // The exact 4-bit GEMV: bf16 dot products when x is exactly one bf16 part (bf16
    // activations), else f32 FMAs on table-looked-up q, faster than two or three bf16 parts
    // (f16, f32 activations: bench/RESULTS.md, run H19) and than the generic gemv_nk.
    if (transpose && w.spec.bits == 4 && m < kGemvMaxRows4Bit) {
      if (detail::cpu_features().avx512_bf16 && avx512::bf16_parts(xf.data(), m * k_dim) == 1) {
        const auto xs = avx512::prepare_bf16(xf.data(), m, k_dim, w.spec.group_size);
        detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
          avx512::gemv_nk_4bit_bf16(xs, w, out_dtype, begin, end, out.data);
        });
      } else {
        const auto xs = avx512::prepare_f32(xf.data(), m, k_dim, w.spec.group_size, 4);
        detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
          avx512::gemv_nk_f32lut(xs, w, out_dtype, begin, end, out.data);
        });
      }
    } else if (transpose && w.spec.bits == 2 && m < kGemvMaxRows) {
      // 2 bits: the same table lookup (16 positions per word) beats gemv_nk's generic unpacking.
      const auto xs = avx512::prepare_f32(xf.data(), m, k_dim, w.spec.group_size, 2);
      detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
        avx512::gemv_nk_f32lut(xs, w, out_dtype, begin, end, out.data);
      });
    } else if (!transpose && m < kGemvKnMaxRows) {
      avx512::KnPartials partials(m, w);
      if (partials.slices > 1) {  // whole slices per thread
        detail::parallel_for(partials.slices, 1, options.threads, [&](size_t begin, size_t end) {
          for (size_t s = begin; s < end; ++s) {
            avx512::gemv_kn_slice(xf.data(), w, s, 0, n_dim, partials);
          }
        });
      } else if (partials.slices == 1) {  // columns split between threads
        detail::parallel_for(n_dim, avx512::kGemvKnTile, options.threads,
                             [&](size_t begin, size_t end) {
                               avx512::gemv_kn_slice(xf.data(), w, 0, begin, end, partials);
                             });
      }
      detail::parallel_for(n_dim, 64, options.threads, [&](size_t begin, size_t end) {
        avx512::gemv_kn_combine(partials, static_cast<size_t>(w.spec.group_size), out_dtype, begin,
                                end, out.data);
      });
    } else if (transpose && m < (w.spec.bits == 4 ? kGemvMaxRows4Bit : kGemvMaxRows)) {
      detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
        avx512::gemv_nk(xf.data(), m, w, out_dtype, begin, end, out.data);
      });
    } else {
      detail::parallel_for(
          n_dim, avx512::kGemmBlock, options.threads, [&](size_t begin, size_t end) {
            avx512::gemm(xf.data(), m, w, transpose, out_dtype, begin, end, out.data);
          });
    }
    return;
  }
  if (kernel == KernelChoice::Avx2) {
    if (transpose && m <= avx2::kGemvMaxRows) {  // decode: W read once, never dequantized
      const auto xs = avx2::prepare_lut(xf.data(), m, k_dim, w.spec.group_size, w.spec.bits);
      detail::parallel_for(n_dim, 8, options.threads, [&](size_t begin, size_t end) {
        avx2::gemv_nk_lut(xs, w, out_dtype, begin, end, out.data);
      });
    } else {
      detail::parallel_for(n_dim, avx2::kGemmBlock, options.threads, [&](size_t begin, size_t end) {
        avx2::gemm(xf.data(), m, w, transpose, out_dtype, begin, end, out.data);
      });
    }
    return;
  }
#endif
  // Portable: split the output columns; for transpose=false keep splits on group boundaries.
  const size_t grain = transpose ? 1 : static_cast<size_t>(w.spec.group_size);
  detail::parallel_for(n_dim, grain, options.threads, [&](size_t begin, size_t end) {
    portable::matmul(xf.data(), m, w, transpose, out_dtype, begin, end, out.data);
  });
}

double estimated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose,
                           const ExecOptions& options) {
  // One thread, rounded up from bench/RESULTS.md on this machine (AVX-512): decode GEMVs cost
  // 0.02-0.045 ns per multiply-add at 4 bits and up to ~0.09 at other widths; the GEMM path
  // dequantizes every weight once per call (~0.4 ns each) and then runs at ~0.02 ns per
  // multiply-add. AVX2 takes about twice as long, the portable C++ loops far longer. High
  // rather than low: an underestimate blocks a normal scheduler.
  const double macs =
      static_cast<double>(m) * static_cast<double>(w.rows) * static_cast<double>(w.cols);
  const double weights = static_cast<double>(w.rows) * static_cast<double>(w.cols);
  KernelChoice kernel = options.kernel;
  try {
    kernel = resolve_kernel(kernel);
  } catch (const InvalidArgument&) {
    kernel = KernelChoice::Portable;  // the call itself will fail; any estimate will do
  }
#if defined(__x86_64__)
  if (kernel == KernelChoice::Avx2 && transpose && m <= avx2::kGemvMaxRows) {
    // The AVX2 decode GEMV, one thread (bench/RESULTS.md, run h19x, loaded Xeon): ~0.045 ns per
    // multiply-add at m = 1 for 2 and 4 bits (estimated 0.055, not below AVX-512's estimate),
    // up to 0.07 for the other widths, ~0.035 more per further row of x (FMA-bound).
    return weights * (w.spec.bits == 2 || w.spec.bits == 4 ? 0.02 : 0.035) + macs * 0.035;
  }
#endif
  double slowdown = 1.0;  // relative to AVX-512
  if (kernel == KernelChoice::Avx2) slowdown = 2.0;
  // NEON: not measured (no aarch64 machine; QEMU says nothing about speed). 128-bit vectors,
  // two FMA pipes on common server cores: taken as about twice AVX2, high rather than low.
  if (kernel == KernelChoice::Neon) slowdown = 3.5;
  if (kernel == KernelChoice::Portable || kernel == KernelChoice::Reference) slowdown = 40.0;
  double ns;
  if (is_microscaled(w.spec.mode) && !transpose) {
    ns = weights * 3.0 + macs * 0.5;  // portable C++ decode and axpy, for every kernel choice
  } else if (transpose && w.spec.bits == 4 && m < kGemvMaxRows4Bit) {
    ns = macs * 0.05;
  } else if (transpose && m < kGemvMaxRows) {
    ns = macs * 0.1;
  } else {
    ns = weights * 0.4 + macs * 0.03;
  }
  return ns * slowdown;
}

namespace {

// Relative speed of the kernel `options` selects, for the estimates below.
double simd_slowdown(const ExecOptions& options, double portable) {
  try {
    const KernelChoice kernel = resolve_kernel(options.kernel);
    if (kernel == KernelChoice::Neon) return 1.5;  // not measured: 4 lanes instead of 8 assumed
    return kernel == KernelChoice::Avx512 || kernel == KernelChoice::Avx2 ? 1.0 : portable;
  } catch (const InvalidArgument&) {
    return portable;  // the call itself will fail; any estimate will do
  }
}

constexpr double kFreshOutputNsPerByte = 0.6;

}  // namespace

double estimated_quantize_ns(size_t rows, size_t cols, const QuantSpec& spec, DType dtype,
                             const ExecOptions& options) {
  // Measured (bench machine, loaded): ~1.1 ns per value with AVX2/AVX-512, ~7 portable.
  const double values = static_cast<double>(rows) * static_cast<double>(cols);
  if (is_microscaled(spec.mode)) return values * 80.0;  // the scalar quantizer: ~30-60 ns/value
  const double out_bytes_per_value =
      spec.bits / 8.0 + 2.0 * static_cast<double>(dtype_size(dtype)) / spec.group_size;
  return values * (2.0 * simd_slowdown(options, 5.0) + out_bytes_per_value * kFreshOutputNsPerByte);
}

double estimated_dequantize_ns(const QuantizedMatrix& w, bool transpose_out,
                               const ExecOptions& options) {
  // Measured: ~2.1 ns per f32 value (mostly page faults of the output), ~3.9 transposed.
  const double values = static_cast<double>(w.rows) * static_cast<double>(w.cols);
  const double compute = (transpose_out ? 3.0 : 1.0) * simd_slowdown(options, 3.0);
  return values * (compute + static_cast<double>(dtype_size(w.dtype)) * kFreshOutputNsPerByte);
}

}  // namespace nx_quant
