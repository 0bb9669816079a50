// AVX-512 quantize and dequantize, bit-identical to the reference (MLX's rules):
//   * dequantize: w = round(round(q * scale) + bias), each rounding to the scales' dtype, done
//     16 lanes at a time (bf16 rounding in integer arithmetic, f16 through vcvtps2ph with
//     round-to-nearest-even, which is exact for subnormals and NaN payloads alike).
//   * quantize: the group's min/max with max_ps/min_ps (a NaN lane never replaces the
//     running value, as std::max/std::min skip NaN in the reference), the scalar
//     group_params_from_range, then q = clamp(rint((w - bias) / scale)) 16 lanes at a time
//     and a vector pack of 64 q bytes into 8*bits bytes.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_features.h"
#include "gemv_loops.h"
#include "nx_quant/reference.h"
#include "simd_kernels.h"
#include "unpack_avx512.h"

namespace nx_quant::avx512 {

namespace {

// f32 lanes rounded to bf16 (round to nearest even; NaN -> 0x7FC0), still as f32.
inline __m512 round_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
  r = _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_castsi512_ps(_mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC00000)));
}

inline __m512 round_f16(__m512 v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

inline __m512 round_to(__m512 v, DType dtype) {
  switch (dtype) {
    case DType::F32:
      return v;
    case DType::F16:
      return round_f16(v);
    default:
      return round_bf16(v);
  }
}

// Stores the first `count` (16 unless told) lanes of v, already representable in dtype (so the
// conversion is exact), at element `index` of out.
inline void store_exact(void* out, DType dtype, size_t index, __m512 v, size_t count = 16) {
  if (count == 16) {  // plain stores: masked ones are slower (Zen 4)
    switch (dtype) {
      case DType::F32:
        _mm512_storeu_ps(static_cast<float*>(out) + index, v);
        return;
      case DType::F16:
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + index),
                            _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        return;
      default:
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + index),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
        return;
    }
  }
  const __mmask16 lanes = static_cast<__mmask16>((1u << count) - 1u);
  switch (dtype) {
    case DType::F32:
      _mm512_mask_storeu_ps(static_cast<float*>(out) + index, lanes, v);
      break;
    case DType::F16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + index, lanes,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default:
      _mm256_mask_storeu_epi16(
          static_cast<uint16_t*>(out) + index, lanes,
          _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
      break;
  }
}

// 16 values of dtype D as f32 (exact).
template <DType D>
inline __m512 load_f32(const void* data, size_t index) {
  if constexpr (D == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(data) + index);
  } else if constexpr (D == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(data) + index)));
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(data) + index))),
        16));
  }
}

// Packs 64 q bytes (each < 2^bits) into 8*bits bytes of the little-endian bit stream. Two
// multiply-adds merge neighbours (bytes pairwise: q0 + q1 << bits, then words pairwise: four
// values in the low 4*bits bits of each dword), a shift-and-merge joins each qword's two dwords
// (eight values in its low 8*bits bits), and a byte permute keeps those bits' `bits` bytes per
// qword, back to back. 8-bit values are stored as they are.
struct Packer {
  __m512i compact, byte_pairs, word_pairs, low_dword;
  __m128i dword_shift;
  size_t bits;

  explicit Packer(int b) : bits(static_cast<size_t>(b)) {
    alignas(64) uint8_t idx[64];
    for (int i = 0; i < 64; ++i) idx[i] = static_cast<uint8_t>(i < 8 * b ? (i / b) * 8 + i % b : 0);
    compact = _mm512_load_si512(idx);
    if (b < 8) {  // 2^b <= 64 and 2^(2b) <= 4096 fit the signed 8- and 16-bit multipliers
      byte_pairs = _mm512_set1_epi16(static_cast<int16_t>(0x0001 | (1 << (b + 8))));
      word_pairs = _mm512_set1_epi32(1 | (1 << (2 * b + 16)));
    }
    low_dword = _mm512_set1_epi64(0xFFFFFFFF);
    dword_shift = _mm_cvtsi64_si128(4 * b);
  }

