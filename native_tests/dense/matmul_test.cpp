// nx_quant::dense::matmul against a scalar reference of BinaryBackend's dot: every output is
// acc = a * b + acc over k in increasing order from 0, in double (exact integers for integer
// operands: their low 64 bits), then written with BinaryBackend's rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cpu_features.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "reduction_reference.h"

namespace nx_quant::dense {
namespace {

using namespace testref;

Buffer reference_matmul(int64_t batch, int64_t m, int64_t n, int64_t k, const StridedTensor& a,
                        const StridedTensor& b, Type out_type) {
  Buffer out(out_type, static_cast<size_t>(batch * m * n));
  const bool integer = !is_float_t(a.view.type) && !is_float_t(b.view.type);
  const bool both_unsigned = is_unsigned_t(a.view.type) && is_unsigned_t(b.view.type);
  for (int64_t bi = 0; bi < batch; ++bi)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const size_t o = static_cast<size_t>((bi * m + i) * n + j);
        if (integer) {
          uint64_t acc = 0;
          for (int64_t kk = 0; kk < k; ++kk)
            acc += static_cast<uint64_t>(a.i64((bi * m + i) * k + kk)) *
                   static_cast<uint64_t>(b.i64((bi * k + kk) * n + j));
          write_int(out.data(), out_type, o, static_cast<int64_t>(acc), both_unsigned);
        } else {
          double acc = 0;
          for (int64_t kk = 0; kk < k; ++kk) {
            const double x = a.d((bi * m + i) * k + kk), y = b.d((bi * k + kk) * n + j);
            acc = x * y + acc;
          }
          write_double(out.data(), out_type, o, acc);
        }
      }
  return out;
}

::testing::AssertionResult check(int64_t batch, int64_t m, int64_t n, int64_t k, Type at, Type bt,
                                 Type ot, int la, int lb, uint32_t seed, double special = 0.02,
                                 int threads = 0) {
  const StridedTensor a = make_tensor(at, {batch, m, k}, seed, la, special);
  const StridedTensor b = make_tensor(bt, {batch, k, n}, seed + 1, lb, special);
  const Buffer expected = reference_matmul(batch, m, n, k, a, b, ot);
  Buffer actual(ot, static_cast<size_t>(batch * m * n));
  matmul(batch, m, n, k, a.view, b.view, ot, actual.data(), threads);
  auto r = same_bits(expected, actual, expected.count());
  if (!r)
    r << " [batch " << batch << " m " << m << " n " << n << " k " << k << " a " << type_name(at)
      << " b " << type_name(bt) << " out " << type_name(ot) << " layouts " << la << "," << lb
      << "]";
  return r;
}

TEST(DenseMatmul, EveryTypePair) {
  uint32_t seed = 1;
  for (Type at : kAllTypes)
    for (Type bt : kAllTypes) {
      const bool integer = !is_float_t(at) && !is_float_t(bt);
      std::vector<Type> outs = {Type::F32, Type::F64, Type::BF16, Type::F16};
      if (integer) outs = {at, bt, Type::S64, Type::U8, Type::F32};
      for (Type ot : outs) EXPECT_TRUE(check(2, 3, 5, 7, at, bt, ot, 0, 0, seed++));
    }
}

TEST(DenseMatmul, LayoutsAndSpecialValues) {
  uint32_t seed = 100;
  for (Type t : {Type::F32, Type::BF16, Type::F16, Type::F64, Type::S32, Type::U8})
    for (int la = 0; la < 4; ++la)
      for (int lb = 0; lb < 4; ++lb) {
        EXPECT_TRUE(check(3, 4, 9, 6, t, t, t, la, lb, seed++, 0.1));
        EXPECT_TRUE(check(2, 1, 40, 33, t, Type::F32, Type::F32, la, lb, seed++, 0.05));
      }
}

TEST(DenseMatmul, EdgeSizes) {
  uint32_t seed = 500;
  const int64_t sizes[][4] = {{0, 3, 4, 5},     {2, 0, 4, 5},   {2, 3, 0, 5},   {2, 3, 4, 0},
                              {1, 1, 1, 1},     {1, 1, 1, 300}, {1, 5, 1, 3},   {1, 1, 7, 2},
                              {3, 1, 33, 1},    {2, 5, 31, 17}, {1, 67, 65, 9}, {1, 3, 257, 513},
                              {1, 70, 130, 260}};
  for (const auto& s : sizes)
    for (Type t : {Type::F32, Type::BF16, Type::F64, Type::S16}) {
      EXPECT_TRUE(check(s[0], s[1], s[2], s[3], t, t, t, 0, 1, seed++, 0.01));
      EXPECT_TRUE(check(s[0], s[1], s[2], s[3], t, t, t, 2, 0, seed++, 0.0));
    }
}

// The decoder's attention shapes: {heads} x {1 x 64} . {64 x ctx} (keys read along k) and
// {1 x ctx} . {ctx x 64}, and a prefill block.
TEST(DenseMatmul, AttentionShapes) {
  for (Type t : {Type::F32, Type::BF16}) {
    EXPECT_TRUE(check(4, 1, 600, 64, t, t, t, 0, 1, 7, 0.0));
    EXPECT_TRUE(check(4, 1, 64, 600, t, t, t, 0, 0, 8, 0.0));
    EXPECT_TRUE(check(1, 130, 96, 64, t, t, t, 0, 1, 9, 0.0));
  }
}

// b as the keys of q . k^T: stored {batch, n, k}, read as {batch, k, n} (k contiguous).
StridedTensor keys_layout(Type t, int64_t batch, int64_t k, int64_t n, uint32_t seed) {
  StridedTensor s = make_tensor(t, {batch, n, k}, seed, 0, 0.02);
  s.shape = {batch, k, n};
  std::swap(s.view.strides[1], s.view.strides[2]);
  return s;
}

// Few rows (m <= 4) read b in place, with its columns or its rows contiguous.
TEST(DenseMatmul, FewRowsEveryLayoutAndCpuPath) {
  const auto& all = nx_quant::detail::cpu_features();
  nx_quant::detail::CpuFeatures portable, avx2;
  avx2.avx2_fma = all.avx2_fma;
  uint32_t seed = 2000;
  for (const auto& f : {portable, avx2, all}) {
    nx_quant::detail::ScopedCpuFeatures scoped(f);
    for (int64_t m : {1, 2, 4, 5})
      for (int64_t n : {1, 9, 33, 50, 130})
        for (int64_t k : {1, 9, 70})
          for (Type bt : {Type::F32, Type::BF16, Type::F16})
            for (Type at : {bt, Type::F64, Type::S32}) {
              const int64_t batch = 2;
              const StridedTensor a = make_tensor(at, {batch, m, k}, seed++, 0, 0.02);
              for (int layout = 0; layout < 2; ++layout) {
                const StridedTensor b = layout == 0
                                            ? make_tensor(bt, {batch, k, n}, seed++, 0, 0.02)
                                            : keys_layout(bt, batch, k, n, seed++);
                const Type ot = at == Type::F64 ? Type::F64 : bt;
                const Buffer expected = reference_matmul(batch, m, n, k, a, b, ot);
                Buffer actual(ot, static_cast<size_t>(batch * m * n));
                matmul(batch, m, n, k, a.view, b.view, ot, actual.data());
                EXPECT_TRUE(same_bits(expected, actual, expected.count()))
                    << "m " << m << " n " << n << " k " << k << " a " << type_name(at) << " b "
                    << type_name(bt) << " layout " << layout;
              }
            }
  }
  // Column blocks of the few-rows path, and the thread count.
  for (Type t : {Type::F32, Type::BF16}) {
    const StridedTensor a = make_tensor(t, {3, 1, 64}, 5, 0, 0.0);
    const StridedTensor b = keys_layout(t, 3, 64, 1100, 6);
    const Buffer expected = reference_matmul(3, 1, 1100, 64, a, b, t);
    Buffer one(t, 3 * 1100), two(t, 3 * 1100);
    matmul(3, 1, 1100, 64, a.view, b.view, t, one.data(), 1);
    matmul(3, 1, 1100, 64, a.view, b.view, t, two.data(), 2);
    EXPECT_TRUE(same_bits(expected, one, one.count()));
    EXPECT_TRUE(same_bits(expected, two, two.count()));
  }
}

TEST(DenseMatmul, EveryCpuPathIsBitIdentical) {
  const auto& all = nx_quant::detail::cpu_features();
  nx_quant::detail::CpuFeatures portable, avx2;
  avx2.avx2_fma = all.avx2_fma;
  for (const auto& f : {portable, avx2, all}) {
    nx_quant::detail::ScopedCpuFeatures scoped(f);
    uint32_t seed = 900;
    for (Type t : {Type::F32, Type::BF16, Type::F16, Type::F64}) {
      EXPECT_TRUE(check(2, 9, 70, 300, t, t, t, 0, 0, seed++, 0.01));
      EXPECT_TRUE(check(2, 5, 37, 20, t, Type::S32, Type::F64, 1, 0, seed++, 0.01));
      EXPECT_TRUE(check(1, 6, 45, 20, Type::U64, t, t, 0, 2, seed++, 0.01));
    }
  }
}

TEST(DenseMatmul, ThreadCountDoesNotChangeResults) {
  for (Type t : {Type::F32, Type::BF16, Type::S32}) {
    const StridedTensor a = make_tensor(t, {3, 70, 200}, 11, 0, 0.0);
    const StridedTensor b = make_tensor(t, {3, 200, 300}, 12, 1, 0.0);
    Buffer one(t, 3 * 70 * 300), two(t, 3 * 70 * 300);
    matmul(3, 70, 300, 200, a.view, b.view, t, one.data(), 1);
    matmul(3, 70, 300, 200, a.view, b.view, t, two.data(), 2);
    EXPECT_TRUE(same_bits(one, two, one.count()));
    EXPECT_TRUE(same_bits(reference_matmul(3, 70, 300, 200, a, b, t), one, one.count()));
  }
}

// The sum is in double, not in the operands' type: f32 products that cancel only in double.
TEST(DenseMatmul, AccumulatesInDouble) {
  std::vector<float> av = {1e8f, 1.0f, -1e8f}, bv = {1.0f, 1.0f, 1.0f};
  View a = contiguous(av.data(), Type::F32, {1, 1, 3});
  View b = contiguous(bv.data(), Type::F32, {1, 3, 1});
  float out = 0;
  matmul(1, 1, 1, 3, a, b, Type::F32, &out);
  EXPECT_EQ(out, 1.0f);  // f32 accumulation would give 0
}

TEST(DenseMatmul, RejectsBadArguments) {
  std::vector<float> buf(64, 1.0f);
  View a = contiguous(buf.data(), Type::F32, {1, 2, 4});
  View b = contiguous(buf.data(), Type::F32, {1, 4, 3});
  float out[6];
  EXPECT_THROW(matmul(-1, 2, 3, 4, a, b, Type::F32, out), InvalidArgument);
  EXPECT_THROW(matmul(1, 2, 3, 4, a, b, Type::F32, nullptr), InvalidArgument);
  EXPECT_THROW(matmul(1, 2, 3, 4, a, b, Type::F32, out, -1), InvalidArgument);
  View too_small = a;
  too_small.count = 7;
  EXPECT_THROW(matmul(1, 2, 3, 4, too_small, b, Type::F32, out), InvalidArgument);
  View bad_rank = b;
  bad_rank.strides = {3, 1};
  EXPECT_THROW(matmul(1, 2, 3, 4, a, bad_rank, Type::F32, out), InvalidArgument);
  View negative = a;
  negative.strides = {8, -4, 1};
  EXPECT_THROW(matmul(1, 2, 3, 4, negative, b, Type::F32, out), InvalidArgument);
  View null_data = a;
  null_data.data = nullptr;
  EXPECT_THROW(matmul(1, 2, 3, 4, null_data, b, Type::F32, out), InvalidArgument);
  EXPECT_NO_THROW(matmul(1, 2, 3, 4, a, b, Type::F32, out));
  EXPECT_FLOAT_EQ(out[0], 4.0f);
}

}  // namespace
}  // namespace nx_quant::dense
