// Reading and writing single elements with Nx.BinaryBackend's rules (see dense_ops.h).
//
// BinaryBackend reads a float element exactly as a double and an integer exactly as an
// integer, and writes a result as follows:
//   f64/f32/f16 <- double: round to nearest even (Erlang's <<x::float-size>>), overflow to Inf;
//   bf16        <- double: the f32 rounding, truncated to its top 16 bits (Nx's dump_bf16);
//   any float   <- NaN: the type's canonical quiet NaN (Nx has one :nan, without sign);
//   integer     <- integer: the low bits (two's complement);
//   integer     <- float (as_type): trunc toward zero, NaN -> 0, +-Inf -> max / min finite,
//                  a finite value out of range -> the low bits of its (exact) integer part;
//   float       <- integer: integer -> double (round to nearest even) -> the float type.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "nx_quant/dense_ops.h"
#include "nx_quant/dtype.h"

namespace nx_quant::dense::detail {

inline constexpr uint16_t kF16Nan = 0x7E00;
inline constexpr uint16_t kBf16Nan = 0x7FC0;
inline constexpr uint32_t kF32NanBits = 0x7FC00000u;
inline constexpr uint64_t kF64NanBits = 0x7FF8000000000000ull;

inline float f16_to_float(uint16_t h) {
  return nx_quant::f16_bits_to_f32(h);
}
inline float bf16_to_float(uint16_t h) {
  return nx_quant::bf16_bits_to_f32(h);
}

// f32 -> f16, round to nearest even; NaN canonical.
inline uint16_t float_to_f16(float f) {
  if (std::isnan(f)) return kF16Nan;
  return nx_quant::f32_to_f16_bits(f);
}

// f32 -> bf16 as BinaryBackend writes it: truncation of the f32; NaN canonical.
inline uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return kBf16Nan;
  return static_cast<uint16_t>(nx_quant::bit_cast<uint32_t>(f) >> 16);
}

inline float canonical_nan_float() {
  return nx_quant::bit_cast<float>(kF32NanBits);
}
inline double canonical_nan_double() {
  return nx_quant::bit_cast<double>(kF64NanBits);
}

// double -> f32 rounded to odd (truncate toward zero, set the last bit if inexact). Rounding
// that to f16 (11 bits <= 24 - 2) gives the correctly rounded f16 of the double.
inline float double_to_float_round_odd(double d) {
  float f = static_cast<float>(d);
  if (std::isnan(d) || std::isinf(f) || static_cast<double>(f) == d) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return nx_quant::bit_cast<float>(nx_quant::bit_cast<uint32_t>(f) | 1u);
}

inline uint16_t double_to_f16(double d) {
  if (std::isnan(d)) return kF16Nan;
  if (std::fabs(d) >= 65520.0) return std::signbit(d) ? 0xFC00 : 0x7C00;  // past max + ulp/2
  return nx_quant::f32_to_f16_bits(double_to_float_round_odd(d));
}

inline uint16_t double_to_bf16(double d) {
  if (std::isnan(d)) return kBf16Nan;
  return static_cast<uint16_t>(nx_quant::bit_cast<uint32_t>(static_cast<float>(d)) >> 16);
}

inline float double_to_float(double d) {
  if (std::isnan(d)) return canonical_nan_float();
  return static_cast<float>(d);
}

// The low 64 bits of trunc(d) for a finite double (exact, however large).
inline uint64_t trunc_low_bits(double d) {
  const double t = std::trunc(d);
  if (std::fabs(t) < 9223372036854775808.0) return static_cast<uint64_t>(static_cast<int64_t>(t));
  int exponent;
  const double mantissa = std::frexp(std::fabs(t), &exponent);  // |t| = mantissa * 2^exponent
  const uint64_t m53 = static_cast<uint64_t>(std::ldexp(mantissa, 53));
  const int shift = exponent - 53;  // >= 11 here
  const uint64_t magnitude = shift >= 64 ? 0 : (m53 << shift);
  return d < 0 ? (~magnitude + 1) : magnitude;
}

// --- loads ------------------------------------------------------------------------------------

template <Type T>
struct Storage;
template <>
struct Storage<Type::U8> {
  using type = uint8_t;
};
template <>
struct Storage<Type::U16> {
  using type = uint16_t;
};
template <>
struct Storage<Type::U32> {
  using type = uint32_t;
};
template <>
struct Storage<Type::U64> {
  using type = uint64_t;
};
template <>
struct Storage<Type::S8> {
  using type = int8_t;
};
template <>
struct Storage<Type::S16> {
  using type = int16_t;
};
template <>
struct Storage<Type::S32> {
  using type = int32_t;
};
template <>
struct Storage<Type::S64> {
  using type = int64_t;
};
template <>
struct Storage<Type::F16> {
  using type = uint16_t;
};
template <>
struct Storage<Type::BF16> {
  using type = uint16_t;
};
template <>
struct Storage<Type::F32> {
  using type = float;
};
template <>
struct Storage<Type::F64> {
  using type = double;
};

template <Type T>
using storage_t = typename Storage<T>::type;

