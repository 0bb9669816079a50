// The NIF function table, one line per function: X(elixir_name, arity, cpp_function, flags).
//
// To add a NIF: define `ERL_NIF_TERM fn(ErlNifEnv*, int, const ERL_NIF_TERM[])` in namespace
// nx_quant::nif in any c_src/nif/*.cpp, add its line here, and a stub in lib/nx_quant/nif.ex.
// flags is 0 (normal scheduler; a function may still reschedule itself onto a dirty scheduler
// with reschedule_dirty(), see terms.h) or ERL_NIF_DIRTY_JOB_CPU_BOUND / _IO_BOUND.
#pragma once

#include <erl_nif.h>

#define NX_QUANT_NIF_FUNCTIONS(X)                                                      \
  X("quantize", 7, quantize_nif, 0)                                                    \
  X("quantize", 8, quantize_nif, 0)                                                    \
  X("quantize", 9, quantize_nif, 0)                                                    \
  X("dequantize", 2, dequantize_nif, 0)                                                \
  X("quantized_matmul", 8, quantized_matmul_nif, 0)                                    \
  X("quantized_matmul_timed", 8, quantized_matmul_timed_nif, 0)                        \
  X("quantized_tensor", 8, quantized_tensor_nif, 0)                                    \
  X("quantized_tensor", 9, quantized_tensor_nif, 0)                                    \
  X("quantized_tensor", 10, quantized_tensor_nif, 0)                                   \
  X("batched_matmul", 10, batched_matmul_nif, 0)                                       \
  X("gather_qmm", 12, gather_qmm_nif, 0)                                               \
  X("parts", 1, parts_nif, 0)                                                          \
  X("info", 1, info_nif, 0)                                                            \
  X("mode", 1, mode_nif, 0)                                                            \
  X("global_scale", 1, global_scale_nif, 0)                                            \
  X("cpu_info", 0, cpu_info_nif, 0)                                                    \
  X("safetensors_open", 2, safetensors_open_nif, ERL_NIF_DIRTY_JOB_IO_BOUND)           \
  X("safetensors_tensor", 2, safetensors_tensor_nif, ERL_NIF_DIRTY_JOB_IO_BOUND)       \
  X("safetensors_quantized", 8, safetensors_quantized_nif, ERL_NIF_DIRTY_JOB_IO_BOUND) \
  X("safetensors_plan", 2, safetensors_plan_nif, 0)                                    \
  X("json_decode", 1, json_decode_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND)                    \
  X("json_encode", 2, json_encode_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND)                    \
  X("live_mappings", 0, live_mappings_nif, 0)                                          \
  X("dense_unary", 4, dense_unary_nif, 0)                                              \
  X("dense_binary", 5, dense_binary_nif, 0)                                            \
  X("dense_select", 5, dense_select_nif, 0)                                            \
  X("dense_clip", 5, dense_clip_nif, 0)                                                \
  X("dense_assemble", 4, dense_assemble_nif, 0)                                        \
  X("dense_iota", 3, dense_iota_nif, 0)                                                \
  X("dense_reduce", 6, dense_reduce_nif, 0)                                            \
  X("dense_cumulative", 6, dense_cumulative_nif, 0)                                    \
  X("dense_sort", 5, dense_sort_nif, 0)                                                \
  X("dense_top_k", 4, dense_top_k_nif, 0)                                              \
  X("dense_gather", 5, dense_gather_nif, 0)                                            \
  X("dense_matmul", 7, dense_matmul_nif, 0)                                            \
  X("dense_put_slice", 4, dense_put_slice_nif, 0)                                      \
  X("dense_versioned_binary", 1, dense_versioned_binary_nif, 0)                        \
  X("dense_versioned_info", 1, dense_versioned_info_nif, 0)                            \
  X("buffer_pool_stats", 0, buffer_pool_stats_nif, 0)

namespace nx_quant::nif {

#define NX_QUANT_DECLARE_NIF(name, arity, fn, flags) \
  ERL_NIF_TERM fn(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]);
NX_QUANT_NIF_FUNCTIONS(NX_QUANT_DECLARE_NIF)
#undef NX_QUANT_DECLARE_NIF

// The safetensors file resource type (safetensors_nif.cpp). Call from load/upgrade.
bool open_safetensors_resource_type(ErlNifEnv* env);

}  // namespace nx_quant::nif
