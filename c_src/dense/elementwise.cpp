// Element-wise kernels: unary, binary, select, clip (dense_ops.h), with Nx.BinaryBackend's
// semantics (unary_ops.h, binary_ops.h).
//
// Each call picks one compute domain from the operand and output types:
//   F32  — f16/bf16/f32 operands, an op that is exact in f32 or a single correctly rounded
//          operation whose output type makes the f32 result BinaryBackend's (element.h);
//   F64  — any other op with a float operand (integers converted to double, as Erlang does);
//   I64  — integer operands, no u64, integer output: exact in wrapping 64-bit arithmetic;
//   I128 — integer operands with a u64 or a float output: exact 128-bit values;
//   Num  — integers compared with floats where the integer may not be exact in double (s64,
//          u64), and integer pow into a float output: one exact value per element.
// The first four load strided runs into small buffers of the compute type, compute, and store
// with BinaryBackend's rounding; same-type f32/bf16/f16 add/subtract/multiply/divide/max/min
// skip the buffers (AVX2 runs from elementwise_avx2.cpp where the CPU has them). Value checks
// that BinaryBackend raises for (integer division by zero, negative shifts and integer
// exponents) run before anything is written.
#include <algorithm>
#include <array>
#include <string>

#include "binary_ops.h"
#include "copy.h"
#include "element.h"
#include "elementwise_runs.h"
#include "elementwise_simd.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "unary_ops.h"
#include "view.h"

namespace nx_quant::dense {
namespace detail {
namespace {

enum class Domain { F32, F64, I64, I128, Num };

const char* binary_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add:
      return "add";
    case BinaryOp::Subtract:
      return "subtract";
    case BinaryOp::Multiply:
      return "multiply";
    case BinaryOp::Divide:
      return "divide";
    case BinaryOp::Pow:
      return "pow";
    case BinaryOp::Max:
      return "max";
    case BinaryOp::Min:
      return "min";
    case BinaryOp::Quotient:
      return "quotient";
    case BinaryOp::Remainder:
      return "remainder";
    case BinaryOp::Atan2:
      return "atan2";
    case BinaryOp::Equal:
      return "equal";
    case BinaryOp::NotEqual:
      return "not_equal";
    case BinaryOp::Less:
      return "less";
    case BinaryOp::LessEqual:
      return "less_equal";
    case BinaryOp::Greater:
      return "greater";
    case BinaryOp::GreaterEqual:
      return "greater_equal";
    case BinaryOp::LogicalAnd:
      return "logical_and";
    case BinaryOp::LogicalOr:
      return "logical_or";
    case BinaryOp::LogicalXor:
      return "logical_xor";
    case BinaryOp::BitwiseAnd:
      return "bitwise_and";
    case BinaryOp::BitwiseOr:
      return "bitwise_or";
    case BinaryOp::BitwiseXor:
      return "bitwise_xor";
    case BinaryOp::LeftShift:
      return "left_shift";
    case BinaryOp::RightShift:
      return "right_shift";
  }
  return "binary";
}

constexpr bool is_wide_int(Type t) {
  return t == Type::S64 || t == Type::U64;
}

// ---- the buffered engine ---------------------------------------------------------------------

// Same-type f32 / bf16 / f16 arithmetic straight from the buffers (vectorizable inner loops).
template <BinaryOp Op, Type T>
void fused_run(const storage_t<T>* a, int64_t sa, const storage_t<T>* b, int64_t sb,
               storage_t<T>* out, int64_t n) {
  auto f = [](storage_t<T> x, storage_t<T> y) {
    storage_t<T> r;
    store_float<T>(&r, 0, binary_float<Op, float>(load_float<T>(&x, 0), load_float<T>(&y, 0)));
    return r;
  };
  if (sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
  } else if (sa == 1 && sb == 0) {
    const storage_t<T> y = b[0];
    for (int64_t i = 0; i < n; ++i) out[i] = f(a[i], y);
  } else if (sa == 0 && sb == 1) {
    const storage_t<T> x = a[0];
    for (int64_t i = 0; i < n; ++i) out[i] = f(x, b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = f(a[i * sa], b[i * sb]);
  }
}

template <BinaryOp Op, Type T>
void run_fused(const Runs<3>& walk, const View& a, const View& b, void* out, int threads) {
  const auto* pa = static_cast<const storage_t<T>*>(a.data);
  const auto* pb = static_cast<const storage_t<T>*>(b.data);
  auto* po = static_cast<storage_t<T>*>(out);
  const SimdBinaryRun simd = simd_binary_run(Op, T);
  run_split(walk.count, kCheapCost, threads, [&](size_t begin, size_t end) {
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      if (simd && (inner[0] == 0 || inner[0] == 1) && (inner[1] == 0 || inner[1] == 1) &&
          inner[2] == 1)
        simd(pa + off[0], inner[0], pb + off[1], inner[1], po + off[2], len);
      else
        fused_run<Op, T>(pa + off[0], inner[0], pb + off[1], inner[1], po + off[2], len);
    });
  });
}

