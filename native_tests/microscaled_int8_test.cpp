// Precision::Int8 for mxfp4 and nvfp4 (c_src/kernels/microscaled/int8/int8.h): every kernel
// against the int8 formula evaluated independently in double from the codes (E2M1 values and
// scale bytes decoded by codec.h, x by the activation quantizer), the fast mode against the
// exact oracle within its documented bound, and the shapes and modes that must compute exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "int8_activations.h"
#include "microscaled/codec.h"
#include "nx_quant/kernels.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

std::vector<KernelChoice> runnable_kernels();  // matmul_test.cpp

namespace {

// A microscaled matrix with random codes and scale bytes (not from quantize: every code occurs).
struct Codes {
  std::vector<uint32_t> packed;
  std::vector<uint8_t> scales;
  QuantizedMatrix matrix;
  Codes(QuantSpec spec, size_t rows, size_t cols, uint32_t seed) {
    std::mt19937 rng(seed);
    packed.resize(rows * cols * spec.bits / 32);
    scales.resize(rows * cols / spec.group_size);
    for (auto& word : packed) word = static_cast<uint32_t>(rng());
    for (size_t i = 0; i < scales.size(); ++i) {
      uint8_t& s = scales[i];
      const uint32_t r = static_cast<uint32_t>(rng());
      // every 13th scale an edge code: E8M0 0 (2^-127), E4M3 0x7F / 0xFF (+-480, as MLX)
      if (i % 13 == 5) {
        s = spec.mode == QuantMode::Nvfp4 ? (i % 2 ? 0x7F : 0xFF) : 0;
        continue;
      }
      // nvfp4: E4M3 0 .. 448 (subnormals too); mxfp4/mxfp8: 2^-20 .. 2^9
      s = spec.mode == QuantMode::Nvfp4 ? static_cast<uint8_t>(r % 0x7F)
                                        : static_cast<uint8_t>(107 + r % 30);
    }
    matrix.packed = {packed.data(), packed.size() * 4};
    matrix.scales = {scales.data(), scales.size()};
    matrix.dtype = DType::BF16;
    matrix.rows = rows;
    matrix.cols = cols;
    matrix.spec = spec;
  }
};

float scale_value(const QuantizedMatrix& w, size_t n, size_t g) {
  const uint8_t b =
      static_cast<const uint8_t*>(w.scales.data)[n * (w.cols / w.spec.group_size) + g];
  if (w.spec.mode != QuantMode::Nvfp4) return microscaled::e8m0_to_f32(b);
  const float global = w.spec.global_scale != 0.0f ? w.spec.global_scale / 2688.0f : 1.0f;
  return microscaled::e4m3_to_f32(b) * global;
}

float element_value(const QuantizedMatrix& w, size_t n, size_t col) {
  const auto* words = static_cast<const uint32_t*>(w.packed.data);
  const size_t i = n * w.cols + col;
  return microscaled::kE2m1Values[(words[i / 8] >> (4 * (i % 8))) & 0xFu];
}

// The int8 formula in double: sum_k scale_k * E2M1(c_k) * xq_k * d_k; also sum |.| of its terms
// (the f32 rounding scale) and the bound of int8.h, sum_k |scale_k * E2M1(c_k)| * d_k / 2.
struct Expected {
  double value = 0, sum_abs = 0, int8_bound = 0;
};
Expected int8_formula(const detail::Int8Activations& xa, size_t i, const QuantizedMatrix& w,
                      size_t n) {
  Expected e;
  const size_t blocks = xa.k_padded / detail::kInt8Block;
  for (size_t col = 0; col < w.cols; ++col) {
    const double wv =
        static_cast<double>(scale_value(w, n, col / w.spec.group_size)) * element_value(w, n, col);
    const double d = xa.d[i * blocks + col / detail::kInt8Block];
    const double term = wv * xa.q[i * xa.k_padded + col] * d;
    e.value += term;
    e.sum_abs += std::abs(term);
    e.int8_bound += std::abs(wv) * d / 2;
  }
  return e;
}

std::vector<float> run(const std::vector<float>& x, DType x_dtype, size_t m,
                       const QuantizedMatrix& w, KernelChoice kernel, Precision precision,
                       bool batch_invariant = false, int threads = 0) {
  TypedBuffer xb(x_dtype, x);
  TypedBuffer out(DType::F32, m * w.rows);
  ExecOptions options;
  options.kernel = kernel;
  options.precision = precision;
  options.batch_invariant = batch_invariant;
  options.threads = threads;
  quantized_matmul(xb.cbuf(), x_dtype, m, w, true, DType::F32, out.mbuf(), options);
  std::vector<float> v(out.count());
  for (size_t j = 0; j < v.size(); ++j) v[j] = out.at(j);
  return v;
}

// f(kernel, label) for every runnable kernel but Reference, each integer dot product the CPU has:
// AVX2 with and without AVX-VNNI, AVX-512 with and without AVX512_VNNI (then the AVX2 code).
template <typename F>
void for_each_int8_kernel(F&& f) {
  for (KernelChoice kernel : runnable_kernels()) {
    f(kernel, kernel_name(kernel));
    const detail::CpuFeatures& cpu = detail::cpu_features();
    if (kernel == KernelChoice::Avx2 && cpu.avx_vnni) {
      detail::CpuFeatures no_vnni;
      no_vnni.avx2_fma = true;
      detail::ScopedCpuFeatures scoped(no_vnni);
      f(kernel, "avx2 without AVX-VNNI");
    }
    if (kernel == KernelChoice::Avx512 && cpu.avx512_vnni) {
      detail::CpuFeatures no_vnni;
      no_vnni.avx2_fma = no_vnni.avx512 = true;
      detail::ScopedCpuFeatures scoped(no_vnni);
      f(kernel, "avx512 without VNNI");
    }
  }
}

// Where Precision::Int8 approximates for the E2M1 modes: every kernel but Neon (and Reference).
bool approximates(KernelChoice kernel) {
  return kernel != KernelChoice::Neon;
}

struct Shape {
  QuantSpec spec;
  size_t n, k;
};
// K past whole 128-code steps, a single group, several steps; nvfp4 with a global scale.
std::vector<Shape> shapes() {
  QuantSpec nv_global{4, 16, QuantMode::Nvfp4};
  nv_global.global_scale = 3.5f;
  return {{{4, 32, QuantMode::Mxfp4}, 11, 32},  {{4, 32, QuantMode::Mxfp4}, 24, 416},
          {{4, 32, QuantMode::Mxfp4}, 9, 512},  {{4, 16, QuantMode::Nvfp4}, 10, 16},
          {{4, 16, QuantMode::Nvfp4}, 17, 272}, {nv_global, 8, 384}};
}

}  // namespace

