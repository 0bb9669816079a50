// nx_quant::dense::gather against BinaryBackend's gather: for each index tuple, the slice of the
// remaining axes at that position (input bits); an index outside its axis raises.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "reduction_reference.h"

namespace nx_quant::dense {
namespace {

using namespace testref;

Buffer reference_gather(const StridedTensor& x, const std::vector<std::vector<int64_t>>& idx,
                        const std::vector<int>& axes) {
  const Shape& s = x.shape;
  const int rank = static_cast<int>(s.size());
  std::vector<int> rest;
  for (int a = 0; a < rank; ++a)
    if (std::find(axes.begin(), axes.end(), a) == axes.end()) rest.push_back(a);
  size_t slice = 1;
  for (int a : rest) slice *= s[a];
  const size_t es = size_of(x.view.type);
  Buffer out(x.view.type, idx.size() * slice);
  for (size_t p = 0; p < idx.size(); ++p)
    for (size_t q = 0; q < slice; ++q) {
      std::vector<int64_t> mi(rank);
      for (size_t j = 0; j < axes.size(); ++j) mi[axes[j]] = idx[p][j];
      size_t rq = q;
      for (size_t r = rest.size(); r-- > 0;) {
        mi[rest[r]] = static_cast<int64_t>(rq % s[rest[r]]);
        rq /= s[rest[r]];
      }
      size_t flat = 0;
      for (int a = 0; a < rank; ++a) flat = flat * s[a] + mi[a];
      std::memcpy(out.bytes.data() + (p * slice + q) * es,
                  x.storage.bytes.data() + x.storage_index(flat) * es, es);
    }
  return out;
}

// Indices as a {count, depth} tensor of `type` (layout 1: stored transposed).
struct Indices {
  Buffer storage;
  View view;
};
Indices make_indices(const std::vector<std::vector<int64_t>>& idx, size_t depth, Type type,
                     bool transposed) {
  Indices r;
  const size_t count = idx.size();
  r.storage = Buffer(type, count * depth);
  for (size_t p = 0; p < count; ++p)
    for (size_t j = 0; j < depth; ++j)
      write_int(r.storage.data(), type, transposed ? j * count + p : p * depth + j, idx[p][j],
                false);
  r.view.data = r.storage.data();
  r.view.count = count * depth;
  r.view.type = type;
  r.view.strides = transposed ? std::vector<int64_t>{1, static_cast<int64_t>(count)}
                              : std::vector<int64_t>{static_cast<int64_t>(depth), 1};
  return r;
}

::testing::AssertionResult check(const StridedTensor& x,
                                 const std::vector<std::vector<int64_t>>& idx,
                                 const std::vector<int>& axes, Type it, bool transposed,
                                 int threads = 0) {
  const Buffer expected = reference_gather(x, idx, axes);
  const Indices ind = make_indices(idx, axes.size(), it, transposed);
  Buffer actual(x.view.type, expected.count());
  gather(x.shape, x.view, ind.view, idx.size(), axes, actual.data(), threads);
  auto r = same_bits(expected, actual, expected.count());
  if (!r) {
    r << " [" << type_name(x.view.type) << " " << shape_str(x.shape) << " axes";
    for (int a : axes) r << " " << a;
    r << " index " << type_name(it) << "]";
  }
  return r;
}

std::vector<std::vector<int64_t>> random_indices(const Shape& s, const std::vector<int>& axes,
                                                 size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> idx(count);
  for (auto& t : idx)
    for (int a : axes) t.push_back(static_cast<int64_t>(rng() % s[a]));
  return idx;
}

TEST(DenseGather, EveryTypeAxesAndLayout) {
  const Shape s = {3, 4, 5};
  const std::vector<std::vector<int>> axes_list = {{0},    {1},    {2},    {0, 1},    {1, 0},
                                                   {2, 0}, {0, 2}, {1, 2}, {2, 1, 0}, {0, 1, 2}};
  uint32_t seed = 1;
  for (Type t : kAllTypes)
    for (int layout = 0; layout < 4; ++layout) {
      const StridedTensor x = make_tensor(t, s, seed++, layout, 0.2, 0.3);
      for (const auto& axes : axes_list)
        for (Type it : {Type::S32, Type::U8, Type::S64, Type::U64}) {
          ++seed;
          EXPECT_TRUE(check(x, random_indices(s, axes, 7, seed), axes, it, seed % 2 == 0));
        }
    }
}

TEST(DenseGather, LargeAndThreads) {
  // An embedding-like lookup: {vocab, dim} rows by token ids, and columns of a matrix.
  const StridedTensor x = make_tensor(Type::BF16, {1000, 256}, 3, 0, 0.0, 0.0);
  const auto idx = random_indices(x.shape, {0}, 600, 4);
  EXPECT_TRUE(check(x, idx, {0}, Type::S32, false, 1));
  EXPECT_TRUE(check(x, idx, {0}, Type::S32, false, 2));
  const StridedTensor y = make_tensor(Type::F32, {300, 200}, 5, 1, 0.0, 0.0);
  EXPECT_TRUE(check(y, random_indices(y.shape, {1}, 500, 6), {1}, Type::S64, true, 2));
}

TEST(DenseGather, ZeroDepthAndEmpty) {
  const StridedTensor x = make_tensor(Type::F32, {2, 3}, 3, 2);
  EXPECT_TRUE(check(x, {{}, {}}, {}, Type::S32, false));  // each tuple copies everything
  const Indices none = make_indices({}, 1, Type::S32, false);
  EXPECT_NO_THROW(gather(x.shape, x.view, none.view, 0, {0}, nullptr));
}

TEST(DenseGather, OutOfBoundsIndicesRaiseLikeBinaryBackend) {
  const StridedTensor x = make_tensor(Type::F32, {3, 4}, 3, 0);
  Buffer out(Type::F32, 16);
  auto message = [&](const std::vector<std::vector<int64_t>>& idx, const std::vector<int>& axes,
                     Type it) -> std::string {
    const Indices ind = make_indices(idx, axes.size(), it, false);
    try {
      gather(x.shape, x.view, ind.view, idx.size(), axes, out.data());
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message({{0, 1}, {5, 1}}, {0, 1}, Type::S32),
            "gather: index 5 is out of bounds for axis 0 in shape {3, 4}");
  EXPECT_EQ(message({{-1, 1}}, {0, 1}, Type::S64),
            "gather: index -1 is out of bounds for axis 0 in shape {3, 4}");
  EXPECT_EQ(message({{1}, {4}}, {1}, Type::S32),
            "gather: index 4 is out of bounds for axis 0 in shape {4, 3}");
  EXPECT_EQ(message({{1, 3}}, {1, 0}, Type::U64),
            "gather: index 3 is out of bounds for axis 1 in shape {4, 3}");
  EXPECT_EQ(message({{static_cast<int64_t>(0x8000000000000000ull)}}, {0}, Type::U64),
            "gather: index 9223372036854775808 is out of bounds for axis 0 in shape {3, 4}");
  // Nothing is written before every index is checked.
  Buffer before = out;
  message({{0, 0}, {1, 1}, {3, 0}}, {0, 1}, Type::S32);
  EXPECT_TRUE(same_bits(before, out, 16));
}

TEST(DenseGather, RejectsBadArguments) {
  const StridedTensor x = make_tensor(Type::F32, {3, 4}, 3, 0);
  const Indices ind = make_indices({{1}, {2}}, 1, Type::S32, false);
  Buffer out(Type::F32, 8);
  EXPECT_THROW(gather(x.shape, x.view, ind.view, 2, {2}, out.data()), InvalidArgument);
  EXPECT_THROW(gather(x.shape, x.view, ind.view, 2, {-1}, out.data()), InvalidArgument);
  EXPECT_THROW(gather(x.shape, x.view, ind.view, 3, {0}, out.data()), InvalidArgument);
  EXPECT_THROW(gather(x.shape, x.view, ind.view, 2, {0}, nullptr), InvalidArgument);
  EXPECT_THROW(gather(x.shape, x.view, ind.view, 2, {0}, out.data(), -1), InvalidArgument);
  const Indices two = make_indices({{1, 1}}, 2, Type::S32, false);
  EXPECT_THROW(gather(x.shape, x.view, two.view, 1, {0, 0}, out.data()), InvalidArgument);
  EXPECT_THROW(gather({3, 4, 5}, x.view, ind.view, 2, {0}, out.data()), InvalidArgument);
  Indices floats = make_indices({{1}, {2}}, 1, Type::S32, false);
  floats.view.type = Type::F32;
  EXPECT_THROW(gather(x.shape, x.view, floats.view, 2, {0}, out.data()), InvalidArgument);
  const Indices three = make_indices({{0, 0, 0}}, 3, Type::S32, false);
  EXPECT_THROW(gather(x.shape, x.view, three.view, 1, {0, 1, 2}, out.data()), InvalidArgument);
  EXPECT_NO_THROW(gather(x.shape, x.view, ind.view, 2, {0}, out.data()));
}

}  // namespace
}  // namespace nx_quant::dense
