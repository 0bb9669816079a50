// The quantization NIFs: decode terms, pick the scheduler, call the kernel, build the result.
// No math here: everything numeric is the kernel library's (include/nx_quant/kernels.h).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "nif_functions.h"
#include "nx_quant/kernels.h"
#include "qtensor_resource.h"
#include "terms.h"

namespace nx_quant::nif {

namespace {

constexpr int kMaxThreads = 1024;
constexpr double kCopyNsPerByte = 0.8;  // memcpy into fresh memory, high rather than low

std::string bytes_message(size_t got, size_t expected, const std::string& layout) {
  return "has " + std::to_string(got) + " bytes, expected " + std::to_string(expected) + " (" +
         layout + ")";
}

std::string dims(size_t a, size_t b, DType dtype) {
  return std::to_string(a) + " x " + std::to_string(b) + " " + dtype_name(dtype);
}

// Binaries built by the VM are word-aligned, but a sub-binary (e.g. from binary_part/3) may
// start anywhere. The kernels read elements through typed pointers, so a misaligned input is
// copied once into an aligned buffer; the usual aligned case is read in place.
ConstBuffer aligned_view(const ErlNifBinary& bin, size_t alignment, std::vector<uint32_t>& copy) {
  if (reinterpret_cast<uintptr_t>(bin.data) % alignment == 0) return {bin.data, bin.size};
  copy.resize((bin.size + 3) / 4);
  std::memcpy(copy.data(), bin.data, bin.size);
  return {copy.data(), bin.size};
}

}  // namespace

// The spec from arguments bits (i), group_size (i + 1) and, when present, mode (mode_i) and
// nvfp4's global scale (mode_i + 1, a positive finite float): the microscaled modes' fixed
// group_size and bits, and the global scale's mode, are checked by the kernel library's spec
// validation (an InvalidArgument naming the mode).
static QuantSpec spec_arg(const Args& args, int i, int argc, int mode_i) {
  const QuantMode mode = argc > mode_i ? args.mode(mode_i, "mode") : QuantMode::Affine;
  float global_scale = 0.0f;
  if (argc > mode_i + 1) {
    double g = 0;
    if (!enif_get_double(args.env(), args.term(mode_i + 1), &g) || !(g > 0) ||
        g > std::numeric_limits<float>::max()) {
      args.expected(mode_i + 1, "global_scale", "a positive finite float");
    }
    global_scale = static_cast<float>(g);
  }
  if (mode == QuantMode::Affine && global_scale == 0.0f)
    return {args.bits(i, "bits"), args.group_size(i + 1, "group_size")};
  QuantSpec spec{args.integer(i, "bits", 0, 64), args.integer(i + 1, "group_size", 0, 1024), mode,
                 global_scale};
  validate_spec(spec);
  return spec;
}

// quantize(dense, rows, cols, dtype, bits, group_size, threads[, mode[, global_scale]]) -> ref
ERL_NIF_TERM quantize_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = argc == 9 ? "quantize/9" : argc == 8 ? "quantize/8" : "quantize/7";
  return guarded(env, fun, [&] {
    const Args args(env, fun, argv);
    const ErlNifBinary dense = args.binary(0, "dense");
    const size_t rows = args.size(1, "rows");
    const size_t cols = args.size(2, "cols");
    const DType dtype = args.dtype(3, "dtype");
    const QuantSpec spec = spec_arg(args, 4, argc, 7);
    const int threads = args.integer(6, "threads", 0, kMaxThreads);

    const size_t values = mul_or_fail(rows, cols, "rows * cols");
    const size_t expected = mul_or_fail(values, dtype_size(dtype), "the dense size");
    if (dense.size != expected) {
      args.fail(0, "dense", bytes_message(dense.size, expected, dims(rows, cols, dtype)));
    }
    const QuantizedLayout layout(rows, cols, spec, dtype);  // validates the shape
    const ExecOptions options{threads, KernelChoice::Auto};
    return run_scheduled(env, nx_quant::estimated_quantize_ns(rows, cols, spec, dtype, options),
                         kConversionBudgetNs, "quantize", quantize_nif, argc, argv, [&] {
                           std::vector<uint32_t> copy;
                           const ConstBuffer input = aligned_view(dense, dtype_size(dtype), copy);
                           OwnedQTensor out = allocate_owned_qtensor(rows, cols, spec, dtype);
                           nx_quant::quantize(input, dtype, rows, cols, spec,
                                              {out.packed, layout.packed_bytes},
                                              {out.scales, layout.scales_bytes},
                                              {out.biases, layout.biases_bytes}, options);
                           return make_qtensor_term(env, out.matrix, std::move(out.keeper));
                         });
  });
}

