// Test-side model of Nx.BinaryBackend's element functions (binary_backend.ex's element_*, the
// Complex 0.6 functions it calls for reals, Erlang arithmetic), written clause by clause from
// those sources. Floats' NaN/+-Inf play the atoms :nan/:infinity/:neg_infinity; where
// BinaryBackend raises (Erlang arithmetic has no Inf/NaN), the IEEE result is expected.
#pragma once

#include <cmath>
#include <limits>

#include "elementwise_reference.h"

namespace nxq_test {

inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kPi = 3.141592653589793;

inline bool atom(const Val& v) {
  return !v.is_int && !std::isfinite(v.f);
}
inline bool is_nan(const Val& v) {
  return !v.is_int && v.f != v.f;
}
inline bool is_pinf(const Val& v) {
  return !v.is_int && v.f == kInf;
}
inline bool is_ninf(const Val& v) {
  return !v.is_int && v.f == -kInf;
}
inline bool is_number(const Val& v) {
  return !atom(v);
}

// Erlang's arithmetic comparison of two numbers (exact: long double holds every 64-bit integer
// and every double). -1, 0, 1.
inline int cmp_numbers(const Val& a, const Val& b) {
  if (a.is_int && b.is_int) return a.i < b.i ? -1 : (a.i > b.i ? 1 : 0);
  const long double x = a.is_int ? static_cast<long double>(a.i) : a.f;
  const long double y = b.is_int ? static_cast<long double>(b.i) : b.f;
  return x < y ? -1 : (x > y ? 1 : 0);
}
inline bool num_eq_zero(const Val& v) {
  return v.is_int ? v.i == 0 : v.f == 0;
}

// --- Complex.* on reals -----------------------------------------------------------------------

inline Val c_add(const Val& a, const Val& b) {
  if (is_nan(a) || is_nan(b)) return vf(kNaN);
  if ((is_pinf(a) && is_ninf(b)) || (is_ninf(a) && is_pinf(b))) return vf(kNaN);
  if (is_pinf(a) || is_pinf(b)) return vf(kInf);
  if (is_ninf(a) || is_ninf(b)) return vf(-kInf);
  if (a.is_int && b.is_int) return vi(a.i + b.i);
  return vf(a.d() + b.d());
}

inline Val c_subtract(const Val& a, const Val& b) {
  if (is_nan(a) || is_nan(b)) return vf(kNaN);
  if ((is_pinf(a) && is_pinf(b)) || (is_ninf(a) && is_ninf(b))) return vf(kNaN);
  if (is_pinf(a)) return vf(kInf);
  if (is_pinf(b)) return vf(-kInf);
  if (is_ninf(a)) return vf(-kInf);
  if (is_ninf(b)) return vf(kInf);
  if (a.is_int && b.is_int) return vi(a.i - b.i);
  return vf(a.d() - b.d());
}

inline Val c_multiply(const Val& a, const Val& b) {
  auto sgn = [](const Val& v) { return cmp_numbers(v, vi(0)); };
  if (is_pinf(a) && is_number(b)) return sgn(b) > 0 ? vf(kInf) : sgn(b) == 0 ? vf(kNaN) : vf(-kInf);
  if (is_pinf(b) && is_number(a)) return sgn(a) > 0 ? vf(kInf) : sgn(a) == 0 ? vf(kNaN) : vf(-kInf);
  if (is_ninf(a) && is_number(b)) return sgn(b) > 0 ? vf(-kInf) : sgn(b) == 0 ? vf(kNaN) : vf(kInf);
  if (is_ninf(b) && is_number(a)) return sgn(a) > 0 ? vf(-kInf) : sgn(a) == 0 ? vf(kNaN) : vf(kInf);
  if (is_nan(a) || is_nan(b)) return vf(kNaN);
  if (atom(a) && atom(b)) return vf((is_pinf(a) == is_pinf(b)) ? kInf : -kInf);
  if (a.is_int && b.is_int)
    return vi(static_cast<int128>(static_cast<unsigned __int128>(a.i) *
                                  static_cast<unsigned __int128>(b.i)));
  return vf(a.d() * b.d());
}

inline Val c_divide(const Val& x, const Val& y) {
  if (atom(x) && atom(y)) return vf(kNaN);
  if (atom(x) && is_number(y) && cmp_numbers(y, vi(0)) >= 0) return x;
  if (is_number(x) && is_number(y) && num_eq_zero(x) && num_eq_zero(y)) return vf(kNaN);
  if (is_nan(x) || is_nan(y)) return vf(kNaN);
  if (is_pinf(x)) return vf(-kInf);  // y < 0 here
  if (is_ninf(x)) return vf(kInf);
  if (atom(y)) return vi(0);
  return vf(x.d() / y.d());  // /0: Erlang raises; IEEE
}

inline Val c_negate(const Val& v) {
  if (is_nan(v)) return v;
  if (atom(v)) return vf(-v.f);
  return v.is_int ? vi(-v.i) : vf(-v.f);
}

inline Val c_exp(const Val& v) {
  if (is_pinf(v)) return vf(kInf);
  if (is_ninf(v)) return vi(0);
  if (is_nan(v)) return v;
  return vf(std::exp(v.d()));
}

inline Val c_log(const Val& v) {
  if (is_pinf(v)) return vf(kInf);
  if (is_ninf(v)) return vf(kNaN);  // a Complex, which BinaryBackend cannot write
  if (is_nan(v)) return v;
  if (num_eq_zero(v)) return vf(-kInf);
  if (cmp_numbers(v, vi(0)) < 0) return vf(kNaN);
  return vf(std::log(v.d()));
}

inline Val c_sqrt(const Val& v) {
  if (is_pinf(v)) return vf(kInf);
  if (atom(v)) return vf(kNaN);
  return vf(std::sqrt(v.d()));  // negative: raises; IEEE NaN
}

// Integer.pow by repeated products (test exponents are small), wrapped to 128 bits.
inline Val c_integer_pow(int128 a, int128 b) {
  unsigned __int128 r = 1, base = static_cast<unsigned __int128>(a);
  for (int128 k = 0; k < b; ++k) r *= base;
  return vi(static_cast<int128>(r));
}

// Integer.pow written into a float: exact while the power fits in 127 bits; beyond, the
// kernels (and this model) use pow() in double, which is Inf past the double range.
inline Val c_integer_pow_to_float(int128 a, int128 b) {
  int128 r = 1;
  for (int128 k = 0; k < b; ++k)
    if (__builtin_mul_overflow(r, a, &r))
      return vf(std::pow(static_cast<double>(a), static_cast<double>(b)));
  return vi(r);
}

inline Val c_pow(const Val& x, const Val& y) {
  if (is_nan(x) || is_nan(y)) return vf(kNaN);
  if (is_pinf(x) && is_number(y)) {
    const int s = cmp_numbers(y, vi(0));
    return s > 0 ? vf(kInf) : s == 0 ? vi(1) : vi(0);
  }
  if (is_ninf(x) && is_number(y)) {
    const int s = cmp_numbers(y, vi(0));
    if (s > 0) {
      if (y.is_int) return (y.i % 2 == 0) ? vf(kInf) : vf(-kInf);
      return vf(std::pow(-kInf, y.f));  // rem/2 of a float raises; IEEE
    }
    return s == 0 ? vi(1) : vi(0);
  }
  if (is_pinf(y) && is_number(x) && num_eq_zero(x)) return vi(0);
  if (is_ninf(y) && is_number(x) && num_eq_zero(x)) return vf(kInf);
  if (is_ninf(y)) return vi(0);
  if (is_pinf(y)) return vf(kInf);
  if (x.is_int && y.is_int && y.i >= 0) return c_integer_pow_to_float(x.i, y.i);
  return vf(std::pow(x.d(), y.d()));
}

inline Val c_atan2(const Val& b, const Val& a) {
  if (is_number(a) && is_number(b)) return vf(std::atan2(b.d(), a.d()));
  if (is_pinf(b) && is_pinf(a)) return vf(kPi / 4);
  if (is_pinf(b) && is_ninf(a)) return vf(3 * kPi / 4);
  if (is_pinf(b) && is_nan(a)) return vf(kNaN);
  if (is_pinf(b)) return vf(kPi / 2);
  if (is_ninf(b) && is_pinf(a)) return vf(-kPi / 4);
  if (is_ninf(b) && is_ninf(a)) return vf(-3 * kPi / 4);
  if (is_ninf(b) && is_nan(a)) return vf(kNaN);
  if (is_ninf(b)) return vf(-kPi / 2);
  if (is_nan(b) || is_nan(a)) return vf(kNaN);
  if (is_pinf(a)) return vi(0);
  return vf(kPi);  // a = -Inf
}

inline double c_erf_inv_number(double z) {
  if (z == 1) return kInf;
  if (z == -1) return -kInf;
  const double w0 = -std::log((1 - z) * (1 + z));
  double p, w;
  if (w0 < 5) {
    w = w0 - 2.5;
    const double c[] = {2.81022636e-08,  3.43273939e-07, -3.5233877e-06,
                        -4.39150654e-06, 0.00021858087,  -0.00125372503,
                        -0.00417768164,  0.246640727,    1.50140941};
    p = c[0];
    for (int k = 1; k < 9; ++k) p = p * w + c[k];
  } else {
    w = std::sqrt(w0) - 3;
    const double c[] = {-0.000200214257, 0.000100950558, 0.00134934322,
                        -0.00367342844,  0.00573950773,  -0.0076224613,
                        0.00943887047,   1.00167406,     2.83297682};
    p = c[0];
    for (int k = 1; k < 9; ++k) p = p * w + c[k];
  }
  return p * z;
}

// --- BinaryBackend's unary callbacks ----------------------------------------------------------

inline Val ref_unary(UnaryOp op, const Val& x) {
  const bool i = x.is_int;
  const double f = x.d();
  switch (op) {
    case UnaryOp::Copy:
      return x;
    case UnaryOp::Negate:
      return c_negate(x);
    case UnaryOp::Abs:  // Complex.abs -> Kernel.abs
      if (is_nan(x)) return x;
      if (atom(x)) return vf(kInf);
      return i ? vi(x.i < 0 ? -x.i : x.i) : vf(x.f < 0 ? -x.f : x.f);
    case UnaryOp::Sign:  // n < 0 -> -1; n > 0 -> 1 (an atom is > 0); else n
      if (atom(x)) return vi(1);
      if (cmp_numbers(x, vi(0)) < 0) return vi(-1);
      if (cmp_numbers(x, vi(0)) > 0) return vi(1);
      return x;
    case UnaryOp::Floor:
      return i ? x : vf(std::floor(f));
    case UnaryOp::Ceil:
      return i ? x : vf(std::ceil(f));
    case UnaryOp::Round: {  // :erlang.round: an integer, half away from zero
      if (i || atom(x)) return x;
      const double r = std::trunc(f) + (std::fabs(f - std::trunc(f)) >= 0.5 ? (f < 0 ? -1 : 1) : 0);
      return r == 0 ? vi(0) : vf(r);
    }
    case UnaryOp::Exp:
      return c_exp(x);
    case UnaryOp::Expm1:
      return c_subtract(c_exp(x), vi(1));
    case UnaryOp::Log:
      return c_log(x);
    case UnaryOp::Log1p:
      return c_log(c_add(x, vi(1)));
    case UnaryOp::Sigmoid:
      return c_divide(vi(1), c_add(c_exp(c_negate(x)), vi(1)));
    case UnaryOp::Tanh:
      return atom(x) ? vf(kNaN) : vf(std::tanh(f));
    case UnaryOp::Sqrt:
      return c_sqrt(x);
    case UnaryOp::Rsqrt:
      return c_divide(vi(1), c_sqrt(x));
    case UnaryOp::Cbrt:
      if (is_pinf(x) || is_ninf(x) || is_nan(x)) return x;
      if (cmp_numbers(x, vi(0)) >= 0) return vf(std::pow(f, 1.0 / 3));
      return vf(-1 * std::pow(-f, 1.0 / 3));
    case UnaryOp::Cos:
      return atom(x) ? vf(kNaN) : vf(std::cos(f));
    case UnaryOp::Sin:
      return atom(x) ? vf(kNaN) : vf(std::sin(f));
    case UnaryOp::Tan:
      return atom(x) ? vf(kNaN) : vf(std::tan(f));
    case UnaryOp::Acos:
      return atom(x) ? vf(kNaN) : vf(std::acos(f));
    case UnaryOp::Asin:
      return atom(x) ? vf(kNaN) : vf(std::asin(f));
    case UnaryOp::Atan:
      if (is_pinf(x)) return vf(kPi / 2);
      if (is_ninf(x)) return vf(-kPi / 2);
      return is_nan(x) ? x : vf(std::atan(f));
    case UnaryOp::Cosh:
      if (atom(x)) return is_nan(x) ? x : vf(kInf);
      return vf(std::cosh(f));
    case UnaryOp::Sinh:
      return atom(x) ? x : vf(std::sinh(f));
    case UnaryOp::Acosh:
      if (is_pinf(x) || is_nan(x)) return x;
      if (is_ninf(x)) return vf(kNaN);  // raises
      return vf(std::acosh(f));
    case UnaryOp::Asinh:
      return atom(x) ? x : vf(std::asinh(f));
    case UnaryOp::Atanh:
      return atom(x) ? vf(kNaN) : vf(std::atanh(f));  // atoms: a Complex (raises)
    case UnaryOp::Erf:
      if (is_pinf(x)) return vi(1);
      if (is_ninf(x)) return vi(-1);
      return is_nan(x) ? x : vf(std::erf(f));
    case UnaryOp::Erfc:
      if (is_pinf(x)) return vi(0);
      if (is_ninf(x)) return vi(2);
      return is_nan(x) ? x : vf(std::erfc(f));
    case UnaryOp::ErfInv:
      if (atom(x)) return vf(kNaN);
      if (num_eq_zero(x)) return vi(0);
      return vf(c_erf_inv_number(f));
    case UnaryOp::IsNan:
      return vi(is_nan(x) ? 1 : 0);
    case UnaryOp::IsInfinity:
      return vi(is_pinf(x) || is_ninf(x) ? 1 : 0);
    case UnaryOp::LogicalNot:
      return vi(is_number(x) && num_eq_zero(x) ? 1 : 0);
    case UnaryOp::BitwiseNot:
      return vi(~x.i);
  }
  return x;
}

// --- BinaryBackend's element_* ----------------------------------------------------------------

inline bool as_boolean(const Val& v) {
  return !(is_number(v) && num_eq_zero(v));
}

inline Val ref_binary(BinaryOp op, const Val& a, const Val& b, Type out) {
  switch (op) {
    case BinaryOp::Add:
      return c_add(a, b);
    case BinaryOp::Subtract:
      return c_subtract(a, b);
    case BinaryOp::Multiply:
      return c_multiply(a, b);
    case BinaryOp::Divide:
      return c_divide(a, b);
    case BinaryOp::Quotient:
      return vi(a.i / b.i);
    case BinaryOp::Remainder:
      if (a.is_int && b.is_int) return vi(a.i % b.i);
      return vf(std::fmod(a.d(), b.d()));
    case BinaryOp::Atan2:
      return c_atan2(a, b);
    case BinaryOp::Max:
      if (is_nan(a) || is_nan(b)) return vf(kNaN);
      if (is_pinf(a) || is_pinf(b)) return vf(kInf);
      if (is_ninf(a)) return b;
      if (is_ninf(b)) return a;
      return cmp_numbers(a, b) < 0 ? b : a;  // erlang:max/2: the first when equal
    case BinaryOp::Min:
      if (is_nan(a) || is_nan(b)) return vf(kNaN);
      if (is_pinf(a)) return b;
      if (is_pinf(b)) return a;
      if (is_ninf(a) || is_ninf(b)) return vf(-kInf);
      return cmp_numbers(b, a) < 0 ? b : a;
    case BinaryOp::Pow:
      if (!tfloat(out)) return c_integer_pow(a.i, b.i);
      return c_pow(a, b);
    case BinaryOp::BitwiseAnd:
      return vi(a.i & b.i);
    case BinaryOp::BitwiseOr:
      return vi(a.i | b.i);
    case BinaryOp::BitwiseXor:
      return vi(a.i ^ b.i);
    case BinaryOp::LeftShift:
      return vi(b.i >= 120 ? 0 : static_cast<int128>(static_cast<unsigned __int128>(a.i) << b.i));
    case BinaryOp::RightShift:
      return vi(b.i >= 120 ? (a.i < 0 ? -1 : 0) : (a.i >> b.i));
    case BinaryOp::Equal:
      if (is_nan(a) || is_nan(b)) return vi(0);
      if (atom(a) || atom(b)) return vi(!a.is_int && !b.is_int && a.f == b.f);
      return vi(cmp_numbers(a, b) == 0);
    case BinaryOp::NotEqual:
      if (is_nan(a) || is_nan(b)) return vi(1);
      return vi(1 - ref_binary(BinaryOp::Equal, a, b, out).i);
    case BinaryOp::Greater:
      if (is_nan(a) || is_nan(b)) return vi(0);
      if (!a.is_int && !b.is_int && a.f == b.f) return vi(0);
      if (is_pinf(a) || is_ninf(b)) return vi(1);
      if (is_ninf(a) || is_pinf(b)) return vi(0);
      return vi(cmp_numbers(a, b) > 0);
    case BinaryOp::Less:
      if (is_nan(a) || is_nan(b)) return vi(0);
      if (is_pinf(a) || is_ninf(b)) return vi(0);
      if (!a.is_int && !b.is_int && a.f == b.f) return vi(0);
      if (is_pinf(b) || is_ninf(a)) return vi(1);
      return vi(cmp_numbers(a, b) < 0);
    case BinaryOp::GreaterEqual:
      if (is_nan(a) || is_nan(b)) return vi(0);
      if (!a.is_int && !b.is_int && a.f == b.f) return vi(1);
      if (is_ninf(a) || is_pinf(b)) return vi(0);
      if (is_pinf(a) || is_ninf(b)) return vi(1);
      return vi(cmp_numbers(a, b) >= 0);
    case BinaryOp::LessEqual:
      if (is_nan(a) || is_nan(b)) return vi(0);
      if (is_pinf(b) || is_ninf(a)) return vi(1);
      if (!a.is_int && !b.is_int && a.f == b.f) return vi(1);
      if (is_pinf(a) || is_ninf(b)) return vi(0);
      return vi(cmp_numbers(a, b) <= 0);
    case BinaryOp::LogicalAnd:
      return vi(as_boolean(a) && as_boolean(b));
    case BinaryOp::LogicalOr:
      return vi(as_boolean(a) || as_boolean(b));
    case BinaryOp::LogicalXor:
      return vi(as_boolean(a) != as_boolean(b));
  }
  return a;
}

// Nx.clip through BinaryBackend: x > min ? x : min, then < max ? that : max.
inline Val ref_clip(const Val& x, const Val& lo, const Val& hi) {
  const Val c = ref_binary(BinaryOp::Greater, x, lo, Type::U8).i == 1 ? x : lo;
  return ref_binary(BinaryOp::Less, c, hi, Type::U8).i == 1 ? c : hi;
}

}  // namespace nxq_test
