// Batched quantized matmul and gather_qmm against an independent dense reference: each expert is
// quantized on its own, the stack is built by concatenating their buffers, and every output
// block is checked against the oracle (dequantize in double, then dot) of its own expert.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "nx_quant/batched.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

// E experts of `rows` x `cols`, each quantized separately, plus their concatenation.
struct Experts {
  std::vector<std::unique_ptr<OwnedQuantized>> each;
  std::vector<uint8_t> packed, scales, biases;
  QuantizedBatch batch;

  Experts(Shape batch_shape, size_t rows, size_t cols, QuantSpec spec, DType dtype, uint32_t seed) {
    const size_t count = shape_size(batch_shape, "test");
    for (size_t e = 0; e < count; ++e) {
      TypedBuffer dense(dtype, random_values(rows * cols, seed + 7 * e, cols));
      each.push_back(std::make_unique<OwnedQuantized>(dense, rows, cols, spec));
      const QuantizedMatrix& m = each.back()->matrix;
      append(packed, m.packed);
      append(scales, m.scales);
      append(biases, m.biases);
    }
    QuantizedMatrix& s = batch.stacked;
    s.packed = {packed.data(), packed.size()};
    s.scales = {scales.data(), scales.size()};
    s.biases = {biases.data(), biases.size()};
    s.dtype = dtype;
    s.rows = rows * count;
    s.cols = cols;
    s.spec = spec;
    batch.batch = batch_shape;
  }

  static void append(std::vector<uint8_t>& to, ConstBuffer b) {
    const auto* p = static_cast<const uint8_t*>(b.data);
    to.insert(to.end(), p, p + b.bytes);
  }
};

// Checks out block `pos` (m x n, f32) against x block `xi` times expert `e`.
void expect_block(const float* out_block, const TypedBuffer& x, size_t xi, size_t m, size_t k,
                  const QuantizedMatrix& expert, bool transpose, const std::string& where) {
  const size_t n = transpose ? expert.rows : expert.cols;
  std::vector<float> xf(m * k);
  for (size_t i = 0; i < m * k; ++i) xf[i] = x.at(xi * m * k + i);
  std::vector<float> expected(m * n);
  reference::quantized_matmul(xf.data(), DType::F32, m, expert, transpose, DType::F32,
                              expected.data());
  TypedBuffer wd(expert.dtype, expert.rows * expert.cols);
  reference::dequantize(expert, wd.bytes.data());
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < n; ++j) {
      double sum_abs = 0;
      for (size_t kk = 0; kk < k; ++kk) {
        const float w = transpose ? wd.at(j * expert.cols + kk) : wd.at(kk * expert.cols + j);
        sum_abs += std::abs(xf[i * k + kk] * w);
      }
      ASSERT_NEAR(out_block[i * n + j], expected[i * n + j], 2e-5 * sum_abs + 1e-30)
          << where << " at (" << i << ", " << j << ")";
    }
  }
}

ExecOptions with_kernel(KernelChoice kernel) {
  ExecOptions o;
  o.kernel = kernel;
  return o;
}

const KernelChoice kKernels[] = {KernelChoice::Auto, KernelChoice::Portable,
                                 KernelChoice::Reference};

}  // namespace

TEST(BatchedShapes, BroadcastFollowsNumpy) {
  EXPECT_EQ(broadcast_shapes({3, 1}, {4}, "t"), (Shape{3, 4}));
  EXPECT_EQ(broadcast_shapes({}, {4}, "t"), (Shape{4}));
  EXPECT_EQ(broadcast_shapes({2, 1, 5}, {7, 1}, "t"), (Shape{2, 7, 5}));
  EXPECT_EQ(broadcast_shapes({0}, {1}, "t"), (Shape{0}));
  EXPECT_THROW(broadcast_shapes({3}, {4}, "t"), InvalidArgument);
  EXPECT_THROW(broadcast_shapes({0}, {2}, "t"), InvalidArgument);
}