  // Writes the first `values` (64 or 32) q bytes of v as their 8*bits (4*bits) packed bytes.
  void operator()(__m512i v, size_t values, uint8_t* out) const {
    const size_t bytes = values * bits / 8;
    const __mmask64 store =
        bytes == 64 ? ~__mmask64{0} : _cvtu64_mask64((uint64_t{1} << bytes) - 1);
    if (bits == 8) {
      _mm512_mask_storeu_epi8(out, store, v);
      return;
    }
    const __m512i quads = _mm512_madd_epi16(_mm512_maddubs_epi16(v, byte_pairs), word_pairs);
    const __m512i high = _mm512_sll_epi64(_mm512_srli_epi64(quads, 32), dword_shift);
    const __m512i octets = _mm512_ternarylogic_epi64(quads, low_dword, high, 0xEA);  // a&b | c
    _mm512_mask_storeu_epi8(out, store, _mm512_permutexvar_epi8(compact, octets));
  }
};

// w for every q of a group, computed with the same two rounded operations as the direct path
// (lane q holds w(q)); lanes past 2^bits are never looked up.
inline __m512 group_table(__m512 scale, __m512 bias, DType dtype) {
  const __m512 q = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return round_to(_mm512_add_ps(round_to(_mm512_mul_ps(q, scale), dtype), bias), dtype);
}

// 2-, 3- and 4-bit values into 16-bit dtypes, 32 at a time: the chunk's 4*bits bytes are
// loaded (masked: never past them), vpermb puts the two bytes holding value i's bits at
// (i*bits)/8 in 16-bit lane i, a shift by (i*bits)%8 brings them to the bottom, and vpermw looks
// the lane up in the group's table. vpermw indexes with 5 bits, of which only the low `bits` are
// value; the table repeats its 2^bits entries across all 32 so the stray bits do not matter.
void dequantize_rows_half_by_table(const QuantizedMatrix& w, size_t row_begin, size_t row_end,
                                   void* out) {
  const size_t bits = static_cast<size_t>(w.spec.bits);
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * bits / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  auto* out16 = static_cast<uint16_t*>(out);
  alignas(64) uint8_t spread_index[64];
  alignas(64) uint16_t value_shift[32];
  alignas(64) uint32_t repeat_index[16];
  for (size_t i = 0; i < 32; ++i) {
    spread_index[2 * i] = static_cast<uint8_t>(i * bits / 8);
    spread_index[2 * i + 1] = static_cast<uint8_t>(i * bits / 8 + 1);
    value_shift[i] = static_cast<uint16_t>(i * bits % 8);
  }
  for (uint32_t i = 0; i < 16; ++i) repeat_index[i] = i % (1u << bits);
  const __m512i spread = _mm512_load_si512(spread_index);
  const __m512i shift = _mm512_load_si512(value_shift);
  const __m512i repeat = _mm512_load_si512(repeat_index);
  const __mmask64 chunk_mask = _cvtu64_mask64((uint64_t{1} << (4 * bits)) - 1);
  for (size_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = bytes + r * row_bytes;
    uint16_t* out_row = out16 + r * w.cols;
    for (size_t g = 0; g < groups; ++g) {
      const __m512 table32 = _mm512_permutexvar_ps(
          repeat, group_table(_mm512_set1_ps(load_as_f32(w.scales.data, w.dtype, r * groups + g)),
                              _mm512_set1_ps(load_as_f32(w.biases.data, w.dtype, r * groups + g)),
                              w.dtype));
      const __m256i table16 =
          w.dtype == DType::F16
              ? _mm512_cvtps_ph(table32, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
              : _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(table32), 16));
      const __m512i table = _mm512_inserti64x4(_mm512_castsi256_si512(table16), table16, 1);
      for (size_t c = g * gs; c < (g + 1) * gs; c += 32) {
        const __m512i packed = _mm512_maskz_loadu_epi8(chunk_mask, row + c * bits / 8);
        const __m512i index = _mm512_srlv_epi16(_mm512_permutexvar_epi8(spread, packed), shift);
        _mm512_storeu_si512(out_row + c, _mm512_permutexvar_epi16(index, table));
      }
    }
  }
}

