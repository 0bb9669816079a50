// Nx.sort / Nx.argsort / Nx.top_k with BinaryBackend's results.
//
// BinaryBackend's do_sort sorts each line along the axis with Enum.sort/2 (a stable merge sort)
// and a comparator that is true for equal elements: ascending puts -Inf first and NaN last
// (after +Inf), descending puts NaN first, then +Inf, ..., -Inf last; -0.0 and 0.0 are equal,
// all NaNs are equal; equal elements keep their input order in both directions (descending is
// not the reverse of ascending). Sorted values are the input elements' bits (a NaN keeps its
// payload). Nx.top_k has no BinaryBackend callback: Nx's default is argsort(direction: :desc)
// + take_along_axis + the first k, i.e. the k first elements of that stable descending order.
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

template <Type T>
using Key = std::conditional_t<detail::is_float_type(T), double,
                               std::conditional_t<detail::is_unsigned_type(T), uint64_t, int64_t>>;

template <Type T>
struct Entry {
  Key<T> key;
  int64_t index;
};

// Strict "comes before" of Nx's order for one direction (NaN greatest).
template <Type T, bool kDesc>
inline bool before(const Key<T>& a, const Key<T>& b) {
  if constexpr (detail::is_float_type(T)) {
    if constexpr (kDesc) {
      if (b != b) return false;
      if (a != a) return true;
      return a > b;
    } else {
      if (a != a) return false;
      if (b != b) return true;
      return a < b;
    }
  } else {
    return kDesc ? a > b : a < b;
  }
}

template <Type T>
inline Key<T> key_of(const void* data, int64_t i) {
  if constexpr (detail::is_float_type(T))
    return detail::load_double<T>(data, i);
  else
    return static_cast<Key<T>>(detail::load_int<T>(data, i));
}

// The lines along `axis`: outer axes, the axis, inner axes; the output is contiguous row-major
// with the axis' length `out_n` (n for sort, k for top_k).
struct Lines {
  int64_t n = 0, inner = 1, outer = 1, axis_stride = 0, offset = 0;
  std::vector<int64_t> outer_dims, outer_strides, inner_dims, inner_strides;

