// The fast microscaled quantizer (microscaled/quantize_fast.h, its AVX2 and AVX-512 kernels)
// against the scalar reference (reference::quantize_rows, itself checked byte for byte against
// MLX): identical bytes for every kernel choice this CPU runs, every mode and dtype, and its two
// shortcuts checked on their own: the E2M1 encoder against the reference's 16-entry argmin (all
// f16 and bf16 patterns, every f32 boundary neighbourhood, millions of random f32 values) and the
// E8M0 exponent thresholds against the reference's log2 / rint expression.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/quantize_fast.h"
#include "nx_quant/kernels.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;
namespace fast = nx_quant::microscaled::fast;

std::vector<KernelChoice> runnable_kernels();  // matmul_test.cpp

namespace {

constexpr QuantSpec kMxfp4{4, 32, QuantMode::Mxfp4};
constexpr QuantSpec kMxfp8{8, 32, QuantMode::Mxfp8};
constexpr QuantSpec kNvfp4{4, 16, QuantMode::Nvfp4};

QuantSpec nvfp4_global(float global_scale) {
  QuantSpec s = kNvfp4;
  s.global_scale = global_scale;
  return s;
}

// reference.cpp's nearest_e2m1, written out again: the first smallest |q - entry| (differences
// rounded to dtype) over the 16 entries by code.
uint32_t argmin_e2m1(float q, DType dtype) {
  uint32_t best_code = 0;
  float best = std::fabs(round_to_dtype(q - microscaled::kE2m1Values[0], dtype));
  for (uint32_t c = 1; c < 16; ++c) {
    const float d = std::fabs(round_to_dtype(q - microscaled::kE2m1Values[c], dtype));
    if (d < best) {
      best = d;
      best_code = c;
    }
  }
  return best_code;
}

float f32_from_bits(uint32_t b) {
  return bit_cast<float>(b);
}

float dtype_from_bits(DType dtype, uint32_t b) {
  return dtype == DType::F16 ? f16_bits_to_f32(static_cast<uint16_t>(b))
                             : bf16_bits_to_f32(static_cast<uint16_t>(b));
}

struct Packed {
  std::vector<uint32_t> words;
  std::vector<uint8_t> scales;
};

Packed run_reference(const TypedBuffer& dense, size_t rows, size_t cols, const QuantSpec& spec) {
  Packed p;
  p.words.assign(rows * cols * spec.bits / 32, 0x5A5A5A5Au);
  p.scales.assign(rows * cols / spec.group_size, 0xCD);
  microscaled::reference::quantize_rows(dense.bytes.data(), dense.dtype, cols, spec, 0, rows,
                                        p.words.data(), p.scales.data());
  return p;
}

Packed run_kernel(const TypedBuffer& dense, size_t rows, size_t cols, const QuantSpec& spec,
                  KernelChoice kernel, int threads = 1) {
  Packed p;
  p.words.assign(rows * cols * spec.bits / 32, 0xA5A5A5A5u);
  p.scales.assign(rows * cols / spec.group_size, 0x33);
  ExecOptions options;
  options.kernel = kernel;
  options.threads = threads;
  quantize(dense.cbuf(), dense.dtype, rows, cols, spec, {p.words.data(), p.words.size() * 4},
           {p.scales.data(), p.scales.size()}, {nullptr, 0}, options);
  return p;
}

// Every runnable kernel's bytes equal the reference's; the message names the first difference.
void expect_all_kernels_match(const TypedBuffer& dense, size_t rows, size_t cols,
                              const QuantSpec& spec, const std::string& what) {
  const Packed ref = run_reference(dense, rows, cols, spec);
  for (KernelChoice kernel : runnable_kernels()) {
    for (int threads : {1, 2}) {
      const Packed got = run_kernel(dense, rows, cols, spec, kernel, threads);
      const std::string where = what + " " + mode_name(spec.mode) + " " + dtype_name(dense.dtype) +
                                " global_scale " + std::to_string(spec.global_scale) + " kernel " +
                                kernel_name(kernel);
      for (size_t i = 0; i < ref.scales.size(); ++i) {
        ASSERT_EQ(got.scales[i], ref.scales[i]) << where << ": scale of group " << i;
      }
      for (size_t i = 0; i < ref.words.size(); ++i) {
        ASSERT_EQ(got.words[i], ref.words[i]) << where << ": word " << i << " (group "
                                              << i / (spec.group_size * spec.bits / 32) << ")";
      }
    }
  }
}

const QuantSpec kAllSpecs[] = {
    kMxfp4, kMxfp8, kNvfp4, nvfp4_global(1.0f), nvfp4_global(0.37f), nvfp4_global(3000.0f)};

}  // namespace

