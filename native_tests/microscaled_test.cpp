// MLX's microscaled modes (mxfp4, mxfp8, nvfp4): codes and scale bytes computed by hand from
// MLX's rules (ops.cpp fp_quantize / fp_dequantize, the CPU fp8 conversions), for every quirk:
// ties, saturation, -0.0, NaN/Inf, all-zero and subnormal groups, f32/f16/bf16 inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "microscaled/codec.h"
#include "nx_quant/kernels.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

std::vector<KernelChoice> runnable_kernels();  // matmul_test.cpp

namespace {

constexpr QuantSpec kMxfp4{4, 32, QuantMode::Mxfp4};
constexpr QuantSpec kMxfp8{8, 32, QuantMode::Mxfp8};
constexpr QuantSpec kNvfp4{4, 16, QuantMode::Nvfp4};

struct Quantized {
  std::vector<uint32_t> packed;
  std::vector<uint8_t> scales;
  QuantizedMatrix matrix;
};

Quantized quantize_values(const std::vector<float>& values, size_t rows, QuantSpec spec,
                          DType dtype, KernelChoice kernel = KernelChoice::Auto) {
  const size_t cols = values.size() / rows;
  TypedBuffer dense(dtype, values);
  Quantized q;
  q.packed.assign(rows * cols * spec.bits / 32, 0xDEADBEEFu);
  q.scales.assign(rows * cols / spec.group_size, 0xAB);
  ExecOptions options;
  options.kernel = kernel;
  quantize(dense.cbuf(), dtype, rows, cols, spec, {q.packed.data(), q.packed.size() * 4},
           {q.scales.data(), q.scales.size()}, {nullptr, 0}, options);
  q.matrix.packed = {q.packed.data(), q.packed.size() * 4};
  q.matrix.scales = {q.scales.data(), q.scales.size()};
  q.matrix.dtype = dtype;
  q.matrix.rows = rows;
  q.matrix.cols = cols;
  q.matrix.spec = spec;
  return q;
}

std::vector<float> padded(std::vector<float> v, size_t n) {
  v.resize(n, 0.0f);
  return v;
}

// Element i's 4-bit code / 8-bit byte.
uint32_t code4(const Quantized& q, size_t i) {
  return (q.packed[i / 8] >> (4 * (i % 8))) & 0xFu;
}
uint32_t byte8(const Quantized& q, size_t i) {
  return (q.packed[i / 4] >> (8 * (i % 4))) & 0xFFu;
}

std::vector<float> dequantized(const QuantizedMatrix& w, KernelChoice kernel = KernelChoice::Auto) {
  TypedBuffer out(w.dtype, w.rows * w.cols);
  ExecOptions options;
  options.kernel = kernel;
  dequantize(w, out.mbuf(), false, options);
  std::vector<float> v(out.count());
  for (size_t i = 0; i < v.size(); ++i) v[i] = out.at(i);
  return v;
}

}  // namespace

TEST(Microscaled, E2m1TiesGoToTheSmallerMagnitudeAndMinusZeroToCodeZero) {
  // max |w| = 6: scale 6 / 6 = 1, e = 0, byte 127; q = w.
  const std::vector<float> g = {0, 0.25f, 0.75f,  1.25f,  1.75f, 2.5f, 3.5f, 5,  //
                                6, -0.0f, -0.25f, -0.75f, -5,    -6,   0.3f, 0};
  for (DType dtype : kAllDtypes) {
    for (QuantSpec spec : {kMxfp4, kNvfp4}) {
      auto q = quantize_values(padded(g, 32), 1, spec, dtype);
      // codes 0 0 1 2 3 4 5 6 | 7 0 0 9 14 15 1 0
      EXPECT_EQ(q.packed[0], 0x65432100u) << dtype_name(dtype);
      EXPECT_EQ(q.packed[1], 0x01FE9007u) << dtype_name(dtype);
      EXPECT_EQ(q.packed[2], 0u);
      EXPECT_EQ(q.packed[3], 0u);
      if (spec.mode == QuantMode::Mxfp4) {
        EXPECT_EQ(q.scales[0], 127);
      } else {
        EXPECT_EQ(q.scales[0], 0x38);  // E4M3 1.0
        EXPECT_EQ(q.scales[1], 0x00);  // an all-zero group: scale 0 (its codes: 0 / 0 -> 0)
      }
      const auto d = dequantized(q.matrix);
      EXPECT_EQ(d[1], 0.0f);
      EXPECT_EQ(d[7], 4.0f);
      EXPECT_EQ(d[11], -0.5f);
      EXPECT_EQ(d[12], -4.0f);
      EXPECT_FALSE(std::signbit(d[9]));  // -0.0 came back as +0
    }
  }
}

