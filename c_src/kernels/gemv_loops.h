// What the SIMD kernels share beyond their instruction set: which rows of W and x the GEMVs
// compute together, the dispatch from run-time group sizes and dtypes to compile-time ones,
// and the per-call preparation of x and of the parameter streams.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "nx_quant/dtype.h"
#include "nx_quant/kernels.h"

namespace nx_quant::detail {

template <int N>
using Int = std::integral_constant<int, N>;

// f(Int<GS>{}) for the group size gs (32, 64 or 128, validated before any kernel runs).
template <typename F>
void with_group_size(size_t gs, F&& f) {
  switch (gs) {
    case 32:
      return f(Int<32>{});
    case 64:
      return f(Int<64>{});
    default:
      return f(Int<128>{});
  }
}

// f(Int<Bits>{}) for the bit width (2, 3, 4, 5, 6 or 8, validated before any kernel runs).
template <typename F>
void with_bits(int bits, F&& f) {
  switch (bits) {
    case 2:
      return f(Int<2>{});
    case 3:
      return f(Int<3>{});
    case 4:
      return f(Int<4>{});
    case 5:
      return f(Int<5>{});
    case 6:
      return f(Int<6>{});
    default:
      return f(Int<8>{});
  }
}

// f(std::integral_constant<DType, D>{}) for the dtype t: a run-time dtype to a compile-time one.
template <typename F>
void with_dtype(DType t, F&& f) {
  switch (t) {
    case DType::F32:
      return f(std::integral_constant<DType, DType::F32>{});
    case DType::F16:
      return f(std::integral_constant<DType, DType::F16>{});
    default:
      return f(std::integral_constant<DType, DType::BF16>{});
  }
}

// Output rows [n_begin, n_end) of W in blocks of NW rows, then one at a time; for each block,
// every pair of x's m rows, then a last single one. Rows of W are outermost: a block of W
// (a few KB) is read from memory once and stays in L1 while every pair of x rows uses it.
//   load_rows(Int<NW>{}, n):         prepare W rows n .. n+NW (e.g. convert their scales)
//   run(Int<MR>{}, Int<NW>{}, n, i0): compute outputs (i0 .. i0+MR) x (n .. n+NW)
template <int NW, typename Load, typename Run>
void for_gemv_blocks(size_t m, size_t n_begin, size_t n_end, Load&& load_rows, Run&& run) {
  auto rows_of_w = [&](auto nw, size_t n) {
    load_rows(nw, n);
    for (size_t i0 = 0; i0 < m; i0 += 2) {
      if (m - i0 >= 2) {
        run(Int<2>{}, nw, n, i0);
      } else {
        run(Int<1>{}, nw, n, i0);
      }
    }
  };
  size_t n = n_begin;
  for (; n + NW <= n_end; n += NW) rows_of_w(Int<NW>{}, n);
  for (; n < n_end; ++n) rows_of_w(Int<1>{}, n);
}

// x reordered for the 4-bit GEMVs that split a chunk's packed bytes into low nibbles (even
// values) and high nibbles (odd values): every `block` values become [evens | odds].
inline std::vector<float> even_odd_order(const float* x, size_t count, size_t block) {
  std::vector<float> out(count);
  for (size_t b = 0; b < count; b += block) {
    for (size_t j = 0; j < block / 2; ++j) {
      out[b + j] = x[b + 2 * j];
      out[b + block / 2 + j] = x[b + 2 * j + 1];
    }
  }
  return out;
}

// Prefetches (into L2) the scales and biases of W rows [n, n + count) (clipped to W), for the
// GEMV kernels to call a few row blocks ahead as they prefetch the packed words: left to the
// hardware prefetcher, these two small streams miss at every block on the machines measured.
inline void prefetch_row_params(const QuantizedMatrix& w, size_t groups, size_t n, size_t count) {
  if (n >= w.rows) return;
  const size_t width = dtype_size(w.dtype);
  const size_t end = std::min(n + count, w.rows) * groups * width;
  for (size_t b = n * groups * width; b < end; b += 64) {
    __builtin_prefetch(static_cast<const char*>(w.scales.data) + b, 0, 2);  // prefetcht1
    __builtin_prefetch(static_cast<const char*>(w.biases.data) + b, 0, 2);
  }
}

}  // namespace nx_quant::detail
