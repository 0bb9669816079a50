// Reductions (sum, product, max, min, all, any, argmax, argmin) with BinaryBackend's semantics.
//
// BinaryBackend (bin_reduce over aggregate_axes) visits the reduced elements of each output in
// row-major order over the reduced axes and folds them into an accumulator:
//   sum:     acc = x + acc from 0, product: acc = x * acc from 1 (double for floats, exact
//            integers otherwise: here wrapping 64 bits, u64 as unsigned), written to out_type;
//   max/min: the first element, then Kernel.max(acc, x) / min (x replaces acc only when
//            strictly greater / smaller, so of -0.0 and 0.0 the first stays), NaN absorbing;
//   all/any: 1 / 0, then 0 on a zero (all) / 1 on a non-zero (any); NaN is non-zero;
//   argmax/argmin: the index of the first element, replaced by a later one when it is NaN or
//            compares strictly greater / smaller (tie_break :low) or greater-or-equal /
//            smaller-or-equal (:high); a NaN current value is replaced only by a later NaN, so
//            the result is the last NaN when there is one.
// Each output is one sequential chain here too: outputs are processed in groups whose lanes
// are independent (vectorized across outputs along a leading axis, interleaved chains along
// the last), and each group is computed inside one work item (independent of threads).
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "element.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "parallel.h"
#include "view.h"

