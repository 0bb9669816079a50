// dense::unary / binary / select / clip against the test-side model of Nx.BinaryBackend
// (elementwise_semantics.h): every op, every type, broadcast / negative / transposed strides,
// scalars, empty shapes, NaN/Inf/-0.0, canonical NaNs, integer wraparound, f16 double rounding,
// bf16 truncation, bad views.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "elementwise_semantics.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"

namespace nxq_test {
namespace {

using nx_quant::InvalidArgument;

constexpr BinaryOp kAllBinary[] = {
    BinaryOp::Add,        BinaryOp::Subtract,   BinaryOp::Multiply,   BinaryOp::Divide,
    BinaryOp::Pow,        BinaryOp::Max,        BinaryOp::Min,        BinaryOp::Quotient,
    BinaryOp::Remainder,  BinaryOp::Atan2,      BinaryOp::Equal,      BinaryOp::NotEqual,
    BinaryOp::Less,       BinaryOp::LessEqual,  BinaryOp::Greater,    BinaryOp::GreaterEqual,
    BinaryOp::LogicalAnd, BinaryOp::LogicalOr,  BinaryOp::LogicalXor, BinaryOp::BitwiseAnd,
    BinaryOp::BitwiseOr,  BinaryOp::BitwiseXor, BinaryOp::LeftShift,  BinaryOp::RightShift};

constexpr UnaryOp kAllUnary[] = {
    UnaryOp::Copy,  UnaryOp::Negate,     UnaryOp::Abs,        UnaryOp::Sign,      UnaryOp::Floor,
    UnaryOp::Ceil,  UnaryOp::Round,      UnaryOp::Exp,        UnaryOp::Expm1,     UnaryOp::Log,
    UnaryOp::Log1p, UnaryOp::Sigmoid,    UnaryOp::Tanh,       UnaryOp::Sqrt,      UnaryOp::Rsqrt,
    UnaryOp::Cbrt,  UnaryOp::Cos,        UnaryOp::Sin,        UnaryOp::Tan,       UnaryOp::Acos,
    UnaryOp::Asin,  UnaryOp::Atan,       UnaryOp::Cosh,       UnaryOp::Sinh,      UnaryOp::Acosh,
    UnaryOp::Asinh, UnaryOp::Atanh,      UnaryOp::Erf,        UnaryOp::Erfc,      UnaryOp::ErfInv,
    UnaryOp::IsNan, UnaryOp::IsInfinity, UnaryOp::LogicalNot, UnaryOp::BitwiseNot};

bool predicate(BinaryOp op) {
  switch (op) {
    case BinaryOp::Equal:
    case BinaryOp::NotEqual:
    case BinaryOp::Less:
    case BinaryOp::LessEqual:
    case BinaryOp::Greater:
    case BinaryOp::GreaterEqual:
    case BinaryOp::LogicalAnd:
    case BinaryOp::LogicalOr:
    case BinaryOp::LogicalXor:
      return true;
    default:
      return false;
  }
}

bool integer_only(BinaryOp op) {
  switch (op) {
    case BinaryOp::Quotient:
    case BinaryOp::BitwiseAnd:
    case BinaryOp::BitwiseOr:
    case BinaryOp::BitwiseXor:
    case BinaryOp::LeftShift:
    case BinaryOp::RightShift:
      return true;
    default:
      return false;
  }
}

// Nx's output type for op on two tensors of type t.
Type nx_binary_out(BinaryOp op, Type t) {
  if (predicate(op)) return Type::U8;
  if ((op == BinaryOp::Divide || op == BinaryOp::Atan2) && !tfloat(t)) return Type::F32;
  return t;
}

bool unary_predicate(UnaryOp op) {
  return op == UnaryOp::IsNan || op == UnaryOp::IsInfinity || op == UnaryOp::LogicalNot;
}
bool unary_keeps_ints(UnaryOp op) {
  switch (op) {
    case UnaryOp::Copy:
    case UnaryOp::Negate:
    case UnaryOp::Abs:
    case UnaryOp::Sign:
    case UnaryOp::Floor:
    case UnaryOp::Ceil:
    case UnaryOp::Round:
    case UnaryOp::BitwiseNot:
      return true;
    default:
      return false;
  }
}
Type nx_unary_out(UnaryOp op, Type t) {
  if (unary_predicate(op)) return Type::U8;
  if (!tfloat(t) && !unary_keeps_ints(op)) return Type::F32;
  return t;
}

// The right operand's values that BinaryBackend accepts for op (no division by zero, no
// negative shift or integer exponent, exponents the model computes by repeated product).
std::vector<uint64_t> right_values(BinaryOp op, Type t, Type out, std::vector<uint64_t> v) {
  if (tfloat(t)) return v;
  const bool sign = !tunsigned(t);
  auto in_range = [&](int64_t x) {
    if (tbits(t) == 64) return true;
    const int64_t max = sign ? (int64_t{1} << (tbits(t) - 1)) - 1 : (int64_t{1} << tbits(t)) - 1;
    return x <= max;
  };
  auto small = [&](std::initializer_list<int64_t> xs) {
    std::vector<uint64_t> r;
    for (int64_t x : xs)
      if (in_range(x)) r.push_back(static_cast<uint64_t>(x));
    return r;
  };
  switch (op) {
    case BinaryOp::Quotient:
    case BinaryOp::Remainder:
      v.erase(std::remove(v.begin(), v.end(), uint64_t{0}), v.end());
      return v;
    case BinaryOp::LeftShift:
    case BinaryOp::RightShift:
      return small({0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 200});
    case BinaryOp::Pow:
      (void)out;
      return small({0, 1, 2, 3, 5, 7, 8, 15, 31, 32, 63, 64, 100});
    default:
      return v;
  }
}

struct Failures {
  int count = 0;
  std::string first;
  void add(const std::string& s) {
    if (count++ < 8) first += "\n  " + s;
  }
};

// op over every pair (a_i, b_j), through broadcast views: out[i][j].
void check_pairs(BinaryOp op, Type ta, const std::vector<uint64_t>& av, Type tb,
                 const std::vector<uint64_t>& bv, Type out, int threads = 1) {
  const Buf a = make_buf(ta, av), b = make_buf(tb, bv);
  const size_t n = av.size(), m = bv.size();
  const Shape shape{static_cast<int64_t>(n), static_cast<int64_t>(m)};
  Buf o(out, n * m);
  binary(op, shape, a.view_strided(0, {1, 0}), b.view_strided(0, {0, 1}), out, o.data(), threads);
  Failures f;
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < m; ++j) {
      const uint64_t want = ref_bits(out, ref_binary(op, a.val(i), b.val(j), out));
      const uint64_t got = o.get(i * m + j);
      if (want != got)
        f.add(std::string(type_name(ta)) + " " + val_str(a.val(i)) + " (" + bits_str(av[i]) +
              "), " + type_name(tb) + " " + val_str(b.val(j)) + " (" + bits_str(bv[j]) + ") -> " +
              type_name(out) + ": want " + bits_str(want) + ", got " + bits_str(got));
    }
  EXPECT_EQ(f.count, 0) << "binary op " << static_cast<int>(op) << f.first;
}

void check_unary_values(UnaryOp op, Type t, const std::vector<uint64_t>& v, Type out,
                        int threads = 1) {
  const Buf in = make_buf(t, v);
  Buf o(out, v.size());
  unary(op, Shape{static_cast<int64_t>(v.size())}, in.view({static_cast<int64_t>(v.size())}), out,
        o.data(), threads);
  Failures f;
  for (size_t i = 0; i < v.size(); ++i) {
    const uint64_t want = ref_bits(out, ref_unary(op, in.val(i)));
    const uint64_t got = o.get(i);
    if (want != got)
      f.add(std::string(type_name(t)) + " " + val_str(in.val(i)) + " (" + bits_str(v[i]) + ") -> " +
            type_name(out) + ": want " + bits_str(want) + ", got " + bits_str(got));
  }
  EXPECT_EQ(f.count, 0) << "unary op " << static_cast<int>(op) << f.first;
}

// Extra values for the transcendental functions' domains.
std::vector<uint64_t> unary_values(Type t) {
  std::vector<uint64_t> v = interesting_bits(t, 7, 10);
  if (tfloat(t))
    for (double d : {0.3, -0.7, 0.999, -0.9999, 0.25, 1e-8, -1e-8, 20.0, -20.0, 89.0, -100.0, 710.0,
                     1e-20, 0.49999997, -1.5, 1.0000001})
      v.push_back(ref_bits(t, vf(d)));
  return v;
}

// ---- binary ----------------------------------------------------------------------------------

TEST(DenseBinary, EveryOpEveryTypeMatchesBinaryBackend) {
  for (BinaryOp op : kAllBinary)
    for (Type t : kAllTypes) {
      if (integer_only(op) && tfloat(t)) continue;
      const Type out = nx_binary_out(op, t);
      const std::vector<uint64_t> av = interesting_bits(t, 11);
      const std::vector<uint64_t> bv = right_values(op, t, out, interesting_bits(t, 12));
      SCOPED_TRACE(std::string("type ") + type_name(t));
      check_pairs(op, t, av, t, bv, out);
    }
}

TEST(DenseBinary, MixedOperandTypes) {
  struct Combo {
    Type a, b, out;
  };
  const Combo combos[] = {
      {Type::S32, Type::F32, Type::F32},  {Type::F32, Type::S8, Type::F32},
      {Type::F16, Type::F32, Type::F32},  {Type::BF16, Type::F16, Type::F32},
      {Type::F32, Type::F32, Type::F16},  {Type::F32, Type::F32, Type::F64},
      {Type::F64, Type::F64, Type::F32},  {Type::F64, Type::F64, Type::BF16},
      {Type::F16, Type::F16, Type::BF16}, {Type::BF16, Type::BF16, Type::F16},
      {Type::S64, Type::F64, Type::F64},  {Type::F32, Type::U64, Type::F32},
      {Type::U64, Type::S64, Type::S64},  {Type::U8, Type::S8, Type::S16},
      {Type::U32, Type::S32, Type::S64},  {Type::S64, Type::S64, Type::F64},
      {Type::U64, Type::U64, Type::F32},  {Type::S16, Type::U16, Type::F16},
  };
  for (const Combo& c : combos)
    for (BinaryOp op : kAllBinary) {
      if (integer_only(op) && (tfloat(c.a) || tfloat(c.b))) continue;
      Type out = predicate(op) ? Type::U8 : c.out;
      if (integer_only(op) && tfloat(out)) out = Type::S64;
      if (op == BinaryOp::Pow && !tfloat(out) && (tfloat(c.a) || tfloat(c.b))) continue;
      const std::vector<uint64_t> av = interesting_bits(c.a, 21);
      const std::vector<uint64_t> bv = right_values(op, c.b, out, interesting_bits(c.b, 22));
      SCOPED_TRACE(std::string(type_name(c.a)) + " x " + type_name(c.b) + " -> " + type_name(out));
      check_pairs(op, c.a, av, c.b, bv, out);
    }
}

TEST(DenseBinary, LargeIntegersComparedWithFloatsExactly) {
  // 2^53 + 1 is not a double: Erlang compares it with 2^53 exactly.
  const std::vector<uint64_t> ints = {(uint64_t{1} << 53) + 1, uint64_t{1} << 53,
                                      (uint64_t{1} << 63) - 1, uint64_t{1} << 63, ~uint64_t{0}};
  const std::vector<uint64_t> dbl = {dbits(9007199254740992.0),
                                     dbits(9223372036854775808.0),
                                     dbits(-9223372036854775808.0),
                                     dbits(1.8446744073709552e19),
                                     dbits(kInf),
                                     dbits(kNaN),
                                     dbits(0.5)};
  for (Type it : {Type::S64, Type::U64})
    for (BinaryOp op : {BinaryOp::Equal, BinaryOp::NotEqual, BinaryOp::Less, BinaryOp::LessEqual,
                        BinaryOp::Greater, BinaryOp::GreaterEqual, BinaryOp::Max, BinaryOp::Min}) {
      const Type out = predicate(op) ? Type::U8 : Type::F64;
      check_pairs(op, it, ints, Type::F64, dbl, out);
      check_pairs(op, Type::F64, dbl, it, ints, out);
    }
  // s64 2^53 + 1 == f64 2^53 is false (a double comparison would say true).
  const Buf a = make_buf(Type::S64, {(uint64_t{1} << 53) + 1});
  const Buf b = make_buf(Type::F64, {dbits(9007199254740992.0)});
  Buf o(Type::U8, 1);
  binary(BinaryOp::Equal, {1}, a.view({1}), b.view({1}), Type::U8, o.data());
  EXPECT_EQ(o.get(0), 0u);
}

TEST(DenseBinary, FloatOperandsOfIntegerOnlyOpsThrow) {
  const Buf f = make_buf(Type::F32, {fbits(1.0f)});
  const Buf i = make_buf(Type::S32, {1});
  Buf o(Type::S32, 1);
  for (BinaryOp op : kAllBinary) {
    if (!integer_only(op)) continue;
    EXPECT_THROW(binary(op, {1}, f.view({1}), i.view({1}), Type::S32, o.data()), InvalidArgument);
    EXPECT_THROW(binary(op, {1}, i.view({1}), f.view({1}), Type::S32, o.data()), InvalidArgument);
  }
}

TEST(DenseBinary, IntegerDivisionByZeroThrowsAndMinOverMinusOneWraps) {
  for (Type t : {Type::S8, Type::S32, Type::S64, Type::U8, Type::U64}) {
    const Buf a = make_buf(t, {5, 7});
    const Buf b = make_buf(t, {1, 0});
    Buf o(t, 2);
    for (BinaryOp op : {BinaryOp::Quotient, BinaryOp::Remainder}) {
      o.set(0, 0x5A);
      try {
        binary(op, {2}, a.view({2}), b.view({2}), t, o.data());
        ADD_FAILURE() << "no throw";
      } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("division by zero"), std::string::npos) << e.what();
      }
      EXPECT_EQ(o.get(0), 0x5Au) << "nothing written before the error";
    }
  }
  // INT64_MIN / -1 (a SIGFPE in C): the exact 2^63 wraps to INT64_MIN; the remainder is 0.
  const Buf a = make_buf(Type::S64, {uint64_t{1} << 63, uint64_t{1} << 63});
  const Buf b = make_buf(Type::S64, {~uint64_t{0}, ~uint64_t{0}});
  Buf o(Type::S64, 2);
  binary(BinaryOp::Quotient, {2}, a.view({2}), b.view({2}), Type::S64, o.data());
  EXPECT_EQ(o.get(0), uint64_t{1} << 63);
  binary(BinaryOp::Remainder, {2}, a.view({2}), b.view({2}), Type::S64, o.data());
  EXPECT_EQ(o.get(0), 0u);
  // s8: -128 quotient -1 = 128 -> -128.
  const Buf a8 = make_buf(Type::S8, {0x80});
  const Buf b8 = make_buf(Type::S8, {0xFF});
  Buf o8(Type::S8, 1);
  binary(BinaryOp::Quotient, {1}, a8.view({1}), b8.view({1}), Type::S8, o8.data());
  EXPECT_EQ(o8.get(0), 0x80u);
}