template <BinaryOp Op, class C>
C apply_binary(C a, C b) {
  if constexpr (std::is_floating_point_v<C>)
    return binary_float<Op, C>(a, b);
  else
    return binary_int<Op, C>(a, b);
}

template <BinaryOp Op, class C>
void run_binary_buffered(const Runs<3>& walk, const View& a, const View& b, Type out_type,
                         void* out, int threads) {
  const LoadRunFn<C> la = loader_for<C>(a.type);
  const LoadRunFn<C> lb = loader_for<C>(b.type);
  const StoreRunFn<C> st = storer_for<C>(out_type);
  const size_t cost =
      (Op == BinaryOp::Pow || Op == BinaryOp::Atan2) ? kTranscendentalCost : kCheapCost;
  run_split(walk.count, cost, threads, [&](size_t begin, size_t end) {
    alignas(64) C ba[kChunk], bb[kChunk], br[kChunk];
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      for (int64_t k = 0; k < len; k += kChunk) {
        const int64_t n = std::min(kChunk, len - k);
        la(a.data, off[0] + k * inner[0], inner[0], n, ba);
        lb(b.data, off[1] + k * inner[1], inner[1], n, bb);
        for (int64_t i = 0; i < n; ++i) br[i] = apply_binary<Op, C>(ba[i], bb[i]);
        st(out, off[2] + k * inner[2], inner[2], n, br);
      }
    });
  });
}

// ---- exact mixed values ----------------------------------------------------------------------

Num load_num(Type t, const void* data, int64_t i) {
  return with_type(t, [&](auto tc) {
    constexpr Type T = decltype(tc)::value;
    if constexpr (is_float_type(T))
      return Num::of_float(load_double<T>(data, i));
    else
      return Num::of_int(static_cast<int128>(static_cast<const storage_t<T>*>(data)[i]));
  });
}

void store_num(Type t, void* out, int64_t i, const Num& v) {
  with_type(t, [&](auto tc) {
    constexpr Type T = decltype(tc)::value;
    if (v.is_int)
      store_as<T, int128>(out, i, v.i);
    else
      store_double<T>(out, i, v.f);
  });
}