TEST(MicroscaledInt8, EveryKernelMatchesTheInt8Formula) {
  for (const Shape& s : shapes()) {
    Codes w(s.spec, s.n, s.k, static_cast<uint32_t>(s.n * 1000 + s.k));
    for (size_t m : {1, 2, 3, 4, 5, 8}) {
      for (DType x_dtype : {DType::F32, DType::BF16}) {
        const std::vector<float> x = random_values(m * s.k, static_cast<uint32_t>(m + s.k), s.k);
        std::vector<float> xr(x.size());  // x as the kernels see it (rounded to x_dtype)
        TypedBuffer xb(x_dtype, x);
        for (size_t j = 0; j < x.size(); ++j) xr[j] = xb.at(j);
        const auto xa = detail::quantize_activations(xr.data(), m, s.k, s.spec.group_size);
        const auto exact = run(x, x_dtype, m, w.matrix, KernelChoice::Reference, Precision::Exact);
        for_each_int8_kernel([&](KernelChoice kernel, const std::string& label) {
          const auto out = run(x, x_dtype, m, w.matrix, kernel, Precision::Int8);
          const std::string what = label + " " + mode_name(s.spec.mode) + " K " +
                                   std::to_string(s.k) + " m " + std::to_string(m) + " x " +
                                   dtype_name(x_dtype);
          if (!approximates(kernel)) {
            const auto exact_here = run(x, x_dtype, m, w.matrix, kernel, Precision::Exact);
            EXPECT_EQ(out, exact_here)
                << what << ": without an int8 path the mode computes exactly";
            return;
          }
          bool differs = false;  // from the exact result: the int8 path ran
          for (size_t i = 0; i < m; ++i) {
            for (size_t n = 0; n < s.n; ++n) {
              const Expected e = int8_formula(xa, i, w.matrix, n);
              const float got = out[i * s.n + n];
              ASSERT_LE(std::abs(got - e.value), 1e-5 * e.sum_abs + 1e-30)
                  << what << " at " << i << ", " << n << ": " << got << " vs " << e.value;
              differs = differs || std::abs(got - exact[i * s.n + n]) > 1e-5 * e.sum_abs;
            }
          }
          EXPECT_TRUE(differs) << what << ": every output equals the exact one";
        });
      }
    }
  }
}

TEST(MicroscaledInt8, WithinTheDocumentedBoundOfTheExactResult) {
  // |int8 - exact| <= sum_k |scale_k * E2M1(c_k)| * d_k / 2 plus f32 rounding (1e-5 of
  // sum |x * w|), with weights from quantize (real scales) and x of varying row scale.
  for (QuantSpec spec : {QuantSpec{4, 32, QuantMode::Mxfp4}, QuantSpec{4, 16, QuantMode::Nvfp4}}) {
    const size_t n = 40, k = 1056, m = 3;
    Codes w(spec, n, k, 0);  // codes and scale bytes from quantize
    TypedBuffer dense(DType::F32, random_values(n * k, 5, k));
    quantize(dense.cbuf(), DType::F32, n, k, spec, {w.packed.data(), w.packed.size() * 4},
             {w.scales.data(), w.scales.size()}, {nullptr, 0}, ExecOptions{});
    const auto x = random_values(m * k, 6, 100);
    const auto xa = detail::quantize_activations(x.data(), m, k, spec.group_size);
    const auto exact = run(x, DType::F32, m, w.matrix, KernelChoice::Reference, Precision::Exact);
    for_each_int8_kernel([&](KernelChoice kernel, const std::string& label) {
      const auto out = run(x, DType::F32, m, w.matrix, kernel, Precision::Int8);
      for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j < n; ++j) {
          const Expected e = int8_formula(xa, i, w.matrix, j);
          double sum_abs = 0;
          for (size_t c = 0; c < k; ++c) {
            sum_abs += std::abs(x[i * k + c] *
                                static_cast<double>(scale_value(w.matrix, j, c / spec.group_size)) *
                                element_value(w.matrix, j, c));
          }
          EXPECT_LE(std::abs(out[i * n + j] - exact[i * n + j]), e.int8_bound + 2e-5 * sum_abs)
              << label << " " << mode_name(spec.mode) << " at " << i << ", " << j;
        }
      }
    });
  }
}

