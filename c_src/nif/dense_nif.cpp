// The dense NIFs of the native Nx path: decode terms into the kernels' descriptors
// (include/nx_quant/dense_ops.h), pick the scheduler, call one kernel, return one new binary.
// No shape planning here (that is NxQuant.Native's, in Elixir) and no math (the kernels').
//
// An operand is `{binary, type_atom, offset, strides}`: element (i_0, ..., i_{r-1}) of the
// iteration shape is element `offset + sum(i_k * strides[k])` of the binary. Inputs are read in
// place (a misaligned sub-binary is copied once); every reachable element is checked to lie in
// the binary before any kernel runs (the kernels check again). Outputs are row-major.
#include <erl_nif.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "buffer_pool.h"
#include "nif_functions.h"
#include "nx_quant/dense_ops.h"
#include "terms.h"
#include "versioned_resource.h"

namespace nx_quant::nif {

namespace {

using dense::BinaryOp;
using dense::CumulativeOp;
using dense::ReduceOp;
using dense::Shape;
using dense::TieBreak;
using dense::Type;
using dense::UnaryOp;
using dense::View;

// ---- atoms -----------------------------------------------------------------------------------
// Atoms are global and permanent, so each name's term is made once and later compared by value.

constexpr const char* kTypeNames[] = {"u8",  "u16", "u32", "u64",  "s8",  "s16",
                                      "s32", "s64", "f16", "bf16", "f32", "f64"};
constexpr Type kTypes[] = {Type::U8,  Type::U16, Type::U32, Type::U64,  Type::S8,  Type::S16,
                           Type::S32, Type::S64, Type::F16, Type::BF16, Type::F32, Type::F64};

// In the order of dense::UnaryOp.
constexpr const char* kUnaryNames[] = {
    "copy",  "negate",  "abs",    "sign",        "floor",       "ceil",       "round",
    "exp",   "expm1",   "log",    "log1p",       "sigmoid",     "tanh",       "sqrt",
    "rsqrt", "cbrt",    "cos",    "sin",         "tan",         "acos",       "asin",
    "atan",  "cosh",    "sinh",   "acosh",       "asinh",       "atanh",      "erf",
    "erfc",  "erf_inv", "is_nan", "is_infinity", "logical_not", "bitwise_not"};
constexpr size_t kUnaryCount = sizeof kUnaryNames / sizeof *kUnaryNames;
static_assert(kUnaryCount == static_cast<size_t>(UnaryOp::BitwiseNot) + 1);

// In the order of dense::BinaryOp.
constexpr const char* kBinaryNames[] = {
    "add",         "subtract",    "multiply",   "divide",        "pow",         "max",
    "min",         "quotient",    "remainder",  "atan2",         "equal",       "not_equal",
    "less",        "less_equal",  "greater",    "greater_equal", "logical_and", "logical_or",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor",   "left_shift",  "right_shift"};
constexpr size_t kBinaryCount = sizeof kBinaryNames / sizeof *kBinaryNames;
static_assert(kBinaryCount == static_cast<size_t>(BinaryOp::RightShift) + 1);

// In the order of dense::ReduceOp.
constexpr const char* kReduceNames[] = {"sum", "product", "reduce_max", "reduce_min",
                                        "all", "any",     "argmax",     "argmin"};
constexpr size_t kReduceCount = sizeof kReduceNames / sizeof *kReduceNames;
static_assert(kReduceCount == static_cast<size_t>(ReduceOp::ArgMin) + 1);

// In the order of dense::CumulativeOp.
constexpr const char* kCumulativeNames[] = {"cumulative_sum", "cumulative_product",
                                            "cumulative_max", "cumulative_min"};
constexpr size_t kCumulativeCount = sizeof kCumulativeNames / sizeof *kCumulativeNames;
static_assert(kCumulativeCount == static_cast<size_t>(CumulativeOp::Min) + 1);

struct Atoms {
  ERL_NIF_TERM nil, true_, false_, low, high;
  ERL_NIF_TERM types[12];
  ERL_NIF_TERM unary[kUnaryCount];
  ERL_NIF_TERM binary[kBinaryCount];
  ERL_NIF_TERM reduce[kReduceCount];
  ERL_NIF_TERM cumulative[kCumulativeCount];

  explicit Atoms(ErlNifEnv* env) {
    nil = enif_make_atom(env, "nil");
    true_ = enif_make_atom(env, "true");
    false_ = enif_make_atom(env, "false");
    low = enif_make_atom(env, "low");
    high = enif_make_atom(env, "high");
    for (size_t i = 0; i < 12; ++i) types[i] = enif_make_atom(env, kTypeNames[i]);
    for (size_t i = 0; i < kUnaryCount; ++i) unary[i] = enif_make_atom(env, kUnaryNames[i]);
    for (size_t i = 0; i < kBinaryCount; ++i) binary[i] = enif_make_atom(env, kBinaryNames[i]);
    for (size_t i = 0; i < kReduceCount; ++i) reduce[i] = enif_make_atom(env, kReduceNames[i]);
    for (size_t i = 0; i < kCumulativeCount; ++i) {
      cumulative[i] = enif_make_atom(env, kCumulativeNames[i]);
    }
  }
};

const Atoms& atoms(ErlNifEnv* env) {
  static const Atoms table(env);  // thread-safe initialisation (C++11 magic statics)
  return table;
}

// Index of `term` in `table`, or -1.
int find_atom(ERL_NIF_TERM term, const ERL_NIF_TERM* table, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (table[i] == term) return static_cast<int>(i);
  }
  return -1;
}

std::string one_of(const char* const* names, size_t n) {
  std::string s = "one of ";
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) s += ", ";
    s += ":";
    s += names[i];
  }
  return s;
}