TEST(DenseBinary, NegativeShiftsAndIntegerExponentsThrow) {
  const Buf a = make_buf(Type::S32, {1, 1});
  const Buf b = make_buf(Type::S32, {2, static_cast<uint32_t>(-1)});
  Buf o(Type::S32, 2);
  EXPECT_THROW(binary(BinaryOp::LeftShift, {2}, a.view({2}), b.view({2}), Type::S32, o.data()),
               InvalidArgument);
  EXPECT_THROW(binary(BinaryOp::RightShift, {2}, a.view({2}), b.view({2}), Type::S32, o.data()),
               InvalidArgument);
  EXPECT_THROW(binary(BinaryOp::Pow, {2}, a.view({2}), b.view({2}), Type::S32, o.data()),
               InvalidArgument);
  // Into a float output the integers go to Complex.pow: 2^-1 = 0.5 (:math.pow).
  const Buf two = make_buf(Type::S32, {2, 3});
  Buf of(Type::F32, 2);
  binary(BinaryOp::Pow, {2}, two.view({2}), b.view({2}), Type::F32, of.data());
  EXPECT_EQ(of.get(0), fbits(4.0f));
  EXPECT_EQ(of.get(1), fbits(1.0f / 3.0f));
}

TEST(DenseBinary, QuirksOfComplexDivideAtan2PowMaxMin) {
  auto run = [](BinaryOp op, float x, float y) {
    const Buf a = make_buf(Type::F32, {fbits(x)});
    const Buf b = make_buf(Type::F32, {fbits(y)});
    Buf o(Type::F32, 1);
    binary(op, {1}, a.view({1}), b.view({1}), Type::F32, o.data());
    return static_cast<uint32_t>(o.get(0));
  };
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(run(BinaryOp::Divide, -1.0f, inf), 0u) << "x / Inf = +0.0";
  EXPECT_EQ(run(BinaryOp::Divide, 1.0f, -inf), 0u);
  EXPECT_EQ(run(BinaryOp::Divide, inf, -0.0f), fbits(inf)) << "Inf / -0.0 = Inf";
  EXPECT_EQ(run(BinaryOp::Divide, -inf, -0.0f), fbits(-inf));
  EXPECT_EQ(run(BinaryOp::Divide, 0.0f, 0.0f), 0x7FC00000u);
  EXPECT_EQ(run(BinaryOp::Divide, 1.0f, -0.0f), fbits(-inf)) << "IEEE where Erlang raises";
  EXPECT_EQ(run(BinaryOp::Atan2, -1.0f, inf), 0u) << "atan2(y, Inf) = +0.0";
  EXPECT_EQ(run(BinaryOp::Atan2, -1.0f, -inf), fbits(3.14159265f)) << "atan2(y, -Inf) = pi";
  EXPECT_EQ(run(BinaryOp::Pow, 0.5f, inf), fbits(inf)) << "0.5^Inf = Inf";
  EXPECT_EQ(run(BinaryOp::Pow, 2.0f, -inf), 0u);
  EXPECT_EQ(run(BinaryOp::Pow, 1.0f, std::nanf("")), 0x7FC00000u);
  EXPECT_EQ(run(BinaryOp::Pow, std::nanf(""), 0.0f), 0x7FC00000u);
  EXPECT_EQ(run(BinaryOp::Max, -0.0f, 0.0f), 0x80000000u) << "the first when equal";
  EXPECT_EQ(run(BinaryOp::Max, 0.0f, -0.0f), 0u);
  EXPECT_EQ(run(BinaryOp::Min, -0.0f, 0.0f), 0x80000000u);
  EXPECT_EQ(run(BinaryOp::Min, 0.0f, -0.0f), 0u);
  EXPECT_EQ(run(BinaryOp::Max, std::nanf(""), -inf), 0x7FC00000u);
}

