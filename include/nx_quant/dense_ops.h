// Dense tensor operations with Nx.BinaryBackend's semantics, on raw row-major buffers.
//
// These are the kernels of the native dense path (the default inner backend of the Nx shim):
// the operations a transformer's forward pass spends its time in, run directly on the tensors'
// binaries. They know nothing of the BEAM or of Nx; the NIF layer converts terms into the
// descriptors below and the Elixir layer decides shapes, strides and types.
//
// Semantics (what "bit-identical with Nx.BinaryBackend" means here). BinaryBackend reads every
// element exactly into an Elixir number (a double for floats, an integer for integers), computes
// in double / arbitrary-precision integers, and writes the result to the output type:
//   - floats: round to nearest even to f64/f32/f16; bf16 = the f32 rounding truncated to its top
//     16 bits (BinaryBackend's dump_bf16), NaN written as the canonical quiet NaN of the type;
//   - integers: the value's low bits (two's-complement wraparound);
//   - float -> integer (as_type): truncation toward zero, NaN -> 0, +-Inf -> the type's
//     max/min finite value.
// The kernels reproduce that: a single correctly rounded operation on f32/f16/bf16 inputs is
// computed in f32 (the same bits: f32 has more than twice the precision of f16/bf16 plus two
// bits, and double more than twice f32's), integers in wrapping 64-bit arithmetic, mixed
// integer/float operands in double; transcendental functions call the C library in double (the
// functions Erlang's :math calls), then round as above — except exp and sigmoid written as
// f32/bf16/f16 on AVX2 CPUs, which use a SIMD exp in double (~2 ulp of double; after rounding
// to the narrow type within 1 ulp of the C library's result, almost always identical). Sums,
// products and dot products accumulate in double in BinaryBackend's order (row-major over the
// reduced/contracted axes, starting from 0 / 1), so they are bit-identical too. Where BinaryBackend
// raises on an f64 overflow (Erlang arithmetic has no Inf), the kernels return the IEEE result.
//
// Every function validates its arguments (rank, sizes, strides within the buffers) and throws
// nx_quant::InvalidArgument naming what was wrong; none reads or writes outside the buffers it
// was given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace nx_quant::dense {

// Nx's element types (complex and f8 are not covered: the Elixir layer falls back for them).
enum class Type : uint8_t { U8, U16, U32, U64, S8, S16, S32, S64, F16, BF16, F32, F64 };

size_t type_size(Type t);
bool is_float(Type t);
bool is_signed_int(Type t);
const char* type_name(Type t);  // "u8", ..., "bf16", "f64" (Nx's short names)

using Shape = std::vector<int64_t>;

// An input operand seen through an iteration shape: the element at multi-index (i_0..i_{r-1})
// is element `offset + sum(i_k * strides[k])` of `data` (counted in elements of `type`).
// Strides may be 0 (broadcast axis) or negative (reversed axis). `count` is the number of
// elements the buffer holds; every reachable element must be inside it.
struct View {
  const void* data = nullptr;
  size_t count = 0;
  Type type = Type::F32;
  int64_t offset = 0;
  std::vector<int64_t> strides;
};

// A row-major contiguous view of a whole buffer of `shape`.
View contiguous(const void* data, Type type, const Shape& shape);

// The strides (in elements) of a row-major contiguous tensor of `shape`.
std::vector<int64_t> contiguous_strides(const Shape& shape);

size_t element_count(const Shape& shape);

enum class UnaryOp : uint8_t {
  Copy,  // conversion to the output type (as_type, and every strided copy: transpose, slice,
         // broadcast, reverse)
  Negate,
  Abs,
  Sign,
  Floor,
  Ceil,
  Round,  // half away from zero (Erlang's round/1)
  Exp,
  Expm1,
  Log,
  Log1p,
  Sigmoid,
  Tanh,
  Sqrt,
  Rsqrt,
  Cbrt,
  Cos,
  Sin,
  Tan,
  Acos,
  Asin,
  Atan,
  Cosh,
  Sinh,
  Acosh,
  Asinh,
  Atanh,
  Erf,
  Erfc,
  ErfInv,
  IsNan,       // output u8
  IsInfinity,  // output u8
  LogicalNot,  // output u8
  BitwiseNot,
};

