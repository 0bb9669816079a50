// nx_quant::dense::reduce against a literal transcription of BinaryBackend's bin_reduce: the
// reduced elements of each output in row-major order, folded as its sum / product /
// reduce_max / reduce_min / all / any / argmax / argmin callbacks do.
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

// An integer element's exact value.
__int128 exact_int(const StridedTensor& t, size_t flat) {
  const int64_t v = t.i64(flat);
  if (t.view.type == Type::U64) return static_cast<__int128>(static_cast<uint64_t>(v));
  return v;
}

// BinaryBackend's non_finite_max / non_finite_min (clause by clause), then Kernel.max/min:
// :erlang.max(A, B) is B when A < B, else A (so the first of two equal values).
double nf_max(double a, double x) {
  if (std::isnan(a) || std::isnan(x)) return NAN;
  if (a == INFINITY || x == INFINITY) return INFINITY;
  if (a == -INFINITY) return x;
  if (x == -INFINITY) return a;
  return a < x ? x : a;
}
double nf_min(double a, double x) {
  if (std::isnan(a) || std::isnan(x)) return NAN;
  if (a == INFINITY) return x;
  if (x == INFINITY) return a;
  if (a == -INFINITY || x == -INFINITY) return -INFINITY;
  return a > x ? x : a;
}
// non_finite_gt(x, y) / non_finite_lt(x, y).
bool nf_gt(double x, double y) {
  if (std::isnan(x) || std::isnan(y)) return false;
  if (y == INFINITY) return false;
  if (x == INFINITY) return true;
  if (x == -INFINITY) return false;
  if (y == -INFINITY) return true;
  return x > y;
}
bool nf_lt(double x, double y) {
  if (std::isnan(x) || std::isnan(y)) return false;
  if (x == INFINITY) return false;
  if (y == INFINITY) return true;
  if (y == -INFINITY) return false;
  if (x == -INFINITY) return true;
  return x < y;
}

Buffer reference_reduce(ReduceOp op, const StridedTensor& t, const std::vector<int>& axes,
                        Type out_type, TieBreak tie) {
  const Shape& shape = t.shape;
  const int rank = static_cast<int>(shape.size());
  std::vector<bool> red(rank, false);
  for (int a : axes) red[a] = true;
  Shape kept, reduced;
  for (int a = 0; a < rank; ++a) (red[a] ? reduced : kept).push_back(shape[a]);
  size_t out_count = 1, r_count = 1;
  for (int64_t d : kept) out_count *= d;
  for (int64_t d : reduced) r_count *= d;
  Buffer out(out_type, out_count);
  const bool is_f = is_float_t(t.view.type);
  const bool in_unsigned = is_unsigned_t(t.view.type);
  for (size_t o = 0; o < out_count; ++o) {
    // The flat indices of this output's elements, row-major over the reduced axes.
    std::vector<size_t> elems;
    for (size_t r = 0; r < r_count; ++r) {
      std::vector<int64_t> idx(rank);
      size_t ko = o, ro = r;
      for (int a = rank; a-- > 0;) {
        if (red[a]) {
          idx[a] = static_cast<int64_t>(ro % shape[a]);
          ro /= shape[a];
        } else {
          idx[a] = static_cast<int64_t>(ko % shape[a]);
          ko /= shape[a];
        }
      }
      size_t flat = 0;
      for (int a = 0; a < rank; ++a) flat = flat * shape[a] + idx[a];
      elems.push_back(flat);
    }
    switch (op) {
      case ReduceOp::Sum:
      case ReduceOp::Product: {
        const bool sum = op == ReduceOp::Sum;
        if (is_f) {
          double acc = sum ? 0 : 1;
          for (size_t e : elems) acc = sum ? t.d(e) + acc : t.d(e) * acc;
          write_double(out.data(), out_type, o, acc);
        } else {
          uint64_t acc = sum ? 0 : 1;
          for (size_t e : elems) {
            const uint64_t x = static_cast<uint64_t>(t.i64(e));
            acc = sum ? x + acc : x * acc;
          }
          write_int(out.data(), out_type, o, static_cast<int64_t>(acc), in_unsigned);
        }
        break;
      }
      case ReduceOp::Max:
      case ReduceOp::Min: {
        const bool mx = op == ReduceOp::Max;
        if (is_f) {
          double acc = t.d(elems[0]);
          for (size_t i = 1; i < elems.size(); ++i)
            acc = mx ? nf_max(acc, t.d(elems[i])) : nf_min(acc, t.d(elems[i]));
          write_double(out.data(), out_type, o, acc);
        } else {
          __int128 acc = exact_int(t, elems[0]);
          for (size_t i = 1; i < elems.size(); ++i) {
            const __int128 x = exact_int(t, elems[i]);
            if (mx ? acc < x : acc > x) acc = x;
          }
          write_int(out.data(), out_type, o, static_cast<int64_t>(acc), in_unsigned);
        }
        break;
      }
      case ReduceOp::All:
      case ReduceOp::Any: {
        int64_t acc = op == ReduceOp::All ? 1 : 0;
        for (size_t e : elems) {
          const bool nonzero = is_f ? t.d(e) != 0 : t.i64(e) != 0;
          if (op == ReduceOp::All && !nonzero) acc = 0;
          if (op == ReduceOp::Any && nonzero) acc = 1;
        }
        write_int(out.data(), out_type, o, acc, false);
        break;
      }
      case ReduceOp::ArgMax:
      case ReduceOp::ArgMin: {
        const bool mx = op == ReduceOp::ArgMax;
        int64_t cur_i = -1;
        double cur_d = 0;
        __int128 cur_n = 0;
        for (size_t i = 0; i < elems.size(); ++i) {
          bool take;
          if (is_f) {
            const double x = t.d(elems[i]);
            const bool cmp = mx ? nf_gt(x, cur_d) : nf_lt(x, cur_d);
            take = cur_i < 0 || std::isnan(x) || cmp || (tie == TieBreak::High && x == cur_d);
            if (take) cur_d = x;
          } else {
            const __int128 x = exact_int(t, elems[i]);
            const bool cmp = mx ? x > cur_n : x < cur_n;
            take = cur_i < 0 || cmp || (tie == TieBreak::High && x == cur_n);
            if (take) cur_n = x;
          }
          if (take) cur_i = static_cast<int64_t>(i);
        }
        write_int(out.data(), out_type, o, cur_i, false);
        break;
      }
    }
  }
  return out;
}

