// ExecOptions::batch_invariant: a row's result is bit-identical whatever m, however the rows
// are split between calls and whatever the thread count, for every kernel this CPU can run
// (each chosen explicitly), every width, both layouts, f32/f16/bf16 activations and the int8
// mode; and it stays within the documented bound of the exact result.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

// The SIMD kernels this CPU runs (NX_QUANT_MAX_ISA caps them), and the portable one.
std::vector<KernelChoice> kernels_here() {
  const auto& cpu = detail::cpu_features();
  std::vector<KernelChoice> kernels = {KernelChoice::Portable};
  if (cpu.avx2_fma) kernels.push_back(KernelChoice::Avx2);
  if (cpu.avx512) kernels.push_back(KernelChoice::Avx512);
  if (cpu.neon) kernels.push_back(KernelChoice::Neon);
  return kernels;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

struct Case {
  KernelChoice kernel;
  int bits, group_size;
  bool transpose;
  DType x_dtype;
  Precision precision = Precision::Exact;
  size_t k, n;
  QuantMode mode = QuantMode::Affine;
};

// An affine quantized W for the case, [N, K] or [K, N] (bf16 scales and biases).
OwnedQuantized affine_weight(const Case& s, uint32_t seed) {
  const size_t w_rows = s.transpose ? s.n : s.k, w_cols = s.transpose ? s.k : s.n;
  TypedBuffer dense(DType::BF16, random_values(w_rows * w_cols, seed, w_cols));
  return OwnedQuantized(dense, w_rows, w_cols, {s.bits, s.group_size});
}

void check_invariant(const Case& s, const QuantizedMatrix& w, uint32_t seed);

void check_invariant(const Case& s, uint32_t seed) {
  const OwnedQuantized w = affine_weight(s, seed);
  check_invariant(s, w.matrix, seed);
}

// out = x[rows] . W with batch_invariant set, as f32 values (the call's out dtype is f32).
std::vector<float> run(const Case& s, const QuantizedMatrix& w, const TypedBuffer& x, size_t row0,
                       size_t rows, int threads) {
  const size_t xb = dtype_size(s.x_dtype);
  std::vector<float> out(rows * s.n);
  ExecOptions options;
  options.kernel = s.kernel;
  options.threads = threads;
  options.precision = s.precision;
  options.batch_invariant = true;
  quantized_matmul({x.bytes.data() + row0 * s.k * xb, rows * s.k * xb}, s.x_dtype, rows, w,
                   s.transpose, DType::F32, {out.data(), out.size() * 4}, options);
  return out;
}

std::string describe(const Case& s) {
  return std::string(kernel_name(s.kernel)) + " " + mode_name(s.mode) + " " +
         std::to_string(s.bits) + " bits gs " + std::to_string(s.group_size) +
         (s.transpose ? " [N, K]" : " [K, N]") + " x " + dtype_name(s.x_dtype) +
         (s.precision == Precision::Int8 ? " int8" : "");
}

constexpr size_t kRows = 100;  // rows of x; every call below takes some of them

// Each row alone (m = 1, one thread) is the standard; every other call must match it.
void check_invariant(const Case& s, const QuantizedMatrix& w, uint32_t seed) {
  TypedBuffer x(s.x_dtype, random_values(kRows * s.k, seed + 1, s.k));
  std::vector<float> alone(kRows * s.n);
  for (size_t i = 0; i < kRows; ++i) {
    const auto row = run(s, w, x, i, 1, 1);
    std::copy(row.begin(), row.end(), alone.begin() + i * s.n);
  }
  const std::string what = describe(s);
  auto expect_rows = [&](const std::vector<float>& out, size_t row0, size_t rows,
                         const std::string& call) {
    for (size_t i = 0; i < rows * s.n; ++i) {
      ASSERT_TRUE(same_bits(out[i], alone[row0 * s.n + i]))
          << what << ", " << call << ": row " << row0 + i / s.n << " column " << i % s.n << ": "
          << out[i] << " vs " << alone[row0 * s.n + i] << " alone";
    }
  };
  std::mt19937 rng(seed);
  // The first m rows in one call, m on both sides of every GEMV/GEMM boundary.
  for (size_t m : {3, 8, 9, 33, 100}) {
    const int threads = 1 + static_cast<int>(rng() % 4);
    expect_rows(run(s, w, x, 0, m, threads), 0, m,
                "m " + std::to_string(m) + ", " + std::to_string(threads) + " threads");
    if (::testing::Test::HasFatalFailure()) return;
  }
  // All rows split into calls of random sizes, as a server batching requests would send them.
  for (size_t row0 = 0; row0 < kRows;) {
    const size_t rows = std::min<size_t>(kRows - row0, 1 + rng() % 20);
    const int threads = 1 + static_cast<int>(rng() % 4);
    expect_rows(run(s, w, x, row0, rows, threads), row0, rows,
                "rows [" + std::to_string(row0) + ", " + std::to_string(row0 + rows) + ")");
    if (::testing::Test::HasFatalFailure()) return;
    row0 += rows;
  }
}

// The batch-invariant result of all rows within the documented bound of the exact product:
// f32 accumulation error 1e-5 * sum |x * w| (exact mode), plus sum_k |scale_k * q_k| * d_k / 2
// for the int8 mode where the kernel has an int8 path (d_k: the step of x's block of 32).
void check_bound(const Case& s, uint32_t seed, bool int8_path) {
  const size_t w_rows = s.transpose ? s.n : s.k, w_cols = s.transpose ? s.k : s.n;
  TypedBuffer dense(DType::BF16, random_values(w_rows * w_cols, seed, w_cols));
  OwnedQuantized w(dense, w_rows, w_cols, {s.bits, s.group_size});
  const size_t m = 33;
  TypedBuffer x(s.x_dtype, random_values(m * s.k, seed + 1, s.k));
  std::vector<float> expected(m * s.n);
  reference::quantized_matmul(x.bytes.data(), s.x_dtype, m, w.matrix, s.transpose, DType::F32,
                              expected.data());
  TypedBuffer wd(DType::BF16, s.n * s.k);  // as [N, K] whatever the layout
  dequantize(w.matrix, wd.mbuf(), !s.transpose);
  const auto out = run(s, w.matrix, x, 0, m, 0);
  const size_t groups_per_row = w_cols / s.group_size;
  for (size_t i = 0; i < m; ++i) {
    std::vector<float> d(s.k / 32);
    for (size_t b = 0; b < d.size(); ++b) {
      float mx = 0.0f;
      for (size_t c = 0; c < 32; ++c) mx = std::max(mx, std::abs(x.at(i * s.k + b * 32 + c)));
      d[b] = mx / 127.0f;
    }
    for (size_t j = 0; j < s.n; ++j) {
      double sum_abs = 0.0, int8_bound = 0.0;
      for (size_t c = 0; c < s.k; ++c) {
        const float wv = wd.at(j * s.k + c);
        sum_abs += std::abs(x.at(i * s.k + c) * wv);
        if (int8_path) {
          const size_t g = s.transpose ? j * groups_per_row + c / s.group_size
                                       : c * groups_per_row + j / s.group_size;
          const float bias = w.biases.at(g);
          int8_bound += std::abs(wv - bias) * d[c / 32] / 2.0;
        }
      }
      const double bound = 1e-5 * sum_abs * 1.01 + int8_bound * 1.01 + 1e-30;
      ASSERT_NEAR(out[i * s.n + j], expected[i * s.n + j], bound)
          << describe(s) << " at (" << i << ", " << j << ")";
    }
  }
}

// Whether `kernel` computes Precision::Int8 with int8 dot products at this width (else exactly).
bool has_int8_path(KernelChoice kernel, int bits) {
  const auto& cpu = detail::cpu_features();
  switch (kernel) {
    case KernelChoice::Portable:
      return true;
    case KernelChoice::Avx2:
      return bits == 2 || bits == 4 || bits == 8;
    case KernelChoice::Avx512:
      return cpu.avx512_vnni;
    case KernelChoice::Neon:
      return cpu.neon_dotprod;
    default:
      return false;
  }
}

class BatchInvariant : public ::testing::TestWithParam<int> {};

TEST_P(BatchInvariant, EveryKernelBothLayoutsEveryActivationDtype) {
  const int bits = GetParam();
  for (KernelChoice kernel : kernels_here()) {
    for (bool transpose : {true, false}) {
      for (DType x_dtype : kAllDtypes) {
        const int gs = x_dtype == DType::F32 ? 64 : x_dtype == DType::F16 ? 32 : 128;
        // [N, K]: 37 outputs (blocks of W rows and a tail). [K, N]: K past one K-slice of the
        // AVX-512 [K, N] GEMV (1024 rows), so its partial sums are combined.
        const Case s = transpose
                           ? Case{kernel, bits, gs, true, x_dtype, Precision::Exact, 256, 37}
                           : Case{kernel, bits, gs, false, x_dtype, Precision::Exact, 1152, 256};
        SCOPED_TRACE(describe(s));
        check_invariant(s, 100 + bits);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// AVX-512 4-bit with bf16 x takes the bf16-dot GEMV (rows paired, a zero row for an odd one);
// without AVX512_BF16, the f32 table-lookup GEMV. Both, with blocks of odd and even sizes.
TEST_P(BatchInvariant, Avx512Bf16ActivationsWithAndWithoutBf16Dot) {
  const auto& cpu = detail::cpu_features();
  if (!cpu.avx512) GTEST_SKIP() << "no AVX-512 (or capped by NX_QUANT_MAX_ISA)";
  const Case s{KernelChoice::Avx512, GetParam(), 64, true, DType::BF16, Precision::Exact, 384, 21};
  check_invariant(s, 500 + GetParam());
  if (HasFatalFailure() || !cpu.avx512_bf16) return;
  detail::CpuFeatures no_bf16 = cpu;
  no_bf16.avx512_bf16 = false;
  detail::ScopedCpuFeatures scoped(no_bf16);
  check_invariant(s, 500 + GetParam());
}

TEST_P(BatchInvariant, Int8ModeEveryKernel) {
  const int bits = GetParam();
  auto each_kernel = [&] {
    for (KernelChoice kernel : kernels_here()) {
      for (DType x_dtype : {DType::F32, DType::BF16}) {
        const Case s{kernel, bits, 64, true, x_dtype, Precision::Int8, 256, 37};
        SCOPED_TRACE(describe(s));
        check_invariant(s, 200 + bits);
        if (HasFatalFailure()) return;
      }
    }
  };
  each_kernel();
  // Without the int8 dot products (AVX-512 without VNNI, AVX2 without AVX-VNNI, NEON without
  // i8mm or dotprod), the other path of each kernel.
  const auto& cpu = detail::cpu_features();
  if (!HasFatalFailure() && (cpu.avx512_vnni || cpu.avx_vnni || cpu.neon_dotprod)) {
    detail::CpuFeatures fewer = cpu;
    fewer.avx512_vnni = fewer.avx_vnni = fewer.avx512_bf16 = false;
    fewer.neon_i8mm = fewer.neon_dotprod = false;
    detail::ScopedCpuFeatures scoped(fewer);
    each_kernel();
  }
}

TEST_P(BatchInvariant, WithinTheBoundOfTheExactResult) {
  const int bits = GetParam();
  for (KernelChoice kernel : kernels_here()) {
    for (bool transpose : {true, false}) {
      const Case s = transpose
                         ? Case{kernel, bits, 64, true, DType::F32, Precision::Exact, 512, 40}
                         : Case{kernel, bits, 64, false, DType::F32, Precision::Exact, 1152, 128};
      check_bound(s, 300 + bits, false);
      if (HasFatalFailure()) return;
    }
    const Case sb{kernel, bits, 64, true, DType::BF16, Precision::Exact, 512, 40};
    check_bound(sb, 350 + bits, false);
    if (HasFatalFailure()) return;
    const Case s8{kernel, bits, 64, true, DType::F32, Precision::Int8, 512, 40};
    check_bound(s8, 400 + bits, has_int8_path(kernel, bits));
    if (HasFatalFailure()) return;
  }
}

// The microscaled modes (uint8 scales, no biases) under the option: their GEMVs take every m.
TEST(BatchInvariantMicroscaled, EveryModeBothLayoutsEveryKernel) {
  for (QuantSpec spec : {QuantSpec{4, 32, QuantMode::Mxfp4}, QuantSpec{8, 32, QuantMode::Mxfp8},
                         QuantSpec{4, 16, QuantMode::Nvfp4}}) {
    for (bool transpose : {true, false}) {
      const size_t k = 256, n = transpose ? 37 : 128;
      const size_t rows = transpose ? n : k, cols = transpose ? k : n;
      TypedBuffer dense(DType::BF16, random_values(rows * cols, 7, cols));
      std::vector<uint32_t> packed(rows * cols * spec.bits / 32);
      std::vector<uint8_t> scales(rows * cols / spec.group_size);
      quantize(dense.cbuf(), DType::BF16, rows, cols, spec, {packed.data(), packed.size() * 4},
               {scales.data(), scales.size()}, {nullptr, 0});
      QuantizedMatrix w;
      w.packed = {packed.data(), packed.size() * 4};
      w.scales = {scales.data(), scales.size()};
      w.dtype = DType::BF16;
      w.rows = rows;
      w.cols = cols;
      w.spec = spec;
      for (KernelChoice kernel : kernels_here()) {
        Case s{kernel, spec.bits, spec.group_size, transpose, DType::F32, Precision::Exact,
               k,      n,         spec.mode};
        SCOPED_TRACE(describe(s));
        check_invariant(s, w, 8);
        if (HasFatalFailure()) return;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllBits, BatchInvariant, ::testing::ValuesIn(kAllBits),
                         [](const auto& info) { return std::to_string(info.param) + "bits"; });

// The flag changes nothing but the order: a call with it is still validated like any other.
TEST(BatchInvariantOption, ValidatesLikeAnyCall) {
  TypedBuffer dense(DType::F32, random_values(64 * 64, 1));
  OwnedQuantized w(dense, 64, 64, {4, 64});
  std::vector<float> x(64), out(64);
  ExecOptions options;
  options.batch_invariant = true;
  EXPECT_THROW(quantized_matmul({x.data(), 4 * 63}, DType::F32, 1, w.matrix, true, DType::F32,
                                {out.data(), out.size() * 4}, options),
               InvalidArgument);
  EXPECT_NO_THROW(quantized_matmul({x.data(), 4 * 64}, DType::F32, 1, w.matrix, true, DType::F32,
                                   {out.data(), out.size() * 4}, options));
}

}  // namespace