TEST(BatchedMatmul, TheIssuesCaseMultipliesEachMatrix) {
  // x {2, 5, 128} . w {2, 64, 128}^T is {2, 5, 64}: x[b] times expert b, not the 128-row stack.
  Experts w({2}, 64, 128, {4, 64}, DType::F32, 1);
  TypedBuffer x(DType::F32, random_values(2 * 5 * 128, 5));
  std::vector<float> out(2 * 5 * 64);
  batched_quantized_matmul(x.cbuf(), DType::F32, {2}, 5, w.batch, true, DType::F32,
                           {out.data(), out.size() * 4});
  for (size_t b = 0; b < 2; ++b) {
    expect_block(out.data() + b * 5 * 64, x, b, 5, 128, w.each[b]->matrix, true,
                 "batch " + std::to_string(b));
  }
}

TEST(BatchedMatmul, BroadcastsBatchAxesBothLayoutsBitsGroupSizes) {
  struct C {
    int bits, gs;
    bool transpose;
    size_t m;
  };
  for (const C c : {C{4, 64, true, 1}, C{4, 64, false, 3}, C{2, 32, true, 9}, C{3, 128, false, 1},
                    C{8, 32, true, 2}, C{6, 64, false, 8}, C{5, 32, true, 4}}) {
    const size_t k = 128, n = c.transpose ? 40 : 128;  // transpose=false: N is the packed axis
    const size_t rows = c.transpose ? n : k, cols = c.transpose ? k : n;
    Experts w({4}, rows, cols, {c.bits, c.gs}, DType::BF16, 100 + c.bits);
    // x batch [3, 1] against w batch [4]: out batch [3, 4]
    TypedBuffer x(DType::F32, random_values(3 * c.m * k, 17));
    std::vector<float> out(12 * c.m * n);
    for (KernelChoice kernel : kKernels) {
      batched_quantized_matmul(x.cbuf(), DType::F32, {3, 1}, c.m, w.batch, c.transpose, DType::F32,
                               {out.data(), out.size() * 4}, with_kernel(kernel));
      for (size_t i = 0; i < 3; ++i) {
        for (size_t e = 0; e < 4; ++e) {
          expect_block(out.data() + (i * 4 + e) * c.m * n, x, i, c.m, k, w.each[e]->matrix,
                       c.transpose,
                       "bits " + std::to_string(c.bits) + " gs " + std::to_string(c.gs) +
                           " transpose " + std::to_string(c.transpose) + " kernel " +
                           std::to_string(static_cast<int>(kernel)) + " pos " + std::to_string(i) +
                           "," + std::to_string(e));
        }
      }
    }
  }
}

TEST(BatchedMatmul, UnbatchedXBroadcastsOverExperts) {
  Experts w({3}, 32, 64, {4, 32}, DType::F16, 9);
  TypedBuffer x(DType::F16, random_values(2 * 64, 3));
  TypedBuffer out(DType::F32, 3 * 2 * 32);
  batched_quantized_matmul(x.cbuf(), DType::F16, {}, 2, w.batch, true, DType::F32, out.mbuf());
  for (size_t e = 0; e < 3; ++e) {
    expect_block(reinterpret_cast<const float*>(out.bytes.data()) + e * 64, x, 0, 2, 64,
                 w.each[e]->matrix, true, "expert " + std::to_string(e));
  }
}

TEST(BatchedMatmul, TwoDimensionalWeightKeepsLeadingAxesAsRows) {
  Experts w({}, 48, 64, {4, 64}, DType::F32, 2);
  TypedBuffer x(DType::F32, random_values(2 * 3 * 64, 4));
  std::vector<float> batched(6 * 48), plain(6 * 48);
  batched_quantized_matmul(x.cbuf(), DType::F32, {2, 3}, 1, w.batch, true, DType::F32,
                           {batched.data(), batched.size() * 4});
  quantized_matmul(x.cbuf(), DType::F32, 6, w.each[0]->matrix, true, DType::F32,
                   {plain.data(), plain.size() * 4});
  EXPECT_EQ(batched, plain);
}

