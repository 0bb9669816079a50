// libFuzzer harness for the kernel API's argument validation, run under ASan + UBSan.
//
// Each input picks an operation and arbitrary arguments: shapes (sometimes huge, to reach the
// overflow checks), bits, group sizes and dtypes (including invalid enum values), and buffer
// sizes near (or far from) what the shapes imply. The buffers really have the sizes passed, so
// any read or write past them is caught by ASan. Valid calls are also checked differentially:
// the optimised quantize must equal the scalar reference bit for bit.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "nx_quant/kernels.h"

using namespace nx_quant;

namespace {

constexpr size_t kMaxBuffer = 1 << 16;

size_t pick_dim(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return in.ConsumeIntegralInRange<size_t>(0, 8);
    case 1:
      return 32 * in.ConsumeIntegralInRange<size_t>(0, 8);
    case 2:
      return in.ConsumeIntegral<size_t>();  // anything, overflow
    default:
      return std::numeric_limits<size_t>::max() / in.ConsumeIntegralInRange<size_t>(1, 64);
  }
}

// A buffer size: usually the expected one (so deeper checks run), else off by a little or a lot.
size_t pick_bytes(FuzzedDataProvider& in, size_t expected) {
  size_t bytes = expected;
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
    case 1:
      break;
    case 2:
      bytes = expected + in.ConsumeIntegralInRange<size_t>(0, 8) - 4;
      break;
    default:
      bytes = in.ConsumeIntegralInRange<size_t>(0, 4096);
      break;
  }
  return bytes > kMaxBuffer ? kMaxBuffer : bytes;
}

size_t expected_or_zero(size_t a, size_t b, size_t c) {
  if (a != 0 && b > std::numeric_limits<size_t>::max() / a) return 0;
  const size_t ab = a * b;
  if (ab != 0 && c > std::numeric_limits<size_t>::max() / ab) return 0;
  return ab * c;
}

struct Buffer {
  std::vector<uint8_t> bytes;
  Buffer(FuzzedDataProvider& in, size_t size) : bytes(size) {
    // Fill with fuzz data (NaN, Inf, denormals all reachable), the rest zero.
    const auto data = in.ConsumeBytes<uint8_t>(size);
    if (!data.empty()) std::memcpy(bytes.data(), data.data(), data.size());
  }
  ConstBuffer c() const { return {bytes.empty() ? nullptr : bytes.data(), bytes.size()}; }
  MutableBuffer m() { return {bytes.empty() ? nullptr : bytes.data(), bytes.size()}; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int op = in.ConsumeIntegralInRange<int>(0, 2);
  const size_t rows = pick_dim(in), cols = pick_dim(in);
  const int bits_choices[] = {2, 3, 4, 5, 6, 8, 0, 1, 7, 9, 32, -3};
  const int group_choices[] = {32, 64, 128, 0, 16, 96, 256, -32};
  QuantSpec spec{in.PickValueInArray(bits_choices), in.PickValueInArray(group_choices)};
  const auto dtype = static_cast<DType>(in.ConsumeIntegralInRange<int>(0, 3));
  const auto x_dtype = static_cast<DType>(in.ConsumeIntegralInRange<int>(0, 3));
  const bool transpose = in.ConsumeBool();
  ExecOptions options;
  options.threads = in.ConsumeIntegralInRange<int>(-1, 3);
  const size_t el = static_cast<unsigned>(dtype) <= 2 ? dtype_size(dtype) : 4;
  const size_t bits_abs = static_cast<size_t>(spec.bits < 0 ? 4 : spec.bits);
  const size_t gs_abs = static_cast<size_t>(spec.group_size <= 0 ? 64 : spec.group_size);

  Buffer packed(in, pick_bytes(in, expected_or_zero(rows, cols, bits_abs) / 8));
  Buffer scales(in, pick_bytes(in, expected_or_zero(rows, cols / gs_abs, el)));
  Buffer biases(in, pick_bytes(in, expected_or_zero(rows, cols / gs_abs, el)));
  try {
    if (op == 0) {
      Buffer dense(in, pick_bytes(in, expected_or_zero(rows, cols, el)));
      quantize(dense.c(), dtype, rows, cols, spec, packed.m(), scales.m(), biases.m(), options);
      // Reached only with valid arguments: the reference must agree bit for bit.
      Buffer p2(in, packed.bytes.size()), s2(in, scales.bytes.size()), b2(in, biases.bytes.size());
      ExecOptions ref;
      ref.kernel = KernelChoice::Reference;
      quantize(dense.c(), dtype, rows, cols, spec, p2.m(), s2.m(), b2.m(), ref);
      if (p2.bytes != packed.bytes || s2.bytes != scales.bytes || b2.bytes != biases.bytes) {
        std::abort();
      }
    } else {
      QuantizedMatrix w;
      w.packed = packed.c();
      w.scales = scales.c();
      w.biases = biases.c();
      w.dtype = dtype;
      w.rows = rows;
      w.cols = cols;
      w.spec = spec;
      if (op == 1) {
        Buffer out(in, pick_bytes(in, expected_or_zero(rows, cols, el)));
        dequantize(w, out.m(), transpose, options);
      } else {
        const size_t m = in.ConsumeIntegralInRange<size_t>(0, 4);
        const size_t k = transpose ? cols : rows, n = transpose ? rows : cols;
        const size_t xel = static_cast<unsigned>(x_dtype) <= 2 ? dtype_size(x_dtype) : 4;
        Buffer x(in, pick_bytes(in, expected_or_zero(m, k, xel)));
        Buffer out(in, pick_bytes(in, expected_or_zero(m, n, 4)));
        quantized_matmul(x.c(), x_dtype, m, w, transpose, DType::F32, out.m(), options);
      }
    }
  } catch (const InvalidArgument&) {
    // The expected outcome for most inputs: a clear error before any memory is touched.
  }
  return 0;
}
