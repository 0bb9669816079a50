// Shared machinery of the element-wise kernels: loading a strided run of any element type into
// a small buffer of the compute type, storing a buffer into any output type with
// BinaryBackend's rounding, type conversion of runs (as_type), and the threading policy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "binary_ops.h"
#include "element.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "parallel.h"
#include "view.h"

namespace nx_quant::dense::detail {

// Elements per buffer: runs are processed in chunks of this many (L1-resident).
inline constexpr int64_t kChunk = 512;

inline void check_type(Type t, const char* what) {
  if (static_cast<unsigned>(t) > static_cast<unsigned>(Type::F64))
    throw InvalidArgument(std::string(what) + ": unknown element type " +
                          std::to_string(static_cast<unsigned>(t)));
}

// --- loads into a compute buffer --------------------------------------------------------------

// One element of a T buffer as the compute type C (float: f16/bf16/f32 only; double: any;
// int64_t / int128: integer types, exactly — int64_t holds u64 values as their bit pattern, so
// it is only used when no operand is u64).
template <Type T, class C>
inline C load_as(const storage_t<T>* p, int64_t i) {
  if constexpr (std::is_same_v<C, float>) {
    return load_float<T>(p, i);
  } else if constexpr (std::is_same_v<C, double>) {
    return load_double<T>(p, i);
  } else {
    return static_cast<C>(p[i]);
  }
}

template <class C>
using LoadRunFn = void (*)(const void* data, int64_t offset, int64_t stride, int64_t n, C* dst);

template <Type T, class C>
void load_run(const void* data, int64_t offset, int64_t stride, int64_t n, C* dst) {
  const auto* p = static_cast<const storage_t<T>*>(data) + offset;
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = load_as<T, C>(p, i);
  } else if (stride == 0) {
    const C v = load_as<T, C>(p, 0);
    for (int64_t i = 0; i < n; ++i) dst[i] = v;
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = load_as<T, C>(p, i * stride);
  }
}

template <class C>
LoadRunFn<C> loader_for(Type t) {
  return with_type(t, [](auto tc) -> LoadRunFn<C> {
    constexpr Type T = decltype(tc)::value;
    if constexpr (std::is_same_v<C, float> && !is_narrow_float(T)) {
      return nullptr;
    } else if constexpr (is_int_compute_v<C> && is_float_type(T)) {
      return nullptr;
    } else {
      return &load_run<T, C>;
    }
  });
}

// --- stores from a compute buffer -------------------------------------------------------------

// out[offset + i * stride] for i < n from src (float: store_float, double: store_double,
// int64_t / int128: an exact integer result, written as its low bits or converted to double).
template <class C>
using StoreRunFn = void (*)(void* out, int64_t offset, int64_t stride, int64_t n, const C* src);

template <Type T, class C>
inline void store_as(void* out, int64_t i, C v) {
  if constexpr (std::is_same_v<C, float>) {
    store_float<T>(out, i, v);
  } else if constexpr (std::is_same_v<C, double>) {
    store_double<T>(out, i, v);
  } else if constexpr (std::is_same_v<C, int64_t>) {
    store_int<T>(out, i, v, false);
  } else if constexpr (is_float_type(T)) {
    store_double<T>(out, i, static_cast<double>(v));
  } else {
    store_int<T>(out, i, static_cast<int64_t>(static_cast<uint64_t>(v)), false);
  }
}

template <Type T, class C>
void store_run(void* out, int64_t offset, int64_t stride, int64_t n, const C* src) {
  if (stride == 1) {
    void* base = static_cast<storage_t<T>*>(out) + offset;
    for (int64_t i = 0; i < n; ++i) store_as<T, C>(base, i, src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) store_as<T, C>(out, offset + i * stride, src[i]);
  }
}

template <class C>
StoreRunFn<C> storer_for(Type t) {
  return with_type(t, [](auto tc) -> StoreRunFn<C> {
    constexpr Type T = decltype(tc)::value;
    return &store_run<T, C>;
  });
}

// --- conversion of runs (as_type) -------------------------------------------------------------

