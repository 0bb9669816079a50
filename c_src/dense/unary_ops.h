// Per-element unary functions with Nx.BinaryBackend's semantics (see dense_ops.h).
//
// BinaryBackend reads a float element as an Erlang float, or as one of the atoms :nan,
// :infinity, :neg_infinity, and calls Complex 0.6 (which calls :math for finite reals). Here
// the atoms are the IEEE values; the quirks of that code path are kept:
//   abs(-0.0) = -0.0 (Erlang's abs keeps a negative zero), sign(NaN) = sign(+-Inf) = 1 (Erlang
//   compares the atoms as greater than every number), round(x) = Erlang's round/1 (half away
//   from zero, an integer: a zero result is +0.0), tanh(+-Inf) = NaN (Complex computes
//   sinh/cosh of the atoms), expm1(x) = exp(x) - 1, log1p(x) = log(x + 1),
//   sigmoid(x) = 1 / (exp(-x) + 1), rsqrt(x) = 1 / sqrt(x), cbrt(x) = pow(x, 1/3) (negated for
//   x < 0; cbrt(-0.0) = +0.0), erf_inv = Complex's polynomial (Giles) in double, with
//   erf_inv(+-0) = +0.0.
// Where BinaryBackend raises (Erlang's :math has no Inf/NaN results: exp overflow, log of a
// negative, sqrt(-1), ...) the functions return the IEEE result.
//
// Integers are computed exactly (an Erlang integer) and written as their low bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "binary_ops.h"
#include "nx_quant/dense_ops.h"

