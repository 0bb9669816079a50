// BM_MoeBlock: the experts of a Qwen3-30B-A3B-shaped mixture-of-experts block through
// gather_qmm (include/nx_quant/batched.h): 128 experts, top-8 routing, hidden 2048, expert
// intermediate 768; gate/up {128, 768, 2048} and down {128, 2048, 768}, either 4-bit affine g64
// with bf16 scales/biases (mode 0) or mxfp4 (mode 1: E2M1 codes, one E8M0 scale byte per 32
// values, no biases; gpt-oss's experts), random packed words (the kernels' speed does not
// depend on the values). Args: tokens, mode.
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

constexpr size_t kExperts = 128, kTopK = 8, kHidden = 2048, kInter = 768;
constexpr size_t kRoutings = 32;

struct ExpertWeights {
  std::vector<uint32_t> packed;
  std::vector<uint16_t> scales, biases;  // affine: bf16
  std::vector<uint8_t> scale_bytes;      // mxfp4: E8M0
  QuantizedBatch batch;

  ExpertWeights(size_t rows, size_t cols, uint32_t seed, bool mxfp4) {
    std::mt19937 rng(seed);
    packed.resize(kExperts * rows * cols / 8);
    for (auto& w : packed) w = rng();
    QuantizedMatrix& m = batch.stacked;
    if (mxfp4) {
      scale_bytes.resize(kExperts * rows * cols / 32);
      for (auto& s : scale_bytes) s = static_cast<uint8_t>(116 + (rng() & 3));  // 2^-11 .. 2^-8
      m.scales = {scale_bytes.data(), scale_bytes.size()};
      m.spec = {4, 32, QuantMode::Mxfp4};
    } else {
      scales.resize(kExperts * rows * cols / 64);
      biases.resize(scales.size());
      for (auto& s : scales) s = 0x3a00 | (rng() & 0x7f);  // bf16 ~ 4.9e-4 .. 9.7e-4
      for (auto& b : biases) b = 0xbc00 | (rng() & 0x7f);  // bf16 ~ -0.0078 .. -0.0156
      m.scales = {scales.data(), scales.size() * 2};
      m.biases = {biases.data(), biases.size() * 2};
      m.spec = {4, 64};
    }
    m.packed = {packed.data(), packed.size() * 4};
    m.dtype = DType::BF16;
    m.rows = kExperts * rows;
    m.cols = cols;
    batch.batch = {kExperts};
  }

  size_t bytes_per_expert() const {
    const QuantizedMatrix& m = batch.stacked;
    return (m.packed.bytes + m.scales.bytes + m.biases.bytes) / kExperts;
  }
};

struct Moe {
  ExpertWeights gate, up, down;
  explicit Moe(bool mxfp4)
      : gate(kInter, kHidden, 1, mxfp4),
        up(kInter, kHidden, 2, mxfp4),
        down(kHidden, kInter, 3, mxfp4) {}
};

// Several layers' experts, cycled block by block: this machine's L3 is large (480 MB
// reported), so one layer's 340 MB could be served from cache; three layers (1 GB) are not.
constexpr size_t kLayers = 3;

Moe& moe(size_t layer, bool mxfp4) {
  static std::vector<Moe> affine, micro;
  std::vector<Moe>& layers = mxfp4 ? micro : affine;
  if (layers.empty()) {
    affine.clear();  // one set of 1 GB at a time
    micro.clear();
    layers.reserve(kLayers);  // moving a Moe keeps its buffers, but build them in place
    for (size_t l = 0; l < kLayers; ++l) layers.emplace_back(mxfp4);
  }
  return layers[layer % kLayers];
}

void BM_MoeBlock(benchmark::State& state) {
  const size_t tokens = static_cast<size_t>(state.range(0));
  const bool mxfp4 = state.range(1) == 1;
  state.SetLabel(mxfp4 ? "mxfp4" : "affine 4-bit g64 bf16");
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
  moe(0, mxfp4);  // build (or rebuild for the other mode) the layers outside the timed loop
  size_t i = 0;
  for (auto _ : state) {
    Moe& w = moe(i, mxfp4);
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
  const Moe& w = moe(0, mxfp4);
  const double bytes =
      distinct * static_cast<double>(w.gate.bytes_per_expert() + w.up.bytes_per_expert() +
                                     w.down.bytes_per_expert());
  state.counters["experts"] = distinct;
  state.counters["MB_read"] = bytes * 1e-6;
  state.counters["GB/s"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_MoeBlock)
    ->Args({1, 0})
    ->Args({8, 0})
    ->Args({1, 1})
    ->Args({8, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
