// AVX-512 microscaled quantize (mxfp4, mxfp8, nvfp4): the fast quantizer of
// microscaled/quantize_fast.h with 16 lanes. Blocks of 16 groups: their values as f32 (bf16
// shifted, f16 through vcvtph2ps), each max|w| as the unsigned maximum of the sign-cleared bit
// patterns, then fast::group_scale's steps for the 16 groups at once (the E8M0 thresholds or the
// E4M3 values gathered), any group outside the fast domain through the reference; then each
// element times 2^-e (mx) or divided by the E4M3 scale (nvfp4), rounded to the dtype (bf16 by
// integer round-to-nearest-even, which keeps subnormals, unlike vcvtneps2bf16; f16 by
// vcvtps2ph) and encoded lane by lane exactly as fast::e2m1_code / e4m3_from_f32 do. A row's
// last groups (fewer than 16) go one by one through the scalar fast::group_scale.
#include <immintrin.h>

#include "gemv_loops.h"
#include "microscaled/quantize_fast.h"

namespace nx_quant::microscaled::avx512 {

namespace {

template <DType T>
inline __m512 load16(const void* data, size_t i) {
  if constexpr (T == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(data) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(data) + i));
    if constexpr (T == DType::F16) {
      return _mm512_cvtph_ps(h);
    } else {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
}

template <DType T>
inline __m512 round16(__m512 v) {
  if constexpr (T == DType::F32) {
    return v;
  } else if constexpr (T == DType::F16) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(int(0xFFFF0000u))));
  }
}

inline __m512i abs_bits(__m512 v) {
  return _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
}

// fast::e2m1_code in every lane (|q| <= kFastQMax).
inline __m512i e2m1_codes(__m512 q) {
  const __m512i lut = _mm512_set_epi32(7, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 2, 1, 1);
  const __m512i u = _mm512_castps_si512(q);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
  __m512i index = _mm512_sub_epi32(_mm512_srai_epi32(_mm512_sub_epi32(a, _mm512_set1_epi32(1)), 21),
                                   _mm512_set1_epi32(504));
  index = _mm512_min_epi32(_mm512_max_epi32(index, _mm512_setzero_si512()), _mm512_set1_epi32(15));
  const __m512i code =
      _mm512_or_si512(_mm512_permutexvar_epi32(index, lut),
                      _mm512_and_si512(_mm512_srli_epi32(u, 28), _mm512_set1_epi32(8)));
  return _mm512_maskz_mov_epi32(
      _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(static_cast<int>(fast::kQuarterBits))), code);
}

// e4m3_from_f32 (codec.h) in every lane.
inline __m512i e4m3_codes(__m512 q) {
  const __m512i u = _mm512_castps_si512(q);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  const __m512i bits = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
  const __mmask16 big = _mm512_cmpge_epu32_mask(bits, _mm512_set1_epi32(0x43E00000));
  const __mmask16 small = _mm512_cmplt_epu32_mask(bits, _mm512_set1_epi32(0x3C800000));
  const __m512i sub = _mm512_sub_epi32(
      _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(16384.0f))),
      _mm512_set1_epi32(0x46800000));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 20), _mm512_set1_epi32(1));
  const __m512i normal =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_sub_epi32(bits, _mm512_set1_epi32(120 << 23)),
                                         _mm512_add_epi32(_mm512_set1_epi32(0x7FFFF), odd)),
                        20);
  __m512i magnitude = _mm512_mask_blend_epi32(small, normal, sub);
  magnitude = _mm512_mask_blend_epi32(big, magnitude, _mm512_set1_epi32(0x7E));
  return _mm512_or_si512(_mm512_and_si512(magnitude, _mm512_set1_epi32(0xFF)), sign);
}

// 32 E2M1 codes (dword lanes) -> 16 bytes, element 2j in the low nibble of byte j.
inline __m128i pack_nibbles(__m512i c0, __m512i c1) {
  const __m256i bytes = _mm256_set_m128i(_mm512_cvtepi32_epi8(c1), _mm512_cvtepi32_epi8(c0));
  const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x1001));
  return _mm256_cvtepi16_epi8(pairs);
}

// One mx group's 32 elements times factor (2^-e), rounded, encoded and stored.
template <DType T>
inline void encode_mx(__m512 v0, __m512 v1, __m512 factor, int bits, uint32_t* words) {
  const __m512 q0 = round16<T>(_mm512_mul_ps(v0, factor));
  const __m512 q1 = round16<T>(_mm512_mul_ps(v1, factor));
  if (bits == 4) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(words),
                     pack_nibbles(e2m1_codes(q0), e2m1_codes(q1)));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(words), _mm512_cvtepi32_epi8(e4m3_codes(q0)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(words + 4), _mm512_cvtepi32_epi8(e4m3_codes(q1)));
  }
}

