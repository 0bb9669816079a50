// AVX-512 VNNI GEMV for the opt-in int8 fast mode (Precision::Int8; transpose = true, small m).
//
// Each step unpacks one "chunk" of a W row into unsigned bytes and multiplies them with the
// matching int8 activations by vpdpbusd, which sums 4 neighbouring byte products into each of
// 16 int32 lanes. Two chunk layouts:
//   * 4 bits (the common case): one 64-byte load holds 128 values, value 2j in byte j's low
//     nibble and 2j+1 in its high nibble. An AND and a shift+AND split it into the even and
//     the odd values, and x is stored reordered the same way ([even | odd] per 128), so two
//     vpdpbusd leave in lane L the dot of values 8L..8L+7: no shuffles at all.
//   * any width: 64 values fill 8*b bytes, and qword i of them is bytes [i*b, i*b + 8). A
//     byte permute (vpermb) places those bytes, a multishift (vpmultishiftqb) pulls value j
//     of each qword from bit j*b, a mask keeps b bits: 64 bytes in natural order, lane L
//     holding the dot of values 4L..4L+3.
// Each lane's int32 sum is converted to f32 and multiplied by its 32-value block's d and its
// group's scale; the bias term is one f32 dot of the row's biases with x's group sums.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gemv_loops.h"
#include "row_params_avx512.h"
#include "simd_kernels.h"
#include "unroll.h"

namespace nx_quant::avx512 {

namespace {

// How many blocks of NW rows ahead the W stream is prefetched (chosen by measurement).
constexpr size_t kPrefetchBlocks = 2;

__mmask64 byte_mask(size_t bytes) {
  return bytes >= 64 ? ~__mmask64{0} : _cvtu64_mask64((uint64_t{1} << bytes) - 1);
}

// How a W row is cut into chunks, and which loads cover them.
struct ChunkPlan {
  bool nibbles;        // the 4-bit layout (128 values per chunk) or the generic one (64)
  size_t values;       // values per chunk
  size_t chunk_bytes;  // packed bytes per full chunk
  size_t chunks;       // chunks per row: the last one may be partial
  size_t full_chunks;
  __mmask64 full_load, last_load;
  __m512i index, bit_offsets, value_mask;  // generic unpack

  ChunkPlan(int bits, size_t k) {
    nibbles = bits == 4;
    values = nibbles ? 128 : 64;
    chunk_bytes = values * static_cast<size_t>(bits) / 8;
    chunks = (k + values - 1) / values;
    full_chunks = k / values;
    full_load = byte_mask(chunk_bytes);
    last_load = byte_mask((k % values) * static_cast<size_t>(bits) / 8);
    alignas(64) uint8_t idx[64];
    alignas(64) uint8_t off[64];
    for (int i = 0; i < 8; ++i) {
      for (int j = 0; j < 8; ++j) {
        idx[8 * i + j] = static_cast<uint8_t>(std::min(63, i * bits + j));
        off[8 * i + j] = static_cast<uint8_t>(j * bits);
      }
    }
    index = _mm512_load_si512(idx);
    bit_offsets = _mm512_load_si512(off);
    value_mask = _mm512_set1_epi8(static_cast<char>((1 << bits) - 1));
  }

  __m512i unpack_generic(const uint8_t* p, __mmask64 load) const {
    __m512i v = _mm512_maskz_loadu_epi8(load, p);
    v = _mm512_permutexvar_epi8(index, v);
    v = _mm512_multishift_epi64_epi8(bit_offsets, v);
    return _mm512_and_si512(v, value_mask);
  }
};

}  // namespace

Int8Operand prepare_int8(const detail::Int8Activations& xa, int bits) {
  const ChunkPlan plan(bits, xa.k);
  Int8Operand p;
  p.source = &xa;
  p.q_stride = xa.k_padded;
  p.d_stride = plan.chunks * 16;
  const size_t blocks = xa.k_padded / detail::kInt8Block;
  if (plan.nibbles) {
    p.q.resize(xa.q.size());
    for (size_t i = 0; i < xa.m * xa.k_padded; i += 128) {
      for (size_t j = 0; j < 64; ++j) {
        p.q[i + j] = xa.q[i + 2 * j];
        p.q[i + 64 + j] = xa.q[i + 2 * j + 1];
      }
    }
  } else {
    p.q = xa.q;
  }
  p.d.resize(xa.m * p.d_stride);
  const size_t lane_values = plan.values / 16;
  for (size_t i = 0; i < xa.m; ++i) {
    for (size_t c = 0; c < plan.chunks; ++c) {
      for (size_t l = 0; l < 16; ++l) {
        const size_t block = (c * plan.values + l * lane_values) / detail::kInt8Block;
        p.d[i * p.d_stride + c * 16 + l] = xa.d[i * blocks + block];
      }
    }
  }
  return p;
}

namespace {

// Rows n .. n+NW of W against rows i0 .. i0+MR of x. Bit packing (Nibbles) and group size (GS)
// are template parameters so that every index below is a compile-time shift: the inner loop has
// no division, no branch and, once unrolled, keeps lo/hi/scale/acc in registers.
template <int MR, int NW, bool Nibbles, int GS, DType PD>
void gemv_int8_block(const Int8Operand& x, const float* xsum, size_t i0, const ChunkPlan& plan,
                     const uint8_t* rows, size_t row_bytes, const ParamRows<PD>& params,
                     size_t groups, float* result /* [MR][NW] */) {
  constexpr int kValues = Nibbles ? 128 : 64;  // values per chunk, 16 int32 lanes
  constexpr int kGroupsPerChunk = kValues >= GS ? kValues / GS : 1;
  const __m512i zero = _mm512_setzero_si512();
  const __m512i low_nibble = _mm512_set1_epi8(0x0F);
  const int8_t* xq[MR];
  const float* xd[MR];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    xq[r] = x.q.data() + (i0 + r) * x.q_stride;
    xd[r] = x.d.data() + (i0 + r) * x.d_stride;
  }
  __m512 acc[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm512_setzero_ps();
  }

