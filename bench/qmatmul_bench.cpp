// Benchmarks of the fused quantized matmul against the machine's own limits, in one run:
//   * BM_ReadBandwidth: streaming read of 512 MB (the memory-bandwidth ceiling of GEMV),
//   * BM_FmaPeak: the f32 FMA peak of 1 and 2 cores (the compute ceiling of GEMM),
//   * BM_GemvVsRead: the decode GEMV and a read of as many bytes, paired call by call,
//   * BM_Quantized: our kernel (Auto: the best this CPU has), per shape / batch M / bits / threads,
//   * BM_EigenDense: dense f32 Eigen on the dequantized weight, same shape and threads,
//   * BM_Dequantize / BM_Quantize: conversion throughput (checkpoint load / model quantization),
//   * BM_Reference: the scalar oracle (one small case: it is slow).
// Decode-sized cases (M <= 8) rotate over copies of the weight totalling > 256 MB, so every
// call reads W from DRAM, as a model's successive layers do. Run: see bench/RESULTS.md.
// Builds for any x86-64 (and elsewhere): the probes' vector code is compiled per ISA with
// target attributes and chosen at run time, at the level kernel dispatch uses (so
// NX_QUANT_MAX_ISA caps both alike); benchmarks of a kernel this CPU lacks are skipped.
#include <benchmark/benchmark.h>
#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <Eigen/Core>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "parallel.h"

using namespace nx_quant;

namespace {

constexpr size_t kRotationBytes = size_t{300} << 20;  // > 256 MB: weights come from DRAM

struct QuantizedSet {  // `copies` identical quantized matrices stored one after another
  size_t rows, cols, copies;
  QuantSpec spec;
  std::vector<uint32_t> packed;
  std::vector<uint16_t> scales, biases;  // bf16, as MLX-community checkpoints ship them
  QuantizedMatrix matrix(size_t i) const {
    const size_t words = rows * cols * spec.bits / 32, groups = rows * cols / spec.group_size;
    QuantizedMatrix w;
    w.packed = {packed.data() + i * words, words * 4};
    if (is_microscaled(spec.mode)) {  // uint8 scales (in the same storage), no biases
      w.scales = {reinterpret_cast<const uint8_t*>(scales.data()) + i * groups, groups};
    } else {
      w.scales = {scales.data() + i * groups, groups * 2};
      w.biases = {biases.data() + i * groups, groups * 2};
    }
    w.dtype = DType::BF16;
    w.rows = rows;
    w.cols = cols;
    w.spec = spec;
    return w;
  }
  size_t bytes_per_matrix() const {
    if (is_microscaled(spec.mode))
      return rows * cols * spec.bits / 8 + rows * cols / spec.group_size;
    return rows * cols * spec.bits / 8 + 2 * (rows * cols / spec.group_size) * 2;
  }
};

std::vector<uint16_t> random_bf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_bf16_bits(normal(rng));
  return v;
}

// False, and the benchmark skipped, if this CPU (or NX_QUANT_MAX_ISA) cannot run `kernel`.
bool kernel_available(benchmark::State& state, KernelChoice kernel) {
  const auto& cpu = detail::cpu_features();
  const bool ok = (kernel != KernelChoice::Avx512 || cpu.avx512) &&
                  (kernel != KernelChoice::Avx2 || cpu.avx2_fma);
  if (!ok) state.SkipWithError("this CPU (or NX_QUANT_MAX_ISA) has no such kernel");
  return ok;
}

// bits >= 100 selects a microscaled mode: 100 + QuantMode (101 mxfp4, 102 mxfp8, 103 nvfp4).
const QuantizedSet& quantized_set(size_t rows, size_t cols, int bits_arg, bool rotate) {
  const QuantMode mode =
      bits_arg >= 100 ? static_cast<QuantMode>(bits_arg - 100) : QuantMode::Affine;
  const int bits = mode == QuantMode::Affine ? bits_arg : (mode == QuantMode::Mxfp8 ? 8 : 4);
  const int group = mode == QuantMode::Affine ? 64 : (mode == QuantMode::Nvfp4 ? 16 : 32);
  static std::vector<std::unique_ptr<QuantizedSet>> cache;
  for (auto& s : cache) {
    if (s->rows == rows && s->cols == cols && s->spec.bits == bits && s->spec.mode == mode &&
        (s->copies > 1) == rotate)
      return *s;
  }
  auto set = std::make_unique<QuantizedSet>();
  set->rows = rows;
  set->cols = cols;
  set->spec = {bits, group, mode};
  const size_t words = rows * cols * bits / 32, groups = rows * cols / group;
  const size_t one = words * 4 + groups * 4;
  set->copies = rotate ? (kRotationBytes + one - 1) / one : 1;
  set->packed.resize(words * set->copies);
  set->scales.resize(groups * set->copies);
  set->biases.resize(groups * set->copies);
  const auto dense = random_bf16(rows * cols, 1);
  const bool micro = is_microscaled(mode);
  quantize({dense.data(), dense.size() * 2}, DType::BF16, rows, cols, set->spec,
           {set->packed.data(), words * 4}, {set->scales.data(), micro ? groups : groups * 2},
           {micro ? nullptr : set->biases.data(), micro ? 0 : groups * 2});
  for (size_t c = 1; c < set->copies; ++c) {
    std::memcpy(set->packed.data() + c * words, set->packed.data(), words * 4);
    if (micro) {  // uint8 scales: matrix(c) reads them at byte offset c * groups
      auto* bytes = reinterpret_cast<uint8_t*>(set->scales.data());
      std::memcpy(bytes + c * groups, bytes, groups);
      continue;
    }
    std::memcpy(set->scales.data() + c * groups, set->scales.data(), groups * 2);
    std::memcpy(set->biases.data() + c * groups, set->biases.data(), groups * 2);
  }
  cache.push_back(std::move(set));
  return *cache.back();
}

