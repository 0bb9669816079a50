// AVX-512 GEMV of the microscaled modes with transpose = true (w is [N, K]), any m (rows of x in
// pairs). Blocks of 4 rows of W are read together (4 streams) and prefetched into L2 two blocks
// ahead, their scale bytes too; x is rearranged once per call (prepare_x) to match the order in
// which the weights come out of a 64-byte load.
//   - 4-bit (mxfp4, nvfp4), 128 columns per load: lane L of a 16-word vector holds columns
//     8L .. 8L+7. With x exactly bf16 (bf16 activations, or f32 ones that happen to be) and
//     AVX512_BF16: vpermw of the 16-bit words shifted by 4j looks nibble j up in a 32-entry bf16
//     table of the E2M1 values (twice over: vpermw reads 5 index bits) and vdpbf16ps multiplies
//     32 pairs at once (lane L sums words 2L, 2L+1: columns 8L+j, 8L+4+j). Otherwise vpermps of
//     the 32-bit words shifted by 4j looks up 16 f32 values and f32 FMAs multiply them.
//   - mxfp8, 64 columns per load: vpunpck{l,h}bw with zero puts each E4M3 byte in the high half
//     of a 16-bit lane; one arithmetic shift and a mask make it the f16 of value / 256, which
//     vcvtph2ps converts exactly (E4M3 subnormals included).
// Every product is exact (E2M1 has 2 significant bits, E4M3 4, x at most 24), sums are f32: a
// group's products, then times the group's scale into the output's accumulator. vdpbf16ps
// treats bf16 denormals as zero: an |x| < 2^-126 counts as 0.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"

namespace nx_quant::microscaled::avx512 {

namespace {

constexpr int kNW = 4;                 // W rows per block
constexpr size_t kPrefetchBlocks = 2;  // W (and its scales) prefetched this many blocks ahead

#define NXQ_MS_UNROLL _Pragma("GCC unroll 16")

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

__mmask64 byte_mask(size_t bytes) {
  return bytes >= 64 ? ~__mmask64{0} : _cvtu64_mask64((uint64_t{1} << bytes) - 1);
}

// Column (within its chunk) of lane `lane` of vector `vec`, per layout.
size_t column_4bit(size_t vec, size_t lane) {  // f32: 8 vectors of 16 per 128 columns
  return 8 * lane + vec;
}
size_t column_8bit(size_t vec, size_t lane) {  // f32: 4 vectors of 16 per 64 columns
  return (vec & 1) * 8 + (vec >> 1) * 32 + (lane < 8 ? lane : lane + 8);
}

// 16 scale bytes of a row from group g0 (fewer past the row's end: those read 0) as f32:
// mxfp4's E8M0 as the float with that exponent field (0 is the subnormal 2^-127), nvfp4's E4M3
// as f16 bits (value / 256). Decoded once per 4 (mxfp4) or 2 (nvfp4) 128-column steps.
template <bool Nv>
inline __attribute__((always_inline)) __m512 scales16(const uint8_t* row_scales, size_t g0,
                                                      size_t groups) {
  const size_t left = groups - g0;
  const __mmask16 live = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
  const __m128i b = _mm_maskz_loadu_epi8(live, row_scales + g0);
  if constexpr (Nv) {
    const __m256i w16 = _mm256_cvtepu8_epi16(b);
    return _mm512_cvtph_ps(_mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w16, 8), 1),
                                            _mm256_set1_epi16(-16512)));
  } else {
    const __m512i e = _mm512_cvtepu8_epi32(b);
    return _mm512_mask_mov_ps(_mm512_castsi512_ps(_mm512_slli_epi32(e, 23)),
                              _mm512_testn_epi32_mask(e, e),
                              _mm512_castsi512_ps(_mm512_set1_epi32(0x00400000)));
  }
}

// Step s of those: lane L (columns 8L .. 8L+7) gets its group's scale.
template <bool Nv>
inline __attribute__((always_inline)) __m512i step_index(int s) {
  return Nv ? _mm512_add_epi32(
                  _mm512_set1_epi32(8 * s),
                  _mm512_srli_epi32(
                      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1))
            : _mm512_add_epi32(
                  _mm512_set1_epi32(4 * s),
                  _mm512_srli_epi32(
                      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2));
}

struct Rows {
  const uint8_t* bytes;   // first row of the block
  const uint8_t* scales;  // its first scale byte
  size_t row_bytes, groups;
};

inline __attribute__((always_inline)) void prefetch_block_scales(const Rows& w, int nw) {
  const uint8_t* ahead = w.scales + kPrefetchBlocks * kNW * w.groups;
  for (size_t b = 0; b < static_cast<size_t>(nw) * w.groups; b += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(ahead + b), _MM_HINT_T1);
  }
}