// 16 mx groups at once (512 values from `base`): fast::group_scale<T> lane by lane (its
// bisected thresholds gathered by exponent), then each group encoded, or the reference's.
template <DType T>
void mx_block16(const fast::Context& c, const void* dense, size_t cols, const QuantSpec& spec,
                size_t r, size_t g0, uint32_t* packed, uint8_t* scales) {
  const size_t base = r * cols + g0 * 32;
  const size_t groups = cols / 32;
  const size_t words_per_group = static_cast<size_t>(spec.bits);  // 32 * bits / 32
  alignas(64) uint32_t amax[16];
  for (int j = 0; j < 16; ++j) {
    const __m512 v0 = load16<T>(dense, base + 32 * j), v1 = load16<T>(dense, base + 32 * j + 16);
    amax[j] = _mm512_reduce_max_epu32(_mm512_max_epu32(abs_bits(v0), abs_bits(v1)));
  }
  const __m512i a = _mm512_load_si512(amax);
  const __mmask16 finite = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x7F800000));
  const __m512 scale = round16<T>(_mm512_div_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(c.maxval)));
  const __m512i sb = _mm512_castps_si512(scale);
  const __m512i exponent = _mm512_srli_epi32(sb, 23);
  const __m512i thr =
      _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), finite, exponent, c.thresholds, 4);
  const __mmask16 up =
      _mm512_cmpge_epu32_mask(_mm512_and_si512(sb, _mm512_set1_epi32(0x7FFFFF)), thr);
  const __mmask16 zero = _mm512_cmpeq_epi32_mask(sb, _mm512_setzero_si512());
  __m512i e = _mm512_sub_epi32(exponent, _mm512_set1_epi32(127));
  e = _mm512_mask_add_epi32(e, up, e, _mm512_set1_epi32(1));
  e = _mm512_mask_mov_epi32(e, zero, _mm512_setzero_si512());
  __mmask16 ok = finite & (zero | _mm512_cmpneq_epi32_mask(exponent, _mm512_setzero_si512()));
  ok &= _mm512_cmpge_epi32_mask(e, _mm512_set1_epi32(c.e_min)) &
        _mm512_cmple_epi32_mask(e, _mm512_set1_epi32(c.e_max));
  const __m512i factor_bits = _mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(127), e), 23);
  if (spec.bits == 4) {
    const __m512 qmax =
        round16<T>(_mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(factor_bits)));
    ok &= _mm512_cmp_ps_mask(qmax, _mm512_set1_ps(fast::kFastQMax), _CMP_LE_OQ);
  }
  alignas(64) float factor[16];
  _mm512_store_si512(factor, factor_bits);
  _mm_mask_storeu_epi8(scales + r * groups + g0, ok,
                       _mm512_cvtepi32_epi8(_mm512_add_epi32(e, _mm512_set1_epi32(127))));
  for (int j = 0; j < 16; ++j) {
    if (!((ok >> j) & 1)) {
      fast::reference_group(dense, T, cols, spec, r, g0 + j, packed, scales);
      continue;
    }
    const __m512 v0 = load16<T>(dense, base + 32 * j), v1 = load16<T>(dense, base + 32 * j + 16);
    encode_mx<T>(v0, v1, _mm512_set1_ps(factor[j]), spec.bits,
                 packed + r * groups * words_per_group + (g0 + j) * words_per_group);
  }
}

