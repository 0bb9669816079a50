// exp and sigmoid written as f32/bf16/f16 take a SIMD exp in double (elementwise_avx2.cpp):
// every result within 1 ulp of the output type's rounding of the C library's double result
// (the documented guarantee), NaN/Inf/saturation exactly, almost always identical; the portable
// path (CPU features off) identical. Inputs: every f16 and bf16 value, f32 edges, 200,000 random
// f32 over the whole non-saturated range and random bit patterns; contiguous and strided.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "elementwise_semantics.h"
#include "nx_quant/dense_ops.h"

namespace nxq_test {
namespace {

// Distance in ulps between two values of a float type given as bits (NaN only equals NaN).
int64_t ulps_apart(Type t, uint64_t a, uint64_t b) {
  const int bits = static_cast<int>(tsize(t)) * 8;
  const uint64_t sign = uint64_t{1} << (bits - 1);
  auto is_nan = [&](uint64_t x) {
    const uint64_t mag = x & ~sign;
    if (t == Type::F32) return mag > 0x7F800000u;
    if (t == Type::BF16) return mag > 0x7F80u;
    return mag > 0x7C00u;  // f16
  };
  if (is_nan(a) || is_nan(b)) return is_nan(a) && is_nan(b) && a == b ? 0 : INT64_MAX;
  auto ordered = [&](uint64_t x) {
    const int64_t mag = static_cast<int64_t>(x & ~sign);
    return (x & sign) ? -mag : mag;
  };
  const int64_t d = ordered(a) - ordered(b);
  return d < 0 ? -d : d;
}

std::vector<uint64_t> inputs(Type t) {
  std::vector<uint64_t> v;
  if (t != Type::F32) {
    for (uint64_t x = 0; x < 0x10000; ++x) v.push_back(x);
    return v;
  }
  v = interesting_bits(Type::F32, 5, 50);
  // around exp's f32 overflow/underflow and sigmoid's saturation
  for (float x : {88.72f, 88.7228f, 88.73f, -87.33f, -103.27f, -103.98f, -104.0f, 16.6355f,
                  -16.6355f, 709.0f, 709.8f, -708.0f, -745.2f, 1.0e-8f, -1.0e-8f})
    v.push_back(fbits(x));
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> range(-110.0f, 95.0f);
  for (int i = 0; i < 150000; ++i) v.push_back(fbits(range(rng)));
  for (int i = 0; i < 50000; ++i) v.push_back(rng());
  return v;
}

struct Tally {
  size_t differing = 0;
  int64_t worst = 0;
  std::string first;
};

Tally compare(UnaryOp op, Type in_t, Type out_t, const std::vector<uint64_t>& bits, bool strided) {
  const Buf in = make_buf(in_t, bits);
  const int64_t n = static_cast<int64_t>(bits.size()) / (strided ? 2 : 1);
  const Shape shape{n};
  const View view = strided ? in.view_strided(0, {2}) : in.view(shape);
  Buf out(out_t, static_cast<size_t>(n));
  unary(op, shape, view, out_t, out.data());
  Tally tally;
  for (int64_t i = 0; i < n; ++i) {
    const size_t at = static_cast<size_t>(strided ? 2 * i : i);
    const uint64_t want = ref_bits(out_t, ref_unary(op, in.val(at)));
    const uint64_t got = out.get(static_cast<size_t>(i));
    if (got == want) continue;
    const int64_t d = ulps_apart(out_t, got, want);
    if (tally.differing++ == 0)
      tally.first = val_str(in.val(at)) + ": want " + bits_str(want) + ", got " + bits_str(got);
    tally.worst = std::max(tally.worst, d);
  }
  return tally;
}

TEST(DenseExpSimd, ExpAndSigmoidWithinOneUlpOfTheCLibrary) {
  for (Type in_t : {Type::F32, Type::BF16, Type::F16}) {
    const std::vector<uint64_t> bits = inputs(in_t);
    for (Type out_t : {in_t, Type::F32}) {
      for (UnaryOp op : {UnaryOp::Exp, UnaryOp::Sigmoid}) {
        for (bool strided : {false, true}) {
          const Tally t = compare(op, in_t, out_t, bits, strided);
          const std::string what = std::string(op == UnaryOp::Exp ? "exp " : "sigmoid ") +
                                   type_name(in_t) + " -> " + type_name(out_t) +
                                   (strided ? " strided" : "") + ": " + t.first;
          EXPECT_LE(t.worst, 1) << what;
          // a 1-ulp difference needs the exact value within a few double ulps of a rounding
          // boundary: rare (none at all on the portable path, checked below)
          EXPECT_LE(t.differing, bits.size() / 10000 + 1) << what;
        }
      }
    }
  }
}

TEST(DenseExpSimd, ThePortablePathIsTheCLibraryExactly) {
  nx_quant::detail::CpuFeatures none;
  nx_quant::detail::ScopedCpuFeatures scope(none);
  for (Type t : {Type::F32, Type::BF16}) {
    const std::vector<uint64_t> bits = inputs(t);
    for (UnaryOp op : {UnaryOp::Exp, UnaryOp::Sigmoid}) {
      const Tally tally = compare(op, t, t, bits, false);
      EXPECT_EQ(tally.differing, 0u) << tally.first;
    }
  }
}

TEST(DenseExpSimd, SpecialValuesExactly) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<uint64_t> bits = {fbits(0.0f),    fbits(-0.0f), fbits(inf),  fbits(-inf),
                                      0x7FC00000u,    0xFFC00001u,  0x7F800001u, fbits(100.0f),
                                      fbits(-200.0f), fbits(1.0f)};
  for (UnaryOp op : {UnaryOp::Exp, UnaryOp::Sigmoid}) {
    const Tally t = compare(op, Type::F32, Type::F32, bits, false);
    EXPECT_EQ(t.differing, 0u) << t.first;
  }
}

}  // namespace
}  // namespace nxq_test
