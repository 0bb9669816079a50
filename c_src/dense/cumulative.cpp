// Nx.cumulative_sum / _product / _max / _min with BinaryBackend's results.
//
// BinaryBackend has no cumulative callback: Nx runs its default composition (Nx.block with
// Nx.associative_scan), the work-efficient scan of do_associative_scan/3 in nx.ex, each step an
// element-wise Nx.add / multiply / max / min of two tensors of the input's type, so every
// combination is rounded to that type (not accumulated in double). For one line x[0..n) along
// the axis (reversed first for :reverse):
//   n < 2:  r = x
//   p[j] = f(x[2j+1], x[2j]) for j < n/2 (odd first), s = scan(p)
//   n even: r[0] = x[0], r[2j] = f(s[j-1], x[2j]) (j >= 1), r[2j+1] = s[j]
//   n odd:  r[0] = x[0], r[2j+1] = s[j], r[2j+2] = f(s[j], x[2j+2])
// r[0] is the input element itself (slices and concatenations copy bits: a NaN keeps its
// payload); every other element is a computed value (canonical NaN). Integer sums and products
// wrap, so any order gives the same bits and they are sequential here; max / min on floats
// follow the tree too (Kernel.max(a, b) keeps a on ties, which matters for -0.0 / 0.0).
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "element.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "parallel.h"
#include "view.h"

namespace nx_quant::dense {

namespace {

// BinaryBackend's element_max / element_min on two doubles (NaN first, then Kernel.max/min,
// which return the first argument unless the second is strictly beyond it).
inline double element_max(double a, double b) {
  if (a != a || b != b) return a != a ? a : b;
  return a < b ? b : a;
}
inline double element_min(double a, double b) {
  if (a != a || b != b) return a != a ? a : b;
  return a > b ? b : a;
}

template <Type T>
inline double round_to(double v) {
  if constexpr (T == Type::F64) {
    return v;
  } else if constexpr (T == Type::F32) {
    return static_cast<double>(static_cast<float>(v));
  } else {
    detail::storage_t<T> bits;
    detail::store_double<T>(&bits, 0, v);
    return detail::load_double<T>(&bits, 0);
  }
}

template <Type T, CumulativeOp Op>
inline double combine(double a, double b) {
  if constexpr (Op == CumulativeOp::Sum)
    return round_to<T>(a + b);
  else if constexpr (Op == CumulativeOp::Product)
    return round_to<T>(a * b);
  else if constexpr (Op == CumulativeOp::Max)
    return element_max(a, b);
  else
    return element_min(a, b);
}

// r = scan(x) over n elements; scratch holds at least n more doubles.
template <Type T, CumulativeOp Op>
void scan(const double* x, int64_t n, double* r, double* scratch) {
  if (n < 2) {
    if (n == 1) r[0] = x[0];
    return;
  }
  const int64_t m = n / 2;
  double* pairs = scratch;
  double* scanned = scratch + m;
  for (int64_t j = 0; j < m; ++j) pairs[j] = combine<T, Op>(x[2 * j + 1], x[2 * j]);
  scan<T, Op>(pairs, m, scanned, scratch + 2 * m);
  r[0] = x[0];
  if (n % 2 == 0) {
    for (int64_t j = 0; j < m; ++j) {
      if (j > 0) r[2 * j] = combine<T, Op>(scanned[j - 1], x[2 * j]);
      r[2 * j + 1] = scanned[j];
    }
  } else {
    for (int64_t j = 0; j < m; ++j) {
      r[2 * j + 1] = scanned[j];
      r[2 * j + 2] = combine<T, Op>(scanned[j], x[2 * j + 2]);
    }
  }
}

struct Lines {
  int64_t n = 0, inner = 1, outer = 1;
  std::vector<int64_t> outer_dims, outer_strides, inner_dims, inner_strides;
  int64_t axis_stride = 0, offset = 0;