// ---- argument decoding -----------------------------------------------------------------------

// No tensor may have more elements than this (2^56): element counts times any type size, and
// sums of a few of them, stay far from overflowing 64 bits.
constexpr uint64_t kMaxElements = uint64_t{1} << 56;

// A piece of an assembled output: `in` over `shape`, written at a strided window of the output.
struct Piece {
  Shape shape;
  View in;
  int64_t out_offset;
  std::vector<int64_t> out_strides;
};

// Decodes the arguments of one call; positions and names go into every message. Operands are
// binaries or versioned-buffer handles (versioned_resource.h); the read locks the latter take
// are held until the Decoder goes, i.e. for the whole call.
class Decoder {
 public:
  Decoder(ErlNifEnv* env, const char* fun, const ERL_NIF_TERM argv[])
      : args_(env, fun, argv), atoms_(atoms(env)) {}

  const Args& args() const { return args_; }
  ErlNifEnv* env() const { return args_.env(); }

  template <typename Enum>
  Enum atom_enum(int i, const char* name, const ERL_NIF_TERM* table, const char* const* names,
                 size_t n) const {
    const int found = find_atom(args_.term(i), table, n);
    if (found < 0) args_.expected(i, name, one_of(names, n).c_str());
    return static_cast<Enum>(found);
  }

  Type type(int i, const char* name) const { return type_term(args_.term(i), i, name); }

  Type type_term(ERL_NIF_TERM term, int i, const char* name) const {
    const int found = find_atom(term, atoms_.types, 12);
    if (found < 0) {
      args_.fail(
          i, name,
          "must have a type " + one_of(kTypeNames, 12) + ", got: " + describe_term(env(), term));
    }
    return kTypes[found];
  }

  // nil or a type atom.
  bool optional_type(int i, const char* name, Type* out) const {
    if (args_.term(i) == atoms_.nil) return false;
    *out = type(i, name);
    return true;
  }

  bool boolean(int i, const char* name) const { return args_.boolean(i, name); }

  // a * b, failing (naming the call) above kMaxElements.
  size_t mul(size_t a, size_t b, const char* what) const {
    uint64_t r;
    if (__builtin_mul_overflow(static_cast<uint64_t>(a), static_cast<uint64_t>(b), &r) ||
        r > kMaxElements) {
      throw BadArg(std::string(args_.fun()) + ": " + what + " has too many elements");
    }
    return static_cast<size_t>(r);
  }

  TieBreak tie_break(int i, const char* name) const {
    if (args_.term(i) == atoms_.low) return TieBreak::Low;
    if (args_.term(i) == atoms_.high) return TieBreak::High;
    args_.expected(i, name, ":low or :high");
  }

  int64_t int64(int i, const char* name, int64_t lo, int64_t hi) const {
    ErlNifSInt64 value;
    if (!enif_get_int64(env(), args_.term(i), &value) || value < lo || value > hi) {
      const std::string range = "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
      args_.expected(i, name, range.c_str());
    }
    return value;
  }

  // A tuple of non-negative integers.
  Shape shape(int i, const char* name) const { return shape_term(args_.term(i), i, name); }

  Shape shape_term(ERL_NIF_TERM term, int i, const char* name) const {
    int arity;
    const ERL_NIF_TERM* items;
    if (!enif_get_tuple(env(), term, &arity, &items)) {
      args_.fail(
          i, name,
          "must be a tuple of non-negative integers (a shape), got: " + describe_term(env(), term));
    }
    Shape shape(static_cast<size_t>(arity));
    uint64_t count = 1;
    for (int k = 0; k < arity; ++k) {
      ErlNifSInt64 dim;
      if (!enif_get_int64(env(), items[k], &dim) || dim < 0) {
        args_.fail(i, name,
                   "must be a tuple of non-negative integers (a shape), got " +
                       describe_term(env(), items[k]) + " at position " + std::to_string(k));
      }
      shape[k] = dim;
      if (__builtin_mul_overflow(count, static_cast<uint64_t>(dim), &count) ||
          count > kMaxElements) {
        args_.fail(i, name, "has too many elements: " + describe_term(env(), term));
      }
    }
    return shape;
  }

  // A tuple of `rank` integers (strides, axes, ...).
  std::vector<int64_t> int_tuple(ERL_NIF_TERM term, size_t rank, int i, const char* name,
                                 const char* what) const {
    int arity;
    const ERL_NIF_TERM* items;
    if (!enif_get_tuple(env(), term, &arity, &items) || static_cast<size_t>(arity) != rank) {
      args_.fail(i, name,
                 std::string("must have ") + what + " as a tuple of " + std::to_string(rank) +
                     " integers, got: " + describe_term(env(), term));
    }
    std::vector<int64_t> values(rank);
    for (size_t k = 0; k < rank; ++k) {
      ErlNifSInt64 v;
      if (!enif_get_int64(env(), items[k], &v)) {
        args_.fail(i, name,
                   std::string("must have integer ") + what + ", got " +
                       describe_term(env(), items[k]) + " at position " + std::to_string(k));
      }
      values[k] = v;
    }
    return values;
  }