TEST(Microscaled, E8m0IsTheNearestPowerOfTwoSoElementsSaturate) {
  for (DType dtype : kAllDtypes) {
    // 8.4 / 6 = 1.4, log2 = 0.49 -> e = 0 (OCP's floor(log2(8.4)) - 2 would give 1): 8.4 and
    // 7 saturate to 6.
    auto a = quantize_values(padded({8.4f, -8.4f, 7, 1}, 32), 1, kMxfp4, dtype);
    EXPECT_EQ(a.scales[0], 127);
    EXPECT_EQ(a.packed[0], 0x27F7u);
    // 10 / 6 = 1.67, log2 = 0.74 -> e = 1 (byte 128): q = 5 (tie -> 4), -5 -> -4, 3 -> 1.5.
    auto b = quantize_values(padded({10, -10, 3}, 32), 1, kMxfp4, dtype);
    EXPECT_EQ(b.scales[0], 128);
    EXPECT_EQ(b.packed[0], 0x3E6u);
    EXPECT_EQ(dequantized(b.matrix)[0], 8.0f);
  }
}

TEST(Microscaled, E8m0ExponentIsRoundedInTheWeightDtype) {
  // A = 7.40625 * 2^101: A / 6 = 1.234375 * 2^101, log2 = 101.3038. In f32 rint -> 101; in
  // bf16 the log2 itself rounds to 101.5 first (spacing 0.5 there) and rint(101.5) = 102.
  const float a = std::ldexp(7.40625f, 101);
  auto f32 = quantize_values(padded({a}, 32), 1, kMxfp4, DType::F32);
  EXPECT_EQ(f32.scales[0], 228);
  EXPECT_EQ(code4(f32, 0), 7u);  // 7.406 saturates to 6
  auto bf16 = quantize_values(padded({a}, 32), 1, kMxfp4, DType::BF16);
  EXPECT_EQ(bf16.scales[0], 229);
  EXPECT_EQ(code4(bf16, 0), 6u);  // 3.703 -> 4
}

TEST(Microscaled, E4m3RoundsToNearestEvenAndSaturates) {
  using microscaled::e4m3_from_f32;
  using microscaled::e4m3_to_f32;
  EXPECT_EQ(e4m3_from_f32(0.3f), 0x2A);                   // 1.2 * 2^-2 -> 1.25 * 2^-2
  EXPECT_EQ(e4m3_from_f32(1.0625f), 0x38);                // tie between 1 and 1.125 -> 1
  EXPECT_EQ(e4m3_from_f32(1.1875f), 0x3A);                // tie between 1.125 and 1.25 -> 1.25
  EXPECT_EQ(e4m3_from_f32(std::ldexp(1.0f, -9)), 0x01);   // smallest subnormal
  EXPECT_EQ(e4m3_from_f32(std::ldexp(1.0f, -10)), 0x00);  // tie with 0 -> 0
  EXPECT_EQ(e4m3_from_f32(std::ldexp(3.0f, -10)), 0x02);  // 1.5 ulp -> 2
  EXPECT_EQ(e4m3_from_f32(std::ldexp(7.5f, -9)), 0x08);   // up into the normals
  EXPECT_EQ(e4m3_from_f32(-0.0f), 0x80);
  EXPECT_EQ(e4m3_from_f32(448.0f), 0x7E);
  EXPECT_EQ(e4m3_from_f32(447.0f), 0x7E);  // rounds to 448
  EXPECT_EQ(e4m3_from_f32(415.0f), 0x7D);  // rounds to 416
  EXPECT_EQ(e4m3_from_f32(432.0f), 0x7E);  // tie between 416 and 448 -> even (448)
  EXPECT_EQ(e4m3_from_f32(464.0f), 0x7E);  // >= 448 saturates (checked against MLX's to_fp8)
  EXPECT_EQ(e4m3_from_f32(470.0f), 0x7E);  // would round to 480 (0x7F): saturates instead
  EXPECT_EQ(e4m3_from_f32(479.0f), 0x7E);
  EXPECT_EQ(e4m3_from_f32(480.0f), 0x7E);
  EXPECT_EQ(e4m3_from_f32(-1e30f), 0xFE);
  EXPECT_EQ(e4m3_from_f32(INFINITY), 0x7E);
  EXPECT_EQ(e4m3_from_f32(-INFINITY), 0xFE);
  EXPECT_EQ(e4m3_from_f32(std::numeric_limits<float>::quiet_NaN()), 0x7E);
  EXPECT_EQ(e4m3_to_f32(0x7F), 480.0f);
  EXPECT_EQ(e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_f32(0xB8), -1.0f);
  for (int b = 0; b < 256; ++b) {  // every byte but 0x7F / 0xFF round-trips
    if ((b & 0x7F) == 0x7F) continue;
    EXPECT_EQ(e4m3_from_f32(e4m3_to_f32(static_cast<uint8_t>(b))), b) << b;
  }
}

