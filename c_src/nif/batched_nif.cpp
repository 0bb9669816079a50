// The batched-weight NIFs: the batched quantized matmul and gather_qmm (include/nx_quant/
// batched.h). The resource holds a batch as its stacked 2-D matrix; the batch shape comes
// with each call (from the Elixir struct, which NxQuant.Core checks against the resource) and
// the kernel library checks that the stacked rows split into it.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "nif_functions.h"
#include "nx_quant/batched.h"
#include "qtensor_resource.h"
#include "terms.h"

namespace nx_quant::nif {

namespace {

constexpr int kMaxThreads = 1024;
// Batch shapes and index arrays are bookkeeping: more positions than this is a mistake.
constexpr size_t kMaxPositions = size_t{1} << 32;
constexpr unsigned kMaxRank = 32;

// A list of non-negative integers (a shape), at most kMaxRank long, product <= kMaxPositions.
Shape shape_arg(const Args& args, ERL_NIF_TERM term, int i, const char* name) {
  unsigned length = 0;
  if (!enif_get_list_length(args.env(), term, &length) || length > kMaxRank) {
    args.expected(i, name, "a list of at most 32 non-negative integers (a shape)");
  }
  Shape shape;
  ERL_NIF_TERM head, tail = term;
  size_t product = 1;
  while (enif_get_list_cell(args.env(), tail, &head, &tail)) {
    ErlNifUInt64 v = 0;
    if (!enif_get_uint64(args.env(), head, &v) || v > kMaxPositions) {
      args.expected(i, name, "a list of non-negative integers (a shape)");
    }
    shape.push_back(static_cast<size_t>(v));
    product = v == 0 ? 0 : (product > kMaxPositions / v ? kMaxPositions + 1 : product * v);
  }
  if (product > kMaxPositions) {
    args.fail(i, name, "has more than 2^32 positions");
  }
  return shape;
}

// nil (absent) or {binary of native-endian int64, shape list}. `storage` keeps an aligned copy
// when the binary is misaligned.
IndexArray index_arg(const Args& args, int i, const char* name, std::vector<int64_t>& storage) {
  ErlNifEnv* env = args.env();
  if (enif_is_identical(args.term(i), enif_make_atom(env, "nil"))) return {};
  int arity = 0;
  const ERL_NIF_TERM* items = nullptr;
  ErlNifBinary bin;
  if (!enif_get_tuple(env, args.term(i), &arity, &items) || arity != 2 ||
      !enif_inspect_binary(env, items[0], &bin)) {
    args.expected(i, name, "nil or {binary of int64 indices, shape list}");
  }
  Shape shape = shape_arg(args, items[1], i, name);
  const size_t count = shape_size(shape, name);
  if (bin.size != count * sizeof(int64_t)) {
    args.fail(i, name,
              "has " + std::to_string(bin.size) + " bytes of indices, expected " +
                  std::to_string(count * sizeof(int64_t)) + " (" + std::to_string(count) +
                  " int64 values)");
  }
  if (reinterpret_cast<uintptr_t>(bin.data) % alignof(int64_t) == 0) {
    return {reinterpret_cast<const int64_t*>(bin.data), shape};
  }
  storage.resize(count);
  if (count) std::memcpy(storage.data(), bin.data, bin.size);
  return {storage.data(), shape};
}

ConstBuffer aligned_input(const ErlNifBinary& bin, size_t alignment, std::vector<uint32_t>& copy) {
  if (reinterpret_cast<uintptr_t>(bin.data) % alignment == 0) return {bin.data, bin.size};
  copy.resize((bin.size + 3) / 4);
  std::memcpy(copy.data(), bin.data, bin.size);
  return {copy.data(), bin.size};
}

struct Common {
  ErlNifBinary x;
  DType x_dtype;
  Shape x_batch;
  size_t m;
  QuantizedBatch w;
  bool transpose;
  DType out_dtype;
  ExecOptions options;
};

// Arguments 0-4 (x, x_dtype, x_batch, m, ref, w_batch) and the trailing transpose, out_dtype,
// threads, precision starting at `tail`.
Common common_args(const Args& args, int tail) {
  Common c;
  c.x = args.binary(0, "x");
  c.x_dtype = args.dtype(1, "x_dtype");
  c.x_batch = shape_arg(args, args.term(2), 2, "x_batch");
  c.m = args.size(3, "m");
  c.w.stacked = get_qtensor(args, 4, "w").matrix;
  c.w.batch = shape_arg(args, args.term(5), 5, "w_batch");
  c.transpose = args.boolean(tail, "transpose");
  c.out_dtype = args.dtype(tail + 1, "out_dtype");
  c.options.threads = args.integer(tail + 2, "threads", 0, kMaxThreads);
  c.options.precision = args.precision(tail + 3, "precision");
  c.options.batch_invariant = args.batch_invariant(tail + 3);
  validate_quantized_batch(c.w, "w");
  const size_t rows = batch_matrix_rows(c.w);
  const size_t k = c.transpose ? c.w.stacked.cols : rows;
  const size_t expected = mul_or_fail(
      mul_or_fail(mul_or_fail(shape_size(c.x_batch, "x_batch"), c.m, "x size"), k, "x size"),
      dtype_size(c.x_dtype), "x size");
  if (c.x.size != expected) {
    args.fail(0, "x",
              "has " + std::to_string(c.x.size) + " bytes, expected " + std::to_string(expected) +
                  " (the x batch, then " + std::to_string(c.m) + " x " + std::to_string(k) + " " +
                  dtype_name(c.x_dtype) + ")");
  }
  return c;
}

size_t out_bytes(const Common& c, const Shape& out_batch) {
  const size_t rows = batch_matrix_rows(c.w);
  const size_t n = c.transpose ? rows : c.w.stacked.cols;
  return mul_or_fail(
      mul_or_fail(mul_or_fail(shape_size(out_batch, "out batch"), c.m, "out size"), n, "out size"),
      dtype_size(c.out_dtype), "out size");
}

}  // namespace

// batched_matmul(x, x_dtype, x_batch, m, ref, w_batch, transpose, out_dtype, threads,
//                precision) -> binary of broadcast(x_batch, w_batch) x m x n
ERL_NIF_TERM batched_matmul_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return guarded(env, "batched_matmul/10", [&] {
    const Args args(env, "batched_matmul/10", argv);
    const Common c = common_args(args, 6);
    const Shape out_batch =
        c.w.batch.empty() ? c.x_batch
                          : broadcast_shapes(c.x_batch, c.w.batch, "the batch shapes of x and w");
    if (shape_size(out_batch, "out batch") > kMaxPositions) {
      args.fail(2, "x_batch", "broadcasts to more than 2^32 positions");
    }
    const size_t bytes = out_bytes(c, out_batch);
    return run_scheduled(
        env, estimated_batched_matmul_ns(c.x_batch, c.m, c.w, c.transpose, c.options),
        kNormalSchedulerBudgetNs, "batched_matmul", batched_matmul_nif, argc, argv, [&] {
          std::vector<uint32_t> copy;
          const ConstBuffer x = aligned_input(c.x, dtype_size(c.x_dtype), copy);
          OutputBinary out(bytes);
          batched_quantized_matmul(x, c.x_dtype, c.x_batch, c.m, c.w, c.transpose, c.out_dtype,
                                   out.buffer(), c.options);
          return out.release_to_term(env);
        });
  });
}

