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
#include <cstring>
#include <limits>
#include <vector>

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

// Stores 16 values already representable in dtype (so the conversion is exact).
inline void store_exact(void* out, DType dtype, size_t index, __m512 v) {
  switch (dtype) {
    case DType::F32:
      _mm512_storeu_ps(static_cast<float*>(out) + index, v);
      break;
    case DType::F16:
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + index),
                          _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default:
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + index),
                          _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
      break;
  }
}

// 16 values of dtype as f32 (exact).
inline __m512 load_f32(const void* data, DType dtype, size_t index) {
  switch (dtype) {
    case DType::F32:
      return _mm512_loadu_ps(static_cast<const float*>(data) + index);
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(data) + index)));
    default:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(data) + index))),
          16));
  }
}

// Packs 64 q bytes (each < 2^bits) into 8*bits bytes of the little-endian bit stream: the 8
// values of each qword are shifted together inside it (value j moves from bit 8j down to bit
// j*bits), then a byte permute keeps the low `bits` bytes of each qword, back to back.
struct Packer {
  __m512i compact;
  size_t bits;

  explicit Packer(int b) : bits(static_cast<size_t>(b)) {
    alignas(64) uint8_t idx[64];
    for (int i = 0; i < 64; ++i) idx[i] = static_cast<uint8_t>(i < 8 * b ? (i / b) * 8 + i % b : 0);
    compact = _mm512_load_si512(idx);
  }

  // Writes `values` (64, or 32 at the end of a row) values' 8*bits (4*bits) bytes at out.
  void operator()(const uint8_t* q, size_t values, uint8_t* out) const {
    const __m512i v =
        _mm512_maskz_loadu_epi8(values == 64 ? ~__mmask64{0} : __mmask64{0xFFFFFFFFu}, q);
    __m512i acc = _mm512_and_si512(v, _mm512_set1_epi64(0xFF));
    for (size_t j = 1; j < 8; ++j) {
      const __m512i byte_j = _mm512_and_si512(v, _mm512_set1_epi64(int64_t{0xFF} << (8 * j)));
      acc = _mm512_or_si512(
          acc, _mm512_srl_epi64(byte_j, _mm_cvtsi64_si128(static_cast<long long>(j * (8 - bits)))));
    }
    const size_t bytes = values * bits / 8;
    const __mmask64 store =
        bytes == 64 ? ~__mmask64{0} : _cvtu64_mask64((uint64_t{1} << bytes) - 1);
    _mm512_mask_storeu_epi8(out, store, _mm512_permutexvar_epi8(compact, acc));
  }
};

}  // namespace

void dequantize_rows(const QuantizedMatrix& w, bool transpose_out, size_t row_begin, size_t row_end,
                     void* out) {
  const Unpacker unpack(w.spec.bits);
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * static_cast<size_t>(w.spec.bits) / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  alignas(64) float values[16];
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups; ++g) {
      const __m512 scale = _mm512_set1_ps(load_as_f32(w.scales.data, w.dtype, r * groups + g));
      const __m512 bias = _mm512_set1_ps(load_as_f32(w.biases.data, w.dtype, r * groups + g));
      for (size_t c = g * gs; c < (g + 1) * gs; c += 16) {
        const __m512 q = unpack(bytes + r * row_bytes + (c / 16) * unpack.chunk_bytes);
        // Two operations, each rounded to the dtype (never a fused multiply-add).
        const __m512 v =
            round_to(_mm512_add_ps(round_to(_mm512_mul_ps(q, scale), w.dtype), bias), w.dtype);
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

void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, void* scales, void* biases) {
  const size_t gs = static_cast<size_t>(spec.group_size);
  const size_t groups = cols / gs;
  const size_t row_bytes = cols * static_cast<size_t>(spec.bits) / 8;
  const float n_bins = static_cast<float>((1 << spec.bits) - 1);
  const Packer pack(spec.bits);
  std::vector<uint8_t> q((cols + 63) / 64 * 64);
  auto* out_bytes = reinterpret_cast<uint8_t*>(packed);
  for (size_t r = row_begin; r < row_end; ++r) {
    for (size_t g = 0; g < groups; ++g) {
      const size_t base = r * cols + g * gs;
      __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      __m512 lo = _mm512_set1_ps(std::numeric_limits<float>::infinity());
      for (size_t j = 0; j < gs; j += 16) {
        const __m512 v = load_f32(dense, dtype, base + j);
        hi = _mm512_max_ps(v, hi);  // a NaN in v yields the second operand: skipped
        lo = _mm512_min_ps(v, lo);
      }
      const auto params = reference::group_params_from_range(_mm512_reduce_min_ps(lo),
                                                             _mm512_reduce_max_ps(hi), spec.bits);
      const __m512 scale = _mm512_set1_ps(params.scale);
      const __m512 bias = _mm512_set1_ps(params.bias);
      for (size_t j = 0; j < gs; j += 16) {
        const __m512 v = load_f32(dense, dtype, base + j);
        const __m512 t = _mm512_roundscale_ps(_mm512_div_ps(_mm512_sub_ps(v, bias), scale),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        // !(t >= 0) (NaN or negative) -> 0, as the reference's quantize_value.
        const __mmask16 valid = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_GE_OQ);
        const __m512i qi =
            _mm512_maskz_cvttps_epi32(valid, _mm512_min_ps(t, _mm512_set1_ps(n_bins)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.data() + g * gs + j),
                         _mm512_cvtepi32_epi8(qi));
      }
      store_from_f32(scales, dtype, r * groups + g, params.scale);
      store_from_f32(biases, dtype, r * groups + g, params.bias);
    }
    for (size_t c = 0; c < cols; c += 64) {
      pack(q.data() + c, std::min<size_t>(64, cols - c),
           out_bytes + r * row_bytes + c * spec.bits / 8);
    }
  }
}

}  // namespace nx_quant::avx512
