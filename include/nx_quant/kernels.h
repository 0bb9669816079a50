// Public API of the kernel library: quantize, dequantize and the fused quantized matmul.
//
// Plain C++17, no BEAM. Every function validates all of its arguments (spec, shapes, buffer
// sizes, size_t overflow) before touching memory and throws nx_quant::InvalidArgument with a
// precise message on the first problem. Buffers are described with their byte sizes so that a
// caller holding foreign memory (a NIF binary, an mmap'd file) cannot cause an out-of-bounds
// access by passing a short buffer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "nx_quant/dtype.h"
#include "nx_quant/format.h"

namespace nx_quant {

struct ConstBuffer {
  const void* data = nullptr;
  size_t bytes = 0;
};

struct MutableBuffer {
  void* data = nullptr;
  size_t bytes = 0;
};

// A quantized matrix as stored: `rows` x `cols` logical values packed along `cols`.
// packed: rows x (cols*bits/32) uint32 words; scales, biases: rows x (cols/group_size) `dtype`.
struct QuantizedMatrix {
  ConstBuffer packed;
  ConstBuffer scales;
  ConstBuffer biases;
  DType dtype = DType::F32;  // of scales and biases
  size_t rows = 0;
  size_t cols = 0;
  QuantSpec spec;
};

// Which implementation runs. Auto picks the fastest one the CPU supports. Reference is the
// plain scalar oracle (see reference.h) and exists for tests and benchmarks. Neon is the
// aarch64 kernel set (its int8 mode uses dotprod or i8mm where the CPU has them).
enum class KernelChoice : uint8_t {
  Auto = 0,
  Reference = 1,
  Portable = 2,
  Avx2 = 3,
  Avx512 = 4,
  Neon = 5
};

// How quantized_matmul treats the activations x.
//   Exact: x stays f32; the result is the dequantize-then-matmul within f32 accumulation error.
//   Int8:  opt-in fast mode for decode-shaped calls (transpose = true, m <= 8), as llama.cpp's
//          Q8 activations: each row of x is quantized in blocks of 32 values to int8
//          (d = max|x| / 127, x_q = round(x / d)) and multiplied with the raw q values by
//          integer dot products (AVX-512 VNNI; AVX2 vpmaddubsw or AVX-VNNI for 2, 4 and 8
//          bits; NEON dotprod or i8mm); each weight group then adds
//          scale * sum_blocks(d * int_dot) + bias * sum(x), the last with x's exact f32 sum.
//          The extra error per output is at most sum_k |scale_k * q_k| * d_k / 2 (see
//          README); results stay deterministic. mxfp4 and nvfp4 take the same route with
//          twice their E2M1 values as the integers (every kernel but NEON; README, "The int8
//          mode of mxfp4 and nvfp4"); mxfp8 computes exactly. Other shapes, and kernels
//          without an int8 path (AVX-512 without VNNI; AVX2 at 3, 5 and 6 bits; NEON without
//          dotprod), compute exactly. Reference always computes exactly.
enum class Precision : uint8_t { Exact = 0, Int8 = 1 };

struct ExecOptions {
  int threads = 0;  // 0: the library default (see threading policy); 1: the calling thread only
  KernelChoice kernel = KernelChoice::Auto;
  Precision precision = Precision::Exact;
  // quantized_matmul only: compute every output row in one fixed order that depends on that
  // row of x and on W only, so a row's result is bit-identical whatever m, however the rows
  // are split between calls, whatever the thread count (batch invariance: a batched server
  // gives the same tokens as single requests). Every m then runs through row blocks of a decode
  // GEMV (never the GEMM panels), which costs time from about 8 rows on (bench/RESULTS.md,
  // "Batch invariance option"); with Precision::Int8 the int8 mode applies at every m.
  bool batch_invariant = false;
};

// Throws InvalidArgument unless the matrix's spec, shape and buffer sizes are consistent.
void validate_quantized_matrix(const QuantizedMatrix& w, const char* name);

// Quantize a dense `rows` x `cols` matrix of `dtype` (row-major) exactly as MLX does.
// packed receives rows x cols*bits/32 uint32; scales and biases rows x cols/group_size `dtype`.
void quantize(ConstBuffer dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              MutableBuffer packed, MutableBuffer scales, MutableBuffer biases,
              const ExecOptions& options = {});

// w = scale * q + bias, computed as MLX does (product rounded to w.dtype, then the sum
// rounded). out receives rows x cols values of w.dtype, or cols x rows (the transpose) when
// transpose_out is set (a transposed view of a quantized matrix dequantizes this way).
void dequantize(const QuantizedMatrix& w, MutableBuffer out, bool transpose_out = false,
                const ExecOptions& options = {});

// out[M, N] = x[M, K] . W, accumulated in f32, stored as out_dtype.
//   transpose = true:  w stores W^T, i.e. w.rows = N, w.cols = K  (the usual Linear layout)
//   transpose = false: w stores W,   i.e. w.rows = K, w.cols = N
void quantized_matmul(ConstBuffer x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, MutableBuffer out,
                      const ExecOptions& options = {});

// A deliberately high estimate of quantized_matmul's run time in nanoseconds on this CPU with
// the kernel `options` selects (one thread assumed), for callers that must choose where to run
// it: the NIF keeps calls estimated under about 1 ms on a normal BEAM scheduler, since moving
// to a dirty one costs tens of microseconds. Shapes are not validated.
double estimated_matmul_ns(size_t m, const QuantizedMatrix& w, bool transpose,
                           const ExecOptions& options = {});

// The same kind of estimate for quantize and dequantize (one thread, high rather than low),
// counting the first write of fresh output memory (~0.6 ns per byte in page faults here).
double estimated_quantize_ns(size_t rows, size_t cols, const QuantSpec& spec, DType dtype,
                             const ExecOptions& options = {});
double estimated_dequantize_ns(const QuantizedMatrix& w, bool transpose_out,
                               const ExecOptions& options = {});

}  // namespace nx_quant