namespace nx_quant::dense {

namespace {

constexpr int kColumnGroup = 256;  // outputs per group when they are close in memory
constexpr int kRowGroup = 8;       // interleaved chains when each output's elements are close

template <Type T>
using Value =
    std::conditional_t<detail::is_float_type(T), double,
                       std::conditional_t<detail::is_unsigned_type(T), uint64_t, int64_t>>;

template <Type T>
inline Value<T> load_value(const void* data, int64_t i) {
  if constexpr (detail::is_float_type(T))
    return detail::load_double<T>(data, i);
  else
    return static_cast<Value<T>>(detail::load_int<T>(data, i));
}

// Policies: S state, init(), step(s, x, r), result(s) -> double (kDoubleResult) or int64.
template <Type T>
struct SumOp {
  static constexpr bool kDoubleResult = detail::is_float_type(T);
  using S = std::conditional_t<kDoubleResult, double, uint64_t>;
  static S init() { return S(0); }
  static void step(S& s, Value<T> x, int64_t) {
    if constexpr (kDoubleResult)
      s = x + s;
    else
      s += static_cast<uint64_t>(x);
  }
  static auto result(const S& s) {
    if constexpr (kDoubleResult)
      return s;
    else
      return static_cast<int64_t>(s);
  }
};

template <Type T>
struct ProductOp {
  static constexpr bool kDoubleResult = detail::is_float_type(T);
  using S = std::conditional_t<kDoubleResult, double, uint64_t>;
  static S init() { return S(1); }
  static void step(S& s, Value<T> x, int64_t) {
    if constexpr (kDoubleResult)
      s = x * s;
    else
      s *= static_cast<uint64_t>(x);
  }
  static auto result(const S& s) {
    if constexpr (kDoubleResult)
      return s;
    else
      return static_cast<int64_t>(s);
  }
};

// Max (kMax) or min. The initial value is replaced by any first element (-inf by anything but
// -inf itself, which is the same value), so it stands for BinaryBackend's :first.
template <Type T, bool kMax>
struct ExtremeOp {
  static constexpr bool kDoubleResult = detail::is_float_type(T);
  using S = Value<T>;
  static S init() {
    if constexpr (kDoubleResult)
      return kMax ? -std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::infinity();
    else
      return kMax ? std::numeric_limits<S>::lowest() : std::numeric_limits<S>::max();
  }
  static void step(S& s, S x, int64_t) {
    if constexpr (kDoubleResult) {
      // NaN absorbs; otherwise x replaces s only when strictly beyond it.
      const bool take = s == s && (x != x || (kMax ? s < x : s > x));
      s = take ? x : s;
    } else {
      s = (kMax ? s < x : s > x) ? x : s;
    }
  }
  static auto result(const S& s) {
    if constexpr (kDoubleResult)
      return s;
    else
      return static_cast<int64_t>(s);
  }
};

template <Type T, bool kAll>
struct LogicalOp {
  static constexpr bool kDoubleResult = false;
  using S = uint8_t;
  static S init() { return kAll ? 1 : 0; }
  static void step(S& s, Value<T> x, int64_t) {
    const S nonzero = x != 0;  // a float NaN is non-zero
    s = kAll ? (s & nonzero) : (s | nonzero);
  }
  static int64_t result(const S& s) { return s; }
};

template <typename V>
struct ArgState {
  V v;
  int64_t i;
};

template <Type T, bool kMax, bool kHigh>
struct ArgOp {
  static constexpr bool kDoubleResult = false;
  using S = ArgState<Value<T>>;
  static S init() { return S{Value<T>(0), -1}; }
  static void step(S& s, Value<T> x, int64_t r) {
    bool better;
    if constexpr (kHigh)
      better = kMax ? x >= s.v : x <= s.v;
    else
      better = kMax ? x > s.v : x < s.v;
    bool take = s.i < 0 || better;
    if constexpr (detail::is_float_type(T)) take = take || x != x;
    if (take) {
      s.v = x;
      s.i = r;
    }
  }
  static int64_t result(const S& s) { return s.i; }
};

// The iteration: outputs are the kept axes row-major; the last kept axis (length `lanes_total`,
// stride `ks`) is cut into groups of up to `group` lanes. Each output reduces the reduced axes
// row-major: outer reduced axes (odometer) then the inner one (`r_inner`, stride `rs`).
struct Plan {
  std::vector<int64_t> outer_dims, outer_strides;  // kept axes but the last
  int64_t lanes_total = 1, ks = 0;
  std::vector<int64_t> rdims, rstrides;  // reduced axes but the last
  int64_t r_inner = 1, rs = 0;
  int64_t group = 1;
  int64_t groups_per_row = 1;
  size_t groups = 0;
  int64_t offset = 0;
};

template <typename Op, Type T>
void reduce_group(const Plan& p, const void* data, int64_t base, int64_t lanes,
                  typename Op::S* state) {
  for (int64_t g = 0; g < lanes; ++g) state[g] = Op::init();
  const int rrank = static_cast<int>(p.rdims.size());
  int64_t index[detail::kMaxRank] = {};
  int64_t roff = 0;
  int64_t r = 0;
  const int64_t ks = p.ks, rs = p.rs, n_inner = p.r_inner;
  while (true) {
    const int64_t start = base + roff;
    if (lanes == 1) {
      typename Op::S s = state[0];
      for (int64_t ri = 0; ri < n_inner; ++ri)
        Op::step(s, load_value<T>(data, start + ri * rs), r + ri);
      state[0] = s;
    } else if (ks == 1) {
      for (int64_t ri = 0; ri < n_inner; ++ri) {
        const int64_t at = start + ri * rs;
        for (int64_t g = 0; g < lanes; ++g) Op::step(state[g], load_value<T>(data, at + g), r + ri);
      }
    } else {
      for (int64_t ri = 0; ri < n_inner; ++ri) {
        const int64_t at = start + ri * rs;
        for (int64_t g = 0; g < lanes; ++g)
          Op::step(state[g], load_value<T>(data, at + g * ks), r + ri);
      }
    }
    r += n_inner;
    int axis = rrank - 1;
    for (; axis >= 0; --axis) {
      roff += p.rstrides[axis];
      if (++index[axis] < p.rdims[axis]) break;
      roff -= index[axis] * p.rstrides[axis];
      index[axis] = 0;
    }
    if (axis < 0) break;
  }
}

using WriteDoubleFn = void (*)(void*, int64_t, const double*, int64_t);
using WriteIntFn = void (*)(void*, int64_t, const int64_t*, int64_t, bool);

template <Type O>
void write_doubles(void* out, int64_t first, const double* v, int64_t count) {
  for (int64_t i = 0; i < count; ++i) detail::store_double<O>(out, first + i, v[i]);
}

template <Type O>
void write_ints(void* out, int64_t first, const int64_t* v, int64_t count, bool is_unsigned) {
  for (int64_t i = 0; i < count; ++i) detail::store_int<O>(out, first + i, v[i], is_unsigned);
}

template <typename Op, Type T>
void run(const Plan& p, const View& in, Type out_type, void* out, int threads) {
  const WriteDoubleFn write_d = detail::with_type(
      out_type, [](auto t) -> WriteDoubleFn { return &write_doubles<decltype(t)::value>; });
  const WriteIntFn write_i = detail::with_type(
      out_type, [](auto t) -> WriteIntFn { return &write_ints<decltype(t)::value>; });
  const double work = static_cast<double>(p.groups) * p.group * p.r_inner *
                      static_cast<double>(element_count(p.rdims));
  const int use_threads = work < 131072.0 ? 1 : threads;
  // Integer sums/products of unsigned inputs convert to a float output as unsigned.
  const bool is_unsigned = detail::is_unsigned_type(T) && std::is_same_v<typename Op::S, uint64_t>;
  nx_quant::detail::parallel_for(p.groups, 1, use_threads, [&](size_t begin, size_t end) {
    typename Op::S state[kColumnGroup];
    double res_d[kColumnGroup];
    int64_t res_i[kColumnGroup];
    for (size_t item = begin; item < end; ++item) {
      const int64_t outer = static_cast<int64_t>(item) / p.groups_per_row;
      const int64_t j0 = static_cast<int64_t>(item) % p.groups_per_row * p.group;
      const int64_t lanes = std::min(p.group, p.lanes_total - j0);
      int64_t base = p.offset + j0 * p.ks;
      int64_t rest = outer;
      for (size_t axis = p.outer_dims.size(); axis-- > 0;) {
        base += rest % p.outer_dims[axis] * p.outer_strides[axis];
        rest /= p.outer_dims[axis];
      }
      reduce_group<Op, T>(p, in.data, base, lanes, state);
      const int64_t first = outer * p.lanes_total + j0;
      if constexpr (Op::kDoubleResult) {
        for (int64_t g = 0; g < lanes; ++g) res_d[g] = Op::result(state[g]);
        write_d(out, first, res_d, lanes);
      } else {
        for (int64_t g = 0; g < lanes; ++g) res_i[g] = Op::result(state[g]);
        write_i(out, first, res_i, lanes, is_unsigned);
      }
    }
  });
}

template <Type T>
void dispatch(ReduceOp op, TieBreak tie, const Plan& p, const View& in, Type out_type, void* out,
              int threads) {
  const bool high = tie == TieBreak::High;
  switch (op) {
    case ReduceOp::Sum:
      return run<SumOp<T>, T>(p, in, out_type, out, threads);
    case ReduceOp::Product:
      return run<ProductOp<T>, T>(p, in, out_type, out, threads);
    case ReduceOp::Max:
      return run<ExtremeOp<T, true>, T>(p, in, out_type, out, threads);
    case ReduceOp::Min:
      return run<ExtremeOp<T, false>, T>(p, in, out_type, out, threads);
    case ReduceOp::All:
      return run<LogicalOp<T, true>, T>(p, in, out_type, out, threads);
    case ReduceOp::Any:
      return run<LogicalOp<T, false>, T>(p, in, out_type, out, threads);
    case ReduceOp::ArgMax:
      return high ? run<ArgOp<T, true, true>, T>(p, in, out_type, out, threads)
                  : run<ArgOp<T, true, false>, T>(p, in, out_type, out, threads);
    case ReduceOp::ArgMin:
      return high ? run<ArgOp<T, false, true>, T>(p, in, out_type, out, threads)
                  : run<ArgOp<T, false, false>, T>(p, in, out_type, out, threads);
  }
}

const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Product:
      return "product";
    case ReduceOp::Max:
      return "reduce_max";
    case ReduceOp::Min:
      return "reduce_min";
    case ReduceOp::All:
      return "all";
    case ReduceOp::Any:
      return "any";
    case ReduceOp::ArgMax:
      return "argmax";
    case ReduceOp::ArgMin:
      return "argmin";
  }
  return nullptr;
}