// bf16 is the f32 rounding truncated; f16 is rounded once from the double.
TEST(DenseBinary, Bf16TruncatesAndF16RoundsOnceFromDouble) {
  {  // 1 + 0.75 * 2^-7: f32 exact, bf16 truncation gives 1.0 (RNE would give 1 + 2^-7)
    const Buf a = make_buf(Type::BF16, {0x3F80});                     // 1.0
    const Buf b = make_buf(Type::BF16, {fbits(0.005859375f) >> 16});  // 1.5 * 2^-8
    Buf o(Type::BF16, 1);
    binary(BinaryOp::Add, {1}, a.view({1}), b.view({1}), Type::BF16, o.data());
    EXPECT_EQ(o.get(0), 0x3F80u);
  }
  {  // f32 1 + 2^-11 plus f32 2^-40 into f16: the double 1 + 2^-11 + 2^-40 rounds up to
     // 1 + 2^-10; through f32 (a tie) it would round to even, 1.0
    const Buf a = make_buf(Type::F32, {fbits(1.0f + 0.00048828125f)});
    const Buf b = make_buf(Type::F32, {fbits(std::ldexp(1.0f, -40))});
    Buf o(Type::F16, 1);
    binary(BinaryOp::Add, {1}, a.view({1}), b.view({1}), Type::F16, o.data());
    EXPECT_EQ(o.get(0), 0x3C01u);
  }
}