// Arguments: N, K, M, bits, threads, kernel (KernelChoice; 0 = Auto), precision (Precision;
// 1 = Int8), the activations' dtype (DType: 0 = f32, 2 = bf16). transpose = true
// (weight stored [N, K]). x is random normal: f32 x uses every mantissa bit (the bf16-dot
// GEMV then needs three bf16 parts per value; bf16 x needs one).
// One matmul case from a benchmark's arguments: the weight set, random x, out and options.
struct MatmulCase {
  size_t n, k, m;
  DType x_dtype;
  const QuantizedSet* set;
  std::vector<uint8_t> x;
  std::vector<float> out;
  ExecOptions options;

  MatmulCase(const benchmark::State& state, bool rotate, bool transpose)
      : n(state.range(0)),
        k(state.range(1)),
        m(state.range(2)),
        x_dtype(static_cast<DType>(state.range(7))),
        x(m * k * dtype_size(x_dtype)),
        out(m * n) {
    const int bits = static_cast<int>(state.range(3));
    // transpose=false stores W as [K, N] (rows = K).
    set = transpose ? &quantized_set(n, k, bits, rotate) : &quantized_set(k, n, bits, rotate);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t i = 0; i < m * k; ++i) store_from_f32(x.data(), x_dtype, i, normal(rng));
    options.threads = static_cast<int>(state.range(4));
    options.kernel = static_cast<KernelChoice>(state.range(5));
    options.precision = static_cast<Precision>(state.range(6));
  }
  void run(size_t copy, bool transpose) {
    quantized_matmul({x.data(), x.size()}, x_dtype, m, set->matrix(copy % set->copies), transpose,
                     DType::F32, {out.data(), out.size() * 4}, options);
    benchmark::DoNotOptimize(out.data());
  }
  size_t bytes() const { return set->bytes_per_matrix() + x.size(); }
};