TEST(MicroscaledQuantize, E2m1CodeIsTheReferenceArgminForEvery16BitPattern) {
  // mxfp4 rounds the differences to the weight's dtype; nvfp4's q is f32 (differences in f32).
  for (DType dtype : {DType::F16, DType::BF16}) {
    size_t checked = 0;
    for (uint32_t b = 0; b < 65536; ++b) {
      const float q = dtype_from_bits(dtype, b);
      if (!(std::fabs(q) <= fast::kFastQMax)) continue;
      ++checked;
      ASSERT_EQ(fast::e2m1_code(q), argmin_e2m1(q, dtype)) << dtype_name(dtype) << " q " << q;
      ASSERT_EQ(fast::e2m1_code(q), argmin_e2m1(q, DType::F32)) << "f32 differences, q " << q;
      ASSERT_EQ(fast::e2m1_code_by_compares(q), fast::e2m1_code(q)) << "q " << q;
    }
    EXPECT_GT(checked, 30000u);
  }
}

TEST(MicroscaledQuantize, E2m1CodeIsTheReferenceArgminAroundEveryF32Boundary) {
  const float edges[] = {0.0f, 0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f,
                         3.0f, 3.5f,  4.0f, 5.0f,  6.0f, 7.0f,  8.0f, 12.0f, 16.0f};
  for (float edge : edges) {
    for (float sign : {1.0f, -1.0f}) {
      const int32_t center = static_cast<int32_t>(bit_cast<uint32_t>(edge));
      for (int32_t d = -20000; d <= 20000; ++d) {
        const int32_t b = center + d;
        if (b < 0) continue;
        const float q = sign * f32_from_bits(static_cast<uint32_t>(b));
        if (!(std::fabs(q) <= fast::kFastQMax)) continue;
        ASSERT_EQ(fast::e2m1_code(q), argmin_e2m1(q, DType::F32)) << "q " << q;
        ASSERT_EQ(fast::e2m1_code_by_compares(q), fast::e2m1_code(q)) << "q " << q;
      }
    }
  }
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> uniform(-16.0f, 16.0f);
  for (int i = 0; i < 2000000; ++i) {
    const float q = uniform(rng);
    ASSERT_EQ(fast::e2m1_code(q), argmin_e2m1(q, DType::F32)) << "q " << q;
    // Any bit pattern of magnitude <= 16 (tiny and subnormal values included).
    const float r = f32_from_bits(static_cast<uint32_t>(rng()) % 0x41800001u |
                                  (static_cast<uint32_t>(rng()) & 0x80000000u));
    ASSERT_EQ(fast::e2m1_code(r), argmin_e2m1(r, DType::F32)) << "q " << r;
    ASSERT_EQ(fast::e2m1_code_by_compares(r), fast::e2m1_code(r)) << "q " << r;
    ASSERT_EQ(fast::e2m1_code_by_compares(q), fast::e2m1_code(q)) << "q " << q;
  }
}

namespace {

int threshold_exponent(float scale, DType dtype) {
  const uint32_t sb = bit_cast<uint32_t>(scale);
  const uint32_t e = sb >> 23;
  return static_cast<int>(e) - 127 + ((sb & 0x7FFFFFu) >= fast::e8m0_thresholds(dtype)[e] ? 1 : 0);
}

}  // namespace