// vcvtneps2bf16 rounds to nearest even like round_bf16 except on denormal inputs (flushed to
// zero) and NaN (kept, quieted). In a group whose bf16 scale and bias are finite and each zero or
// of magnitude >= 2^-100, neither occurs: q * scale is 0, >= 2^-100 or infinite, and rounded
// product + bias is 0, infinite or a nonzero multiple of 2^-107 (both terms are bf16 values of
// that size), all normal in f32.
inline bool rounds_like_vcvtneps2bf16(float scale, float bias) {
  const auto fine = [](float v) {
    return v == 0.0f ||
           (std::abs(v) >= 0x1p-100f && std::abs(v) <= std::numeric_limits<float>::max());
  };
  return fine(scale) && fine(bias);
}

// One group of 5-, 6- or 8-bit values into bf16, MLX's two roundings done by vcvtneps2bf16
// (only where rounds_like_vcvtneps2bf16 holds): 16 values cost an unpack (8-bit: one widening
// load), a conversion, a multiply, a rounding, a widening back to f32, an add and a rounding.
template <bool kBytes>
void dequantize_group_bf16(const Unpacker& unpack, const uint8_t* packed, __m512 scale, __m512 bias,
                           size_t group_size, uint16_t* out) {
  for (size_t c = 0; c < group_size; c += 16) {
    const __m512 q = kBytes ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + c))))
                            : unpack(packed + c / 16 * unpack.chunk_bytes);
    const __m512 product = _mm512_mul_ps(q, scale);
    const __m512 sum = _mm512_add_ps(_mm512_cvtpbh_ps(_mm512_cvtneps_pbh(product)), bias);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c),
                        reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(sum)));
  }
}

}  // namespace

void dequantize_rows(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                     void* out) {
  if (w.spec.bits <= 4 && w.dtype != DType::F32 && !transpose_out) {
    dequantize_rows_half_by_table(w, row_begin, row_end, out);
    return;
  }
  // Up to 4 bits a group has at most 16 distinct outputs: compute them once (group_table) and
  // look each value up (vpermps) instead of computing it. Wider values are computed directly.
  const bool by_table = w.spec.bits <= 4;
  const bool bf16_rounding =
      !by_table && w.dtype == DType::BF16 && !transpose_out && detail::cpu_features().avx512_bf16;
  const Unpacker unpack(w.spec.bits);
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * static_cast<size_t>(w.spec.bits) / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  alignas(64) float values[16];
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups; ++g) {
      const float group_scale = load_as_f32(w.scales.data, w.dtype, r * groups + g);
      const float group_bias = load_as_f32(w.biases.data, w.dtype, r * groups + g);
      const __m512 scale = _mm512_set1_ps(group_scale), bias = _mm512_set1_ps(group_bias);
      const __m512 table = by_table ? group_table(scale, bias, w.dtype) : _mm512_setzero_ps();
      if (bf16_rounding && rounds_like_vcvtneps2bf16(group_scale, group_bias)) {
        const uint8_t* packed = bytes + r * row_bytes + g * gs / 16 * unpack.chunk_bytes;
        uint16_t* group_out = static_cast<uint16_t*>(out) + r * w.cols + g * gs;
        if (w.spec.bits == 8) {
          dequantize_group_bf16<true>(unpack, packed, scale, bias, gs, group_out);
        } else {
          dequantize_group_bf16<false>(unpack, packed, scale, bias, gs, group_out);
        }
        continue;
      }
      for (size_t c = g * gs; c < (g + 1) * gs; c += 16) {
        const uint8_t* chunk = bytes + r * row_bytes + (c / 16) * unpack.chunk_bytes;
        __m512 v;
        if (by_table) {
          v = _mm512_permutexvar_ps(unpack.indices(chunk), table);
        } else {
          // Two operations, each rounded to the dtype (never a fused multiply-add).
          v = round_to(_mm512_add_ps(round_to(_mm512_mul_ps(unpack(chunk), scale), w.dtype), bias),
                       w.dtype);
        }
        if (!transpose_out) {
          store_exact(out, w.dtype, r * w.cols + c, v);
        } else {
          _mm512_store_ps(values, v);
          for (size_t j = 0; j < 16; ++j)
            store_from_f32(out, w.dtype, (c + j) * w.rows + r, values[j]);
        }
      }
    }
  }
}