// dequantize(ref, transpose_out) -> binary of rows x cols (or cols x rows) dtype values
ERL_NIF_TERM dequantize_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return guarded(env, "dequantize/2", [&] {
    const Args args(env, "dequantize/2", argv);
    const QTensor& tensor = get_qtensor(args, 0, "tensor");
    const bool transpose_out = args.boolean(1, "transpose_out");
    const QuantizedMatrix& w = tensor.matrix;

    const size_t values = mul_or_fail(w.rows, w.cols, "rows * cols");
    const size_t bytes = mul_or_fail(values, dtype_size(w.dtype), "the dense size");
    return run_scheduled(env, nx_quant::estimated_dequantize_ns(w, transpose_out),
                         kConversionBudgetNs, "dequantize", dequantize_nif, argc, argv, [&] {
                           OutputBinary out(bytes);
                           nx_quant::dequantize(w, out.buffer(), transpose_out, ExecOptions{});
                           return out.release_to_term(env);
                         });
  });
}

namespace {

// The body of quantized_matmul/8 and quantized_matmul_timed/8; `self` is the NIF to re-run on
// a dirty scheduler.
ERL_NIF_TERM quantized_matmul_impl(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[],
                                   const char* name, bool timed,
                                   ERL_NIF_TERM (*self)(ErlNifEnv*, int, const ERL_NIF_TERM[])) {
  return guarded(env, name, [&] {
    const Args args(env, name, argv);
    const ErlNifBinary x = args.binary(0, "x");
    const DType x_dtype = args.dtype(1, "x_dtype");
    const size_t m = args.size(2, "m");
    const QTensor& tensor = get_qtensor(args, 3, "w");
    const bool transpose = args.boolean(4, "transpose");
    const DType out_dtype = args.dtype(5, "out_dtype");
    const int threads = args.integer(6, "threads", 0, kMaxThreads);
    const Precision precision = args.precision(7, "precision");
    const QuantizedMatrix& w = tensor.matrix;

    const size_t k = transpose ? w.cols : w.rows;
    const size_t n = transpose ? w.rows : w.cols;
    const size_t x_bytes = mul_or_fail(mul_or_fail(m, k, "m * k"), dtype_size(x_dtype), "x size");
    if (x.size != x_bytes) {
      args.fail(0, "x",
                bytes_message(x.size, x_bytes, dims(m, k, x_dtype)) + ", k being the " +
                    (transpose ? "cols" : "rows") + " of w");
    }
    const size_t mn = mul_or_fail(m, n, "m * n");
    mul_or_fail(mn, k, "m * n * k");
    ExecOptions options{threads, KernelChoice::Auto, precision};
    options.batch_invariant = args.batch_invariant(7);
    // Calls estimated under ~1 ms stay on this (normal) scheduler: moving to a dirty one and
    // back costs tens of microseconds, more than the rest of the NIF layer.
    return run_scheduled(
        env, nx_quant::estimated_matmul_ns(m, w, transpose, options), kNormalSchedulerBudgetNs,
        "quantized_matmul", self, argc, argv, [&] {
          // x is read in place from the argument binary (no copy unless misaligned); the result
          // is written straight into a new binary that becomes the return value.
          std::vector<uint32_t> copy;
          const ConstBuffer input = aligned_view(x, dtype_size(x_dtype), copy);
          OutputBinary out(mul_or_fail(mn, dtype_size(out_dtype), "the output size"));
          const auto start = std::chrono::steady_clock::now();
          nx_quant::quantized_matmul(input, x_dtype, m, w, transpose, out_dtype, out.buffer(),
                                     options);
          const auto kernel_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now() - start)
                                     .count();
          ERL_NIF_TERM result = out.release_to_term(env);
          if (timed) result = enif_make_tuple2(env, result, enif_make_int64(env, kernel_ns));
          return result;
        });
  });
}

}  // namespace

// quantized_matmul(x, x_dtype, m, ref, transpose, out_dtype, threads, precision)
//   -> binary of m x n
ERL_NIF_TERM quantized_matmul_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return quantized_matmul_impl(env, argc, argv, "quantized_matmul/8", false, quantized_matmul_nif);
}

// The same, returning {binary, nanoseconds spent in the kernel call}: bench/nif_bench.exs
// measures the NIF layer's overhead per call with it (wall time of the call vs kernel time).
ERL_NIF_TERM quantized_matmul_timed_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  return quantized_matmul_impl(env, argc, argv, "quantized_matmul_timed/8", true,
                               quantized_matmul_timed_nif);
}