enum class BinaryOp : uint8_t {
  Add,
  Subtract,
  Multiply,
  Divide,
  Pow,
  Max,
  Min,
  Quotient,
  Remainder,
  Atan2,
  Equal,  // comparisons and logical ops write u8 0/1
  NotEqual,
  Less,
  LessEqual,
  Greater,
  GreaterEqual,
  LogicalAnd,
  LogicalOr,
  LogicalXor,
  BitwiseAnd,
  BitwiseOr,
  BitwiseXor,
  LeftShift,
  RightShift,
};

// out[i] = op(in[i]) for every multi-index i of `shape`, written row-major contiguous as
// `out_type`. `threads`: 0 = the library default, 1 = the calling thread only.
void unary(UnaryOp op, const Shape& shape, const View& in, Type out_type, void* out,
           int threads = 0);

void binary(BinaryOp op, const Shape& shape, const View& a, const View& b, Type out_type, void* out,
            int threads = 0);

// out[i] = pred[i] != 0 ? on_true[i] : on_false[i] (pred of any type; a float NaN is true).
void select(const Shape& shape, const View& pred, const View& on_true, const View& on_false,
            Type out_type, void* out, int threads = 0);

// out[i] = min(max(in[i], lo[i]), hi[i]) as Nx.clip.
void clip(const Shape& shape, const View& in, const View& lo, const View& hi, Type out_type,
          void* out, int threads = 0);

// Writes `in` (iterated over `shape`, converted to out_type) into a strided window of `out`:
// element i goes to out element `out_offset + sum(i_k * out_strides[k])`; `out_count` is the
// number of elements `out` holds. Used for concatenate, pad, stack and put_slice after the
// caller has filled `out` (see fill()).
void copy_into(const Shape& shape, const View& in, Type out_type, void* out, size_t out_count,
               int64_t out_offset, const std::vector<int64_t>& out_strides, int threads = 0);

// Fills `count` elements of `out` with `value` (one element of value.type) converted to `type`.
void fill(Type type, void* out, size_t count, const View& value);

// Nx.iota: out[i] = i_axis (or the flat index when axis < 0), as `type`.
void iota(Type type, const Shape& shape, int axis, void* out);

enum class ReduceOp : uint8_t { Sum, Product, Max, Min, All, Any, ArgMax, ArgMin };
enum class TieBreak : uint8_t { Low, High };

// Reduces `in` (iterated over `in_shape`) over `axes` (sorted, distinct); the output is the
// remaining axes row-major, as `out_type`. ArgMax/ArgMin write the index along the single
// reduced axis, or the flat index over all reduced axes when several are reduced (Nx: argmax
// without :axis over the whole tensor).
void reduce(ReduceOp op, const Shape& in_shape, const View& in, const std::vector<int>& axes,
            Type out_type, void* out, TieBreak tie_break = TieBreak::Low, int threads = 0);

enum class CumulativeOp : uint8_t { Sum, Product, Max, Min };

// Nx.cumulative_sum & co along `axis` (reverse: from the end), output contiguous `out_type`.
void cumulative(CumulativeOp op, const Shape& shape, const View& in, int axis, bool reverse,
                Type out_type, void* out, int threads = 0);

// Nx.sort / Nx.argsort along `axis`, with Nx's order (NaN greater than everything), stable.
// Writes the sorted values (values_out, as in.type) and/or their indices (indices_out, as
// index_type); either may be null.
void sort(const Shape& shape, const View& in, int axis, bool descending, void* values_out,
          Type index_type, void* indices_out, int threads = 0);

// Nx.top_k along the last axis: the k largest values and their indices, as Nx returns them.
void top_k(const Shape& shape, const View& in, int64_t k, void* values_out, Type index_type,
           void* indices_out, int threads = 0);

// Nx.gather: for each of `index_count` index tuples (indices: index_count x axes.size()
// integers of `indices.type`, row-major), copies the slice of `in` at that position over
// `axes` (the other axes whole). An out-of-range index throws InvalidArgument before anything
// is written, with BinaryBackend's message.
void gather(const Shape& in_shape, const View& in, const View& indices, size_t index_count,
            const std::vector<int>& axes, void* out, int threads = 0);

// Batched matrix product out[b, m, n] = sum_k a[b, m, k] * b[b, k, n], with `a` iterated over
// {batch, m, k} and `b` over {batch, k, n} (any strides). Accumulated in double (wrapping
// int64 for integer outputs) in increasing k, then written as out_type: bit-identical with
// BinaryBackend's dot.
void matmul(int64_t batch, int64_t m, int64_t n, int64_t k, const View& a, const View& b,
            Type out_type, void* out, int threads = 0);

}  // namespace nx_quant::dense