  // A tuple of distinct axes of a rank-`rank` shape (any length <= rank).
  std::vector<int> axes(int i, const char* name, size_t rank) const {
    int arity;
    const ERL_NIF_TERM* items;
    if (!enif_get_tuple(env(), args_.term(i), &arity, &items)) {
      args_.expected(i, name, "a tuple of axes");
    }
    std::vector<int> axes(static_cast<size_t>(arity));
    std::vector<bool> seen(rank, false);
    for (int k = 0; k < arity; ++k) {
      int axis;
      if (!enif_get_int(env(), items[k], &axis) || axis < 0 || static_cast<size_t>(axis) >= rank ||
          seen[axis]) {
        args_.fail(i, name,
                   "must be a tuple of distinct axes in 0.." + std::to_string(rank) +
                       " (exclusive), got " + describe_term(env(), items[k]) + " at position " +
                       std::to_string(k));
      }
      seen[axis] = true;
      axes[k] = axis;
    }
    return axes;
  }

  // An operand term iterated over `shape`, bounds-checked against its binary.
  View operand(int i, const char* name, const Shape& shape) {
    return operand_term(args_.term(i), i, name, shape);
  }

  View operand_term(ERL_NIF_TERM term, int i, const char* name, const Shape& shape) {
    int arity;
    const ERL_NIF_TERM* items;
    if (!enif_get_tuple(env(), term, &arity, &items) || arity != 4) {
      args_.fail(
          i, name,
          "must be an operand {binary, type, offset, strides}, got: " + describe_term(env(), term));
    }
    View view;
    view.type = type_term(items[1], i, name);
    ErlNifBinary bin;
    VersionedHandle handle;
    if (enif_inspect_binary(env(), items[0], &bin)) {
      const size_t size = dense::type_size(view.type);
      if (bin.size % size != 0) {
        args_.fail(i, name,
                   "has a binary of " + std::to_string(bin.size) +
                       " bytes, not a whole number of " + dense::type_name(view.type) +
                       " elements");
      }
      view.count = bin.size / size;
      view.data = aligned(bin, size);
    } else if (get_versioned_handle(env(), items[0], &handle)) {
      view.data = read_versioned(handle, view.type, i, name, &view.count);
    } else {
      args_.fail(i, name,
                 "must hold a binary or a versioned buffer {ref, version}, got: " +
                     describe_term(env(), items[0]));
    }
    ErlNifSInt64 offset;
    if (!enif_get_int64(env(), items[2], &offset)) {
      args_.fail(i, name, "must have an integer offset, got: " + describe_term(env(), items[2]));
    }
    view.offset = offset;
    view.strides = int_tuple(items[3], shape.size(), i, name, "strides");
    check_reach(view, shape, i, name);
    return view;
  }

  // A piece {shape, operand, out_offset, out_strides} written into an output of `out_count`
  // elements of `out_type` (dense_assemble, dense_put_slice), its window checked like an input.
  Piece piece_term(ERL_NIF_TERM term, int i, const char* name, size_t out_count, Type out_type) {
    int arity;
    const ERL_NIF_TERM* items;
    if (!enif_get_tuple(env(), term, &arity, &items) || arity != 4) {
      args_.fail(i, name,
                 "must hold {shape, operand, out_offset, out_strides} tuples, got: " +
                     describe_term(env(), term));
    }
    Piece p;
    p.shape = shape_term(items[0], i, name);
    p.in = operand_term(items[1], i, name, p.shape);
    ErlNifSInt64 offset;
    if (!enif_get_int64(env(), items[2], &offset)) {
      args_.fail(i, name, "must have integer out offsets, got: " + describe_term(env(), items[2]));
    }
    p.out_offset = offset;
    p.out_strides = int_tuple(items[3], p.shape.size(), i, name, "out strides");
    View window;
    window.count = out_count;
    window.type = out_type;
    window.offset = p.out_offset;
    window.strides = p.out_strides;
    check_reach(window, p.shape, i, (std::string(name) + " (output window)").c_str());
    return p;
  }

  // Argument i as a versioned-buffer handle {ref, version}.
  VersionedHandle handle(int i, const char* name) const {
    VersionedHandle h;
    if (!get_versioned_handle(env(), args_.term(i), &h))
      args_.expected(i, name, "a versioned buffer {ref, version}");
    return h;
  }

