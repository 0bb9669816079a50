// The versioned-buffer resource: a dense tensor buffer that put_slice updates in place while
// earlier versions stay readable (nx_quant/versioned_buffer.h explains how).
//
// In Elixir such a tensor's data is a handle {ref, version}: `ref` the resource, `version` the
// one this tensor is. Every dense NIF accepts a handle wherever it accepts a binary (the dense
// Decoder resolves it: the current version is read in place under a shared lock, an older one
// is rebuilt into a copy). Only dense_put_slice writes, and only into the current version, under
// an exclusive lock taken with try_lock: a writer never waits; if the lock is busy it copies.
#pragma once

#include <erl_nif.h>

#include <cstdint>
#include <memory>

#include "nx_quant/versioned_buffer.h"

namespace nx_quant::nif {

struct VersionedResource {
  std::unique_ptr<dense::VersionedBuffer> buffer;
};

struct VersionedHandle {
  VersionedResource* resource = nullptr;  // kept alive by the term for the whole call
  uint64_t version = 0;
};

// Opens (or takes over, on code upgrade) the resource type. Call from load/upgrade.
bool open_versioned_resource_type(ErlNifEnv* env);

// True (filling `out`) when `term` is a {ref, version} handle of a versioned buffer. The
// version is not checked against the buffer here.
bool get_versioned_handle(ErlNifEnv* env, ERL_NIF_TERM term, VersionedHandle* out);

// A new resource owning `buffer`, as the handle term {ref, buffer.version()}.
ERL_NIF_TERM make_versioned_term(ErlNifEnv* env, std::unique_ptr<dense::VersionedBuffer> buffer);

// The handle term {ref, version} of an existing resource (the ref keeps it alive).
ERL_NIF_TERM make_handle_term(ErlNifEnv* env, VersionedResource* resource, uint64_t version);

}  // namespace nx_quant::nif
