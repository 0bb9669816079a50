// Types, shapes and view validation shared by every dense kernel.
#include "view.h"

#include <limits>

#include "nx_quant/error.h"

namespace nx_quant::dense {

size_t type_size(Type t) {
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
    case Type::U64:
    case Type::S64:
    case Type::F64:
      return 8;
  }
  throw InvalidArgument("unknown element type");
}

bool is_float(Type t) {
  return t == Type::F16 || t == Type::BF16 || t == Type::F32 || t == Type::F64;
}

bool is_signed_int(Type t) {
  return t == Type::S8 || t == Type::S16 || t == Type::S32 || t == Type::S64;
}

const char* type_name(Type t) {
  switch (t) {
    case Type::U8:
      return "u8";
    case Type::U16:
      return "u16";
    case Type::U32:
      return "u32";
    case Type::U64:
      return "u64";
    case Type::S8:
      return "s8";
    case Type::S16:
      return "s16";
    case Type::S32:
      return "s32";
    case Type::S64:
      return "s64";
    case Type::F16:
      return "f16";
    case Type::BF16:
      return "bf16";
    case Type::F32:
      return "f32";
    case Type::F64:
      return "f64";
  }
  return "unknown";
}

size_t element_count(const Shape& shape) {
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  return count;
}

std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t axis = shape.size(); axis-- > 0;) {
    strides[axis] = stride;
    stride *= shape[axis];
  }
  return strides;
}

View contiguous(const void* data, Type type, const Shape& shape) {
  View v;
  v.data = data;
  v.type = type;
  v.count = element_count(shape);
  v.strides = contiguous_strides(shape);
  return v;
}

namespace detail {

void check_shape(const Shape& shape, const char* what) {
  if (shape.size() > kMaxRank)
    throw InvalidArgument(std::string(what) + ": rank " + std::to_string(shape.size()) +
                          " exceeds the maximum of " + std::to_string(kMaxRank));
  size_t count = 1;
  for (int64_t d : shape) {
    if (d < 0)
      throw InvalidArgument(std::string(what) + ": negative dimension " + std::to_string(d));
    if (d != 0 && count > std::numeric_limits<size_t>::max() / 8 / static_cast<size_t>(d))
      throw InvalidArgument(std::string(what) + ": too many elements");
    count *= static_cast<size_t>(d);
  }
}

namespace {

// The smallest and largest element offsets reached, or false when the shape is empty.
// Throws on overflow.
bool reach(const Shape& shape, int64_t offset, const std::vector<int64_t>& strides,
           const char* what, int64_t& lo, int64_t& hi) {
  if (strides.size() != shape.size())
    throw InvalidArgument(std::string(what) + ": " + std::to_string(strides.size()) +
                          " strides for a rank-" + std::to_string(shape.size()) + " shape");
  for (int64_t d : shape)
    if (d == 0) return false;
  lo = hi = offset;
  for (size_t axis = 0; axis < shape.size(); ++axis) {
    __int128 span = static_cast<__int128>(strides[axis]) * (shape[axis] - 1);
    __int128 next_lo = lo + (span < 0 ? span : 0);
    __int128 next_hi = hi + (span > 0 ? span : 0);
    if (next_lo < std::numeric_limits<int64_t>::min() ||
        next_hi > std::numeric_limits<int64_t>::max())
      throw InvalidArgument(std::string(what) + ": strides overflow");
    lo = static_cast<int64_t>(next_lo);
    hi = static_cast<int64_t>(next_hi);
  }
  return true;
}

}  // namespace

void check_view(const View& view, const Shape& shape, const char* what) {
  int64_t lo, hi;
  if (!reach(shape, view.offset, view.strides, what, lo, hi)) return;
  if (view.data == nullptr) throw InvalidArgument(std::string(what) + ": no data");
  if (lo < 0 || hi < 0 || static_cast<uint64_t>(hi) >= view.count)
    throw InvalidArgument(std::string(what) + ": the view reaches elements [" + std::to_string(lo) +
                          ", " + std::to_string(hi) + "] of a buffer of " +
                          std::to_string(view.count));
}

void check_window(const Shape& shape, size_t out_count, int64_t out_offset,
                  const std::vector<int64_t>& out_strides, const char* what) {
  int64_t lo, hi;
  if (!reach(shape, out_offset, out_strides, what, lo, hi)) return;
  if (lo < 0 || hi < 0 || static_cast<uint64_t>(hi) >= out_count)
    throw InvalidArgument(std::string(what) + ": the window reaches elements [" +
                          std::to_string(lo) + ", " + std::to_string(hi) + "] of an output of " +
                          std::to_string(out_count));
}

}  // namespace detail
}  // namespace nx_quant::dense