TEST(DenseBinary, NaNOutputsAreCanonical) {
  for (Type t : {Type::F16, Type::BF16, Type::F32, Type::F64}) {
    std::vector<uint64_t> nans;
    switch (t) {
      case Type::F16:
        nans = {0x7E01, 0xFE00, 0x7C01, 0xFFFF};
        break;
      case Type::BF16:
        nans = {0x7FC1, 0xFFC0, 0x7F81, 0xFFFF};
        break;
      case Type::F32:
        nans = {0x7FA00001, 0xFFC00000, 0x7F800001, 0xFFFFFFFF};
        break;
      default:
        nans = {0x7FF4000000000000ull, 0xFFF8000000000000ull, 0x7FF0000000000001ull, ~uint64_t{0}};
    }
    const uint64_t canon = ref_bits(t, vf(kNaN));
    const Buf a = make_buf(t, nans);
    const Buf one = make_buf(t, {ref_bits(t, vf(1.0))});
    Buf o(t, nans.size());
    const Shape s{static_cast<int64_t>(nans.size())};
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Multiply, BinaryOp::Max, BinaryOp::Divide}) {
      binary(op, s, a.view(s), one.view_strided(0, {0}), t, o.data());
      for (size_t i = 0; i < nans.size(); ++i) EXPECT_EQ(o.get(i), canon) << type_name(t);
    }
    // Inf - Inf and 0 * Inf make a new NaN (x86's default NaN is negative): canonical too
    const Buf inf = make_buf(t, {ref_bits(t, vf(kInf))});
    binary(BinaryOp::Subtract, {1}, inf.view({1}), inf.view({1}), t, o.data());
    EXPECT_EQ(o.get(0), canon);
    const Buf neg = make_buf(t, {ref_bits(t, vf(-1.0))});
    unary(UnaryOp::Sqrt, {1}, neg.view({1}), t, o.data());
    EXPECT_EQ(o.get(0), canon);
  }
}

// The claim in dense_ops.h: a single correctly rounded operation on f16/bf16/f32 operands
// computed in f32 gives BinaryBackend's double-then-round bits.
TEST(DenseFloatCompute, F32ComputationEqualsDoubleThenRound) {
  std::mt19937_64 rng(42);
  for (Type t : {Type::F16, Type::BF16, Type::F32}) {
    const size_t n = 4000;
    std::vector<uint64_t> av, bv;
    const uint64_t mask = t == Type::F32 ? 0xFFFFFFFFull : 0xFFFFull;
    for (size_t k = 0; k < n; ++k) {
      uint64_t x = rng() & mask, y = rng() & mask;
      if (k % 4 == 1) y = (x & ~uint64_t{0xFF}) | (rng() & 0xFF);  // near each other
      if (k % 8 == 2 && t == Type::F16) x = rng() & 0x83FF;        // subnormals
      if (k % 8 == 3 && t == Type::F16) y = rng() & 0x83FF;
      av.push_back(x);
      bv.push_back(y);
    }
    for (uint64_t e : interesting_bits(t, 3, 0)) {
      av.push_back(e);
      bv.push_back(e ^ 1);
    }
    const Buf a = make_buf(t, av), b = make_buf(t, bv);
    const Shape s{static_cast<int64_t>(av.size())};
    Buf o(t, av.size());
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Subtract, BinaryOp::Multiply, BinaryOp::Divide}) {
      binary(op, s, a.view(s), b.view(s), t, o.data());
      int bad = 0;
      for (size_t i = 0; i < av.size(); ++i) {
        const Val x = a.val(i), y = b.val(i);
        double d;
        switch (op) {
          case BinaryOp::Add:
            d = x.f + y.f;
            break;
          case BinaryOp::Subtract:
            d = x.f - y.f;
            break;
          case BinaryOp::Multiply:
            d = x.f * y.f;
            break;
          default:
            d = x.f / y.f;
        }
        if (std::isinf(y.f) && op == BinaryOp::Divide) d = d + 0.0;  // Complex.divide
        if (y.f == 0 && std::isinf(x.f) && op == BinaryOp::Divide) d = x.f;
        bad += o.get(i) != ref_bits(t, vf(d));
      }
      EXPECT_EQ(bad, 0) << type_name(t) << " op " << static_cast<int>(op);
    }
    unary(UnaryOp::Sqrt, s, a.view(s), t, o.data());
    int bad = 0;
    for (size_t i = 0; i < av.size(); ++i)
      bad += o.get(i) != ref_bits(t, vf(std::sqrt(a.val(i).f)));
    EXPECT_EQ(bad, 0) << type_name(t) << " sqrt";
  }
}

