// Batched quantized matmul and gather_qmm: index bookkeeping above the 2-D quantized_matmul.
//
// Both reduce to a list of (x matrix, weight matrix) pairs, one per output position. The pairs
// are grouped by weight matrix (sorted), and each selected matrix runs ONE
// quantized_matmul over all the rows that chose it, so its bytes are streamed once per call:
// a mixture-of-experts decode step reads only the experts its tokens picked. Positions whose x
// blocks and output blocks are consecutive run in place; others are gathered into a scratch
// buffer and scattered back (byte copies, whatever the dtypes).
#include "nx_quant/batched.h"

#include "parallel.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace nx_quant {

namespace {

std::string shape_text(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// For every position of `out_shape` (row-major), the flat index of the element of an array of
// shape `in_shape` that broadcasting maps there (in_shape is right-aligned, 1s stretch).
std::vector<size_t> broadcast_map(const Shape& out_shape, const Shape& in_shape) {
  const size_t total = shape_size(out_shape, "the broadcast shape");
  std::vector<size_t> map(total, 0);
  const size_t rank = out_shape.size();
  const size_t offset = rank - in_shape.size();
  // in-strides laid out on out's axes (0 for missing or stretched axes)
  std::vector<size_t> strides(rank, 0);
  size_t stride = 1;
  for (size_t a = in_shape.size(); a-- > 0;) {
    strides[a + offset] = in_shape[a] == 1 ? 0 : stride;
    stride *= in_shape[a];
  }
  std::vector<size_t> index(rank, 0);
  size_t flat = 0;
  for (size_t p = 0; p < total; ++p) {
    map[p] = flat;
    for (size_t a = rank; a-- > 0;) {  // odometer increment
      flat += strides[a];
      if (++index[a] < out_shape[a]) break;
      flat -= strides[a] * index[a];
      index[a] = 0;
    }
  }
  return map;
}

struct Pairs {
  std::vector<size_t> x;  // x matrix of each output position
  std::vector<size_t> w;  // weight matrix of each output position
};

// Throws InvalidArgument for the first value of a present index array outside [0, count).
void check_indices(const IndexArray& idx, size_t count, const char* name, const char* operand) {
  if (!idx.present) return;
  const size_t n = shape_size(idx.shape, name);
  for (size_t i = 0; i < n; ++i) {
    const int64_t value = idx.data[i];
    if (value < 0 || static_cast<uint64_t>(value) >= count) {
      throw InvalidArgument(std::string(name) + " holds " + std::to_string(value) +
                            ", out of range for the " + std::to_string(count) + " " + operand +
                            " (valid: 0.." + std::to_string(count == 0 ? 0 : count - 1) +
                            (count == 0 ? ", none" : "") + ")");
    }
  }
}

// The pairs of gather_qmm (indices out of range become `count`, which estimates skip; the
// call itself checks them first).
Pairs gather_pairs(const Shape& out_batch, const Shape& x_batch, size_t x_count,
                   const QuantizedBatch& w, size_t w_count, const IndexArray& lhs,
                   const IndexArray& rhs) {
  auto side = [&](const IndexArray& idx, const Shape& batch, size_t count) {
    std::vector<size_t> map = broadcast_map(out_batch, idx.present ? idx.shape : batch);
    if (!idx.present) return map;  // the arange: the flat position is the index
    for (size_t& v : map) {
      const int64_t value = idx.data[v];
      v = value < 0 || static_cast<uint64_t>(value) >= count ? count : static_cast<size_t>(value);
    }
    return map;
  };
  return Pairs{side(lhs, x_batch, x_count), side(rhs, w.batch, w_count)};
}

struct Dims {
  size_t k = 0, n = 0;
};

Dims matmul_dims(const QuantizedBatch& w, bool transpose) {
  const size_t rows = batch_matrix_rows(w);
  return transpose ? Dims{w.stacked.cols, rows} : Dims{rows, w.stacked.cols};
}

void validate_sizes(ConstBuffer x, DType x_dtype, size_t x_count, size_t m, Dims d,
                    size_t out_count, DType out_dtype, MutableBuffer out, const Shape& x_batch,
                    const Shape& out_batch) {
  const size_t x_bytes = checked_mul(checked_mul(checked_mul(x_count, m, "x size"), d.k, "x size"),
                                     dtype_size(x_dtype), "x bytes");
  if (x.bytes != x_bytes || (x.data == nullptr && x_bytes != 0)) {
    throw InvalidArgument("x has " + std::to_string(x.bytes) + " bytes, expected " +
                          std::to_string(x_bytes) + " for x of shape " + shape_text(x_batch) +
                          " ++ [" + std::to_string(m) + ", " + std::to_string(d.k) + "] in " +
                          dtype_name(x_dtype));
  }
  const size_t out_bytes =
      checked_mul(checked_mul(checked_mul(out_count, m, "out size"), d.n, "out size"),
                  dtype_size(out_dtype), "out bytes");
  if (out.bytes != out_bytes || (out.data == nullptr && out_bytes != 0)) {
    throw InvalidArgument("out has " + std::to_string(out.bytes) + " bytes, expected " +
                          std::to_string(out_bytes) + " for out of shape " + shape_text(out_batch) +
                          " ++ [" + std::to_string(m) + ", " + std::to_string(d.n) + "] in " +
                          dtype_name(out_dtype));
  }
}

// Positions grouped by weight matrix: group g holds order[start[g] .. start[g + 1]), the
// positions that chose matrix experts[g] (ascending). Sorting, rather than one bucket per
// matrix, keeps the work and memory proportional to the positions whatever the batch size;
// positions whose matrix is w_count or more (out of range, in estimates) are left out.
struct Groups {
  std::vector<size_t> experts;
  std::vector<size_t> start;
  std::vector<size_t> order;
};

Groups group_by_matrix(const std::vector<size_t>& w_of, size_t w_count) {
  Groups g;
  for (size_t p = 0; p < w_of.size(); ++p) {
    if (w_of[p] < w_count) g.order.push_back(p);
  }
  std::stable_sort(g.order.begin(), g.order.end(),
                   [&](size_t a, size_t b) { return w_of[a] < w_of[b]; });
  for (size_t i = 0; i < g.order.size(); ++i) {
    if (i == 0 || w_of[g.order[i]] != w_of[g.order[i - 1]]) {
      g.experts.push_back(w_of[g.order[i]]);
      g.start.push_back(i);
    }
  }
  g.start.push_back(g.order.size());
  return g;
}

void run_pairs(ConstBuffer x, DType x_dtype, size_t m, const QuantizedBatch& w, size_t w_count,
               const Pairs& pairs, bool transpose, DType out_dtype, MutableBuffer out,
               const ExecOptions& options) {
  const Dims d = matmul_dims(w, transpose);
  const size_t x_block = m * d.k * dtype_size(x_dtype);
  const size_t out_block = m * d.n * dtype_size(out_dtype);
  const Groups groups = group_by_matrix(pairs.w, w_count);
  const auto* xb = static_cast<const uint8_t*>(x.data);
  auto* ob = static_cast<uint8_t*>(out.data);
  const std::vector<size_t>& selected = groups.experts;
  // One matrix's rows on one thread each: with several matrices selected (a MoE step), the
  // threads split the matrices instead of each small matmul splitting over the threads (which
  // would pay a wake-up of the pool per matrix).
  ExecOptions each = options;
  if (selected.size() > 1) each.threads = 1;
  auto run = [&](size_t begin_sel, size_t end_sel) {
    std::vector<uint8_t> x_scratch, out_scratch;
    for (size_t s = begin_sel; s < end_sel; ++s) {
      const size_t e = selected[s];
      const size_t begin = groups.start[s], count = groups.start[s + 1] - begin;
      const size_t* ps = groups.order.data() + begin;
      bool in_place = true;
      for (size_t j = 1; j < count && in_place; ++j) {
        in_place = ps[j] == ps[0] + j && pairs.x[ps[j]] == pairs.x[ps[0]] + j;
      }
      const QuantizedMatrix matrix = batch_matrix(w, e);
      const size_t rows = count * m;
      if (in_place) {
        quantized_matmul({xb + pairs.x[ps[0]] * x_block, count * x_block}, x_dtype, rows, matrix,
                         transpose, out_dtype, {ob + ps[0] * out_block, count * out_block}, each);
        continue;
      }
      x_scratch.resize(count * x_block);
      out_scratch.resize(count * out_block);
      for (size_t j = 0; j < count && x_block != 0; ++j) {  // (K = 0: x may be null)
        std::memcpy(x_scratch.data() + j * x_block, xb + pairs.x[ps[j]] * x_block, x_block);
      }
      quantized_matmul({x_scratch.data(), count * x_block}, x_dtype, rows, matrix, transpose,
                       out_dtype, {out_scratch.data(), count * out_block}, each);
      for (size_t j = 0; j < count; ++j) {
        std::memcpy(ob + ps[j] * out_block, out_scratch.data() + j * out_block, out_block);
      }
    }
  };
  if (selected.size() > 1 && options.threads != 1) {
    detail::parallel_for(selected.size(), 1, options.threads, run);
  } else {
    run(0, selected.size());
  }
}

// Validates options, dtypes and the stacked matrix through the 2-D API (an m = 0 call does
// every check of quantized_matmul and no work).
void probe_2d(DType x_dtype, const QuantizedBatch& w, bool transpose, DType out_dtype,
              const ExecOptions& options) {
  quantized_matmul({nullptr, 0}, x_dtype, 0, w.stacked, transpose, out_dtype, {nullptr, 0},
                   options);
}

double estimate_pairs(size_t m, const QuantizedBatch& w, size_t w_count,
                      const std::vector<size_t>& w_of, bool transpose, const ExecOptions& options) {
  QuantizedMatrix shape_only = w.stacked;
  shape_only.rows = w_count == 0 ? 0 : w.stacked.rows / w_count;
  const Groups groups = group_by_matrix(w_of, w_count);
  double ns = 0;
  for (size_t g = 0; g < groups.experts.size(); ++g) {
    const size_t count = groups.start[g + 1] - groups.start[g];
    ns += estimated_matmul_ns(count * m, shape_only, transpose, options);
  }
  return ns + static_cast<double>(w_of.size()) * 50.0;  // per-position bookkeeping
}

// Estimates that need no per-position maps: an empty output costs nothing to speak of, and
// more than 2^22 positions are estimated as one matmul per position (high) instead of building
// maps before the call has even allocated its output. -1: build the maps.
double without_maps(size_t positions, size_t m, const QuantizedBatch& w, size_t w_count,
                    bool transpose, const ExecOptions& options) {
  QuantizedMatrix shape_only = w.stacked;
  shape_only.rows = w_count == 0 ? 0 : w.stacked.rows / w_count;
  if (positions == 0 || m == 0 || shape_only.rows == 0 || w.stacked.cols == 0) return 1000;
  if (positions <= (size_t{1} << 22)) return -1;
  return static_cast<double>(positions) * estimated_matmul_ns(m, shape_only, transpose, options);
}

}  // namespace

size_t shape_size(const Shape& shape, const char* what) {
  size_t n = 1;
  for (size_t d : shape) n = checked_mul(n, d, what);
  return n;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* what) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    const size_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const size_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) {
      throw InvalidArgument(std::string(what) + " " + shape_text(a) + " and " + shape_text(b) +
                            " do not broadcast (axis " + std::to_string(i) + " of the result: " +
                            std::to_string(da) + " vs " + std::to_string(db) + ")");
    }
    out[i] = da == 1 ? db : da;
  }
  return out;
}

