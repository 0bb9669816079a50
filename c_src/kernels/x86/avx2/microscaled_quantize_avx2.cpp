// AVX2 microscaled quantize (mxfp4, mxfp8, nvfp4): the fast quantizer of
// microscaled/quantize_fast.h with 8 lanes, as the AVX-512 one (x86/avx512/
// microscaled_quantize_avx512.cpp) does it: blocks of 8 groups whose scales are computed
// together (fast::group_scale's steps, thresholds / E4M3 values gathered), each element scaled,
// rounded to the dtype and encoded lane by lane (E2M1's 16-entry table by vpshufb); a row's last
// groups one by one.
#include <immintrin.h>

#include "gemv_loops.h"
#include "microscaled/quantize_fast.h"
#include "x86/avx2/load_avx2.h"

namespace nx_quant::microscaled::avx2 {

namespace {

using nx_quant::avx2::load8;

template <DType T>
inline __m256 round8(__m256 v) {
  if constexpr (T == DType::F32) {
    return v;
  } else if constexpr (T == DType::F16) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(int(0xFFFF0000u))));
  }
}

inline __m256i abs_bits(__m256 v) {
  return _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF));
}

inline uint32_t reduce_max(__m256i v) {
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
}

// fast::e2m1_code in every lane (|q| <= kFastQMax).
inline __m256i e2m1_codes(__m256 q) {
  const __m256i lut = _mm256_setr_epi8(1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7, 1, 1, 2, 2,
                                       2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7);
  const __m256i u = _mm256_castps_si256(q);
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  __m256i index = _mm256_sub_epi32(_mm256_srai_epi32(_mm256_sub_epi32(a, _mm256_set1_epi32(1)), 21),
                                   _mm256_set1_epi32(504));
  index = _mm256_min_epi32(_mm256_max_epi32(index, _mm256_setzero_si256()), _mm256_set1_epi32(15));
  // Bytes 1..3 of each lane look up nothing (index byte 0x80): the code stays in byte 0.
  index = _mm256_or_si256(index, _mm256_set1_epi32(int(0x80808000u)));
  const __m256i code =
      _mm256_or_si256(_mm256_shuffle_epi8(lut, index),
                      _mm256_and_si256(_mm256_srli_epi32(u, 28), _mm256_set1_epi32(8)));
  return _mm256_and_si256(
      code, _mm256_cmpgt_epi32(a, _mm256_set1_epi32(static_cast<int>(fast::kQuarterBits))));
}

// e4m3_from_f32 (codec.h) in every lane.
inline __m256i e4m3_codes(__m256 q) {
  const __m256i u = _mm256_castps_si256(q);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
  const __m256i bits = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i big = _mm256_cmpgt_epi32(bits, _mm256_set1_epi32(0x43E00000 - 1));
  const __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3C800000), bits);
  const __m256i sub = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(16384.0f))),
      _mm256_set1_epi32(0x46800000));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 20), _mm256_set1_epi32(1));
  const __m256i normal =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_sub_epi32(bits, _mm256_set1_epi32(120 << 23)),
                                         _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF), odd)),
                        20);
  __m256i magnitude = _mm256_blendv_epi8(normal, sub, small);
  magnitude = _mm256_blendv_epi8(magnitude, _mm256_set1_epi32(0x7E), big);
  return _mm256_or_si256(_mm256_and_si256(magnitude, _mm256_set1_epi32(0xFF)), sign);
}

// Four vectors of 8 byte-sized dword lanes -> 32 bytes in element order.
inline __m256i pack_bytes(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
  const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
  return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// 32 E2M1 codes (bytes, element order) -> 16 bytes, element 2j in the low nibble of byte j.
inline __m128i pack_nibbles(__m256i bytes) {
  const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x1001));
  const __m256i packed = _mm256_packus_epi16(pairs, pairs);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

// The lanes where a < b, for non-negative int32 patterns.
inline __m256i less(__m256i a, __m256i b) {
  return _mm256_cmpgt_epi32(b, a);
}