template <BinaryOp Op>
Num binary_num(const Num& a, const Num& b) {
  if constexpr (Op == BinaryOp::Divide || Op == BinaryOp::Atan2) {
    return Num::of_float(binary_float<Op, double>(a.as_double(), b.as_double()));
  } else if constexpr (Op == BinaryOp::Pow) {
    // Complex.pow into a float output: Integer.pow for integers and a non-negative integer
    // exponent (exact while it fits in 127 bits; beyond, pow() in double), else :math.pow;
    // -Inf to an integer power: the sign follows the exact exponent's parity.
    if (a.is_int && b.is_int && b.i >= 0) {
      int128 r = 1, base = a.i;
      for (int128 e = b.i;;) {
        if ((e & 1) && __builtin_mul_overflow(r, base, &r)) break;
        e >>= 1;
        if (e == 0) return Num::of_int(r);
        if (__builtin_mul_overflow(base, base, &base)) break;
      }
      return Num::of_float(std::pow(a.as_double(), b.as_double()));
    }
    if (!a.is_int && a.f == -std::numeric_limits<double>::infinity() && b.is_int && b.i > 0)
      return Num::of_float(b.i % 2 != 0 ? a.f : -a.f);
    return Num::of_float(float_pow(a.as_double(), b.as_double()));
  } else if (a.is_int && b.is_int) {
    return Num::of_int(binary_int<Op, int128>(a.i, b.i));
  } else if constexpr (Op == BinaryOp::Max || Op == BinaryOp::Min) {
    const int c = compare_num(a, b);
    if (c == 2) return Num::of_float(std::numeric_limits<double>::quiet_NaN());
    if constexpr (Op == BinaryOp::Max)
      return c < 0 ? b : a;
    else
      return c > 0 ? b : a;
  } else if constexpr (Op == BinaryOp::Equal || Op == BinaryOp::NotEqual || Op == BinaryOp::Less ||
                       Op == BinaryOp::LessEqual || Op == BinaryOp::Greater ||
                       Op == BinaryOp::GreaterEqual) {
    const int c = compare_num(a, b);
    bool r;
    if constexpr (Op == BinaryOp::Equal)
      r = c == 0;
    else if constexpr (Op == BinaryOp::NotEqual)
      r = c != 0;
    else if constexpr (Op == BinaryOp::Less)
      r = c == -1;
    else if constexpr (Op == BinaryOp::LessEqual)
      r = c == -1 || c == 0;
    else if constexpr (Op == BinaryOp::Greater)
      r = c == 1;
    else
      r = c == 1 || c == 0;
    return Num::of_int(r ? 1 : 0);
  } else if constexpr (Op == BinaryOp::LogicalAnd) {
    return Num::of_int(num_truthy(a) && num_truthy(b));
  } else if constexpr (Op == BinaryOp::LogicalOr) {
    return Num::of_int(num_truthy(a) || num_truthy(b));
  } else if constexpr (Op == BinaryOp::LogicalXor) {
    return Num::of_int(num_truthy(a) != num_truthy(b));
  } else if constexpr (Op == BinaryOp::Add || Op == BinaryOp::Subtract ||
                       Op == BinaryOp::Multiply || Op == BinaryOp::Remainder) {
    return Num::of_float(binary_float<Op, double>(a.as_double(), b.as_double()));
  } else {
    throw InvalidArgument(std::string(binary_name(Op)) + ": expects integer operands");
  }
}

template <BinaryOp Op>
void run_binary_num(const Runs<3>& walk, const View& a, const View& b, Type out_type, void* out,
                    int threads) {
  run_split(walk.count, kTranscendentalCost, threads, [&](size_t begin, size_t end) {
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      for (int64_t i = 0; i < len; ++i) {
        const Num x = load_num(a.type, a.data, off[0] + i * inner[0]);
        const Num y = load_num(b.type, b.data, off[1] + i * inner[1]);
        store_num(out_type, out, off[2] + i * inner[2], binary_num<Op>(x, y));
      }
    });
  });
}

// ---- domain choice and value checks ----------------------------------------------------------

Domain binary_domain(BinaryOp op, Type a, Type b, Type out) {
  const bool fa = is_float_type(a), fb = is_float_type(b);
  if (binary_integer_only(op) && (fa || fb))
    throw InvalidArgument(std::string(binary_name(op)) + ": expects integer operands, got " +
                          type_name(a) + " and " + type_name(b));
  if (!fa && !fb) {
    if (op == BinaryOp::Divide || op == BinaryOp::Atan2) return Domain::F64;
    if (op == BinaryOp::Pow && is_float_type(out)) return Domain::Num;
    if (a == Type::U64 || b == Type::U64 || is_float_type(out)) return Domain::I128;
    return Domain::I64;
  }
  if ((binary_compares(op) || op == BinaryOp::Pow) && (is_wide_int(a) || is_wide_int(b)))
    return Domain::Num;
  if (is_narrow_float(a) && is_narrow_float(b)) {
    if (binary_exact_in_float(op)) return Domain::F32;
    if (binary_rounded_in_float(op) && (out == Type::F32 || out == Type::BF16 ||
                                        (out == Type::F16 && a == Type::F16 && b == Type::F16)))
      return Domain::F32;
  }
  return Domain::F64;
}