// dst[dst_offset + i * dst_stride] = src[src_offset + i * src_stride] converted from TI to TO
// with as_type's rules. Same type: the bits are copied (BinaryBackend's as_type returns the
// tensor itself, and transpose/slice/... copy bits), unless `canonical` asks for the
// read-then-write of select/clip (NaN written as the canonical NaN).
using ConvertRunFn = void (*)(const void* src, int64_t src_offset, int64_t src_stride, void* dst,
                              int64_t dst_offset, int64_t dst_stride, int64_t n);

template <Type TI, Type TO, bool kCanonical>
inline void convert_one(const storage_t<TI>* s, storage_t<TO>* d) {
  if constexpr (TI == TO && (!kCanonical || !is_float_type(TI))) {
    *d = *s;
  } else if constexpr (is_narrow_float(TI) && is_float_type(TO)) {
    store_float<TO>(d, 0, load_float<TI>(s, 0));
  } else if constexpr (is_float_type(TI)) {
    store_double<TO>(d, 0, load_double<TI>(s, 0));
  } else {
    store_int<TO>(d, 0, load_int<TI>(s, 0), is_unsigned_type(TI));
  }
}

template <Type TI, Type TO, bool kCanonical>
void convert_run(const void* src, int64_t src_offset, int64_t src_stride, void* dst,
                 int64_t dst_offset, int64_t dst_stride, int64_t n) {
  const auto* s = static_cast<const storage_t<TI>*>(src) + src_offset;
  auto* d = static_cast<storage_t<TO>*>(dst) + dst_offset;
  if (src_stride == 1 && dst_stride == 1) {
    if constexpr (TI == TO && (!kCanonical || !is_float_type(TI))) {
      std::memcpy(d, s, static_cast<size_t>(n) * sizeof(*s));
    } else {
      for (int64_t i = 0; i < n; ++i) convert_one<TI, TO, kCanonical>(s + i, d + i);
    }
  } else if (src_stride == 0 && dst_stride == 1) {
    storage_t<TO> v;
    convert_one<TI, TO, kCanonical>(s, &v);
    for (int64_t i = 0; i < n; ++i) d[i] = v;
  } else if (dst_stride == 1) {
    for (int64_t i = 0; i < n; ++i) convert_one<TI, TO, kCanonical>(s + i * src_stride, d + i);
  } else {
    for (int64_t i = 0; i < n; ++i)
      convert_one<TI, TO, kCanonical>(s + i * src_stride, d + i * dst_stride);
  }
}

template <bool kCanonical>
ConvertRunFn converter_for(Type in, Type out) {
  return with_type(in, [out](auto ti) {
    return with_type(out, [](auto to) -> ConvertRunFn {
      return &convert_run<decltype(ti)::value, decltype(to)::value, kCanonical>;
    });
  });
}

// --- threading --------------------------------------------------------------------------------

// Relative cost of one element (1 = a load, an add and a store).
inline constexpr size_t kCheapCost = 1;
inline constexpr size_t kTranscendentalCost = 16;
// Below this much work (count * cost) a call runs on the calling thread.
inline constexpr size_t kParallelWork = size_t{64} * 1024;

// Calls body(begin, end) over [0, count), split over threads when the work is large. Pieces
// start on multiples of a grain, but element-wise results never depend on the split.
template <typename Body>
void run_split(size_t count, size_t cost, int threads, Body&& body) {
  if (count == 0) return;
  if (threads == 1 || count * cost < kParallelWork || nx_quant::detail::default_threads() <= 1 ||
      threads < 0) {
    body(size_t{0}, count);
    return;
  }
  const size_t grain = std::max<size_t>(256, kParallelWork / 4 / cost);
  nx_quant::detail::parallel_for(count, grain, threads,
                                 [&](size_t begin, size_t end) { body(begin, end); });
}

// Strides of a row-major contiguous tensor of `shape`.
inline std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t axis = shape.size(); axis-- > 0;) {
    strides[axis] = stride;
    stride *= shape[axis];
  }
  return strides;
}

// Validates an output pointer for `count` elements.
inline void check_out(const void* out, size_t count, const char* what) {
  if (count > 0 && out == nullptr) throw InvalidArgument(std::string(what) + ": no output buffer");
}

}  // namespace nx_quant::dense::detail