// 8 mx groups at once (256 values from `base`): fast::group_scale<T> lane by lane (its bisected
// thresholds gathered by exponent), then each group encoded, or the reference's.
template <DType T>
void mx_block8(const fast::Context& c, const void* dense, size_t cols, const QuantSpec& spec,
               size_t r, size_t g0, uint32_t* packed, uint8_t* scales) {
  const size_t base = r * cols + g0 * 32;
  const size_t groups = cols / 32;
  const size_t words_per_group = static_cast<size_t>(spec.bits);  // 32 * bits / 32
  alignas(32) uint32_t amax[8];
  for (int j = 0; j < 8; ++j) {
    __m256i m = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k)
      m = _mm256_max_epu32(m, abs_bits(load8<T>(dense, base + 32 * j + 8 * k)));
    amax[j] = reduce_max(m);
  }
  const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(amax));
  const __m256i finite = less(a, _mm256_set1_epi32(0x7F800000));
  const __m256 scale = round8<T>(_mm256_div_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(c.maxval)));
  const __m256i sb = _mm256_castps_si256(scale);
  const __m256i exponent = _mm256_srli_epi32(sb, 23);
  const __m256i thr = _mm256_mask_i32gather_epi32(
      _mm256_setzero_si256(), reinterpret_cast<const int*>(c.thresholds), exponent, finite, 4);
  const __m256i up = _mm256_andnot_si256(
      less(_mm256_and_si256(sb, _mm256_set1_epi32(0x7FFFFF)), thr), _mm256_set1_epi32(1));
  const __m256i zero = _mm256_cmpeq_epi32(sb, _mm256_setzero_si256());
  __m256i e = _mm256_add_epi32(_mm256_sub_epi32(exponent, _mm256_set1_epi32(127)), up);
  e = _mm256_andnot_si256(zero, e);
  __m256i ok = _mm256_and_si256(
      finite,
      _mm256_or_si256(zero, _mm256_xor_si256(_mm256_cmpeq_epi32(exponent, _mm256_setzero_si256()),
                                             _mm256_set1_epi32(-1))));
  ok = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(c.e_min), e), ok);
  ok = _mm256_andnot_si256(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(c.e_max)), ok);
  const __m256i factor_bits = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(127), e), 23);
  if (spec.bits == 4) {
    const __m256 qmax =
        round8<T>(_mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(factor_bits)));
    ok = _mm256_and_si256(
        ok, _mm256_castps_si256(_mm256_cmp_ps(qmax, _mm256_set1_ps(fast::kFastQMax), _CMP_LE_OQ)));
  }
  const int ok_bits = _mm256_movemask_ps(_mm256_castsi256_ps(ok));
  alignas(32) float factor[8];
  alignas(32) int32_t byte[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(factor), factor_bits);
  _mm256_store_si256(reinterpret_cast<__m256i*>(byte), _mm256_add_epi32(e, _mm256_set1_epi32(127)));
  for (int j = 0; j < 8; ++j) {
    if (!((ok_bits >> j) & 1)) {
      fast::reference_group(dense, T, cols, spec, r, g0 + j, packed, scales);
      continue;
    }
    scales[r * groups + g0 + j] = static_cast<uint8_t>(byte[j]);
    const __m256 f = _mm256_set1_ps(factor[j]);
    __m256i codes[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 q = round8<T>(_mm256_mul_ps(load8<T>(dense, base + 32 * j + 8 * k), f));
      codes[k] = spec.bits == 4 ? e2m1_codes(q) : e4m3_codes(q);
    }
    const __m256i bytes = pack_bytes(codes[0], codes[1], codes[2], codes[3]);
    uint32_t* words = packed + r * groups * words_per_group + (g0 + j) * words_per_group;
    if (spec.bits == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(words), pack_nibbles(bytes));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words), bytes);
    }
  }
}