const ReduceOp kOps[] = {ReduceOp::Sum, ReduceOp::Product, ReduceOp::Max,    ReduceOp::Min,
                         ReduceOp::All, ReduceOp::Any,     ReduceOp::ArgMax, ReduceOp::ArgMin};

std::vector<Type> out_types(ReduceOp op, Type in) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Product:
      if (is_float_t(in)) return {in, Type::F64};
      return {is_unsigned_t(in) ? Type::U64 : Type::S64, in, Type::F32};
    case ReduceOp::Max:
    case ReduceOp::Min:
      return {in};
    case ReduceOp::All:
    case ReduceOp::Any:
      return {Type::U8};
    default:
      return {Type::S32, Type::U8, Type::S64};
  }
}

::testing::AssertionResult check(ReduceOp op, const StridedTensor& t, const std::vector<int>& axes,
                                 Type ot, TieBreak tie, int threads = 0) {
  const Buffer expected = reference_reduce(op, t, axes, ot, tie);
  Buffer actual(ot, expected.count());
  reduce(op, t.shape, t.view, axes, ot, actual.data(), tie, threads);
  auto r = same_bits(expected, actual, expected.count());
  if (!r) {
    r << " [op " << static_cast<int>(op) << " in " << type_name(t.view.type) << " "
      << shape_str(t.shape) << " axes";
    for (int a : axes) r << " " << a;
    r << " out " << type_name(ot) << " tie " << static_cast<int>(tie) << "]";
  }
  return r;
}

std::vector<std::vector<int>> axis_subsets(int rank) {
  std::vector<std::vector<int>> all;
  for (int mask = 0; mask < (1 << rank); ++mask) {
    std::vector<int> s;
    for (int a = 0; a < rank; ++a)
      if (mask & (1 << a)) s.push_back(a);
    all.push_back(s);
  }
  return all;
}

TEST(DenseReduce, EveryTypeOpAndAxes) {
  const Shape shapes[] = {{7}, {3, 4}, {2, 3, 5}, {2, 1, 3, 4}, {}};
  uint32_t seed = 1;
  for (Type t : kAllTypes)
    for (const Shape& shape : shapes)
      for (int layout = 0; layout < 4; ++layout) {
        const StridedTensor x = make_tensor(t, shape, seed++, layout, 0.1, 0.4);
        for (const auto& axes : axis_subsets(static_cast<int>(shape.size())))
          for (ReduceOp op : kOps)
            for (Type ot : out_types(op, t))
              for (TieBreak tie : {TieBreak::Low, TieBreak::High}) {
                if (op != ReduceOp::ArgMax && op != ReduceOp::ArgMin && tie == TieBreak::High)
                  continue;
                EXPECT_TRUE(check(op, x, axes, ot, tie));
              }
      }
}

