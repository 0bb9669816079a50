// The fused kernels against the oracle: dequantize-then-dot in double (reference.h).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

struct Case {
  int bits;
  int group_size;
  DType w_dtype;
  DType x_dtype;
  DType out_dtype;
  size_t m;
  size_t k;
  size_t n;
  bool transpose;
};

// Documented tolerance of the fused kernels: f32 accumulation error, bounded by
// 1e-5 * sum_k |x_k * w_k|, plus the rounding of the result to the output dtype.
float tolerance(float sum_abs, float expected, DType out_dtype) {
  const float out_eps = out_dtype == DType::F32 ? 0.0f : (out_dtype == DType::F16 ? 1e-3f : 8e-3f);
  return 1e-5f * sum_abs + out_eps * std::abs(expected) + 1e-30f;
}

void check_case(const Case& c, KernelChoice kernel, int threads) {
  const size_t rows = c.transpose ? c.n : c.k, cols = c.transpose ? c.k : c.n;
  TypedBuffer dense(c.w_dtype, random_values(rows * cols, c.bits * 31 + c.group_size, cols));
  OwnedQuantized w(dense, rows, cols, {c.bits, c.group_size});
  TypedBuffer x(c.x_dtype, random_values(c.m * c.k, 99 + c.m));
  TypedBuffer expected(DType::F32, c.m * c.n);
  reference::quantized_matmul(x.bytes.data(), c.x_dtype, c.m, w.matrix, c.transpose, DType::F32,
                              expected.bytes.data());
  // Sum of |x * w| per output, for the error bound.
  TypedBuffer wd(c.w_dtype, rows * cols);
  dequantize(w.matrix, wd.mbuf());
  TypedBuffer out(c.out_dtype, c.m * c.n);
  ExecOptions options;
  options.kernel = kernel;
  options.threads = threads;
  quantized_matmul(x.cbuf(), c.x_dtype, c.m, w.matrix, c.transpose, c.out_dtype, out.mbuf(),
                   options);
  for (size_t i = 0; i < c.m; ++i) {
    for (size_t j = 0; j < c.n; ++j) {
      float sum_abs = 0.0f;
      for (size_t k = 0; k < c.k; ++k) {
        const float wv = c.transpose ? wd.at(j * cols + k) : wd.at(k * cols + j);
        sum_abs += std::abs(x.at(i * c.k + k) * wv);
      }
      const float e = expected.at(i * c.n + j);
      ASSERT_NEAR(out.at(i * c.n + j), e, tolerance(sum_abs * 1.01f, e, c.out_dtype))
          << "bits " << c.bits << " gs " << c.group_size << " w " << dtype_name(c.w_dtype) << " x "
          << dtype_name(c.x_dtype) << " out " << dtype_name(c.out_dtype) << " m " << c.m
          << " transpose " << c.transpose << " at (" << i << ", " << j << ")";
    }
  }
}

}  // namespace

// Every implementation this CPU can run: the portable one, and AVX2 / AVX-512 / NEON where
// available (each with its GEMV path for m < 8 with transpose=true and its panel GEMM path
// otherwise).
std::vector<KernelChoice> runnable_kernels() {
  std::vector<KernelChoice> kernels = {KernelChoice::Portable};
  for (KernelChoice simd : {KernelChoice::Avx2, KernelChoice::Avx512, KernelChoice::Neon}) {
    ExecOptions probe;
    probe.kernel = simd;
    try {
      TypedBuffer dense(DType::F32, random_values(32, 1));
      OwnedQuantized w(dense, 1, 32, {4, 32});
      std::vector<float> x(32), out(1);
      quantized_matmul({x.data(), 128}, DType::F32, 1, w.matrix, true, DType::F32, {out.data(), 4},
                       probe);
      kernels.push_back(simd);
    } catch (const InvalidArgument&) {
    }
  }
  return kernels;
}

