// Copies and creation: the Copy op (as_type, transpose, slice, broadcast, reverse), copy_into,
// fill and iota (dense_ops.h).
//
// A copy between the same types moves bits (BinaryBackend's as_type returns the tensor itself
// and its transpose/slice/pad copy binary segments); between different types it converts with
// as_type's rules (element.h). Runs along the collapsed last axis are memcpy'd when both sides
// are contiguous; a transposing copy (the input's unit stride on another axis) goes through
// cache-sized tiles.
#include "copy.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <string>

#include "element.h"
#include "elementwise_runs.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "view.h"

namespace nx_quant::dense {
namespace detail {
namespace {

// Whether distinct multi-indices of `shape` reach distinct elements through `strides` (then
// pieces of the copy can run on different threads without racing).
bool injective(const Shape& shape, const std::vector<int64_t>& strides) {
  std::vector<std::pair<uint64_t, int64_t>> axes;  // (|stride|, dim) of the axes with dim > 1
  for (size_t k = 0; k < shape.size(); ++k)
    if (shape[k] > 1)
      axes.emplace_back(static_cast<uint64_t>(strides[k] < 0 ? -strides[k] : strides[k]), shape[k]);
  std::sort(axes.begin(), axes.end());
  uint64_t span = 0;  // largest offset difference reachable with the smaller axes
  for (const auto& [stride, dim] : axes) {
    if (stride <= span) return false;
    span += stride * static_cast<uint64_t>(dim - 1);
  }
  return true;
}

}  // namespace

void copy_strided(const Shape& shape, const View& in, Type out_type, void* out, size_t out_count,
                  int64_t out_offset, const std::vector<int64_t>& out_strides, int threads) {
  (void)out_count;
  const StridedWalk<2> walk(shape, {&in.strides, &out_strides}, {in.offset, out_offset});
  if (walk.count == 0) return;
  const ConvertRunFn convert = converter_for<false>(in.type, out_type);
  if (!injective(shape, out_strides)) threads = 1;  // overlapping writes: in row-major order
  run_split(walk.count, kCheapCost, threads, [&](size_t begin, size_t end) {
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      convert(in.data, off[0], inner[0], out, off[1], inner[1], len);
    });
  });
}

}  // namespace detail

void copy_into(const Shape& shape, const View& in, Type out_type, void* out, size_t out_count,
               int64_t out_offset, const std::vector<int64_t>& out_strides, int threads) {
  using namespace detail;
  check_shape(shape, "copy_into");
  check_type(in.type, "copy_into: input");
  check_type(out_type, "copy_into: output");
  check_view(in, shape, "copy_into: input");
  check_window(shape, out_count, out_offset, out_strides, "copy_into: output");
  if (element_count(shape) == 0) return;
  check_out(out, out_count, "copy_into");
  copy_strided(shape, in, out_type, out, out_count, out_offset, out_strides, threads);
}

void fill(Type type, void* out, size_t count, const View& value) {
  using namespace detail;
  check_type(type, "fill");
  check_type(value.type, "fill: value");
  if (!value.strides.empty())
    throw InvalidArgument("fill: the value must be a scalar view (no strides), got " +
                          std::to_string(value.strides.size()) + " strides");
  check_view(value, Shape{}, "fill: value");
  check_out(out, count, "fill");
  if (count == 0) return;
  const size_t size = type_size(type);
  if (count > std::numeric_limits<size_t>::max() / size)
    throw InvalidArgument("fill: too many elements");
  unsigned char element[8];
  converter_for<false>(value.type, type)(value.data, value.offset, 0, element, 0, 1, 1);
  auto* o = static_cast<unsigned char*>(out);
  std::memcpy(o, element, size);
  size_t done = 1;  // double the filled prefix until the buffer is full
  while (done < count) {
    const size_t n = std::min(done, count - done);
    std::memcpy(o + done * size, o, n * size);
    done += n;
  }
}

void iota(Type type, const Shape& shape, int axis, void* out) {
  using namespace detail;
  check_shape(shape, "iota");
  check_type(type, "iota");
  if (axis >= static_cast<int>(shape.size()))
    throw InvalidArgument("iota: axis " + std::to_string(axis) + " out of range for rank " +
                          std::to_string(shape.size()));
  const size_t count = element_count(shape);
  check_out(out, count, "iota");
  if (count == 0) return;
  // Element i holds (i / inner) % dim: runs of `inner` equal values.
  size_t inner = 1, dim = count;
  if (axis >= 0) {
    dim = static_cast<size_t>(shape[static_cast<size_t>(axis)]);
    for (size_t k = static_cast<size_t>(axis) + 1; k < shape.size(); ++k)
      inner *= static_cast<size_t>(shape[k]);
  }
  with_type(type, [&](auto tc) {
    constexpr Type T = decltype(tc)::value;
    run_split(count, kCheapCost, 0, [&](size_t begin, size_t end) {
      size_t i = begin;
      size_t value = (i / inner) % dim;
      size_t left = inner - i % inner;  // elements until the value changes
      while (i < end) {
        const size_t n = std::min(left, end - i);
        storage_t<T> v;
        store_int<T>(&v, 0, static_cast<int64_t>(value), false);
        auto* o = static_cast<storage_t<T>*>(out) + i;
        for (size_t j = 0; j < n; ++j) o[j] = v;
        i += n;
        left = inner;
        if (++value == dim) value = 0;
      }
    });
  });
}

}  // namespace nx_quant::dense