  // The elements of a version of a versioned buffer, valid for the whole call: the current
  // version in place (this call holds the buffer's lock shared until it ends, so no in-place
  // write can change it meanwhile), an older one rebuilt into a copy.
  const void* read_versioned(const VersionedHandle& handle, Type type, int i, const char* name,
                             size_t* count) {
    dense::VersionedBuffer& buffer = *handle.resource->buffer;
    if (buffer.type() != type) {
      args_.fail(i, name,
                 std::string("has type ") + dense::type_name(type) +
                     " but its versioned buffer holds " + dense::type_name(buffer.type()));
    }
    if (!reads(handle.resource)) {
      shared_locks_.emplace_back(buffer.mutex());
      locked_.push_back(handle.resource);
    }
    if (handle.version > buffer.version()) {
      args_.fail(i, name,
                 "is version " + std::to_string(handle.version) +
                     " of a versioned buffer whose newest version is " +
                     std::to_string(buffer.version()));
    }
    *count = buffer.count();
    if (handle.version == buffer.version()) return buffer.data();
    copies_.emplace_back((buffer.bytes() + 7) / 8);
    buffer.read_version(handle.version, copies_.back().data());
    return copies_.back().data();
  }

  // Whether this call holds a read lock on `resource` (one of its operands is a version of it).
  bool reads(const VersionedResource* resource) const {
    for (const auto* r : locked_)
      if (r == resource) return true;
    return false;
  }

  // Fails unless every element of `view` over `shape` lies inside its buffer.
  void check_reach(const View& view, const Shape& shape, int i, const char* name) const {
    for (int64_t d : shape) {
      if (d == 0) return;  // nothing is read
    }
    int64_t lo = view.offset, hi = view.offset;
    for (size_t k = 0; k < shape.size(); ++k) {
      int64_t span;
      if (__builtin_mul_overflow(shape[k] - 1, view.strides[k], &span) ||
          __builtin_add_overflow(span < 0 ? lo : hi, span, span < 0 ? &lo : &hi)) {
        args_.fail(i, name, "has strides whose span overflows 64 bits");
      }
    }
    if (lo < 0 || static_cast<uint64_t>(hi) >= view.count) {
      args_.fail(i, name,
                 "reaches elements " + std::to_string(lo) + ".." + std::to_string(hi) +
                     " of a binary holding " + std::to_string(view.count) + " " +
                     dense::type_name(view.type) + " elements");
    }
  }

 private:
  // The binary's bytes, or an aligned copy of them when the binary is misaligned for its type
  // (a sub-binary can start anywhere; the kernels read elements through typed pointers).
  const void* aligned(const ErlNifBinary& bin, size_t alignment) {
    if (reinterpret_cast<uintptr_t>(bin.data) % alignment == 0) return bin.data;
    copies_.emplace_back((bin.size + 7) / 8);
    std::memcpy(copies_.back().data(), bin.data, bin.size);
    return copies_.back().data();
  }

  Args args_;
  const Atoms& atoms_;
  std::vector<std::vector<uint64_t>> copies_;
  std::vector<const VersionedResource*> locked_;
  std::vector<std::shared_lock<std::shared_mutex>> shared_locks_;
};

// ---- results and scheduling ------------------------------------------------------------------

// An output binary released on every exit path unless handed to a term (large ones recycled
// through the buffer pool, see buffer_pool.h).
class Output {
 public:
  Output(size_t count, Type type)
      : buffer_(count * dense::type_size(type)) {}  // count <= kMaxElements

  void* data() { return buffer_.data(); }
  size_t size() const { return buffer_.size(); }
  ERL_NIF_TERM release(ErlNifEnv* env) { return buffer_.release(env); }

 private:
  OutputBuffer buffer_;
};

// Work estimated above kNormalSchedulerBudgetNs (terms.h, ~1 ms on one core) moves to a dirty
// CPU scheduler, as the quantized matmul's does: a decode step's dense ops are its hot path as
// much as its matmuls, and a dirty round trip costs 100-150 us in a VM on a busy 2-core machine
// (measured: a softmax's exp over {8, 4, 2048} f32, 51 us of work at 2 threads, took 193 us
// through the dirty scheduler).
constexpr double kDirtyNs = kNormalSchedulerBudgetNs;

// Rough single-core costs, nanoseconds per element (measured on the kernels, 2 vCPUs; they only
// need to be right within a factor of ~2).
constexpr double kCheapNs = 1.5;          // copies, conversions, arithmetic, comparisons
constexpr double kSqrtNs = 4;             // sqrt / rsqrt in double
constexpr double kTranscendentalNs = 12;  // libm calls in double
// One multiply-add of a matmul: float operands run the SIMD double micro-kernels (a decode
// step's attention dots over an f32 KV cache from memory, one thread: 0.17 ns on AVX-512 and
// AVX2, 0.33 ns portable), integers the scalar wrapping loop. The dots of a decode step (4.2M
// multiply-adds per layer at context 2048) then stay on the calling scheduler.
constexpr double kFloatMacNs = 0.2;
constexpr double kIntMacNs = 1.5;

double unary_cost(UnaryOp op) {
  switch (op) {
    case UnaryOp::Copy:
    case UnaryOp::Negate:
    case UnaryOp::Abs:
    case UnaryOp::Sign:
    case UnaryOp::Floor:
    case UnaryOp::Ceil:
    case UnaryOp::Round:
    case UnaryOp::IsNan:
    case UnaryOp::IsInfinity:
    case UnaryOp::LogicalNot:
    case UnaryOp::BitwiseNot:
      return kCheapNs;
    case UnaryOp::Sqrt:
    case UnaryOp::Rsqrt:
      return kSqrtNs;
    default:
      return kTranscendentalNs;
  }
}