// The chunk loop of the 4-bit blocks: step(c, load mask, the NW rows' 16 group scales, lane
// index) for every 128-value chunk c of the k columns. 16 groups' scales are loaded per 4
// (mxfp4) or 2 (nvfp4) steps; a partial last step reads zeros.
template <int NW, bool Nv, typename Step>
inline __attribute__((always_inline)) void for_each_4bit_step(size_t k, const Rows& w, Step& step) {
  constexpr int kGroupSize = Nv ? 16 : 32;
  constexpr int kSteps = Nv ? 2 : 4;
  const size_t full = k / 128, steps = (k + 127) / 128;
  const __mmask64 tail_load = byte_mask(k % 128 / 2);
  for (size_t c0 = 0; c0 < steps; c0 += kSteps) {
    __m512 g16[NW];
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v)
      g16[v] = scales16<Nv>(w.scales + v * w.groups, c0 * (128 / kGroupSize), w.groups);
    if (c0 + kSteps <= full) {
      NXQ_MS_UNROLL
      for (int s = 0; s < kSteps; ++s) step(c0 + s, ~__mmask64{0}, g16, step_index<Nv>(s));
    } else {
      for (int s = 0; s < kSteps && c0 + s < steps; ++s) {
        step(c0 + s, c0 + s < full ? ~__mmask64{0} : tail_load, g16, step_index<Nv>(s));
      }
    }
  }
}

// 4-bit, f32 x: rows i0 .. i0+MR of x against the NW rows of w; sums[r * NW + v].
template <int MR, int NW, bool Nv>
void block4_f32(const XOperand& x, size_t i0, const Rows& w, float* sums) {
  const __m512 lut = _mm512_loadu_ps(kE2m1Values);
  const float* xr[MR];
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) xr[r] = x.values.data() + (i0 + r) * x.row_stride;
  __m512 acc[MR][NW];
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  auto step = [&](size_t c, __mmask64 load, const __m512(&g16)[NW], __m512i index)
      __attribute__((always_inline)) {
    __m512i raw[NW];
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = w.bytes + v * w.row_bytes + 64 * c;
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * kNW * w.row_bytes),
                   _MM_HINT_T1);
      raw[v] = _mm512_maskz_loadu_epi8(load, p);
    }
    __m512 t[MR][NW];
    NXQ_MS_UNROLL
    for (int j = 0; j < 8; ++j) {
      __m512 q[NW];
      NXQ_MS_UNROLL
      for (int v = 0; v < NW; ++v) {
        q[v] = _mm512_permutexvar_ps(j == 0 ? raw[v] : _mm512_srli_epi32(raw[v], 4 * j), lut);
      }
      NXQ_MS_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 xv = _mm512_loadu_ps(xr[r] + 128 * c + 16 * j);
        NXQ_MS_UNROLL
        for (int v = 0; v < NW; ++v) {
          t[r][v] = j == 0 ? _mm512_mul_ps(q[v], xv) : _mm512_fmadd_ps(q[v], xv, t[r][v]);
        }
      }
    }
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) {
      const __m512 scale = _mm512_permutexvar_ps(index, g16[v]);
      NXQ_MS_UNROLL
      for (int r = 0; r < MR; ++r) acc[r][v] = _mm512_fmadd_ps(t[r][v], scale, acc[r][v]);
    }
  };
  for_each_4bit_step<NW, Nv>(x.k, w, step);
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) sums[r * NW + v] = _mm512_reduce_add_ps(acc[r][v]);
  }
}