void run_quantized(benchmark::State& state, bool rotate, bool transpose = true) {
  if (!kernel_available(state, static_cast<KernelChoice>(state.range(5)))) return;
  MatmulCase c(state, rotate, transpose);
  const size_t n = c.n, k = c.k, m = c.m;
  size_t i = 0;
  for (auto _ : state) c.run(i++, transpose);
  const double bytes = static_cast<double>(c.bytes());
  state.counters["GB/s"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Quantized(benchmark::State& state) {
  run_quantized(state, state.range(2) <= 8);
}

// The same weight every call (cache-resident when it fits): compute cost without DRAM, and the
// figure the NIF bench (bench/nif_bench.exs) compares its per-call time with.
void BM_QuantizedCached(benchmark::State& state) {
  run_quantized(state, false);
}

// transpose=false: W stored [K, N] (Axon's dense-kernel layout), quantized along N.
void BM_QuantizedKn(benchmark::State& state) {
  run_quantized(state, state.range(2) <= 8, false);
}

// transpose=false with the weight cache-resident: the kernel's own speed.
void BM_QuantizedKnCached(benchmark::State& state) {
  run_quantized(state, false, false);
}

// The AVX-512 GEMV with f32 FMAs, which CPUs without AVX512_BF16 run (the bf16-dot GEMV off).
void BM_QuantizedFma(benchmark::State& state) {
  if (!detail::cpu_features().avx512) {
    state.SkipWithError("the f32-FMA AVX-512 GEMV needs AVX-512");
    return;
  }
  detail::CpuFeatures allowed;
  allowed.avx2_fma = allowed.avx512 = allowed.avx512_vnni = true;
  detail::ScopedCpuFeatures no_bf16(allowed);
  run_quantized(state, true);
}

// Dense f32 Eigen on a weight of the same shape (Eigen parallelises GEMM with OpenMP;
// its GEMV is single-threaded whatever the setting). Rotates over > 256 MB for M <= 8.
void BM_EigenDense(benchmark::State& state) {
  const size_t n = state.range(0), k = state.range(1), m = state.range(2);
  const int threads = static_cast<int>(state.range(4));
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const size_t one = n * k * 4;
  const size_t copies = m <= 8 ? (kRotationBytes + one - 1) / one : 1;
  static std::vector<Matrix> weights;
  static size_t cached_n = 0, cached_k = 0;
  if (cached_n != n || cached_k != k || weights.size() != copies) {
    weights.assign(copies, Matrix::Constant(n, k, 0.01f));
    cached_n = n;
    cached_k = k;
  }
  Matrix x = Matrix::Constant(m, k, 0.5f), out(m, n);
  Eigen::setNbThreads(threads);
  omp_set_num_threads(threads);
  size_t i = 0;
  for (auto _ : state) {
    out.noalias() = x * weights[i++ % copies].transpose();
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(one + m * k * 4) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Reference(benchmark::State& state) {
  const size_t n = state.range(0), k = state.range(1), m = state.range(2);
  const QuantizedSet& set = quantized_set(n, k, static_cast<int>(state.range(3)), false);
  std::vector<float> x(m * k, 0.5f), out(m * n);
  ExecOptions options;
  options.kernel = KernelChoice::Reference;
  for (auto _ : state) {
    quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, set.matrix(0), true, DType::F32,
                     {out.data(), out.size() * 4}, options);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}

// quantize / dequantize of a bf16 4096 x 4096 weight (a checkpoint load or conversion), per
// bits and threads. GB/s counts the bytes read plus the bytes written.
// Arguments: bits, threads, kernel (0 = Auto, 2 = Portable).
void BM_Dequantize(benchmark::State& state) {
  const size_t rows = 4096, cols = 4096;
  const QuantizedSet& set = quantized_set(rows, cols, static_cast<int>(state.range(0)), false);
  // Four 32 MB outputs in turn, so that the writes go to DRAM as BM_Copy's do (one would
  // mostly stay in the 32 MB L3).
  std::vector<std::vector<uint16_t>> outs(4, std::vector<uint16_t>(rows * cols));
  ExecOptions options;
  options.threads = static_cast<int>(state.range(1));
  options.kernel = static_cast<KernelChoice>(state.range(2));
  if (!kernel_available(state, options.kernel)) return;
  size_t turn = 0;
  for (auto _ : state) {
    std::vector<uint16_t>& out = outs[turn++ % outs.size()];
    dequantize(set.matrix(0), {out.data(), out.size() * 2}, false, options);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GB/s"] =
      benchmark::Counter(static_cast<double>(set.bytes_per_matrix() + rows * cols * 2) * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
}

// Arguments as BM_Dequantize's; bits >= 100 a microscaled mode as in quantized_set (101 mxfp4,
// 102 mxfp8, 103 nvfp4), whose kernel may also be 1 (Reference: the scalar oracle).
void BM_Quantize(benchmark::State& state) {
  if (!kernel_available(state, static_cast<KernelChoice>(state.range(2)))) return;
  const size_t rows = 4096, cols = 4096;
  const int bits_arg = static_cast<int>(state.range(0));
  const QuantMode mode =
      bits_arg >= 100 ? static_cast<QuantMode>(bits_arg - 100) : QuantMode::Affine;
  const bool micro = is_microscaled(mode);
  const int bits = micro ? (mode == QuantMode::Mxfp8 ? 8 : 4) : bits_arg;
  const int group = micro ? (mode == QuantMode::Nvfp4 ? 16 : 32) : 64;
  const QuantSpec spec{bits, group, mode};
  const auto dense = random_bf16(rows * cols, 2);
  std::vector<uint32_t> packed(rows * cols * bits / 32);
  // uint8 scales and no biases for the microscaled modes
  std::vector<uint16_t> scales(rows * cols / group), biases(micro ? 0 : rows * cols / group);
  const size_t scale_bytes = micro ? scales.size() : scales.size() * 2;
  ExecOptions options;
  options.threads = static_cast<int>(state.range(1));
  options.kernel = static_cast<KernelChoice>(state.range(2));
  for (auto _ : state) {
    quantize({dense.data(), dense.size() * 2}, DType::BF16, rows, cols, spec,
             {packed.data(), packed.size() * 4}, {scales.data(), scale_bytes},
             {biases.data(), biases.size() * 2}, options);
    benchmark::DoNotOptimize(packed.data());
  }
  const double bytes = dense.size() * 2 + packed.size() * 4 + scale_bytes * (micro ? 1 : 2);
  state.counters["GB/s"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ns/value"] = benchmark::Counter(
      static_cast<double>(rows * cols) * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

// memcpy of 64 MB over `threads` threads: the read+write ceiling the conversions compare with.
void BM_Copy(benchmark::State& state) {
  const size_t bytes = size_t{64} << 20;
  static std::vector<char> from(bytes, 1), to(bytes);
  const int threads = static_cast<int>(state.range(0));
  for (auto _ : state) {
    std::vector<std::thread> pool;
    const size_t per = bytes / threads;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] { std::memcpy(to.data() + t * per, from.data() + t * per, per); });
    }
    for (auto& t : pool) t.join();
    benchmark::DoNotOptimize(to.data());
  }
  state.counters["GB/s"] =
      benchmark::Counter(2.0 * bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void ConversionArgs(benchmark::internal::Benchmark* b) {
  for (int kernel : {static_cast<int>(KernelChoice::Auto), static_cast<int>(KernelChoice::Avx2),
                     static_cast<int>(KernelChoice::Portable)}) {
    for (int threads : {1, 2}) {
      for (int bits : {4, 3, 6, 8}) b->Args({bits, threads, kernel});
    }
  }
}

// The microscaled quantizer: each mode on every kernel, 1 thread (and Auto on 2).
void MicroscaledQuantizeArgs(benchmark::internal::Benchmark* b) {
  for (int mode : {101, 102, 103}) {
    for (int kernel :
         {static_cast<int>(KernelChoice::Auto), static_cast<int>(KernelChoice::Avx2),
          static_cast<int>(KernelChoice::Portable), static_cast<int>(KernelChoice::Reference)}) {
      b->Args({mode, 1, kernel});
    }
    b->Args({mode, 2, static_cast<int>(KernelChoice::Auto)});
  }
}

// ---- the machine's limits: read bandwidth and f32 FMA peak ---------------------------------
// Both use the widest vectors kernel dispatch uses (AVX-512, AVX2, else SSE2; plain C++ off
// x86), so that a kernel is compared with what its own ISA can do.

enum class ProbeIsa { Avx512, Avx2, Sse2, Scalar };

ProbeIsa probe_isa() {
#if defined(__x86_64__)
  const auto& cpu = detail::cpu_features();
  if (cpu.avx512) return ProbeIsa::Avx512;
  return cpu.avx2_fma ? ProbeIsa::Avx2 : ProbeIsa::Sse2;
#else
  return ProbeIsa::Scalar;
#endif
}

const char* probe_isa_name(ProbeIsa isa) {
  switch (isa) {
    case ProbeIsa::Avx512:
      return "avx512";
    case ProbeIsa::Avx2:
      return "avx2";
    case ProbeIsa::Sse2:
      return "sse2";
    default:
      return "scalar";
  }
}

// Each stream_* sums `floats` floats from p (a multiple of 64: 256 bytes per step, four
// independent accumulators), optionally prefetching (into L2) 4 KB ahead as the GEMV kernels do.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) float stream_avx512(const float* p, size_t floats,
                                                       bool prefetch) {
  __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
  for (size_t i = 0; i < floats; i += 64) {
    if (prefetch) {
      for (int line = 0; line < 4; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(p + i + 1024 + 16 * line), _MM_HINT_T1);
    }
    a = _mm512_add_ps(a, _mm512_loadu_ps(p + i));
    b = _mm512_add_ps(b, _mm512_loadu_ps(p + i + 16));
    c = _mm512_add_ps(c, _mm512_loadu_ps(p + i + 32));
    d = _mm512_add_ps(d, _mm512_loadu_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
}

__attribute__((target("avx2"))) float stream_avx2(const float* p, size_t floats, bool prefetch) {
  __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
  for (size_t i = 0; i < floats; i += 64) {
    if (prefetch) {
      for (int line = 0; line < 4; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(p + i + 1024 + 16 * line), _MM_HINT_T1);
    }
    a = _mm256_add_ps(a, _mm256_loadu_ps(p + i));
    b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
    c = _mm256_add_ps(c, _mm256_loadu_ps(p + i + 16));
    d = _mm256_add_ps(d, _mm256_loadu_ps(p + i + 24));
    a = _mm256_add_ps(a, _mm256_loadu_ps(p + i + 32));
    b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 40));
    c = _mm256_add_ps(c, _mm256_loadu_ps(p + i + 48));
    d = _mm256_add_ps(d, _mm256_loadu_ps(p + i + 56));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
  float sum = 0;
  for (float v : lanes) sum += v;
  return sum;
}

float stream_sse2(const float* p, size_t floats, bool prefetch) {
  __m128 a = _mm_setzero_ps(), b = a, c = a, d = a;
  for (size_t i = 0; i < floats; i += 64) {
    if (prefetch) {
      for (int line = 0; line < 4; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(p + i + 1024 + 16 * line), _MM_HINT_T1);
    }
    for (size_t j = i; j < i + 64; j += 16) {
      a = _mm_add_ps(a, _mm_loadu_ps(p + j));
      b = _mm_add_ps(b, _mm_loadu_ps(p + j + 4));
      c = _mm_add_ps(c, _mm_loadu_ps(p + j + 8));
      d = _mm_add_ps(d, _mm_loadu_ps(p + j + 12));
    }
  }
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, _mm_add_ps(_mm_add_ps(a, b), _mm_add_ps(c, d)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

float stream_scalar(const float* p, size_t floats, bool prefetch) {
  float acc[16] = {};
  for (size_t i = 0; i < floats; i += 64) {
    if (prefetch) {
      for (int line = 0; line < 4; ++line) __builtin_prefetch(p + i + 1024 + 16 * line, 0, 2);
    }
    for (size_t j = i; j < i + 64; j += 16) {
      for (int l = 0; l < 16; ++l) acc[l] += p[j + l];
    }
  }
  float sum = 0;
  for (float v : acc) sum += v;
  return sum;
}

float stream(const float* p, size_t floats, bool prefetch) {
  switch (probe_isa()) {
#if defined(__x86_64__)
    case ProbeIsa::Avx512:
      return stream_avx512(p, floats, prefetch);
    case ProbeIsa::Avx2:
      return stream_avx2(p, floats, prefetch);
    case ProbeIsa::Sse2:
      return stream_sse2(p, floats, prefetch);
#endif
    default:
      return stream_scalar(p, floats, prefetch);
  }
}

// Streaming read of 512 MB split over `threads` threads; with a second argument of 1, each
// thread also prefetches 4 KB ahead. The ratios in RESULTS.md use the larger of the two.
void BM_ReadBandwidth(benchmark::State& state) {
  const size_t bytes = size_t{512} << 20;
  static std::vector<float> buffer(bytes / 4, 1.0f);
  const int threads = static_cast<int>(state.range(0));
  const bool prefetch = state.range(1) != 0;
  for (auto _ : state) {
    std::vector<std::thread> pool;
    std::vector<float> sums(threads);
    const size_t per = buffer.size() / threads;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] { sums[t] = stream(buffer.data() + t * per, per, prefetch); });
    }
    for (auto& t : pool) t.join();
    benchmark::DoNotOptimize(sums.data());
  }
  state.SetLabel(probe_isa_name(probe_isa()));
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(bytes) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

// Each fma_chains_* runs `steps` rounds of independent f32 FMA chains (acc = acc * m + c, which
// converges to c / (1 - m): no overflow, no denormals) in registers, enough chains to cover the
// FMA latency of two pipes; returns a sum so that none is optimised away.
constexpr size_t kFmaSteps = size_t{1} << 22;
#if defined(__x86_64__)
constexpr int kFmaChains512 = 16;  // of 32 zmm registers
constexpr int kFmaChains256 = 12;  // of 16 ymm registers

__attribute__((target("avx512f"))) float fma_chains_avx512(size_t steps) {
  const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
  __m512 acc[kFmaChains512];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (size_t s = 0; s < steps; ++s) {
#pragma GCC unroll 16
    for (int j = 0; j < kFmaChains512; ++j) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
  }
  __m512 sum = acc[0];
  for (int j = 1; j < kFmaChains512; ++j) sum = _mm512_add_ps(sum, acc[j]);
  return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"))) float fma_chains_avx2(size_t steps) {
  const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
  __m256 acc[kFmaChains256];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (size_t s = 0; s < steps; ++s) {
#pragma GCC unroll 16
    for (int j = 0; j < kFmaChains256; ++j) acc[j] = _mm256_fmadd_ps(acc[j], m, c);
  }
  __m256 sum = acc[0];
  for (int j = 1; j < kFmaChains256; ++j) sum = _mm256_add_ps(sum, acc[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0;
  for (float v : lanes) total += v;
  return total;
}
#endif

// The f32 FMA peak of `threads` cores (one thread each), at the vector width kernel dispatch
// uses: the ceiling the GEMM's GFLOP/s are a fraction of. Skipped without FMA (SSE2-only
// x86-64, or off x86).
void BM_FmaPeak(benchmark::State& state) {
  const ProbeIsa isa = probe_isa();
  if (isa != ProbeIsa::Avx512 && isa != ProbeIsa::Avx2) {
    state.SkipWithError("no FMA vector unit in use (AVX2 or AVX-512)");
    return;
  }
#if defined(__x86_64__)
  const int threads = static_cast<int>(state.range(0));
  const int lanes = isa == ProbeIsa::Avx512 ? 16 : 8;
  const int chains = isa == ProbeIsa::Avx512 ? kFmaChains512 : kFmaChains256;
  for (auto _ : state) {
    std::vector<std::thread> pool;
    std::vector<float> sums(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        sums[t] =
            isa == ProbeIsa::Avx512 ? fma_chains_avx512(kFmaSteps) : fma_chains_avx2(kFmaSteps);
      });
    }
    for (auto& t : pool) t.join();
    benchmark::DoNotOptimize(sums.data());
  }
  state.SetLabel(probe_isa_name(isa));
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * threads * static_cast<double>(kFmaSteps) * chains * lanes,
                         benchmark::Counter::kIsIterationInvariantRate);
#endif
}

// Streams byte ranges of a 512 MB buffer on request with 1 or 2 threads, the second one kept
// alive between requests (blocked, not spinning, so that it takes no core from the kernel
// measured in between): a std::thread per request would add its start-up to a ~300 us read.
// Both threads meet at a spin barrier before reading, so the time is that of the read alone.
class PairedReader {
 public:
  PairedReader() : buffer_(kBytes / 4, 1.0f), helper_([this] { serve(); }) {}
  ~PairedReader() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    helper_.join();
  }
  static constexpr size_t kBytes = size_t{512} << 20;

  // Seconds to read [offset, offset + bytes) (offset and bytes multiples of 512), split in
  // halves over `threads` threads, with or without software prefetch (as BM_ReadBandwidth,
  // with the same vectors).
  double read(size_t offset, size_t bytes, int threads, bool prefetch) {
    const float* begin = buffer_.data() + offset / 4;
    const size_t floats = bytes / 4;
    if (threads == 1) {
      const auto t0 = std::chrono::steady_clock::now();
      sink_ += stream(begin, floats, prefetch);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    const size_t half = floats / 2 / 128 * 128;
    arrived_.store(0);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = {begin + half, floats - half, prefetch};
      ++generation_;
    }
    wake_.notify_one();
    arrived_.fetch_add(1);
    while (arrived_.load() < 2) {
    }
    const auto t0 = std::chrono::steady_clock::now();
    sink_ += stream(begin, half, prefetch);
    while (!helper_done_.exchange(false)) {
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

 private:
  struct Job {
    const float* begin = nullptr;
    size_t floats = 0;
    bool prefetch = false;
  };

  void serve() {
    uint64_t seen = 0;
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      arrived_.fetch_add(1);
      while (arrived_.load() < 2) {
      }
      helper_sink_ += stream(job.begin, job.floats, job.prefetch);
      helper_done_.store(true);
    }
  }

  std::vector<float> buffer_;
  std::mutex mutex_;
  std::condition_variable wake_;
  Job job_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::atomic<int> arrived_{0};
  std::atomic<bool> helper_done_{false};
  float sink_ = 0, helper_sink_ = 0;
  std::thread helper_;
};

// The GEMV's bytes per second as a fraction of the machine's read bandwidth, both measured in
// the same iterations: each iteration times one kernel call (on the next weight copy, from
// DRAM) and then reads as many bytes, from DRAM too, with the same number of threads, plainly
// and with software prefetch. The VM's bandwidth drifts by +-15% over minutes; pairing each
// call with its own reads cancels that drift out of the ratio. Same arguments as BM_Quantized,
// plus a last one: 0 times each call as the reads leave the thread pool (its worker asleep, so
// the call includes waking it: ~10 us of futex call on the caller, ~40-50 us before the worker
// runs, in this VM), 1 wakes the pool with an empty job (untimed) just before the timed call,
// as in a decode loop whose matmuls follow each other. The reads' threads meet at a barrier
// before their timer starts, so only the second compares like with like.
void gemv_vs_read(benchmark::State& state, bool transpose) {
  if (!kernel_available(state, static_cast<KernelChoice>(state.range(5)))) return;
  static PairedReader reader;
  MatmulCase c(state, true, transpose);
  const int threads = c.options.threads;
  const bool warm_pool = state.range(8) != 0;
  const size_t bytes = c.bytes();
  const size_t read_bytes = bytes / 512 * 512;
  double kernel_s = 0, plain_s = 0, prefetch_s = 0;
  size_t i = 0, offset = 0;
  for (auto _ : state) {
    if (warm_pool) detail::parallel_for(threads, 1, threads, [](size_t, size_t) {});
    const auto t0 = std::chrono::steady_clock::now();
    c.run(i++, transpose);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(dt);
    kernel_s += dt;
    if (offset + read_bytes > PairedReader::kBytes) offset = 0;
    plain_s += reader.read(offset, read_bytes, threads, false);
    offset += read_bytes;
    if (offset + read_bytes > PairedReader::kBytes) offset = 0;
    prefetch_s += reader.read(offset, read_bytes, threads, true);
    offset += read_bytes;
  }
  const double iterations = static_cast<double>(state.iterations());
  const double read_gbs = read_bytes * iterations / std::min(plain_s, prefetch_s) * 1e-9;
  const double kernel_gbs = bytes * iterations / kernel_s * 1e-9;
  state.counters["GB/s"] = kernel_gbs;
  state.counters["read GB/s"] = read_gbs;
  state.counters["% of read"] = 100.0 * kernel_gbs / read_gbs;
}

void BM_GemvVsRead(benchmark::State& state) {
  gemv_vs_read(state, true);
}

// The same with transpose = false (W stored [K, N]; n and k name the logical shape).
void BM_GemvVsReadKn(benchmark::State& state) {
  gemv_vs_read(state, false);
}

constexpr int kAuto = static_cast<int>(KernelChoice::Auto);
constexpr int kAvx2 = static_cast<int>(KernelChoice::Avx2);
constexpr int kExact = static_cast<int>(Precision::Exact);
constexpr int kF32 = static_cast<int>(DType::F32);
constexpr int kBF16 = static_cast<int>(DType::BF16);
constexpr int kInt8 = static_cast<int>(Precision::Int8);

void Shapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      for (int m : {1, 8, 32, 128, 512}) b->Args({n, k, m, 4, threads, kAuto, kExact, kF32});
    }
    for (int bits : {2, 3, 8}) {
      for (int m : {1, 8, 32, 128, 512})
        b->Args({4096, 4096, m, bits, threads, kAuto, kExact, kF32});
    }
  }
}

// The headline GEMV (M = 1, 4-bit g64, 2 threads) against the read bandwidth measured alongside:
// exact with f32 and bf16 activations, and the int8 mode.
void PairedShapes(benchmark::internal::Benchmark* b) {
  for (int warm_pool : {1, 0}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      b->Args({n, k, 1, 4, 2, kAuto, kExact, kBF16, warm_pool});
      b->Args({n, k, 1, 4, 2, kAuto, kExact, kF32, warm_pool});
      b->Args({n, k, 1, 4, 2, kAuto, kInt8, kF32, warm_pool});
    }
  }
}

// The microscaled modes' decode GEMV (bits argument 100 + QuantMode), bf16 and f32
// activations, 2 threads, pool awake, against the read bandwidth measured alongside.
void PairedMicroscaledShapes(benchmark::internal::Benchmark* b) {
  for (int mode : {101, 102, 103}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}}) {
      b->Args({n, k, 1, mode, 2, kAuto, kExact, kBF16, 1});
      b->Args({n, k, 1, mode, 2, kAuto, kExact, kF32, 1});
      b->Args({n, k, 1, mode, 2, kAvx2, kExact, kBF16, 1});
    }
    b->Args({4096, 4096, 1, mode, 2, kAvx2, kExact, kF32, 1});
    b->Args({4096, 4096, 8, mode, 2, kAuto, kExact, kBF16, 1});
  }
}

