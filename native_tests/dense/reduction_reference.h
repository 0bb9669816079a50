// Test helpers for the dense reduce / cumulative / sort / gather / matmul tests: typed tensors
// with special values, strided views of them, and BinaryBackend's read/write rules written
// independently of c_src/dense/element.h (the reference must not share the kernels' code).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "nx_quant/dense_ops.h"
#include "nx_quant/dtype.h"

namespace nx_quant::dense::testref {

inline constexpr Type kAllTypes[] = {Type::U8,  Type::U16,  Type::U32, Type::U64,
                                     Type::S8,  Type::S16,  Type::S32, Type::S64,
                                     Type::F16, Type::BF16, Type::F32, Type::F64};
inline constexpr Type kFloatTypes[] = {Type::F16, Type::BF16, Type::F32, Type::F64};

inline bool is_float_t(Type t) {
  return t == Type::F16 || t == Type::BF16 || t == Type::F32 || t == Type::F64;
}
inline bool is_unsigned_t(Type t) {
  return t == Type::U8 || t == Type::U16 || t == Type::U32 || t == Type::U64;
}
inline size_t size_of(Type t) {
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

template <typename T>
inline T raw(const void* data, size_t i) {
  T v;
  std::memcpy(&v, static_cast<const uint8_t*>(data) + i * sizeof(T), sizeof(T));
  return v;
}
template <typename T>
inline void put_raw(void* data, size_t i, T v) {
  std::memcpy(static_cast<uint8_t*>(data) + i * sizeof(T), &v, sizeof(T));
}

inline double f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0x1F) return m ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (e == 0) return sign * std::ldexp(m, -24);
  return sign * std::ldexp(1024 + m, e - 25);
}

