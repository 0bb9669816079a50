// AVX2 quantize and dequantize (CPUs without AVX-512), bit-identical to the reference (MLX's
// rules), as the AVX-512 kernels are:
//   * dequantize: w = round(round(q * scale) + bias), each rounding to the scales' dtype (bf16
//     in integer arithmetic, f16 through vcvtps2ph with round-to-nearest-even).
//     2-, 3- and 4-bit values into bf16/f16: a group has at most 16 distinct outputs. They are
//     computed once per group (two vectors of 8) and split into a table of their low bytes and
//     one of their high bytes; every 16 values are then two pshufb lookups whose results,
//     interleaved, are the 16-bit outputs. f32 output, and 5-, 6- and 8-bit values: computed
//     directly, 8 lanes at a time. The transposed output stays with the portable kernel.
//   * quantize: per group, min/max 8 lanes at a time (max_ps(v, acc) is std::max(acc, v): a
//     NaN v leaves acc as it is, as in the reference), the scalar group_params_from_range,
//     q = clamp(rint((w - bias) / scale)) 8 lanes at a time, and 32 q bytes packed into 4*bits
//     bytes by two multiply-adds and a byte shuffle.
#include <immintrin.h>

#include <cmath>

#include <cstdint>
#include <cstring>
#include <limits>

#include "gemv_loops.h"
#include "nx_quant/reference.h"
#include "simd_kernels.h"
#include "x86/avx2/load_avx2.h"

namespace nx_quant::avx2 {

namespace {

// f32 lanes rounded to bf16 (round to nearest even; NaN -> 0x7FC0), still as f32. Callers that
// know no lane is NaN skip the NaN fix-up (kMayBeNaN = false).
template <bool kMayBeNaN = true>
inline __m256 round_bf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
  r = _mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  if constexpr (!kMayBeNaN) return _mm256_castsi256_ps(r);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_castsi256_ps(r),
                          _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), nan);
}