// Large enough for several column groups / interleaved row groups and the threaded path.
TEST(DenseReduce, LargeShapes) {
  const Shape shapes[] = {{2048}, {3, 600}, {600, 5}, {70, 300}, {4, 65, 33}};
  uint32_t seed = 50;
  for (Type t : {Type::F32, Type::BF16, Type::F16, Type::F64, Type::S32, Type::U64})
    for (const Shape& shape : shapes)
      for (int layout : {0, 1, 2}) {
        const StridedTensor x = make_tensor(t, shape, seed++, layout, 0.01, 0.3);
        for (const auto& axes : axis_subsets(static_cast<int>(shape.size())))
          for (ReduceOp op : kOps)
            EXPECT_TRUE(
                check(op, x, axes, out_types(op, t)[0], seed % 2 ? TieBreak::High : TieBreak::Low));
      }
}

TEST(DenseReduce, ThreadCountDoesNotChangeResults) {
  for (Type t : {Type::F32, Type::BF16, Type::S16}) {
    const StridedTensor x = make_tensor(t, {300, 700}, 7, 0, 0.01, 0.3);
    for (const std::vector<int>& axes : {std::vector<int>{0}, {1}, {0, 1}})
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::ArgMin}) {
        const Type ot = out_types(op, t)[0];
        const size_t n = axes.size() == 2 ? 1 : axes[0] == 0 ? 700 : 300;
        Buffer one(ot, n), two(ot, n);
        reduce(op, x.shape, x.view, axes, ot, one.data(), TieBreak::Low, 1);
        reduce(op, x.shape, x.view, axes, ot, two.data(), TieBreak::Low, 2);
        EXPECT_TRUE(same_bits(one, two, n));
        EXPECT_TRUE(check(op, x, axes, ot, TieBreak::Low, 2));
      }
  }
}

template <typename T>
std::vector<T> run_1d(ReduceOp op, Type in_type, const std::vector<double>& values, Type out_type,
                      TieBreak tie = TieBreak::Low) {
  Buffer in(in_type, values.size());
  for (size_t i = 0; i < values.size(); ++i) write_double(in.data(), in_type, i, values[i]);
  T out{};
  reduce(op, {static_cast<int64_t>(values.size())},
         contiguous(in.data(), in_type, {static_cast<int64_t>(values.size())}), {0}, out_type, &out,
         tie);
  return {out};
}

TEST(DenseReduce, BinaryBackendCornerCases) {
  const double nan = NAN;
  // reduce_max keeps the first of -0.0 / 0.0; NaN absorbs; sums accumulate in double.
  EXPECT_TRUE(std::signbit(run_1d<float>(ReduceOp::Max, Type::F32, {-0.0, 0.0}, Type::F32)[0]));
  EXPECT_FALSE(std::signbit(run_1d<float>(ReduceOp::Max, Type::F32, {0.0, -0.0}, Type::F32)[0]));
  EXPECT_TRUE(std::signbit(run_1d<float>(ReduceOp::Min, Type::F32, {-0.0, 0.0}, Type::F32)[0]));
  EXPECT_TRUE(
      std::isnan(run_1d<float>(ReduceOp::Max, Type::F32, {1, nan, INFINITY}, Type::F32)[0]));
  EXPECT_TRUE(std::isnan(run_1d<float>(ReduceOp::Min, Type::F32, {-INFINITY, nan}, Type::F32)[0]));
  EXPECT_EQ(run_1d<float>(ReduceOp::Max, Type::F32, {-INFINITY, -INFINITY}, Type::F32)[0],
            -INFINITY);
  EXPECT_EQ(run_1d<float>(ReduceOp::Sum, Type::F32, {1e8, 1, -1e8}, Type::F32)[0], 1.0f);
  EXPECT_FALSE(std::signbit(run_1d<float>(ReduceOp::Sum, Type::F32, {-0.0}, Type::F32)[0]));
  EXPECT_TRUE(std::signbit(run_1d<float>(ReduceOp::Product, Type::F32, {-0.0}, Type::F32)[0]));
  uint32_t nan_bits;
  const float s = run_1d<float>(ReduceOp::Sum, Type::F32, {1, nan}, Type::F32)[0];
  std::memcpy(&nan_bits, &s, 4);
  EXPECT_EQ(nan_bits, 0x7FC00000u);
  // argmax: the last NaN whatever the tie break; ties by tie_break; +-0 are ties.
  EXPECT_EQ(run_1d<int32_t>(ReduceOp::ArgMax, Type::F32, {1, nan, 3, nan, 2}, Type::S32)[0], 3);
  EXPECT_EQ(run_1d<int32_t>(ReduceOp::ArgMin, Type::F32, {1, nan, 3, nan, 2}, Type::S32,
                            TieBreak::High)[0],
            3);
  EXPECT_EQ(run_1d<int32_t>(ReduceOp::ArgMax, Type::F32, {nan, 5, 7}, Type::S32)[0], 0);
  EXPECT_EQ(run_1d<int32_t>(ReduceOp::ArgMax, Type::F32, {2, 7, 1, 7}, Type::S32)[0], 1);
  EXPECT_EQ(
      run_1d<int32_t>(ReduceOp::ArgMax, Type::F32, {2, 7, 1, 7}, Type::S32, TieBreak::High)[0], 3);
  EXPECT_EQ(run_1d<int32_t>(ReduceOp::ArgMin, Type::F32, {0.0, -0.0}, Type::S32, TieBreak::High)[0],
            1);
  EXPECT_EQ(run_1d<int32_t>(ReduceOp::ArgMin, Type::F32, {-INFINITY, -INFINITY}, Type::S32)[0], 0);
  EXPECT_EQ(run_1d<uint8_t>(ReduceOp::All, Type::F32, {1, nan, -2}, Type::U8)[0], 1);
  EXPECT_EQ(run_1d<uint8_t>(ReduceOp::All, Type::F32, {1, -0.0, -2}, Type::U8)[0], 0);
  EXPECT_EQ(run_1d<uint8_t>(ReduceOp::Any, Type::F32, {0, -0.0, nan}, Type::U8)[0], 1);
  // Integers wrap; u64 compares unsigned.
  EXPECT_EQ(run_1d<int8_t>(ReduceOp::Sum, Type::S8, {100, 100}, Type::S8)[0], -56);
  std::vector<uint64_t> big = {1, 0x8000000000000000ull, 3};
  uint64_t mx = 0;
  reduce(ReduceOp::Max, {3}, contiguous(big.data(), Type::U64, {3}), {0}, Type::U64, &mx);
  EXPECT_EQ(mx, 0x8000000000000000ull);
}

