// Per-element binary functions with Nx.BinaryBackend's semantics (see dense_ops.h).
//
// BinaryBackend reads each operand exactly (an Erlang float or :nan/:infinity/:neg_infinity
// atom for floats, an integer for integers) and calls Complex 0.6 / Erlang arithmetic:
//   - float arithmetic is IEEE double (Erlang raises instead of producing Inf/NaN: here the
//     IEEE result), except Complex.divide: x / +-Inf = +0.0 (the integer 0), +-Inf / y = +-Inf
//     for any y >= 0 including -0.0, 0 / 0 = NaN;
//   - pow: NaN with any operand is NaN (pow(1, NaN), pow(NaN, 0) too); an infinite exponent
//     gives Inf for any non-zero base (0.5^Inf = Inf) and +0.0 for -Inf (0.5^-Inf = 0);
//     (+-Inf)^y is Inf / 1 / +0.0 for y > 0 / 0 / < 0 (-Inf to an odd positive integer: -Inf);
//     integers to a non-negative integer power: exact (Integer.pow);
//   - atan2 with an infinite second operand: atan2(y, Inf) = +0.0, atan2(y, -Inf) = pi for
//     every finite y (IEEE would keep y's sign); the Inf/Inf cases are Erlang's pi expressions;
//   - max/min: NaN wins; otherwise Erlang's max/2 and min/2, which return the FIRST operand
//     when the two compare equal (max(-0.0, 0.0) = -0.0, max(0.0, -0.0) = 0.0);
//   - comparisons: IEEE (NaN unordered), integers against floats exactly (Erlang compares an
//     integer with a float exactly);
//   - logical ops: a value is true when it is not == 0 (NaN is true);
//   - integers: exact arbitrary-precision results written as their low bits: quotient / rem
//     truncate toward zero (by zero: BinaryBackend raises, here InvalidArgument), shifts of
//     the exact value (left by >= the width: 0; right: the sign), pow by square-and-multiply.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "nx_quant/dense_ops.h"