void validate_quantized_batch(const QuantizedBatch& w, const char* name) {
  validate_quantized_matrix(w.stacked, name);
  const size_t count = shape_size(w.batch, "the weight's batch size");
  if (count == 0 ? w.stacked.rows != 0 : w.stacked.rows % count != 0) {
    throw InvalidArgument(std::string(name) + ": its " + std::to_string(w.stacked.rows) +
                          " stacked rows do not split into " + std::to_string(count) +
                          " matrices (batch shape " + shape_text(w.batch) + ")");
  }
}

size_t batch_matrix_rows(const QuantizedBatch& w) {
  const size_t count = shape_size(w.batch, "the weight's batch size");
  return count == 0 ? 0 : w.stacked.rows / count;
}

QuantizedMatrix batch_matrix(const QuantizedBatch& w, size_t i) {
  const size_t count = shape_size(w.batch, "the weight's batch size");
  if (i >= count) {
    throw InvalidArgument("matrix " + std::to_string(i) + " of a batch of " +
                          std::to_string(count));
  }
  QuantizedMatrix m = w.stacked;
  m.rows = w.stacked.rows / count;
  auto slice = [&](ConstBuffer b) {
    const size_t bytes = b.bytes / count;
    if (bytes == 0) return ConstBuffer{b.data, 0};
    return ConstBuffer{static_cast<const uint8_t*>(b.data) + i * bytes, bytes};
  };
  m.packed = slice(w.stacked.packed);
  m.scales = slice(w.stacked.scales);
  m.biases = slice(w.stacked.biases);
  return m;
}

