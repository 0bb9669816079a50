// Test-side reference for the element-wise kernels: typed buffers, interesting values of every
// type, and Nx.BinaryBackend's write rules written independently of the kernels (only the
// exact element loads of element.h are shared).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "element.h"
#include "nx_quant/dense_ops.h"

namespace nxq_test {

using namespace nx_quant::dense;
using int128 = __int128;

inline constexpr Type kAllTypes[] = {Type::U8,  Type::U16,  Type::U32, Type::U64,
                                     Type::S8,  Type::S16,  Type::S32, Type::S64,
                                     Type::F16, Type::BF16, Type::F32, Type::F64};

inline bool tfloat(Type t) {
  return t == Type::F16 || t == Type::BF16 || t == Type::F32 || t == Type::F64;
}
inline bool tunsigned(Type t) {
  return t == Type::U8 || t == Type::U16 || t == Type::U32 || t == Type::U64;
}
inline size_t tsize(Type t) {
  switch (t) {
    case Type::U8:
    case Type::S8:
      return 1;
    case Type::U16:
    case Type::S16:
    case Type::F16:
    case Type::BF16:
      return 2;
    case Type::U32:
    case Type::S32:
    case Type::F32:
      return 4;
    default:
      return 8;
  }
}
inline int tbits(Type t) {
  return static_cast<int>(tsize(t) * 8);
}

// An Erlang value: an integer (exact) or a float (NaN / +-Inf stand for Nx's atoms).
struct Val {
  bool is_int = false;
  int128 i = 0;
  double f = 0;
  double d() const { return is_int ? static_cast<double>(i) : f; }
};
inline Val vi(int128 v) {
  Val r;
  r.is_int = true;
  r.i = v;
  return r;
}
inline Val vf(double v) {
  Val r;
  r.f = v;
  return r;
}

inline uint64_t dbits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}
inline uint32_t fbits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline double bits_d(uint64_t u) {
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

// f16 bit pattern -> double, decoded here.
inline double f16_value(uint16_t h) {
  const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31)
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0)
    v = std::ldexp(static_cast<double>(m), -24);
  else
    v = std::ldexp(static_cast<double>(m + 1024), e - 25);
  return sign ? -v : v;
}

// double -> f16, round to nearest even by search over every finite half (Erlang's
// <<x::float-16>>); NaN -> Nx's canonical 0x7E00.
inline uint16_t ref_f16(double d) {
  if (d != d) return 0x7E00;
  const uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  const double a = std::fabs(d);
  if (a >= 65520.0) return sign | 0x7C00;
  uint16_t lo = 0, hi = 0x7BFF;  // largest pattern with value <= a
  while (lo < hi) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (f16_value(mid) <= a)
      lo = mid;
    else
      hi = static_cast<uint16_t>(mid - 1);
  }
  const double below = f16_value(lo);
  if (below == a) return sign | lo;
  const double above = lo == 0x7BFF ? 65536.0 : f16_value(static_cast<uint16_t>(lo + 1));
  const double dl = a - below, dh = above - a;  // exact (Sterbenz)
  uint16_t r = lo;
  if (dh < dl || (dh == dl && (lo & 1))) r = static_cast<uint16_t>(lo + 1);
  return sign | r;
}

// BinaryBackend's write of value v into an element of type t, as raw bits.
inline uint64_t ref_bits(Type t, const Val& v) {
  if (tfloat(t)) {
    const double d = v.is_int ? static_cast<double>(v.i) : v.f;  // integer -> float: RNE
    switch (t) {
      case Type::F64:
        return d != d ? 0x7FF8000000000000ull : dbits(d);
      case Type::F32:
        return d != d ? 0x7FC00000u : fbits(static_cast<float>(d));
      case Type::BF16:
        return d != d ? 0x7FC0u : (fbits(static_cast<float>(d)) >> 16);
      default:
        return ref_f16(d);
    }
  }
  const int bits = tbits(t);
  const uint64_t mask = bits == 64 ? ~uint64_t{0} : ((uint64_t{1} << bits) - 1);
  if (v.is_int) return static_cast<uint64_t>(v.i) & mask;
  // float -> integer (as_type): trunc, NaN -> 0, +-Inf -> max / min finite
  const double d = v.f;
  if (d != d) return 0;
  if (std::isinf(d)) {
    if (tunsigned(t)) return d > 0 ? mask : 0;
    const uint64_t max = mask >> 1;
    return d > 0 ? max : ((max + 1) & mask);
  }
  const double tr = std::trunc(d);
  // the exact integer's low bits: tr = m * 2^e with m < 2^53
  int e;
  const double m = std::frexp(std::fabs(tr), &e);
  unsigned __int128 mag;
  if (e <= 53)
    mag = static_cast<unsigned __int128>(static_cast<uint64_t>(std::fabs(tr)));
  else if (e - 53 >= 128)
    mag = 0;
  else
    mag = static_cast<unsigned __int128>(static_cast<uint64_t>(std::ldexp(m, 53))) << (e - 53);
  if (tr < 0) mag = ~mag + 1;
  return static_cast<uint64_t>(mag) & mask;
}

// An element's exact value (element.h's loads), with its raw bits.
inline Val read_val(Type t, const void* data, size_t i) {
  using namespace nx_quant::dense::detail;
  return with_type(t, [&](auto tc) {
    constexpr Type T = decltype(tc)::value;
    if constexpr (is_float_type(T))
      return vf(load_double<T>(data, static_cast<int64_t>(i)));
    else
      return vi(static_cast<int128>(static_cast<const storage_t<T>*>(data)[i]));
  });
}

