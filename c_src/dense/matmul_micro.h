// The dense matmul's register-blocked micro-kernel over double panels (private to
// c_src/dense/matmul*.cpp).
//
// A tile of `rows` (<= MR) x NR outputs is accumulated over `kc` steps of k, each output in its
// own register lane: c[i][j] = c[i][j] + a[k][i] * b[k][j] for k = 0, 1, ..., kc - 1 in order,
// so every output is one sequential chain of double additions, exactly BinaryBackend's
// `lhs * rhs + acc`. With kFma the multiply-add is one fused operation: the caller chooses it
// only when every product is exact in double (both operands' significands fit 53 bits
// together), where round(a * b + c) equals round(round(a * b) + c).
//
// Panels: a is [kc][PMR] (rows past `rows` are never read), b is [kc][NR], c is `rows` rows of
// NR doubles `ldc` apart. The ISA is a traits struct (V, W lanes, load/store/bcast/add/mul/fma).
#pragma once

#include <cstdint>
#include <type_traits>

#include "nx_quant/dense_ops.h"

namespace nx_quant::dense::detail {

// One ISA's micro-kernel entry: tile(rows, ap, bp, kc, c, ldc, load_c, fma).
struct MatmulMicroKernel {
  int mr = 0;  // rows per tile (panel a's width)
  int nr = 0;  // columns per tile (panel b's width)
  void (*tile)(int rows, const double* ap, const double* bp, int64_t kc, double* c, int64_t ldc,
               bool load_c, bool fma) = nullptr;
};

MatmulMicroKernel matmul_micro_portable();
#if defined(__x86_64__)
MatmulMicroKernel matmul_micro_avx2();
MatmulMicroKernel matmul_micro_avx512();
#endif

template <typename Isa, int PMR, int MR, int NV, bool kFma>
inline void matmul_micro_tile(const double* ap, const double* bp, int64_t kc, double* c,
                              int64_t ldc, bool load_c) {
  using V = typename Isa::V;
  constexpr int W = Isa::W;
  constexpr int NR = NV * W;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = load_c ? Isa::load(c + i * ldc + j * W) : Isa::zero();
  for (int64_t k = 0; k < kc; ++k) {
    V b[NV];
    for (int j = 0; j < NV; ++j) b[j] = Isa::load(bp + k * NR + j * W);
    for (int i = 0; i < MR; ++i) {
      const V a = Isa::bcast(ap[k * PMR + i]);
      for (int j = 0; j < NV; ++j) {
        if constexpr (kFma)
          acc[i][j] = Isa::fma(a, b[j], acc[i][j]);
        else
          acc[i][j] = Isa::add(Isa::mul(a, b[j]), acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) Isa::store(c + i * ldc + j * W, acc[i][j]);
}

// The entry point of one ISA: dispatches on the tile's row count and fma.
template <typename Isa, int PMR, int NV>
inline void matmul_micro_dispatch(int rows, const double* ap, const double* bp, int64_t kc,
                                  double* c, int64_t ldc, bool load_c, bool fma) {
  static_assert(PMR >= 1 && PMR <= 4, "up to 4 rows per tile");
  auto run = [&](auto rows_c) {
    constexpr int R = decltype(rows_c)::value;
    if constexpr (R <= PMR) {
      if (fma)
        matmul_micro_tile<Isa, PMR, R, NV, true>(ap, bp, kc, c, ldc, load_c);
      else
        matmul_micro_tile<Isa, PMR, R, NV, false>(ap, bp, kc, c, ldc, load_c);
    }
  };
  switch (rows) {
    case 1:
      run(std::integral_constant<int, 1>{});
      break;
    case 2:
      run(std::integral_constant<int, 2>{});
      break;
    case 3:
      run(std::integral_constant<int, 3>{});
      break;
    default:
      run(std::integral_constant<int, 4>{});
      break;
  }
}

}  // namespace nx_quant::dense::detail