// 16 nvfp4 groups at once (256 values from `base`), as mx_block16: fast::group_scale<T> lane by
// lane (the E4M3 scale byte by e4m3_codes, its value gathered from the table).
template <DType T>
void nv_block16(const fast::Context& c, const void* dense, size_t cols, const QuantSpec& spec,
                size_t r, size_t g0, uint32_t* packed, uint8_t* scales) {
  const size_t base = r * cols + g0 * 16;
  const size_t groups = cols / 16;
  alignas(64) uint32_t amax[16];
  for (int j = 0; j < 16; ++j) {
    amax[j] = _mm512_reduce_max_epu32(abs_bits(load16<T>(dense, base + 16 * j)));
  }
  const __m512i a = _mm512_load_si512(amax);
  const __m512 encode = _mm512_set1_ps(c.encode);
  const __mmask16 finite = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x7F800000));
  const __m512 scale = round16<T>(_mm512_div_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(6.0f)));
  const __m512i byte = e4m3_codes(_mm512_mul_ps(scale, encode));
  const __m512 divisor = _mm512_i32gather_ps(byte, c.e4m3, 4);
  const __mmask16 zero = _mm512_cmpeq_ps_mask(divisor, _mm512_setzero_ps());
  const __m512 qmax =
      _mm512_mul_ps(round16<T>(_mm512_div_ps(_mm512_castsi512_ps(a), divisor)), encode);
  const __mmask16 ok =
      finite & (zero | _mm512_cmp_ps_mask(qmax, _mm512_set1_ps(fast::kFastQMax), _CMP_LE_OQ));
  alignas(64) float div[16];
  _mm512_store_ps(div, divisor);
  _mm_mask_storeu_epi8(scales + r * groups + g0, ok, _mm512_cvtepi32_epi8(byte));
  for (int j = 0; j < 16; ++j) {
    uint32_t* words = packed + (r * groups + g0 + j) * 2;
    if (!((ok >> j) & 1)) {
      fast::reference_group(dense, T, cols, spec, r, g0 + j, packed, scales);
      continue;
    }
    if ((zero >> j) & 1) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(words), _mm_setzero_si128());
      continue;
    }
    const __m512 v = load16<T>(dense, base + 16 * j);
    const __m512 q = _mm512_mul_ps(round16<T>(_mm512_div_ps(v, _mm512_set1_ps(div[j]))), encode);
    const __m128i bytes = _mm512_cvtepi32_epi8(e2m1_codes(q));
    const __m128i pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x1001));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(words), _mm_cvtepi16_epi8(pairs));
  }
}

template <DType T>
void rows(const void* dense, size_t cols, const QuantSpec& spec, size_t row_begin, size_t row_end,
          uint32_t* packed, uint8_t* scales) {
  const fast::Context c(T, spec);
  const size_t gs = static_cast<size_t>(spec.group_size);
  const size_t groups = cols / gs;
  const size_t words_per_group = gs * static_cast<size_t>(spec.bits) / 32;
  const size_t words_per_row = groups * words_per_group;
  const bool fast_ok = c.fast();
  const __m512 encode = _mm512_set1_ps(c.encode);
  for (size_t r = row_begin; r < row_end; ++r) {
    size_t g = 0;
    if (spec.mode != QuantMode::Nvfp4) {
      for (; g + 16 <= groups; g += 16) mx_block16<T>(c, dense, cols, spec, r, g, packed, scales);
    } else if (fast_ok) {
      for (; g + 16 <= groups; g += 16) nv_block16<T>(c, dense, cols, spec, r, g, packed, scales);
    }
    for (; g < groups; ++g) {
      const size_t base = r * cols + g * gs;
      uint32_t* words = packed + r * words_per_row + g * words_per_group;
      fast::GroupScale s;
      if (spec.mode == QuantMode::Nvfp4) {
        const __m512 v = load16<T>(dense, base);
        if (!fast_ok || !fast::group_scale<T>(c, _mm512_reduce_max_epu32(abs_bits(v)), &s)) {
          fast::reference_group(dense, T, cols, spec, r, g, packed, scales);
          continue;
        }
        if (s.zero_codes) {
          _mm_storel_epi64(reinterpret_cast<__m128i*>(words), _mm_setzero_si128());
          scales[r * groups + g] = s.byte;
          continue;
        }
        const __m512 q =
            _mm512_mul_ps(round16<T>(_mm512_div_ps(v, _mm512_set1_ps(s.factor))), encode);
        const __m128i bytes = _mm512_cvtepi32_epi8(e2m1_codes(q));
        const __m128i pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x1001));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(words), _mm_cvtepi16_epi8(pairs));
      } else {
        const __m512 v0 = load16<T>(dense, base), v1 = load16<T>(dense, base + 16);
        const uint32_t amax = _mm512_reduce_max_epu32(_mm512_max_epu32(abs_bits(v0), abs_bits(v1)));
        if (!fast::group_scale<T>(c, amax, &s)) {
          fast::reference_group(dense, T, cols, spec, r, g, packed, scales);
          continue;
        }
        encode_mx<T>(v0, v1, _mm512_set1_ps(s.factor), spec.bits, words);
      }
      scales[r * groups + g] = s.byte;
    }
  }
}

}  // namespace

void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, uint8_t* scales) {
  detail::with_dtype(dtype, [&](auto d) {
    rows<decltype(d)::value>(dense, cols, spec, row_begin, row_end, packed, scales);
  });
}

}  // namespace nx_quant::microscaled::avx512
