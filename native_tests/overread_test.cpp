// No kernel reads or writes past the buffers it is given: the packed words, scales and biases
// are placed so that they end exactly where an inaccessible page begins, and every kernel this
// CPU can run quantizes into them, dequantizes them and multiplies by them (both layouts, GEMV
// and GEMM shapes, exact and int8 modes). Loads of whole vectors that run past a row's last
// block (the 3-, 5- and 6-bit unpackers load more bytes than a block holds) would fault here;
// the results must also be the bits the same kernel gives from ordinary buffers.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "nx_quant/kernels.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

// `bytes` bytes whose end is the start of a PROT_NONE page.
class GuardedBytes {
 public:
  explicit GuardedBytes(size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    map_bytes_ = ((bytes + page - 1) / page + 1) * page;
    void* base =
        mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::runtime_error("mmap failed");
    base_ = static_cast<uint8_t*>(base);
    if (mprotect(base_ + map_bytes_ - page, page, PROT_NONE) != 0) {
      throw std::runtime_error("mprotect failed");
    }
    data_ = base_ + map_bytes_ - page - bytes;
    bytes_ = bytes;
  }
  ~GuardedBytes() { munmap(base_, map_bytes_); }
  GuardedBytes(const GuardedBytes&) = delete;
  GuardedBytes& operator=(const GuardedBytes&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return bytes_; }

 private:
  uint8_t* base_ = nullptr;
  uint8_t* data_ = nullptr;
  size_t map_bytes_ = 0, bytes_ = 0;
};

// Every kernel this CPU runs (an explicit choice the CPU lacks is refused, and skipped).
std::vector<KernelChoice> kernels_here() {
  std::vector<KernelChoice> kernels;
  for (KernelChoice k :
       {KernelChoice::Portable, KernelChoice::Avx2, KernelChoice::Avx512, KernelChoice::Neon}) {
    TypedBuffer dense(DType::F32, random_values(32, 1));
    std::vector<uint32_t> packed(4);
    std::vector<float> sb(1);
    ExecOptions options;
    options.kernel = k;
    try {
      quantize(dense.cbuf(), DType::F32, 1, 32, {4, 32}, {packed.data(), 16}, {sb.data(), 4},
               {sb.data(), 4}, options);
      kernels.push_back(k);
    } catch (const InvalidArgument&) {
    }
  }
  return kernels;
}

}  // namespace

TEST(Overread, EveryKernelStaysInsideItsBuffers) {
  for (KernelChoice kernel : kernels_here()) {
    for (int bits : kAllBits) {
      for (int gs : {32, 128}) {
        for (DType dtype : {DType::BF16, DType::F32}) {
          const size_t rows = 9, cols = gs == 32 ? 160 : 384;
          const std::string what = "kernel " + std::to_string(static_cast<int>(kernel)) + " bits " +
                                   std::to_string(bits) + " gs " + std::to_string(gs) + " " +
                                   dtype_name(dtype);
          TypedBuffer dense(dtype, random_values(rows * cols, bits + gs, cols));
          OwnedQuantized plain(dense, rows, cols, {bits, gs}, kernel);
          GuardedBytes packed(plain.packed.size() * 4), scales(plain.scales.bytes.size()),
              biases(plain.biases.bytes.size());
          ExecOptions options;
          options.kernel = kernel;
          quantize(dense.cbuf(), dtype, rows, cols, {bits, gs}, {packed.data(), packed.size()},
                   {scales.data(), scales.size()}, {biases.data(), biases.size()}, options);
          ASSERT_EQ(0, std::memcmp(packed.data(), plain.packed.data(), packed.size())) << what;
          QuantizedMatrix w = plain.matrix;
          w.packed = {packed.data(), packed.size()};
          w.scales = {scales.data(), scales.size()};
          w.biases = {biases.data(), biases.size()};

          for (bool transpose_out : {false, true}) {
            TypedBuffer expected(dtype, rows * cols), got(dtype, rows * cols);
            dequantize(plain.matrix, expected.mbuf(), transpose_out, options);
            dequantize(w, got.mbuf(), transpose_out, options);
            ASSERT_EQ(got.bytes, expected.bytes) << what;
          }
          for (bool transpose : {true, false}) {
            const size_t k = transpose ? cols : rows, n = transpose ? rows : cols;
            for (size_t m : {1, 3, 9}) {
              for (Precision precision : {Precision::Exact, Precision::Int8}) {
                options.precision = precision;
                const std::vector<float> x = random_values(m * k, 7 + m);
                std::vector<float> expected(m * n), got(m * n);
                quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, plain.matrix, transpose,
                                 DType::F32, {expected.data(), expected.size() * 4}, options);
                quantized_matmul({x.data(), x.size() * 4}, DType::F32, m, w, transpose, DType::F32,
                                 {got.data(), got.size() * 4}, options);
                ASSERT_EQ(0, std::memcmp(got.data(), expected.data(), got.size() * 4))
                    << what << " m " << m << " transpose " << transpose;
              }
            }
            options.precision = Precision::Exact;
          }
        }
      }
    }
  }
}