// f(kernel) for every runnable kernel; AVX-512 a second time with AVX512_BF16 switched off
// (its 4-bit GEMV then uses f32 FMAs, as on CPUs without BF16).
template <typename F>
void for_each_kernel(F&& f) {
  for (KernelChoice kernel : runnable_kernels()) {
    f(kernel);
    if (kernel == KernelChoice::Avx512 && detail::cpu_features().avx512_bf16) {
      detail::CpuFeatures no_bf16;
      no_bf16.avx2_fma = no_bf16.avx512 = no_bf16.avx512_vnni = true;
      detail::ScopedCpuFeatures scoped(no_bf16);
      f(kernel);
    }
  }
}

TEST(QuantizedMatmul, AllBitsAndGroupSizesBothLayoutsEveryKernel) {
  for_each_kernel([](KernelChoice kernel) {
    for (bool transpose : {true, false}) {
      for (int bits : kAllBits) {
        for (int gs : kAllGroupSizes) {
          for (size_t m : {1, 3, 17}) {
            check_case(
                {bits, gs, DType::F32, DType::F32, DType::F32, m, 256, 2 * 128 + 128, transpose},
                kernel, 0);
          }
        }
      }
    }
  });
}

TEST(QuantizedMatmul, OddShapesEveryKernel) {
  for_each_kernel([](KernelChoice kernel) {
    // N not a multiple of the 32-column panels, K spanning several 256-wide panels, m crossing
    // the 6-row microkernel and the GEMV/GEMM switch.
    for (size_t m : {1, 7, 8, 13}) {
      check_case({4, 64, DType::BF16, DType::F16, DType::F32, m, 640, 45, true}, kernel, 2);
      check_case({3, 128, DType::F16, DType::BF16, DType::BF16, m, 300, 128, false}, kernel, 2);
      // 4 bits, K = 5 * 128 + 32: the GEMV's last 128-value chunk is partial.
      check_case({4, 32, DType::F16, DType::F32, DType::F32, m, 672, 21, true}, kernel, 2);
    }
  });
}

TEST(QuantizedMatmul, AllDtypeCombinations) {
  for (bool transpose : {true, false}) {
    for (DType w_dtype : kAllDtypes) {
      for (DType x_dtype : kAllDtypes) {
        for (DType out_dtype : kAllDtypes) {
          check_case({4, 64, w_dtype, x_dtype, out_dtype, 5, 128, 192, transpose},
                     KernelChoice::Auto, 0);
        }
      }
    }
  }
}

TEST(QuantizedMatmul, OddShapes) {
  // N not a multiple of anything for transpose=true; K odd multiples of the group size.
  check_case({3, 32, DType::BF16, DType::F32, DType::F32, 9, 96, 13, true}, KernelChoice::Auto, 0);
  check_case({5, 32, DType::F16, DType::F16, DType::F32, 2, 7, 96, false}, KernelChoice::Auto, 0);
  // transpose=false: K = 1100 spans two slices of the decode GEMV's K split.
  for (int bits : {3, 4}) {
    check_case({bits, 64, DType::BF16, DType::F32, DType::F32, 3, 1100, 192, false},
               KernelChoice::Auto, 2);
  }
  // transpose=false with N > kGemvKnSplitKMaxColumns: columns split between threads instead.
  for (int bits : {2, 4}) {
    check_case({bits, 64, DType::BF16, DType::F32, DType::F32, 3, 40, 6400, false},
               KernelChoice::Auto, 2);
  }
  // transpose=false, 4 bits: N = 160 leaves the last 128-column load a quarter full.
  for (size_t m : {1, 2, 3}) {
    check_case({4, 32, DType::BF16, DType::F32, DType::F32, m, 96, 160, false}, KernelChoice::Auto,
               0);
  }
  check_case({6, 128, DType::F32, DType::BF16, DType::F32, 1, 384, 1, true}, KernelChoice::Auto, 0);
}