TEST(BatchedMatmul, BatchShapesThatDoNotBroadcastAreAnError) {
  Experts w({4}, 32, 64, {4, 32}, DType::F32, 2);
  TypedBuffer x(DType::F32, 3 * 64);
  std::vector<float> out(12 * 32);
  try {
    batched_quantized_matmul(x.cbuf(), DType::F32, {3}, 1, w.batch, true, DType::F32,
                             {out.data(), 3 * 32 * 4});
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("[3] and [4] do not broadcast"), std::string::npos)
        << e.what();
  }
  // A wrong output size is caught too.
  EXPECT_THROW(batched_quantized_matmul(x.cbuf(), DType::F32, {1, 3}, 1, w.batch, true, DType::F32,
                                        {out.data(), 4}),
               InvalidArgument);
  // Rows that do not split into the batch.
  QuantizedBatch bad = w.batch;
  bad.batch = {5};
  EXPECT_THROW(batched_quantized_matmul(x.cbuf(), DType::F32, {3}, 1, bad, true, DType::F32,
                                        {out.data(), 3 * 32 * 4}),
               InvalidArgument);
}

TEST(GatherQmm, MlxLmTopKLayout) {
  // x [T, 1, 1, K] (x batch [T, 1], m = 1), rhs [T, k] -> out [T, k, 1, N]
  const size_t T = 5, topk = 3, E = 6, K = 128, N = 64;
  for (bool transpose : {true, false}) {
    const size_t rows = transpose ? N : K, cols = transpose ? K : N;
    Experts w({E}, rows, cols, {4, 64}, DType::BF16, 40);
    TypedBuffer x(DType::BF16, random_values(T * K, 8));
    const std::vector<int64_t> rhs = {0, 5, 2, 2, 1, 0, 5, 5, 3, 4, 0, 2, 1, 2, 3};
    IndexArray rhs_idx{rhs.data(), {T, topk}};
    EXPECT_EQ(gather_qmm_out_batch({T, 1}, w.batch, {}, rhs_idx), (Shape{T, topk}));
    for (KernelChoice kernel : kKernels) {
      std::vector<float> out(T * topk * N, std::numeric_limits<float>::quiet_NaN());
      gather_qmm(x.cbuf(), DType::BF16, {T, 1}, 1, w.batch, {}, rhs_idx, transpose, DType::F32,
                 {out.data(), out.size() * 4}, with_kernel(kernel));
      for (size_t t = 0; t < T; ++t) {
        for (size_t j = 0; j < topk; ++j) {
          const size_t e = static_cast<size_t>(rhs[t * topk + j]);
          expect_block(out.data() + (t * topk + j) * N, x, t, 1, K, w.each[e]->matrix, transpose,
                       "token " + std::to_string(t) + " slot " + std::to_string(j));
        }
      }
    }
  }
}

TEST(GatherQmm, BothIndicesRepeatsAndBroadcast) {
  const size_t K = 64, N = 32, m = 2;
  Experts w({2, 2}, N, K, {3, 32}, DType::F32, 60);  // a 2-D batch, flattened by the indices
  TypedBuffer x(DType::F32, random_values(3 * m * K, 61));
  const std::vector<int64_t> lhs = {2, 0, 2, 1};  // shape [4, 1]
  const std::vector<int64_t> rhs = {3, 3, 0};     // shape [3]
  std::vector<float> out(4 * 3 * m * N);
  gather_qmm(x.cbuf(), DType::F32, {3}, m, w.batch, {lhs.data(), {4, 1}}, {rhs.data(), {3}}, true,
             DType::F32, {out.data(), out.size() * 4});
  for (size_t i = 0; i < 4; ++i) {
    for (size_t j = 0; j < 3; ++j) {
      expect_block(out.data() + (i * 3 + j) * m * N, x, static_cast<size_t>(lhs[i]), m, K,
                   w.each[static_cast<size_t>(rhs[j])]->matrix, true,
                   "pos " + std::to_string(i) + "," + std::to_string(j));
    }
  }
}