inline __m256 round_f16(__m256 v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Two operations, each rounded to the dtype (never a fused multiply-add: the project builds
// with -ffp-contract=off). With a finite scale and bias no intermediate can be NaN (q is a
// small integer): kMayBeNaN = false drops the bf16 rounding's NaN fix-up.
template <bool kMayBeNaN = true>
inline __m256 dequantized(__m256 q, __m256 scale, __m256 bias, DType dtype) {
  switch (dtype) {
    case DType::F32:
      return _mm256_add_ps(_mm256_mul_ps(q, scale), bias);
    case DType::F16:
      return round_f16(_mm256_add_ps(round_f16(_mm256_mul_ps(q, scale)), bias));
    default:
      return round_bf16<kMayBeNaN>(
          _mm256_add_ps(round_bf16<kMayBeNaN>(_mm256_mul_ps(q, scale)), bias));
  }
}

// 8 lanes already representable in the 16-bit dtype, as its bits (exact conversion).
inline __m128i half_bits(__m256 v, DType dtype) {
  if (dtype == DType::F16) return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256i h = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// The first N (<= 16) bytes at p, exactly (never past them), the rest of the vector zero.
template <size_t N>
inline __m128i load_bytes(const uint8_t* p) {
  uint64_t lo = 0, hi = 0;
  std::memcpy(&lo, p, N < 8 ? N : 8);
  if constexpr (N > 8) std::memcpy(&hi, p + 8, N - 8);
  return _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo));
}

// 16 consecutive values (a chunk: 2 * Bits packed bytes) as 16-bit lanes. Value i lies in the
// two bytes from (i * Bits) / 8 at bit offset s = (i * Bits) % 8 (s + Bits <= 16): a byte
// shuffle brings those two bytes to lane i, a multiply by 2^(8 - s) moves the value to bit 8
// (AVX2 has no per-lane 16-bit shift), and a shift and a mask isolate it.
template <int Bits>
struct Unpack16 {
  __m256i gather[2], multiplier, mask;
  Unpack16() {
    alignas(32) uint8_t index[2][32];
    alignas(32) uint16_t factor[16];
    for (int c = 0; c < 2; ++c) {
      for (int i = 0; i < 16; ++i) {
        const int byte = 2 * Bits * c + i * Bits / 8;
        index[c][2 * i] = static_cast<uint8_t>(byte);
        index[c][2 * i + 1] = static_cast<uint8_t>(byte + 1 < 16 ? byte + 1 : 0x80);
      }
    }
    for (int i = 0; i < 16; ++i) factor[i] = static_cast<uint16_t>(1u << (8 - i * Bits % 8));
    for (int c = 0; c < 2; ++c) {
      gather[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(index[c]));
    }
    multiplier = _mm256_load_si256(reinterpret_cast<const __m256i*>(factor));
    mask = _mm256_set1_epi16((1 << Bits) - 1);
  }
  // Chunk c (0 or 1) of the packed bytes in `packed`.
  __m256i operator()(__m128i packed, int c) const {
    const __m256i both = _mm256_broadcastsi128_si256(packed);
    const __m256i moved = _mm256_mullo_epi16(_mm256_shuffle_epi8(both, gather[c]), multiplier);
    return _mm256_and_si256(_mm256_srli_epi16(moved, 8), mask);
  }
  // The chunk at p.
  __m256i operator()(const uint8_t* p) const {
    if constexpr (Bits == 8) {
      return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else {
      return (*this)(load_bytes<2 * Bits>(p), 0);
    }
  }
};

// The q values 0..15 and 16..31 of 32 consecutive values, as bytes in value order, from their
// 4 * Bits packed bytes at p (never read past them; p is on a word boundary).
template <int Bits>
inline void indices_of_32(const Unpack16<Bits>& unpack, const uint8_t* p, __m128i& first,
                          __m128i& second) {
  if constexpr (Bits == 4) {  // byte j: value 2j in the low nibble, 2j + 1 in the high one
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i lo = _mm_and_si128(b, nibble), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nibble);
    first = _mm_unpacklo_epi8(lo, hi);
    second = _mm_unpackhi_epi8(lo, hi);
  } else if constexpr (Bits == 2) {  // byte j: values 4j .. 4j + 3, two bits each
    const __m128i pair = _mm_set1_epi8(0x03);
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i s0 = _mm_and_si128(b, pair), s1 = _mm_and_si128(_mm_srli_epi16(b, 2), pair);
    const __m128i s2 = _mm_and_si128(_mm_srli_epi16(b, 4), pair);
    const __m128i s3 = _mm_and_si128(_mm_srli_epi16(b, 6), pair);
    const __m128i s01 = _mm_unpacklo_epi8(s0, s1), s23 = _mm_unpacklo_epi8(s2, s3);
    first = _mm_unpacklo_epi16(s01, s23);
    second = _mm_unpackhi_epi16(s01, s23);
  } else {  // 3 bits straddle bytes: two 16-value chunks narrowed to bytes
    const __m128i packed = load_bytes<4 * Bits>(p);
    const __m256i bytes = _mm256_permute4x64_epi64(
        _mm256_packus_epi16(unpack(packed, 0), unpack(packed, 1)), _MM_SHUFFLE(3, 1, 2, 0));
    first = _mm256_castsi256_si128(bytes);
    second = _mm256_extracti128_si256(bytes, 1);
  }
}

// 16 table lookups: out[j] = low[index[j]] | high[index[j]] << 8.
inline void store_lookups(uint16_t* out, __m128i index, __m128i low, __m128i high) {
  const __m128i l = _mm_shuffle_epi8(low, index), h = _mm_shuffle_epi8(high, index);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm256_set_m128i(_mm_unpackhi_epi8(l, h), _mm_unpacklo_epi8(l, h)));
}

