// Batched dense matmul with BinaryBackend's dot semantics (see dense_ops.h).
//
// BinaryBackend's dot computes every output as `acc = lhs * rhs + acc` over the contracted
// elements in order, starting from the integer 0, in double when an operand is a float and in
// exact integers otherwise, then writes the result to the output type. Here:
//   - float or mixed operands: both are converted exactly to double, packed into panels, and a
//     register-blocked micro-kernel (matmul_micro.h) keeps each output's own sequential chain of
//     k in a SIMD lane: vectorized across outputs, never across k. The multiply-add is fused
//     only when both operands' significands fit 53 bits together (f16/bf16/f32/8-16-bit
//     integers), where the product is exact and fusing changes nothing;
//   - integer operands: wrapping 64-bit arithmetic (the exact integer's low bits).
// Every output is computed inside one work item, so the result does not depend on threads.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "element.h"
#include "matmul_micro.h"
#include "nx_quant/dense_ops.h"
#include "nx_quant/error.h"
#include "parallel.h"
#include "view.h"

#if defined(__x86_64__)
#include "cpu_features.h"
#endif

namespace nx_quant::dense {

namespace {

using detail::load_int;

constexpr int64_t kKc = 256;       // k per packed panel
constexpr int64_t kNc = 256;       // columns per work item
constexpr int64_t kMc = 64;        // rows per work item
constexpr int64_t kSmallNc = 512;  // columns per work item when m is small

// Significand bits of a type's values (integers: their magnitude's bits).
int significand_bits(Type t) {
  switch (t) {
    case Type::U8:
    case Type::S8:
    case Type::BF16:
      return 8;
    case Type::F16:
      return 11;
    case Type::U16:
    case Type::S16:
      return 16;
    case Type::F32:
      return 24;
    case Type::U32:
    case Type::S32:
      return 32;
    case Type::F64:
      return 53;
    default:
      return 64;
  }
}

// out[first + i * n + j] = acc[i * ldc + j] for i < rows, j < cols.
template <Type O>
void store_tile(void* out, int64_t first, int64_t n, const double* acc, int64_t ldc, int64_t rows,
                int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    const double* src = acc + i * ldc;
    if constexpr (O == Type::F32) {  // a loop the compiler vectorizes
      float* dst = static_cast<float*>(out) + first + i * n;
      const float nan = detail::canonical_nan_float();
      for (int64_t j = 0; j < cols; ++j) {
        const double v = src[j];
        const float f = static_cast<float>(v);
        dst[j] = v != v ? nan : f;
      }
    } else {
      for (int64_t j = 0; j < cols; ++j) detail::store_double<O>(out, first + i * n + j, src[j]);
    }
  }
}

using StoreTileFn = void (*)(void*, int64_t, int64_t, const double*, int64_t, int64_t, int64_t);

// row[j] = X(j) as 64 bits, X(j) = element base + j * stride.
template <Type T>
void load_int_row(uint64_t* row, const void* data, int64_t base, int64_t stride, int64_t count) {
  for (int64_t j = 0; j < count; ++j)
    row[j] = static_cast<uint64_t>(load_int<T>(data, base + j * stride));
}

using IntRowFn = void (*)(uint64_t*, const void*, int64_t, int64_t, int64_t);

template <Type O>
void store_int_row(void* out, int64_t first, const uint64_t* acc, int64_t count, bool is_unsigned) {
  for (int64_t j = 0; j < count; ++j)
    detail::store_int<O>(out, first + j, static_cast<int64_t>(acc[j]), is_unsigned);
}

using StoreIntRowFn = void (*)(void*, int64_t, const uint64_t*, int64_t, bool);

// A scratch buffer of `count` doubles: the thread's kept one (grown as needed) when small, else
// `big` (freed by its owner), so that no thread keeps a large buffer after the call.
double* scratch(std::vector<double>& kept, std::vector<double>& big, size_t count) {
  constexpr size_t kKeep = size_t{1} << 17;  // 1 MB
  std::vector<double>& v = count <= kKeep ? kept : big;
  if (v.size() < count) v.resize(count);
  return v.data();
}

detail::MatmulMicroKernel select_micro_kernel() {
#if defined(__x86_64__)
  const auto& f = nx_quant::detail::cpu_features();
  if (f.avx512) return detail::matmul_micro_avx512();
  if (f.avx2_fma) return detail::matmul_micro_avx2();
#endif
  return detail::matmul_micro_portable();
}

struct Operand {
  const void* data;
  int64_t offset, s_batch, s_row, s_col;  // a: row = m, col = k; b: row = k, col = n
};

void matmul_float(int64_t batch, int64_t m, int64_t n, int64_t k, const Operand& a,
                  const Operand& b, Type a_type, Type b_type, Type out_type, void* out,
                  int threads) {
  const detail::MatmulMicroKernel micro = select_micro_kernel();
  const bool fma = significand_bits(a_type) + significand_bits(b_type) <= 53;
  const detail::MatmulPackFn pack_a = micro.pack[static_cast<int>(a_type)];
  const detail::MatmulPackFn pack_b = micro.pack[static_cast<int>(b_type)];
  const StoreTileFn store = detail::with_type(
      out_type, [](auto t) -> StoreTileFn { return &store_tile<decltype(t)::value>; });

  const double work = static_cast<double>(batch) * m * n * k;
  const int use_threads = work < 65536.0 ? 1 : threads;

  // Few rows: b is read in place (no panel), a's rows converted once per column block.
  double probe = 0;
  if (m <= detail::kMatmulSmallM && k <= (int64_t{1} << 30) && micro.small_m != nullptr &&
      micro.small_m(1, &probe, b_type, b.data, 0, b.s_row, b.s_col, 0, 0, fma, &probe)) {
    const int64_t n_blocks = (n + kSmallNc - 1) / kSmallNc;
    const size_t items = static_cast<size_t>(batch * n_blocks);
    nx_quant::detail::parallel_for(items, 1, use_threads, [&](size_t begin, size_t end) {
      thread_local std::vector<double> kept_ap, kept_acc;
      std::vector<double> big_ap;
      double* ap = scratch(kept_ap, big_ap, static_cast<size_t>(m * k));
      double* acc = scratch(kept_acc, kept_acc, static_cast<size_t>(m * kSmallNc));
      for (size_t item = begin; item < end; ++item) {
        const int64_t bi = static_cast<int64_t>(item) / n_blocks;
        const int64_t n0 = static_cast<int64_t>(item) % n_blocks * kSmallNc;
        const int64_t nc = std::min(kSmallNc, n - n0);
        // ap[i * k + kk] = A(i, kk): a panel whose lanes are k.
        pack_a(ap, static_cast<int>(k), a.data, a.offset + bi * a.s_batch, a.s_col, a.s_row, k, m);
        micro.small_m(static_cast<int>(m), ap, b_type, b.data,
                      b.offset + bi * b.s_batch + n0 * b.s_col, b.s_row, b.s_col, nc, k, fma, acc);
        store(out, bi * m * n + n0, n, acc, nc, m, nc);
      }
    });
    return;
  }

  const int64_t m_blocks = (m + kMc - 1) / kMc;
  const int64_t n_blocks = (n + kNc - 1) / kNc;
  const size_t items = static_cast<size_t>(batch * m_blocks * n_blocks);
  const int64_t nr = micro.nr, pmr = micro.mr;

  nx_quant::detail::parallel_for(items, 1, use_threads, [&](size_t begin, size_t end) {
    // Per-thread buffers, bounded by the block sizes (at most ~0.8 MB).
    thread_local std::vector<double> bp, ap, acc;
    for (size_t item = begin; item < end; ++item) {
      const int64_t nb = static_cast<int64_t>(item) % n_blocks;
      const int64_t mb = static_cast<int64_t>(item) / n_blocks % m_blocks;
      const int64_t bi = static_cast<int64_t>(item) / n_blocks / m_blocks;
      const int64_t m0 = mb * kMc, mc = std::min(kMc, m - m0);
      const int64_t n0 = nb * kNc, nc = std::min(kNc, n - n0);
      const int64_t strips = (nc + nr - 1) / nr, ldc = strips * nr;
      const int64_t kc_max = std::min(kKc, k);
      if (bp.size() < static_cast<size_t>(kc_max * ldc)) bp.resize(kc_max * ldc);
      if (ap.size() < static_cast<size_t>(kc_max * pmr)) ap.resize(kc_max * pmr);
      if (acc.size() < static_cast<size_t>(mc * ldc)) acc.resize(mc * ldc);
      for (int64_t k0 = 0; k0 < k; k0 += kKc) {
        const int64_t kc = std::min(kKc, k - k0);
        const int64_t b_base = b.offset + bi * b.s_batch + k0 * b.s_row + n0 * b.s_col;
        for (int64_t s = 0; s < strips; ++s)
          pack_b(bp.data() + s * kc * nr, static_cast<int>(nr), b.data, b_base + s * nr * b.s_col,
                 b.s_col, b.s_row, std::min(nr, nc - s * nr), kc);
        for (int64_t i0 = 0; i0 < mc; i0 += pmr) {
          const int64_t rows = std::min(pmr, mc - i0);
          pack_a(ap.data(), static_cast<int>(pmr), a.data,
                 a.offset + bi * a.s_batch + (m0 + i0) * a.s_row + k0 * a.s_col, a.s_row, a.s_col,
                 rows, kc);
          for (int64_t s = 0; s < strips; ++s)
            micro.tile(static_cast<int>(rows), ap.data(), bp.data() + s * kc * nr, kc,
                       acc.data() + i0 * ldc + s * nr, ldc, k0 > 0, fma);
        }
      }
      store(out, (bi * m + m0) * n + n0, n, acc.data(), ldc, mc, nc);
    }
  });
}

void matmul_int(int64_t batch, int64_t m, int64_t n, int64_t k, const Operand& a, const Operand& b,
                Type a_type, Type b_type, Type out_type, void* out, int threads) {
  const IntRowFn load_a = detail::with_type(
      a_type, [](auto t) -> IntRowFn { return &load_int_row<decltype(t)::value>; });
  const IntRowFn load_b = detail::with_type(
      b_type, [](auto t) -> IntRowFn { return &load_int_row<decltype(t)::value>; });
  const StoreIntRowFn store = detail::with_type(
      out_type, [](auto t) -> StoreIntRowFn { return &store_int_row<decltype(t)::value>; });
  const bool is_unsigned = detail::is_unsigned_type(a_type) && detail::is_unsigned_type(b_type);
  const size_t items = static_cast<size_t>(batch * m);
  const double work = static_cast<double>(batch) * m * n * k;
  const int use_threads = work < 65536.0 ? 1 : threads;
  nx_quant::detail::parallel_for(items, 1, use_threads, [&](size_t begin, size_t end) {
    std::vector<uint64_t> acc(n), a_row(k), b_row(n);
    for (size_t item = begin; item < end; ++item) {
      const int64_t bi = static_cast<int64_t>(item) / m, i = static_cast<int64_t>(item) % m;
      std::fill(acc.begin(), acc.end(), 0);
      load_a(a_row.data(), a.data, a.offset + bi * a.s_batch + i * a.s_row, a.s_col, k);
      for (int64_t kk = 0; kk < k; ++kk) {
        load_b(b_row.data(), b.data, b.offset + bi * b.s_batch + kk * b.s_row, b.s_col, n);
        const uint64_t x = a_row[kk];
        for (int64_t j = 0; j < n; ++j) acc[j] += x * b_row[j];
      }
      store(out, (bi * m + i) * n, acc.data(), n, is_unsigned);
    }
  });
}

}  // namespace

