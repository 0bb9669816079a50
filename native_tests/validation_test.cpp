// Every invalid argument is rejected before any buffer is touched, with a message naming it.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "nx_quant/kernels.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

template <typename F>
void expect_invalid(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected InvalidArgument mentioning '" << needle << "'";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << needle << "'";
  }
}

struct Fixture {
  TypedBuffer dense{DType::F32, random_values(4 * 64, 3)};
  OwnedQuantized q{dense, 4, 64, {4, 64}};
};

}  // namespace

TEST(Validation, UnsupportedBitsAndGroupSizes) {
  for (int bits : {0, 1, 7, 16, -1, 32}) {
    expect_invalid([&] { validate_spec({bits, 64}); }, "bits must be one of 2, 3, 4, 5, 6, 8");
  }
  for (int gs : {0, 16, 96, 256, -64}) {
    expect_invalid([&] { validate_spec({4, gs}); }, "group_size must be one of 32, 64, 128");
  }
}

TEST(Validation, QuantizeShapeAndBufferErrors) {
  std::vector<float> dense(4 * 96);
  std::vector<uint32_t> packed(4 * 96 * 4 / 32);
  std::vector<float> scales(4 * 3), biases(4 * 3);
  auto call = [&](size_t rows, size_t cols, QuantSpec spec, size_t dense_bytes, size_t packed_bytes,
                  size_t scales_bytes, size_t biases_bytes) {
    quantize({dense.data(), dense_bytes}, DType::F32, rows, cols, spec,
             {packed.data(), packed_bytes}, {scales.data(), scales_bytes},
             {biases.data(), biases_bytes});
  };
  expect_invalid([&] { call(4, 96, {4, 64}, 1536, 192, 48, 48); }, "divisible by group_size");
  expect_invalid([&] { call(4, 0, {4, 32}, 0, 0, 0, 0); }, "cols");
  expect_invalid([&] { call(4, 96, {4, 32}, 1535, 192, 48, 48); }, "dense has 1535 bytes");
  expect_invalid([&] { call(4, 96, {4, 32}, 1537, 192, 48, 48); }, "dense has 1537 bytes");
  expect_invalid([&] { call(4, 96, {4, 32}, 1536, 191, 48, 48); }, "packed has 191 bytes");
  expect_invalid([&] { call(4, 96, {4, 32}, 1536, 192, 47, 48); }, "scales has 47 bytes");
  expect_invalid([&] { call(4, 96, {4, 32}, 1536, 192, 48, 49); }, "biases has 49 bytes");
  expect_invalid([&] { call(4, 96, {7, 32}, 1536, 192, 48, 48); }, "bits");
  // Sizes whose products overflow size_t are caught before anything is allocated or read.
  const size_t huge = std::numeric_limits<size_t>::max() / 2;
  expect_invalid([&] { call(huge, size_t{1} << 20, {8, 32}, 0, 0, 0, 0); }, "overflows size_t");
  expect_invalid([&] { call(1, (huge / 32) * 32, {8, 32}, 0, 0, 0, 0); }, "overflows size_t");
  // A null pointer with a correct size is rejected too.
  expect_invalid(
      [&] {
        quantize({nullptr, 1536}, DType::F32, 4, 96, {4, 32}, {packed.data(), 192},
                 {scales.data(), 48}, {biases.data(), 48});
      },
      "dense is a null pointer");
  expect_invalid(
      [&] {
        quantize({dense.data(), 1536}, static_cast<DType>(9), 4, 96, {4, 32}, {packed.data(), 192},
                 {scales.data(), 48}, {biases.data(), 48});
      },
      "dtype must be f32, f16 or bf16");
}

TEST(Validation, QuantizedMatrixErrorsNameThePart) {
  Fixture f;
  QuantizedMatrix w = f.q.matrix;
  w.packed.bytes -= 1;
  expect_invalid([&] { validate_quantized_matrix(w, "w"); }, "w.packed has 127 bytes");
  w = f.q.matrix;
  w.scales.bytes += 4;
  expect_invalid([&] { validate_quantized_matrix(w, "w"); }, "w.scales has 20 bytes");
  w = f.q.matrix;
  w.biases.bytes = 0;
  expect_invalid([&] { validate_quantized_matrix(w, "w"); }, "w.biases has 0 bytes");
  w = f.q.matrix;
  w.dtype = DType::F16;  // scales are f32: 16 bytes, but f16 would need 8
  expect_invalid([&] { validate_quantized_matrix(w, "w"); }, "w.scales has 16 bytes, expected 8");
  w = f.q.matrix;
  w.spec.bits = 8;
  expect_invalid([&] { validate_quantized_matrix(w, "w"); },
                 "w.packed has 128 bytes, expected 256");
  w = f.q.matrix;
  w.cols = 48;
  expect_invalid([&] { validate_quantized_matrix(w, "w"); }, "divisible by group_size");
}

TEST(Validation, MatmulAndDequantizeBufferErrors) {
  Fixture f;
  std::vector<float> x(2 * 64), out(2 * 4);
  auto matmul = [&](size_t x_bytes, size_t out_bytes, bool transpose, size_t m) {
    quantized_matmul({x.data(), x_bytes}, DType::F32, m, f.q.matrix, transpose, DType::F32,
                     {out.data(), out_bytes});
  };
  expect_invalid([&] { matmul(511, 32, true, 2); }, "x has 511 bytes, expected 512");
  expect_invalid([&] { matmul(512, 31, true, 2); }, "out has 31 bytes, expected 32");
  // transpose=false needs x of [m, 4] (K = w.rows) and out of [m, 64].
  expect_invalid([&] { matmul(512, 32, false, 2); }, "transpose=false");
  expect_invalid(
      [&] {
        ExecOptions o;
        o.threads = -1;
        quantized_matmul({x.data(), 512}, DType::F32, 2, f.q.matrix, true, DType::F32,
                         {out.data(), 32}, o);
      },
      "threads");
  std::vector<float> dense(4 * 64);
  expect_invalid([&] { dequantize(f.q.matrix, {dense.data(), 1023}); }, "out has 1023 bytes");
  expect_invalid(
      [&] {
        quantized_matmul({x.data(), 512}, static_cast<DType>(3), 2, f.q.matrix, true, DType::F32,
                         {out.data(), 32});
      },
      "x dtype");
}