TEST(Microscaled, Mxfp8GroupCodesSaturateAt448) {
  for (DType dtype : kAllDtypes) {
    // max 500: 500 / 448 = 1.116 -> e = 0, byte 127; elements stay as they are.
    auto q = quantize_values(padded({500, 470, 464, -470, 0.3f, -0.0f, 1.0625f, 0}, 32), 1, kMxfp8,
                             dtype);
    EXPECT_EQ(q.scales[0], 127) << dtype_name(dtype);
    EXPECT_EQ(q.packed[0], 0xFE7E7E7Eu);  // as MLX: 500, 470, 464 -> 448; -470 -> -448
    EXPECT_EQ(byte8(q, 5), 0x80u);  // -0.0 keeps its sign in E4M3
    EXPECT_EQ(byte8(q, 6), 0x38u);
    EXPECT_EQ(byte8(q, 7), 0x00u);
    const auto d = dequantized(q.matrix);
    EXPECT_EQ(d[0], 448.0f);
    EXPECT_EQ(d[1], 448.0f);
    EXPECT_TRUE(std::signbit(d[5]));
  }
  // max 896: e = 1, element 2.2 / 2 = 1.1 -> 1.125 -> dequantized 2.25.
  auto q = quantize_values(padded({896, 2.2f}, 32), 1, kMxfp8, DType::F32);
  EXPECT_EQ(q.scales[0], 128);
  EXPECT_EQ(byte8(q, 1), 0x39u);
  EXPECT_EQ(dequantized(q.matrix)[1], 2.25f);
}

TEST(Microscaled, AllZeroGroups) {
  for (DType dtype : kAllDtypes) {
    auto a = quantize_values(padded({-0.0f}, 32), 1, kMxfp4, dtype);
    EXPECT_EQ(a.scales[0], 127);  // scale 0 -> e = 0
    EXPECT_EQ(a.packed[0], 0u);
    auto b = quantize_values(padded({-0.0f}, 32), 1, kMxfp8, dtype);
    EXPECT_EQ(b.scales[0], 127);
    EXPECT_EQ(b.packed[0], 0x80u);
    auto c = quantize_values(padded({-0.0f}, 16), 1, kNvfp4, dtype);
    EXPECT_EQ(c.scales[0], 0);  // E4M3 zero; 0 / 0 is NaN, whose code is 0
    EXPECT_EQ(c.packed[0], 0u);
    for (float v : dequantized(c.matrix)) EXPECT_EQ(v, 0.0f);
  }
}

TEST(Microscaled, NanAndInfGroupsGiveIntMinExponents) {
  // max |w| = NaN / Inf: log2 -> rint -> int32 gives INT32_MIN on x86-64; 2^e = 0, so every
  // element is divided by 0: E2M1 codes 0 (no distance to a NaN / Inf is smaller than the
  // first), E4M3 +-448. The byte is uint8(float(INT32_MIN) + 127): in f32 -2147483520 -> 0x80;
  // in bf16 the sum rounds back to -2^31 -> 0; in f16 float(INT32_MIN) is -Inf -> 0.
  const uint8_t expected_byte[] = {0x80, 0x00, 0x00};  // f32, f16, bf16
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), INFINITY, -INFINITY}) {
    for (DType dtype : kAllDtypes) {
      const auto byte = expected_byte[static_cast<int>(dtype)];
      auto a = quantize_values(padded({1, bad, -3}, 32), 1, kMxfp4, dtype);
      EXPECT_EQ(a.scales[0], byte) << dtype_name(dtype) << " " << bad;
      EXPECT_EQ(a.packed[0], 0u);
      auto b = quantize_values(padded({1, bad, -3}, 32), 1, kMxfp8, dtype);
      EXPECT_EQ(b.scales[0], byte);
      EXPECT_EQ(byte8(b, 0), 0x7Eu);          // 1 / 0 = Inf
      EXPECT_EQ(byte8(b, 2), 0xFEu);          // -3 / 0 = -Inf
      EXPECT_EQ(byte8(b, 3) & 0x7Fu, 0x7Eu);  // 0 / 0 = NaN: 448 with the NaN's sign
      // nvfp4: the scale NaN / Inf saturates to E4M3 448 (0x7E, |max| has no sign).
      auto c = quantize_values(padded({1, bad, -3}, 16), 1, kNvfp4, dtype);
      EXPECT_EQ(c.scales[0], 0x7E);
      EXPECT_EQ(code4(c, 0), 0u);  // 1 / 448 -> 0
      EXPECT_EQ(code4(c, 1), 0u);  // NaN / Inf -> 0
    }
  }
}

