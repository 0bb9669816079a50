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

#include "element.h"
#include "nx_quant/dense_ops.h"

namespace nx_quant::dense::detail {

// Packs panel[kk * width + l] = X(l, kk) for l < lanes (exactly, as double) and zero for the
// lanes up to width, X(l, kk) being element base + l * lane_stride + kk * k_stride of data.
using MatmulPackFn = void (*)(double* panel, int width, const void* data, int64_t base,
                              int64_t lane_stride, int64_t k_stride, int64_t lanes, int64_t kc);

// One ISA's micro-kernel entry: tile(rows, ap, bp, kc, c, ldc, load_c, fma), and its packing
// functions by input type.
struct MatmulMicroKernel {
  int mr = 0;  // rows per tile (panel a's width)
  int nr = 0;  // columns per tile (panel b's width)
  void (*tile)(int rows, const double* ap, const double* bp, int64_t kc, double* c, int64_t ldc,
               bool load_c, bool fma) = nullptr;
  MatmulPackFn pack[12] = {};  // indexed by Type
  // Optional direct kernel for few rows (m <= kMatmulSmallM), no b panel: acc[i * n + j] =
  // sum over kk < k of a[i * k + kk] * B(kk, j) for i < m, j < n, in increasing kk, B(kk, j)
  // being element b_base + kk * s_row + j * s_col of b (of type b_type). Returns false (having
  // done nothing) when it does not handle that type or layout (which depends only on b_type,
  // s_row and s_col: a call with n = 0 tells).
  bool (*small_m)(int m, const double* a, Type b_type, const void* b, int64_t b_base, int64_t s_row,
                  int64_t s_col, int64_t n, int64_t k, bool fma, double* acc) = nullptr;
};

inline constexpr int kMatmulSmallM = 4;

// Instantiated only in matmul_micro_portable.cpp (see matmul_fill_generic_packs).
template <Type T>
void matmul_pack_generic(double* panel, int width, const void* data, int64_t base,
                         int64_t lane_stride, int64_t k_stride, int64_t lanes, int64_t kc) {
  if (lanes < width)
    for (int64_t kk = 0; kk < kc; ++kk)
      for (int64_t l = lanes; l < width; ++l) panel[kk * width + l] = 0.0;
  const int64_t abs_lane = lane_stride < 0 ? -lane_stride : lane_stride;
  const int64_t abs_k = k_stride < 0 ? -k_stride : k_stride;
  if (abs_lane <= abs_k) {
    for (int64_t kk = 0; kk < kc; ++kk) {
      const int64_t src = base + kk * k_stride;
      double* dst = panel + kk * width;
      if (lane_stride == 1) {
        for (int64_t l = 0; l < lanes; ++l) dst[l] = load_double<T>(data, src + l);
      } else {
        for (int64_t l = 0; l < lanes; ++l) dst[l] = load_double<T>(data, src + l * lane_stride);
      }
    }
  } else {
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t src = base + l * lane_stride;
      if (k_stride == 1) {
        for (int64_t kk = 0; kk < kc; ++kk) panel[kk * width + l] = load_double<T>(data, src + kk);
      } else {
        for (int64_t kk = 0; kk < kc; ++kk)
          panel[kk * width + l] = load_double<T>(data, src + kk * k_stride);
      }
    }
  }
}

// Fills k.pack with matmul_pack_generic for every type. Defined in the portable file: the ISA
// files (compiled with wider instruction sets) must not instantiate shared inline templates,
// whose one linked copy would then need that ISA.
void matmul_fill_generic_packs(MatmulMicroKernel& k);

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