// The AVX2 runs (same-type f32/bf16/f16 arithmetic, F16C conversions) and the portable code
// give the same bits: every length 0..40 (vector tails), contiguous and broadcast operands.
TEST(DenseBinary, SimdAndPortablePathsAgree) {
  nx_quant::detail::CpuFeatures none;  // every feature off: the portable code
  std::mt19937_64 rng(3);
  for (Type t : {Type::F32, Type::BF16, Type::F16}) {
    std::vector<uint64_t> av = interesting_bits(t, 61, 10), bv = interesting_bits(t, 62, 10);
    while (bv.size() < av.size()) bv.push_back(av[bv.size()]);
    while (av.size() > bv.size()) av.pop_back();
    std::reverse(bv.begin(), bv.end());
    const Buf a = make_buf(t, av), b = make_buf(t, bv);
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Subtract, BinaryOp::Multiply, BinaryOp::Divide,
                        BinaryOp::Max, BinaryOp::Min})
      for (int64_t n = 0; n <= static_cast<int64_t>(std::min<size_t>(40, av.size())); ++n)
        for (int mode = 0; mode < 3; ++mode) {
          const View va = mode == 1 ? a.view_strided(n / 2, {0}) : a.view_strided(0, {1});
          const View vb = mode == 2 ? b.view_strided(n / 3, {0}) : b.view_strided(0, {1});
          Buf simd(t, static_cast<size_t>(n)), portable(t, static_cast<size_t>(n));
          binary(op, {n}, va, vb, t, simd.data());
          {
            nx_quant::detail::ScopedCpuFeatures scope(none);
            binary(op, {n}, va, vb, t, portable.data());
          }
          ASSERT_EQ(simd.bytes, portable.bytes)
              << type_name(t) << " op " << static_cast<int>(op) << " n " << n << " mode " << mode;
          for (int64_t i = 0; i < n; ++i) {
            const size_t ia = mode == 1 ? static_cast<size_t>(n / 2) : static_cast<size_t>(i);
            const size_t ib = mode == 2 ? static_cast<size_t>(n / 3) : static_cast<size_t>(i);
            ASSERT_EQ(simd.get(static_cast<size_t>(i)),
                      ref_bits(t, ref_binary(op, a.val(ia), b.val(ib), t)));
          }
        }
  }
  // f16 <-> f32 conversions and f16 loads/stores in the buffered engine (exp, sqrt)
  std::vector<uint64_t> h;
  for (uint64_t x = 0; x < 0x10000; x += 7) h.push_back(x);
  h.push_back(0x7E01);
  h.push_back(0xFC01);
  const Buf hb = make_buf(Type::F16, h);
  const Shape s{static_cast<int64_t>(h.size())};
  std::vector<uint64_t> f;
  for (size_t i = 0; i < h.size(); ++i) f.push_back(rng() & 0xFFFFFFFF);
  f.push_back(0x477FF000);  // 65520: rounds to Inf
  f.push_back(0x33000001);  // just above half the smallest subnormal: rounds up
  const Buf fb = make_buf(Type::F32, f);
  const Shape sf{static_cast<int64_t>(f.size())};
  for (int pass = 0; pass < 2; ++pass) {
    std::unique_ptr<nx_quant::detail::ScopedCpuFeatures> scope;
    if (pass == 1) scope = std::make_unique<nx_quant::detail::ScopedCpuFeatures>(none);
    Buf o(Type::F32, h.size()), o16(Type::F16, f.size()), e(Type::F16, h.size());
    unary(UnaryOp::Copy, s, hb.view(s), Type::F32, o.data());
    unary(UnaryOp::Copy, sf, fb.view(sf), Type::F16, o16.data());
    for (size_t i = 0; i < h.size(); ++i) ASSERT_EQ(o.get(i), ref_bits(Type::F32, hb.val(i)));
    for (size_t i = 0; i < f.size(); ++i) ASSERT_EQ(o16.get(i), ref_bits(Type::F16, fb.val(i)));
    for (UnaryOp op : {UnaryOp::Exp, UnaryOp::Sqrt, UnaryOp::Negate}) {
      unary(op, s, hb.view(s), Type::F16, e.data());
      for (size_t i = 0; i < h.size(); ++i)
        ASSERT_EQ(e.get(i), ref_bits(Type::F16, ref_unary(op, hb.val(i)))) << bits_str(h[i]);
    }
  }
}

TEST(DenseBinary, BroadcastingNegativeStridesAndTransposes) {
  // a: {2, 1, 4} broadcast over axis 1; b: a transposed {3, 4} read backwards along axis 0.
  const Shape shape{2, 3, 4};
  std::vector<uint64_t> av, bv;
  for (int k = 0; k < 8; ++k) av.push_back(fbits(static_cast<float>(k) * 0.5f - 1.0f));
  for (int k = 0; k < 12; ++k) bv.push_back(fbits(static_cast<float>(k * k) - 3.0f));
  const Buf a = make_buf(Type::F32, av), b = make_buf(Type::F32, bv);
  // b's buffer is {4, 3} row-major; element (i, j, k) of the view is b[k][2 - j]
  const View va = a.view_strided(0, {4, 0, 1});
  const View vb = b.view_strided(2, {0, -1, 3});
  for (BinaryOp op : {BinaryOp::Add, BinaryOp::Multiply, BinaryOp::Pow, BinaryOp::Less,
                      BinaryOp::Max, BinaryOp::Atan2}) {
    const Type out = predicate(op) ? Type::U8 : Type::F32;
    Buf o(out, 24);
    binary(op, shape, va, vb, out, o.data());
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        for (int k = 0; k < 4; ++k) {
          const Val x = a.val(static_cast<size_t>(i * 4 + k));
          const Val y = b.val(static_cast<size_t>(k * 3 + (2 - j)));
          EXPECT_EQ(o.get(static_cast<size_t>(i * 12 + j * 4 + k)),
                    ref_bits(out, ref_binary(op, x, y, out)));
        }
  }
}