namespace {

// Lane j of the result = max (Max) or min (!Max) over the 16 lanes of v[j]. A transposing
// tree: each level halves the lanes per vector while pairing vectors up (46 instructions for
// all 16, against ~9 per horizontal reduction). The lanes hold no NaN (the range loops never
// let one in), so the order of the comparisons cannot change the result.
template <bool Max>
inline __m512 reduce_each(const __m512 (&v)[16]) {
  const auto op = [](__m512 a, __m512 b) {
    return Max ? _mm512_max_ps(a, b) : _mm512_min_ps(a, b);
  };
  __m512 halves[8], quarters[4], pairs[2];
  for (int i = 0; i < 8; ++i) {  // 256-bit halves: v[2i] in lanes 0-7, v[2i+1] in 8-15
    halves[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                   _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit quarter k holds v[4i+k]
    quarters[i] =
        op(_mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
           _mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {  // in quarter k: v[8i+k] in lanes 0-1, v[8i+4+k] in lanes 2-3
    pairs[i] = op(_mm512_shuffle_ps(quarters[2 * i], quarters[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                  _mm512_shuffle_ps(quarters[2 * i], quarters[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // lane 4k+m now holds v[4m+k]
  const __m512 each = op(_mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_permutexvar_ps(
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), each);
}

// reference::group_params_from_range for 16 groups at once (lane j = group j), operation for
// operation: the same IEEE divisions and rint, NaN compared as the scalar code compares it.
struct GroupParams16 {
  __m512 scale, bias;
};
inline GroupParams16 group_params_16(__m512 w_min, __m512 w_max, int bits) {
  const __m512 n_bins = _mm512_set1_ps(static_cast<float>((1 << bits) - 1));
  const __m512 sign = _mm512_set1_ps(-0.0f);
  // mask = |w_min| > |w_max| (false when either is NaN, as in C++)
  const __mmask16 mask =
      _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, w_min), _mm512_andnot_ps(sign, w_max), _CMP_GT_OQ);
  // std::max(a, eps) keeps a NaN a; max_ps returns its second operand when either is NaN.
  __m512 scale =
      _mm512_max_ps(_mm512_set1_ps(1e-7f), _mm512_div_ps(_mm512_sub_ps(w_max, w_min), n_bins));
  scale = _mm512_mask_blend_ps(mask, _mm512_xor_ps(scale, sign), scale);
  const __m512 edge = _mm512_mask_blend_ps(mask, w_max, w_min);
  const __m512 q0 = _mm512_roundscale_ps(_mm512_div_ps(edge, scale),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // q0 != 0 is true for NaN q0 too (unordered compares not-equal)
  const __mmask16 nonzero = _mm512_cmp_ps_mask(q0, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  return {_mm512_mask_div_ps(scale, nonzero, edge, q0),
          _mm512_mask_mov_ps(_mm512_setzero_ps(), nonzero, edge)};
}

template <DType D>
void quantize_rows_of(const void* dense, size_t cols, const QuantSpec& spec, size_t row_begin,
                      size_t row_end, uint32_t* packed, void* scales, void* biases) {
  const size_t gs = static_cast<size_t>(spec.group_size);
  const size_t gs_log2 = static_cast<size_t>(__builtin_ctzll(gs));  // group sizes are powers of 2
  const size_t groups = cols / gs;
  const size_t row_bytes = cols * static_cast<size_t>(spec.bits) / 8;
  const __m512 n_bins = _mm512_set1_ps(static_cast<float>((1 << spec.bits) - 1));
  const Packer pack(spec.bits);
  auto* out_bytes = reinterpret_cast<uint8_t*>(packed);
  const __m512i unit_order =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  alignas(64) float group_scale[16], group_bias[16];
  for (size_t r = row_begin; r < row_end; ++r) {
    const size_t row = r * cols;
    // Groups go 16 at a time: their ranges first, then all 16 parameter pairs in one vector
    // computation, then the values (read again, now from L1).
    for (size_t g0 = 0; g0 < groups; g0 += 16) {
      const size_t count = std::min<size_t>(16, groups - g0);
      __m512 hi[16], lo[16];
      for (size_t j = 0; j < 16; ++j) {
        hi[j] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        lo[j] = _mm512_set1_ps(std::numeric_limits<float>::infinity());
        if (j >= count) continue;
        for (size_t i = 0; i < gs; i += 16) {
          const __m512 v = load_f32<D>(dense, row + (g0 + j) * gs + i);
          hi[j] = _mm512_max_ps(v, hi[j]);  // a NaN in v yields the second operand: skipped
          lo[j] = _mm512_min_ps(v, lo[j]);
        }
      }
      const GroupParams16 params =
          group_params_16(reduce_each<false>(lo), reduce_each<true>(hi), spec.bits);
      _mm512_store_ps(group_scale, params.scale);
      _mm512_store_ps(group_bias, params.bias);
      store_exact(scales, D, r * groups + g0, round_to(params.scale, D), count);
      store_exact(biases, D, r * groups + g0, round_to(params.bias, D), count);
      // The values, 64 at a time (4 chunks of 16, each in its own group's scale and bias),
      // narrowed to 64 q bytes in a register and packed. 16 groups hold a multiple of 32
      // values, so only the block's last unit can be a half one.
      const size_t block_begin = g0 * gs, block_values = count * gs;
      for (size_t u = 0; u < block_values; u += 64) {
        const size_t values = std::min<size_t>(64, block_values - u);
        __m512i qi[4];
        for (size_t k = 0; k < 4; ++k) {
          if (16 * k >= values) {
            qi[k] = _mm512_setzero_si512();
            continue;
          }
          const size_t j = (u + 16 * k) >> gs_log2;  // group within the block
          const __m512 v = load_f32<D>(dense, row + block_begin + u + 16 * k);
          const __m512 t =
              _mm512_roundscale_ps(_mm512_div_ps(_mm512_sub_ps(v, _mm512_set1_ps(group_bias[j])),
                                                 _mm512_set1_ps(group_scale[j])),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          // The reference's quantize_value: NaN and t < 0 give 0, t >= n_bins gives n_bins.
          // min_ps returns its second operand for a NaN, so NaN stays NaN here; the
          // conversion turns NaN, -inf and negatives into negative integers, which the
          // unsigned saturation of the packs below makes 0.
          qi[k] = _mm512_cvttps_epi32(_mm512_min_ps(n_bins, t));
        }
        // Saturating packs interleave per 128-bit lane: dword 4L+k then holds chunk k's
        // values 4L..4L+3; the permute puts them at dword 4k+L.
        const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(qi[0], qi[1]),
                                                  _mm512_packus_epi32(qi[2], qi[3]));
        pack(_mm512_permutexvar_epi32(unit_order, bytes), values,
             out_bytes + r * row_bytes + (block_begin + u) * spec.bits / 8);
      }
    }
  }
}

}  // namespace

void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, void* scales, void* biases) {
  detail::with_dtype(dtype, [&](auto d) {
    quantize_rows_of<decltype(d)::value>(dense, cols, spec, row_begin, row_end, packed, scales,
                                         biases);
  });
}

}  // namespace nx_quant::avx512