TEST(Microscaled, SubnormalGroups) {
  // f32: max 2^-140; 2^-140 / 6 rounds to 85 * 2^-149, log2 = -142.59 -> e = -143, byte
  // uint8(-16) = 240 (no clamp); q = 8 -> 6, 2^-142 -> 2, 2^-149 -> 2^-6 -> 0.
  auto a = quantize_values(
      padded({std::ldexp(1.0f, -140), std::ldexp(1.0f, -142), std::ldexp(1.0f, -149)}, 32), 1,
      kMxfp4, DType::F32);
  EXPECT_EQ(a.scales[0], 240);
  EXPECT_EQ(a.packed[0], 0x047u);
  // max 2^-149: the scale 2^-149 / 6 rounds to 0 -> e = 0, byte 127, q = 2^-149 -> 0.
  auto b = quantize_values(padded({std::ldexp(1.0f, -149)}, 32), 1, kMxfp4, DType::F32);
  EXPECT_EQ(b.scales[0], 127);
  EXPECT_EQ(b.packed[0], 0u);
  // bf16: 2^-130 / 6 = 1.33 * 2^-133 rounds to bf16's smallest subnormal 2^-133 -> e = -133,
  // byte uint8(-6) = 250, q = 8 -> 6.
  auto c = quantize_values(padded({std::ldexp(1.0f, -130)}, 32), 1, kMxfp4, DType::BF16);
  EXPECT_EQ(c.scales[0], 250);
  EXPECT_EQ(c.packed[0], 7u);
  // f16: 2^-20 / 6 rounds to 3 * 2^-24, log2 = -22.42 -> e = -22 (f32 would say -23), byte
  // 105, q = 4.
  auto d = quantize_values(padded({std::ldexp(1.0f, -20)}, 32), 1, kMxfp4, DType::F16);
  EXPECT_EQ(d.scales[0], 105);
  EXPECT_EQ(d.packed[0], 6u);
  auto e = quantize_values(padded({std::ldexp(1.0f, -20)}, 32), 1, kMxfp4, DType::F32);
  EXPECT_EQ(e.scales[0], 104);
  EXPECT_EQ(e.packed[0], 7u);
}

TEST(Microscaled, DequantizeScalesInTheOutputDtype) {
  // Hand-made bytes: codes 7 (6.0) and 1 (0.5) under E8M0 scales 0, 142, 143, 255.
  std::vector<uint32_t> packed(16, 0x17u);
  std::vector<uint8_t> scales = {0, 142, 143, 255};
  QuantizedMatrix w;
  w.packed = {packed.data(), packed.size() * 4};
  w.scales = {scales.data(), scales.size()};
  w.rows = 1;
  w.cols = 128;
  w.spec = kMxfp4;
  for (DType dtype : kAllDtypes) {
    w.dtype = dtype;
    const auto d = dequantized(w);
    const float s0 = dtype == DType::F16 ? 0.0f : std::ldexp(6.0f, -127);  // f16: 2^-127 -> 0
    EXPECT_EQ(d[0], s0) << dtype_name(dtype);
    EXPECT_EQ(d[32], dtype == DType::F16 ? INFINITY : 196608.0f);  // 6 * 2^15
    EXPECT_EQ(d[33], 16384.0f);
    EXPECT_EQ(d[64 + 1], dtype == DType::F16 ? INFINITY : 32768.0f);  // 2^16 is Inf in f16
    EXPECT_EQ(d[96], INFINITY);      // byte 255 decodes as 2^128 = Inf
    EXPECT_TRUE(std::isnan(d[98]));  // 0 * Inf
  }
}