  auto step = [&](size_t c, __mmask64 load, int live_groups) NXQ_ALWAYS_INLINE {
    const size_t byte = c * plan.chunk_bytes;
    __m512i lo[NW], hi[NW];
    __m512 scale[NW];
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const uint8_t* p = rows + v * row_bytes + byte;
      // W streams from DRAM once; the NW rows are contiguous, so the same place in the next
      // NW rows is the next block's data: ask for it into L2 a block ahead, once per line.
      if (Nibbles || (byte & 63) < plan.chunk_bytes) {
        _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * NW * row_bytes),
                     _MM_HINT_T1);
      }
      if constexpr (Nibbles) {
        const __m512i raw = _mm512_maskz_loadu_epi8(load, p);
        lo[v] = _mm512_and_si512(raw, low_nibble);
        hi[v] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibble);
      } else {
        lo[v] = plan.unpack_generic(p, load);
      }
      scale[v] = chunk_scales<kValues, GS, PD>(params.scale_row(v), c, live_groups);
    }
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512i x0 = _mm512_loadu_si512(xq[r] + c * kValues);
      const __m512 d = _mm512_loadu_ps(xd[r] + c * 16);
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        __m512i dot = _mm512_dpbusd_epi32(zero, lo[v], x0);
        if constexpr (Nibbles) {
          dot = _mm512_dpbusd_epi32(dot, hi[v], _mm512_loadu_si512(xq[r] + c * kValues + 64));
        }
        acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, scale[v]), acc[r][v]);
      }
    }
  };
  for (size_t c = 0; c < plan.full_chunks; ++c) step(c, plan.full_load, kGroupsPerChunk);
  if (plan.chunks > plan.full_chunks) {
    step(plan.full_chunks, plan.last_load, static_cast<int>(x.source->k % kValues / GS));
  }

  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      result[r * NW + v] = _mm512_reduce_add_ps(acc[r][v]) +
                           bias_dot<PD>(params.bias_row(v), xsum + (i0 + r) * groups, groups);
    }
  }
}

}  // namespace

void gemv_nk_int8(const Int8Operand& x, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
                  size_t n_end, void* out) {
  const detail::Int8Activations& xa = *x.source;
  const size_t m = xa.m, k_dim = w.cols, n_dim = w.rows;
  const ChunkPlan plan(w.spec.bits, k_dim);
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = k_dim / gs;
  const size_t row_bytes = k_dim * static_cast<size_t>(w.spec.bits) / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);

  constexpr int kNW = 4;
  RowParams<kNW> params(w, groups);
  float result[2 * kNW];

  auto load_rows = [&](auto nw, size_t n) {
    params.load(w, n, decltype(nw)::value, kPrefetchBlocks * kNW);
  };
  auto run = [&](auto mr, auto nw, size_t n, size_t i0) {
    constexpr int MR = decltype(mr)::value, NW = decltype(nw)::value;
    const uint8_t* rows = bytes + n * row_bytes;
    auto block = [&](auto nibbles, auto group_size) {
      auto with_params = [&](const auto& p) {
        gemv_int8_block<MR, NW, decltype(nibbles)::value, decltype(group_size)::value,
                        std::decay_t<decltype(p)>::kDType>(x, xa.group_sum.data(), i0, plan, rows,
                                                           row_bytes, p, groups, result);
      };
      with_row_params(w, params, n, with_params);
    };
    detail::with_group_size(gs, [&](auto group_size) {
      plan.nibbles ? block(std::true_type{}, group_size) : block(std::false_type{}, group_size);
    });
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NW; ++v)
        store_from_f32(out, out_dtype, (i0 + r) * n_dim + n + v, result[r * NW + v]);
  };
  detail::for_gemv_blocks<kNW>(m, n_begin, n_end, load_rows, run);
}

}  // namespace nx_quant::avx512
