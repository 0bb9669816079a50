// Nx.gather with BinaryBackend's results.
//
// BinaryBackend's gather moves the indexed axes to the front (axes ++ the others, in order),
// and for each index tuple copies the slice of the remaining axes at that position (the
// input's bits). An index outside [0, size) of its axis raises ArgumentError ("index 5 is out
// of bounds for axis 0 in shape {3, 4}"): every index is checked here before anything is
// written, with the same message. (Nx.take and Nx.take_along_axis reach the same gather in
// their default compositions, so they raise the same way.)
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

std::string shape_text(const Shape& shape) {
  std::string s = "{";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "}";
}

// The input's shape with the indexed axes moved to the front (what BinaryBackend indexes).
Shape front_shape(const Shape& shape, const std::vector<int>& axes) {
  Shape s;
  for (int a : axes) s.push_back(shape[a]);
  for (int a = 0; a < static_cast<int>(shape.size()); ++a)
    if (std::find(axes.begin(), axes.end(), a) == axes.end()) s.push_back(shape[a]);
  return s;
}

// The element offsets (into in.data) of every index tuple's slice origin.
template <Type I>
void index_offsets(const Shape& in_shape, const View& in, const View& indices, size_t count,
                   const std::vector<int>& axes, std::vector<int64_t>& offsets) {
  const size_t depth = axes.size();
  offsets.resize(count);
  for (size_t p = 0; p < count; ++p) {
    int64_t off = in.offset;
    for (size_t j = 0; j < depth; ++j) {
      const int64_t at = indices.offset + static_cast<int64_t>(p) * indices.strides[0] +
                         static_cast<int64_t>(j) * indices.strides[1];
      const int64_t v = detail::load_int<I>(indices.data, at);
      const int axis = axes[j];
      const bool negative = !detail::is_unsigned_type(I) && v < 0;
      if (negative || static_cast<uint64_t>(v) >= static_cast<uint64_t>(in_shape[axis]))
        throw InvalidArgument("gather: index " +
                              (detail::is_unsigned_type(I)
                                   ? std::to_string(static_cast<uint64_t>(v))
                                   : std::to_string(v)) +
                              " is out of bounds for axis " + std::to_string(j) + " in shape " +
                              shape_text(front_shape(in_shape, axes)));
      off += v * in.strides[axis];
    }
    offsets[p] = off;
  }
}

using OffsetsFn = void (*)(const Shape&, const View&, const View&, size_t, const std::vector<int>&,
                           std::vector<int64_t>&);

}  // namespace

void gather(const Shape& in_shape, const View& in, const View& indices, size_t index_count,
            const std::vector<int>& axes, void* out, int threads) {
  if (threads < 0) throw InvalidArgument("gather: threads must be >= 0");
  detail::check_shape(in_shape, "gather: input");
  detail::check_view(in, in_shape, "gather: input");
  const size_t elem = type_size(in.type);
  type_size(indices.type);
  if (is_float(indices.type))
    throw InvalidArgument(std::string("gather: indices must be an integer tensor, got ") +
                          type_name(indices.type));
  const int rank = static_cast<int>(in_shape.size());
  if (axes.size() > in_shape.size())
    throw InvalidArgument("gather: " + std::to_string(axes.size()) + " indexed axes for a rank-" +
                          std::to_string(rank) + " input");
  std::vector<bool> indexed(rank, false);
  for (int a : axes) {
    if (a < 0 || a >= rank)
      throw InvalidArgument("gather: axis " + std::to_string(a) + " out of range for rank " +
                            std::to_string(rank));
    if (indexed[a]) throw InvalidArgument("gather: axis " + std::to_string(a) + " repeated");
    indexed[a] = true;
  }
  if (index_count > static_cast<size_t>(INT64_MAX))
    throw InvalidArgument("gather: too many indices");
  const Shape idx_shape{static_cast<int64_t>(index_count), static_cast<int64_t>(axes.size())};
  detail::check_shape(idx_shape, "gather: indices");
  detail::check_view(indices, idx_shape, "gather: indices");

  // The slice: the remaining axes in order.
  Shape rest_shape;
  std::vector<int64_t> rest_strides;
  for (int a = 0; a < rank; ++a)
    if (!indexed[a]) {
      rest_shape.push_back(in_shape[a]);
      rest_strides.push_back(in.strides[a]);
    }
  Shape out_shape{static_cast<int64_t>(index_count)};
  out_shape.insert(out_shape.end(), rest_shape.begin(), rest_shape.end());
  detail::check_shape(out_shape, "gather: output");
  const size_t slice = element_count(rest_shape);
  if (index_count == 0) return;
  // Every index is checked (even when the slices are empty), as BinaryBackend does.
  std::vector<int64_t> offsets;
  const OffsetsFn offsets_fn = detail::with_type(indices.type, [](auto t) -> OffsetsFn {
    constexpr Type I = decltype(t)::value;
    if constexpr (detail::is_float_type(I))
      return nullptr;
    else
      return &index_offsets<I>;
  });
  offsets_fn(in_shape, in, indices, index_count, axes, offsets);
  if (slice == 0) return;
  if (out == nullptr) throw InvalidArgument("gather: no output buffer");

  const detail::StridedWalk<1> walk(rest_shape, {&rest_strides}, {int64_t{0}});
  const uint8_t* src = static_cast<const uint8_t*>(in.data);
  uint8_t* dst = static_cast<uint8_t*>(out);
  const double bytes = static_cast<double>(index_count) * slice * elem;
  nx_quant::detail::parallel_for(
      index_count, 1, bytes < 262144.0 ? 1 : threads, [&](size_t begin, size_t end) {
        for (size_t p = begin; p < end; ++p) {
          const int64_t origin = offsets[p];
          uint8_t* to = dst + p * slice * elem;
          walk.for_each_run(0, slice,
                            [&](const std::array<int64_t, 1>& off, int64_t len,
                                const std::array<int64_t, 1>& step, size_t flat) {
                              uint8_t* d = to + flat * elem;
                              const int64_t start = origin + off[0];
                              if (step[0] == 1) {
                                std::memcpy(d, src + start * elem, static_cast<size_t>(len) * elem);
                              } else {
                                for (int64_t e = 0; e < len; ++e)
                                  std::memcpy(d + e * elem, src + (start + e * step[0]) * elem,
                                              elem);
                              }
                            });
        }
      });
}

}  // namespace nx_quant::dense