// Element i (in elements) of a buffer of type T, exactly as a double (integers beyond 2^53
// rounded to nearest, as Erlang converts them).
template <Type T>
inline double load_double(const void* data, int64_t i) {
  const auto v = static_cast<const storage_t<T>*>(data)[i];
  if constexpr (T == Type::F16)
    return f16_to_float(v);
  else if constexpr (T == Type::BF16)
    return bf16_to_float(v);
  else
    return static_cast<double>(v);
}

// Element i of a float buffer of f16/bf16/f32, exactly as a float.
template <Type T>
inline float load_float(const void* data, int64_t i) {
  const auto v = static_cast<const storage_t<T>*>(data)[i];
  if constexpr (T == Type::F16)
    return f16_to_float(v);
  else if constexpr (T == Type::BF16)
    return bf16_to_float(v);
  else
    return static_cast<float>(v);
}

// Element i of an integer buffer as 64 bits (u64 as its bit pattern).
template <Type T>
inline int64_t load_int(const void* data, int64_t i) {
  return static_cast<int64_t>(static_cast<const storage_t<T>*>(data)[i]);
}

// --- stores -----------------------------------------------------------------------------------

template <Type T>
inline void store_double(void* data, int64_t i, double v) {
  auto* p = static_cast<storage_t<T>*>(data) + i;
  if constexpr (T == Type::F64) {
    *p = std::isnan(v) ? canonical_nan_double() : v;
  } else if constexpr (T == Type::F32) {
    *p = double_to_float(v);
  } else if constexpr (T == Type::F16) {
    *p = double_to_f16(v);
  } else if constexpr (T == Type::BF16) {
    *p = double_to_bf16(v);
  } else {  // integer output from a float value (as_type's rules)
    using S = storage_t<T>;
    if (std::isnan(v)) {
      *p = 0;
    } else if (std::isinf(v)) {
      *p = v > 0 ? std::numeric_limits<S>::max() : std::numeric_limits<S>::min();
    } else {
      *p = static_cast<S>(trunc_low_bits(v));
    }
  }
}

// A float result (computed in f32 from f16/bf16/f32 operands) into a float output.
template <Type T>
inline void store_float(void* data, int64_t i, float v) {
  auto* p = static_cast<storage_t<T>*>(data) + i;
  if constexpr (T == Type::F32) {
    *p = std::isnan(v) ? canonical_nan_float() : v;
  } else if constexpr (T == Type::F16) {
    *p = float_to_f16(v);
  } else if constexpr (T == Type::BF16) {
    *p = float_to_bf16(v);
  } else if constexpr (T == Type::F64) {
    *p = std::isnan(v) ? canonical_nan_double() : static_cast<double>(v);
  } else {
    store_double<T>(data, i, static_cast<double>(v));
  }
}

// An integer result (64 bits; `is_unsigned` says how to read them when converting to a float).
template <Type T>
inline void store_int(void* data, int64_t i, int64_t v, bool is_unsigned = false) {
  auto* p = static_cast<storage_t<T>*>(data) + i;
  if constexpr (T == Type::F64 || T == Type::F32 || T == Type::F16 || T == Type::BF16) {
    const double d =
        is_unsigned ? static_cast<double>(static_cast<uint64_t>(v)) : static_cast<double>(v);
    store_double<T>(data, i, d);
  } else {
    *p = static_cast<storage_t<T>>(static_cast<uint64_t>(v));
  }
}

// --- dispatch ---------------------------------------------------------------------------------

// Calls fn(std::integral_constant<Type, t>{}) so kernels can be instantiated per type.
template <typename Fn>
inline decltype(auto) with_type(Type t, Fn&& fn) {
  switch (t) {
    case Type::U8:
      return fn(std::integral_constant<Type, Type::U8>{});
    case Type::U16:
      return fn(std::integral_constant<Type, Type::U16>{});
    case Type::U32:
      return fn(std::integral_constant<Type, Type::U32>{});
    case Type::U64:
      return fn(std::integral_constant<Type, Type::U64>{});
    case Type::S8:
      return fn(std::integral_constant<Type, Type::S8>{});
    case Type::S16:
      return fn(std::integral_constant<Type, Type::S16>{});
    case Type::S32:
      return fn(std::integral_constant<Type, Type::S32>{});
    case Type::S64:
      return fn(std::integral_constant<Type, Type::S64>{});
    case Type::F16:
      return fn(std::integral_constant<Type, Type::F16>{});
    case Type::BF16:
      return fn(std::integral_constant<Type, Type::BF16>{});
    case Type::F32:
      return fn(std::integral_constant<Type, Type::F32>{});
    case Type::F64:
    default:
      return fn(std::integral_constant<Type, Type::F64>{});
  }
}

constexpr bool is_float_type(Type t) {
  return t == Type::F16 || t == Type::BF16 || t == Type::F32 || t == Type::F64;
}
constexpr bool is_unsigned_type(Type t) {
  return t == Type::U8 || t == Type::U16 || t == Type::U32 || t == Type::U64;
}
// f16/bf16/f32: every value is exact as a float, and single correctly rounded operations
// computed in f32 round to f16/bf16/f32 exactly as BinaryBackend's double computation does.
constexpr bool is_narrow_float(Type t) {
  return t == Type::F16 || t == Type::BF16 || t == Type::F32;
}

}  // namespace nx_quant::dense::detail
