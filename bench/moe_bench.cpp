// BM_MoeBlock: the experts of a Qwen3-30B-A3B-shaped mixture-of-experts block through
// gather_qmm (include/nx_quant/batched.h): 128 experts, top-8 routing, hidden 2048, expert
// intermediate 768; gate/up {128, 768, 2048} and down {128, 2048, 768}, 4-bit affine g64 with
// bf16 scales/biases (random packed words: the kernels' speed does not depend on the values).
// Per iteration: gate and up (x {T, 1, 1, 2048}, rhs {T, 8}), then down on the up output
// ({T, 8, 1, 768}; the SiLU-gate product is elementwise and left out). Routings cycle through
// 32 random top-8 draws so consecutive iterations touch different experts (340 MB in all, far
// beyond the caches). Counters: the distinct experts' bytes per iteration (all three
// projections: packed words, scales, biases) and that read rate, to compare with
// BM_ReadBandwidth.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "nx_quant/batched.h"

namespace {

using namespace nx_quant;

constexpr size_t kExperts = 128, kTopK = 8, kHidden = 2048, kInter = 768, kGroup = 64;
constexpr size_t kRoutings = 32;

struct ExpertWeights {
  std::vector<uint32_t> packed;
  std::vector<uint16_t> scales, biases;
  QuantizedBatch batch;

  ExpertWeights(size_t rows, size_t cols, uint32_t seed) {
    std::mt19937 rng(seed);
    packed.resize(kExperts * rows * cols / 8);
    for (auto& w : packed) w = rng();
    scales.resize(kExperts * rows * cols / kGroup);
    biases.resize(scales.size());
    for (auto& s : scales) s = 0x3a00 | (rng() & 0x7f);  // bf16 ~ 4.9e-4 .. 9.7e-4
    for (auto& b : biases) b = 0xbc00 | (rng() & 0x7f);  // bf16 ~ -0.0078 .. -0.0156
    QuantizedMatrix& m = batch.stacked;
    m.packed = {packed.data(), packed.size() * 4};
    m.scales = {scales.data(), scales.size() * 2};
    m.biases = {biases.data(), biases.size() * 2};
    m.dtype = DType::BF16;
    m.rows = kExperts * rows;
    m.cols = cols;
    m.spec = {4, static_cast<int>(kGroup)};
    batch.batch = {kExperts};
  }

  size_t bytes_per_expert() const {
    return (packed.size() * 4 + scales.size() * 2 + biases.size() * 2) / kExperts;
  }
};

struct Moe {
  ExpertWeights gate{kInter, kHidden, 1}, up{kInter, kHidden, 2}, down{kHidden, kInter, 3};
};

// Several layers' experts, cycled block by block: this machine's L3 is large (480 MB
// reported), so one layer's 340 MB could be served from cache; three layers (1 GB) are not.
constexpr size_t kLayers = 3;

Moe& moe(size_t layer) {
  static std::vector<Moe> layers(kLayers);
  return layers[layer % kLayers];
}

void BM_MoeBlock(benchmark::State& state) {
  const size_t tokens = static_cast<size_t>(state.range(0));
  std::mt19937 rng(42);
  std::vector<std::vector<int64_t>> routings(kRoutings);
  double distinct_total = 0;
  for (auto& r : routings) {
    std::set<int64_t> distinct;
    for (size_t t = 0; t < tokens; ++t) {
      std::vector<int64_t> all(kExperts);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      r.insert(r.end(), all.begin(), all.begin() + kTopK);
      distinct.insert(all.begin(), all.begin() + kTopK);
    }
    distinct_total += static_cast<double>(distinct.size());
  }
  std::vector<uint16_t> x(tokens * kHidden, 0x3f80);  // bf16 1.0
  std::vector<float> g(tokens * kTopK * kInter), u(g.size()), out(tokens * kTopK * kHidden);
  size_t i = 0;
  for (auto _ : state) {
    Moe& w = moe(i);
    const IndexArray rhs(routings[i++ % kRoutings].data(), {tokens, kTopK});
    gather_qmm({x.data(), x.size() * 2}, DType::BF16, {tokens, 1}, 1, w.gate.batch, {}, rhs, true,
               DType::F32, {g.data(), g.size() * 4});
    gather_qmm({x.data(), x.size() * 2}, DType::BF16, {tokens, 1}, 1, w.up.batch, {}, rhs, true,
               DType::F32, {u.data(), u.size() * 4});
    gather_qmm({u.data(), u.size() * 4}, DType::F32, {tokens, kTopK}, 1, w.down.batch, {}, rhs,
               true, DType::F32, {out.data(), out.size() * 4});
    benchmark::DoNotOptimize(out.data());
  }
  const double distinct = distinct_total / kRoutings;
  const Moe& w = moe(0);
  const double bytes =
      distinct * static_cast<double>(w.gate.bytes_per_expert() + w.up.bytes_per_expert() +
                                     w.down.bytes_per_expert());
  state.counters["experts"] = distinct;
  state.counters["MB_read"] = bytes * 1e-6;
  state.counters["GB/s"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_MoeBlock)->Arg(1)->Arg(8)->UseRealTime()->Unit(benchmark::kMillisecond);