// BinaryBackend raises for these integer operands; the check runs before anything is written.
void check_int_operand(BinaryOp op, const Shape& shape, const View& b, Type out_type) {
  const bool zero_bad = op == BinaryOp::Quotient || op == BinaryOp::Remainder;
  const bool shift = op == BinaryOp::LeftShift || op == BinaryOp::RightShift;
  const bool neg_pow = op == BinaryOp::Pow && !is_float_type(out_type);
  if (!zero_bad && !shift && !neg_pow) return;
  const bool can_be_negative = is_signed_int(b.type);
  if (!zero_bad && !can_be_negative) return;
  const LoadRunFn<int64_t> load = loader_for<int64_t>(b.type);
  const StridedWalk<1> walk(shape, {&b.strides}, {b.offset});
  alignas(64) int64_t buf[kChunk];
  walk.for_each_run(0, walk.count, [&](const auto& off, int64_t len, const auto& inner, size_t) {
    for (int64_t k = 0; k < len; k += kChunk) {
      const int64_t n = std::min(kChunk, len - k);
      load(b.data, off[0] + k * inner[0], inner[0], n, buf);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t v = buf[i];
        if (zero_bad && v == 0)
          throw InvalidArgument(std::string(binary_name(op)) + ": integer division by zero");
        if (can_be_negative && v < 0) {
          if (shift)
            throw InvalidArgument(std::string(binary_name(op)) + ": cannot " +
                                  (op == BinaryOp::LeftShift ? "left" : "right") + " shift by " +
                                  std::to_string(v));
          if (neg_pow)
            throw InvalidArgument("pow: negative exponent " + std::to_string(v) +
                                  " for an integer result");
        }
      }
    }
  });
}

template <BinaryOp Op>
void binary_op(const Shape& shape, const View& a, const View& b, Type out_type, void* out,
               int threads) {
  const Domain domain = binary_domain(Op, a.type, b.type, out_type);
  if (domain == Domain::I64 || domain == Domain::I128) check_int_operand(Op, shape, b, out_type);
  const Runs<3> walk(shape, {&a, &b});
  switch (domain) {
    case Domain::F32:
      if constexpr (Op == BinaryOp::Add || Op == BinaryOp::Subtract || Op == BinaryOp::Multiply ||
                    Op == BinaryOp::Divide || Op == BinaryOp::Max || Op == BinaryOp::Min) {
        if (a.type == b.type && a.type == out_type && a.type == Type::F32)
          return run_fused<Op, Type::F32>(walk, a, b, out, threads);
        if (a.type == b.type && a.type == out_type && a.type == Type::BF16)
          return run_fused<Op, Type::BF16>(walk, a, b, out, threads);
        if (a.type == b.type && a.type == out_type && a.type == Type::F16)
          return run_fused<Op, Type::F16>(walk, a, b, out, threads);
      }
      if constexpr (binary_exact_in_float(Op) || binary_rounded_in_float(Op))
        return run_binary_buffered<Op, float>(walk, a, b, out_type, out, threads);
      break;
    case Domain::F64:
      if constexpr (!binary_integer_only(Op))
        return run_binary_buffered<Op, double>(walk, a, b, out_type, out, threads);
      break;
    case Domain::I64:
      if constexpr (Op != BinaryOp::Divide && Op != BinaryOp::Atan2)
        return run_binary_buffered<Op, int64_t>(walk, a, b, out_type, out, threads);
      break;
    case Domain::I128:
      if constexpr (Op != BinaryOp::Divide && Op != BinaryOp::Atan2)
        return run_binary_buffered<Op, int128>(walk, a, b, out_type, out, threads);
      break;
    case Domain::Num:
      return run_binary_num<Op>(walk, a, b, out_type, out, threads);
  }
  throw InvalidArgument(std::string(binary_name(Op)) + ": unsupported operand types");
}

// ---- unary -----------------------------------------------------------------------------------