// gather_qmm(x, x_dtype, x_batch, m, ref, w_batch, lhs, rhs, transpose, out_dtype, threads,
//            precision) -> binary of broadcast(lhs shape, rhs shape) x m x n
//   lhs, rhs: nil (an arange over the operand's batch) or {int64 binary, shape list}
ERL_NIF_TERM gather_qmm_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return guarded(env, "gather_qmm/12", [&] {
    const Args args(env, "gather_qmm/12", argv);
    const Common c = common_args(args, 8);
    std::vector<int64_t> lhs_copy, rhs_copy;
    const IndexArray lhs = index_arg(args, 6, "lhs_indices", lhs_copy);
    const IndexArray rhs = index_arg(args, 7, "rhs_indices", rhs_copy);
    const Shape out_batch = gather_qmm_out_batch(c.x_batch, c.w, lhs, rhs);
    if (shape_size(out_batch, "out batch") > kMaxPositions) {
      args.fail(7, "rhs_indices", "broadcasts to more than 2^32 positions");
    }
    const size_t bytes = out_bytes(c, out_batch);
    return run_scheduled(
        env, estimated_gather_qmm_ns(c.x_batch, c.m, c.w, lhs, rhs, c.transpose, c.options),
        kNormalSchedulerBudgetNs, "gather_qmm", gather_qmm_nif, argc, argv, [&] {
          std::vector<uint32_t> copy;
          const ConstBuffer x = aligned_input(c.x, dtype_size(c.x_dtype), copy);
          OutputBinary out(bytes);
          gather_qmm(x, c.x_dtype, c.x_batch, c.m, c.w, lhs, rhs, c.transpose, c.out_dtype,
                     out.buffer(), c.options);
          return out.release_to_term(env);
        });
  });
}

}  // namespace nx_quant::nif