TEST(MicroscaledInt8, Mxfp8LayoutKnAndLargeMComputeExactly) {
  // The int8 mode permits approximation, never needs it: mxfp8 (E4M3 values are not small
  // integers), transpose = false, and m > 8 give the exact mode's bits.
  Codes mx8({8, 32, QuantMode::Mxfp8}, 12, 256, 1);
  Codes mx4({4, 32, QuantMode::Mxfp4}, 12, 256, 2);
  for_each_int8_kernel([&](KernelChoice kernel, const std::string& label) {
    const auto x1 = random_values(2 * 256, 3);
    EXPECT_EQ(run(x1, DType::F32, 2, mx8.matrix, kernel, Precision::Int8),
              run(x1, DType::F32, 2, mx8.matrix, kernel, Precision::Exact))
        << label << " mxfp8";
    const auto x9 = random_values(9 * 256, 4);
    EXPECT_EQ(run(x9, DType::F32, 9, mx4.matrix, kernel, Precision::Int8),
              run(x9, DType::F32, 9, mx4.matrix, kernel, Precision::Exact))
        << label << " mxfp4 m 9";
    Codes kn({4, 32, QuantMode::Mxfp4}, 64, 32, 5);  // transpose = false: w is [K = 64, N = 32]
    TypedBuffer xb(DType::F32, random_values(2 * 64, 6));
    TypedBuffer a(DType::F32, 2 * 32), b(DType::F32, 2 * 32);
    ExecOptions o;
    o.kernel = kernel;
    o.precision = Precision::Int8;
    quantized_matmul(xb.cbuf(), DType::F32, 2, kn.matrix, false, DType::F32, a.mbuf(), o);
    o.precision = Precision::Exact;
    quantized_matmul(xb.cbuf(), DType::F32, 2, kn.matrix, false, DType::F32, b.mbuf(), o);
    EXPECT_EQ(a.bytes, b.bytes) << label << " transpose = false";
  });
}

TEST(MicroscaledInt8, BatchInvariantAtEveryMAndThreadCount) {
  // With batch_invariant the int8 path runs at every m, each row's result that of the row alone.
  Codes w({4, 32, QuantMode::Mxfp4}, 37, 320, 9);
  const size_t m = 19, k = 320;
  const auto x = random_values(m * k, 10, k);
  for_each_int8_kernel([&](KernelChoice kernel, const std::string& label) {
    const auto all = run(x, DType::F32, m, w.matrix, kernel, Precision::Int8, true, 2);
    for (size_t i = 0; i < m; ++i) {
      const std::vector<float> row(x.begin() + i * k, x.begin() + (i + 1) * k);
      const auto alone = run(row, DType::F32, 1, w.matrix, kernel, Precision::Int8, false, 1);
      for (size_t n = 0; n < w.matrix.rows; ++n) {
        ASSERT_EQ(all[i * w.matrix.rows + n], alone[n]) << label << " row " << i << " n " << n;
      }
    }
  });
}

TEST(MicroscaledInt8, NonFiniteActivationsAndScales) {
  // A NaN or Inf in x makes its block's outputs NaN (as int8_activations.h documents); a NaN scale
  // byte (E4M3 0x7F decodes to 480 in MLX, not NaN; E8M0 255 is +Inf) gives +-Inf or NaN, as in
  // the exact mode.
  Codes w({4, 32, QuantMode::Mxfp4}, 8, 128, 11);
  w.scales[1] = 255;  // row 0, group 1: +Inf
  auto x = random_values(2 * 128, 12);
  x[128 + 40] = std::numeric_limits<float>::infinity();  // row 1
  for_each_int8_kernel([&](KernelChoice kernel, const std::string& label) {
    if (!approximates(kernel)) return;
    const auto out = run(x, DType::F32, 2, w.matrix, kernel, Precision::Int8);
    EXPECT_FALSE(std::isfinite(out[0])) << label << " row 0 meets an Inf scale";
    for (size_t n = 1; n < 8; ++n) EXPECT_TRUE(std::isfinite(out[n])) << label << " n " << n;
    for (size_t n = 0; n < 8; ++n) EXPECT_TRUE(std::isnan(out[8 + n])) << label << " n " << n;
  });
}
