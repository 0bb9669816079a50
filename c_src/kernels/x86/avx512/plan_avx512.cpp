// The AVX-512 module's plan of each operation (see plan.h): which loop runs for which shape and
// width, with which thread split, and what the activations need. Compiled without AVX-512
// flags (CMakeLists.txt): it only chooses; the kernels it calls are the *_avx512.cpp files.
#include "cpu_features.h"
#include "int8_activations.h"
#include "parallel.h"
#include "plan.h"
#include "simd_kernels.h"
#include "x86/avx2/gemv_avx2.h"

namespace nx_quant::avx512 {

namespace {

// Below this many rows of x, transpose=false runs the [K, N] GEMV.
constexpr size_t kGemvKnMaxRows = 8;
// Below this many rows of x, transpose=true runs a GEMV kernel.
constexpr size_t kGemvMaxRows = 8;
// Up to this many rows of x the int8 mode applies (as kernels.h documents for every kernel).
constexpr size_t kInt8MaxRows = 8;
// The exact GEMV unpacks 4-bit weights cheaply enough to beat the GEMM panels up to m = 8 too
// (measured: 4096 x 4096, m = 8, 2 threads: 2.1 ms vs 3.8 ms); other widths are faster through
// the panels from m = 8 on (8 bits: 4.2 ms vs 5.5 ms).
constexpr size_t kGemvMaxRows4Bit = 9;

void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, void* scales, void* biases, int threads) {
  detail::parallel_for(rows, 1, threads, [&](size_t begin, size_t end) {
    quantize_rows(dense, dtype, cols, spec, begin, end, packed, scales, biases);
  });
}

void dequantize(const QuantizedMatrix& w, bool transpose_out, void* out, int threads) {
  detail::parallel_for(w.rows, 1, threads, [&](size_t begin, size_t end) {
    dequantize_rows(w, transpose_out, begin, end, out);
  });
}

// transpose = false, m < kGemvKnMaxRows: partial sums over slices of K, then combined in order.
void gemv_kn(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, void* out,
             int threads) {
  const size_t n_dim = w.cols;
  KnPartials partials(m, w);
  if (partials.slices > 1) {  // whole slices per thread
    detail::parallel_for(partials.slices, 1, threads, [&](size_t begin, size_t end) {
      for (size_t s = begin; s < end; ++s) gemv_kn_slice(x, w, s, 0, n_dim, partials);
    });
  } else if (partials.slices == 1) {  // columns split between threads
    detail::parallel_for(n_dim, kGemvKnTile, threads, [&](size_t begin, size_t end) {
      gemv_kn_slice(x, w, 0, begin, end, partials);
    });
  }
  detail::parallel_for(n_dim, 64, threads, [&](size_t begin, size_t end) {
    gemv_kn_combine(partials, static_cast<size_t>(w.spec.group_size), out_dtype, begin, end, out);
  });
}

void quantized_matmul(const detail::Activations& x, const QuantizedMatrix& w, bool transpose,
                      DType out_dtype, void* out, const ExecOptions& options) {
  const size_t m = x.m, k_dim = x.k;
  const size_t n_dim = transpose ? w.rows : w.cols;
  const int threads = options.threads;
  const int bits = w.spec.bits;
  std::vector<float> scratch;
  const float* xf = x.f32(scratch);  // every AVX-512 loop reads (or re-packs) f32 x
  auto over_columns = [&](size_t grain, auto&& kernel) {
    detail::parallel_for(n_dim, grain, threads,
                         [&](size_t begin, size_t end) { kernel(begin, end); });
  };
  if (options.precision == Precision::Int8 && transpose && m <= kInt8MaxRows &&
      detail::cpu_features().avx512_vnni) {
    const auto xa =
        detail::quantize_activations(xf, m, k_dim, static_cast<size_t>(w.spec.group_size));
    const auto operand = prepare_int8(xa, bits);
    return over_columns(
        8, [&](size_t begin, size_t end) { gemv_nk_int8(operand, w, out_dtype, begin, end, out); });
  }
  // Without VNNI the int8 mode computes exactly (it permits approximation, never needs it).
  // Decode-sized batches read each packed word once per 4 rows of x; larger ones dequantize
  // panels of W once and reuse them across all rows (GEMM). transpose=false streams W row by
  // row through the [K, N] GEMV's slices.
  if (transpose && bits == 4 && m < kGemvMaxRows4Bit) {
    // The exact 4-bit GEMV: bf16 dot products when x is exactly one bf16 part (bf16
    // activations), else f32 FMAs on table-looked-up q, faster than two or three bf16 parts
    // (f16, f32 activations: bench/RESULTS.md, run H19) and than the generic gemv_nk.
    if (detail::cpu_features().avx512_bf16 && bf16_parts(xf, m * k_dim) == 1) {
      const auto xs = prepare_bf16(xf, m, k_dim, w.spec.group_size);
      return over_columns(8, [&](size_t begin, size_t end) {
        gemv_nk_4bit_bf16(xs, w, out_dtype, begin, end, out);
      });
    }
    const auto xs = prepare_f32(xf, m, k_dim, w.spec.group_size, 4);
    return over_columns(
        8, [&](size_t begin, size_t end) { gemv_nk_f32lut(xs, w, out_dtype, begin, end, out); });
  }
  if (transpose && bits == 2 && m < kGemvMaxRows) {
    // 2 bits: the same table lookup (16 positions per word) beats gemv_nk's generic unpacking.
    const auto xs = prepare_f32(xf, m, k_dim, w.spec.group_size, 2);
    return over_columns(
        8, [&](size_t begin, size_t end) { gemv_nk_f32lut(xs, w, out_dtype, begin, end, out); });
  }
  if (transpose && (bits == 3 || bits == 5 || bits == 6) && m < kGemvMaxRows) {
    // 3, 5 and 6 bits: the AVX2 GEMV that isolates each value in place by one AND, with its L2
    // prefetch, reads W from DRAM 1.5-2.5x faster than gemv_nk's generic unpacking below
    // (bench/RESULTS.md, per-ISA tables); every AVX-512 CPU has AVX2 + FMA.
    const auto xs = avx2::prepare_lut(xf, m, k_dim, w.spec.group_size, bits);
    return over_columns(
        8, [&](size_t begin, size_t end) { avx2::gemv_nk_lut(xs, w, out_dtype, begin, end, out); });
  }
  if (!transpose && m < kGemvKnMaxRows) return gemv_kn(xf, m, w, out_dtype, out, threads);
  if (transpose && m < kGemvMaxRows) {
    return over_columns(
        8, [&](size_t begin, size_t end) { gemv_nk(xf, m, w, out_dtype, begin, end, out); });
  }
  over_columns(kGemmBlock, [&](size_t begin, size_t end) {
    gemm(xf, m, w, transpose, out_dtype, begin, end, out);
  });
}

double estimated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose) {
  // One thread, rounded up from bench/RESULTS.md on the AVX-512 machine: decode GEMVs cost
  // 0.02-0.045 ns per multiply-add at 4 bits and up to ~0.09 at other widths. High rather than
  // low: an underestimate blocks a normal scheduler.
  return detail::avx512_calibrated_matmul_ns(m, w, transpose);
}

}  // namespace

const detail::KernelPlan kPlan = {quantize, dequantize, quantized_matmul, estimated_matmul_ns,
                                  1.0,      1.0};

}  // namespace nx_quant::avx512