TEST(GatherQmm, AbsentIndicesAreAnArange) {
  const size_t K = 64, N = 32;
  Experts w({3}, N, K, {4, 32}, DType::F32, 70);
  TypedBuffer x(DType::F32, random_values(3 * K, 71));
  // rhs absent: arange over w's batch [3]; lhs [3] picks x blocks 2, 2, 0.
  const std::vector<int64_t> lhs = {2, 2, 0};
  std::vector<float> out(3 * N);
  gather_qmm(x.cbuf(), DType::F32, {3}, 1, w.batch, {lhs.data(), {3}}, {}, true, DType::F32,
             {out.data(), out.size() * 4});
  for (size_t e = 0; e < 3; ++e) {
    expect_block(out.data() + e * N, x, static_cast<size_t>(lhs[e]), 1, K, w.each[e]->matrix, true,
                 "expert " + std::to_string(e));
  }
  // Both absent: the batched matmul of x [3] against w [3].
  std::vector<float> both(3 * N), batched(3 * N);
  gather_qmm(x.cbuf(), DType::F32, {3}, 1, w.batch, {}, {}, true, DType::F32,
             {both.data(), both.size() * 4});
  batched_quantized_matmul(x.cbuf(), DType::F32, {3}, 1, w.batch, true, DType::F32,
                           {batched.data(), batched.size() * 4});
  EXPECT_EQ(both, batched);
}

TEST(GatherQmm, UnselectedExpertsAreNeverRead) {
  // Experts 1 and 3 get NaN scales: any read of them would put NaN in the result.
  const size_t K = 64, N = 32;
  Experts w({4}, N, K, {4, 64}, DType::F32, 80);
  auto* scales = reinterpret_cast<float*>(w.scales.data());
  const size_t per = N * K / 64;
  for (size_t e : {1, 3}) {
    for (size_t i = 0; i < per; ++i) scales[e * per + i] = std::numeric_limits<float>::quiet_NaN();
  }
  TypedBuffer x(DType::F32, random_values(4 * K, 81));
  const std::vector<int64_t> rhs = {2, 0, 2, 2};
  std::vector<float> out(4 * N);
  for (KernelChoice kernel : kKernels) {
    gather_qmm(x.cbuf(), DType::F32, {4, 1}, 1, w.batch, {}, {rhs.data(), {4, 1}}, true, DType::F32,
               {out.data(), out.size() * 4}, with_kernel(kernel));
    for (float v : out) ASSERT_FALSE(std::isnan(v));
  }
}