// transpose = false (W stored [K, N]) for the microscaled modes, M = 1, 2 threads, pool awake.
void PairedMicroscaledKnShapes(benchmark::internal::Benchmark* b) {
  for (int mode : {101, 102, 103}) {
    b->Args({4096, 4096, 1, mode, 2, kAuto, kExact, kBF16, 1});
    b->Args({4096, 4096, 1, mode, 2, kAvx2, kExact, kBF16, 1});
  }
}

// f32 activations (Nx's default; f16 ones too) at M = 1 .. 8, 4-bit g64, 2 threads, pool
// awake: the exact GEMV against the read bandwidth measured alongside.
void PairedF32Shapes(benchmark::internal::Benchmark* b) {
  constexpr int kF16 = static_cast<int>(DType::F16);
  for (auto [n, k] : {std::pair{4096, 4096}, {4096, 11008}}) {
    for (int m : {1, 2, 4, 8}) b->Args({n, k, m, 4, 2, kAuto, kExact, kF32, 1});
    for (int m : {1, 8}) b->Args({n, k, m, 4, 2, kAuto, kExact, kF16, 1});
  }
}

// The AVX2 decode GEMVs (KernelChoice::Avx2), 4096 x 14336, 2 threads, pool awake: every width,
// M = 1 .. 8, f32 and bf16 activations (exact), and the int8 mode at 2, 4 and 8 bits (M = 8
// runs the int8 GEMV once the dispatch sends m = 8 there, exactly until then).
void PairedAvx2Shapes(benchmark::internal::Benchmark* b) {
  for (int bits : {4, 2, 3, 8, 5, 6}) {
    for (int m : {1, 2, 4, 8}) {
      b->Args({4096, 14336, m, bits, 2, kAvx2, kExact, kF32, 1});
      if (bits == 4 || bits == 2) b->Args({4096, 14336, m, bits, 2, kAvx2, kExact, kBF16, 1});
    }
  }
  for (int bits : {4, 2, 8}) {
    for (int m : {1, 2, 4, 8}) b->Args({4096, 14336, m, bits, 2, kAvx2, kInt8, kF32, 1});
  }
}