template <UnaryOp Op, class C>
void run_unary_buffered(const Runs<2>& walk, const View& in, Type out_type, void* out,
                        int threads) {
  const LoadRunFn<C> load = loader_for<C>(in.type);
  const StoreRunFn<C> st = storer_for<C>(out_type);
  const size_t cost = unary_is_transcendental(Op) ? kTranscendentalCost : kCheapCost;
  // exp and sigmoid written as f32/bf16/f16 (a softmax, SwiGLU) take the SIMD exp in double:
  // within 1 ulp of those roundings of the C library's result (elementwise_simd.h).
  constexpr bool kExpLike = Op == UnaryOp::Exp || Op == UnaryOp::Sigmoid;
  const bool simd_exp = kExpLike && std::is_same_v<C, double> && is_narrow_float(out_type);
  run_split(walk.count, cost, threads, [&](size_t begin, size_t end) {
    alignas(64) C buf[kChunk];
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      if constexpr (kExpLike && std::is_same_v<C, double>) {
        if (simd_exp && in.type == Type::F32 && out_type == Type::F32 && inner[0] == 1 &&
            inner[1] == 1 &&
            simd_exp_f32(static_cast<const float*>(in.data) + off[0],
                         static_cast<float*>(out) + off[1], len, Op == UnaryOp::Sigmoid))
          return;
      }
      for (int64_t k = 0; k < len; k += kChunk) {
        const int64_t n = std::min(kChunk, len - k);
        load(in.data, off[0] + k * inner[0], inner[0], n, buf);
        if constexpr (kExpLike && std::is_same_v<C, double>) {
          if (simd_exp && simd_exp_doubles(buf, n, Op == UnaryOp::Sigmoid)) {
            st(out, off[1] + k * inner[1], inner[1], n, buf);
            continue;
          }
        }
        if constexpr (std::is_floating_point_v<C>) {
          for (int64_t i = 0; i < n; ++i) buf[i] = unary_float<Op, C>(buf[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) buf[i] = unary_int<Op, C>(buf[i]);
        }
        st(out, off[1] + k * inner[1], inner[1], n, buf);
      }
    });
  });
}

template <UnaryOp Op>
void unary_op(const Shape& shape, const View& in, Type out_type, void* out, int threads) {
  const Runs<2> walk(shape, {&in});
  if (!is_float_type(in.type)) {
    if constexpr (unary_int_op(Op)) {
      if (in.type == Type::U64 || is_float_type(out_type))
        return run_unary_buffered<Op, int128>(walk, in, out_type, out, threads);
      return run_unary_buffered<Op, int64_t>(walk, in, out_type, out, threads);
    } else {
      return run_unary_buffered<Op, double>(walk, in, out_type, out, threads);
    }
  }
  if constexpr (Op == UnaryOp::BitwiseNot) {
    throw InvalidArgument(std::string("bitwise_not: expects an integer operand, got ") +
                          type_name(in.type));
  } else if constexpr (unary_exact_in_float(Op) || Op == UnaryOp::Sqrt) {
    if (is_narrow_float(in.type) &&
        (unary_exact_in_float(Op) || out_type == Type::F32 || out_type == Type::BF16 ||
         (out_type == Type::F16 && in.type == Type::F16)))
      return run_unary_buffered<Op, float>(walk, in, out_type, out, threads);
    return run_unary_buffered<Op, double>(walk, in, out_type, out, threads);
  } else {
    return run_unary_buffered<Op, double>(walk, in, out_type, out, threads);
  }
}

void validate_common(const Shape& shape, Type out_type, const void* out, const char* what) {
  check_shape(shape, what);
  check_type(out_type, what);
  check_out(out, element_count(shape), what);
}

void validate_input(const View& v, const Shape& shape, const char* what) {
  check_type(v.type, what);
  check_view(v, shape, what);
}

// ---- select and clip -------------------------------------------------------------------------

// Clip in a buffered domain: c = x > lo ? x : lo; r = c < hi ? c : hi (NaN compares false).
template <class C>
void run_clip_buffered(const Runs<4>& walk, const View& in, const View& lo, const View& hi,
                       Type out_type, void* out, int threads) {
  const LoadRunFn<C> lx = loader_for<C>(in.type);
  const LoadRunFn<C> ll = loader_for<C>(lo.type);
  const LoadRunFn<C> lh = loader_for<C>(hi.type);
  const StoreRunFn<C> st = storer_for<C>(out_type);
  run_split(walk.count, kCheapCost, threads, [&](size_t begin, size_t end) {
    alignas(64) C bx[kChunk], bl[kChunk], bh[kChunk];
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      for (int64_t k = 0; k < len; k += kChunk) {
        const int64_t n = std::min(kChunk, len - k);
        lx(in.data, off[0] + k * inner[0], inner[0], n, bx);
        ll(lo.data, off[1] + k * inner[1], inner[1], n, bl);
        lh(hi.data, off[2] + k * inner[2], inner[2], n, bh);
        for (int64_t i = 0; i < n; ++i) {
          const C c = bx[i] > bl[i] ? bx[i] : bl[i];
          bx[i] = c < bh[i] ? c : bh[i];
        }
        st(out, off[3] + k * inner[3], inner[3], n, bx);
      }
    });
  });
}

