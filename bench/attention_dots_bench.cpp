// The two attention dots of a decode step as the plain-Nx decoder (bench/decoder_model.exs)
// makes them through the native backend, bit-exact with Nx.BinaryBackend (dense::matmul), for
// one layer of Llama-3.2-1B (8 KV heads, 4 query heads each, head dim 64) over an f32 KV cache:
//   scores = q {8, 4, 64} . k_cache {8, ctx, 64}   (contract 64, batch 8: k read along its rows)
//   values = p {8, 4, ctx} . v_cache {8, ctx, 64}  (contract ctx, batch 8)
// Each layer has its own cache (16 copies), so K and V come from memory as in the model.
// GB/s counts the cache bytes read; compare with BM_ReadBandwidth in the same run:
//   build-bench/nx_quant_bench --benchmark_filter='BM_ReadBandwidth|BM_AttentionDot'
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "nx_quant/dense_ops.h"

using namespace nx_quant;

namespace {

constexpr int64_t kKvHeads = 8, kGroup = 4, kHeadDim = 64, kLayers = 16;

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

dense::View view3(const float* data, int64_t d0, int64_t d1, int64_t d2, int64_t s0, int64_t s1,
                  int64_t s2) {
  dense::View v;
  v.data = data;
  v.count = static_cast<size_t>(d0 * d1 * d2);
  v.type = dense::Type::F32;
  v.strides = {s0, s1, s2};
  return v;
}

// Arguments: context length, 0 = scores (q . k^T), 1 = values (p . v), threads.
void BM_AttentionDot(benchmark::State& state) {
  const int64_t ctx = state.range(0);
  const bool values = state.range(1) != 0;
  const int threads = static_cast<int>(state.range(2));
  const size_t cache = static_cast<size_t>(kKvHeads * ctx * kHeadDim);
  const auto caches = random_floats(cache * kLayers, 1);
  const auto lhs =
      random_floats(static_cast<size_t>(kKvHeads * kGroup * (values ? ctx : kHeadDim)), 2);
  std::vector<float> out(static_cast<size_t>(kKvHeads * kGroup * (values ? kHeadDim : ctx)));
  int64_t layer = 0;
  for (auto _ : state) {
    const float* c = caches.data() + static_cast<size_t>(layer) * cache;
    layer = (layer + 1) % kLayers;
    if (values) {
      // a = p {8, 4, ctx}; b = v {8, ctx, 64} iterated as {batch, k = ctx, n = 64}.
      const auto a = view3(lhs.data(), kKvHeads, kGroup, ctx, kGroup * ctx, ctx, 1);
      const auto b = view3(c, kKvHeads, ctx, kHeadDim, ctx * kHeadDim, kHeadDim, 1);
      dense::matmul(kKvHeads, kGroup, kHeadDim, ctx, a, b, dense::Type::F32, out.data(), threads);
    } else {
      // a = q {8, 4, 64}; b = k {8, ctx, 64} iterated as {batch, k = 64, n = ctx}.
      const auto a = view3(lhs.data(), kKvHeads, kGroup, kHeadDim, kGroup * kHeadDim, kHeadDim, 1);
      const auto b = view3(c, kKvHeads, kHeadDim, ctx, ctx * kHeadDim, 1, kHeadDim);
      dense::matmul(kKvHeads, kGroup, ctx, kHeadDim, a, b, dense::Type::F32, out.data(), threads);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(cache) * 4e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_AttentionDot)
    ->ArgsProduct({{256, 2048}, {0, 1}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