inline double bf16_value(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Element i of a buffer as BinaryBackend reads it: an exact double (floats).
inline double read_double(const void* data, Type t, size_t i) {
  switch (t) {
    case Type::U8:
      return raw<uint8_t>(data, i);
    case Type::U16:
      return raw<uint16_t>(data, i);
    case Type::U32:
      return raw<uint32_t>(data, i);
    case Type::U64:
      return static_cast<double>(raw<uint64_t>(data, i));
    case Type::S8:
      return raw<int8_t>(data, i);
    case Type::S16:
      return raw<int16_t>(data, i);
    case Type::S32:
      return raw<int32_t>(data, i);
    case Type::S64:
      return static_cast<double>(raw<int64_t>(data, i));
    case Type::F16:
      return f16_value(raw<uint16_t>(data, i));
    case Type::BF16:
      return bf16_value(raw<uint16_t>(data, i));
    case Type::F32:
      return raw<float>(data, i);
    case Type::F64:
      return raw<double>(data, i);
  }
  return 0;
}

// Element i of an integer buffer as 64 bits (u64 as its bit pattern).
inline int64_t read_int(const void* data, Type t, size_t i) {
  switch (t) {
    case Type::U8:
      return raw<uint8_t>(data, i);
    case Type::U16:
      return raw<uint16_t>(data, i);
    case Type::U32:
      return raw<uint32_t>(data, i);
    case Type::U64:
      return static_cast<int64_t>(raw<uint64_t>(data, i));
    case Type::S8:
      return raw<int8_t>(data, i);
    case Type::S16:
      return raw<int16_t>(data, i);
    case Type::S32:
      return raw<int32_t>(data, i);
    case Type::S64:
      return raw<int64_t>(data, i);
    default:
      return static_cast<int64_t>(read_double(data, t, i));
  }
}

// Round to nearest even to f16 (the value, as a double), overflow to Inf.
inline double round_f16(double d) {
  if (std::isnan(d) || std::isinf(d) || d == 0) return d;
  if (std::fabs(d) >= 65520.0) return std::copysign(INFINITY, d);
  int e;
  std::frexp(std::fabs(d), &e);                       // |d| in [2^(e-1), 2^e)
  const int quantum_exp = std::max(e - 1 - 10, -24);  // 11 significant bits, subnormals 2^-24
  const double q = std::nearbyint(std::ldexp(d, -quantum_exp));  // RNE (default mode)
  return std::copysign(std::ldexp(q, quantum_exp), d);
}

// Writes a double to a float type with BinaryBackend's rules.
inline void write_double(void* data, Type t, size_t i, double v) {
  switch (t) {
    case Type::F64:
      if (std::isnan(v))
        put_raw<uint64_t>(data, i, 0x7FF8000000000000ull);
      else
        put_raw<double>(data, i, v);
      return;
    case Type::F32:
      if (std::isnan(v))
        put_raw<uint32_t>(data, i, 0x7FC00000u);
      else
        put_raw<float>(data, i, static_cast<float>(v));
      return;
    case Type::F16:
      if (std::isnan(v))
        put_raw<uint16_t>(data, i, 0x7E00);
      else
        put_raw<uint16_t>(data, i, nx_quant::f32_to_f16_bits(static_cast<float>(round_f16(v))));
      return;
    case Type::BF16: {
      if (std::isnan(v)) {
        put_raw<uint16_t>(data, i, 0x7FC0);
        return;
      }
      const float f = static_cast<float>(v);  // RNE to f32, then the top 16 bits
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      put_raw<uint16_t>(data, i, static_cast<uint16_t>(bits >> 16));
      return;
    }
    default: {  // float -> integer: trunc, NaN -> 0, +-Inf -> max / min (finite values in range)
      int64_t x = 0;
      if (!std::isnan(v) && !std::isinf(v)) x = static_cast<int64_t>(std::trunc(v));
      if (std::isinf(v)) {
        const int bits = static_cast<int>(size_of(t) * 8);
        if (is_unsigned_t(t))
          x = v > 0 ? static_cast<int64_t>(bits == 64 ? ~0ull : (1ull << bits) - 1) : 0;
        else
          x = v > 0 ? static_cast<int64_t>((1ull << (bits - 1)) - 1)
                    : static_cast<int64_t>(~0ull << (bits - 1));
      }
      const size_t s = size_of(t);
      const uint64_t u = static_cast<uint64_t>(x);
      std::memcpy(static_cast<uint8_t*>(data) + i * s, &u, s);  // little-endian low bytes
      return;
    }
  }
}

// Writes a 64-bit integer: low bits to an integer type, (u)int64 -> double -> float type.
inline void write_int(void* data, Type t, size_t i, int64_t v, bool is_unsigned) {
  if (is_float_t(t)) {
    write_double(
        data, t, i,
        is_unsigned ? static_cast<double>(static_cast<uint64_t>(v)) : static_cast<double>(v));
    return;
  }
  const size_t s = size_of(t);
  const uint64_t u = static_cast<uint64_t>(v);
  std::memcpy(static_cast<uint8_t*>(data) + i * s, &u, s);
}

// A buffer of `count` elements of `type`.
struct Buffer {
  Type type = Type::F32;
  std::vector<uint8_t> bytes;
  Buffer() = default;
  Buffer(Type t, size_t count) : type(t), bytes(count * size_of(t) + 1) {}  // +1: never null
  size_t count() const { return (bytes.size() - 1) / size_of(type); }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  double d(size_t i) const { return read_double(data(), type, i); }
  int64_t i64(size_t i) const { return read_int(data(), type, i); }
};

// Random values: `special` in [0,1] is the share of NaN / +-Inf / +-0 (floats only); `small`
// the share of small integers (ties); the rest normal values (floats) or any bits (integers).
inline Buffer random_buffer(Type t, size_t count, uint32_t seed, double special = 0.05,
                            double small = 0.3, double scale = 4.0) {
  Buffer b(t, count);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::normal_distribution<double> normal(0.0, scale);
  for (size_t i = 0; i < count; ++i) {
    const double p = u(rng);
    if (is_float_t(t)) {
      double v;
      if (p < special) {
        const double specials[] = {NAN, INFINITY, -INFINITY, 0.0, -0.0};
        v = specials[rng() % 5];
      } else if (p < special + small) {
        v = static_cast<double>(static_cast<int>(rng() % 7) - 3);
      } else {
        v = normal(rng);
      }
      write_double(b.data(), t, i, v);
      if (std::isnan(v) && t != Type::F64 && (rng() % 2)) {  // a NaN with another payload
        if (t == Type::F32) put_raw<uint32_t>(b.data(), i, 0xFFC00123u);
        if (t == Type::F16) put_raw<uint16_t>(b.data(), i, 0xFE01);
        if (t == Type::BF16) put_raw<uint16_t>(b.data(), i, 0xFF81);
      }
    } else {
      int64_t v;
      if (p < small)
        v = static_cast<int64_t>(rng() % 7) - (is_unsigned_t(t) ? 0 : 3);
      else
        v = static_cast<int64_t>(rng());
      write_int(b.data(), t, i, v, false);
    }
  }
  return b;
}

// A tensor of `shape` seen through a view: stored with its axes permuted (`perm[i]` = the
// logical axis of storage axis i), some axes reversed, and a gap (stride multiplier) on the
// innermost storage axis. logical(i) gives the storage element of row-major logical index i.
struct StridedTensor {
  Shape shape;
  Buffer storage;
  View view;

  size_t storage_index(size_t flat) const {
    int64_t off = view.offset;
    for (size_t axis = shape.size(); axis-- > 0;) {
      off += static_cast<int64_t>(flat % shape[axis]) * view.strides[axis];
      flat /= shape[axis];
    }
    return static_cast<size_t>(off);
  }
  double d(size_t flat) const { return storage.d(storage_index(flat)); }
  int64_t i64(size_t flat) const { return storage.i64(storage_index(flat)); }
};

// layout: 0 contiguous, 1 reversed axes order (transposed), 2 every other axis reversed plus a
// gap of 2 on the innermost storage axis, 3 broadcast (stride 0) of the first axis of size > 1.
inline StridedTensor make_tensor(Type t, const Shape& shape, uint32_t seed, int layout = 0,
                                 double special = 0.05, double small = 0.3) {
  StridedTensor s;
  s.shape = shape;
  const size_t rank = shape.size();
  std::vector<size_t> perm(rank);
  for (size_t i = 0; i < rank; ++i) perm[i] = layout == 1 ? rank - 1 - i : i;
  const int64_t gap = layout == 2 ? 2 : 1;
  std::vector<int64_t> strides(rank, 0);
  int64_t stride = gap;
  int broadcast_axis = -1;
  if (layout == 3)
    for (size_t i = 0; i < rank; ++i)
      if (shape[i] > 1) {
        broadcast_axis = static_cast<int>(i);
        break;
      }
  for (size_t i = rank; i-- > 0;) {
    const size_t axis = perm[i];
    if (static_cast<int>(axis) == broadcast_axis) continue;
    strides[axis] = stride;
    stride *= shape[axis];
  }
  size_t total = 1;
  for (int64_t d : shape) total *= static_cast<size_t>(d);
  const size_t storage_count = total == 0 ? 0 : static_cast<size_t>(stride);
  s.storage = random_buffer(t, storage_count, seed, special, small);
  s.view.data = s.storage.data();
  s.view.count = storage_count;
  s.view.type = t;
  s.view.offset = 0;
  s.view.strides = strides;
  if (layout == 2)
    for (size_t axis = 0; axis < rank; axis += 2)
      if (shape[axis] > 0) {
        s.view.offset += strides[axis] * (shape[axis] - 1);
        s.view.strides[axis] = -strides[axis];
      }
  return s;
}

inline std::string shape_str(const Shape& s) {
  std::string r = "{";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "}";
}

inline std::string hex_bytes(const void* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string r;
  for (size_t i = n; i-- > 0;) {
    const uint8_t b = static_cast<const uint8_t*>(p)[i];
    r += digits[b >> 4];
    r += digits[b & 15];
  }
  return r;
}

// Bitwise equality of two buffers of one type, reporting the first differing element.
inline ::testing::AssertionResult same_bits(const Buffer& expected, const Buffer& actual,
                                            size_t count) {
  const size_t s = size_of(expected.type);
  for (size_t i = 0; i < count; ++i) {
    if (std::memcmp(expected.bytes.data() + i * s, actual.bytes.data() + i * s, s) != 0)
      return ::testing::AssertionFailure()
             << "element " << i << ": expected 0x" << hex_bytes(expected.bytes.data() + i * s, s)
             << " (" << expected.d(i) << ") got 0x" << hex_bytes(actual.bytes.data() + i * s, s)
             << " (" << actual.d(i) << ")";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace nx_quant::dense::testref
