// Loop unrolling and inlining hints for the SIMD kernels.
//
// GCC keeps an array of vector registers (accumulators, unpacked weights) in registers only if
// every loop indexing it is fully unrolled before register allocation, and only if the helper
// that receives it is inlined; otherwise it spills the array to the stack on every iteration.
// Loops with compile-time trip counts over such arrays carry NXQ_UNROLL.
#pragma once

#if defined(__clang__)
#define NXQ_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define NXQ_UNROLL _Pragma("GCC unroll 16")
#else
#define NXQ_UNROLL
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NXQ_ALWAYS_INLINE __attribute__((always_inline))
#else
#define NXQ_ALWAYS_INLINE
#endif