// 4-bit, bf16 x (AVX512_BF16): as block4_f32 with vpermw + vdpbf16ps.
template <int MR, int NW, bool Nv>
void block4_bf16(const XOperand& x, size_t i0, const Rows& w, float* sums) {
  alignas(64) uint16_t bf16_of[32];
  for (int i = 0; i < 32; ++i)
    bf16_of[i] = static_cast<uint16_t>(f32_bits(kE2m1Values[i & 15]) >> 16);
  const __m512i table = _mm512_load_si512(bf16_of);
  constexpr int kChains = MR == 1 ? 2 : 1;
  const uint16_t* xw[MR];
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) xw[r] = x.words.data() + (i0 + r) * x.row_stride;
  __m512 acc[MR][NW];
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  auto step = [&](size_t c, __mmask64 load, const __m512(&g16)[NW], __m512i index)
      __attribute__((always_inline)) {
    __m512i raw[NW];
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = w.bytes + v * w.row_bytes + 64 * c;
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * kNW * w.row_bytes),
                   _MM_HINT_T1);
      raw[v] = _mm512_maskz_loadu_epi8(load, p);
    }
    __m512 t[MR][NW][kChains];
    NXQ_MS_UNROLL
    for (int r = 0; r < MR; ++r) {
      NXQ_MS_UNROLL
      for (int v = 0; v < NW; ++v) {
        NXQ_MS_UNROLL
        for (int h = 0; h < kChains; ++h) t[r][v][h] = _mm512_setzero_ps();
      }
    }
    NXQ_MS_UNROLL
    for (int j = 0; j < 4; ++j) {
      __m512bh q[NW];
      NXQ_MS_UNROLL
      for (int v = 0; v < NW; ++v) {
        const __m512i index = j == 0 ? raw[v] : _mm512_srli_epi16(raw[v], 4 * j);
        q[v] = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(index, table));
      }
      NXQ_MS_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512bh xs =
            reinterpret_cast<__m512bh>(_mm512_loadu_si512(xw[r] + 128 * c + 32 * j));
        NXQ_MS_UNROLL
        for (int v = 0; v < NW; ++v) {
          t[r][v][j % kChains] = _mm512_dpbf16_ps(t[r][v][j % kChains], q[v], xs);
        }
      }
    }
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) {
      const __m512 scale = _mm512_permutexvar_ps(index, g16[v]);
      NXQ_MS_UNROLL
      for (int r = 0; r < MR; ++r) {
        const __m512 s =
            kChains == 2 ? _mm512_add_ps(t[r][v][0], t[r][v][kChains - 1]) : t[r][v][0];
        acc[r][v] = _mm512_fmadd_ps(s, scale, acc[r][v]);
      }
    }
  };
  for_each_4bit_step<NW, Nv>(x.k, w, step);
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) sums[r * NW + v] = _mm512_reduce_add_ps(acc[r][v]);
  }
}

// mxfp8, f32 x: 64 columns (two groups) per load.
template <int MR, int NW>
void block8(const XOperand& x, size_t i0, const Rows& w, float* sums) {
  const float* e8m0 = tables().e8m0;
  const float* xr[MR];
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) xr[r] = x.values.data() + (i0 + r) * x.row_stride;
  __m512 acc[MR][NW];
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  const __m512i f16_mask = _mm512_set1_epi16(-16512);  // 0xBF80: sign, exponent, mantissa
  auto step = [&](size_t c, __mmask64 load, bool second) __attribute__((always_inline)) {
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = w.bytes + v * w.row_bytes + 64 * c;
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * kNW * w.row_bytes),
                   _MM_HINT_T1);
      const __m512i raw = _mm512_maskz_loadu_epi8(load, p);
      const __m512i lo = _mm512_and_si512(
          _mm512_srai_epi16(_mm512_unpacklo_epi8(_mm512_setzero_si512(), raw), 1), f16_mask);
      const __m512i hi = _mm512_and_si512(
          _mm512_srai_epi16(_mm512_unpackhi_epi8(_mm512_setzero_si512(), raw), 1), f16_mask);
      const __m512 a = _mm512_cvtph_ps(_mm512_castsi512_si256(lo));
      const __m512 b = _mm512_cvtph_ps(_mm512_castsi512_si256(hi));
      const __m512 cc = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(lo, 1));
      const __m512 d = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hi, 1));
      const uint8_t* s = w.scales + v * w.groups + 2 * c;
      const __m512 s0 = _mm512_set1_ps(e8m0[s[0]]);
      const __m512 s1 = second ? _mm512_set1_ps(e8m0[s[1]]) : _mm512_setzero_ps();
      NXQ_MS_UNROLL
      for (int r = 0; r < MR; ++r) {
        const float* xc = xr[r] + 64 * c;
        const __m512 g0 =
            _mm512_fmadd_ps(b, _mm512_loadu_ps(xc + 16), _mm512_mul_ps(a, _mm512_loadu_ps(xc)));
        const __m512 g1 = _mm512_fmadd_ps(d, _mm512_loadu_ps(xc + 48),
                                          _mm512_mul_ps(cc, _mm512_loadu_ps(xc + 32)));
        acc[r][v] = _mm512_fmadd_ps(g1, s1, _mm512_fmadd_ps(g0, s0, acc[r][v]));
      }
    }
  };
  const size_t full = x.k / 64;
  for (size_t c = 0; c < full; ++c) step(c, ~__mmask64{0}, true);
  if (x.k % 64 != 0) step(full, byte_mask(32), false);
  NXQ_MS_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_MS_UNROLL
    for (int v = 0; v < NW; ++v) sums[r * NW + v] = _mm512_reduce_add_ps(acc[r][v]);
  }
}