// The decode-step pattern {1, 32, 1, 64} x {1, 32, n, 64}, big enough to use the thread pool;
// the result must not depend on the thread count.
TEST(DenseBinary, LargeBroadcastMatchesReferenceAndIsThreadIndependent) {
  for (Type t : {Type::F32, Type::BF16, Type::F16, Type::S32}) {
    const int64_t heads = 32, n = 40, d = 64;
    std::mt19937 rng(5);
    std::uniform_real_distribution<double> dist(-4, 4);
    std::vector<uint64_t> av, bv;
    for (int64_t i = 0; i < heads * d; ++i) av.push_back(ref_bits(t, vf(dist(rng))));
    for (int64_t i = 0; i < heads * n * d; ++i) bv.push_back(ref_bits(t, vf(dist(rng) * 100)));
    const Buf a = make_buf(t, av), b = make_buf(t, bv);
    const Shape shape{1, heads, n, d};
    const View va = a.view_strided(0, {0, d, 0, 1});
    const View vb = b.view(shape);
    for (BinaryOp op : {BinaryOp::Multiply, BinaryOp::Subtract, BinaryOp::Divide, BinaryOp::Min}) {
      if (op == BinaryOp::Divide && !tfloat(t)) continue;
      const Type out = nx_binary_out(op, t);
      Buf o1(out, bv.size()), o0(out, bv.size());
      binary(op, shape, va, vb, out, o1.data(), 1);
      binary(op, shape, va, vb, out, o0.data(), 0);
      EXPECT_EQ(o1.bytes, o0.bytes) << type_name(t);
      int bad = 0;
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t r = 0; r < n; ++r)
          for (int64_t c = 0; c < d; ++c) {
            const size_t oi = static_cast<size_t>((h * n + r) * d + c);
            const Val x = a.val(static_cast<size_t>(h * d + c)), y = b.val(oi);
            bad += o1.get(oi) != ref_bits(out, ref_binary(op, x, y, out));
          }
      EXPECT_EQ(bad, 0) << type_name(t) << " op " << static_cast<int>(op);
    }
  }
}

TEST(DenseBinary, ScalarsAndEmptyShapes) {
  const Buf a = make_buf(Type::S16, {0x7FFF});
  const Buf b = make_buf(Type::S16, {1});
  Buf o(Type::S16, 1);
  binary(BinaryOp::Add, {}, a.view({}), b.view({}), Type::S16, o.data());
  EXPECT_EQ(o.get(0), 0x8000u) << "wraps";
  binary(BinaryOp::Add, {0, 3}, a.view_strided(0, {0, 0}), b.view_strided(0, {1, 1}), Type::S16,
         nullptr);
  View empty;
  empty.type = Type::F32;
  empty.strides = {1, 1};
  binary(BinaryOp::Multiply, {3, 0}, empty, empty, Type::F32, nullptr);  // nothing reached
}

TEST(DenseBinary, BadViewsThrow) {
  const Buf a = make_buf(Type::F32, {0, 0, 0, 0});
  Buf o(Type::F32, 8);
  EXPECT_THROW(binary(BinaryOp::Add, {8}, a.view({4}), a.view({4}), Type::F32, o.data()),
               InvalidArgument)
      << "wrong stride count";
  EXPECT_THROW(binary(BinaryOp::Add, {5}, a.view({5}), a.view_strided(0, {1}), Type::F32, o.data()),
               InvalidArgument)
      << "past the end";
  EXPECT_THROW(binary(BinaryOp::Add, {4}, a.view_strided(3, {-1}), a.view_strided(2, {-1}),
                      Type::F32, o.data()),
               InvalidArgument)
      << "before the start";
  EXPECT_THROW(binary(BinaryOp::Add, {-1}, a.view_strided(0, {1}), a.view_strided(0, {1}),
                      Type::F32, o.data()),
               InvalidArgument)
      << "negative dimension";
  View null = a.view({4});
  null.data = nullptr;
  EXPECT_THROW(binary(BinaryOp::Add, {4}, null, a.view({4}), Type::F32, o.data()), InvalidArgument);
  EXPECT_THROW(binary(BinaryOp::Add, {4}, a.view({4}), a.view({4}), Type::F32, nullptr),
               InvalidArgument)
      << "no output";
  EXPECT_THROW(
      binary(static_cast<BinaryOp>(200), {4}, a.view({4}), a.view({4}), Type::F32, o.data()),
      InvalidArgument);
  EXPECT_THROW(
      binary(BinaryOp::Add, {4}, a.view({4}), a.view({4}), static_cast<Type>(77), o.data()),
      InvalidArgument);
}

// ---- unary -----------------------------------------------------------------------------------

TEST(DenseUnary, EveryOpEveryTypeMatchesBinaryBackend) {
  for (UnaryOp op : kAllUnary)
    for (Type t : kAllTypes) {
      if (op == UnaryOp::BitwiseNot && tfloat(t)) continue;
      if (op == UnaryOp::Copy) continue;  // as_type keeps the bits: copy_test.cpp
      check_unary_values(op, t, unary_values(t), nx_unary_out(op, t));
    }
}

TEST(DenseUnary, OtherOutputTypes) {
  // f16 -> f32 sqrt / exp (double path), f32 -> f16 sqrt (double rounding avoided), ints -> f64
  for (UnaryOp op : kAllUnary) {
    if (op == UnaryOp::BitwiseNot || op == UnaryOp::Copy) continue;
    check_unary_values(op, Type::F16, unary_values(Type::F16), Type::F32);
    check_unary_values(op, Type::F32, unary_values(Type::F32), Type::F16);
    check_unary_values(op, Type::BF16, unary_values(Type::BF16), Type::F64);
    check_unary_values(op, Type::S64, unary_values(Type::S64), Type::F64);
    check_unary_values(op, Type::U64, unary_values(Type::U64), Type::F32);
  }
}