double binary_cost(BinaryOp op) {
  switch (op) {
    case BinaryOp::Pow:
    case BinaryOp::Atan2:
    case BinaryOp::Remainder:
      return kTranscendentalNs;
    default:
      return kCheapNs;
  }
}

// run_scheduled (terms.h) with this file's budget.
template <typename Kernel>
ERL_NIF_TERM schedule(ErlNifEnv* env, double estimated_ns, const char* name, NifFunction self,
                      int argc, const ERL_NIF_TERM argv[], Kernel&& kernel) {
  return run_scheduled(env, estimated_ns, kDirtyNs, name, self, argc, argv,
                       std::forward<Kernel>(kernel));
}

double count_of(const Shape& shape) {
  return static_cast<double>(dense::element_count(shape));
}

}  // namespace

// dense_unary(op, out_type, shape, operand) -> binary
ERL_NIF_TERM dense_unary_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_unary/4";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const auto op = d.atom_enum<UnaryOp>(0, "op", atoms(env).unary, kUnaryNames, kUnaryCount);
    const Type out_type = d.type(1, "out_type");
    const Shape shape = d.shape(2, "shape");
    const View in = d.operand(3, "operand", shape);
    return schedule(env, count_of(shape) * unary_cost(op), "dense_unary", dense_unary_nif, argc,
                    argv, [&] {
                      Output out(dense::element_count(shape), out_type);
                      dense::unary(op, shape, in, out_type, out.data());
                      return out.release(env);
                    });
  });
}

// dense_binary(op, out_type, shape, a, b) -> binary
ERL_NIF_TERM dense_binary_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_binary/5";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const auto op = d.atom_enum<BinaryOp>(0, "op", atoms(env).binary, kBinaryNames, kBinaryCount);
    const Type out_type = d.type(1, "out_type");
    const Shape shape = d.shape(2, "shape");
    const View a = d.operand(3, "a", shape);
    const View b = d.operand(4, "b", shape);
    return schedule(env, count_of(shape) * binary_cost(op), "dense_binary", dense_binary_nif, argc,
                    argv, [&] {
                      Output out(dense::element_count(shape), out_type);
                      dense::binary(op, shape, a, b, out_type, out.data());
                      return out.release(env);
                    });
  });
}

// dense_select(out_type, shape, pred, on_true, on_false) -> binary
ERL_NIF_TERM dense_select_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_select/5";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Type out_type = d.type(0, "out_type");
    const Shape shape = d.shape(1, "shape");
    const View pred = d.operand(2, "pred", shape);
    const View on_true = d.operand(3, "on_true", shape);
    const View on_false = d.operand(4, "on_false", shape);
    return schedule(env, count_of(shape) * kCheapNs, "dense_select", dense_select_nif, argc, argv,
                    [&] {
                      Output out(dense::element_count(shape), out_type);
                      dense::select(shape, pred, on_true, on_false, out_type, out.data());
                      return out.release(env);
                    });
  });
}

// dense_clip(out_type, shape, operand, lo, hi) -> binary
ERL_NIF_TERM dense_clip_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_clip/5";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Type out_type = d.type(0, "out_type");
    const Shape shape = d.shape(1, "shape");
    const View in = d.operand(2, "operand", shape);
    const View lo = d.operand(3, "lo", shape);
    const View hi = d.operand(4, "hi", shape);
    return schedule(env, count_of(shape) * kCheapNs, "dense_clip", dense_clip_nif, argc, argv, [&] {
      Output out(dense::element_count(shape), out_type);
      dense::clip(shape, in, lo, hi, out_type, out.data());
      return out.release(env);
    });
  });
}

namespace {

// True when the pieces are known to write every output element: one piece is the whole output
// (contiguous), or the pieces tile it along one axis in order (concatenate, stack).
bool pieces_cover(const Shape& out_shape, const std::vector<Piece>& pieces) {
  const std::vector<int64_t> strides = dense::contiguous_strides(out_shape);
  for (const Piece& p : pieces) {
    if (p.shape == out_shape && p.out_offset == 0 && p.out_strides == strides) return true;
  }
  const size_t rank = out_shape.size();
  if (pieces.empty() || rank == 0) return false;
  for (size_t axis = 0; axis < rank; ++axis) {
    int64_t along = 0;
    bool ok = true;
    for (const Piece& p : pieces) {
      if (p.shape.size() != rank || p.out_strides != strides ||
          p.out_offset != along * strides[axis]) {
        ok = false;
        break;
      }
      for (size_t k = 0; k < rank && ok; ++k) {
        if (k != axis && p.shape[k] != out_shape[k]) ok = false;
      }
      if (!ok) break;
      along += p.shape[axis];
    }
    if (ok && along == out_shape[axis]) return true;
  }
  return false;
}

}  // namespace

