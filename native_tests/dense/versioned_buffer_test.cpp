// VersionedBuffer: every version reads back exactly as it was when it was current, whatever was
// written after it, against plain copies of each version kept by the test.
#include "nx_quant/versioned_buffer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "nx_quant/error.h"

namespace {

using nx_quant::InvalidArgument;
using nx_quant::dense::Shape;
using nx_quant::dense::Type;
using nx_quant::dense::VersionedBuffer;

// Writes `value + i` at every element of a strided window of a float buffer (the test's own
// scalar loop, independent of the library's copies).
void write_window(float* data, const Shape& shape, int64_t offset,
                  const std::vector<int64_t>& strides, float value) {
  std::vector<int64_t> idx(shape.size(), 0);
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  for (size_t i = 0; i < n; ++i) {
    int64_t at = offset;
    for (size_t k = 0; k < shape.size(); ++k) at += idx[k] * strides[k];
    data[at] = value + static_cast<float>(i);
    for (size_t k = shape.size(); k-- > 0;) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
}

TEST(VersionedBuffer, EveryVersionReadsBackAsItWas) {
  // A {4, 16, 8} cache (heads, positions, head dim); each write is one position of every head,
  // or a random 2-D block, as put_slice windows are.
  const Shape shape{4, 16, 8};
  const size_t count = 4 * 16 * 8;
  VersionedBuffer buf(Type::F32, count);
  auto* data = static_cast<float*>(buf.data());
  for (size_t i = 0; i < count; ++i) data[i] = -static_cast<float>(i);
  std::vector<std::vector<float>> versions{std::vector<float>(data, data + count)};
  std::mt19937 rng(7);
  struct Write {
    Shape window;
    int64_t offset;
    std::vector<int64_t> strides;
  };
  // (Built by construction, not by assigning braced lists to empty vectors, which GCC 12's
  // -Wnonnull flags falsely inside std::copy.)
  auto next_write = [&](int step) -> Write {
    if (step % 2 == 0) {  // one position of every head: {4, 1, 8} at [0, pos, 0]
      const int64_t pos = static_cast<int64_t>(rng() % 16);
      return {{4, 1, 8}, pos * 8, {128, 8, 1}};
    }
    // a block of positions and dims of one head
    const int64_t h = rng() % 4, p = rng() % 12, d = rng() % 4;
    const int64_t rows = 1 + static_cast<int64_t>(rng() % 4);
    const int64_t cols = 1 + static_cast<int64_t>(rng() % 4);
    return {{rows, cols}, h * 128 + p * 8 + d, {8, 1}};
  };
  for (int step = 0; step < 40; ++step) {
    const auto [window, offset, strides] = next_write(step);
    EXPECT_EQ(buf.record_write(window, offset, strides), static_cast<uint64_t>(step + 1));
    write_window(data, window, offset, strides, 1000.0f * static_cast<float>(step + 1));
    versions.emplace_back(data, data + count);
  }
  EXPECT_EQ(buf.version(), 40u);
  std::vector<float> out(count);
  for (uint64_t v = 0; v <= buf.version(); ++v) {
    buf.read_version(v, out.data());
    EXPECT_EQ(0, std::memcmp(out.data(), versions[v].data(), count * sizeof(float)))
        << "version " << v;
  }
}

TEST(VersionedBuffer, UndoBytesCountTheSavedWindows) {
  VersionedBuffer buf(Type::BF16, 64);
  std::memset(buf.data(), 0, buf.bytes());
  EXPECT_EQ(buf.bytes(), 128u);
  EXPECT_EQ(buf.undo_bytes(), 0u);
  buf.record_write({2, 3}, 5, {8, 1});
  EXPECT_EQ(buf.undo_bytes(), 12u);  // 6 bf16 elements
  buf.record_write({64}, 0, {1});
  EXPECT_EQ(buf.undo_bytes(), 140u);
}

TEST(VersionedBuffer, RejectsWindowsOutsideTheBufferAndMissingVersions) {
  VersionedBuffer buf(Type::S32, 10);
  std::memset(buf.data(), 0, buf.bytes());
  EXPECT_THROW(buf.record_write({4}, 8, {1}), InvalidArgument);
  EXPECT_THROW(buf.record_write({2}, -1, {1}), InvalidArgument);
  EXPECT_EQ(buf.version(), 0u);  // a rejected write leaves no log entry
  EXPECT_EQ(buf.undo_bytes(), 0u);
  std::vector<int32_t> out(10);
  EXPECT_THROW(buf.read_version(1, out.data()), InvalidArgument);
  buf.read_version(0, out.data());
}

TEST(VersionedBuffer, EmptyBuffer) {
  VersionedBuffer buf(Type::F64, 0);
  EXPECT_EQ(buf.bytes(), 0u);
  EXPECT_NE(buf.data(), nullptr);
  buf.read_version(0, nullptr);
}

}  // namespace
