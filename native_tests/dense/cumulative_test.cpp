// nx_quant::dense::cumulative against a literal transcription of Nx's default composition
// (associative_scan / do_associative_scan in nx.ex): slices, concatenations and interleavings
// move element bits, and each combination is an element-wise BinaryBackend op whose result is
// written in the input's type.
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

using Raw = uint64_t;  // an element's bytes (little-endian, zero-extended)
using Line = std::vector<Raw>;

double raw_d(Raw r, Type t) {
  return read_double(&r, t, 0);
}
int64_t raw_i(Raw r, Type t) {
  return read_int(&r, t, 0);
}

// BinaryBackend's element_max / element_min, clause by clause, on read values.
double element_max(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return NAN;
  if (a == INFINITY || b == INFINITY) return INFINITY;
  if (a == -INFINITY) return b;
  if (b == -INFINITY) return a;
  return a < b ? b : a;  // :erlang.max: the first unless the second is greater
}
double element_min(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return NAN;
  if (a == INFINITY) return b;
  if (b == INFINITY) return a;
  if (a == -INFINITY || b == -INFINITY) return -INFINITY;
  return a > b ? b : a;
}

Raw combine(CumulativeOp op, Raw a, Raw b, Type t) {
  Raw r = 0;
  if (is_float_t(t)) {
    const double x = raw_d(a, t), y = raw_d(b, t);
    double v = 0;
    switch (op) {
      case CumulativeOp::Sum:
        v = x + y;
        break;
      case CumulativeOp::Product:
        v = x * y;
        break;
      case CumulativeOp::Max:
        v = element_max(x, y);
        break;
      case CumulativeOp::Min:
        v = element_min(x, y);
        break;
    }
    write_double(&r, t, 0, v);
  } else {
    const bool u = is_unsigned_t(t);
    const int64_t x = raw_i(a, t), y = raw_i(b, t);
    int64_t v = 0;
    switch (op) {
      case CumulativeOp::Sum:
        v = static_cast<int64_t>(static_cast<uint64_t>(x) + static_cast<uint64_t>(y));
        break;
      case CumulativeOp::Product:
        v = static_cast<int64_t>(static_cast<uint64_t>(x) * static_cast<uint64_t>(y));
        break;
      case CumulativeOp::Max:
        v = (u ? static_cast<uint64_t>(x) < static_cast<uint64_t>(y) : x < y) ? y : x;
        break;
      case CumulativeOp::Min:
        v = (u ? static_cast<uint64_t>(x) > static_cast<uint64_t>(y) : x > y) ? y : x;
        break;
    }
    write_int(&r, t, 0, v, u);
  }
  return r;
}

// Nx.slice_along_axis(t, start, len, strides: s) on a line.
Line slice(const Line& x, size_t start, size_t len, size_t stride = 1) {
  Line r;
  for (size_t i = start; i < start + len; i += stride) r.push_back(x[i]);
  return r;
}
Line concat(const Line& a, const Line& b) {
  Line r = a;
  r.insert(r.end(), b.begin(), b.end());
  return r;
}
Line interleave(const Line& a, const Line& b) {
  Line r;
  for (size_t i = 0; i < a.size(); ++i) {
    r.push_back(a[i]);
    r.push_back(b[i]);
  }
  return r;
}
Line zip(CumulativeOp op, const Line& a, const Line& b, Type t) {
  Line r;
  for (size_t i = 0; i < a.size(); ++i) r.push_back(combine(op, a[i], b[i], t));
  return r;
}

Line do_associative_scan(CumulativeOp op, const Line& x, Type t) {
  const size_t n = x.size();
  if (n < 2) return x;
  const Line even = slice(x, 0, n - 1, 2);
  const Line odd = slice(x, 1, n - 1, 2);
  const Line reduced_pairs = zip(op, odd, even, t);
  const Line scanned_odd = do_associative_scan(op, reduced_pairs, t);
  if (n == 2) return concat(even, reduced_pairs);
  if (n % 2 == 0) {
    Line scanned_even = zip(op, slice(scanned_odd, 0, n / 2 - 1), slice(even, 1, n / 2 - 1), t);
    scanned_even = concat(slice(even, 0, 1), scanned_even);
    return interleave(scanned_even, scanned_odd);
  }
  const Line scanned_even = zip(op, scanned_odd, slice(x, 2, n - 2, 2), t);
  return concat(slice(x, 0, 1), interleave(scanned_odd, scanned_even));
}