void run_clip_num(const Runs<4>& walk, const View& in, const View& lo, const View& hi,
                  Type out_type, void* out, int threads) {
  run_split(walk.count, kTranscendentalCost, threads, [&](size_t begin, size_t end) {
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      for (int64_t i = 0; i < len; ++i) {
        const Num x = load_num(in.type, in.data, off[0] + i * inner[0]);
        const Num l = load_num(lo.type, lo.data, off[1] + i * inner[1]);
        const Num h = load_num(hi.type, hi.data, off[2] + i * inner[2]);
        const Num c = compare_num(x, l) == 1 ? x : l;
        store_num(out_type, out, off[3] + i * inner[3], compare_num(c, h) == -1 ? c : h);
      }
    });
  });
}

}  // namespace
}  // namespace detail

void unary(UnaryOp op, const Shape& shape, const View& in, Type out_type, void* out, int threads) {
  using namespace detail;
  validate_common(shape, out_type, out, "unary");
  validate_input(in, shape, "unary: input");
  if (element_count(shape) == 0) return;
  switch (op) {
    case UnaryOp::Copy:
      return copy_strided(shape, in, out_type, out, element_count(shape), 0,
                          contiguous_strides(shape), threads);
#define NXQ_UNARY_CASE(name) \
  case UnaryOp::name:        \
    return unary_op<UnaryOp::name>(shape, in, out_type, out, threads);
      NXQ_UNARY_CASE(Negate)
      NXQ_UNARY_CASE(Abs)
      NXQ_UNARY_CASE(Sign)
      NXQ_UNARY_CASE(Floor)
      NXQ_UNARY_CASE(Ceil)
      NXQ_UNARY_CASE(Round)
      NXQ_UNARY_CASE(Exp)
      NXQ_UNARY_CASE(Expm1)
      NXQ_UNARY_CASE(Log)
      NXQ_UNARY_CASE(Log1p)
      NXQ_UNARY_CASE(Sigmoid)
      NXQ_UNARY_CASE(Tanh)
      NXQ_UNARY_CASE(Sqrt)
      NXQ_UNARY_CASE(Rsqrt)
      NXQ_UNARY_CASE(Cbrt)
      NXQ_UNARY_CASE(Cos)
      NXQ_UNARY_CASE(Sin)
      NXQ_UNARY_CASE(Tan)
      NXQ_UNARY_CASE(Acos)
      NXQ_UNARY_CASE(Asin)
      NXQ_UNARY_CASE(Atan)
      NXQ_UNARY_CASE(Cosh)
      NXQ_UNARY_CASE(Sinh)
      NXQ_UNARY_CASE(Acosh)
      NXQ_UNARY_CASE(Asinh)
      NXQ_UNARY_CASE(Atanh)
      NXQ_UNARY_CASE(Erf)
      NXQ_UNARY_CASE(Erfc)
      NXQ_UNARY_CASE(ErfInv)
      NXQ_UNARY_CASE(IsNan)
      NXQ_UNARY_CASE(IsInfinity)
      NXQ_UNARY_CASE(LogicalNot)
      NXQ_UNARY_CASE(BitwiseNot)
#undef NXQ_UNARY_CASE
  }
  throw InvalidArgument("unary: unknown op " + std::to_string(static_cast<unsigned>(op)));
}