TEST(Microscaled, Nvfp4ScaleIsE4m3AndGlobalScaleEncodesIt) {
  // max 7: 7 / 6 = 1.167 -> E4M3 1.125 (0x39); q = 7 / 1.125 = 6.2 -> 6, 2 / 1.125 = 1.78 -> 2.
  for (DType dtype : kAllDtypes) {
    auto q = quantize_values(padded({7, 2}, 16), 1, kNvfp4, dtype);
    EXPECT_EQ(q.scales[0], 0x39);
    EXPECT_EQ(q.packed[0], 0x47u);
    EXPECT_EQ(dequantized(q.matrix)[0], 6.75f);
  }
  // global scale 448: scales are encoded times 2688 / 448 = 6: max 6 -> 1 * 6 -> 0x4C; q =
  // w / 6 * 6.
  QuantSpec spec = kNvfp4;
  spec.global_scale = 448.0f;
  auto g = quantize_values(padded({6, 3, 1, -2, 0.4f}, 16), 1, spec, DType::F32);
  EXPECT_EQ(g.scales[0], 0x4C);
  EXPECT_EQ(g.packed[0], 0x1C257u);
  const auto d = dequantized(g.matrix);  // 6 * (6 * 448 / 2688) = 6
  EXPECT_NEAR(d[0], 6.0f, 1e-6f);
  EXPECT_NEAR(d[3], -2.0f, 1e-6f);
}

TEST(Microscaled, ReferenceAndEveryKernelAgree) {
  const size_t rows = 24, cols = 256;
  const auto values = random_values(rows * cols, 7, cols);
  for (QuantSpec spec : {kMxfp4, kMxfp8, kNvfp4}) {
    for (DType dtype : kAllDtypes) {
      auto ref = quantize_values(values, rows, spec, dtype, KernelChoice::Reference);
      const auto ref_d = dequantized(ref.matrix, KernelChoice::Reference);
      for (KernelChoice kernel : runnable_kernels()) {
        auto q = quantize_values(values, rows, spec, dtype, kernel);
        EXPECT_EQ(q.packed, ref.packed) << mode_name(spec.mode);
        EXPECT_EQ(q.scales, ref.scales);
        const auto d = dequantized(q.matrix, kernel);
        for (size_t i = 0; i < d.size(); ++i) {
          ASSERT_EQ(bit_cast<uint32_t>(d[i]), bit_cast<uint32_t>(ref_d[i])) << i;
        }
      }
      // Dequantized values sit close to the input (relative to the group's max).
      for (size_t i = 0; i < values.size(); ++i) {
        const size_t g0 = i / spec.group_size * spec.group_size;
        float amax = 0;
        for (int j = 0; j < spec.group_size; ++j) amax = std::max(amax, std::fabs(values[g0 + j]));
        EXPECT_LE(std::fabs(ref_d[i] - values[i]), amax * 0.4f) << i;
      }
    }
  }
}

TEST(Microscaled, MatmulMatchesDequantizeThenMatmulOnEveryKernel) {
  const size_t n = 40, k = 256;
  const auto values = random_values(n * k, 11, k);
  for (QuantSpec spec : {kMxfp4, kMxfp8, kNvfp4}) {
    for (bool transpose : {true, false}) {
      QuantSpec s = spec;
      if (spec.mode == QuantMode::Nvfp4 && !transpose) s.global_scale = 100.0f;
      // transpose=true: w is [N, K] = [40, 256]; false: [K, N] = [64, 160].
      auto q = quantize_values(values, transpose ? n : 64, s, DType::BF16);
      const size_t k_dim = transpose ? q.matrix.cols : q.matrix.rows;
      const size_t n_dim = transpose ? q.matrix.rows : q.matrix.cols;
      for (size_t m : {1, 3, 5, 9}) {
        for (DType x_dtype : kAllDtypes) {
          TypedBuffer x(x_dtype, random_values(m * k_dim, 3 + m));
          TypedBuffer expected(DType::F32, m * n_dim);
          ExecOptions ref;
          ref.kernel = KernelChoice::Reference;
          quantized_matmul(x.cbuf(), x_dtype, m, q.matrix, transpose, DType::F32, expected.mbuf(),
                           ref);
          for (KernelChoice kernel : runnable_kernels()) {
            ExecOptions options;
            options.kernel = kernel;
            TypedBuffer out(DType::F32, m * n_dim);
            quantized_matmul(x.cbuf(), x_dtype, m, q.matrix, transpose, DType::F32, out.mbuf(),
                             options);
            for (size_t i = 0; i < m * n_dim; ++i) {
              ASSERT_NEAR(out.at(i), expected.at(i), 2e-4f * (1.0f + std::fabs(expected.at(i))))
                  << mode_name(spec.mode) << " transpose " << transpose << " m " << m << " i " << i
                  << " kernel " << static_cast<int>(kernel);
            }
          }
        }
      }
    }
  }
}