Buffer reference_cumulative(CumulativeOp op, const StridedTensor& x, int axis, bool reverse,
                            Type out_type) {
  const Type t = x.view.type;
  const size_t es = size_of(t);
  size_t count = 1, inner = 1;
  for (int64_t d : x.shape) count *= d;
  for (size_t a = axis + 1; a < x.shape.size(); ++a) inner *= x.shape[a];
  const size_t n = x.shape[axis];
  Buffer out(out_type, count);
  for (size_t line = 0; line < count / n; ++line) {
    const size_t o = line / inner, i = line % inner;
    Line l(n);
    for (size_t k = 0; k < n; ++k) {
      Raw r = 0;
      std::memcpy(&r, x.storage.bytes.data() + x.storage_index((o * n + k) * inner + i) * es, es);
      l[k] = r;
    }
    if (reverse) l = Line(l.rbegin(), l.rend());
    Line res = do_associative_scan(op, l, t);
    if (reverse) res = Line(res.rbegin(), res.rend());
    for (size_t k = 0; k < n; ++k) {
      const size_t at = (o * n + k) * inner + i;
      if (out_type == t)
        std::memcpy(out.bytes.data() + at * es, &res[k], es);
      else if (is_float_t(t))
        write_double(out.data(), out_type, at, raw_d(res[k], t));
      else
        write_int(out.data(), out_type, at, raw_i(res[k], t), is_unsigned_t(t));
    }
  }
  return out;
}

const CumulativeOp kOps[] = {CumulativeOp::Sum, CumulativeOp::Product, CumulativeOp::Max,
                             CumulativeOp::Min};

::testing::AssertionResult check(CumulativeOp op, const StridedTensor& x, int axis, bool reverse,
                                 Type ot, int threads = 0) {
  const Buffer expected = reference_cumulative(op, x, axis, reverse, ot);
  Buffer actual(ot, expected.count());
  cumulative(op, x.shape, x.view, axis, reverse, ot, actual.data(), threads);
  auto r = same_bits(expected, actual, expected.count());
  if (!r)
    r << " [op " << static_cast<int>(op) << " " << type_name(x.view.type) << " "
      << shape_str(x.shape) << " axis " << axis << " reverse " << reverse << " out "
      << type_name(ot) << "]";
  return r;
}

TEST(DenseCumulative, EveryTypeOpLengthAndDirection) {
  uint32_t seed = 1;
  for (Type t : kAllTypes)
    for (int64_t n = 1; n <= 19; ++n) {
      const StridedTensor x = make_tensor(t, {n}, seed++, n % 3 == 0 ? 2 : 0, 0.08, 0.4);
      for (CumulativeOp op : kOps)
        for (bool reverse : {false, true}) {
          EXPECT_TRUE(check(op, x, 0, reverse, t));
          EXPECT_TRUE(check(op, x, 0, reverse, is_float_t(t) ? Type::F64 : Type::S64));
        }
    }
}

TEST(DenseCumulative, AxesAndLayouts) {
  uint32_t seed = 100;
  for (Type t : kAllTypes)
    for (int layout = 0; layout < 4; ++layout) {
      const StridedTensor x = make_tensor(t, {3, 6, 5}, seed++, layout, 0.05, 0.4);
      for (int axis = 0; axis < 3; ++axis)
        for (CumulativeOp op : kOps)
          for (bool reverse : {false, true}) EXPECT_TRUE(check(op, x, axis, reverse, t));
    }
}

TEST(DenseCumulative, LongLinesAndThreads) {
  for (Type t : {Type::F32, Type::BF16, Type::F16, Type::S32}) {
    const StridedTensor x = make_tensor(t, {1000}, 7, 0, 0.0, 0.2);
    for (CumulativeOp op : kOps) EXPECT_TRUE(check(op, x, 0, false, t));
    const StridedTensor y = make_tensor(t, {300, 257}, 8, 1, 0.001, 0.2);
    for (int axis = 0; axis < 2; ++axis) {
      Buffer one(t, 300 * 257), two(t, 300 * 257);
      cumulative(CumulativeOp::Sum, y.shape, y.view, axis, axis == 1, t, one.data(), 1);
      cumulative(CumulativeOp::Sum, y.shape, y.view, axis, axis == 1, t, two.data(), 2);
      EXPECT_TRUE(same_bits(one, two, one.count()));
      EXPECT_TRUE(check(CumulativeOp::Sum, y, axis, axis == 1, t, 2));
    }
  }
}

