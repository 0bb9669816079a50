// The matmul micro-kernel without SIMD intrinsics (GCC vector extensions: SSE2 / NEON lanes).
#include <cstring>

#include "matmul_micro.h"

namespace nx_quant::dense::detail {

namespace {

struct Portable {
  typedef double V __attribute__((vector_size(16)));
  static constexpr int W = 2;
  static V load(const double* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(double* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static V zero() { return V{0.0, 0.0}; }
  static V bcast(double x) { return V{x, x}; }
  static V add(V a, V b) { return a + b; }
  static V mul(V a, V b) { return a * b; }
  // Products are exact whenever fma is requested, so a separate multiply and add is the same.
  static V fma(V a, V b, V c) { return a * b + c; }
};

}  // namespace

void matmul_fill_generic_packs(MatmulMicroKernel& k) {
  for (int t = 0; t < 12; ++t)
    k.pack[t] = with_type(static_cast<Type>(t), [](auto c) -> MatmulPackFn {
      return &matmul_pack_generic<decltype(c)::value>;
    });
}

MatmulMicroKernel matmul_micro_portable() {
  MatmulMicroKernel k;
  k.mr = 4;
  k.nr = 2 * Portable::W;
  k.tile = &matmul_micro_dispatch<Portable, 4, 2>;
  matmul_fill_generic_packs(k);
  return k;
}

}  // namespace nx_quant::dense::detail