// dense_assemble(out_type, out_shape, fill, pieces) -> binary
//
// A new out_shape tensor: filled with `fill` (a one-element operand with strides {}), or not
// filled (nil) when the pieces cover it (zeroed otherwise); then each piece
// {shape, operand, out_offset, out_strides} is converted and written into its strided window
// of the output, in order. Concatenate, stack, pad and put_slice are all this.
ERL_NIF_TERM dense_assemble_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_assemble/4";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Args& args = d.args();
    const Type out_type = d.type(0, "out_type");
    const Shape out_shape = d.shape(1, "out_shape");
    const size_t out_count = dense::element_count(out_shape);
    const bool has_fill = argv[2] != atoms(env).nil;
    View fill_value;
    if (has_fill) fill_value = d.operand(2, "fill", Shape{});

    unsigned length;
    if (!enif_get_list_length(env, argv[3], &length)) args.expected(3, "pieces", "a list");
    std::vector<Piece> pieces;
    pieces.reserve(length);
    double work = static_cast<double>(out_count);
    ERL_NIF_TERM list = argv[3], head;
    while (enif_get_list_cell(env, list, &head, &list)) {
      pieces.push_back(d.piece_term(head, 3, "pieces", out_count, out_type));
      work += count_of(pieces.back().shape);
    }
    return schedule(env, work * kCheapNs, "dense_assemble", dense_assemble_nif, argc, argv, [&] {
      Output out(out_count, out_type);
      if (has_fill) {
        dense::fill(out_type, out.data(), out_count, fill_value);
      } else if (!pieces_cover(out_shape, pieces)) {
        std::memset(out.data(), 0, out.size());
      }
      for (const Piece& p : pieces) {
        dense::copy_into(p.shape, p.in, out_type, out.data(), out_count, p.out_offset,
                         p.out_strides);
      }
      return out.release(env);
    });
  });
}

namespace {

// The undo log of a versioned buffer may grow to this fraction of the buffer's size; the
// next put_slice then starts a fresh buffer (one copy per that many bytes of updates: for a
// KV cache, one per half a context of tokens), so memory stays within 1.5x the tensor.
constexpr size_t kUndoLogShare = 2;

// Writes `piece` into the current version of `handle`'s buffer in place, when that is possible
// without waiting and without changing what any other tensor reads: returns the new handle, or
// 0 when the caller must copy instead.
ERL_NIF_TERM put_slice_in_place(ErlNifEnv* env, const Decoder& d, const VersionedHandle& handle,
                                const View& target, Type out_type, const Shape& shape,
                                const Piece& piece) {
  dense::VersionedBuffer& buffer = *handle.resource->buffer;
  const size_t window_bytes = dense::element_count(piece.shape) * dense::type_size(out_type);
  if (buffer.type() != out_type || target.type != out_type || target.offset != 0 ||
      target.strides != dense::contiguous_strides(shape) ||
      buffer.count() != dense::element_count(shape) ||
      d.reads(handle.resource)) {  // the slice is read from this buffer (locked shared)
    return 0;
  }
  std::unique_lock<std::shared_mutex> lock(buffer.mutex(), std::try_to_lock);
  // Busy (another call reads it), no longer the newest version (someone else wrote first) or
  // its log full: copy. Checked under the lock, so a stale handle is never written through.
  if (!lock.owns_lock() || buffer.version() != handle.version ||
      buffer.undo_bytes() + window_bytes > buffer.bytes() / kUndoLogShare)
    return 0;
  const uint64_t version = buffer.record_write(piece.shape, piece.out_offset, piece.out_strides);
  dense::copy_into(piece.shape, piece.in, out_type, buffer.data(), buffer.count(), piece.out_offset,
                   piece.out_strides, 1);
  return make_handle_term(env, handle.resource, version);
}

}  // namespace

// dense_put_slice(out_type, shape, target, piece) -> {ref, version}
//
// Nx.put_slice into a versioned buffer (versioned_resource.h): `target` is an operand over
// `shape` (a binary or a handle), `piece` one {shape, operand, out_offset, out_strides} as in
// dense_assemble. When the target is the newest version of a buffer of out_type, the piece is
// written in place (work proportional to the piece) and the result is the next version of the
// same buffer; otherwise the result is a fresh buffer holding the target with the piece
// written. Either way every earlier tensor still reads what it did.
ERL_NIF_TERM dense_put_slice_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_put_slice/4";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Type out_type = d.type(0, "out_type");
    const Shape shape = d.shape(1, "shape");
    const size_t count = dense::element_count(shape);
    const Piece piece = d.piece_term(argv[3], 3, "piece", count, out_type);
    const double window = count_of(piece.shape);

    // The target's handle, if it is one, resolved without locking it (a read lock would stop
    // the in-place write); it is decoded as an ordinary operand only for the copy.
    int arity;
    const ERL_NIF_TERM* items;
    VersionedHandle handle;
    if (enif_get_tuple(env, argv[2], &arity, &items) && arity == 4 &&
        get_versioned_handle(env, items[0], &handle)) {
      View target;
      target.type = d.type_term(items[1], 2, "target");
      ErlNifSInt64 offset;
      if (enif_get_int64(env, items[2], &offset)) {
        target.offset = offset;
        target.strides = d.int_tuple(items[3], shape.size(), 2, "target", "strides");
        const ERL_NIF_TERM in_place =
            put_slice_in_place(env, d, handle, target, out_type, shape, piece);
        if (in_place != 0) {
          if (enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER)
            consume_timeslice(env, static_cast<int64_t>(2 * window * kCheapNs));
          return in_place;
        }
      }
    }
    return schedule(env, (static_cast<double>(count) + window) * kCheapNs, "dense_put_slice",
                    dense_put_slice_nif, argc, argv, [&] {
                      const View target = d.operand(2, "target", shape);
                      auto buffer = std::make_unique<dense::VersionedBuffer>(out_type, count);
                      dense::copy_into(shape, target, out_type, buffer->data(), count, 0,
                                       dense::contiguous_strides(shape));
                      dense::copy_into(piece.shape, piece.in, out_type, buffer->data(), count,
                                       piece.out_offset, piece.out_strides);
                      return make_versioned_term(env, std::move(buffer));
                    });
  });
}