// bf16 activations (what MLX-community models compute in), decode shapes.
void Bf16ActivationShapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      for (int m : {1, 8}) b->Args({n, k, m, 4, threads, kAuto, kExact, kBF16});
    }
  }
}

void KnShapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      for (int m : {1, 8}) b->Args({n, k, m, 4, threads, kAuto, kExact, kF32});
    }
  }
}

void FmaShapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      for (int m : {1, 8}) b->Args({n, k, m, 4, threads, kAuto, kExact, kF32});
    }
  }
}

// The opt-in int8 fast mode (decode shapes, m < 8) and the AVX2 kernel on the same machine.
void Int8Shapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      for (int m : {1, 4}) b->Args({n, k, m, 4, threads, kAuto, kInt8, kF32});
    }
    for (int bits : {2, 3, 8}) b->Args({4096, 4096, 1, bits, threads, kAuto, kInt8, kF32});
  }
}

void Avx2Shapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    for (int m : {1, 8, 128, 512}) b->Args({4096, 4096, m, 4, threads, kAvx2, kExact, kF32});
  }
}

// The AVX2 GEMM (m > 8) on the 4096 x 14336 at 2 threads: GFLOP/s against BM_FmaPeak/2.
void Avx2GemmShapes(benchmark::internal::Benchmark* b) {
  for (int m : {32, 128, 512}) b->Args({4096, 14336, m, 4, 2, kAvx2, kExact, kF32});
  for (int bits : {2, 3, 8}) b->Args({4096, 14336, 128, bits, 2, kAvx2, kExact, kF32});
}

