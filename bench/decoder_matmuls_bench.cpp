// The fused matmuls of one decode step of a Llama-family model, in C++ with no BEAM: the same
// calls bench/decoder_bench.exs makes through the NIF (per layer q, k, v, o, gate, up, down;
// then the tied embedding as the LM head), M = 1, 4-bit g64 bf16 weights, each layer its own
// weights (so every call reads from DRAM, as in the model). It gives the kernels' best for the
// decoder's shapes; the Elixir benchmark's "matmuls alone" minus this is the NIF's and the
// BEAM's share. Per-shape counters say which calls fall short of the read bandwidth
// (compare with BM_ReadBandwidth in the same run):
//   build-bench/nx_quant_bench --benchmark_filter='BM_ReadBandwidth|BM_DecoderMatmuls'
#include <benchmark/benchmark.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "nx_quant/kernels.h"

using namespace nx_quant;

namespace {

struct Model {
  size_t hidden, intermediate, q_dim, kv_dim, vocab, layers;
};

// Llama-3.2-1B (arg 0) and Qwen3-8B's layer shapes (arg 1; 4 layers as the Elixir benchmark).
Model model_for(int64_t which) {
  if (which == 0) return {2048, 8192, 2048, 512, 128256, 16};
  return {4096, 12288, 4096, 1024, 151936, 4};
}

struct Weight {  // one 4-bit g64 matrix with random packed words and bf16 scales/biases
  size_t rows, cols;
  std::vector<uint32_t> packed;
  std::vector<uint16_t> scales, biases;
  Weight(size_t rows_, size_t cols_, std::mt19937& rng) : rows(rows_), cols(cols_) {
    packed.resize(rows * cols / 8);
    scales.resize(rows * cols / 64);
    biases.resize(scales.size());
    for (auto& w : packed) w = static_cast<uint32_t>(rng());
    std::normal_distribution<float> normal(0.0f, 0.002f);
    for (auto& s : scales) s = f32_to_bf16_bits(normal(rng));
    for (auto& b : biases) b = f32_to_bf16_bits(normal(rng));
  }
  QuantizedMatrix matrix() const {
    QuantizedMatrix w;
    w.packed = {packed.data(), packed.size() * 4};
    w.scales = {scales.data(), scales.size() * 2};
    w.biases = {biases.data(), biases.size() * 2};
    w.dtype = DType::BF16;
    w.rows = rows;
    w.cols = cols;
    w.spec = {4, 64};
    return w;
  }
  size_t bytes() const { return packed.size() * 4 + scales.size() * 4; }
};

struct Call {
  std::string name;
  const Weight* weight;
  size_t x_len;
};

struct DecoderWeights {
  std::vector<std::unique_ptr<Weight>> weights;
  std::vector<Call> calls;
  size_t bytes = 0;
  explicit DecoderWeights(const Model& m) {
    std::mt19937 rng(3);
    auto add = [&](const char* name, size_t rows, size_t cols) {
      weights.push_back(std::make_unique<Weight>(rows, cols, rng));
      calls.push_back({name, weights.back().get(), cols});
      bytes += weights.back()->bytes();
    };
    for (size_t l = 0; l < m.layers; ++l) {
      add("q", m.q_dim, m.hidden);
      add("k", m.kv_dim, m.hidden);
      add("v", m.kv_dim, m.hidden);
      add("o", m.hidden, m.q_dim);
      add("gate", m.intermediate, m.hidden);
      add("up", m.intermediate, m.hidden);
      add("down", m.hidden, m.intermediate);
    }
    add("lm_head", m.vocab, m.hidden);
  }
};

// Arguments: the model (0 = Llama-3.2-1B x16, 1 = Qwen3-8B x4), the activations' dtype (DType:
// 0 = f32, Nx's default; 2 = bf16), threads.
void BM_DecoderMatmuls(benchmark::State& state) {
  static std::map<int64_t, std::unique_ptr<DecoderWeights>> cache;
  auto& slot = cache[state.range(0)];
  if (!slot) slot = std::make_unique<DecoderWeights>(model_for(state.range(0)));
  const DecoderWeights& d = *slot;
  const auto x_dtype = static_cast<DType>(state.range(1));
  ExecOptions options;
  options.threads = static_cast<int>(state.range(2));

  size_t widest = 0, tallest = 0;
  for (const auto& c : d.calls) {
    widest = std::max(widest, c.x_len);
    tallest = std::max(tallest, c.weight->rows);
  }
  std::vector<uint8_t> x(widest * dtype_size(x_dtype));
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t i = 0; i < widest; ++i) store_from_f32(x.data(), x_dtype, i, normal(rng));
  std::vector<float> out(tallest);

  std::map<std::string, double> seconds;
  std::map<std::string, double> bytes;
  for (auto _ : state) {
    for (const auto& c : d.calls) {
      const auto t0 = std::chrono::steady_clock::now();
      quantized_matmul({x.data(), c.x_len * dtype_size(x_dtype)}, x_dtype, 1, c.weight->matrix(),
                       true, DType::F32, {out.data(), c.weight->rows * 4}, options);
      seconds[c.name] +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      bytes[c.name] += static_cast<double>(c.weight->bytes());
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(d.bytes) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB"] = static_cast<double>(d.bytes) * 1e-6;
  // Each kind of call's own rate: the small K/V projections pay the fixed cost per call.
  for (const auto& [name, s] : seconds) state.counters[name + " GB/s"] = bytes[name] / s * 1e-9;
}

}  // namespace

BENCHMARK(BM_DecoderMatmuls)
    ->Args({0, 0, 2})
    ->Args({0, 2, 2})
    ->Args({1, 0, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