inline uint64_t raw_bits(Type t, const void* data, size_t i) {
  uint64_t u = 0;
  std::memcpy(&u, static_cast<const unsigned char*>(data) + i * tsize(t), tsize(t));
  return u;
}

// A buffer of raw elements.
struct Buf {
  Type type;
  std::vector<unsigned char> bytes;
  Buf(Type t, size_t n) : type(t), bytes(n * tsize(t) + 1) {}  // +1: data() non-null
  size_t count() const { return (bytes.size() - 1) / tsize(type); }
  void set(size_t i, uint64_t bits) {
    std::memcpy(bytes.data() + i * tsize(type), &bits, tsize(type));
  }
  uint64_t get(size_t i) const { return raw_bits(type, bytes.data(), i); }
  Val val(size_t i) const { return read_val(type, bytes.data(), i); }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  // A row-major view of shape over the whole buffer (which may hold more or fewer elements).
  View view(const Shape& shape) const {
    View v = contiguous(bytes.data(), type, shape);
    v.count = count();
    return v;
  }
  View view_strided(int64_t offset, const std::vector<int64_t>& strides) const {
    View v;
    v.data = bytes.data();
    v.count = count();
    v.type = type;
    v.offset = offset;
    v.strides = strides;
    return v;
  }
};

inline Buf make_buf(Type t, const std::vector<uint64_t>& bits) {
  Buf b(t, bits.size());
  for (size_t i = 0; i < bits.size(); ++i) b.set(i, bits[i]);
  return b;
}

// Raw bit patterns worth testing for type t: zeros, +-1, halves, limits, subnormals, Inf, NaN
// (with payloads and sign), and a few random ones.
inline std::vector<uint64_t> interesting_bits(Type t, uint32_t seed = 1, size_t randoms = 6) {
  std::vector<uint64_t> out;
  std::mt19937_64 rng(seed);
  auto from_double = [&](double d) { out.push_back(ref_bits(t, vf(d))); };
  if (tfloat(t)) {
    for (double d :
         {0.0,   -0.0, 1.0,  -1.0,    0.5,    -0.5,  1.5,    2.5,    -2.5, 3.0,    -7.25, 0.1,
          100.0, -1e3, 1e-3, 65504.0, 3.0e38, 1e300, -1e300, 1e-300, 0.75, -0.999, 2.0})
      from_double(d);
    from_double(std::numeric_limits<double>::infinity());
    from_double(-std::numeric_limits<double>::infinity());
    switch (t) {
      case Type::F16:
        for (uint64_t b : {0x0001ull, 0x8001ull, 0x03FFull, 0x0400ull, 0x7BFFull, 0xFBFFull,
                           0x7E01ull, 0xFE00ull, 0x7C01ull})
          out.push_back(b);
        for (size_t k = 0; k < randoms; ++k) out.push_back(rng() & 0xFFFF);
        break;
      case Type::BF16:
        for (uint64_t b : {0x0001ull, 0x8001ull, 0x007Full, 0x7F7Full, 0xFF7Full, 0x7FC1ull,
                           0xFFC0ull, 0x7F81ull})
          out.push_back(b);
        for (size_t k = 0; k < randoms; ++k) out.push_back(rng() & 0xFFFF);
        break;
      case Type::F32:
        for (uint64_t b : {0x00000001ull, 0x80000001ull, 0x007FFFFFull, 0x7F7FFFFFull,
                           0xFF7FFFFFull, 0x7FA00001ull, 0xFFC00000ull, 0x7F800001ull,
                           0x33800000ull /* 2^-24 */, 0x33000001ull})
          out.push_back(b);
        for (size_t k = 0; k < randoms; ++k) out.push_back(rng() & 0xFFFFFFFF);
        break;
      default:
        for (uint64_t b : {0x1ull, 0x8000000000000001ull, 0x7FEFFFFFFFFFFFFFull,
                           0x7FF0000000000001ull, 0xFFF8000000000000ull, 0x7FF4000000000000ull})
          out.push_back(b);
        for (size_t k = 0; k < randoms; ++k) out.push_back(rng());
        break;
    }
  } else {
    const int bits = tbits(t);
    const uint64_t mask = bits == 64 ? ~uint64_t{0} : ((uint64_t{1} << bits) - 1);
    const uint64_t smax = mask >> 1;
    for (int64_t v : {0, 1, -1, 2, -2, 3, 7, -7, 100, -100, 127, -128})
      out.push_back(static_cast<uint64_t>(v) & mask);
    out.push_back(smax);
    out.push_back((smax + 1) & mask);
    out.push_back(mask);
    out.push_back(smax - 1);
    for (size_t k = 0; k < randoms; ++k) out.push_back(rng() & mask);
  }
  return out;
}

inline std::string bits_str(uint64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "0x%llx", static_cast<unsigned long long>(b));
  return s;
}

inline std::string val_str(const Val& v) {
  if (v.is_int) {
    const bool neg = v.i < 0;
    unsigned __int128 m = neg ? -static_cast<unsigned __int128>(v.i) : v.i;
    std::string s;
    do {
      s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(m % 10)));
      m /= 10;
    } while (m != 0);
    return neg ? "-" + s : s;
  }
  char s[64];
  std::snprintf(s, sizeof s, "%.17g", v.f);
  return s;
}

}  // namespace nxq_test
