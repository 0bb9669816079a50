// nx_quant::dense::sort / top_k against BinaryBackend's do_sort: a stable sort of each line with
// its comparator (clause by clause), values as the input's bits; top_k as Nx's default
// composition (argsort :desc, take_along_axis, the first k).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "reduction_reference.h"

namespace nx_quant::dense {
namespace {

using namespace testref;

// A read element: BinaryBackend's number or one of :nan / :infinity / :neg_infinity.
struct Num {
  enum Kind { Number, NaN, Inf, NegInf } kind;
  double d;         // floats
  __int128 i;       // integers
  bool is_integer;  // compare i, not d
};

Num read_num(const StridedTensor& t, size_t flat) {
  Num n{Num::Number, 0, 0, !is_float_t(t.view.type)};
  if (n.is_integer) {
    const int64_t v = t.i64(flat);
    n.i = t.view.type == Type::U64 ? static_cast<__int128>(static_cast<uint64_t>(v)) : v;
    return n;
  }
  n.d = t.d(flat);
  if (std::isnan(n.d)) n.kind = Num::NaN;
  if (n.d == INFINITY) n.kind = Num::Inf;
  if (n.d == -INFINITY) n.kind = Num::NegInf;
  return n;
}

bool same(const Num& a, const Num& b) {  // the {x, x} clause
  if (a.kind != b.kind) return false;
  if (a.kind != Num::Number) return true;
  return a.is_integer ? a.i == b.i : a.d == b.d;  // OTP 25: 0.0 =:= -0.0
}

// do_sort's comparator: true when a may come before b.
bool comparator(const Num& a, const Num& b, bool desc) {
  if (same(a, b)) return true;
  if (desc) {
    if (a.kind == Num::NegInf) return false;
    if (b.kind == Num::NegInf) return true;
    if (a.kind == Num::NaN) return true;
    if (b.kind == Num::NaN) return false;
    if (a.kind == Num::Inf) return true;
    if (b.kind == Num::Inf) return false;
    return a.is_integer ? a.i >= b.i : a.d >= b.d;
  }
  if (a.kind == Num::NegInf) return true;
  if (b.kind == Num::NegInf) return false;
  if (a.kind == Num::NaN) return false;
  if (b.kind == Num::NaN) return true;
  if (a.kind == Num::Inf) return false;
  if (b.kind == Num::Inf) return true;
  return a.is_integer ? a.i <= b.i : a.d <= b.d;
}

// Stable insertion sort with the comparator: each element goes after every element that may
// come before it.
std::vector<size_t> stable_order(const std::vector<Num>& v, bool desc) {
  std::vector<size_t> order;
  for (size_t i = 0; i < v.size(); ++i) {
    size_t pos = order.size();
    while (pos > 0 && !comparator(v[order[pos - 1]], v[i], desc)) --pos;
    order.insert(order.begin() + pos, i);
  }
  return order;
}

// Sorted values (bits) and indices of every line along `axis`, keeping the first `k`.
void reference_sort(const StridedTensor& x, int axis, bool desc, size_t k, Buffer& values,
                    Buffer& indices) {
  const Shape& s = x.shape;
  const size_t es = size_of(x.view.type);
  size_t count = 1, inner = 1;
  for (int64_t d : s) count *= d;
  const size_t n = s.empty() ? 1 : s[axis];
  for (size_t a = axis + 1; a < s.size(); ++a) inner *= s[a];
  for (size_t line = 0; line < count / n; ++line) {
    const size_t o = line / inner, i = line % inner;
    std::vector<Num> v;
    for (size_t t = 0; t < n; ++t) v.push_back(read_num(x, (o * n + t) * inner + i));
    const std::vector<size_t> order = stable_order(v, desc);
    for (size_t t = 0; t < k; ++t) {
      const size_t at = (o * k + t) * inner + i;
      std::memcpy(values.bytes.data() + at * es,
                  x.storage.bytes.data() + x.storage_index((o * n + order[t]) * inner + i) * es,
                  es);
      write_int(indices.data(), indices.type, at, static_cast<int64_t>(order[t]), false);
    }
  }
}

::testing::AssertionResult check_sort(const StridedTensor& x, int axis, bool desc, Type it,
                                      int threads = 0) {
  const size_t count = [&] {
    size_t c = 1;
    for (int64_t d : x.shape) c *= d;
    return c;
  }();
  const size_t n = x.shape.empty() ? 1 : x.shape[axis];
  Buffer ev(x.view.type, count), ei(it, count), av(x.view.type, count), ai(it, count);
  reference_sort(x, axis, desc, n, ev, ei);
  sort(x.shape, x.view, axis, desc, av.data(), it, ai.data(), threads);
  auto r = same_bits(ev, av, count);
  if (r) r = same_bits(ei, ai, count);
  if (r) {  // values only / indices only
    Buffer v2(x.view.type, count), i2(it, count);
    sort(x.shape, x.view, axis, desc, v2.data(), it, nullptr, threads);
    sort(x.shape, x.view, axis, desc, nullptr, it, i2.data(), threads);
    r = same_bits(ev, v2, count);
    if (r) r = same_bits(ei, i2, count);
  }
  if (!r)
    r << " [" << type_name(x.view.type) << " " << shape_str(x.shape) << " axis " << axis
      << (desc ? " desc" : " asc") << " index " << type_name(it) << "]";
  return r;
}

::testing::AssertionResult check_top_k(const StridedTensor& x, int64_t k, Type it,
                                       int threads = 0) {
  size_t count = 1;
  for (size_t a = 0; a + 1 < x.shape.size(); ++a) count *= x.shape[a];
  count *= k;
  Buffer ev(x.view.type, count), ei(it, count), av(x.view.type, count), ai(it, count);
  reference_sort(x, static_cast<int>(x.shape.size()) - 1, true, k, ev, ei);
  top_k(x.shape, x.view, k, av.data(), it, ai.data(), threads);
  auto r = same_bits(ev, av, count);
  if (r) r = same_bits(ei, ai, count);
  if (!r)
    r << " [top_k " << type_name(x.view.type) << " " << shape_str(x.shape) << " k " << k << "]";
  return r;
}

TEST(DenseSort, EveryTypeAxisDirectionAndLayout) {
  uint32_t seed = 1;
  for (Type t : kAllTypes)
    for (int layout = 0; layout < 4; ++layout) {
      // Many ties (small integers), NaNs with payloads, +-Inf, +-0.
      const StridedTensor x = make_tensor(t, {4, 9, 5}, seed++, layout, 0.25, 0.5);
      for (int axis = 0; axis < 3; ++axis)
        for (bool desc : {false, true})
          EXPECT_TRUE(check_sort(x, axis, desc, axis == 1 ? Type::S64 : Type::S32));
    }
}

TEST(DenseSort, LongLinesAndThreads) {
  for (Type t : {Type::F32, Type::BF16, Type::U8, Type::S64, Type::U64}) {
    const StridedTensor x = make_tensor(t, {3, 700}, 5, 0, 0.05, 0.3);
    for (bool desc : {false, true}) EXPECT_TRUE(check_sort(x, 1, desc, Type::S32));
    const StridedTensor y = make_tensor(t, {200, 160}, 6, 1, 0.05, 0.3);
    Buffer v1(t, 200 * 160), i1(Type::S32, 200 * 160), v2(t, 200 * 160), i2(Type::S32, 200 * 160);
    sort(y.shape, y.view, 1, true, v1.data(), Type::S32, i1.data(), 1);
    sort(y.shape, y.view, 1, true, v2.data(), Type::S32, i2.data(), 2);
    EXPECT_TRUE(same_bits(v1, v2, v1.count()));
    EXPECT_TRUE(same_bits(i1, i2, i1.count()));
  }
}

TEST(DenseSort, ScalarsAndEmpty) {
  float x = 3.0f, v = 0;
  int32_t i = 7;
  sort({}, contiguous(&x, Type::F32, {}), 0, false, &v, Type::S32, &i);
  EXPECT_EQ(v, 3.0f);
  EXPECT_EQ(i, 0);
  EXPECT_NO_THROW(
      sort({0, 3}, contiguous(&x, Type::F32, {0, 3}), 1, false, nullptr, Type::S32, nullptr));
}

// The order Nx documents: NaN sorts higher than everything, in both directions' sense.
TEST(DenseSort, NxDocumentedOrder) {
  const std::vector<float> x = {NAN, -INFINITY, INFINITY, 0.0f};
  std::vector<int32_t> idx(4);
  sort({4}, contiguous(x.data(), Type::F32, {4}), 0, false, nullptr, Type::S32, idx.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3, 2, 0}));
  sort({4}, contiguous(x.data(), Type::F32, {4}), 0, true, nullptr, Type::S32, idx.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 2, 3, 1}));
  // -0.0 and 0.0 are equal: stable in both directions.
  const std::vector<float> z = {0.0f, -0.0f, 0.0f};
  sort({3}, contiguous(z.data(), Type::F32, {3}), 0, true, nullptr, Type::S32, idx.data());
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(idx[1], 1);
  EXPECT_EQ(idx[2], 2);
  std::vector<float> tv(3);
  std::vector<int32_t> ti(3);
  const std::vector<float> t = {NAN, -INFINITY, INFINITY};
  top_k({3}, contiguous(t.data(), Type::F32, {3}), 2, tv.data(), Type::S32, ti.data());
  EXPECT_TRUE(std::isnan(tv[0]));
  EXPECT_EQ(tv[1], INFINITY);
  EXPECT_EQ(ti[0], 0);
  EXPECT_EQ(ti[1], 2);
}