void binary(BinaryOp op, const Shape& shape, const View& a, const View& b, Type out_type, void* out,
            int threads) {
  using namespace detail;
  validate_common(shape, out_type, out, "binary");
  validate_input(a, shape, "binary: left operand");
  validate_input(b, shape, "binary: right operand");
  if (element_count(shape) == 0) {
    binary_domain(op, a.type, b.type, out_type);  // the type errors still apply
    return;
  }
  switch (op) {
#define NXQ_BINARY_CASE(name) \
  case BinaryOp::name:        \
    return binary_op<BinaryOp::name>(shape, a, b, out_type, out, threads);
    NXQ_BINARY_CASE(Add)
    NXQ_BINARY_CASE(Subtract)
    NXQ_BINARY_CASE(Multiply)
    NXQ_BINARY_CASE(Divide)
    NXQ_BINARY_CASE(Pow)
    NXQ_BINARY_CASE(Max)
    NXQ_BINARY_CASE(Min)
    NXQ_BINARY_CASE(Quotient)
    NXQ_BINARY_CASE(Remainder)
    NXQ_BINARY_CASE(Atan2)
    NXQ_BINARY_CASE(Equal)
    NXQ_BINARY_CASE(NotEqual)
    NXQ_BINARY_CASE(Less)
    NXQ_BINARY_CASE(LessEqual)
    NXQ_BINARY_CASE(Greater)
    NXQ_BINARY_CASE(GreaterEqual)
    NXQ_BINARY_CASE(LogicalAnd)
    NXQ_BINARY_CASE(LogicalOr)
    NXQ_BINARY_CASE(LogicalXor)
    NXQ_BINARY_CASE(BitwiseAnd)
    NXQ_BINARY_CASE(BitwiseOr)
    NXQ_BINARY_CASE(BitwiseXor)
    NXQ_BINARY_CASE(LeftShift)
    NXQ_BINARY_CASE(RightShift)
#undef NXQ_BINARY_CASE
  }
  throw InvalidArgument("binary: unknown op " + std::to_string(static_cast<unsigned>(op)));
}

namespace {

// dst[i] = pred[i] != 0 ? t[i] : f[i] for n elements of `size` bytes (a typed loop per size,
// which the compiler vectorizes: a byte-wise copy per element cost ~3 ns).
template <typename E>
void pick_typed(const double* pred, const unsigned char* t, const unsigned char* f,
                unsigned char* dst, int64_t n) {
  E tv[detail::kChunk], fv[detail::kChunk], out[detail::kChunk];
  std::memcpy(tv, t, static_cast<size_t>(n) * sizeof(E));
  std::memcpy(fv, f, static_cast<size_t>(n) * sizeof(E));
  for (int64_t i = 0; i < n; ++i) out[i] = pred[i] != 0 ? tv[i] : fv[i];
  std::memcpy(dst, out, static_cast<size_t>(n) * sizeof(E));
}

void pick_elements(size_t size, const double* pred, const unsigned char* t, const unsigned char* f,
                   unsigned char* dst, int64_t n) {
  switch (size) {
    case 1:
      return pick_typed<uint8_t>(pred, t, f, dst, n);
    case 2:
      return pick_typed<uint16_t>(pred, t, f, dst, n);
    case 4:
      return pick_typed<uint32_t>(pred, t, f, dst, n);
    default:
      return pick_typed<uint64_t>(pred, t, f, dst, n);
  }
}

// The common select of a model (an attention mask: a u8 comparison result choosing between f32
// scores and an f32 constant), in one pass over the bits: pred, on_true and out contiguous in
// the run, on_false contiguous or one value. NaNs are written canonical, as the general path
// does. (Integer bit operations, so that the loop vectorizes: 1.9x the float form here.)
void select_f32_by_u8(const uint8_t* p, const uint32_t* t, const uint32_t* f, int64_t f_stride,
                      uint32_t* o, int64_t n) {
  constexpr uint32_t kAbs = 0x7FFFFFFF, kInf = 0x7F800000, kNaN = detail::kF32NanBits;
  auto pick = [&](int64_t i, uint32_t fv) {
    const uint32_t mask = 0u - static_cast<uint32_t>(p[i] != 0);
    const uint32_t v = (t[i] & mask) | (fv & ~mask);
    o[i] = (v & kAbs) > kInf ? kNaN : v;
  };
  if (f_stride == 0) {
    const uint32_t fv = f[0];
    for (int64_t i = 0; i < n; ++i) pick(i, fv);
  } else {
    for (int64_t i = 0; i < n; ++i) pick(i, f[i]);
  }
}

}  // namespace