void batched_quantized_matmul(ConstBuffer x, DType x_dtype, const Shape& x_batch, size_t m,
                              const QuantizedBatch& w, bool transpose, DType out_dtype,
                              MutableBuffer out, const ExecOptions& options) {
  validate_quantized_batch(w, "w");
  probe_2d(x_dtype, w, transpose, out_dtype, options);
  const size_t x_count = shape_size(x_batch, "x's batch size");
  if (w.batch.empty()) {  // one 2-D weight: x's leading axes are rows
    quantized_matmul(x, x_dtype, checked_mul(x_count, m, "x rows"), w.stacked, transpose, out_dtype,
                     out, options);
    return;
  }
  const Shape out_batch = broadcast_shapes(x_batch, w.batch, "the batch shapes of x and w");
  const size_t out_count = shape_size(out_batch, "the output's batch size");
  validate_sizes(x, x_dtype, x_count, m, matmul_dims(w, transpose), out_count, out_dtype, out,
                 x_batch, out_batch);
  if (out.bytes == 0) return;  // (the maps below are no larger than the output)
  Pairs pairs{broadcast_map(out_batch, x_batch), broadcast_map(out_batch, w.batch)};
  run_pairs(x, x_dtype, m, w, shape_size(w.batch, ""), pairs, transpose, out_dtype, out, options);
}

