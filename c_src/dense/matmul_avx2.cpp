// The matmul micro-kernel for AVX2 + FMA (compiled with -mavx2 -mfma; reached only when the CPU
// has them).
#include <immintrin.h>

#include "matmul_micro.h"
#include "matmul_pack_simd.h"

namespace nx_quant::dense::detail {

namespace {

struct Avx2 {
  using V = __m256d;
  static constexpr int W = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V zero() { return _mm256_setzero_pd(); }
  static V bcast(double x) { return _mm256_set1_pd(x); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};

}  // namespace

MatmulMicroKernel matmul_micro_avx2() {
  static const MatmulMicroKernel kernel = [] {
    MatmulMicroKernel k;
    k.mr = 4;
    k.nr = 2 * Avx2::W;
    k.tile = &matmul_micro_dispatch<Avx2, 4, 2>;
    install_simd_packs(k);
    return k;
  }();
  return kernel;
}

}  // namespace nx_quant::dense::detail