TEST(DenseReduce, EmptyAxes) {
  std::vector<float> none;
  View v = contiguous(none.data(), Type::F32, {3, 0});
  v.data = &none;  // any non-null pointer: nothing is read
  float sums[3] = {7, 7, 7}, prods[3] = {7, 7, 7};
  reduce(ReduceOp::Sum, {3, 0}, v, {1}, Type::F32, sums);
  reduce(ReduceOp::Product, {3, 0}, v, {1}, Type::F32, prods);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(sums[i], 0.0f);
    EXPECT_EQ(prods[i], 1.0f);
  }
  uint8_t all = 7;
  reduce(ReduceOp::All, {3, 0}, v, {0, 1}, Type::U8, &all);
  EXPECT_EQ(all, 1);
  EXPECT_THROW(reduce(ReduceOp::Max, {3, 0}, v, {1}, Type::F32, sums), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::ArgMin, {3, 0}, v, {0, 1}, Type::S32, sums), InvalidArgument);
  // Nothing to write: fine even for max.
  EXPECT_NO_THROW(reduce(ReduceOp::Max, {3, 0}, v, {0}, Type::F32, nullptr));
}

TEST(DenseReduce, RejectsBadArguments) {
  std::vector<float> buf(12, 1.0f);
  const View v = contiguous(buf.data(), Type::F32, {3, 4});
  float out[12];
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 4}, v, {2}, Type::F32, out), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 4}, v, {-1}, Type::F32, out), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 4}, v, {1, 0}, Type::F32, out), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 4}, v, {1, 1}, Type::F32, out), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 4}, v, {0}, Type::F32, nullptr), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 4}, v, {0}, Type::F32, out, TieBreak::Low, -1),
               InvalidArgument);
  EXPECT_THROW(reduce(static_cast<ReduceOp>(99), {3, 4}, v, {0}, Type::F32, out), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::ArgMax, {3, 4}, v, {0}, Type::S32, out, static_cast<TieBreak>(7)),
               InvalidArgument);
  View small = v;
  small.count = 11;
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 4}, small, {0}, Type::F32, out), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, 5}, v, {0}, Type::F32, out), InvalidArgument);
  EXPECT_THROW(reduce(ReduceOp::Sum, {3, -4}, v, {0}, Type::F32, out), InvalidArgument);
  EXPECT_NO_THROW(reduce(ReduceOp::Sum, {3, 4}, v, {0}, Type::F32, out));
  EXPECT_EQ(out[0], 3.0f);
}

}  // namespace
}  // namespace nx_quant::dense