// The per-ISA table (bench/RESULTS.md, "Per-ISA tables"): the 4096 x 14336 weight, 2
// threads (every core of these machines), kernel Auto, so that NX_QUANT_MAX_ISA picks the ISA
// the whole table runs on. GEMV: every width and microscaled mode, M = 1 .. 8, f32 and bf16 x,
// exact, plus the int8 mode at 4 bits; each call paired with a read of as many bytes.
void TableGemvShapes(benchmark::internal::Benchmark* b) {
  for (int bits : {4, 2, 3, 5, 6, 8, 101, 102, 103}) {
    for (int m : {1, 2, 4, 8}) {
      for (int dtype : {kF32, kBF16}) b->Args({4096, 14336, m, bits, 2, kAuto, kExact, dtype, 1});
    }
  }
  for (int bits : {4, 101, 103}) {  // the int8 mode: affine 4-bit, mxfp4, nvfp4
    for (int m : {1, 8}) b->Args({4096, 14336, m, bits, 2, kAuto, kInt8, kF32, 1});
  }
}

// GEMM (prefill): GFLOP/s against BM_FmaPeak/2 of the same run.
void TableGemmShapes(benchmark::internal::Benchmark* b) {
  for (int m : {32, 128, 512}) b->Args({4096, 14336, m, 4, 2, kAuto, kExact, kF32});
  for (int bits : {2, 3, 8, 101}) b->Args({4096, 14336, 128, bits, 2, kAuto, kExact, kF32});
}