// quantized_tensor(packed, scales, biases, rows, cols, dtype, bits, group_size) -> ref
//
// The three binaries are copied once into aligned storage owned by the resource. Keeping the
// argument binaries alive instead (zero copy) would tie the resource to arbitrary binaries:
// sub-binaries of a whole file read would pin the whole file and may be misaligned for the
// kernels. The copy costs one memcpy of the packed size; the zero-copy checkpoint path is the
// safetensors loader, which builds resources over mmap'd memory directly.
// With a ninth argument, the mode (microscaled modes: uint8 scales, an empty biases binary);
// with a tenth, nvfp4's global scale.
ERL_NIF_TERM quantized_tensor_nif(ErlNifEnv* env, int argc, const ERL_NIF_TERM argv[]) {
  const char* fun = argc == 10  ? "quantized_tensor/10"
                    : argc == 9 ? "quantized_tensor/9"
                                : "quantized_tensor/8";
  return guarded(env, fun, [&] {
    const Args args(env, fun, argv);
    const ErlNifBinary packed = args.binary(0, "packed");
    const ErlNifBinary scales = args.binary(1, "scales");
    const ErlNifBinary biases = args.binary(2, "biases");
    const size_t rows = args.size(3, "rows");
    const size_t cols = args.size(4, "cols");
    const DType dtype = args.dtype(5, "dtype");
    const QuantSpec spec = spec_arg(args, 6, argc, 8);

    const QuantizedLayout layout(rows, cols, spec, dtype);
    const bool micro = is_microscaled(spec.mode);
    const std::string shape = "rows " + std::to_string(rows) + ", cols " + std::to_string(cols) +
                              ", bits " + std::to_string(spec.bits) + ", group_size " +
                              std::to_string(spec.group_size) +
                              (micro ? std::string(", mode ") + mode_name(spec.mode) : "");
    if (packed.size != layout.packed_bytes) {
      args.fail(0, "packed",
                bytes_message(packed.size, layout.packed_bytes,
                              std::to_string(rows) + " x " + std::to_string(layout.words_per_row) +
                                  " uint32 words for " + shape));
    }
    const std::string groups =
        (micro ? std::to_string(rows) + " x " + std::to_string(layout.groups_per_row) + " uint8"
               : dims(rows, layout.groups_per_row, dtype)) +
        " for " + shape;
    if (scales.size != layout.scales_bytes) {
      args.fail(1, "scales", bytes_message(scales.size, layout.scales_bytes, groups));
    }
    if (biases.size != layout.biases_bytes) {
      args.fail(2, "biases",
                micro ? "must be empty (the microscaled modes have no biases), got " +
                            std::to_string(biases.size) + " bytes"
                      : bytes_message(biases.size, layout.biases_bytes, groups));
    }
    const size_t bytes = layout.packed_bytes + layout.scales_bytes + layout.biases_bytes;
    // A copy into fresh memory: ~0.6 ns per byte measured (page faults included), so copies
    // above ~125 KB go to a dirty scheduler.
    return run_scheduled(env, static_cast<double>(bytes) * kCopyNsPerByte, kConversionBudgetNs,
                         "quantized_tensor", quantized_tensor_nif, argc, argv, [&] {
                           OwnedQTensor out = allocate_owned_qtensor(rows, cols, spec, dtype);
                           std::memcpy(out.packed, packed.data, packed.size);
                           std::memcpy(out.scales, scales.data, scales.size);
                           std::memcpy(out.biases, biases.data, biases.size);
                           return make_qtensor_term(env, out.matrix, std::move(out.keeper));
                         });
  });
}

// parts(ref) -> {packed, scales, biases}, binaries over the resource's memory (no copy; they
// keep the resource alive).
ERL_NIF_TERM parts_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "parts/1", [&] {
    const Args args(env, "parts/1", argv);
    const QTensor& tensor = get_qtensor(args, 0, "tensor");
    return enif_make_tuple3(env, make_view_binary(env, tensor, tensor.matrix.packed),
                            make_view_binary(env, tensor, tensor.matrix.scales),
                            make_view_binary(env, tensor, tensor.matrix.biases));
  });
}

// info(ref) -> {rows, cols, dtype, bits, group_size}
ERL_NIF_TERM info_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "info/1", [&] {
    const Args args(env, "info/1", argv);
    const QuantizedMatrix& w = get_qtensor(args, 0, "tensor").matrix;
    ERL_NIF_TERM items[5] = {enif_make_uint64(env, w.rows), enif_make_uint64(env, w.cols),
                             make_dtype_atom(env, w.dtype), enif_make_int(env, w.spec.bits),
                             enif_make_int(env, w.spec.group_size)};
    return enif_make_tuple_from_array(env, items, 5);
  });
}

// global_scale(ref) -> float: nvfp4's global scale, 0.0 when there is none.
ERL_NIF_TERM global_scale_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "global_scale/1", [&] {
    const Args args(env, "global_scale/1", argv);
    return enif_make_double(env, get_qtensor(args, 0, "tensor").matrix.spec.global_scale);
  });
}

// mode(ref) -> :affine | :mxfp4 | :mxfp8 | :nvfp4
ERL_NIF_TERM mode_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "mode/1", [&] {
    const Args args(env, "mode/1", argv);
    return enif_make_atom(env, mode_name(get_qtensor(args, 0, "tensor").matrix.spec.mode));
  });
}

}  // namespace nx_quant::nif