TEST(GatherQmm, IndexErrorsNeverReadOutOfBounds) {
  const size_t K = 64, N = 32;
  Experts w({4}, N, K, {4, 64}, DType::F32, 90);
  TypedBuffer x(DType::F32, random_values(2 * K, 91));
  std::vector<float> out(2 * N);
  auto message = [&](const std::vector<int64_t>& lhs, const std::vector<int64_t>& rhs) {
    try {
      gather_qmm(x.cbuf(), DType::F32, {2}, 1, w.batch, {lhs.data(), {lhs.size()}},
                 {rhs.data(), {rhs.size()}}, true, DType::F32, {out.data(), out.size() * 4});
      return std::string("no error");
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
  };
  EXPECT_NE(message({0, 1}, {0, 4}).find("rhs_indices holds 4, out of range for the 4 matrices"),
            std::string::npos);
  EXPECT_NE(message({0, 1}, {-1, 0}).find("rhs_indices holds -1"), std::string::npos);
  EXPECT_NE(message({2, 1}, {0, 0}).find("lhs_indices holds 2"), std::string::npos);
  EXPECT_NE(message({0, 1, 1}, {0, 0}).find("do not broadcast"), std::string::npos);
  EXPECT_EQ(message({1, 0}, {3, 3}), "no error");
  // An empty index array is a valid empty result.
  const std::vector<int64_t> none;
  gather_qmm(x.cbuf(), DType::F32, {2}, 1, w.batch, {none.data(), {0}}, {none.data(), {0}}, true,
             DType::F32, {nullptr, 0});
  // Zero experts: every index is out of range.
  Experts empty({0}, N, K, {4, 64}, DType::F32, 1);
  const std::vector<int64_t> zero = {0};
  EXPECT_THROW(gather_qmm(x.cbuf(), DType::F32, {2}, 1, empty.batch, {}, {zero.data(), {1}}, true,
                          DType::F32, {out.data(), N * 4}),
               InvalidArgument);
}

TEST(GatherQmm, MatchesSeparateCallsBitForBit) {
  // Grouping rows by expert changes nothing: each position equals its own 2-D call.
  const size_t T = 8, topk = 2, E = 5, K = 256, N = 64;
  Experts w({E}, N, K, {4, 64}, DType::BF16, 33);
  TypedBuffer x(DType::BF16, random_values(T * K, 34));
  std::vector<int64_t> rhs(T * topk);
  for (size_t i = 0; i < rhs.size(); ++i) rhs[i] = static_cast<int64_t>((i * 7 + i / 3) % E);
  std::vector<uint16_t> out(T * topk * N);
  gather_qmm(x.cbuf(), DType::BF16, {T, 1}, 1, w.batch, {}, {rhs.data(), {T, topk}}, true,
             DType::BF16, {out.data(), out.size() * 2});
  for (size_t t = 0; t < T; ++t) {
    for (size_t j = 0; j < topk; ++j) {
      std::vector<uint16_t> one(N);
      quantized_matmul({x.bytes.data() + t * K * 2, K * 2}, DType::BF16, 1,
                       w.each[static_cast<size_t>(rhs[t * topk + j])]->matrix, true, DType::BF16,
                       {one.data(), N * 2});
      // Rows that share an expert run as one m > 1 call: equal within accumulation order.
      for (size_t c = 0; c < N; ++c) {
        const float a = load_as_f32(out.data(), DType::BF16, (t * topk + j) * N + c);
        const float b = load_as_f32(one.data(), DType::BF16, c);
        ASSERT_NEAR(a, b, 1e-2f * std::abs(b) + 1e-3f) << t << "," << j << "," << c;
      }
    }
  }
}

TEST(GatherQmm, EstimatesCountDistinctExperts) {
  Experts w({8}, 64, 128, {4, 64}, DType::F32, 1);
  const std::vector<int64_t> one_expert = {3, 3, 3, 3};
  const std::vector<int64_t> four_experts = {0, 1, 2, 3};
  const double a =
      estimated_gather_qmm_ns({4, 1}, 1, w.batch, {}, {one_expert.data(), {4, 1}}, true);
  const double b =
      estimated_gather_qmm_ns({4, 1}, 1, w.batch, {}, {four_experts.data(), {4, 1}}, true);
  const std::vector<int64_t> eight = {0, 1, 2, 3, 4, 5, 6, 7};
  const double c = estimated_gather_qmm_ns({8, 1}, 1, w.batch, {}, {eight.data(), {8, 1}}, true);
  EXPECT_GT(a, 0);
  EXPECT_GE(b, a);
  EXPECT_NEAR(c, 2 * b, 0.01 * c);  // one GEMV per distinct expert
  EXPECT_GT(estimated_batched_matmul_ns({8}, 4, w.batch, true), 0);
}

TEST(GatherQmm, HugeBatchesWithEmptyOutputsAllocateNothing) {
  // m = 0: x and out are empty whatever the batch; nothing of the batch's size is built, and
  // the estimates return at once (a 2^40-position map would not fit in memory).
  Experts w({4}, 32, 64, {4, 64}, DType::F32, 1);
  const Shape huge = {size_t{1} << 40, 1};
  batched_quantized_matmul({nullptr, 0}, DType::F32, huge, 0, w.batch, true, DType::F32,
                           {nullptr, 0});
  gather_qmm({nullptr, 0}, DType::F32, huge, 0, w.batch, {}, {}, true, DType::F32, {nullptr, 0});
  EXPECT_GT(estimated_gather_qmm_ns(huge, 0, w.batch, {}, {}, true), 0);
  EXPECT_GT(estimated_batched_matmul_ns(huge, 0, w.batch, true), 0);
  // m = 1: the estimate of 2^40 positions is huge, without maps
  EXPECT_GT(estimated_gather_qmm_ns(huge, 1, w.batch, {}, {}, true), 1e12);
}