TEST(Microscaled, ValidationNamesTheProblem) {
  std::vector<float> dense(64);
  std::vector<uint32_t> packed(8);
  std::vector<uint8_t> scales(4);
  auto run = [&](QuantSpec spec, size_t biases_bytes) {
    std::vector<uint8_t> biases(biases_bytes + 1);
    quantize({dense.data(), 256}, DType::F32, 1, 64, spec, {packed.data(), 32},
             {scales.data(), static_cast<size_t>(64 / spec.group_size)},
             {biases_bytes ? biases.data() : nullptr, biases_bytes});
  };
  try {
    run({4, 64, QuantMode::Mxfp4}, 0);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "mxfp4 needs group_size 32 and bits 4 (got group_size 64, bits 4)");
  }
  EXPECT_THROW(run({8, 32, QuantMode::Mxfp4}, 0), InvalidArgument);
  EXPECT_THROW(run({4, 32, QuantMode::Nvfp4}, 0), InvalidArgument);
  EXPECT_THROW(run(kMxfp4, 2), InvalidArgument);  // biases must be empty
  QuantSpec bad = kMxfp4;
  bad.global_scale = 2.0f;
  EXPECT_THROW(run(bad, 0), InvalidArgument);
  EXPECT_NO_THROW(run(kMxfp4, 0));
  EXPECT_EQ(QuantizedLayout(3, 64, kNvfp4, DType::BF16).scales_bytes, 12u);
  EXPECT_EQ(QuantizedLayout(3, 64, kNvfp4, DType::BF16).biases_bytes, 0u);
  EXPECT_EQ(QuantizedLayout(3, 64, kMxfp8, DType::F32).packed_bytes, 3u * 64u);
}

TEST(Microscaled, Nvfp4TailGroupOnEveryKernel) {
  // K = 48: one full block of 32 columns and a tail group of 16.
  const size_t n = 9, k = 48, m = 2;
  auto q = quantize_values(random_values(n * k, 5, k), n, kNvfp4, DType::F32);
  TypedBuffer x(DType::F32, random_values(m * k, 6));
  TypedBuffer expected(DType::F32, m * n);
  ExecOptions ref;
  ref.kernel = KernelChoice::Reference;
  quantized_matmul(x.cbuf(), DType::F32, m, q.matrix, true, DType::F32, expected.mbuf(), ref);
  for (KernelChoice kernel : runnable_kernels()) {
    ExecOptions options;
    options.kernel = kernel;
    TypedBuffer out(DType::F32, m * n);
    quantized_matmul(x.cbuf(), DType::F32, m, q.matrix, true, DType::F32, out.mbuf(), options);
    for (size_t i = 0; i < m * n; ++i) {
      EXPECT_NEAR(out.at(i), expected.at(i), 1e-4f * (1.0f + std::fabs(expected.at(i)))) << i;
    }
  }
}

TEST(Microscaled, SimdStepTailsOnEveryKernel) {
  // K not a multiple of 128 (the AVX-512 4-bit step) nor, for nvfp4, of 32: the tails run
  // separately.
  for (QuantSpec spec : {kMxfp4, kMxfp8, kNvfp4}) {
    for (size_t k : {32, 96, 160, 208}) {
      if (k % spec.group_size != 0) continue;
      const size_t n = 11, m = 5;
      auto q = quantize_values(random_values(n * k, 9 + k, k), n, spec, DType::BF16);
      TypedBuffer x(DType::F32, random_values(m * k, 10 + k));
      TypedBuffer expected(DType::F32, m * n);
      ExecOptions ref;
      ref.kernel = KernelChoice::Reference;
      quantized_matmul(x.cbuf(), DType::F32, m, q.matrix, true, DType::F32, expected.mbuf(), ref);
      for (KernelChoice kernel : runnable_kernels()) {
        ExecOptions options;
        options.kernel = kernel;
        TypedBuffer out(DType::F32, m * n);
        quantized_matmul(x.cbuf(), DType::F32, m, q.matrix, true, DType::F32, out.mbuf(), options);
        for (size_t i = 0; i < m * n; ++i) {
          ASSERT_NEAR(out.at(i), expected.at(i), 1e-4f * (1.0f + std::fabs(expected.at(i))))
              << mode_name(spec.mode) << " k " << k << " i " << i;
        }
      }
    }
  }
}

