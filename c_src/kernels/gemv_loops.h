// The loops the GEMV kernels share: which rows of W and x are computed together, and the
// dispatch from run-time group sizes to compile-time ones.
#pragma once

#include <cstddef>
#include <type_traits>

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

}  // namespace nx_quant::detail
