// Shared machinery of the element-wise kernels: loading a strided run of any element type into
// a small buffer of the compute type, storing a buffer into any output type with
// BinaryBackend's rounding, type conversion of runs (as_type), and the threading policy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "binary_ops.h"
#include "element.h"
#include "elementwise_simd.h"
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
  if constexpr (T == Type::F16 && std::is_same_v<C, float>) {
    if (stride == 1)
      if (const SimdConvertRun f = simd_f16_to_f32()) return f(p, dst, n);
  }
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
    if constexpr (T == Type::F16 && std::is_same_v<C, float>) {
      if (const SimdConvertRun f = simd_f32_to_f16()) return f(src, base, n);
    }
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
    if constexpr (TI == Type::F16 && TO == Type::F32) {
      if (const SimdConvertRun f = simd_f16_to_f32()) return f(s, d, n);
    } else if constexpr (TI == Type::F32 && TO == Type::F16) {
      if (const SimdConvertRun f = simd_f32_to_f16()) return f(s, d, n);
    }
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

// Relative cost of one element (1 = a load, an add and a store: ~0.2-0.5 ns; a libm call in
// double is ~10-40 times that).
inline constexpr size_t kCheapCost = 1;
inline constexpr size_t kTranscendentalCost = 16;
// Below this much work (count * cost, ~100 us on one thread) a call runs on the calling thread:
// waking the pool's workers costs tens of microseconds (more on a loaded or virtual machine),
// and decode-sized tensors ({1, 2048}..{1, 32, 2048}) are far below it.
inline constexpr size_t kParallelWork = size_t{256} * 1024;

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

// Whether `v` over `shape` is a plain row-major buffer (stride 1 from its offset) or one
// broadcast element (stride 0), ignoring axes of size 1; `stride` says which.
inline bool flat_strides(const std::vector<int64_t>& strides, const Shape& shape, int64_t& stride) {
  bool contiguous = true, broadcast = true;
  int64_t expected = 1;
  for (size_t axis = shape.size(); axis-- > 0;) {
    if (shape[axis] == 1) continue;
    contiguous = contiguous && strides[axis] == expected;
    broadcast = broadcast && strides[axis] == 0;
    expected *= shape[axis];
  }
  stride = contiguous ? 1 : 0;
  return contiguous || broadcast;
}
inline bool flat_view(const View& v, const Shape& shape, int64_t& stride) {
  return flat_strides(v.strides, shape, stride);
}

// The runs of N operands (the last one the contiguous output) over a shape: one flat run when
// every input is a plain buffer or a broadcast element (no allocation), else a StridedWalk.
template <size_t N>
struct Runs {
  std::optional<StridedWalk<N>> walk;
  size_t count = 0;
  std::array<int64_t, N> offsets{}, strides{};

  Runs(const Shape& shape, const std::array<const View*, N - 1>& inputs) {
    count = element_count(shape);
    bool flat = true;
    for (size_t k = 0; k + 1 < N && flat; ++k) {
      offsets[k] = inputs[k]->offset;
      flat = flat_view(*inputs[k], shape, strides[k]);
    }
    offsets[N - 1] = 0;
    strides[N - 1] = 1;
    if (flat) return;
    std::vector<int64_t> out_strides(shape.size());
    int64_t stride = 1;
    for (size_t axis = shape.size(); axis-- > 0;) {
      out_strides[axis] = stride;
      stride *= shape[axis];
    }
    std::array<const std::vector<int64_t>*, N> all;
    std::array<int64_t, N> base;
    for (size_t k = 0; k + 1 < N; ++k) {
      all[k] = &inputs[k]->strides;
      base[k] = inputs[k]->offset;
    }
    all[N - 1] = &out_strides;
    base[N - 1] = 0;
    walk.emplace(shape, all, base);
  }

  // As StridedWalk::for_each_run.
  template <typename Fn>
  void for_each_run(size_t begin, size_t end, Fn&& fn) const {
    if (walk) return walk->for_each_run(begin, end, fn);
    if (begin >= end) return;
    std::array<int64_t, N> off;
    for (size_t k = 0; k < N; ++k) off[k] = offsets[k] + static_cast<int64_t>(begin) * strides[k];
    fn(off, static_cast<int64_t>(end - begin), strides, begin);
  }
};

// Validates an output pointer for `count` elements.
inline void check_out(const void* out, size_t count, const char* what) {
  if (count > 0 && out == nullptr) throw InvalidArgument(std::string(what) + ": no output buffer");
}

}  // namespace nx_quant::dense::detail
