// The AVX2 int8 GEMV of the E2M1 modes (gemv_x86.h): vpmaddubsw + vpmaddwd, or AVX-VNNI.
#include "microscaled/int8/gemv_x86.h"
#include "x86/avx2/dpbusd_vex.h"

namespace nx_quant::microscaled::int8 {

namespace {

// u <= 24 and |xq| <= 127: a vpmaddubsw pair is at most 6096, four of them 24384 < 2^15, so the
// int16 sums of the 4 runs never saturate.
struct MaddubsDot {
  static NXQ_ALWAYS_INLINE inline __m256i dot4(const __m256i* u, const int8_t* xq) {
    __m256i s16 = _mm256_setzero_si256();
    NXQ_UNROLL
    for (int run = 0; run < 4; ++run) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * run));
      s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(u[run], xv));
    }
    return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
  }
};

struct VexVnniDot {
  static NXQ_ALWAYS_INLINE inline __m256i dot4(const __m256i* u, const int8_t* xq) {
    __m256i acc = _mm256_setzero_si256();
    NXQ_UNROLL
    for (int run = 0; run < 4; ++run) {
      acc = avx2::dpbusd_vex(acc, u[run],
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * run)));
    }
    return acc;
  }
};

}  // namespace

void gemv_avx2(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
               size_t n_end, void* out, bool vnni) {
  if (vnni) {
    gemv<VexVnniDot>(x, w, out_dtype, n_begin, n_end, out);
  } else {
    gemv<MaddubsDot>(x, w, out_dtype, n_begin, n_end, out);
  }
}

}  // namespace nx_quant::microscaled::int8
