// The Copy op (as_type and every strided copy), copy_into, fill and iota against
// BinaryBackend's rules written in the test (elementwise_reference.h).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "elementwise_reference.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"

namespace nxq_test {
namespace {

using nx_quant::InvalidArgument;

// as_type: the same type keeps the bits (NaN payloads too); otherwise read exactly, written
// with BinaryBackend's rules.
uint64_t ref_as_type(Type from, uint64_t bits, const Val& v, Type to) {
  if (from == to) return bits;
  return ref_bits(to, v);
}

TEST(DenseCopy, AsTypeEveryPairOfTypes) {
  for (Type from : kAllTypes) {
    const std::vector<uint64_t> bits = interesting_bits(from, 3, 20);
    const Buf in = make_buf(from, bits);
    const Shape s{static_cast<int64_t>(bits.size())};
    for (Type to : kAllTypes) {
      Buf o(to, bits.size());
      unary(UnaryOp::Copy, s, in.view(s), to, o.data());
      int bad = 0;
      std::string first;
      for (size_t i = 0; i < bits.size(); ++i) {
        const uint64_t want = ref_as_type(from, bits[i], in.val(i), to);
        if (o.get(i) != want && bad++ == 0)
          first = val_str(in.val(i)) + " (" + bits_str(bits[i]) + "): want " + bits_str(want) +
                  ", got " + bits_str(o.get(i));
      }
      EXPECT_EQ(bad, 0) << type_name(from) << " -> " << type_name(to) << ": " << first;
    }
  }
}

TEST(DenseCopy, FloatToIntegerSaturatesInfinitiesAndWrapsFiniteValues) {
  const Buf in = make_buf(Type::F32, {fbits(300.0f), fbits(-3.9f), fbits(3.9f), 0x7FC00000,
                                      0x7F800000, 0xFF800000, fbits(1e20f)});
  Buf o(Type::S8, 7);
  unary(UnaryOp::Copy, {7}, in.view({7}), Type::S8, o.data());
  const uint64_t want[] = {44, 0xFD, 3, 0, 127, 0x80, ref_bits(Type::S8, vf(1e20f))};
  for (int i = 0; i < 7; ++i) EXPECT_EQ(o.get(i), want[i]) << i;
  EXPECT_EQ(want[6], 0u) << "1e20f = 100000002004087734272: its low 8 bits";
}

TEST(DenseCopy, F64ToF16RoundsOnce) {
  const double d = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  const Buf in = make_buf(Type::F64, {dbits(d), dbits(65519.99), dbits(65520.0)});
  Buf o(Type::F16, 3);
  unary(UnaryOp::Copy, {3}, in.view({3}), Type::F16, o.data());
  EXPECT_EQ(o.get(0), 0x3C01u);
  EXPECT_EQ(o.get(1), 0x7BFFu);
  EXPECT_EQ(o.get(2), 0x7C00u);
}

void check_strided_copy(Type from, Type to, const Shape& shape, int64_t offset,
                        const std::vector<int64_t>& strides, size_t buffer, int threads = 1) {
  std::mt19937_64 rng(77);
  std::vector<uint64_t> bits(buffer);
  const std::vector<uint64_t> special = interesting_bits(from, 5, 0);
  for (size_t i = 0; i < buffer; ++i)
    bits[i] =
        i % 7 == 3
            ? special[i % special.size()]
            : ref_bits(from, vf(static_cast<double>(static_cast<int>(rng() % 2000) - 1000) / 8));
  const Buf in = make_buf(from, bits);
  const size_t count = element_count(shape);
  Buf o(to, count);
  unary(UnaryOp::Copy, shape, in.view_strided(offset, strides), to, o.data(), threads);
  // walk the shape row-major
  std::vector<int64_t> idx(shape.size(), 0);
  int bad = 0;
  for (size_t flat = 0; flat < count; ++flat) {
    int64_t e = offset;
    for (size_t k = 0; k < shape.size(); ++k) e += idx[k] * strides[k];
    const size_t src = static_cast<size_t>(e);
    bad += o.get(flat) != ref_as_type(from, bits[src], in.val(src), to);
    for (size_t k = shape.size(); k-- > 0;) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
  EXPECT_EQ(bad, 0) << type_name(from) << " -> " << type_name(to);
}

TEST(DenseCopy, TransposesReversesBroadcastsAndSlices) {
  for (Type from : {Type::F32, Type::BF16, Type::S8, Type::F64, Type::U16})
    for (Type to : {from, Type::F32, Type::F16}) {
      // transpose of a {5, 7} matrix
      check_strided_copy(from, to, {7, 5}, 0, {1, 7}, 35);
      // 4-d transpose [0, 2, 1, 3] of {2, 3, 4, 5} and the K^T pattern [0, 1, 3, 2]
      check_strided_copy(from, to, {2, 4, 3, 5}, 0, {60, 5, 20, 1}, 120);
      check_strided_copy(from, to, {2, 3, 5, 4}, 0, {60, 20, 1, 5}, 120);
      // reverse along both axes
      check_strided_copy(from, to, {4, 6}, 23, {-6, -1}, 24);
      // broadcast {3} -> {4, 3} and a scalar -> {2, 2}
      check_strided_copy(from, to, {4, 3}, 0, {0, 1}, 3);
      check_strided_copy(from, to, {2, 2}, 1, {0, 0}, 3);
      // strided slice: rows 1.. step 2, cols 2.. step 3 of {9, 10}
      check_strided_copy(from, to, {4, 3}, 12, {20, 3}, 90);
      // scalar and empty
      check_strided_copy(from, to, {}, 2, {}, 3);
      check_strided_copy(from, to, {0, 4}, 0, {4, 1}, 1);
    }
  // big transposes (the tiled path) with the thread pool
  for (Type t : {Type::F32, Type::BF16, Type::U8, Type::F64}) {
    check_strided_copy(t, t, {300, 257}, 0, {1, 300}, 300 * 257, 0);
    check_strided_copy(t, t, {3, 64, 130}, 0, {130 * 64, 1, 64}, 3 * 64 * 130, 0);
    check_strided_copy(t, Type::F32, {129, 513}, 0, {1, 129}, 129 * 513, 0);
  }
}

TEST(DenseCopyInto, WindowsConcatenatePadAndInterior) {
  // Concatenate {2, 3} and {2, 2} along axis 1 into {2, 5}, the second converted from s32.
  Buf out(Type::F32, 10);
  const Buf a = make_buf(Type::F32, {fbits(1), fbits(2), fbits(3), fbits(4), fbits(5), fbits(6)});
  const Buf b = make_buf(Type::S32, {7, 8, 9, static_cast<uint32_t>(-10)});
  copy_into({2, 3}, a.view({2, 3}), Type::F32, out.data(), 10, 0, {5, 1});
  copy_into({2, 2}, b.view({2, 2}), Type::F32, out.data(), 10, 3, {5, 1});
  const float want[] = {1, 2, 3, 7, 8, 4, 5, 6, 9, -10};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(out.get(i), fbits(want[i])) << i;
  // Interior padding: {3} into every other element of {5}, reversed input.
  Buf padded(Type::S16, 5);
  fill(Type::S16, padded.data(), 5, make_buf(Type::F32, {fbits(-1.5f)}).view({}));
  const Buf c = make_buf(Type::S16, {10, 20, 30});
  copy_into({3}, c.view_strided(2, {-1}), Type::S16, padded.data(), 5, 0, {2});
  const uint64_t want_pad[] = {30, 0xFFFF, 20, 0xFFFF, 10};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(padded.get(i), want_pad[i]) << i;
  // Overlapping windows (stride 0) write in row-major order: the last value wins.
  Buf one(Type::U8, 1);
  const Buf d = make_buf(Type::U8, {1, 2, 3});
  copy_into({3}, d.view({3}), Type::U8, one.data(), 1, 0, {0});
  EXPECT_EQ(one.get(0), 3u);
  // A large window with threads (stack along a new last axis).
  const int64_t n = 100000;
  std::vector<uint64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<uint64_t>(i * 7);
  const Buf e = make_buf(Type::U32, v);
  Buf stacked(Type::U32, 2 * n);
  copy_into({n}, e.view({n}), Type::U32, stacked.data(), 2 * n, 1, {2}, 0);
  copy_into({n}, e.view({n}), Type::U32, stacked.data(), 2 * n, 0, {2}, 0);
  for (int64_t i = 0; i < 2 * n; ++i)
    ASSERT_EQ(stacked.get(static_cast<size_t>(i)), static_cast<uint64_t>((i / 2) * 7) & 0xFFFFFFFF);
}

TEST(DenseCopyInto, BadWindowsThrow) {
  Buf out(Type::F32, 4);
  const Buf a = make_buf(Type::F32, {0, 0, 0});
  EXPECT_THROW(copy_into({3}, a.view({3}), Type::F32, out.data(), 4, 2, {1}), InvalidArgument);
  EXPECT_THROW(copy_into({3}, a.view({3}), Type::F32, out.data(), 4, -1, {1}), InvalidArgument);
  EXPECT_THROW(copy_into({3}, a.view({3}), Type::F32, out.data(), 4, 0, {1, 1}), InvalidArgument);
  EXPECT_THROW(copy_into({3}, a.view_strided(1, {1}), Type::F32, out.data(), 4, 0, {1}),
               InvalidArgument);
  EXPECT_THROW(copy_into({3}, a.view({3}), Type::F32, nullptr, 4, 0, {1}), InvalidArgument);
  copy_into({0}, a.view({0}), Type::F32, nullptr, 0, 0, {1});
}

TEST(DenseFill, EveryPairOfTypes) {
  for (Type from : kAllTypes)
    for (uint64_t bits : interesting_bits(from, 9, 1)) {
      const Buf value = make_buf(from, {0, bits});
      View v = value.view({});
      v.offset = 1;
      for (Type to : kAllTypes) {
        Buf o(to, 37);
        fill(to, o.data(), 37, v);
        const uint64_t want = ref_as_type(from, bits, value.val(1), to);
        for (size_t i = 0; i < 37; ++i)
          ASSERT_EQ(o.get(i), want) << type_name(from) << "->" << type_name(to);
      }
    }
  Buf o(Type::F32, 1);
  const Buf value = make_buf(Type::F32, {0});
  View bad = value.view({});
  bad.offset = 1;
  EXPECT_THROW(fill(Type::F32, o.data(), 1, bad), InvalidArgument);
  EXPECT_THROW(fill(Type::F32, o.data(), 1, value.view({1})), InvalidArgument) << "not a scalar";
  EXPECT_THROW(fill(Type::F32, nullptr, 1, value.view({})), InvalidArgument);
  fill(Type::F32, nullptr, 0, value.view({}));
}

TEST(DenseIota, AxesAndTypes) {
  for (Type t : kAllTypes) {
    const Shape shape{3, 4, 5};
    for (int axis : {-1, 0, 1, 2}) {
      Buf o(t, 60);
      iota(t, shape, axis, o.data());
      for (int64_t i = 0; i < 60; ++i) {
        const int64_t want = axis < 0 ? i : axis == 0 ? i / 20 : axis == 1 ? (i / 5) % 4 : i % 5;
        ASSERT_EQ(o.get(static_cast<size_t>(i)), ref_bits(t, vi(want))) << type_name(t) << axis;
      }
    }
  }
  // f16 rounds large indices (2049 -> 2048, ties to even), u8 wraps; big enough for threads
  const int64_t n = 70000;
  Buf h(Type::F16, n), u(Type::U8, n);
  iota(Type::F16, {n}, 0, h.data());
  iota(Type::U8, {n}, -1, u.data());
  EXPECT_EQ(h.get(2049), ref_bits(Type::F16, vi(2048)));
  EXPECT_EQ(h.get(2051), ref_bits(Type::F16, vi(2052)));
  EXPECT_EQ(h.get(69999), 0x7C00u) << "past f16's max: Inf";
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(u.get(static_cast<size_t>(i)), static_cast<uint64_t>(i & 255));
  Buf o(Type::F32, 1);
  EXPECT_THROW(iota(Type::F32, {1}, 1, o.data()), InvalidArgument);
  EXPECT_THROW(iota(Type::F32, {-1}, 0, o.data()), InvalidArgument);
  EXPECT_THROW(iota(Type::F32, {1}, 0, nullptr), InvalidArgument);
  iota(Type::F32, {}, -1, o.data());
  EXPECT_EQ(o.get(0), 0u);
}

}  // namespace
}  // namespace nxq_test