void matmul(int64_t batch, int64_t m, int64_t n, int64_t k, const View& a, const View& b,
            Type out_type, void* out, int threads) {
  if (batch < 0 || m < 0 || n < 0 || k < 0)
    throw InvalidArgument("matmul: negative size (batch " + std::to_string(batch) + ", m " +
                          std::to_string(m) + ", n " + std::to_string(n) + ", k " +
                          std::to_string(k) + ")");
  if (threads < 0) throw InvalidArgument("matmul: threads must be >= 0");
  const Shape a_shape{batch, m, k}, b_shape{batch, k, n}, out_shape{batch, m, n};
  detail::check_shape(a_shape, "matmul: a");
  detail::check_shape(b_shape, "matmul: b");
  detail::check_shape(out_shape, "matmul: out");
  detail::check_view(a, a_shape, "matmul: a");
  detail::check_view(b, b_shape, "matmul: b");
  type_size(a.type);  // throws on an unknown type
  type_size(b.type);
  type_size(out_type);
  const size_t count = element_count(out_shape);
  if (count == 0) return;
  if (out == nullptr) throw InvalidArgument("matmul: no output buffer");
  const bool integer = !is_float(a.type) && !is_float(b.type);
  if (k == 0) {  // empty sums: 0
    detail::with_type(out_type, [&](auto t) {
      for (size_t i = 0; i < count; ++i)
        detail::store_int<decltype(t)::value>(out, static_cast<int64_t>(i), 0);
    });
    return;
  }
  const Operand oa{a.data, a.offset, a.strides[0], a.strides[1], a.strides[2]};
  const Operand ob{b.data, b.offset, b.strides[0], b.strides[1], b.strides[2]};
  if (integer)
    matmul_int(batch, m, n, k, oa, ob, a.type, b.type, out_type, out, threads);
  else
    matmul_float(batch, m, n, k, oa, ob, a.type, b.type, out_type, out, threads);
}

}  // namespace nx_quant::dense
