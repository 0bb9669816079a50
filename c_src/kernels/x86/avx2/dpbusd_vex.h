// AVX-VNNI's vpdpbusd (VEX-encoded: the EVEX form needs AVX512_VNNI) as inline assembly, so that
// a file using it needs no compiler flag beyond AVX2; call it only where the CPU has AVX-VNNI.
// Include only from *_avx2.cpp files.
#pragma once

#include <immintrin.h>

#include "unroll.h"

namespace nx_quant::avx2 {

// acc + the sum of the 4 byte products w (unsigned) x x (signed) in each int32 lane.
NXQ_ALWAYS_INLINE inline __m256i dpbusd_vex(__m256i acc, __m256i w, __m256i x) {
  asm("%{vex%} vpdpbusd %[x], %[w], %[acc]" : [acc] "+x"(acc) : [w] "x"(w), [x] "x"(x));
  return acc;
}

}  // namespace nx_quant::avx2