TEST(DenseUnary, QuirksOfBinaryBackend) {
  auto run = [](UnaryOp op, float x) {
    const Buf a = make_buf(Type::F32, {fbits(x)});
    Buf o(Type::F32, 1);
    unary(op, {1}, a.view({1}), Type::F32, o.data());
    return static_cast<uint32_t>(o.get(0));
  };
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(run(UnaryOp::Abs, -0.0f), 0x80000000u) << "Erlang's abs keeps -0.0";
  EXPECT_EQ(run(UnaryOp::Sign, -inf), fbits(1.0f)) << "atoms sort above numbers";
  EXPECT_EQ(run(UnaryOp::Sign, std::nanf("")), fbits(1.0f));
  EXPECT_EQ(run(UnaryOp::Sign, -0.0f), 0x80000000u);
  EXPECT_EQ(run(UnaryOp::Round, -0.4f), 0u) << "an integer zero";
  EXPECT_EQ(run(UnaryOp::Round, -2.5f), fbits(-3.0f)) << "half away from zero";
  EXPECT_EQ(run(UnaryOp::Tanh, inf), 0x7FC00000u) << "Inf / Inf in Complex.tanh";
  EXPECT_EQ(run(UnaryOp::Cbrt, -0.0f), 0u);
  EXPECT_EQ(run(UnaryOp::Cbrt, -8.0f), fbits(-2.0f));
  EXPECT_EQ(run(UnaryOp::ErfInv, -0.0f), 0u);
  EXPECT_EQ(run(UnaryOp::Expm1, -0.0f), 0u) << "exp(x) - 1";
  EXPECT_EQ(run(UnaryOp::Log1p, -0.0f), 0u) << "log(x + 1)";
  EXPECT_EQ(run(UnaryOp::Sigmoid, -1000.0f), 0u);
  EXPECT_EQ(run(UnaryOp::Negate, 0.0f), 0x80000000u);
  // log1p(1e-20) in f64 is log(1.0) = 0, not 1e-20
  const Buf s = make_buf(Type::F64, {dbits(1e-20)});
  Buf o(Type::F64, 1);
  unary(UnaryOp::Log1p, {1}, s.view({1}), Type::F64, o.data());
  EXPECT_EQ(o.get(0), 0u);
}

TEST(DenseUnary, StridedInputsAndThreads) {
  const int64_t rows = 300, cols = 257;  // > 64K elements of exp: several threads
  std::vector<uint64_t> v;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> dist(-10, 10);
  for (int64_t i = 0; i < rows * cols; ++i) v.push_back(fbits(dist(rng)));
  const Buf in = make_buf(Type::F32, v);
  const Shape shape{cols, rows};  // the transpose, read backwards along the rows
  const View view = in.view_strided(rows * cols - cols, {1, -cols});
  for (UnaryOp op : {UnaryOp::Exp, UnaryOp::Negate, UnaryOp::Sigmoid, UnaryOp::Erf}) {
    Buf o1(Type::F32, v.size()), o0(Type::F32, v.size());
    unary(op, shape, view, Type::F32, o1.data(), 1);
    unary(op, shape, view, Type::F32, o0.data(), 0);
    EXPECT_EQ(o1.bytes, o0.bytes);
    int bad = 0;
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < rows; ++j) {
        const Val x = in.val(static_cast<size_t>((rows - 1 - j) * cols + i));
        bad += o1.get(static_cast<size_t>(i * rows + j)) != ref_bits(Type::F32, ref_unary(op, x));
      }
    EXPECT_EQ(bad, 0) << static_cast<int>(op);
  }
}

TEST(DenseUnary, BadInputsThrow) {
  const Buf f = make_buf(Type::F32, {0, 0});
  Buf o(Type::F32, 2);
  EXPECT_THROW(unary(UnaryOp::BitwiseNot, {2}, f.view({2}), Type::F32, o.data()), InvalidArgument);
  EXPECT_THROW(unary(UnaryOp::Exp, {3}, f.view({3}), Type::F32, o.data()), InvalidArgument);
  EXPECT_THROW(unary(UnaryOp::Exp, {2}, f.view({2, 1}), Type::F32, o.data()), InvalidArgument);
  EXPECT_THROW(unary(static_cast<UnaryOp>(99), {2}, f.view({2}), Type::F32, o.data()),
               InvalidArgument);
  unary(UnaryOp::Exp, {0}, f.view({0}), Type::F32, nullptr);
}

// ---- select and clip -------------------------------------------------------------------------

TEST(DenseSelect, EveryPredTypeAndValueTypes) {
  for (Type pt : kAllTypes) {
    const std::vector<uint64_t> pv = interesting_bits(pt, 31, 2);
    for (auto [tt, ft, out] :
         {std::tuple{Type::F32, Type::F32, Type::F32}, std::tuple{Type::S32, Type::F32, Type::F32},
          std::tuple{Type::BF16, Type::F16, Type::F32}, std::tuple{Type::U64, Type::S8, Type::S64},
          std::tuple{Type::F64, Type::F64, Type::F16},
          std::tuple{Type::F16, Type::F16, Type::F16}}) {
      const std::vector<uint64_t> tv = interesting_bits(tt, 32, 2);
      const std::vector<uint64_t> fv = interesting_bits(ft, 33, 2);
      const size_t n = std::min(tv.size(), fv.size());
      const Buf p = make_buf(pt, pv), t = make_buf(tt, tv), f = make_buf(ft, fv);
      // out[i][j] = pred[i] ? on_true[j] : on_false[j]
      const Shape shape{static_cast<int64_t>(pv.size()), static_cast<int64_t>(n)};
      Buf o(out, pv.size() * n);
      select(shape, p.view_strided(0, {1, 0}), t.view_strided(0, {0, 1}), f.view_strided(0, {0, 1}),
             out, o.data());
      int bad = 0;
      for (size_t i = 0; i < pv.size(); ++i)
        for (size_t j = 0; j < n; ++j) {
          const Val pred = p.val(i);
          const bool truthy = !(is_number(pred) && num_eq_zero(pred));
          const uint64_t want = ref_bits(out, truthy ? t.val(j) : f.val(j));
          bad += o.get(i * n + j) != want;
        }
      EXPECT_EQ(bad, 0) << type_name(pt) << " " << type_name(tt) << " " << type_name(ft);
      // element-wise pred too (pred[i] with the values along the same axis)
      const Shape s1{static_cast<int64_t>(std::min(pv.size(), n))};
      Buf o1(out, static_cast<size_t>(s1[0]));
      select(s1, p.view_strided(0, {1}), t.view_strided(0, {1}), f.view_strided(0, {1}), out,
             o1.data());
      for (size_t i = 0; i < static_cast<size_t>(s1[0]); ++i) {
        const Val pred = p.val(i);
        const bool truthy = !(is_number(pred) && num_eq_zero(pred));
        EXPECT_EQ(o1.get(i), ref_bits(out, truthy ? t.val(i) : f.val(i)));
      }
    }
  }
}

