// AVX2 + F16C element-wise runs (elementwise_simd.h): same-type f32 / bf16 / f16 arithmetic
// and f16 <-> f32 conversion. Self-contained (no inline helpers shared with the portable
// translation units, which the linker could otherwise merge into AVX2 code).
#include <immintrin.h>

#include <cstring>

#include "elementwise_simd.h"

namespace nx_quant::dense::detail {
namespace {

enum class Kind { F32, BF16, F16 };

template <Kind K>
inline __m256 load8(const void* p) {
  if constexpr (K == Kind::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(p));
  } else {
    const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
    if constexpr (K == Kind::BF16)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else
      return _mm256_cvtph_ps(h);
  }
}

template <Kind K>
inline __m256 broadcast1(const void* p) {
  if constexpr (K == Kind::F32) {
    return _mm256_set1_ps(*static_cast<const float*>(p));
  } else {
    uint16_t h;
    std::memcpy(&h, p, 2);
    alignas(16) uint16_t lanes[8] = {h, h, h, h, h, h, h, h};
    return load8<K>(lanes);
  }
}

// NaN -> f32's canonical 0x7FC00000, which narrows to bf16's 0x7FC0 and f16's 0x7E00.
inline __m256 canonical(__m256 v) {
  const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
  return _mm256_blendv_ps(v, nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

template <Kind K>
inline void store8(void* p, __m256 v) {
  v = canonical(v);
  if constexpr (K == Kind::F32) {
    _mm256_storeu_ps(static_cast<float*>(p), v);
  } else if constexpr (K == Kind::BF16) {
    const __m256i t = _mm256_srli_epi32(_mm256_castps_si256(v), 16);  // truncation
    const __m128i packed =
        _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    _mm_storeu_si128(static_cast<__m128i*>(p), packed);
  } else {
    _mm_storeu_si128(static_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// binary_ops.h's binary_float in f32, eight lanes.
template <BinaryOp Op>
inline __m256 apply(__m256 a, __m256 b) {
  if constexpr (Op == BinaryOp::Add) {
    return _mm256_add_ps(a, b);
  } else if constexpr (Op == BinaryOp::Subtract) {
    return _mm256_sub_ps(a, b);
  } else if constexpr (Op == BinaryOp::Multiply) {
    return _mm256_mul_ps(a, b);
  } else if constexpr (Op == BinaryOp::Divide) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 inf = _mm256_castsi256_ps(_mm256_set1_epi32(0x7F800000));
    const __m256 zero = _mm256_setzero_ps();
    __m256 r = _mm256_div_ps(a, b);
    // x / +-Inf: +0.0 (r + 0 turns -0.0 into +0.0, keeps NaN)
    const __m256 b_inf = _mm256_cmp_ps(_mm256_and_ps(b, abs_mask), inf, _CMP_EQ_OQ);
    r = _mm256_blendv_ps(r, _mm256_add_ps(r, zero), b_inf);
    // +-Inf / +-0.0: +-Inf
    const __m256 a_inf = _mm256_cmp_ps(_mm256_and_ps(a, abs_mask), inf, _CMP_EQ_OQ);
    const __m256 b_zero = _mm256_cmp_ps(b, zero, _CMP_EQ_OQ);
    return _mm256_blendv_ps(r, a, _mm256_and_ps(a_inf, b_zero));
  } else if constexpr (Op == BinaryOp::Max) {
    const __m256 r = _mm256_blendv_ps(a, b, _mm256_cmp_ps(a, b, _CMP_LT_OQ));  // a < b ? b : a
    const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
    return _mm256_blendv_ps(r, nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
  } else {
    static_assert(Op == BinaryOp::Min, "unsupported op");
    const __m256 r = _mm256_blendv_ps(a, b, _mm256_cmp_ps(b, a, _CMP_LT_OQ));  // b < a ? b : a
    const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
    return _mm256_blendv_ps(r, nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
  }
}

template <Kind K>
constexpr int64_t kSize = K == Kind::F32 ? 4 : 2;

template <BinaryOp Op, Kind K>
void binary_run(const void* a, int64_t sa, const void* b, int64_t sb, void* out, int64_t n) {
  const auto* pa = static_cast<const unsigned char*>(a);
  const auto* pb = static_cast<const unsigned char*>(b);
  auto* po = static_cast<unsigned char*>(out);
  constexpr int64_t s = kSize<K>;
  const __m256 va_fixed = sa == 0 ? broadcast1<K>(pa) : _mm256_setzero_ps();
  const __m256 vb_fixed = sb == 0 ? broadcast1<K>(pb) : _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = sa == 0 ? va_fixed : load8<K>(pa + i * s);
    const __m256 y = sb == 0 ? vb_fixed : load8<K>(pb + i * s);
    store8<K>(po + i * s, apply<Op>(x, y));
  }
  if (i < n) {  // the tail through a padded block
    alignas(32) unsigned char ta[32] = {}, tb[32] = {}, to[32];
    const int64_t left = n - i;
    if (sa != 0) std::memcpy(ta, pa + i * s, static_cast<size_t>(left * s));
    if (sb != 0) std::memcpy(tb, pb + i * s, static_cast<size_t>(left * s));
    const __m256 x = sa == 0 ? va_fixed : load8<K>(ta);
    const __m256 y = sb == 0 ? vb_fixed : load8<K>(tb);
    store8<K>(to, apply<Op>(x, y));
    std::memcpy(po + i * s, to, static_cast<size_t>(left * s));
  }
}

template <Kind K>
SimdBinaryRun run_for(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add:
      return &binary_run<BinaryOp::Add, K>;
    case BinaryOp::Subtract:
      return &binary_run<BinaryOp::Subtract, K>;
    case BinaryOp::Multiply:
      return &binary_run<BinaryOp::Multiply, K>;
    case BinaryOp::Divide:
      return &binary_run<BinaryOp::Divide, K>;
    case BinaryOp::Max:
      return &binary_run<BinaryOp::Max, K>;
    case BinaryOp::Min:
      return &binary_run<BinaryOp::Min, K>;
    default:
      return nullptr;
  }
}

}  // namespace

SimdBinaryRun avx2_binary_run(BinaryOp op, Type t) {
  switch (t) {
    case Type::F32:
      return run_for<Kind::F32>(op);
    case Type::BF16:
      return run_for<Kind::BF16>(op);
    case Type::F16:
      return run_for<Kind::F16>(op);
    default:
      return nullptr;
  }
}

void avx2_f16_to_f32(const void* src, void* dst, int64_t n) {
  const auto* s = static_cast<const uint16_t*>(src);
  auto* d = static_cast<float*>(dst);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, canonical(load8<Kind::F16>(s + i)));
  if (i < n) {
    alignas(32) uint16_t t[8] = {};
    alignas(32) float r[8];
    std::memcpy(t, s + i, static_cast<size_t>(n - i) * 2);
    _mm256_store_ps(r, canonical(load8<Kind::F16>(t)));
    std::memcpy(d + i, r, static_cast<size_t>(n - i) * 4);
  }
}

void avx2_f32_to_f16(const void* src, void* dst, int64_t n) {
  const auto* s = static_cast<const float*>(src);
  auto* d = static_cast<uint16_t*>(dst);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8<Kind::F16>(d + i, _mm256_loadu_ps(s + i));
  if (i < n) {
    alignas(32) float t[8] = {};
    alignas(32) uint16_t r[8];
    std::memcpy(t, s + i, static_cast<size_t>(n - i) * 4);
    store8<Kind::F16>(r, _mm256_load_ps(t));
    std::memcpy(d + i, r, static_cast<size_t>(n - i) * 2);
  }
}

}  // namespace nx_quant::dense::detail

// ---- exp in double, 4 lanes (for outputs narrower than f64) ---------------------------------

namespace nx_quant::dense::detail {
namespace {

// exp(x) for x in [-708, 709]: x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2, the
// reduction in two parts (ln2_hi has 11 trailing zero bits, so n * ln2_hi is exact for every
// such n); exp(r) by its Taylor series to degree 13 (truncation error < 5e-18) in Horner form
// with FMAs; then the exponent n added to the result's bits. About 2 ulp of double from the
// exact value, the C library's within 1: their f32/bf16/f16 roundings (29+ bits coarser) can
// differ only when the exact value is within a few double ulps of a rounding boundary, and then
// by 1 ulp.
inline __m256d exp4(__m256d x) {
  const __m256d log2e = _mm256_set1_pd(1.4426950408889634);
  const __m256d ln2_hi = _mm256_set1_pd(6.93147180369123816490e-01);
  const __m256d ln2_lo = _mm256_set1_pd(1.90821492927058770002e-10);
  const __m256d n =
      _mm256_round_pd(_mm256_mul_pd(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(n, ln2_hi, x);
  r = _mm256_fnmadd_pd(n, ln2_lo, r);
  // 1/k! for k = 13 .. 0
  static constexpr double kInvFact[14] = {1.6059043836821613e-10,
                                          2.08767569878681e-09,
                                          2.505210838544172e-08,
                                          2.755731922398589e-07,
                                          2.7557319223985893e-06,
                                          2.48015873015873e-05,
                                          1.984126984126984e-04,
                                          1.388888888888889e-03,
                                          8.333333333333333e-03,
                                          4.1666666666666664e-02,
                                          1.6666666666666666e-01,
                                          0.5,
                                          1.0,
                                          1.0};
  __m256d p = _mm256_set1_pd(kInvFact[0]);
  for (int i = 1; i < 14; ++i) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(kInvFact[i]));
  // 2^n as a double: (n + 1023) << 52, n in [-1022, 1023]
  const __m128i ni = _mm256_cvtpd_epi32(n);
  const __m256i bits =
      _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(ni), _mm256_set1_epi64x(1023)), 52);
  return _mm256_mul_pd(p, _mm256_castsi256_pd(bits));
}

// exp(x), or sigmoid's 1 / (exp(-x) + 1), of 4 doubles; NaN in, NaN out.
inline __m256d exp_like4(__m256d x, bool sigmoid) {
  const __m256d lo = _mm256_set1_pd(-708.0), hi = _mm256_set1_pd(709.0);
  const __m256d one = _mm256_set1_pd(1.0);
  const __m256d nan = _mm256_cmp_pd(x, x, _CMP_UNORD_Q);
  if (sigmoid) x = _mm256_sub_pd(_mm256_setzero_pd(), x);
  // Outside [-708, 709] every narrow result is already saturated (0 or Inf; sigmoid 1 or 0):
  // clamping keeps 2^n a normal double.
  __m256d e = exp4(_mm256_min_pd(_mm256_max_pd(x, lo), hi));
  if (sigmoid) e = _mm256_div_pd(one, _mm256_add_pd(e, one));
  return _mm256_blendv_pd(e, x, nan);
}

}  // namespace

void avx2_exp_f32(const float* in, float* out, int64_t n, bool sigmoid) {
  // the canonical NaN, as the f32 store of the buffered path writes it
  const __m128 canonical = _mm_castsi128_ps(_mm_set1_epi32(0x7FC00000));
  auto four = [&](__m128 x) {
    const __m128 r = _mm256_cvtpd_ps(exp_like4(_mm256_cvtps_pd(x), sigmoid));  // RNE
    return _mm_blendv_ps(r, canonical, _mm_cmpunord_ps(r, r));
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(out + i, four(_mm_loadu_ps(in + i)));
  if (i < n) {
    alignas(16) float tail[4] = {0, 0, 0, 0};
    std::memcpy(tail, in + i, static_cast<size_t>(n - i) * sizeof(float));
    _mm_store_ps(tail, four(_mm_load_ps(tail)));
    std::memcpy(out + i, tail, static_cast<size_t>(n - i) * sizeof(float));
  }
}

void avx2_exp_doubles(double* v, int64_t n, bool sigmoid) {
  auto one_vector = [&](__m256d x) { return exp_like4(x, sigmoid); };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(v + i, one_vector(_mm256_loadu_pd(v + i)));
  if (i < n) {
    alignas(32) double tail[4] = {0, 0, 0, 0};
    std::memcpy(tail, v + i, static_cast<size_t>(n - i) * sizeof(double));
    _mm256_store_pd(tail, one_vector(_mm256_load_pd(tail)));
    std::memcpy(v + i, tail, static_cast<size_t>(n - i) * sizeof(double));
  }
}

}  // namespace nx_quant::dense::detail