  // The input offset of line `line` (outer-major, then inner).
  int64_t base(int64_t line) const {
    int64_t off = offset;
    int64_t i = line % inner, o = line / inner;
    for (size_t a = inner_dims.size(); a-- > 0;) {
      off += i % inner_dims[a] * inner_strides[a];
      i /= inner_dims[a];
    }
    for (size_t a = outer_dims.size(); a-- > 0;) {
      off += o % outer_dims[a] * outer_strides[a];
      o /= outer_dims[a];
    }
    return off;
  }
};

template <Type T, Type O, CumulativeOp Op>
void run(const Lines& L, const View& in, bool reverse, void* out, int threads) {
  using S = detail::storage_t<T>;
  const S* src = static_cast<const S*>(in.data);
  const int64_t n = L.n;
  const size_t lines = static_cast<size_t>(L.outer * L.inner);
  const double work = static_cast<double>(lines) * n;
  nx_quant::detail::parallel_for(
      lines, 1, work < 65536.0 ? 1 : threads, [&](size_t begin, size_t end) {
        std::vector<S> raw(n), res(n);
        std::vector<double> x, r, scratch;
        if constexpr (detail::is_float_type(T)) {
          x.resize(n);
          r.resize(n);
          scratch.resize(2 * n + 2);
        }
        for (size_t line = begin; line < end; ++line) {
          const int64_t base = L.base(static_cast<int64_t>(line));
          for (int64_t t = 0; t < n; ++t)
            raw[t] = src[base + (reverse ? n - 1 - t : t) * L.axis_stride];
          if constexpr (detail::is_float_type(T)) {
            for (int64_t t = 0; t < n; ++t) x[t] = detail::load_double<T>(raw.data(), t);
            scan<T, Op>(x.data(), n, r.data(), scratch.data());
            for (int64_t t = 1; t < n; ++t) detail::store_double<T>(res.data(), t, r[t]);
          } else {
            uint64_t acc = 0;
            for (int64_t t = 0; t < n; ++t) {
              const uint64_t v = static_cast<uint64_t>(static_cast<int64_t>(raw[t]));
              if (t == 0) {
                acc = v;
              } else if constexpr (Op == CumulativeOp::Sum) {
                acc += v;
              } else if constexpr (Op == CumulativeOp::Product) {
                acc *= v;
              } else {
                const S a = static_cast<S>(acc), b = raw[t];
                acc = static_cast<uint64_t>(static_cast<int64_t>(
                    Op == CumulativeOp::Max ? (a < b ? b : a) : (a > b ? b : a)));
              }
              res[t] = static_cast<S>(acc);
            }
          }
          if (n > 0) res[0] = raw[0];
          // Output: contiguous row-major, the line at (o * n + t) * inner + i.
          const int64_t o = static_cast<int64_t>(line) / L.inner,
                        i = static_cast<int64_t>(line) % L.inner;
          for (int64_t t = 0; t < n; ++t) {
            const int64_t at = (o * n + (reverse ? n - 1 - t : t)) * L.inner + i;
            if constexpr (T == O) {
              static_cast<S*>(out)[at] = res[t];
            } else if constexpr (detail::is_float_type(T)) {
              detail::store_double<O>(out, at, detail::load_double<T>(res.data(), t));
            } else {
              detail::store_int<O>(out, at, detail::load_int<T>(res.data(), t),
                                   detail::is_unsigned_type(T));
            }
          }
        }
      });
}

template <Type T, Type O>
void dispatch_op(CumulativeOp op, const Lines& L, const View& in, bool reverse, void* out,
                 int threads) {
  switch (op) {
    case CumulativeOp::Sum:
      return run<T, O, CumulativeOp::Sum>(L, in, reverse, out, threads);
    case CumulativeOp::Product:
      return run<T, O, CumulativeOp::Product>(L, in, reverse, out, threads);
    case CumulativeOp::Max:
      return run<T, O, CumulativeOp::Max>(L, in, reverse, out, threads);
    case CumulativeOp::Min:
      return run<T, O, CumulativeOp::Min>(L, in, reverse, out, threads);
  }
}

}  // namespace

void cumulative(CumulativeOp op, const Shape& shape, const View& in, int axis, bool reverse,
                Type out_type, void* out, int threads) {
  if (op != CumulativeOp::Sum && op != CumulativeOp::Product && op != CumulativeOp::Max &&
      op != CumulativeOp::Min)
    throw InvalidArgument("cumulative: unknown operation");
  if (threads < 0) throw InvalidArgument("cumulative: threads must be >= 0");
  detail::check_shape(shape, "cumulative: input");
  detail::check_view(in, shape, "cumulative: input");
  type_size(in.type);
  type_size(out_type);
  const int rank = static_cast<int>(shape.size());
  if (axis < 0 || axis >= rank)
    throw InvalidArgument("cumulative: axis " + std::to_string(axis) + " out of range for rank " +
                          std::to_string(rank));
  const size_t count = element_count(shape);
  if (count == 0) return;
  if (out == nullptr) throw InvalidArgument("cumulative: no output buffer");
  Lines L;
  L.n = shape[axis];
  L.axis_stride = in.strides[axis];
  L.offset = in.offset;
  for (int a = 0; a < rank; ++a) {
    if (a == axis) continue;
    auto& dims = a < axis ? L.outer_dims : L.inner_dims;
    auto& strides = a < axis ? L.outer_strides : L.inner_strides;
    dims.push_back(shape[a]);
    strides.push_back(in.strides[a]);
    (a < axis ? L.outer : L.inner) *= shape[a];
  }
  detail::with_type(in.type, [&](auto t) {
    detail::with_type(out_type, [&](auto o) {
      dispatch_op<decltype(t)::value, decltype(o)::value>(op, L, in, reverse, out, threads);
    });
  });
}

}  // namespace nx_quant::dense
