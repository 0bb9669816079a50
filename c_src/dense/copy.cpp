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

// Tiles of a transposing copy: kTile x kTile elements touch kTile cache lines on each side.
constexpr int64_t kTile = 32;

// A copy whose input is contiguous along collapsed axis `k` (not the last) while the output is
// contiguous along the last: read and written in kTile x kTile tiles over (k, last) so both
// sides stay in cache (a row-by-row copy would read the input with a page-sized stride).
void copy_tiled(const StridedWalk<2>& walk, size_t k, const View& in, void* out,
                ConvertRunFn convert, int threads) {
  const size_t rank = walk.shape.size();
  const size_t last = rank - 1;
  const int64_t dim_k = walk.shape[k], dim_j = walk.shape[last];
  const int64_t in_k = walk.strides[0][k], in_j = walk.strides[0][last];
  const int64_t out_k = walk.strides[1][k], out_j = walk.strides[1][last];
  std::vector<size_t> outer_axes;
  size_t outer_count = 1;
  for (size_t a = 0; a < last; ++a)
    if (a != k) {
      outer_axes.push_back(a);
      outer_count *= static_cast<size_t>(walk.shape[a]);
    }
  const size_t k_tiles = static_cast<size_t>((dim_k + kTile - 1) / kTile);
  // One item: every tile of one (outer index, k tile) pair.
  run_split(outer_count * k_tiles, static_cast<size_t>(kTile * dim_j), threads,
            [&](size_t begin, size_t end) {
              for (size_t item = begin; item < end; ++item) {
                size_t rest = item / k_tiles;
                const int64_t k0 = static_cast<int64_t>(item % k_tiles) * kTile;
                int64_t in_off = walk.offsets[0], out_off = walk.offsets[1];
                for (size_t a = outer_axes.size(); a-- > 0;) {
                  const size_t axis = outer_axes[a];
                  const int64_t i =
                      static_cast<int64_t>(rest % static_cast<size_t>(walk.shape[axis]));
                  rest /= static_cast<size_t>(walk.shape[axis]);
                  in_off += i * walk.strides[0][axis];
                  out_off += i * walk.strides[1][axis];
                }
                const int64_t k1 = std::min(dim_k, k0 + kTile);
                for (int64_t j0 = 0; j0 < dim_j; j0 += kTile) {
                  const int64_t n = std::min(kTile, dim_j - j0);
                  for (int64_t kk = k0; kk < k1; ++kk)
                    convert(in.data, in_off + kk * in_k + j0 * in_j, in_j, out,
                            out_off + kk * out_k + j0 * out_j, out_j, n);
                }
              }
            });
}

}  // namespace

void copy_strided(const Shape& shape, const View& in, Type out_type, void* out, size_t out_count,
                  int64_t out_offset, const std::vector<int64_t>& out_strides, int threads) {
  (void)out_count;
  int64_t in_stride, out_stride;
  if (flat_strides(in.strides, shape, in_stride) && flat_strides(out_strides, shape, out_stride) &&
      out_stride == 1) {  // one run: a memcpy or a conversion loop, no walk
    const size_t count = element_count(shape);
    const ConvertRunFn convert = converter_for<false>(in.type, out_type);
    run_split(count, kCheapCost, threads, [&](size_t begin, size_t end) {
      const int64_t b = static_cast<int64_t>(begin);
      convert(in.data, in.offset + b * in_stride, in_stride, out, out_offset + b, 1,
              static_cast<int64_t>(end - begin));
    });
    return;
  }
  const StridedWalk<2> walk(shape, {&in.strides, &out_strides}, {in.offset, out_offset});
  if (walk.count == 0) return;
  const ConvertRunFn convert = converter_for<false>(in.type, out_type);
  if (!injective(shape, out_strides)) threads = 1;  // overlapping writes: in row-major order
  const size_t rank = walk.shape.size();
  // Transposing copies (the input's unit stride on another axis) go through tiles; the tile
  // order differs from row-major, so only when no two elements share an output position.
  if (rank >= 2 && walk.strides[1][rank - 1] == 1 && walk.strides[0][rank - 1] != 1 &&
      walk.strides[0][rank - 1] != 0 && walk.shape[rank - 1] >= kTile / 2) {
    for (size_t k = rank - 1; k-- > 0;)
      if (walk.strides[0][k] == 1 && walk.shape[k] >= kTile / 2 && injective(shape, out_strides))
        return copy_tiled(walk, k, in, out, convert, threads);
  }
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