namespace {

// quantized_matmul of every runnable kernel (and the AVX-512 one again with AVX512_BF16 off,
// so its 4-bit GEMV takes the f32 path for bf16 x too) against the scalar reference.
void expect_every_kernel_matches(const Quantized& q, bool transpose, size_t m, DType x_dtype,
                                 DType out_dtype, uint32_t seed, const std::string& label) {
  const size_t k_dim = transpose ? q.matrix.cols : q.matrix.rows;
  const size_t n_dim = transpose ? q.matrix.rows : q.matrix.cols;
  TypedBuffer x(x_dtype, random_values(m * k_dim, seed));
  TypedBuffer expected(out_dtype, m * n_dim);
  ExecOptions ref;
  ref.kernel = KernelChoice::Reference;
  quantized_matmul(x.cbuf(), x_dtype, m, q.matrix, transpose, out_dtype, expected.mbuf(), ref);
  const float out_eps = out_dtype == DType::F32 ? 0.0f : out_dtype == DType::F16 ? 1e-3f : 8e-3f;
  auto check = [&](KernelChoice kernel, const char* variant) {
    ExecOptions options;
    options.kernel = kernel;
    TypedBuffer out(out_dtype, m * n_dim);
    quantized_matmul(x.cbuf(), x_dtype, m, q.matrix, transpose, out_dtype, out.mbuf(), options);
    for (size_t i = 0; i < m * n_dim; ++i) {
      const float e = expected.at(i);
      ASSERT_NEAR(out.at(i), e, 2e-4f * (1.0f + std::fabs(e)) + out_eps * std::fabs(e))
          << label << " transpose " << transpose << " m " << m << " x " << dtype_name(x_dtype)
          << " i " << i << " kernel " << static_cast<int>(kernel) << variant;
    }
  };
  for (KernelChoice kernel : runnable_kernels()) {
    check(kernel, "");
    if (kernel == KernelChoice::Avx512 && detail::cpu_features().avx512_bf16) {
      detail::CpuFeatures no_bf16;
      no_bf16.avx2_fma = no_bf16.avx512 = no_bf16.avx512_vnni = true;
      detail::ScopedCpuFeatures scoped(no_bf16);
      check(kernel, " (no AVX512_BF16)");
    }
  }
}

}  // namespace

TEST(Microscaled, GemvAndGemmSizedMBothLayoutsOnEveryKernel) {
  // m across the GEMV (<= 8) and GEMM paths (several 6-row microkernel passes); K past one
  // 256-column panel and not a multiple of 128; N with 16-column (nvfp4) and 32-column tails.
  for (QuantSpec spec : {kMxfp4, kMxfp8, kNvfp4}) {
    for (bool transpose : {true, false}) {
      const size_t k = spec.mode == QuantMode::Nvfp4 ? 336 : 352;
      const size_t n = spec.mode == QuantMode::Nvfp4 ? 80 : 96;
      const size_t rows = transpose ? n : k, cols = transpose ? k : n;
      QuantSpec s = spec;
      if (spec.mode == QuantMode::Nvfp4 && transpose) s.global_scale = 37.0f;
      auto q = quantize_values(random_values(rows * cols, 21 + cols, cols), rows, s, DType::BF16);
      for (size_t m : {1, 2, 7, 8, 9, 20}) {
        for (DType x_dtype : kAllDtypes) {
          expect_every_kernel_matches(q, transpose, m, x_dtype, DType::F32, 5 + m,
                                      mode_name(spec.mode));
        }
      }
      expect_every_kernel_matches(q, transpose, 3, DType::BF16, DType::BF16, 99,
                                  mode_name(spec.mode));
    }
  }
}

TEST(Microscaled, F32ActivationsThatAreBf16ValuesOnEveryKernel) {
  // f32 x whose values are all bf16 numbers (the AVX-512 4-bit GEMV then uses bf16 dot
  // products), and the same x with one value that is not (f32 FMAs).
  for (QuantSpec spec : {kMxfp4, kNvfp4}) {
    const size_t n = 12, k = 512;
    auto q = quantize_values(random_values(n * k, 31, k), n, spec, DType::F32);
    for (bool all_bf16 : {true, false}) {
      std::vector<float> xv = random_values(2 * k, 32);
      for (float& v : xv) v = bf16_bits_to_f32(f32_to_bf16_bits(v));
      if (!all_bf16) xv[77] = 1.0f + 1.0f / 1024;
      TypedBuffer x(DType::F32, xv);
      TypedBuffer expected(DType::F32, 2 * n);
      ExecOptions ref;
      ref.kernel = KernelChoice::Reference;
      quantized_matmul(x.cbuf(), DType::F32, 2, q.matrix, true, DType::F32, expected.mbuf(), ref);
      for (KernelChoice kernel : runnable_kernels()) {
        ExecOptions options;
        options.kernel = kernel;
        TypedBuffer out(DType::F32, 2 * n);
        quantized_matmul(x.cbuf(), DType::F32, 2, q.matrix, true, DType::F32, out.mbuf(), options);
        for (size_t i = 0; i < 2 * n; ++i) {
          ASSERT_NEAR(out.at(i), expected.at(i), 1e-4f * (1.0f + std::fabs(expected.at(i))))
              << mode_name(spec.mode) << " all_bf16 " << all_bf16 << " i " << i;
        }
      }
    }
  }
}

