// The versioned-buffer resource type (versioned_resource.h).
#include "versioned_resource.h"

#include <new>
#include <utility>

namespace nx_quant::nif {

namespace {

ErlNifResourceType* versioned_type = nullptr;

void destroy_versioned(ErlNifEnv* /*env*/, void* object) {
  static_cast<VersionedResource*>(object)->~VersionedResource();
}

}  // namespace

bool open_versioned_resource_type(ErlNifEnv* env) {
  ErlNifResourceFlags tried;
  versioned_type = enif_open_resource_type(
      env, nullptr, "nx_quant_versioned_buffer", destroy_versioned,
      static_cast<ErlNifResourceFlags>(ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER), &tried);
  return versioned_type != nullptr;
}

bool get_versioned_handle(ErlNifEnv* env, ERL_NIF_TERM term, VersionedHandle* out) {
  int arity;
  const ERL_NIF_TERM* items;
  void* resource;
  ErlNifUInt64 version;
  if (!enif_get_tuple(env, term, &arity, &items) || arity != 2 ||
      !enif_get_resource(env, items[0], versioned_type, &resource) ||
      !enif_get_uint64(env, items[1], &version)) {
    return false;
  }
  out->resource = static_cast<VersionedResource*>(resource);
  out->version = version;
  return true;
}

ERL_NIF_TERM make_handle_term(ErlNifEnv* env, VersionedResource* resource, uint64_t version) {
  return enif_make_tuple2(env, enif_make_resource(env, resource), enif_make_uint64(env, version));
}

ERL_NIF_TERM make_versioned_term(ErlNifEnv* env, std::unique_ptr<dense::VersionedBuffer> buffer) {
  void* memory = enif_alloc_resource(versioned_type, sizeof(VersionedResource));
  if (memory == nullptr) throw std::bad_alloc();
  const uint64_t version = buffer->version();
  auto* resource = new (memory) VersionedResource{std::move(buffer)};
  ERL_NIF_TERM term = make_handle_term(env, resource, version);
  enif_release_resource(memory);  // the term now holds the only reference
  return term;
}

}  // namespace nx_quant::nif