// dense_versioned_binary(handle) -> binary: the elements of that version, as a new binary.
ERL_NIF_TERM dense_versioned_binary_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_versioned_binary/1";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const VersionedHandle handle = d.handle(0, "handle");
    const dense::VersionedBuffer& buffer = *handle.resource->buffer;
    const double work = static_cast<double>(buffer.count()) * kCheapNs;
    return schedule(
        env, work, "dense_versioned_binary", dense_versioned_binary_nif, argc, argv, [&] {
          size_t count;
          const void* data = d.read_versioned(handle, buffer.type(), 0, "handle", &count);
          Output out(count, buffer.type());
          if (out.size() > 0) std::memcpy(out.data(), data, out.size());
          return out.release(env);
        });
  });
}

// dense_versioned_info(handle) -> {version, newest_version, bytes, undo_bytes}
ERL_NIF_TERM dense_versioned_info_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_versioned_info/1";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const VersionedHandle handle = d.handle(0, "handle");
    const dense::VersionedBuffer& buffer = *handle.resource->buffer;
    std::shared_lock<std::shared_mutex> lock(buffer.mutex());
    return enif_make_tuple4(
        env, enif_make_uint64(env, handle.version), enif_make_uint64(env, buffer.version()),
        enif_make_uint64(env, buffer.bytes()), enif_make_uint64(env, buffer.undo_bytes()));
  });
}

// dense_iota(type, shape, axis) -> binary (axis -1: the flat index)
ERL_NIF_TERM dense_iota_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_iota/3";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Type type = d.type(0, "type");
    const Shape shape = d.shape(1, "shape");
    const int axis =
        static_cast<int>(d.int64(2, "axis", -1, static_cast<int64_t>(shape.size()) - 1));
    return schedule(env, count_of(shape) * kCheapNs, "dense_iota", dense_iota_nif, argc, argv, [&] {
      Output out(dense::element_count(shape), type);
      dense::iota(type, shape, axis, out.data());
      return out.release(env);
    });
  });
}

// dense_reduce(op, out_type, shape, operand, axes, tie_break) -> binary
// (axes sorted; the output holds the remaining axes row-major)
ERL_NIF_TERM dense_reduce_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_reduce/6";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const auto op = d.atom_enum<ReduceOp>(0, "op", atoms(env).reduce, kReduceNames, kReduceCount);
    const Type out_type = d.type(1, "out_type");
    const Shape shape = d.shape(2, "shape");
    const View in = d.operand(3, "operand", shape);
    const std::vector<int> axes = d.axes(4, "axes", shape.size());
    for (size_t k = 1; k < axes.size(); ++k) {
      if (axes[k] <= axes[k - 1]) d.args().fail(4, "axes", "must be sorted");
    }
    const TieBreak tie_break = d.tie_break(5, "tie_break");
    size_t out_count = 1;
    for (size_t k = 0; k < shape.size(); ++k) {
      bool reduced = false;
      for (int a : axes) reduced = reduced || static_cast<size_t>(a) == k;
      if (!reduced) out_count *= static_cast<size_t>(shape[k]);
    }
    return schedule(env, count_of(shape) * kCheapNs, "dense_reduce", dense_reduce_nif, argc, argv,
                    [&] {
                      Output out(out_count, out_type);
                      dense::reduce(op, shape, in, axes, out_type, out.data(), tie_break);
                      return out.release(env);
                    });
  });
}

// dense_cumulative(op, out_type, shape, operand, axis, reverse) -> binary
ERL_NIF_TERM dense_cumulative_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_cumulative/6";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const auto op = d.atom_enum<CumulativeOp>(0, "op", atoms(env).cumulative, kCumulativeNames,
                                              kCumulativeCount);
    const Type out_type = d.type(1, "out_type");
    const Shape shape = d.shape(2, "shape");
    const View in = d.operand(3, "operand", shape);
    if (shape.empty()) d.args().fail(2, "shape", "must have rank >= 1");
    const int axis =
        static_cast<int>(d.int64(4, "axis", 0, static_cast<int64_t>(shape.size()) - 1));
    const bool reverse = d.boolean(5, "reverse");
    return schedule(env, count_of(shape) * kCheapNs, "dense_cumulative", dense_cumulative_nif, argc,
                    argv, [&] {
                      Output out(dense::element_count(shape), out_type);
                      dense::cumulative(op, shape, in, axis, reverse, out_type, out.data());
                      return out.release(env);
                    });
  });
}

namespace {

// n log2(n) comparisons along each line of `axis_size`, ~2 ns each.
double sort_cost(const Shape& shape, int64_t axis_size) {
  double log2 = 1;
  for (int64_t n = axis_size; n > 1; n >>= 1) log2 += 1;
  return count_of(shape) * log2 * 2;
}

}  // namespace

