// libFuzzer harness for gather_qmm and the batched quantized matmul (include/nx_quant/
// batched.h), run under ASan + UBSan.
//
// Each input picks batch shapes for x and w (sometimes not splitting the stacked rows,
// sometimes huge), index arrays (absent, empty, broadcasting or not) with arbitrary values
// (negative, out of range, in range) and buffer sizes near what the shapes imply. The buffers
// really have the sizes passed and the index arrays really hold prod(shape) values, so any
// read or write past them is caught by ASan; bad arguments must end in InvalidArgument.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "nx_quant/batched.h"

using namespace nx_quant;

namespace {

constexpr size_t kMaxBuffer = 1 << 16;
constexpr size_t kMaxIndices = 64;

Shape pick_shape(FuzzedDataProvider& in) {
  Shape shape(in.ConsumeIntegralInRange<size_t>(0, 3));
  for (auto& d : shape) {
    d = in.ConsumeIntegralInRange<int>(0, 9) == 0 ? in.ConsumeIntegral<size_t>()
                                                  : in.ConsumeIntegralInRange<size_t>(0, 4);
  }
  return shape;
}

size_t product_or_zero(const Shape& shape) {
  size_t n = 1;
  for (size_t d : shape) {
    if (d != 0 && n > std::numeric_limits<size_t>::max() / d) return 0;
    n *= d;
  }
  return n;
}

size_t pick_bytes(FuzzedDataProvider& in, size_t expected) {
  size_t bytes = expected;
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
    case 1:
    case 2:
      break;
    case 3:
      bytes = expected + in.ConsumeIntegralInRange<size_t>(0, 8) - 4;
      break;
    default:
      bytes = in.ConsumeIntegralInRange<size_t>(0, 4096);
      break;
  }
  return bytes > kMaxBuffer ? kMaxBuffer : bytes;
}

struct Buffer {
  std::vector<uint8_t> bytes;
  Buffer(FuzzedDataProvider& in, size_t size) : bytes(size) {
    const auto data = in.ConsumeBytes<uint8_t>(size);
    if (!data.empty()) std::memcpy(bytes.data(), data.data(), data.size());
  }
  ConstBuffer c() const { return {bytes.empty() ? nullptr : bytes.data(), bytes.size()}; }
  MutableBuffer m() { return {bytes.empty() ? nullptr : bytes.data(), bytes.size()}; }
};

// Absent, or prod(shape) values (when that is small enough to hold).
struct Indices {
  std::vector<int64_t> values;
  IndexArray array;
  Indices(FuzzedDataProvider& in, size_t range) {
    if (in.ConsumeBool()) return;  // absent
    Shape shape = pick_shape(in);
    size_t count = 1;
    bool overflow = false;
    for (size_t d : shape) {
      if (d != 0 && count > std::numeric_limits<size_t>::max() / d) overflow = true;
      count *= d;
    }
    if (overflow) {  // the library must refuse the shape before reading
      array = IndexArray(values.data(), shape);
      return;
    }
    if (count > kMaxIndices) return;  // absent instead
    values.resize(count);
    for (auto& v : values) {
      v = in.ConsumeIntegralInRange<int>(0, 5) == 0
              ? in.ConsumeIntegral<int64_t>()
              : static_cast<int64_t>(in.ConsumeIntegralInRange<size_t>(0, range));
    }
    array = IndexArray(values.data(), shape);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const bool gather = in.ConsumeBool();
  const bool transpose = in.ConsumeBool();
  const QuantSpec spec{in.PickValueInArray({2, 3, 4, 8}), in.PickValueInArray({32, 64})};
  const Shape x_batch = pick_shape(in), w_batch = pick_shape(in);
  const size_t w_count = product_or_zero(w_batch), x_count = product_or_zero(x_batch);
  const size_t rows_each = in.ConsumeIntegralInRange<size_t>(0, 3) * 32;
  const size_t cols = in.ConsumeIntegralInRange<size_t>(1, 2) * 64;
  // usually rows that split into the batch, sometimes not
  size_t rows = w_count <= 8 ? w_count * rows_each : rows_each;
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) rows += 32;
  const size_t m = in.ConsumeIntegralInRange<size_t>(0, 3);
  const size_t k = transpose ? cols : (w_count ? rows / (w_count ? w_count : 1) : rows);
  const size_t n = transpose ? (w_count ? rows / w_count : 0) : cols;

  QuantizedMatrix w;
  Buffer packed(in, pick_bytes(in, rows * cols * static_cast<size_t>(spec.bits) / 8));
  Buffer scales(in, pick_bytes(in, rows * cols / static_cast<size_t>(spec.group_size) * 4));
  Buffer biases(in, pick_bytes(in, scales.bytes.size()));
  w.packed = packed.c();
  w.scales = scales.c();
  w.biases = biases.c();
  w.dtype = DType::F32;
  w.rows = rows;
  w.cols = cols;
  w.spec = spec;
  const QuantizedBatch batch{w, w_batch};
  Indices lhs(in, x_count), rhs(in, w_count);

  size_t out_count = 0;
  try {
    out_count = product_or_zero(gather ? gather_qmm_out_batch(x_batch, batch, lhs.array, rhs.array)
                                       : broadcast_shapes(x_batch, w_batch, "fuzz"));
  } catch (const InvalidArgument&) {
  }
  const size_t x_expected =
      x_count <= 64 && k <= 4096 ? x_count * m * k * 4 : in.ConsumeIntegralInRange<size_t>(0, 64);
  const size_t out_expected = out_count <= 64 && n <= 4096 ? out_count * m * n * 4 : 0;
  Buffer x(in, pick_bytes(in, x_expected));
  Buffer out(in, pick_bytes(in, out_expected));
  ExecOptions options;
  options.threads = in.ConsumeIntegralInRange<int>(0, 2);
  try {
    if (gather) {
      gather_qmm(x.c(), DType::F32, x_batch, m, batch, lhs.array, rhs.array, transpose, DType::F32,
                 out.m(), options);
    } else {
      batched_quantized_matmul(x.c(), DType::F32, x_batch, m, batch, transpose, DType::F32, out.m(),
                               options);
    }
    estimated_gather_qmm_ns(x_batch, m, batch, lhs.array, rhs.array, transpose, options);
  } catch (const InvalidArgument&) {
    // The expected outcome for most inputs: a clear error before any memory is touched.
  }
  return 0;
}
