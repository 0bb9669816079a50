// The AVX-512 int8 GEMV of the E2M1 modes (gemv_x86.h): AVX-512 VNNI's vpdpbusd on 256-bit
// vectors (a step is 64 bytes of W; the GEMV is bound by reading W, not by the dot's width).
#include "microscaled/int8/gemv_x86.h"

namespace nx_quant::microscaled::int8 {

namespace {

struct EvexVnniDot {
  static NXQ_ALWAYS_INLINE inline __m256i dot4(const __m256i* u, const int8_t* xq) {
    __m256i acc = _mm256_setzero_si256();
    NXQ_UNROLL
    for (int run = 0; run < 4; ++run) {
      acc = _mm256_dpbusd_epi32(
          acc, u[run], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * run)));
    }
    return acc;
  }
};

}  // namespace

void gemv_avx512(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                 size_t n_end, void* out) {
  gemv<EvexVnniDot>(x, w, out_dtype, n_begin, n_end, out);
}

}  // namespace nx_quant::microscaled::int8
