// The cost of ExecOptions::batch_invariant: each iteration runs the same call with the option
// off and on, back to back on the same weight copy's neighbours, and keeps every call's wall
// time; the counters compare the minima (the least disturbed calls: robust on a shared
// machine) and the medians. Decode sizes (M <= 8) rotate over weight copies totalling > 256 MB
// so W comes from DRAM, as in BM_Quantized; larger M reuse one copy (cache-resident panels).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"

using namespace nx_quant;

namespace {

struct Weights {  // `copies` identical quantized matrices (bf16 scales and biases)
  size_t rows, cols, copies;
  QuantSpec spec;
  std::vector<uint32_t> packed;
  std::vector<uint16_t> scales, biases;

  Weights(size_t r, size_t c, int bits, bool rotate) : rows(r), cols(c), spec{bits, 64} {
    const size_t words = r * c * bits / 32, groups = r * c / 64;
    const size_t one = words * 4 + groups * 4;
    copies = rotate ? ((size_t{300} << 20) + one - 1) / one : 1;
    packed.resize(words * copies);
    scales.resize(groups * copies);
    biases.resize(groups * copies);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<uint16_t> dense(r * c);
    for (auto& v : dense) v = f32_to_bf16_bits(normal(rng));
    quantize({dense.data(), dense.size() * 2}, DType::BF16, r, c, spec, {packed.data(), words * 4},
             {scales.data(), groups * 2}, {biases.data(), groups * 2});
    for (size_t i = 1; i < copies; ++i) {
      std::memcpy(packed.data() + i * words, packed.data(), words * 4);
      std::memcpy(scales.data() + i * groups, scales.data(), groups * 2);
      std::memcpy(biases.data() + i * groups, biases.data(), groups * 2);
    }
  }
  QuantizedMatrix matrix(size_t i) const {
    const size_t words = rows * cols * spec.bits / 32, groups = rows * cols / spec.group_size;
    QuantizedMatrix w;
    w.packed = {packed.data() + i % copies * words, words * 4};
    w.scales = {scales.data() + i % copies * groups, groups * 2};
    w.biases = {biases.data() + i % copies * groups, groups * 2};
    w.dtype = DType::BF16;
    w.rows = rows;
    w.cols = cols;
    w.spec = spec;
    return w;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Arguments: N, K, M, bits, threads, transpose (1: W stored [N, K]), x dtype (DType),
// precision (Precision), kernel (KernelChoice; 0 = Auto).
void BM_BatchInvariantCost(benchmark::State& state) {
  const size_t n = state.range(0), k = state.range(1), m = state.range(2);
  const int bits = static_cast<int>(state.range(3));
  const bool transpose = state.range(5) != 0;
  const auto x_dtype = static_cast<DType>(state.range(6));
  ExecOptions off;
  off.threads = static_cast<int>(state.range(4));
  off.precision = static_cast<Precision>(state.range(7));
  off.kernel = static_cast<KernelChoice>(state.range(8));
  const auto& cpu = detail::cpu_features();
  if ((off.kernel == KernelChoice::Avx512 && !cpu.avx512) ||
      (off.kernel == KernelChoice::Avx2 && !cpu.avx2_fma)) {
    state.SkipWithError("this CPU (or NX_QUANT_MAX_ISA) has no such kernel");
    return;
  }
  ExecOptions on = off;
  on.batch_invariant = true;
  const Weights w(transpose ? n : k, transpose ? k : n, bits, m <= 8);
  std::vector<uint8_t> x(m * k * dtype_size(x_dtype));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t i = 0; i < m * k; ++i) store_from_f32(x.data(), x_dtype, i, normal(rng));
  std::vector<float> out(m * n);
  // Wall time, and the calling thread's CPU time: with one thread the latter leaves out the
  // time the thread was descheduled, the most robust figure on a shared machine.
  auto cpu_now = [] {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  };
  auto call = [&](size_t copy, const ExecOptions& options, double& cpu) {
    const double c0 = cpu_now();
    const auto t0 = std::chrono::steady_clock::now();
    quantized_matmul({x.data(), x.size()}, x_dtype, m, w.matrix(copy), transpose, DType::F32,
                     {out.data(), out.size() * 4}, options);
    benchmark::DoNotOptimize(out.data());
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cpu = cpu_now() - c0;
    return wall;
  };
  std::vector<double> t_off, t_on, c_off, c_on;
  size_t copy = 0;
  for (auto _ : state) {
    // Alternate which goes first, so neither always follows the other's cache state.
    const bool off_first = t_off.size() % 2 == 0;
    double ca = 0, cb = 0;
    const double a = call(copy++, off_first ? off : on, ca);
    const double b = call(copy++, off_first ? on : off, cb);
    t_off.push_back(off_first ? a : b);
    t_on.push_back(off_first ? b : a);
    c_off.push_back(off_first ? ca : cb);
    c_on.push_back(off_first ? cb : ca);
    state.SetIterationTime(a + b);
  }
  const double min_off = *std::min_element(t_off.begin(), t_off.end());
  const double min_on = *std::min_element(t_on.begin(), t_on.end());
  state.counters["off us"] = min_off * 1e6;
  state.counters["on us"] = min_on * 1e6;
  state.counters["cost % (min)"] = 100.0 * (min_on / min_off - 1.0);
  state.counters["cost % (median)"] = 100.0 * (median(t_on) / median(t_off) - 1.0);
  if (off.threads == 1) {
    state.counters["cost % (cpu min)"] =
        100.0 * (*std::min_element(c_on.begin(), c_on.end()) /
                     *std::min_element(c_off.begin(), c_off.end()) -
                 1.0);
  }
}

constexpr int kF32 = static_cast<int>(DType::F32);
constexpr int kBF16 = static_cast<int>(DType::BF16);
constexpr int kExact = static_cast<int>(Precision::Exact);
constexpr int kInt8 = static_cast<int>(Precision::Int8);
constexpr int kAuto = static_cast<int>(KernelChoice::Auto);
constexpr int kAvx2 = static_cast<int>(KernelChoice::Avx2);

// Decode sizes on both sides of the 8-row GEMV/GEMM boundary, every width, both layouts,
// bf16 and f32 x, the int8 mode; each with the best kernel here and with AVX2.
void DecodeShapes(benchmark::internal::Benchmark* b) {
  for (int kernel : {kAuto, kAvx2}) {
    for (int m : {1, 8, 9, 16}) b->Args({4096, 4096, m, 4, 2, 1, kF32, kExact, kernel});
    for (int m : {1, 8}) b->Args({4096, 4096, m, 4, 2, 1, kBF16, kExact, kernel});
    for (int bits : {2, 3, 8}) {
      for (int m : {1, 8}) b->Args({4096, 4096, m, bits, 2, 1, kF32, kExact, kernel});
    }
    for (int m : {1, 8}) b->Args({4096, 4096, m, 4, 2, 0, kF32, kExact, kernel});
    b->Args({4096, 4096, 4, 4, 2, 1, kF32, kInt8, kernel});
  }
}

// Prefill sizes (GEMM without the option).
void PrefillShapes(benchmark::internal::Benchmark* b) {
  for (int kernel : {kAuto, kAvx2}) {
    for (int m : {32, 128, 512}) b->Args({4096, 4096, m, 4, 2, 1, kF32, kExact, kernel});
    b->Args({4096, 4096, 128, 8, 2, 1, kF32, kExact, kernel});
    b->Args({4096, 4096, 128, 4, 2, 0, kF32, kExact, kernel});
  }
}

// One thread, the cost in thread CPU time (for a loaded machine): decode and prefill sizes.
void OneThreadShapes(benchmark::internal::Benchmark* b) {
  for (int kernel : {kAuto, kAvx2}) {
    for (int m : {1, 8, 9, 32}) b->Args({4096, 4096, m, 4, 1, 1, kF32, kExact, kernel});
    for (int m : {1, 8, 32}) b->Args({4096, 4096, m, 8, 1, 1, kF32, kExact, kernel});
    for (int m : {1, 8, 32}) b->Args({4096, 4096, m, 4, 1, 0, kF32, kExact, kernel});
    b->Args({4096, 4096, 8, 4, 1, 1, kBF16, kExact, kernel});
  }
}

}  // namespace

BENCHMARK(BM_BatchInvariantCost)
    ->Apply(OneThreadShapes)
    ->UseManualTime()
    ->Iterations(12)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BatchInvariantCost)
    ->Apply(DecodeShapes)
    ->UseManualTime()
    ->MinTime(0.5)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BatchInvariantCost)
    ->Apply(PrefillShapes)
    ->UseManualTime()
    ->Iterations(6)
    ->Unit(benchmark::kMillisecond);