template <int Bits>
void dequantize_rows_half_by_table(const QuantizedMatrix& w, size_t row_begin, size_t row_end,
                                   uint16_t* out) {
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * Bits / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  const __m256 q_first = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 q_second = _mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15);
  const __m128i low_byte = _mm_set1_epi16(0x00FF);
  const Unpack16<Bits> unpack;  // (3 bits; 2 and 4 have cheaper splits)
  for (size_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = bytes + r * row_bytes;
    uint16_t* out_row = out + r * w.cols;
    for (size_t g = 0; g < groups; ++g) {
      const __m256 scale = _mm256_set1_ps(load_as_f32(w.scales.data, w.dtype, r * groups + g));
      const __m256 bias = _mm256_set1_ps(load_as_f32(w.biases.data, w.dtype, r * groups + g));
      // w(q) for q = 0..15 (entries past 2^Bits are never looked up), split into bytes.
      const __m128i w0 = half_bits(dequantized(q_first, scale, bias, w.dtype), w.dtype);
      const __m128i w1 = half_bits(dequantized(q_second, scale, bias, w.dtype), w.dtype);
      const __m128i low =
          _mm_packus_epi16(_mm_and_si128(w0, low_byte), _mm_and_si128(w1, low_byte));
      const __m128i high = _mm_packus_epi16(_mm_srli_epi16(w0, 8), _mm_srli_epi16(w1, 8));
      for (size_t c = g * gs; c < (g + 1) * gs; c += 32) {
        __m128i first, second;
        indices_of_32(unpack, row + c * Bits / 8, first, second);
        store_lookups(out_row + c, first, low, high);
        store_lookups(out_row + c + 16, second, low, high);
      }
    }
  }
}

template <int Bits>
void dequantize_rows_direct(const QuantizedMatrix& w, size_t row_begin, size_t row_end, void* out) {
  const Unpack16<Bits> unpack;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * Bits / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups; ++g) {
      const float group_scale = load_as_f32(w.scales.data, w.dtype, r * groups + g);
      const float group_bias = load_as_f32(w.biases.data, w.dtype, r * groups + g);
      const __m256 scale = _mm256_set1_ps(group_scale), bias = _mm256_set1_ps(group_bias);
      const bool finite = std::isfinite(group_scale) && std::isfinite(group_bias);
      for (size_t c = g * gs; c < (g + 1) * gs; c += 16) {
        const __m256i q = unpack(bytes + r * row_bytes + c * Bits / 8);
        for (int h = 0; h < 2; ++h) {
          const __m128i half = h == 0 ? _mm256_castsi256_si128(q) : _mm256_extracti128_si256(q, 1);
          const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(half));
          const __m256 v = finite ? dequantized<false>(qf, scale, bias, w.dtype)
                                  : dequantized(qf, scale, bias, w.dtype);
          const size_t index = r * w.cols + c + 8 * h;
          if (w.dtype == DType::F32) {
            _mm256_storeu_ps(static_cast<float*>(out) + index, v);
          } else {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + index),
                             half_bits(v, w.dtype));
          }
        }
      }
    }
  }
}

}  // namespace

void dequantize_rows(const QuantizedMatrix& w, size_t row_begin, size_t row_end, void* out) {
  detail::with_bits(w.spec.bits, [&](auto bits) {
    constexpr int Bits = decltype(bits)::value;
    if constexpr (Bits <= 4) {
      if (w.dtype != DType::F32) {
        return dequantize_rows_half_by_table<Bits>(w, row_begin, row_end,
                                                   static_cast<uint16_t*>(out));
      }
    }
    dequantize_rows_direct<Bits>(w, row_begin, row_end, out);
  });
}

namespace {

// Lane-wise max / min folded to one value. The lanes hold no NaN (max_ps(v, acc) never lets
// one in), so the order of the comparisons cannot change the group's parameters.
inline float fold_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
inline float fold_min(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_min_ss(m, _mm_movehdup_ps(m)));
}