// A row's result depends on its own scales and biases only. Kernels that read parameters in
// place must not let a row's last, partial chunk pick up the next row's scales, nor read past
// the last row's: making every odd row's scales infinite leaves the even rows' results
// bit-identical (exact and int8 modes, 4 bits and a generic width).
TEST(QuantizedMatmul, PartialChunksReadOnlyTheirOwnRowsParameters) {
  for_each_kernel([](KernelChoice kernel) {
    for (Precision precision : {Precision::Exact, Precision::Int8}) {
      for (int bits : {4, 3}) {
        for (DType w_dtype : kAllDtypes) {
          for (int gs : {32, 64}) {
            for (size_t k : {160, 192, 224}) {
              if (k % gs != 0) continue;
              const size_t n = 9, m = 1, groups = k / gs;
              TypedBuffer dense(w_dtype, random_values(n * k, 31, k));
              OwnedQuantized w(dense, n, k, {bits, gs});
              const std::vector<float> x = random_values(m * k, 32);
              ExecOptions options;
              options.kernel = kernel;
              options.precision = precision;
              auto run = [&] {
                std::vector<float> out(n);
                quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w.matrix, true,
                                 DType::F32, {out.data(), out.size() * 4}, options);
                return out;
              };
              const std::vector<float> clean = run();
              for (size_t row = 1; row < n; row += 2) {
                for (size_t g = 0; g < groups; ++g) {
                  store_from_f32(w.scales.bytes.data(), w_dtype, row * groups + g, INFINITY);
                }
              }
              const std::vector<float> poisoned = run();
              for (size_t j = 0; j < n; ++j) {
                const std::string where =
                    std::string(dtype_name(w_dtype)) + " bits " + std::to_string(bits) + " gs " +
                    std::to_string(gs) + " k " + std::to_string(k) + " row " + std::to_string(j) +
                    " precision " + std::to_string(static_cast<int>(precision));
                if (j % 2 == 0) {
                  ASSERT_TRUE(std::isfinite(poisoned[j])) << where;
                  ASSERT_EQ(poisoned[j], clean[j]) << where;
                } else {
                  ASSERT_FALSE(std::isfinite(poisoned[j])) << where;
                }
              }
            }
          }
        }
      }
    }
  });
}

TEST(QuantizedMatmul, ResultsAreBitIdenticalWhateverTheThreadCount) {
  struct Shape {
    bool transpose;
    size_t k, n;
  };
  // transpose=false: K over two slices of the decode GEMV's K split (the last partial), and a
  // weight wider than kGemvKnSplitKMaxColumns, whose columns are split between threads instead.
  for (const Shape& shape :
       {Shape{true, 256, 384}, Shape{false, 1312, 384}, Shape{false, 96, 6400}}) {
    const size_t k = shape.k, n = shape.n;
    const size_t rows = shape.transpose ? n : k, cols = shape.transpose ? k : n;
    TypedBuffer dense(DType::BF16, random_values(rows * cols, 5, cols));
    OwnedQuantized w(dense, rows, cols, {4, 64});
    for (size_t m : {1, 6, 20}) {  // GEMV and GEMM paths
      TypedBuffer x(DType::F32, random_values(m * k, 6));
      std::vector<uint8_t> first;
      for (int threads : {1, 2, 3, 7}) {
        TypedBuffer out(DType::F32, m * n);
        ExecOptions options;
        options.threads = threads;
        quantized_matmul(x.cbuf(), DType::F32, m, w.matrix, shape.transpose, DType::F32, out.mbuf(),
                         options);
        if (first.empty()) {
          first = out.bytes;
        } else {
          ASSERT_EQ(out.bytes, first) << "threads " << threads << " k " << k << " n " << n;
        }
      }
    }
  }
}