TEST(MicroscaledQuantize, E8m0ThresholdsGiveTheReferenceExponentForEvery16BitScale) {
  for (DType dtype : {DType::F16, DType::BF16}) {
    for (uint32_t b = 1; b < 0x8000; ++b) {
      const float scale = dtype_from_bits(dtype, b);
      // (f32-subnormal scales, bf16's smallest, take the reference instead.)
      if (!std::isfinite(scale) || bit_cast<uint32_t>(scale) < 0x00800000u) continue;
      ASSERT_EQ(threshold_exponent(scale, dtype), fast::e8m0_exponent_reference(scale, dtype))
          << dtype_name(dtype) << " scale " << scale;
    }
  }
}

TEST(MicroscaledQuantize, E8m0ThresholdsGiveTheReferenceExponentAroundEveryF32Step) {
  std::mt19937 rng(3);
  for (uint32_t e = 1; e < 255; ++e) {
    const uint32_t thr = fast::e8m0_thresholds(DType::F32)[e];
    for (int64_t d = -4096; d <= 4096; ++d) {
      for (int64_t m :
           {static_cast<int64_t>(thr) + d, d + 4096, (int64_t{1} << 23) - 1 - d - 4096}) {
        if (m < 0 || m >= (int64_t{1} << 23)) continue;
        const float scale = f32_from_bits((e << 23) | static_cast<uint32_t>(m));
        ASSERT_EQ(threshold_exponent(scale, DType::F32),
                  fast::e8m0_exponent_reference(scale, DType::F32))
            << "scale " << scale;
      }
    }
    for (int i = 0; i < 4000; ++i) {
      const float scale = f32_from_bits((e << 23) | (static_cast<uint32_t>(rng()) & 0x7FFFFFu));
      ASSERT_EQ(threshold_exponent(scale, DType::F32),
                fast::e8m0_exponent_reference(scale, DType::F32))
          << "scale " << scale;
    }
  }
}

// Every normal f32 scale (2^31 log2 calls, ~20 s): run by hand with
// --gtest_also_run_disabled_tests.
TEST(MicroscaledQuantize, DISABLED_E8m0ThresholdsGiveTheReferenceExponentForEveryF32Scale) {
  for (uint32_t b = 0x00800000u; b < 0x7F800000u; ++b) {
    const float scale = f32_from_bits(b);
    ASSERT_EQ(threshold_exponent(scale, DType::F32),
              fast::e8m0_exponent_reference(scale, DType::F32))
        << "scale " << scale;
  }
}

TEST(MicroscaledQuantize, RandomRowsOfSeveralScalesMatchTheReference) {
  for (const QuantSpec& spec : kAllSpecs) {
    for (DType dtype : kAllDtypes) {
      for (float scale : {1.0f, 0.02f, 1e-5f, 300.0f, 6e4f, 1e-30f, 1e30f}) {
        const size_t rows = 5, cols = 1120;  // 35 mx groups: two blocks of 16 and a tail
        auto values = random_values(rows * cols, 17, cols);
        for (auto& v : values) v *= scale;
        expect_all_kernels_match(TypedBuffer(dtype, values), rows, cols, spec,
                                 "normal * " + std::to_string(scale));
      }
    }
  }
}

TEST(MicroscaledQuantize, SpecialValuesMatchTheReference) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float specials[] = {0.0f,     -0.0f,
                            inf,      -inf,
                            nan,      -nan,
                            1e-40f,   -1e-42f,
                            1e-7f,    -6e-8f,
                            3e-39f,   65504.0f,
                            -70000.f, 1e38f,
                            -3e38f,   448.0f,
                            -464.0f,  6.0f,
                            -5.0f,    0.25f,
                            0.75f,    std::ldexp(1.0f, -149)};
  std::mt19937 rng(5);
  for (const QuantSpec& spec : kAllSpecs) {
    for (DType dtype : kAllDtypes) {
      const size_t gs = static_cast<size_t>(spec.group_size);
      const size_t rows = 5, cols = gs * 40;
      std::vector<float> values(rows * cols);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (size_t i = 0; i < values.size(); ++i) {
        const size_t g = i / gs;
        if (g % 6 == 0) {
          values[i] = 0.0f;  // all-zero groups (some -0.0)
          if (rng() % 3 == 0) values[i] = -0.0f;
        } else if (g % 6 == 1) {
          values[i] = specials[rng() % (sizeof(specials) / sizeof(specials[0]))];
        } else if (g % 6 == 2) {
          values[i] = normal(rng) * 1e-39f;  // subnormal in f32 and bf16
        } else if (g % 6 == 3) {
          values[i] = normal(rng) * 1e-6f;  // subnormal in f16
        } else {
          values[i] = normal(rng) * (rng() % 2 ? 1e4f : 1.0f);
          if (rng() % 16 == 0)
            values[i] = specials[rng() % (sizeof(specials) / sizeof(specials[0]))];
        }
      }
      expect_all_kernels_match(TypedBuffer(dtype, values), rows, cols, spec, "specials");
    }
  }
}

