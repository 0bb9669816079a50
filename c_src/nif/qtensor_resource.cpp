#include "qtensor_resource.h"

#include <cstdlib>
#include <new>
#include <utility>

namespace nx_quant::nif {

namespace {

ErlNifResourceType* qtensor_type = nullptr;

void destroy_qtensor(ErlNifEnv* /*env*/, void* object) {
  static_cast<QTensor*>(object)->~QTensor();
}

// Three 64-byte aligned blocks (SIMD-friendly) freed together with the keeper.
struct OwnedBlocks {
  void* blocks[3] = {nullptr, nullptr, nullptr};
  ~OwnedBlocks() {
    for (void* block : blocks) std::free(block);
  }
};

void* aligned_block(size_t bytes) {
  constexpr size_t kAlign = 64;
  // aligned_alloc wants a multiple of the alignment; never ask for 0 bytes.
  size_t rounded = bytes == 0 ? kAlign : ((bytes + kAlign - 1) / kAlign) * kAlign;
  if (rounded < bytes) throw std::bad_alloc();
  void* block = std::aligned_alloc(kAlign, rounded);
  if (block == nullptr) throw std::bad_alloc();
  return block;
}

}  // namespace

bool open_qtensor_resource_type(ErlNifEnv* env) {
  ErlNifResourceFlags tried;
  qtensor_type = enif_open_resource_type(
      env, nullptr, "nx_quant_qtensor", destroy_qtensor,
      static_cast<ErlNifResourceFlags>(ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER), &tried);
  return qtensor_type != nullptr;
}

ERL_NIF_TERM make_qtensor_term(ErlNifEnv* env, const QuantizedMatrix& matrix,
                               std::shared_ptr<const void> keeper) {
  validate_quantized_matrix(matrix, "quantized tensor");
  void* memory = enif_alloc_resource(qtensor_type, sizeof(QTensor));
  if (memory == nullptr) throw std::bad_alloc();
  // Nothing below throws: constructing QTensor only copies a POD and moves a shared_ptr.
  new (memory) QTensor{matrix, std::move(keeper)};
  ERL_NIF_TERM term = enif_make_resource(env, memory);
  enif_release_resource(memory);  // the term now holds the only reference
  return term;
}

OwnedQTensor allocate_owned_qtensor(size_t rows, size_t cols, const QuantSpec& spec, DType dtype) {
  const QuantizedLayout layout(rows, cols, spec, dtype);
  auto blocks = std::make_shared<OwnedBlocks>();
  blocks->blocks[0] = aligned_block(layout.packed_bytes);
  blocks->blocks[1] = aligned_block(layout.scales_bytes);
  blocks->blocks[2] = aligned_block(layout.biases_bytes);

  OwnedQTensor owned;
  owned.packed = blocks->blocks[0];
  owned.scales = blocks->blocks[1];
  owned.biases = blocks->blocks[2];
  owned.matrix.packed = {owned.packed, layout.packed_bytes};
  owned.matrix.scales = {owned.scales, layout.scales_bytes};
  owned.matrix.biases = {owned.biases, layout.biases_bytes};
  owned.matrix.dtype = dtype;
  owned.matrix.rows = rows;
  owned.matrix.cols = cols;
  owned.matrix.spec = spec;
  owned.keeper = std::move(blocks);
  return owned;
}

const QTensor& get_qtensor(const Args& args, int i, const char* name) {
  void* object = nullptr;
  if (!enif_get_resource(args.env(), args.term(i), qtensor_type, &object)) {
    args.expected(i, name, "a quantized tensor reference (made by nx_quant)");
  }
  return *static_cast<const QTensor*>(object);
}

ERL_NIF_TERM make_view_binary(ErlNifEnv* env, const QTensor& tensor, const ConstBuffer& buffer) {
  return enif_make_resource_binary(env, const_cast<QTensor*>(&tensor), buffer.data, buffer.bytes);
}

}  // namespace nx_quant::nif