template <int MR, int NW>
void run_block(const XOperand& x, size_t i0, const Rows& rows, QuantMode mode, float* sums) {
  if (mode == QuantMode::Mxfp8) return block8<MR, NW>(x, i0, rows, sums);
  const bool nv = mode == QuantMode::Nvfp4;
  if (x.bf16) {
    return nv ? block4_bf16<MR, NW, true>(x, i0, rows, sums)
              : block4_bf16<MR, NW, false>(x, i0, rows, sums);
  }
  return nv ? block4_f32<MR, NW, true>(x, i0, rows, sums)
            : block4_f32<MR, NW, false>(x, i0, rows, sums);
}

}  // namespace

XOperand prepare_x(const float* x, size_t m, const QuantizedMatrix& w) {
  XOperand p;
  p.m = m;
  p.k = w.cols;
  const size_t k = w.cols;
  if (w.spec.bits == 4) {
    bool exact_bf16 = detail::cpu_features().avx512_bf16;
    for (size_t i = 0; exact_bf16 && i < m * k; ++i) exact_bf16 = (f32_bits(x[i]) & 0xFFFFu) == 0;
    p.bf16 = exact_bf16;
  }
  const size_t chunk = w.spec.bits == 4 ? 128 : 64;
  p.row_stride = (k + chunk - 1) / chunk * chunk;
  if (p.bf16) {
    // Per chunk and nibble position j: 32 words, word 2L + h = column 8L + 4h + j.
    p.words.assign(m * p.row_stride, 0);
    for (size_t i = 0; i < m; ++i) {
      for (size_t c = 0; c < p.row_stride; c += chunk) {
        for (size_t j = 0; j < 4; ++j) {
          for (size_t word = 0; word < 32; ++word) {
            const size_t col = c + 8 * (word / 2) + 4 * (word % 2) + j;
            if (col < k) {
              p.words[i * p.row_stride + c + 32 * j + word] =
                  static_cast<uint16_t>(f32_bits(x[i * k + col]) >> 16);
            }
          }
        }
      }
    }
    return p;
  }
  p.values.assign(m * p.row_stride, 0.0f);
  const size_t vectors = chunk / 16;
  for (size_t i = 0; i < m; ++i) {
    for (size_t c = 0; c < p.row_stride; c += chunk) {
      for (size_t vec = 0; vec < vectors; ++vec) {
        for (size_t lane = 0; lane < 16; ++lane) {
          const size_t col =
              c + (w.spec.bits == 4 ? column_4bit(vec, lane) : column_8bit(vec, lane));
          if (col < k) p.values[i * p.row_stride + c + 16 * vec + lane] = x[i * k + col];
        }
      }
    }
  }
  return p;
}

void gemv_nk(const XOperand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  const size_t k = w.cols;
  const size_t row_bytes = k * static_cast<size_t>(w.spec.bits) / 8;
  const size_t groups = k / static_cast<size_t>(w.spec.group_size);
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  const auto* scales = static_cast<const uint8_t*>(w.scales.data);
  const QuantMode mode = w.spec.mode;
  // f16-coded E4M3 values (mxfp8 elements, nvfp4 scales) are value / 256.
  float factor = mode == QuantMode::Mxfp4 ? 1.0f : 256.0f;
  const float global = mode == QuantMode::Nvfp4 && w.spec.global_scale != 0.0f
                           ? w.spec.global_scale / 2688.0f
                           : 1.0f;
  float sums[2 * kNW];
  auto rows_of_w = [&](auto nw, size_t n) {
    constexpr int NW = decltype(nw)::value;
    const Rows rows{bytes + n * row_bytes, scales + n * groups, row_bytes, groups};
    prefetch_block_scales(rows, NW);
    for (size_t i0 = 0; i0 < x.m; i0 += 2) {
      const int mr = x.m - i0 >= 2 ? 2 : 1;
      if (mr == 2) {
        run_block<2, NW>(x, i0, rows, mode, sums);
      } else {
        run_block<1, NW>(x, i0, rows, mode, sums);
      }
      for (int r = 0; r < mr; ++r) {
        for (int v = 0; v < NW; ++v) {
          store_from_f32(out, out_dtype, (i0 + r) * w.rows + n + v,
                         sums[r * NW + v] * factor * global);
        }
      }
    }
  };
  size_t n = n_begin;
  for (; n + kNW <= n_end; n += kNW) rows_of_w(std::integral_constant<int, kNW>{}, n);
  for (; n < n_end; ++n) rows_of_w(std::integral_constant<int, 1>{}, n);
}

}  // namespace nx_quant::microscaled::avx512