void select(const Shape& shape, const View& pred, const View& on_true, const View& on_false,
            Type out_type, void* out, int threads) {
  using namespace detail;
  validate_common(shape, out_type, out, "select");
  validate_input(pred, shape, "select: pred");
  validate_input(on_true, shape, "select: on_true");
  validate_input(on_false, shape, "select: on_false");
  if (element_count(shape) == 0) return;
  const Runs<4> walk(shape, {&pred, &on_true, &on_false});
  // pred is true when it is not == 0 (as Erlang's `pred == 0`: NaN is true, -0.0 false).
  const LoadRunFn<double> lp = loader_for<double>(pred.type);
  const ConvertRunFn ct = converter_for<true>(on_true.type, out_type);
  const ConvertRunFn cf = converter_for<true>(on_false.type, out_type);
  const size_t size = type_size(out_type);
  const bool f32_by_u8 = pred.type == Type::U8 && on_true.type == Type::F32 &&
                         on_false.type == Type::F32 && out_type == Type::F32;
  run_split(walk.count, kCheapCost, threads, [&](size_t begin, size_t end) {
    alignas(64) double bp[kChunk];
    alignas(64) unsigned char bt[kChunk * 8], bf[kChunk * 8];
    walk.for_each_run(begin, end, [&](const auto& off, int64_t len, const auto& inner, size_t) {
      if (f32_by_u8 && inner[0] == 1 && inner[1] == 1 && inner[3] == 1 &&
          (inner[2] == 0 || inner[2] == 1)) {
        select_f32_by_u8(static_cast<const uint8_t*>(pred.data) + off[0],
                         static_cast<const uint32_t*>(on_true.data) + off[1],
                         static_cast<const uint32_t*>(on_false.data) + off[2], inner[2],
                         static_cast<uint32_t*>(out) + off[3], len);
        return;
      }
      unsigned char* o = static_cast<unsigned char*>(out);
      if (inner[0] == 0) {  // one pred value for the whole run: convert the chosen side only
        lp(pred.data, off[0], 0, 1, bp);
        if (bp[0] != 0)
          ct(on_true.data, off[1], inner[1], out, off[3], inner[3], len);
        else
          cf(on_false.data, off[2], inner[2], out, off[3], inner[3], len);
        return;
      }
      for (int64_t k = 0; k < len; k += kChunk) {
        const int64_t n = std::min(kChunk, len - k);
        lp(pred.data, off[0] + k * inner[0], inner[0], n, bp);
        ct(on_true.data, off[1] + k * inner[1], inner[1], bt, 0, 1, n);
        cf(on_false.data, off[2] + k * inner[2], inner[2], bf, 0, 1, n);
        unsigned char* dst = o + static_cast<size_t>(off[3] + k * inner[3]) * size;
        pick_elements(size, bp, bt, bf, dst, n);
      }
    });
  });
}

void clip(const Shape& shape, const View& in, const View& lo, const View& hi, Type out_type,
          void* out, int threads) {
  using namespace detail;
  validate_common(shape, out_type, out, "clip");
  validate_input(in, shape, "clip: input");
  validate_input(lo, shape, "clip: min");
  validate_input(hi, shape, "clip: max");
  if (element_count(shape) == 0) return;
  const Runs<4> walk(shape, {&in, &lo, &hi});
  const Type types[3] = {in.type, lo.type, hi.type};
  bool all_narrow = true, all_int = true, any_float = false, any_wide = false, any_u64 = false;
  for (Type t : types) {
    all_narrow = all_narrow && is_narrow_float(t);
    all_int = all_int && !is_float_type(t);
    any_float = any_float || is_float_type(t);
    any_wide = any_wide || is_wide_int(t);
    any_u64 = any_u64 || t == Type::U64;
  }
  if (all_narrow) return run_clip_buffered<float>(walk, in, lo, hi, out_type, out, threads);
  if (all_int) {
    if (any_u64 || is_float_type(out_type))
      return run_clip_buffered<int128>(walk, in, lo, hi, out_type, out, threads);
    return run_clip_buffered<int64_t>(walk, in, lo, hi, out_type, out, threads);
  }
  if (any_float && any_wide) return run_clip_num(walk, in, lo, hi, out_type, out, threads);
  return run_clip_buffered<double>(walk, in, lo, hi, out_type, out, threads);
}

}  // namespace nx_quant::dense