// Like for like with ggml's test-backend-ops perf (which multiplies the same weight every
// call): the same weight every call, 4-bit g64 and mxfp4, M = 1, 8, 512, f32 x, 2 threads.
void TableSameWeightShapes(benchmark::internal::Benchmark* b) {
  for (int bits : {4, 101}) {
    for (int m : {1, 8, 512}) b->Args({4096, 14336, m, bits, 2, kAuto, kExact, kF32});
  }
  // ggml's Q4_0 / Q4_K multiply int8 activations (Q8_0 / Q8_K): the int8 mode is the like for like.
  for (int bits : {4, 101}) {  // ggml's MXFP4 also multiplies Q8_0 activations
    for (int m : {1, 8}) b->Args({4096, 14336, m, bits, 2, kAuto, kInt8, kF32});
  }
}

void DenseShapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2}) {
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}}) {
      for (int m : {1, 8, 32, 128, 512}) b->Args({n, k, m, 32, threads});
    }
  }
}

}  // namespace

BENCHMARK(BM_ReadBandwidth)
    ->Args({1, 0})
    ->Args({2, 0})
    ->Args({1, 1})
    ->Args({2, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FmaPeak)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GemvVsRead)->Apply(PairedShapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvVsRead)
    ->Name("BM_GemvVsReadF32")
    ->Apply(PairedF32Shapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvVsRead)
    ->Name("BM_MicroscaledGemvVsRead")
    ->Apply(PairedMicroscaledShapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvVsReadKn)
    ->Name("BM_MicroscaledKnVsRead")
    ->Apply(PairedMicroscaledKnShapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvVsRead)
    ->Name("BM_GemvVsReadAvx2")
    ->Apply(PairedAvx2Shapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvVsRead)
    ->Name("BM_TableGemv")
    ->Apply(TableGemvShapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Quantized)
    ->Name("BM_TableGemm")
    ->Apply(TableGemmShapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_QuantizedCached)
    ->Name("BM_TableSameWeight")
    ->Apply(TableSameWeightShapes)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Quantized)->Apply(Shapes)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Quantized)
    ->Name("BM_QuantizedBf16x")
    ->Apply(Bf16ActivationShapes)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_QuantizedKn)->Apply(KnShapes)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_QuantizedKnCached)
    ->Args({4096, 4096, 1, 4, 1, kAuto, kExact, kF32})
    ->Args({4096, 4096, 1, 4, 2, kAuto, kExact, kF32})
    ->Args({4096, 4096, 1, 2, 2, kAuto, kExact, kF32})
    ->Args({4096, 4096, 1, 8, 2, kAuto, kExact, kF32})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_QuantizedFma)->Apply(FmaShapes)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Quantized)
    ->Name("BM_QuantizedInt8")
    ->Apply(Int8Shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Quantized)
    ->Name("BM_QuantizedAvx2")
    ->Apply(Avx2Shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Quantized)
    ->Name("BM_QuantizedAvx2Gemm")
    ->Apply(Avx2GemmShapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_QuantizedCached)
    ->Args({4096, 4096, 1, 4, 1, kAuto, kExact, kF32})
    ->Args({4096, 4096, 1, 4, 2, kAuto, kExact, kF32})
    ->Args({4096, 4096, 1, 4, 1, kAuto, kInt8, kF32})
    ->Args({4096, 4096, 1, 4, 2, kAuto, kInt8, kF32})
    ->Args({4096, 4096, 1, 4, 1, kAuto, kExact, kBF16})
    ->Args({4096, 4096, 1, 4, 2, kAuto, kExact, kBF16})
    ->Args({4096, 4096, 1, 4, 1, kAvx2, kExact, kF32})
    ->Args({4096, 4096, 1, 4, 2, kAvx2, kExact, kF32})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EigenDense)->Apply(DenseShapes)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Copy)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Dequantize)->Apply(ConversionArgs)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Quantize)->Apply(ConversionArgs)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Quantize)
    ->Name("BM_QuantizeMicroscaled")
    ->Apply(MicroscaledQuantizeArgs)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Reference)->Args({512, 4096, 1, 4, 1, 0, 0})->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