TEST(MicroscaledQuantize, ElementsExactlyAtTheMidpointsMatchTheReference) {
  // With max 6 (mxfp4, nvfp4) or 448 (mxfp8) the scale is 1 and q is the element itself: the
  // E2M1 midpoints, E4M3 rounding ties and their neighbours one ulp away.
  std::vector<float> mids;
  for (float m : {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 0.5f, 1.0f, 6.0f}) {
    for (float s : {1.0f, -1.0f}) {
      mids.push_back(s * m);
      mids.push_back(s * std::nextafter(m, 0.0f));
      mids.push_back(s * std::nextafter(m, 100.0f));
    }
  }
  for (float m : {1.0625f, 1.1875f, 17.0f, 19.0f, 0.0048828125f, 0.0009765625f, 432.0f, 464.0f}) {
    mids.push_back(m);
    mids.push_back(-m);
  }
  for (const QuantSpec& spec : {kMxfp4, kMxfp8, kNvfp4, nvfp4_global(2688.0f / 448.0f * 6.0f)}) {
    for (DType dtype : kAllDtypes) {
      const size_t gs = static_cast<size_t>(spec.group_size);
      std::vector<float> values;
      size_t next = 0;
      while (next < mids.size()) {
        values.push_back(spec.bits == 8 ? 448.0f : 6.0f);
        for (size_t j = 1; j < gs; ++j) {
          float v = mids[next++ % mids.size()];
          if (spec.bits == 4 && std::fabs(v) > 6.0f) v = v / 100.0f;
          values.push_back(v);
        }
      }
      expect_all_kernels_match(TypedBuffer(dtype, values), 1, values.size(), spec, "midpoints");
    }
  }
}

TEST(MicroscaledQuantize, Every16BitPatternAsElementAndAsGroupMaxMatchesTheReference) {
  for (const QuantSpec& spec : {kMxfp4, kMxfp8, kNvfp4, nvfp4_global(0.5f)}) {
    for (DType dtype : {DType::F16, DType::BF16}) {
      const size_t gs = static_cast<size_t>(spec.group_size);
      // As elements: every pattern after an anchor that fixes the group's scale (so the
      // pattern itself is q, or a small multiple of it), for a few anchors.
      for (float anchor : {spec.bits == 8 ? 448.0f : 6.0f, 1.0f, 1000.0f, 0.001f}) {
        std::vector<uint16_t> bits;
        for (uint32_t b = 0; b < 65536; ++b) {
          if (bits.size() % gs == 0) {
            bits.push_back(dtype == DType::F16 ? f32_to_f16_bits(anchor)
                                               : f32_to_bf16_bits(anchor));
          }
          bits.push_back(static_cast<uint16_t>(b));
        }
        while (bits.size() % gs) bits.push_back(0);
        TypedBuffer dense(dtype, bits.size());
        std::memcpy(dense.bytes.data(), bits.data(), bits.size() * 2);
        expect_all_kernels_match(dense, 1, bits.size(), spec,
                                 "patterns after anchor " + std::to_string(anchor));
      }
      // As group maxima: pattern p, then fractions of it and small values.
      std::vector<float> values;
      std::mt19937 rng(9);
      std::uniform_real_distribution<float> frac(-1.0f, 1.0f);
      for (uint32_t b = 0; b < 65536; ++b) {
        const float p = dtype_from_bits(dtype, b);
        values.push_back(p);
        for (size_t j = 1; j < gs; ++j)
          values.push_back(std::isfinite(p) ? p * frac(rng) : frac(rng));
      }
      expect_all_kernels_match(TypedBuffer(dtype, values), 1, values.size(), spec, "group maxima");
    }
  }
}

