// Entry point of libnx_quant_nif: the function table (see nif_functions.h) and load/upgrade.
#include <erl_nif.h>

#include "buffer_pool.h"
#include "nif_functions.h"
#include "qtensor_resource.h"
#include "versioned_resource.h"

namespace {

#define NX_QUANT_NIF_ENTRY(name, arity, fn, flags) {name, arity, nx_quant::nif::fn, flags},
ErlNifFunc nif_functions[] = {NX_QUANT_NIF_FUNCTIONS(NX_QUANT_NIF_ENTRY)};
#undef NX_QUANT_NIF_ENTRY

int load(ErlNifEnv* env, void** /*priv_data*/, ERL_NIF_TERM /*load_info*/) {
  return nx_quant::nif::open_qtensor_resource_type(env) &&
                 nx_quant::nif::open_safetensors_resource_type(env) &&
                 nx_quant::nif::open_buffer_resource_type(env) &&
                 nx_quant::nif::open_versioned_resource_type(env)
             ? 0
             : 1;
}

int upgrade(ErlNifEnv* env, void** /*priv_data*/, void** /*old_priv_data*/,
            ERL_NIF_TERM /*load_info*/) {
  return nx_quant::nif::open_qtensor_resource_type(env) &&
                 nx_quant::nif::open_safetensors_resource_type(env) &&
                 nx_quant::nif::open_buffer_resource_type(env) &&
                 nx_quant::nif::open_versioned_resource_type(env)
             ? 0
             : 1;
}

}  // namespace

ERL_NIF_INIT(Elixir.NxQuant.NIF, nif_functions, load, nullptr, upgrade, nullptr)
