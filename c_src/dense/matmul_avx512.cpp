// The matmul micro-kernel for AVX-512 (compiled with -mavx512f & co; reached only when the CPU
// has them).
#include <immintrin.h>

#include "matmul_micro.h"
#include "matmul_pack_simd.h"

namespace nx_quant::dense::detail {

namespace {

struct Avx512 {
  using V = __m512d;
  static constexpr int W = 8;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V zero() { return _mm512_setzero_pd(); }
  static V bcast(double x) { return _mm512_set1_pd(x); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};

}  // namespace

MatmulMicroKernel matmul_micro_avx512() {
  static const MatmulMicroKernel kernel = [] {
    MatmulMicroKernel k;
    k.mr = 4;
    k.nr = 4 * Avx512::W;
    k.tile = &matmul_micro_dispatch<Avx512, 4, 4>;
    install_simd_packs(k);
    return k;
  }();
  return kernel;
}

}  // namespace nx_quant::dense::detail