TEST(MicroscaledQuantize, TailShapesAndOddGlobalScalesMatchTheReference) {
  const QuantSpec specs[] = {kMxfp4,
                             kMxfp8,
                             kNvfp4,
                             nvfp4_global(1e-30f),  // encode overflows: every group the reference
                             nvfp4_global(-2.0f),   // negative encoding factor
                             nvfp4_global(1e-3f),   // scales saturate at 448: large q
                             nvfp4_global(1e30f)};  // scales encode to 0
  for (const QuantSpec& spec : specs) {
    for (DType dtype : kAllDtypes) {
      for (size_t rows : {1, 2, 3}) {
        for (size_t groups : {1, 2, 3, 5, 15, 16, 17, 33}) {
          const size_t cols = groups * static_cast<size_t>(spec.group_size);
          const auto values =
              random_values(rows * cols, static_cast<uint32_t>(rows * 31 + groups), cols);
          expect_all_kernels_match(
              TypedBuffer(dtype, values), rows, cols, spec,
              "rows " + std::to_string(rows) + " cols " + std::to_string(cols));
        }
      }
    }
  }
}

TEST(MicroscaledQuantize, ReferenceKernelChoiceRunsTheReference) {
  const auto values = random_values(4 * 64, 23, 64);
  for (const QuantSpec& spec : {kMxfp4, kMxfp8, kNvfp4}) {
    for (DType dtype : kAllDtypes) {
      const TypedBuffer dense(dtype, values);
      const Packed ref = run_reference(dense, 4, 64, spec);
      const Packed got = run_kernel(dense, 4, 64, spec, KernelChoice::Reference);
      EXPECT_EQ(got.words, ref.words);
      EXPECT_EQ(got.scales, ref.scales);
    }
  }
}

TEST(MicroscaledQuantize, OrdinaryGroupsTakeTheFastPath) {
  // (The byte-equality tests above would also pass if every group fell back to the reference.)
  // With a global scale g (MLX's: the tensor's max|w|) group maxima up to g are ordinary.
  for (const QuantSpec& spec : {kMxfp4, kMxfp8, kNvfp4, nvfp4_global(3000.0f)}) {
    for (DType dtype : kAllDtypes) {
      const fast::Context c(dtype, spec);
      ASSERT_TRUE(c.fast());
      fast::GroupScale s;
      for (float amax : {0.0f, 1e-3f, 0.02f, 1.0f, 6.0f, 100.0f, 3000.0f}) {
        EXPECT_TRUE(fast::group_scale(c, bit_cast<uint32_t>(amax), &s))
            << mode_name(spec.mode) << " " << dtype_name(dtype) << " max " << amax;
      }
      EXPECT_FALSE(fast::group_scale(c, 0x7F800000u, &s));  // Inf
      EXPECT_FALSE(fast::group_scale(c, 0x7FC00000u, &s));  // NaN
    }
  }
  EXPECT_FALSE(fast::Context(DType::F32, nvfp4_global(-1.0f)).fast());
  EXPECT_FALSE(fast::Context(DType::F32, nvfp4_global(1e-40f)).fast());  // 2688 / g = Inf
}

TEST(MicroscaledQuantize, EstimatesFollowTheKernel) {
  ExecOptions reference, portable, best;
  reference.kernel = KernelChoice::Reference;
  portable.kernel = KernelChoice::Portable;
  for (const QuantSpec& spec : {kMxfp4, kMxfp8, kNvfp4}) {
    const double r = estimated_quantize_ns(4096, 4096, spec, DType::BF16, reference);
    const double p = estimated_quantize_ns(4096, 4096, spec, DType::BF16, portable);
    const double a = estimated_quantize_ns(4096, 4096, spec, DType::BF16, best);
    EXPECT_GT(r, 4 * p);
    EXPECT_GE(p, a);
    EXPECT_GT(a, 4096.0 * 4096.0 * 0.5);  // never below what the fastest kernel measured
  }
}