  Lines(const Shape& shape, const View& in, int axis) {
    const int rank = static_cast<int>(shape.size());
    offset = in.offset;
    if (rank == 0) {
      n = 1;
      return;
    }
    n = shape[axis];
    axis_stride = in.strides[axis];
    for (int a = 0; a < rank; ++a) {
      if (a == axis) continue;
      (a < axis ? outer_dims : inner_dims).push_back(shape[a]);
      (a < axis ? outer_strides : inner_strides).push_back(in.strides[a]);
      (a < axis ? outer : inner) *= shape[a];
    }
  }

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

using StoreIndexFn = void (*)(void*, int64_t, int64_t);

template <Type I>
void store_index(void* out, int64_t at, int64_t index) {
  detail::store_int<I>(out, at, index);
}

// Sorts every line (top_k: keeps the first k of the descending order) and writes the values
// (input bits) and/or indices.
template <Type T, bool kDesc>
void sort_lines(const Lines& L, const View& in, int64_t k, bool partial, void* values_out,
                StoreIndexFn store_idx, void* indices_out, int threads) {
  using S = detail::storage_t<T>;
  const S* src = static_cast<const S*>(in.data);
  const int64_t n = L.n;
  const size_t lines = static_cast<size_t>(L.outer * L.inner);
  const double work = static_cast<double>(lines) * n;
  nx_quant::detail::parallel_for(
      lines, 1, work < 32768.0 ? 1 : threads, [&](size_t begin, size_t end) {
        std::vector<Entry<T>> entries(n);
        const auto cmp = [](const Entry<T>& a, const Entry<T>& b) {
          return before<T, kDesc>(a.key, b.key);
        };
        // The stable order as a total order: ties by index (for partial_sort, which is unstable).
        const auto cmp_total = [](const Entry<T>& a, const Entry<T>& b) {
          if (before<T, kDesc>(a.key, b.key)) return true;
          if (before<T, kDesc>(b.key, a.key)) return false;
          return a.index < b.index;
        };
        for (size_t line = begin; line < end; ++line) {
          const int64_t base = L.base(static_cast<int64_t>(line));
          for (int64_t t = 0; t < n; ++t)
            entries[t] = {key_of<T>(src, base + t * L.axis_stride), t};
          if (partial && k < n / 2)
            std::partial_sort(entries.begin(), entries.begin() + k, entries.end(), cmp_total);
          else
            std::stable_sort(entries.begin(), entries.end(), cmp);
          const int64_t o = static_cast<int64_t>(line) / L.inner,
                        i = static_cast<int64_t>(line) % L.inner;
          for (int64_t t = 0; t < k; ++t) {
            const int64_t at = (o * k + t) * L.inner + i;
            if (values_out)
              static_cast<S*>(values_out)[at] = src[base + entries[t].index * L.axis_stride];
            if (indices_out) store_idx(indices_out, at, entries[t].index);
          }
        }
      });
}

void run(const Shape& shape, const View& in, int axis, bool descending, int64_t k, bool partial,
         void* values_out, Type index_type, void* indices_out, int threads) {
  const Lines L(shape, in, axis);
  const StoreIndexFn store_idx = detail::with_type(
      index_type, [](auto t) -> StoreIndexFn { return &store_index<decltype(t)::value>; });
  detail::with_type(in.type, [&](auto t) {
    constexpr Type T = decltype(t)::value;
    if (descending)
      sort_lines<T, true>(L, in, k, partial, values_out, store_idx, indices_out, threads);
    else
      sort_lines<T, false>(L, in, k, partial, values_out, store_idx, indices_out, threads);
  });
}

}  // namespace

void sort(const Shape& shape, const View& in, int axis, bool descending, void* values_out,
          Type index_type, void* indices_out, int threads) {
  if (threads < 0) throw InvalidArgument("sort: threads must be >= 0");
  detail::check_shape(shape, "sort: input");
  detail::check_view(in, shape, "sort: input");
  type_size(in.type);
  type_size(index_type);
  const int rank = static_cast<int>(shape.size());
  if (rank == 0 ? axis != 0 : (axis < 0 || axis >= rank))
    throw InvalidArgument("sort: axis " + std::to_string(axis) + " out of range for rank " +
                          std::to_string(rank));
  if (element_count(shape) == 0) return;
  if (values_out == nullptr && indices_out == nullptr) return;
  const int64_t n = rank == 0 ? 1 : shape[axis];
  run(shape, in, axis, descending, n, false, values_out, index_type, indices_out, threads);
}

void top_k(const Shape& shape, const View& in, int64_t k, void* values_out, Type index_type,
           void* indices_out, int threads) {
  if (threads < 0) throw InvalidArgument("top_k: threads must be >= 0");
  detail::check_shape(shape, "top_k: input");
  detail::check_view(in, shape, "top_k: input");
  type_size(in.type);
  type_size(index_type);
  if (shape.empty()) throw InvalidArgument("top_k: the input must have at least rank 1");
  const int axis = static_cast<int>(shape.size()) - 1;
  if (k < 1)
    throw InvalidArgument("top_k: k must be an integer greater than or equal to 1, got k=" +
                          std::to_string(k));
  if (shape[axis] < k)
    throw InvalidArgument(
        "top_k: the last axis size must be greater than or equal to k, got size=" +
        std::to_string(shape[axis]) + " and k=" + std::to_string(k));
  if (element_count(shape) == 0) return;
  if (values_out == nullptr && indices_out == nullptr) return;
  run(shape, in, axis, true, k, true, values_out, index_type, indices_out, threads);
}

}  // namespace nx_quant::dense
