// Batched quantized weights ([E..., rows, cols], MLX's layout for mixtures of experts) and the
// gathered quantized matmul (MLX's gather_qmm), built on the 2-D API of kernels.h.
//
// A batched weight is `count` = prod(batch) quantized matrices of identical shape stored one
// after the other, which is exactly one (count * rows) x cols QuantizedMatrix: its packed words,
// scales and biases each split into `count` equal consecutive byte ranges. Matrix i is taken by
// those byte offsets (batch_matrix), so the slicing holds for any QuantSpec whose buffers grow
// with the number of rows (biases may be empty).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "nx_quant/kernels.h"

namespace nx_quant {

using Shape = std::vector<size_t>;

struct QuantizedBatch {
  QuantizedMatrix stacked;  // all matrices as one (prod(batch) * rows) x cols matrix
  Shape batch;              // the batch shape ([E] for experts; empty: one 2-D matrix)
};

// An optional integer index array (row-major, `shape`); default-constructed means "absent"
// (an empty array is present, with a zero in its shape, whatever its data pointer).
struct IndexArray {
  const int64_t* data = nullptr;
  Shape shape;
  bool present = false;

  IndexArray() = default;
  IndexArray(const int64_t* values, Shape index_shape)
      : data(values), shape(std::move(index_shape)), present(true) {}
};

// prod(shape), throwing InvalidArgument naming `what` on size_t overflow.
size_t shape_size(const Shape& shape, const char* what);

// numpy's broadcast of two shapes (aligned on their last axes; a 1 stretches), or
// InvalidArgument naming `what` and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* what);

// Throws InvalidArgument unless `w.stacked` is a valid matrix whose rows split evenly into
// prod(w.batch) matrices (an empty batch product needs zero rows).
void validate_quantized_batch(const QuantizedBatch& w, const char* name);

// The rows of one matrix of a validated batch.
size_t batch_matrix_rows(const QuantizedBatch& w);

// Matrix i (0 <= i < prod(batch)) of a validated batch: byte ranges of the stacked buffers.
QuantizedMatrix batch_matrix(const QuantizedBatch& w, size_t i);

// out[B..., m, N] = x[Bx..., m, K] . W[Bw...] with numpy broadcasting of the batch shapes
// (B = broadcast(Bx, Bw)); the layouts are quantized_matmul's (transpose = true: each matrix is
// [N, K]). An empty Bw is a single 2-D weight: then x's leading axes are simply rows.
// (MLX broadcasts only when both operands have rank > 2; a rank-2 x against a batched weight is
// broadcast here too, as numpy's matmul does, rather than multiplied by the first matrix.)
void batched_quantized_matmul(ConstBuffer x, DType x_dtype, const Shape& x_batch, size_t m,
                              const QuantizedBatch& w, bool transpose, DType out_dtype,
                              MutableBuffer out, const ExecOptions& options = {});

// MLX's gather_qmm: x is [Bx..., m, K], viewed as prod(Bx) matrices; w a batch of prod(Bw)
// matrices. For every position p of I = broadcast(lhs.shape, rhs.shape), out[p] (m x N) =
// x[lhs[p]] . W[rhs[p]], indices into the flattened batches. An absent index array is an arange
// over its operand's batch shape (reshaped to it). Every index is checked (0 <= lhs < prod(Bx),
// 0 <= rhs < prod(Bw)) before any work. Each selected matrix is streamed once per call: the
// positions choosing it are multiplied together as one (count * m)-row matmul.
void gather_qmm(ConstBuffer x, DType x_dtype, const Shape& x_batch, size_t m,
                const QuantizedBatch& w, const IndexArray& lhs, const IndexArray& rhs,
                bool transpose, DType out_dtype, MutableBuffer out,
                const ExecOptions& options = {});

// The batch shape of gather_qmm's result (broadcast of the two index shapes, absent ones
// replaced by their operand's batch shape); throws InvalidArgument if they do not broadcast.
Shape gather_qmm_out_batch(const Shape& x_batch, const QuantizedBatch& w, const IndexArray& lhs,
                           const IndexArray& rhs);

// Run-time estimates in the manner of estimated_matmul_ns (one thread, high rather than low):
// one matmul per distinct selected matrix. Arguments are not validated (indices out of range
// are skipped); a call that will fail gets some estimate.
double estimated_batched_matmul_ns(const Shape& x_batch, size_t m, const QuantizedBatch& w,
                                   bool transpose, const ExecOptions& options = {});
double estimated_gather_qmm_ns(const Shape& x_batch, size_t m, const QuantizedBatch& w,
                               const IndexArray& lhs, const IndexArray& rhs, bool transpose,
                               const ExecOptions& options = {});

}  // namespace nx_quant