// 8 nvfp4 groups at once (128 values from `base`), as mx_block8 (the E4M3 scale byte by
// e4m3_codes, its value gathered from the table).
template <DType T>
void nv_block8(const fast::Context& c, const void* dense, size_t cols, const QuantSpec& spec,
               size_t r, size_t g0, uint32_t* packed, uint8_t* scales) {
  const size_t base = r * cols + g0 * 16;
  const size_t groups = cols / 16;
  alignas(32) uint32_t amax[8];
  for (int j = 0; j < 8; ++j) {
    amax[j] = reduce_max(_mm256_max_epu32(abs_bits(load8<T>(dense, base + 16 * j)),
                                          abs_bits(load8<T>(dense, base + 16 * j + 8))));
  }
  const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(amax));
  const __m256 encode = _mm256_set1_ps(c.encode);
  const __m256i finite = less(a, _mm256_set1_epi32(0x7F800000));
  const __m256 scale = round8<T>(_mm256_div_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(6.0f)));
  const __m256i byte = e4m3_codes(_mm256_mul_ps(scale, encode));
  const __m256 divisor = _mm256_i32gather_ps(c.e4m3, byte, 4);
  const __m256 zero = _mm256_cmp_ps(divisor, _mm256_setzero_ps(), _CMP_EQ_OQ);
  const __m256 qmax =
      _mm256_mul_ps(round8<T>(_mm256_div_ps(_mm256_castsi256_ps(a), divisor)), encode);
  const __m256 ok = _mm256_and_ps(
      _mm256_castsi256_ps(finite),
      _mm256_or_ps(zero, _mm256_cmp_ps(qmax, _mm256_set1_ps(fast::kFastQMax), _CMP_LE_OQ)));
  const int ok_bits = _mm256_movemask_ps(ok), zero_bits = _mm256_movemask_ps(zero);
  alignas(32) float div[8];
  alignas(32) int32_t bytes[8];
  _mm256_store_ps(div, divisor);
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), byte);
  const __m256 e = encode;
  for (int j = 0; j < 8; ++j) {
    uint32_t* words = packed + (r * groups + g0 + j) * 2;
    if (!((ok_bits >> j) & 1)) {
      fast::reference_group(dense, T, cols, spec, r, g0 + j, packed, scales);
      continue;
    }
    scales[r * groups + g0 + j] = static_cast<uint8_t>(bytes[j]);
    if ((zero_bits >> j) & 1) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(words), _mm_setzero_si128());
      continue;
    }
    const __m256 d = _mm256_set1_ps(div[j]);
    const __m256 v0 = load8<T>(dense, base + 16 * j), v1 = load8<T>(dense, base + 16 * j + 8);
    const __m256i c0 = e2m1_codes(_mm256_mul_ps(round8<T>(_mm256_div_ps(v0, d)), e));
    const __m256i c1 = e2m1_codes(_mm256_mul_ps(round8<T>(_mm256_div_ps(v1, d)), e));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(words), pack_nibbles(pack_bytes(c0, c1, c0, c1)));
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
  const __m256 encode = _mm256_set1_ps(c.encode);
  for (size_t r = row_begin; r < row_end; ++r) {
    size_t g = 0;
    if (spec.mode != QuantMode::Nvfp4) {
      for (; g + 8 <= groups; g += 8) mx_block8<T>(c, dense, cols, spec, r, g, packed, scales);
    } else if (fast_ok) {
      for (; g + 8 <= groups; g += 8) nv_block8<T>(c, dense, cols, spec, r, g, packed, scales);
    }
    for (; g < groups; ++g) {
      const size_t base = r * cols + g * gs;
      uint32_t* words = packed + r * words_per_row + g * words_per_group;
      fast::GroupScale s;
      if (spec.mode == QuantMode::Nvfp4) {
        const __m256 v0 = load8<T>(dense, base), v1 = load8<T>(dense, base + 8);
        const uint32_t amax = reduce_max(_mm256_max_epu32(abs_bits(v0), abs_bits(v1)));
        if (!fast_ok || !fast::group_scale<T>(c, amax, &s)) {
          fast::reference_group(dense, T, cols, spec, r, g, packed, scales);
          continue;
        }
        if (s.zero_codes) {
          _mm_storel_epi64(reinterpret_cast<__m128i*>(words), _mm_setzero_si128());
          scales[r * groups + g] = s.byte;
          continue;
        }
        const __m256 d = _mm256_set1_ps(s.factor);
        const __m256i c0 = e2m1_codes(_mm256_mul_ps(round8<T>(_mm256_div_ps(v0, d)), encode));
        const __m256i c1 = e2m1_codes(_mm256_mul_ps(round8<T>(_mm256_div_ps(v1, d)), encode));
        const __m128i nibbles = pack_nibbles(pack_bytes(c0, c1, c0, c1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(words), nibbles);
      } else {
        __m256 v[4];
        __m256i m = _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
          v[j] = load8<T>(dense, base + 8 * j);
          m = _mm256_max_epu32(m, abs_bits(v[j]));
        }
        if (!fast::group_scale<T>(c, reduce_max(m), &s)) {
          fast::reference_group(dense, T, cols, spec, r, g, packed, scales);
          continue;
        }
        const __m256 factor = _mm256_set1_ps(s.factor);
        __m256i codes[4];
        for (int j = 0; j < 4; ++j) {
          const __m256 q = round8<T>(_mm256_mul_ps(v[j], factor));
          codes[j] = spec.bits == 4 ? e2m1_codes(q) : e4m3_codes(q);
        }
        const __m256i bytes = pack_bytes(codes[0], codes[1], codes[2], codes[3]);
        if (spec.bits == 4) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(words), pack_nibbles(bytes));
        } else {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(words), bytes);
        }
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

}  // namespace nx_quant::microscaled::avx2