// Each step rounds to the input's type in the scan's tree order: on bf16 data that differs from
// a sequential sum (in double or in bf16), and the kernel follows the tree.
TEST(DenseCumulative, FollowsTheScanTreeNotASequentialSum) {
  const StridedTensor x = make_tensor(Type::BF16, {64}, 3, 0, 0.0, 0.0);
  Buffer out(Type::BF16, 64);
  cumulative(CumulativeOp::Sum, x.shape, x.view, 0, false, Type::BF16, out.data());
  EXPECT_TRUE(same_bits(reference_cumulative(CumulativeOp::Sum, x, 0, false, Type::BF16), out, 64));
  Buffer seq_double(Type::BF16, 64), seq_bf16(Type::BF16, 64);
  double acc = 0, acc16 = 0;
  for (size_t i = 0; i < 64; ++i) {
    acc += x.d(i);
    write_double(seq_double.data(), Type::BF16, i, acc);
    write_double(seq_bf16.data(), Type::BF16, i, acc16 + x.d(i));
    acc16 = seq_bf16.d(i);
  }
  EXPECT_FALSE(same_bits(seq_double, out, 64));
  EXPECT_FALSE(same_bits(seq_bf16, out, 64));
}

TEST(DenseCumulative, FirstElementKeepsItsBits) {
  const uint32_t payload_nan = 0xFFC00123u;
  std::vector<uint32_t> x = {payload_nan, 0x3F800000u};
  std::vector<uint32_t> out(2);
  cumulative(CumulativeOp::Sum, {2}, contiguous(x.data(), Type::F32, {2}), 0, false, Type::F32,
             out.data());
  EXPECT_EQ(out[0], payload_nan);
  EXPECT_EQ(out[1], 0x7FC00000u);
  cumulative(CumulativeOp::Max, {2}, contiguous(x.data(), Type::F32, {2}), 0, true, Type::F32,
             out.data());
  EXPECT_EQ(out[0], 0x7FC00000u);
  EXPECT_EQ(out[1], 0x3F800000u);
}

TEST(DenseCumulative, RejectsBadArguments) {
  std::vector<float> buf(12, 1.0f);
  const View v = contiguous(buf.data(), Type::F32, {3, 4});
  float out[12];
  EXPECT_THROW(cumulative(CumulativeOp::Sum, {3, 4}, v, 2, false, Type::F32, out), InvalidArgument);
  EXPECT_THROW(cumulative(CumulativeOp::Sum, {3, 4}, v, -1, false, Type::F32, out),
               InvalidArgument);
  EXPECT_THROW(cumulative(CumulativeOp::Sum, {}, contiguous(buf.data(), Type::F32, {}), 0, false,
                          Type::F32, out),
               InvalidArgument);
  EXPECT_THROW(cumulative(CumulativeOp::Sum, {3, 4}, v, 0, false, Type::F32, nullptr),
               InvalidArgument);
  EXPECT_THROW(cumulative(static_cast<CumulativeOp>(9), {3, 4}, v, 0, false, Type::F32, out),
               InvalidArgument);
  EXPECT_THROW(cumulative(CumulativeOp::Sum, {3, 4}, v, 0, false, Type::F32, out, -2),
               InvalidArgument);
  View small = v;
  small.count = 11;
  EXPECT_THROW(cumulative(CumulativeOp::Sum, {3, 4}, small, 0, false, Type::F32, out),
               InvalidArgument);
  EXPECT_NO_THROW(cumulative(CumulativeOp::Sum, {3, 0}, v, 0, false, Type::F32, nullptr));
  EXPECT_NO_THROW(cumulative(CumulativeOp::Sum, {3, 4}, v, 0, false, Type::F32, out));
  EXPECT_EQ(out[8], 3.0f);
}

}  // namespace
}  // namespace nx_quant::dense