namespace nx_quant::dense::detail {

// Ops whose result is 0/1 (written as integers).
constexpr bool unary_is_predicate(UnaryOp op) {
  return op == UnaryOp::IsNan || op == UnaryOp::IsInfinity || op == UnaryOp::LogicalNot;
}

// Ops whose float result is exact, or a single correctly rounded operation (Sqrt), so that
// computing them in f32 on f16/bf16/f32 operands gives BinaryBackend's bits (see element.h).
constexpr bool unary_exact_in_float(UnaryOp op) {
  switch (op) {
    case UnaryOp::Copy:
    case UnaryOp::Negate:
    case UnaryOp::Abs:
    case UnaryOp::Sign:
    case UnaryOp::Floor:
    case UnaryOp::Ceil:
    case UnaryOp::Round:
    case UnaryOp::IsNan:
    case UnaryOp::IsInfinity:
    case UnaryOp::LogicalNot:
      return true;
    default:
      return false;
  }
}

// Ops that need a double libm call (or a double formula) per element.
constexpr bool unary_is_transcendental(UnaryOp op) {
  return !unary_exact_in_float(op) && op != UnaryOp::Sqrt && op != UnaryOp::BitwiseNot;
}

// Complex.erf_inv for a finite real (double arithmetic in Complex's order, no fused ops).
inline double erf_inv_double(double z) {
  if (z == 1.0) return std::numeric_limits<double>::infinity();
  if (z == -1.0) return -std::numeric_limits<double>::infinity();
  if (z == 0.0) return 0.0;  // the integer 0: +0.0 for -0.0 too
  double w = -std::log((1.0 - z) * (1.0 + z));
  double p;
  if (w < 5.0) {
    w = w - 2.5;
    p = 2.81022636e-08;
    p = p * w + 3.43273939e-07;
    p = p * w + -3.5233877e-06;
    p = p * w + -4.39150654e-06;
    p = p * w + 0.00021858087;
    p = p * w + -0.00125372503;
    p = p * w + -0.00417768164;
    p = p * w + 0.246640727;
    p = p * w + 1.50140941;
  } else {
    w = std::sqrt(w) - 3.0;
    p = -0.000200214257;
    p = p * w + 0.000100950558;
    p = p * w + 0.00134934322;
    p = p * w + -0.00367342844;
    p = p * w + 0.00573950773;
    p = p * w + -0.0076224613;
    p = p * w + 0.00943887047;
    p = p * w + 1.00167406;
    p = p * w + 2.83297682;
  }
  return p * z;
}

// A float operand's result (C = float for the exact ops on f16/bf16/f32, else double). For
// predicates the result is 0 or 1.
template <UnaryOp Op, class C>
inline C unary_float(C x) {
  constexpr C kZero = 0, kOne = 1;
  if constexpr (Op == UnaryOp::Copy) {
    return x;
  } else if constexpr (Op == UnaryOp::Negate) {
    return -x;
  } else if constexpr (Op == UnaryOp::Abs) {
    return x < kZero ? -x : x;
  } else if constexpr (Op == UnaryOp::Sign) {
    // NaN and +-Inf are atoms, which Erlang orders above every number: sign 1.
    if (x != x || std::fabs(x) == std::numeric_limits<C>::infinity()) return kOne;
    return x < kZero ? -kOne : (x > kZero ? kOne : x);
  } else if constexpr (Op == UnaryOp::Floor) {
    return std::floor(x);
  } else if constexpr (Op == UnaryOp::Ceil) {
    return std::ceil(x);
  } else if constexpr (Op == UnaryOp::Round) {
    return std::round(x) + kZero;  // an integer result: no negative zero
  } else if constexpr (Op == UnaryOp::IsNan) {
    return x != x ? kOne : kZero;
  } else if constexpr (Op == UnaryOp::IsInfinity) {
    return std::fabs(x) == std::numeric_limits<C>::infinity() ? kOne : kZero;
  } else if constexpr (Op == UnaryOp::LogicalNot) {
    return x == kZero ? kOne : kZero;
  } else if constexpr (Op == UnaryOp::Sqrt) {
    return std::sqrt(x);
  } else {
    static_assert(std::is_same_v<C, double>, "transcendental functions are computed in double");
    if constexpr (Op == UnaryOp::Exp) {
      return std::exp(x);
    } else if constexpr (Op == UnaryOp::Expm1) {
      return std::exp(x) - 1.0;
    } else if constexpr (Op == UnaryOp::Log) {
      return std::log(x);
    } else if constexpr (Op == UnaryOp::Log1p) {
      return std::log(x + 1.0);
    } else if constexpr (Op == UnaryOp::Sigmoid) {
      return 1.0 / (std::exp(-x) + 1.0);
    } else if constexpr (Op == UnaryOp::Tanh) {
      return std::isinf(x) ? std::numeric_limits<double>::quiet_NaN() : std::tanh(x);
    } else if constexpr (Op == UnaryOp::Rsqrt) {
      return 1.0 / std::sqrt(x);
    } else if constexpr (Op == UnaryOp::Cbrt) {
      return x < 0.0 ? -std::pow(-x, 1.0 / 3.0) : std::pow(x, 1.0 / 3.0);
    } else if constexpr (Op == UnaryOp::Cos) {
      return std::cos(x);
    } else if constexpr (Op == UnaryOp::Sin) {
      return std::sin(x);
    } else if constexpr (Op == UnaryOp::Tan) {
      return std::tan(x);
    } else if constexpr (Op == UnaryOp::Acos) {
      return std::acos(x);
    } else if constexpr (Op == UnaryOp::Asin) {
      return std::asin(x);
    } else if constexpr (Op == UnaryOp::Atan) {
      return std::atan(x);
    } else if constexpr (Op == UnaryOp::Cosh) {
      return std::cosh(x);
    } else if constexpr (Op == UnaryOp::Sinh) {
      return std::sinh(x);
    } else if constexpr (Op == UnaryOp::Acosh) {
      return std::acosh(x);
    } else if constexpr (Op == UnaryOp::Asinh) {
      return std::asinh(x);
    } else if constexpr (Op == UnaryOp::Atanh) {
      return std::atanh(x);
    } else if constexpr (Op == UnaryOp::Erf) {
      return std::erf(x);
    } else if constexpr (Op == UnaryOp::Erfc) {
      return std::erfc(x);
    } else if constexpr (Op == UnaryOp::ErfInv) {
      return std::isfinite(x) ? erf_inv_double(x) : std::numeric_limits<double>::quiet_NaN();
    } else {
      static_assert(Op == UnaryOp::Exp, "unhandled unary op");
      return x;
    }
  }
}

// An integer operand's exact result (I = int64_t when every value and result fits, else
// __int128), for the ops that keep integers integers. Floor/Ceil/Round are the identity.
template <UnaryOp Op, class I>
inline I unary_int(I v) {
  using U = unsigned_of_t<I>;
  if constexpr (Op == UnaryOp::Copy || Op == UnaryOp::Floor || Op == UnaryOp::Ceil ||
                Op == UnaryOp::Round) {
    return v;
  } else if constexpr (Op == UnaryOp::Negate) {
    return static_cast<I>(U{0} - static_cast<U>(v));
  } else if constexpr (Op == UnaryOp::Abs) {
    return v < 0 ? static_cast<I>(U{0} - static_cast<U>(v)) : v;
  } else if constexpr (Op == UnaryOp::Sign) {
    return v < 0 ? I{-1} : (v > 0 ? I{1} : I{0});
  } else if constexpr (Op == UnaryOp::IsNan || Op == UnaryOp::IsInfinity) {
    return I{0};
  } else if constexpr (Op == UnaryOp::LogicalNot) {
    return v == 0 ? I{1} : I{0};
  } else if constexpr (Op == UnaryOp::BitwiseNot) {
    return ~v;
  } else {
    static_assert(Op == UnaryOp::Copy, "not an integer op");
    return v;
  }
}

// Whether an integer operand keeps the integer domain for this op (else it is converted to
// double, as :math does).
constexpr bool unary_int_op(UnaryOp op) {
  return unary_exact_in_float(op) || op == UnaryOp::BitwiseNot;
}

}  // namespace nx_quant::dense::detail
