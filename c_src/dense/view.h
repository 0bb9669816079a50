// Validation of strided views and a row-major walk over several of them at once.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "nx_quant/dense_ops.h"

namespace nx_quant::dense::detail {

// Throws InvalidArgument unless `shape` is a valid shape (rank <= kMaxRank, no negative
// dimension, element count without overflow). `what` names it in the message.
void check_shape(const Shape& shape, const char* what);

inline constexpr size_t kMaxRank = 32;

// Throws InvalidArgument unless every element `view` reaches over `shape` lies inside its
// buffer (data non-null when anything is reached, strides.size() == shape.size()).
void check_view(const View& view, const Shape& shape, const char* what);

// Throws unless out_offset/out_strides over `shape` stay inside [0, out_count).
void check_window(const Shape& shape, size_t out_count, int64_t out_offset,
                  const std::vector<int64_t>& out_strides, const char* what);

// N strided operands over one iteration shape, with axes of size 1 dropped and neighbouring
// axes merged wherever every operand allows it (so a contiguous tensor is one run).
template <size_t N>
struct StridedWalk {
  std::vector<int64_t> shape;                   // collapsed; empty = one element
  std::array<std::vector<int64_t>, N> strides;  // per operand, per collapsed axis
  std::array<int64_t, N> offsets{};             // base offset of each operand
  size_t count = 1;                             // elements in the iteration

  StridedWalk(const Shape& full_shape, const std::array<const std::vector<int64_t>*, N>& s,
              const std::array<int64_t, N>& base) {
    offsets = base;
    for (int64_t d : full_shape) count *= static_cast<size_t>(d);
    for (size_t axis = 0; axis < full_shape.size(); ++axis) {
      const int64_t dim = full_shape[axis];
      if (dim == 1) continue;
      bool merge = !shape.empty();
      for (size_t k = 0; merge && k < N; ++k) merge = strides[k].back() == (*s[k])[axis] * dim;
      if (merge) {
        shape.back() *= dim;
        for (size_t k = 0; k < N; ++k) strides[k].back() = (*s[k])[axis];
      } else {
        shape.push_back(dim);
        for (size_t k = 0; k < N; ++k) strides[k].push_back((*s[k])[axis]);
      }
    }
  }

  // Calls fn(offsets, length, inner_strides, flat_index) for the runs of consecutive elements
  // (along the last collapsed axis) covering the flat row-major range [begin, end); offsets[k]
  // is operand k's element offset at the start of the run, inner_strides[k] its step.
  template <typename Fn>
  void for_each_run(size_t begin, size_t end, Fn&& fn) const {
    if (begin >= end) return;
    const size_t rank = shape.size();
    if (rank == 0) {
      std::array<int64_t, N> inner{};
      fn(offsets, int64_t{1}, inner, begin);
      return;
    }
    std::array<int64_t, kMaxRank> index{};
    std::array<int64_t, N> off = offsets;
    size_t rest = begin;
    for (size_t axis = rank; axis-- > 0;) {
      index[axis] = static_cast<int64_t>(rest % static_cast<size_t>(shape[axis]));
      rest /= static_cast<size_t>(shape[axis]);
      for (size_t k = 0; k < N; ++k) off[k] += index[axis] * strides[k][axis];
    }
    std::array<int64_t, N> inner;
    for (size_t k = 0; k < N; ++k) inner[k] = strides[k][rank - 1];
    size_t pos = begin;
    while (pos < end) {
      const int64_t last = shape[rank - 1];
      const int64_t len =
          std::min<int64_t>(last - index[rank - 1], static_cast<int64_t>(end - pos));
      fn(off, len, inner, pos);
      pos += static_cast<size_t>(len);
      if (pos >= end) break;
      // advance the multi-index by len along the last axis, carrying into the others
      index[rank - 1] += len;
      for (size_t k = 0; k < N; ++k) off[k] += len * inner[k];
      for (size_t axis = rank - 1; axis > 0 && index[axis] == shape[axis]; --axis) {
        for (size_t k = 0; k < N; ++k) off[k] -= index[axis] * strides[k][axis];
        index[axis] = 0;
        ++index[axis - 1];
        for (size_t k = 0; k < N; ++k) off[k] += strides[k][axis - 1];
      }
    }
  }
};

}  // namespace nx_quant::dense::detail
