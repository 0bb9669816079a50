// cpu_info() -> %{avx2_fma: bool, avx512: bool, avx512_vnni: bool, avx512_bf16: bool,
//                 neon: bool, neon_dotprod: bool, neon_i8mm: bool,
//                 max_isa: :avx512 | :avx2 | :neon | :portable | nil}
// The CPU features kernel dispatch uses (after the NX_QUANT_MAX_ISA cap, which max_isa reports;
// nil: none), so that tests can expect what the kernel that actually runs computes.
#include <erl_nif.h>

#include <stdexcept>

#include "../kernels/cpu_features.h"
#include "nif_functions.h"
#include "terms.h"

namespace nx_quant::nif {

ERL_NIF_TERM cpu_info_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM /*argv*/[]) {
  return guarded(env, "cpu_info/0", [&] {
    const auto& f = detail::cpu_features();
    const auto cap = detail::isa_cap();
    const auto boolean = [&](bool b) { return enif_make_atom(env, b ? "true" : "false"); };
    ERL_NIF_TERM keys[8] = {enif_make_atom(env, "avx2_fma"),    enif_make_atom(env, "avx512"),
                            enif_make_atom(env, "avx512_vnni"), enif_make_atom(env, "avx512_bf16"),
                            enif_make_atom(env, "neon"),        enif_make_atom(env, "neon_dotprod"),
                            enif_make_atom(env, "neon_i8mm"),   enif_make_atom(env, "max_isa")};
    ERL_NIF_TERM values[8] = {
        boolean(f.avx2_fma),    boolean(f.avx512),
        boolean(f.avx512_vnni), boolean(f.avx512_bf16),
        boolean(f.neon),        boolean(f.neon_dotprod),
        boolean(f.neon_i8mm),   enif_make_atom(env, cap ? detail::isa_level_name(*cap) : "nil")};
    ERL_NIF_TERM map;
    if (!enif_make_map_from_arrays(env, keys, values, 8, &map)) {
      throw std::runtime_error("cpu_info: could not build the map");
    }
    return map;
  });
}

}  // namespace nx_quant::nif
