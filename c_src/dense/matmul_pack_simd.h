// SIMD packing of f32 / bf16 / f16 operands into the matmul's double panels (private; included
// only by matmul_avx2.cpp and matmul_avx512.cpp, inside their own anonymous namespace users).
//
// Two layouts are vectorized, the others use the portable packing: lanes contiguous
// (lane_stride 1: a row-major b, n consecutive) and k contiguous (k_stride 1: a b read along
// its rows, like the keys of q . k^T), the latter by 8 x 8 transposes. Every conversion is
// exact (f16/bf16 -> f32 -> double), so the panels hold the same values as the portable ones.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "matmul_micro.h"

namespace nx_quant::dense::detail {
namespace {

enum class Narrow { F32, BF16, F16 };

template <Narrow N>
inline __m256 load8(const void* data, int64_t i) {
  if constexpr (N == Narrow::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(data) + i);
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(data) + i));
    if constexpr (N == Narrow::F16)
      return _mm256_cvtph_ps(h);
    else
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <Narrow N>
constexpr int64_t narrow_size() {
  return N == Narrow::F32 ? 4 : 2;
}

template <Narrow N>
inline double load1(const void* data, int64_t i) {
  if constexpr (N == Narrow::F32) {
    return static_cast<const float*>(data)[i];
  } else {
    const uint16_t h = static_cast<const uint16_t*>(data)[i];
    if constexpr (N == Narrow::F16) return _cvtsh_ss(h);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
}

// Stores 8 floats as 8 doubles.
inline void store8(double* p, __m256 v) {
#if defined(__AVX512F__)
  _mm512_storeu_pd(p, _mm512_cvtps_pd(v));
#else
  _mm256_storeu_pd(p, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  _mm256_storeu_pd(p + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
#endif
}

// c[j] lane i = r[i] lane j.
inline void transpose8(const __m256 r[8], __m256 c[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  c[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  c[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  c[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  c[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  c[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  c[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  c[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  c[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// The portable packing of each narrow type, for the layouts not vectorized here.
inline MatmulPackFn& fallback_pack(Narrow n) {
  static MatmulPackFn table[3] = {};
  return table[static_cast<int>(n)];
}

template <Narrow N>
void pack_simd(double* panel, int width, const void* data, int64_t base, int64_t lane_stride,
               int64_t k_stride, int64_t lanes, int64_t kc) {
  if (lane_stride == 1) {
    for (int64_t kk = 0; kk < kc; ++kk) {
      double* dst = panel + kk * width;
      const int64_t src = base + kk * k_stride;
      int64_t l = 0;
      for (; l + 8 <= lanes; l += 8) store8(dst + l, load8<N>(data, src + l));
      for (; l < lanes; ++l) dst[l] = load1<N>(data, src + l);
      for (; l < width; ++l) dst[l] = 0.0;
    }
    return;
  }
  if (k_stride == 1 && lanes >= 8) {
    int64_t l0 = 0;
    for (; l0 + 8 <= lanes; l0 += 8) {
      int64_t kk = 0;
      for (; kk + 8 <= kc; kk += 8) {
        __m256 r[8], c[8];
        for (int i = 0; i < 8; ++i) r[i] = load8<N>(data, base + (l0 + i) * lane_stride + kk);
        transpose8(r, c);
        for (int j = 0; j < 8; ++j) store8(panel + (kk + j) * width + l0, c[j]);
      }
      for (; kk < kc; ++kk)
        for (int64_t i = 0; i < 8; ++i)
          panel[kk * width + l0 + i] = load1<N>(data, base + (l0 + i) * lane_stride + kk);
    }
    for (int64_t kk = 0; kk < kc; ++kk) {
      for (int64_t l = l0; l < lanes; ++l)
        panel[kk * width + l] = load1<N>(data, base + l * lane_stride + kk);
      for (int64_t l = lanes; l < width; ++l) panel[kk * width + l] = 0.0;
    }
    return;
  }
  fallback_pack(N)(panel, width, data, base, lane_stride, k_stride, lanes, kc);
}

// --- few rows: b read in place --------------------------------------------------------------

// 8 doubles.
#if defined(__AVX512F__)
struct D8 {
  __m512d v;
};
inline D8 d8_zero() {
  return {_mm512_setzero_pd()};
}
inline D8 d8_bcast(double x) {
  return {_mm512_set1_pd(x)};
}
inline D8 d8_from(__m256 f) {
  return {_mm512_cvtps_pd(f)};
}
inline D8 d8_load(const double* p) {
  return {_mm512_loadu_pd(p)};
}
inline void d8_store(double* p, D8 x) {
  _mm512_storeu_pd(p, x.v);
}
template <bool kFma>
inline D8 d8_madd(D8 a, D8 b, D8 c) {  // a * b + c
  if constexpr (kFma)
    return {_mm512_fmadd_pd(a.v, b.v, c.v)};
  else
    return {_mm512_add_pd(_mm512_mul_pd(a.v, b.v), c.v)};
}
inline constexpr int kSmallGroups = 4;
#else
struct D8 {
  __m256d lo, hi;
};
inline D8 d8_zero() {
  return {_mm256_setzero_pd(), _mm256_setzero_pd()};
}
inline D8 d8_bcast(double x) {
  return {_mm256_set1_pd(x), _mm256_set1_pd(x)};
}
inline D8 d8_from(__m256 f) {
  return {_mm256_cvtps_pd(_mm256_castps256_ps128(f)), _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1))};
}
inline D8 d8_load(const double* p) {
  return {_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)};
}
inline void d8_store(double* p, D8 x) {
  _mm256_storeu_pd(p, x.lo);
  _mm256_storeu_pd(p + 4, x.hi);
}
template <bool kFma>
inline D8 d8_madd(D8 a, D8 b, D8 c) {
  if constexpr (kFma)
    return {_mm256_fmadd_pd(a.lo, b.lo, c.lo), _mm256_fmadd_pd(a.hi, b.hi, c.hi)};
  else
    return {_mm256_add_pd(_mm256_mul_pd(a.lo, b.lo), c.lo),
            _mm256_add_pd(_mm256_mul_pd(a.hi, b.hi), c.hi)};
}
inline constexpr int kSmallGroups = 2;
#endif

// b's columns contiguous (s_col == 1, the values of p . v): blocks of 8 * G columns (G D8 per
// row of acc, M * G accumulators in registers) stream k rows of b; then 8-column blocks, then
// single columns. Each output is still one sequential chain over k. (Keeping the accumulators in
// registers, instead of loading and storing acc for every k, halved the time of a decode step's
// p . v.)
template <Narrow N, int M, bool kFma>
void small_m_rows(const double* a, const void* b, int64_t b_base, int64_t s_row, int64_t n,
                  int64_t k, double* acc) {
  int64_t j0 = 0;
  auto block = [&](auto groups_c) {
    constexpr int G = decltype(groups_c)::value;
    D8 c[M][G];
    for (int i = 0; i < M; ++i)
      for (int g = 0; g < G; ++g) c[i][g] = d8_zero();
    for (int64_t kk = 0; kk < k; ++kk) {
      const int64_t row = b_base + kk * s_row + j0;
      D8 bv[G];
      for (int g = 0; g < G; ++g) bv[g] = d8_from(load8<N>(b, row + 8 * g));
      for (int i = 0; i < M; ++i) {
        const D8 av = d8_bcast(a[i * k + kk]);
        for (int g = 0; g < G; ++g) c[i][g] = d8_madd<kFma>(av, bv[g], c[i][g]);
      }
    }
    for (int i = 0; i < M; ++i)
      for (int g = 0; g < G; ++g) d8_store(acc + i * n + j0 + 8 * g, c[i][g]);
    j0 += 8 * G;
  };
  constexpr int kRowGroups = kSmallGroups >= 4 ? 4 : 1;  // AVX2: 16 registers
  while (j0 + 8 * kRowGroups <= n) block(std::integral_constant<int, kRowGroups>{});
  while (j0 + 8 <= n) block(std::integral_constant<int, 1>{});
  for (; j0 < n; ++j0)
    for (int i = 0; i < M; ++i) {
      double s = 0.0;
      for (int64_t kk = 0; kk < k; ++kk)
        s = a[i * k + kk] * load1<N>(b, b_base + kk * s_row + j0) + s;
      acc[i * n + j0] = s;
    }
}

// b's rows contiguous (s_row == 1, the keys of q . k^T): groups of 8 columns are read as 8
// rows of 8 k and transposed; each accumulator lane is one output's chain.
template <Narrow N, int M, bool kFma>
void small_m_cols(const double* a, const void* b, int64_t b_base, int64_t s_col, int64_t n,
                  int64_t k, double* acc) {
  constexpr int G = kSmallGroups;
  const int64_t k8 = k / 8 * 8;
  int64_t j0 = 0;
  auto block = [&](auto groups_c) {
    constexpr int NG = decltype(groups_c)::value;
    D8 c[M][NG];
    for (int i = 0; i < M; ++i)
      for (int g = 0; g < NG; ++g) c[i][g] = d8_zero();
    for (int64_t kk = 0; kk < k8; kk += 8) {
      // The next block's rows, a cache line (16 f32) of each per 16 k: many short strided
      // streams that the hardware prefetchers pick up late (1.5x faster from memory).
      if ((kk & 8) == 0)
        for (int x = 0; x < 8 * NG; ++x)
          _mm_prefetch(static_cast<const char*>(b) +
                           (b_base + (j0 + 8 * NG + x) * s_col + kk) * narrow_size<N>(),
                       _MM_HINT_T0);
      __m256 t[NG][8];
      for (int g = 0; g < NG; ++g) {
        __m256 r[8];
        for (int x = 0; x < 8; ++x) r[x] = load8<N>(b, b_base + (j0 + 8 * g + x) * s_col + kk);
        transpose8(r, t[g]);
      }
      for (int step = 0; step < 8; ++step)
        for (int i = 0; i < M; ++i) {
          const D8 av = d8_bcast(a[i * k + kk + step]);
          for (int g = 0; g < NG; ++g) c[i][g] = d8_madd<kFma>(av, d8_from(t[g][step]), c[i][g]);
        }
    }
    for (int64_t kk = k8; kk < k; ++kk)
      for (int g = 0; g < NG; ++g) {
        alignas(32) float col[8];
        for (int x = 0; x < 8; ++x)
          col[x] = static_cast<float>(load1<N>(b, b_base + (j0 + 8 * g + x) * s_col + kk));
        const D8 bv = d8_from(_mm256_load_ps(col));
        for (int i = 0; i < M; ++i) c[i][g] = d8_madd<kFma>(d8_bcast(a[i * k + kk]), bv, c[i][g]);
      }
    for (int i = 0; i < M; ++i)
      for (int g = 0; g < NG; ++g) d8_store(acc + i * n + j0 + 8 * g, c[i][g]);
    j0 += 8 * NG;
  };
  while (j0 + 8 * G <= n) block(std::integral_constant<int, G>{});
  while (j0 + 8 <= n) block(std::integral_constant<int, 1>{});
  for (; j0 < n; ++j0)
    for (int i = 0; i < M; ++i) {
      double s = 0.0;
      for (int64_t kk = 0; kk < k; ++kk)
        s = a[i * k + kk] * load1<N>(b, b_base + j0 * s_col + kk) + s;
      acc[i * n + j0] = s;
    }
}

template <Narrow N>
bool small_m_narrow(int m, const double* a, const void* b, int64_t b_base, int64_t s_row,
                    int64_t s_col, int64_t n, int64_t k, bool fma, double* acc) {
  const bool rows = s_col == 1, cols = s_row == 1;
  if (!rows && !cols) return false;
  auto run = [&](auto m_c, auto fma_c) {
    constexpr int M = decltype(m_c)::value;
    constexpr bool F = decltype(fma_c)::value;
    if (rows)
      small_m_rows<N, M, F>(a, b, b_base, s_row, n, k, acc);
    else
      small_m_cols<N, M, F>(a, b, b_base, s_col, n, k, acc);
  };
  auto with_fma = [&](auto m_c) {
    if (fma)
      run(m_c, std::true_type{});
    else
      run(m_c, std::false_type{});
  };
  switch (m) {
    case 1:
      with_fma(std::integral_constant<int, 1>{});
      return true;
    case 2:
      with_fma(std::integral_constant<int, 2>{});
      return true;
    case 3:
      with_fma(std::integral_constant<int, 3>{});
      return true;
    case 4:
      with_fma(std::integral_constant<int, 4>{});
      return true;
    default:
      return false;
  }
}

bool small_m_simd(int m, const double* a, Type b_type, const void* b, int64_t b_base, int64_t s_row,
                  int64_t s_col, int64_t n, int64_t k, bool fma, double* acc) {
  switch (b_type) {
    case Type::F32:
      return small_m_narrow<Narrow::F32>(m, a, b, b_base, s_row, s_col, n, k, fma, acc);
    case Type::BF16:
      return small_m_narrow<Narrow::BF16>(m, a, b, b_base, s_row, s_col, n, k, fma, acc);
    case Type::F16:
      return small_m_narrow<Narrow::F16>(m, a, b, b_base, s_row, s_col, n, k, fma, acc);
    default:
      return false;
  }
}

// Keeps the portable packing as the fallback and installs the SIMD ones.
inline void install_simd_packs(MatmulMicroKernel& k) {
  matmul_fill_generic_packs(k);
  fallback_pack(Narrow::F32) = k.pack[static_cast<int>(Type::F32)];
  fallback_pack(Narrow::BF16) = k.pack[static_cast<int>(Type::BF16)];
  fallback_pack(Narrow::F16) = k.pack[static_cast<int>(Type::F16)];
  k.pack[static_cast<int>(Type::F32)] = &pack_simd<Narrow::F32>;
  k.pack[static_cast<int>(Type::BF16)] = &pack_simd<Narrow::BF16>;
  k.pack[static_cast<int>(Type::F16)] = &pack_simd<Narrow::F16>;
  k.small_m = &small_m_simd;
}

}  // namespace
}  // namespace nx_quant::dense::detail