// dense_sort(shape, operand, axis, descending, index_type) -> binary
// index_type nil: the sorted values (operand's type); otherwise the indices (argsort).
ERL_NIF_TERM dense_sort_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_sort/5";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Shape shape = d.shape(0, "shape");
    const View in = d.operand(1, "operand", shape);
    if (shape.empty()) d.args().fail(0, "shape", "must have rank >= 1");
    const int axis =
        static_cast<int>(d.int64(2, "axis", 0, static_cast<int64_t>(shape.size()) - 1));
    const bool descending = d.boolean(3, "descending");
    Type index_type = Type::S64;
    const bool indices = d.optional_type(4, "index_type", &index_type);
    return schedule(env, sort_cost(shape, shape[axis]), "dense_sort", dense_sort_nif, argc, argv,
                    [&] {
                      Output out(dense::element_count(shape), indices ? index_type : in.type);
                      dense::sort(shape, in, axis, descending, indices ? nullptr : out.data(),
                                  index_type, indices ? out.data() : nullptr);
                      return out.release(env);
                    });
  });
}

// dense_top_k(shape, operand, k, index_type) -> {values, indices} along the last axis
ERL_NIF_TERM dense_top_k_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_top_k/4";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Shape shape = d.shape(0, "shape");
    const View in = d.operand(1, "operand", shape);
    if (shape.empty()) d.args().fail(0, "shape", "must have rank >= 1");
    const int64_t last = shape.back();
    const int64_t k = d.int64(2, "k", 0, last);
    const Type index_type = d.type(3, "index_type");
    Shape out_shape = shape;
    out_shape.back() = k;
    // one pass over the input keeping the k best, ~6 ns per element
    return schedule(env, count_of(shape) * 6, "dense_top_k", dense_top_k_nif, argc, argv, [&] {
      Output values(dense::element_count(out_shape), in.type);
      Output indices(dense::element_count(out_shape), index_type);
      dense::top_k(shape, in, k, values.data(), index_type, indices.data());
      ERL_NIF_TERM v = values.release(env);
      return enif_make_tuple2(env, v, indices.release(env));
    });
  });
}

// dense_gather(in_shape, operand, indices, index_count, axes) -> binary
// indices: an operand iterated over {index_count, length(axes)} (an integer type).
ERL_NIF_TERM dense_gather_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_gather/5";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Shape in_shape = d.shape(0, "in_shape");
    const View in = d.operand(1, "operand", in_shape);
    const std::vector<int> axes = d.axes(4, "axes", in_shape.size());
    const auto index_count =
        static_cast<size_t>(d.int64(3, "index_count", 0, static_cast<int64_t>(kMaxElements)));
    const Shape index_shape{static_cast<int64_t>(index_count), static_cast<int64_t>(axes.size())};
    const View indices = d.operand(2, "indices", index_shape);
    if (dense::is_float(indices.type)) d.args().fail(2, "indices", "must have an integer type");
    size_t slice = 1;
    for (size_t k = 0; k < in_shape.size(); ++k) {
      bool indexed = false;
      for (int a : axes) indexed = indexed || static_cast<size_t>(a) == k;
      if (!indexed) slice *= static_cast<size_t>(in_shape[k]);  // <= the shape's count
    }
    const size_t out_count = d.mul(index_count, slice, "the output");
    return schedule(env, static_cast<double>(out_count) * kCheapNs, "dense_gather",
                    dense_gather_nif, argc, argv, [&] {
                      Output out(out_count, in.type);
                      dense::gather(in_shape, in, indices, index_count, axes, out.data());
                      return out.release(env);
                    });
  });
}

// dense_matmul(out_type, batch, m, n, k, a, b) -> binary of {batch, m, n}
// a: an operand over {batch, m, k}, b over {batch, k, n}.
ERL_NIF_TERM dense_matmul_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = "dense_matmul/7";
  return guarded(env, fun, [&] {
    Decoder d(env, fun, argv);
    const Type out_type = d.type(0, "out_type");
    constexpr int64_t kMax = INT64_MAX;
    const int64_t batch = d.int64(1, "batch", 0, kMax);
    const int64_t m = d.int64(2, "m", 0, kMax);
    const int64_t n = d.int64(3, "n", 0, kMax);
    const int64_t k = d.int64(4, "k", 0, kMax);
    const View a = d.operand(5, "a", Shape{batch, m, k});
    const View b = d.operand(6, "b", Shape{batch, k, n});
    const size_t out_count =
        d.mul(d.mul(static_cast<size_t>(batch), static_cast<size_t>(m), "the output"),
              static_cast<size_t>(n), "the output");
    const double macs = static_cast<double>(out_count) * static_cast<double>(k);
    const bool floats = dense::is_float(a.type) || dense::is_float(b.type);
    const double mac_ns = floats ? kFloatMacNs : kIntMacNs;
    return schedule(env, (macs + static_cast<double>(out_count)) * mac_ns, "dense_matmul",
                    dense_matmul_nif, argc, argv, [&] {
                      Output out(out_count, out_type);
                      dense::matmul(batch, m, n, k, a, b, out_type, out.data());
                      return out.release(env);
                    });
  });
}

}  // namespace nx_quant::nif