TEST(QuantizedMatmul, EmptyBatchIsAValidEmptyResult) {
  TypedBuffer dense(DType::F32, random_values(64 * 64, 1));
  OwnedQuantized w(dense, 64, 64, {4, 64});
  quantized_matmul({nullptr, 0}, DType::F32, 0, w.matrix, true, DType::F32, {nullptr, 0});
}

TEST(Dequantize, OptimisedMatchesReferenceExactlyInBothOrientations) {
  const size_t rows = 6, cols = 256;
  for (int bits : kAllBits) {
    for (int gs : kAllGroupSizes) {
      for (DType dtype : kAllDtypes) {
        TypedBuffer dense(dtype, random_values(rows * cols, bits + gs, cols));
        OwnedQuantized q(dense, rows, cols, {bits, gs});
        for (bool transpose_out : {false, true}) {
          TypedBuffer expected(dtype, rows * cols), got(dtype, rows * cols);
          reference::dequantize(q.matrix, expected.bytes.data(), transpose_out);
          dequantize(q.matrix, got.mbuf(), transpose_out);
          ASSERT_EQ(got.bytes, expected.bytes) << bits << "/" << gs << "/" << dtype_name(dtype);
          if (transpose_out) {
            TypedBuffer straight(dtype, rows * cols);
            dequantize(q.matrix, straight.mbuf());
            for (size_t r = 0; r < rows; ++r)
              for (size_t c = 0; c < cols; ++c)
                ASSERT_EQ(bit_cast<uint32_t>(got.at(c * rows + r)),
                          bit_cast<uint32_t>(straight.at(r * cols + c)));
          }
        }
      }
    }
  }
}

TEST(Dequantize, RoundsProductThenSumInTheScalesDtype) {
  // bf16: scale 1.0078125 (1 + 2^-7), q = 3, bias 0.0078125: 3 * scale = 3.0234375 rounds to
  // bf16 3.03125 (ties-to-even of 3.0234375 between 3.015625 and 3.03125), + bias = 3.0390625
  // rounds to 3.03125 (tie, even). A fused or f32 evaluation would give 3.0234375 + ... = 3.03125
  // too, so also check the f32 path keeps the separate rounding: 3 * 0.1f + 0.2f.
  const uint16_t scale = f32_to_bf16_bits(1.0078125f), bias = f32_to_bf16_bits(0.0078125f);
  std::vector<uint32_t> packed(4, 0x33333333u);  // 32 values, all q = 3 at 4 bits
  QuantizedMatrix w;
  w.packed = {packed.data(), 16};
  w.scales = {&scale, 2};
  w.biases = {&bias, 2};
  w.dtype = DType::BF16;
  w.rows = 1;
  w.cols = 32;
  w.spec = {4, 32};
  std::vector<uint16_t> out(32);
  dequantize(w, {out.data(), 64});
  EXPECT_EQ(bf16_bits_to_f32(out[0]), 3.03125f);

  const float scale32 = 0.1f, bias32 = 0.2f;
  w.scales = {&scale32, 4};
  w.biases = {&bias32, 4};
  w.dtype = DType::F32;
  std::vector<float> out32(32);
  dequantize(w, {out32.data(), 128});
  volatile float product = 3.0f * scale32;
  EXPECT_EQ(bit_cast<uint32_t>(out32[0]), bit_cast<uint32_t>(product + bias32));
}

// Found by fuzz/kernel_args_fuzz: a [0, N] weight with transpose=false contracts over K = 0,
// so x is an empty (null) buffer and the result is all zeros.
TEST(QuantizedMatmul, EmptyContractionGivesZeros) {
  QuantizedMatrix w;
  w.rows = 0;
  w.cols = 64;
  w.spec = {4, 64};
  std::vector<float> out(3 * 64, 1.0f);
  quantized_matmul({nullptr, 0}, DType::F32, 3, w, false, DType::F32, {out.data(), out.size() * 4});
  for (float v : out) EXPECT_EQ(v, 0.0f);
}