// Appends (dim, stride) to a row-major axis list, dropping size-1 axes and merging an axis
// into the previous one when together they step like one.
void push_axis(std::vector<int64_t>& dims, std::vector<int64_t>& strides, int64_t dim,
               int64_t stride) {
  if (dim == 1) return;
  if (!dims.empty() && strides.back() == stride * dim) {
    dims.back() *= dim;
    strides.back() = stride;
    return;
  }
  dims.push_back(dim);
  strides.push_back(stride);
}

}  // namespace

void reduce(ReduceOp op, const Shape& in_shape, const View& in, const std::vector<int>& axes,
            Type out_type, void* out, TieBreak tie_break, int threads) {
  const char* name = op_name(op);
  if (name == nullptr) throw InvalidArgument("reduce: unknown operation");
  const std::string what = std::string("reduce (") + name + ")";
  if (tie_break != TieBreak::Low && tie_break != TieBreak::High)
    throw InvalidArgument(what + ": unknown tie_break");
  if (threads < 0) throw InvalidArgument(what + ": threads must be >= 0");
  detail::check_shape(in_shape, (what + ": input").c_str());
  detail::check_view(in, in_shape, (what + ": input").c_str());
  type_size(in.type);
  type_size(out_type);
  const int rank = static_cast<int>(in_shape.size());
  std::vector<bool> reduced(rank, false);
  for (size_t i = 0; i < axes.size(); ++i) {
    if (axes[i] < 0 || axes[i] >= rank)
      throw InvalidArgument(what + ": axis " + std::to_string(axes[i]) + " out of range for rank " +
                            std::to_string(rank));
    if (i > 0 && axes[i] <= axes[i - 1])
      throw InvalidArgument(what + ": axes must be sorted and distinct");
    reduced[axes[i]] = true;
  }

  Plan p;
  p.offset = in.offset;
  std::vector<int64_t> kdims, kstrides, rdims, rstrides;
  int64_t out_count = 1, r_count = 1;
  for (int axis = 0; axis < rank; ++axis) {
    if (reduced[axis]) {
      r_count *= in_shape[axis];
      push_axis(rdims, rstrides, in_shape[axis], in.strides[axis]);
    } else {
      out_count *= in_shape[axis];
      push_axis(kdims, kstrides, in_shape[axis], in.strides[axis]);
    }
  }
  if (out_count == 0) return;
  if (r_count == 0 && (op == ReduceOp::Max || op == ReduceOp::Min || op == ReduceOp::ArgMax ||
                       op == ReduceOp::ArgMin))
    throw InvalidArgument(what + ": cannot reduce an empty axis (no first element)");
  if (out == nullptr) throw InvalidArgument(what + ": no output buffer");

  if (r_count == 0) {
    rdims.assign(1, 0);  // the walk visits nothing: the initial values are written
    rstrides.assign(1, 0);
  }
  if (!kdims.empty()) {
    p.lanes_total = kdims.back();
    p.ks = kstrides.back();
    kdims.pop_back();
    kstrides.pop_back();
  }
  p.outer_dims = kdims;
  p.outer_strides = kstrides;
  if (!rdims.empty()) {
    p.r_inner = rdims.back();
    p.rs = rstrides.back();
    rdims.pop_back();
    rstrides.pop_back();
  }
  p.rdims = rdims;
  p.rstrides = rstrides;
  const bool close_lanes =
      p.lanes_total > 1 && (p.r_inner == 1 || std::llabs(p.ks) <= std::llabs(p.rs));
  p.group = std::min<int64_t>(p.lanes_total, close_lanes ? kColumnGroup : kRowGroup);
  p.groups_per_row = (p.lanes_total + p.group - 1) / p.group;
  p.groups = static_cast<size_t>(out_count / p.lanes_total * p.groups_per_row);

  detail::with_type(in.type, [&](auto t) {
    dispatch<decltype(t)::value>(op, tie_break, p, in, out_type, out, threads);
  });
}

}  // namespace nx_quant::dense