Shape gather_qmm_out_batch(const Shape& x_batch, const QuantizedBatch& w, const IndexArray& lhs,
                           const IndexArray& rhs) {
  return broadcast_shapes(lhs.present ? lhs.shape : x_batch, rhs.present ? rhs.shape : w.batch,
                          "the index shapes (lhs_indices, rhs_indices)");
}

void gather_qmm(ConstBuffer x, DType x_dtype, const Shape& x_batch, size_t m,
                const QuantizedBatch& w, const IndexArray& lhs, const IndexArray& rhs,
                bool transpose, DType out_dtype, MutableBuffer out, const ExecOptions& options) {
  validate_quantized_batch(w, "w");
  probe_2d(x_dtype, w, transpose, out_dtype, options);
  const size_t x_count = shape_size(x_batch, "x's batch size");
  const size_t w_count = shape_size(w.batch, "w's batch size");
  shape_size(lhs.shape, "lhs_indices size");
  shape_size(rhs.shape, "rhs_indices size");
  const Shape out_batch = gather_qmm_out_batch(x_batch, w, lhs, rhs);
  const size_t out_count = shape_size(out_batch, "the output's batch size");
  validate_sizes(x, x_dtype, x_count, m, matmul_dims(w, transpose), out_count, out_dtype, out,
                 x_batch, out_batch);
  check_indices(lhs, x_count, "lhs_indices", "matrices of x");
  check_indices(rhs, w_count, "rhs_indices", "matrices of w");
  if (out.bytes == 0) return;  // (the maps below are no larger than the output)
  const Pairs pairs = gather_pairs(out_batch, x_batch, x_count, w, w_count, lhs, rhs);
  run_pairs(x, x_dtype, m, w, w_count, pairs, transpose, out_dtype, out, options);
}

double estimated_batched_matmul_ns(const Shape& x_batch, size_t m, const QuantizedBatch& w,
                                   bool transpose, const ExecOptions& options) {
  try {
    const size_t x_count = shape_size(x_batch, "");
    if (w.batch.empty()) return estimated_matmul_ns(x_count * m, w.stacked, transpose, options);
    const Shape out_batch = broadcast_shapes(x_batch, w.batch, "");
    const size_t w_count = shape_size(w.batch, "");
    if (const double ns =
            without_maps(shape_size(out_batch, ""), m, w, w_count, transpose, options);
        ns >= 0) {
      return ns;
    }
    return estimate_pairs(m, w, w_count, broadcast_map(out_batch, w.batch), transpose, options);
  } catch (const InvalidArgument&) {
    return 0;  // the call itself will fail
  }
}

double estimated_gather_qmm_ns(const Shape& x_batch, size_t m, const QuantizedBatch& w,
                               const IndexArray& lhs, const IndexArray& rhs, bool transpose,
                               const ExecOptions& options) {
  try {
    const size_t x_count = shape_size(x_batch, "");
    const size_t w_count = shape_size(w.batch, "");
    const Shape out_batch = gather_qmm_out_batch(x_batch, w, lhs, rhs);
    if (const double ns =
            without_maps(shape_size(out_batch, ""), m, w, w_count, transpose, options);
        ns >= 0) {
      return ns;
    }
    const Pairs pairs = gather_pairs(out_batch, x_batch, x_count, w, w_count, lhs, rhs);
    return estimate_pairs(m, w, w_count, pairs.w, transpose, options);
  } catch (const InvalidArgument&) {
    return 0;  // the call itself will fail
  }
}

}  // namespace nx_quant