namespace nx_quant::dense::detail {

using int128 = __int128;
using uint128 = unsigned __int128;

// The unsigned type of an integer compute type (std::make_unsigned has no __int128 in strict
// C++17 mode).
template <class I>
struct UnsignedOf;
template <>
struct UnsignedOf<int64_t> {
  using type = uint64_t;
};
template <>
struct UnsignedOf<int128> {
  using type = uint128;
};
template <class I>
using unsigned_of_t = typename UnsignedOf<I>::type;

// Whether C is one of the integer compute types.
template <class C>
inline constexpr bool is_int_compute_v = std::is_same_v<C, int64_t> || std::is_same_v<C, int128>;

constexpr bool binary_is_predicate(BinaryOp op) {
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

// Ops only defined on integers (BinaryBackend raises for float operands).
constexpr bool binary_integer_only(BinaryOp op) {
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

// Ops whose result is one of the operands or exact (comparisons, max/min, fmod): computing
// them in f32 on f16/bf16/f32 operands gives BinaryBackend's result for any output type.
constexpr bool binary_exact_in_float(BinaryOp op) {
  return binary_is_predicate(op) || op == BinaryOp::Max || op == BinaryOp::Min ||
         op == BinaryOp::Remainder;
}

// Single correctly rounded operations: computed in f32 when the output allows (see element.h).
constexpr bool binary_rounded_in_float(BinaryOp op) {
  return op == BinaryOp::Add || op == BinaryOp::Subtract || op == BinaryOp::Multiply ||
         op == BinaryOp::Divide;
}

// Ops that compare their operands (an integer against a float must be compared exactly).
constexpr bool binary_compares(BinaryOp op) {
  switch (op) {
    case BinaryOp::Equal:
    case BinaryOp::NotEqual:
    case BinaryOp::Less:
    case BinaryOp::LessEqual:
    case BinaryOp::Greater:
    case BinaryOp::GreaterEqual:
    case BinaryOp::Max:
    case BinaryOp::Min:
      return true;
    default:
      return false;
  }
}

// Complex.divide on reals.
template <class C>
inline C float_divide(C a, C b) {
  constexpr C kInf = std::numeric_limits<C>::infinity();
  C r = a / b;
  r = std::fabs(b) == kInf ? r + C(0) : r;          // x / +-Inf: +0.0 (NaN stays NaN)
  r = (b == C(0) && std::fabs(a) == kInf) ? a : r;  // +-Inf / +-0.0: +-Inf
  return r;
}

// Complex.pow on reals (both operands floats, or one an integer converted to double).
inline double float_pow(double a, double b) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (a != a || b != b) return std::numeric_limits<double>::quiet_NaN();
  if (std::isinf(a)) {
    if (b > 0) return (a > 0 || std::isinf(b)) ? kInf : std::pow(a, b);
    if (b == 0) return 1.0;
    return 0.0;
  }
  if (std::isinf(b)) {
    if (b > 0) return a == 0 ? 0.0 : kInf;
    return a == 0 ? kInf : 0.0;
  }
  return std::pow(a, b);
}

// Complex.atan2(a, b) on reals.
inline double float_atan2(double a, double b) {
  const double pi = 3.141592653589793;  // :math.pi()
  if (a != a || b != b) return std::numeric_limits<double>::quiet_NaN();
  if (std::isinf(a)) {
    if (a > 0) {
      if (std::isinf(b)) return b > 0 ? pi / 4 : 3 * pi / 4;
      return pi / 2;
    }
    if (std::isinf(b)) return b > 0 ? -pi / 4 : -3 * pi / 4;
    return -pi / 2;
  }
  if (std::isinf(b)) return b > 0 ? 0.0 : pi;
  return std::atan2(a, b);
}

// A float-domain op (C = float or double). Predicates return 0 or 1.
template <BinaryOp Op, class C>
inline C binary_float(C a, C b) {
  constexpr C kZero = 0, kOne = 1;
  constexpr C kNan = std::numeric_limits<C>::quiet_NaN();
  if constexpr (Op == BinaryOp::Add) {
    return a + b;
  } else if constexpr (Op == BinaryOp::Subtract) {
    return a - b;
  } else if constexpr (Op == BinaryOp::Multiply) {
    return a * b;
  } else if constexpr (Op == BinaryOp::Divide) {
    return float_divide(a, b);
  } else if constexpr (Op == BinaryOp::Max) {
    const C r = a < b ? b : a;
    return (a != a || b != b) ? kNan : r;
  } else if constexpr (Op == BinaryOp::Min) {
    const C r = b < a ? b : a;
    return (a != a || b != b) ? kNan : r;
  } else if constexpr (Op == BinaryOp::Remainder) {
    return std::fmod(a, b);
  } else if constexpr (Op == BinaryOp::Pow) {
    static_assert(std::is_same_v<C, double>, "pow is computed in double");
    return float_pow(a, b);
  } else if constexpr (Op == BinaryOp::Atan2) {
    static_assert(std::is_same_v<C, double>, "atan2 is computed in double");
    return float_atan2(a, b);
  } else if constexpr (Op == BinaryOp::Equal) {
    return a == b ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::NotEqual) {
    return a != b ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::Less) {
    return a < b ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::LessEqual) {
    return a <= b ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::Greater) {
    return a > b ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::GreaterEqual) {
    return a >= b ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::LogicalAnd) {
    return (a != kZero && b != kZero) ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::LogicalOr) {
    return (a != kZero || b != kZero) ? kOne : kZero;
  } else if constexpr (Op == BinaryOp::LogicalXor) {
    return ((a != kZero) != (b != kZero)) ? kOne : kZero;
  } else {
    static_assert(Op == BinaryOp::Add, "not a float op");
    return a;
  }
}

// Integer power by square-and-multiply, wrapping (the low bits of the exact power).
template <class U>
inline U wrapping_pow(U base, U exponent) {
  U result = 1;
  while (exponent != 0) {
    if (exponent & 1) result *= base;
    exponent >>= 1;
    if (exponent != 0) base *= base;
  }
  return result;
}

// An integer-domain op on exact values (I = int64_t when no operand is u64 and the output is
// an integer, else __int128; results are the exact value's low bits, exact whenever they fit
// in I). The caller has rejected division by zero, negative shifts and negative integer
// exponents. Predicates return 0 or 1.
template <BinaryOp Op, class I>
inline I binary_int(I a, I b) {
  using U = unsigned_of_t<I>;
  constexpr int kBits = sizeof(I) * 8;
  if constexpr (Op == BinaryOp::Add) {
    return static_cast<I>(static_cast<U>(a) + static_cast<U>(b));
  } else if constexpr (Op == BinaryOp::Subtract) {
    return static_cast<I>(static_cast<U>(a) - static_cast<U>(b));
  } else if constexpr (Op == BinaryOp::Multiply) {
    return static_cast<I>(static_cast<U>(a) * static_cast<U>(b));
  } else if constexpr (Op == BinaryOp::Pow) {
    return static_cast<I>(wrapping_pow<U>(static_cast<U>(a), static_cast<U>(b)));
  } else if constexpr (Op == BinaryOp::Max) {
    return a < b ? b : a;
  } else if constexpr (Op == BinaryOp::Min) {
    return b < a ? b : a;
  } else if constexpr (Op == BinaryOp::Quotient) {
    if (b == -1) return static_cast<I>(U{0} - static_cast<U>(a));  // no INT_MIN / -1 trap
    return a / b;
  } else if constexpr (Op == BinaryOp::Remainder) {
    if (b == -1) return 0;
    return a % b;
  } else if constexpr (Op == BinaryOp::BitwiseAnd) {
    return a & b;
  } else if constexpr (Op == BinaryOp::BitwiseOr) {
    return a | b;
  } else if constexpr (Op == BinaryOp::BitwiseXor) {
    return a ^ b;
  } else if constexpr (Op == BinaryOp::LeftShift) {
    return b >= kBits ? I{0} : static_cast<I>(static_cast<U>(a) << b);
  } else if constexpr (Op == BinaryOp::RightShift) {
    return b >= kBits ? (a < 0 ? I{-1} : I{0}) : (a >> b);
  } else if constexpr (Op == BinaryOp::Equal) {
    return a == b;
  } else if constexpr (Op == BinaryOp::NotEqual) {
    return a != b;
  } else if constexpr (Op == BinaryOp::Less) {
    return a < b;
  } else if constexpr (Op == BinaryOp::LessEqual) {
    return a <= b;
  } else if constexpr (Op == BinaryOp::Greater) {
    return a > b;
  } else if constexpr (Op == BinaryOp::GreaterEqual) {
    return a >= b;
  } else if constexpr (Op == BinaryOp::LogicalAnd) {
    return a != 0 && b != 0;
  } else if constexpr (Op == BinaryOp::LogicalOr) {
    return a != 0 || b != 0;
  } else if constexpr (Op == BinaryOp::LogicalXor) {
    return (a != 0) != (b != 0);
  } else {
    static_assert(Op == BinaryOp::Add, "not an integer op");
    return a;
  }
}

// --- exact mixed values (an integer or a float, as Erlang holds them) -------------------------

struct Num {
  bool is_int = false;
  int128 i = 0;
  double f = 0;

  static Num of_int(int128 v) {
    Num n;
    n.is_int = true;
    n.i = v;
    return n;
  }
  static Num of_float(double v) {
    Num n;
    n.f = v;
    return n;
  }
  double as_double() const { return is_int ? static_cast<double>(i) : f; }
};

// -1, 0 or 1 as `i` compares with the non-NaN double `d`, exactly.
inline int compare_int_double(int128 i, double d) {
  if (d == std::numeric_limits<double>::infinity()) return -1;
  if (d == -std::numeric_limits<double>::infinity()) return 1;
  constexpr double k2p126 = 85070591730234615865843651857942052864.0;  // 2^126
  if (d >= k2p126) return -1;                                          // |i| < 2^65 here
  if (d <= -k2p126) return 1;
  const double t = std::trunc(d);
  const int128 ti = static_cast<int128>(t);  // exact: |t| < 2^126
  if (i < ti) return -1;
  if (i > ti) return 1;
  const double frac = d - t;
  return frac > 0 ? -1 : (frac < 0 ? 1 : 0);
}

// -1, 0, 1, or 2 when unordered (a NaN).
inline int compare_num(const Num& a, const Num& b) {
  if (a.is_int && b.is_int) return a.i < b.i ? -1 : (a.i > b.i ? 1 : 0);
  if (!a.is_int && a.f != a.f) return 2;
  if (!b.is_int && b.f != b.f) return 2;
  if (a.is_int) return compare_int_double(a.i, b.f);
  if (b.is_int) return -compare_int_double(b.i, a.f);
  return a.f < b.f ? -1 : (a.f > b.f ? 1 : 0);
}

inline bool num_truthy(const Num& a) {
  return a.is_int ? a.i != 0 : a.f != 0;
}

}  // namespace nx_quant::dense::detail