// Writes 32 q bytes (each < 2^Bits, in value order) as their 4 * Bits bytes of the
// little-endian bit stream. maddubs joins byte pairs (q0 + q1 << Bits), madd word pairs (four
// values in the low 4 * Bits bits of each dword), a shift-and-or joins each qword's dwords
// (eight values in its low Bits bytes), and a byte shuffle puts those bytes back to back.
template <int Bits>
struct Packer32 {
  __m256i byte_pairs, word_pairs, low_dword, compact;
  Packer32() {
    if constexpr (Bits < 8) {  // 2^Bits <= 64 and 2^(2 Bits) <= 4096: signed multipliers
      byte_pairs = _mm256_set1_epi16(static_cast<int16_t>(0x0001 | (1 << (Bits + 8))));
      word_pairs = _mm256_set1_epi32(1 | (1 << (2 * Bits + 16)));
    }
    low_dword = _mm256_set1_epi64x(0xFFFFFFFF);
    alignas(32) uint8_t index[32];
    for (int lane = 0; lane < 2; ++lane) {
      for (int j = 0; j < 16; ++j) {
        index[16 * lane + j] =
            static_cast<uint8_t>(j < 2 * Bits ? (j / Bits) * 8 + j % Bits : 0x80);
      }
    }
    compact = _mm256_load_si256(reinterpret_cast<const __m256i*>(index));
  }
  void operator()(__m256i q, uint8_t* out) const {
    if constexpr (Bits == 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), q);
    } else {
      const __m256i quads = _mm256_madd_epi16(_mm256_maddubs_epi16(q, byte_pairs), word_pairs);
      const __m256i octets =
          _mm256_or_si256(_mm256_and_si256(quads, low_dword),
                          _mm256_slli_epi64(_mm256_srli_epi64(quads, 32), 4 * Bits));
      const __m256i packed = _mm256_shuffle_epi8(octets, compact);
      alignas(32) uint8_t lanes[32];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), packed);
      std::memcpy(out, lanes, 2 * Bits);  // each 128-bit lane holds 16 values' 2 * Bits bytes
      std::memcpy(out + 2 * Bits, lanes + 16, 2 * Bits);
    }
  }
};

template <int Bits, DType D>
void quantize_rows_of(const void* dense, size_t cols, size_t gs, size_t row_begin, size_t row_end,
                      uint32_t* packed, void* scales, void* biases) {
  const Packer32<Bits> pack;
  const size_t groups = cols / gs;
  const size_t row_bytes = cols * Bits / 8;
  auto* out = reinterpret_cast<uint8_t*>(packed);
  const __m256 top = _mm256_set1_ps(static_cast<float>((1 << Bits) - 1));
  const __m256i value_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups; ++g) {
      const size_t base = r * cols + g * gs;
      __m256 w_max = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
      __m256 w_min = _mm256_set1_ps(std::numeric_limits<float>::infinity());
      for (size_t j = 0; j < gs; j += 8) {
        const __m256 v = load8<D>(dense, base + j);
        w_max = _mm256_max_ps(v, w_max);
        w_min = _mm256_min_ps(v, w_min);
      }
      const auto params =
          reference::group_params_from_range(fold_min(w_min), fold_max(w_max), Bits);
      const __m256 scale = _mm256_set1_ps(params.scale), bias = _mm256_set1_ps(params.bias);
      for (size_t c = 0; c < gs; c += 32) {
        __m256i q[4];
        for (int k = 0; k < 4; ++k) {
          const __m256 v = load8<D>(dense, base + c + 8 * k);
          const __m256 t = _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(v, bias), scale),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          // max_ps(t, 0) is 0 for a NaN or negative t (as the reference's !(q >= 0)); then
          // the clamp to the top bin.
          q[k] = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), top));
        }
        const __m256i bytes = _mm256_permutevar8x32_epi32(
            _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3])),
            value_order);
        pack(bytes, out + r * row_bytes + (g * gs + c) * Bits / 8);
      }
      store_from_f32(scales, D, r * groups + g, params.scale);
      store_from_f32(biases, D, r * groups + g, params.bias);
    }
  }
}

template <DType D>
void quantize_rows_with(const void* dense, size_t cols, const QuantSpec& spec, size_t row_begin,
                        size_t row_end, uint32_t* packed, void* scales, void* biases) {
  const size_t gs = static_cast<size_t>(spec.group_size);
  detail::with_bits(spec.bits, [&](auto bits) {
    quantize_rows_of<decltype(bits)::value, D>(dense, cols, gs, row_begin, row_end, packed, scales,
                                               biases);
  });
}

}  // namespace

void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, void* scales, void* biases) {
  detail::with_dtype(dtype, [&](auto d) {
    quantize_rows_with<decltype(d)::value>(dense, cols, spec, row_begin, row_end, packed, scales,
                                           biases);
  });
}

}  // namespace nx_quant::avx2
