// The one NIF resource type: a quantized matrix (packed words, scales, biases and metadata).
//
// The resource does not care who owns the three buffers. It holds a QuantizedMatrix whose
// buffers are plain views, plus a `keeper`: a shared_ptr whose deleter releases the memory
// when the resource is garbage collected (after the last Elixir reference AND the last
// resource binary made by parts/1 are gone). So a buffer may be
//   * owned: allocate_owned_qtensor() below (64-byte aligned heap blocks), or
//   * borrowed: e.g. an mmap'd checkpoint, where `keeper` is a shared_ptr to the mapping
//     (its deleter munmaps; several tensors of one file share it). Any release callback
//     fits: std::shared_ptr<const void>(handle, [](const void* h) { release(h); }).
// Buffers must stay valid and unchanged for as long as the keeper lives.
#pragma once

#include <erl_nif.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "nx_quant/kernels.h"
#include "terms.h"

namespace nx_quant::nif {

struct QTensor {
  QuantizedMatrix matrix;              // views into memory kept alive by `keeper`
  std::shared_ptr<const void> keeper;  // releases the buffers' memory when the resource dies
};

// Opens (or takes over, on code upgrade) the resource type. Call from load/upgrade.
bool open_qtensor_resource_type(ErlNifEnv* env);

// Validates `matrix` (nx_quant::validate_quantized_matrix: throws InvalidArgument on any
// inconsistency between spec, shape and buffer sizes) and wraps it in a new resource term.
ERL_NIF_TERM make_qtensor_term(ErlNifEnv* env, const QuantizedMatrix& matrix,
                               std::shared_ptr<const void> keeper);

// Freshly allocated, owned storage for a rows x cols matrix: fill packed/scales/biases, then
// pass `matrix` and `keeper` to make_qtensor_term. Throws InvalidArgument for a bad
// spec/shape (via QuantizedLayout) and std::bad_alloc when memory runs out.
struct OwnedQTensor {
  QuantizedMatrix matrix;
  void* packed = nullptr;
  void* scales = nullptr;
  void* biases = nullptr;
  std::shared_ptr<const void> keeper;
};
OwnedQTensor allocate_owned_qtensor(size_t rows, size_t cols, const QuantSpec& spec, DType dtype);

// The quantized tensor behind argument i, or BadArg naming it.
const QTensor& get_qtensor(const Args& args, int i, const char* name);

// A binary term over `bytes` bytes at `data`, which must lie inside the buffers of the
// resource `tensor` (no copy: the binary keeps the resource alive).
ERL_NIF_TERM make_view_binary(ErlNifEnv* env, const QTensor& tensor, const ConstBuffer& buffer);

}  // namespace nx_quant::nif