TEST(DenseTopK, EveryTypeAndK) {
  uint32_t seed = 40;
  for (Type t : kAllTypes)
    for (int layout = 0; layout < 4; ++layout) {
      const StridedTensor x = make_tensor(t, {3, 2, 11}, seed++, layout, 0.25, 0.5);
      for (int64_t k = 1; k <= 11; ++k) EXPECT_TRUE(check_top_k(x, k, Type::S32));
      EXPECT_TRUE(check_top_k(x, 3, Type::U8));
    }
  for (Type t : {Type::F32, Type::BF16, Type::S16}) {
    const StridedTensor x = make_tensor(t, {4, 2048}, 9, 0, 0.01, 0.3);
    for (int64_t k : {1, 5, 40, 1023, 1500, 2048}) EXPECT_TRUE(check_top_k(x, k, Type::S32, 2));
  }
}

TEST(DenseSort, RejectsBadArguments) {
  std::vector<float> buf(12, 1.0f);
  const View v = contiguous(buf.data(), Type::F32, {3, 4});
  float out[12];
  int32_t idx[12];
  EXPECT_THROW(sort({3, 4}, v, 2, false, out, Type::S32, idx), InvalidArgument);
  EXPECT_THROW(sort({3, 4}, v, -1, false, out, Type::S32, idx), InvalidArgument);
  EXPECT_THROW(sort({3, 4}, v, 0, false, out, Type::S32, idx, -1), InvalidArgument);
  View small = v;
  small.count = 11;
  EXPECT_THROW(sort({3, 4}, small, 0, false, out, Type::S32, idx), InvalidArgument);
  EXPECT_THROW(top_k({3, 4}, v, 5, out, Type::S32, idx), InvalidArgument);
  EXPECT_THROW(top_k({3, 4}, v, 0, out, Type::S32, idx), InvalidArgument);
  EXPECT_THROW(top_k({3, 4}, v, -3, out, Type::S32, idx), InvalidArgument);
  EXPECT_THROW(top_k({}, contiguous(buf.data(), Type::F32, {}), 1, out, Type::S32, idx),
               InvalidArgument);
  EXPECT_THROW(top_k({3, 4}, small, 2, out, Type::S32, idx), InvalidArgument);
  EXPECT_NO_THROW(top_k({3, 4}, v, 4, out, Type::S32, idx));
  EXPECT_EQ(idx[3], 3);
}

}  // namespace
}  // namespace nx_quant::dense