TEST(Microscaled, EveryElementCodeAndScaleByteOnEveryKernel) {
  // Packed words and scale bytes drawn directly (not from quantize): every E2M1 code and every
  // E4M3 byte (subnormals, -0, the 0x7F/0xFF that MLX decodes as +-480) with scales from tiny
  // (E8M0 0 is 2^-127; E4M3 subnormals) to large, through every kernel's decoder. Scales that far
  // apart cancel, so the bound is relative to sum |x * w| (the reference run on |x| and |W|: the
  // codes with their sign bits cleared), as within_f32_gemv_bound's.
  std::mt19937 rng(77);
  for (QuantSpec spec : {kMxfp4, kMxfp8, kNvfp4}) {
    for (bool transpose : {true, false}) {
      const size_t rows = transpose ? 24 : 256, cols = transpose ? 256 : 96;
      Quantized q, a;
      q.packed.resize(rows * cols * spec.bits / 32);
      q.scales.resize(rows * cols / spec.group_size);
      for (auto& word : q.packed) word = static_cast<uint32_t>(rng());
      for (size_t i = 0; i < q.scales.size(); ++i) {
        const uint32_t r = static_cast<uint32_t>(rng());
        if (spec.mode == QuantMode::Nvfp4) {
          q.scales[i] = static_cast<uint8_t>(r % 0x7F);  // E4M3 0 .. 448, subnormals included
        } else {
          q.scales[i] =
              i % 17 == 0 ? 0 : static_cast<uint8_t>(100 + r % 50);  // 2^-127, 2^-27..2^22
        }
      }
      a.packed = q.packed;
      for (auto& word : a.packed) word &= spec.bits == 4 ? 0x77777777u : 0x7F7F7F7Fu;
      a.scales = q.scales;
      for (Quantized* t : {&q, &a}) {
        t->matrix.packed = {t->packed.data(), t->packed.size() * 4};
        t->matrix.scales = {t->scales.data(), t->scales.size()};
        t->matrix.dtype = DType::F32;
        t->matrix.rows = rows;
        t->matrix.cols = cols;
        t->matrix.spec = spec;
      }
      const size_t k_dim = transpose ? cols : rows, n_dim = transpose ? rows : cols;
      for (size_t m : {1, 3, 9}) {
        for (DType x_dtype : {DType::BF16, DType::F32}) {
          std::vector<float> xv = random_values(m * k_dim, 40 + m);
          TypedBuffer x(x_dtype, xv);
          for (float& v : xv) v = std::fabs(v);
          TypedBuffer x_abs(x_dtype, xv);
          ExecOptions ref;
          ref.kernel = KernelChoice::Reference;
          TypedBuffer expected(DType::F32, m * n_dim), sum_abs(DType::F32, m * n_dim);
          quantized_matmul(x.cbuf(), x_dtype, m, q.matrix, transpose, DType::F32, expected.mbuf(),
                           ref);
          quantized_matmul(x_abs.cbuf(), x_dtype, m, a.matrix, transpose, DType::F32,
                           sum_abs.mbuf(), ref);
          for (KernelChoice kernel : runnable_kernels()) {
            ExecOptions options;
            options.kernel = kernel;
            TypedBuffer out(DType::F32, m * n_dim);
            quantized_matmul(x.cbuf(), x_dtype, m, q.matrix, transpose, DType::F32, out.mbuf(),
                             options);
            for (size_t i = 0; i < m * n_dim; ++i) {
              ASSERT_LE(std::fabs(out.at(i) - expected.at(i)), 1e-5f * sum_abs.at(i) + 1e-30f)
                  << mode_name(spec.mode) << " transpose " << transpose << " m " << m << " x "
                  << dtype_name(x_dtype) << " i " << i << " kernel " << static_cast<int>(kernel);
            }
          }
        }
      }
    }
  }
}