// The one-pass path (u8 pred, f32 values): on_false one value or contiguous; NaN payloads in
// either side come out canonical, -0.0 and infinities unchanged, every pred value != 0 true.
TEST(DenseSelect, MaskOfF32ByU8InOnePass) {
  const std::vector<uint64_t> pred = {0, 1, 255, 0, 7, 0, 1, 0, 2, 0};
  const std::vector<uint64_t> on_true = {1,          0x80000000, 0x7FA00001, 0xFF800000, 0x7F800000,
                                         0x3F800000, 0xFFC00123, 0x00000001, 0xBF800000, 5};
  const std::vector<uint64_t> on_false_bits = {0xFF800000, 0x7FC00042};
  for (uint64_t fv : on_false_bits) {
    const Buf p = make_buf(Type::U8, pred), t = make_buf(Type::F32, on_true);
    const Buf f = make_buf(Type::F32, {fv});
    const int64_t n = static_cast<int64_t>(pred.size());
    Buf o(Type::F32, pred.size());
    select({n}, p.view({n}), t.view({n}), f.view_strided(0, {0}), Type::F32, o.data());
    for (size_t i = 0; i < pred.size(); ++i) {
      const uint64_t v = pred[i] != 0 ? on_true[i] : fv;
      const bool nan = (v & 0x7FFFFFFF) > 0x7F800000;
      EXPECT_EQ(o.get(i), nan ? 0x7FC00000u : v) << i;
    }
  }
  const Buf p = make_buf(Type::U8, pred), t = make_buf(Type::F32, on_true);
  const std::vector<uint64_t> on_false = {2, 0xFFC00000, 3, 4, 5, 6, 0x80000000, 8, 9, 0x7F800001};
  const Buf f = make_buf(Type::F32, on_false);
  const int64_t n = static_cast<int64_t>(pred.size());
  Buf o(Type::F32, pred.size());
  select({n}, p.view({n}), t.view({n}), f.view({n}), Type::F32, o.data());
  for (size_t i = 0; i < pred.size(); ++i) {
    const uint64_t v = pred[i] != 0 ? on_true[i] : on_false[i];
    const bool nan = (v & 0x7FFFFFFF) > 0x7F800000;
    EXPECT_EQ(o.get(i), nan ? 0x7FC00000u : v) << i;
  }
  EXPECT_EQ(o.get(3), 4u);  // a false pred picks on_false
  EXPECT_EQ(o.get(9), 0x7FC00000u);
}

TEST(DenseSelect, NaNPredIsTrueNegativeZeroFalseAndNaNValuesCanonical) {
  const Buf p = make_buf(Type::F32, {0x7FC00001, 0x80000000});
  const Buf t = make_buf(Type::F32, {0x7FA00001, 1});
  const Buf f = make_buf(Type::F32, {2, 0xFFC00000});
  Buf o(Type::F32, 2);
  select({2}, p.view({2}), t.view({2}), f.view({2}), Type::F32, o.data());
  EXPECT_EQ(o.get(0), 0x7FC00000u);
  EXPECT_EQ(o.get(1), 0x7FC00000u);
  EXPECT_THROW(select({3}, p.view({3}), t.view({2}), f.view({2}), Type::F32, o.data()),
               InvalidArgument);
}

TEST(DenseClip, TypesNaNAndBounds) {
  for (Type t : kAllTypes) {
    const std::vector<uint64_t> xv = interesting_bits(t, 41);
    const std::vector<uint64_t> lv = interesting_bits(t, 42, 0);
    const Buf x = make_buf(t, xv), l = make_buf(t, lv);
    // out[i][j][k] = clip(x[i], lo[j], hi[k]) over a few bounds
    const size_t nl = std::min<size_t>(lv.size(), 12);
    const Shape shape{static_cast<int64_t>(xv.size()), static_cast<int64_t>(nl),
                      static_cast<int64_t>(nl)};
    Buf o(t, xv.size() * nl * nl);
    clip(shape, x.view_strided(0, {1, 0, 0}), l.view_strided(0, {0, 1, 0}),
         l.view_strided(0, {0, 0, 1}), t, o.data());
    int bad = 0;
    for (size_t i = 0; i < xv.size(); ++i)
      for (size_t j = 0; j < nl; ++j)
        for (size_t k = 0; k < nl; ++k)
          bad +=
              o.get((i * nl + j) * nl + k) != ref_bits(t, ref_clip(x.val(i), l.val(j), l.val(k)));
    EXPECT_EQ(bad, 0) << type_name(t);
  }
  // mixed: s64 values with f64 bounds (exact comparisons), s32 with f32 bounds
  for (auto [xt, bt, out] :
       {std::tuple{Type::S64, Type::F64, Type::F64}, std::tuple{Type::S32, Type::F32, Type::F32},
        std::tuple{Type::U64, Type::S8, Type::U64}}) {
    const std::vector<uint64_t> xv = interesting_bits(xt, 51);
    const std::vector<uint64_t> bv = interesting_bits(bt, 52, 0);
    const Buf x = make_buf(xt, xv), b = make_buf(bt, bv);
    const Shape shape{static_cast<int64_t>(xv.size()), static_cast<int64_t>(bv.size())};
    Buf o(out, xv.size() * bv.size());
    // lo = b[j], hi = b[(j + 3) % n] via a second view offset (wrapping through a copy)
    std::vector<uint64_t> hv(bv.size());
    for (size_t j = 0; j < bv.size(); ++j) hv[j] = bv[(j + 3) % bv.size()];
    const Buf h = make_buf(bt, hv);
    clip(shape, x.view_strided(0, {1, 0}), b.view_strided(0, {0, 1}), h.view_strided(0, {0, 1}),
         out, o.data());
    int bad = 0;
    for (size_t i = 0; i < xv.size(); ++i)
      for (size_t j = 0; j < bv.size(); ++j)
        bad += o.get(i * bv.size() + j) != ref_bits(out, ref_clip(x.val(i), b.val(j), h.val(j)));
    EXPECT_EQ(bad, 0) << type_name(xt) << " " << type_name(bt);
  }
}

}  // namespace
}  // namespace nxq_test
