// AVX-512 fused quantized matmul (F, BW, VL, DQ, VBMI); unpacking in unpack_avx512.h.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "gemv_loops.h"
#include "row_params_avx512.h"
#include "simd_kernels.h"
#include "transpose_avx512.h"
#include "unpack_avx512.h"
#include "unroll.h"

namespace nx_quant::avx512 {

namespace {

struct Params {  // one group's scale and bias, loaded as f32
  const void* scales;
  const void* biases;
  DType dtype;
  float scale(size_t i) const { return load_as_f32(scales, dtype, i); }
  float bias(size_t i) const { return load_as_f32(biases, dtype, i); }
};

template <typename T>
struct AlignedBuffer {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data;
  explicit AlignedBuffer(size_t count) {
    const size_t bytes = ((count * sizeof(T) + 63) / 64) * 64;
    data.reset(static_cast<T*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes)));
    if (!data) throw std::bad_alloc();
  }
  T* get() const { return data.get(); }
};

// ---- GEMV (transpose = true, small m) --------------------------------------------------------
// Per output: for each group g, t = sum over the group of q * x (16 lanes), acc += t * scale_g
// (16 lanes); result = reduce(acc) + sum_g bias_g * sum(x_g) (a fixed-order f32 dot). The order
// is fixed, so a result never depends on how rows are split over threads. MR rows of x and NW
// rows of W are computed together: independent FMA chains hide latency, and each unpacked
// chunk and each loaded x chunk is used MR resp. NW times. Bits and group size are template
// parameters, so the inner loop has constant trip counts and keeps every array in registers.
//
// 4 bits (the common case) skips the byte permute: 16 bytes hold 32 values, value 2j in the low
// nibble of byte j and 2j+1 in its high nibble. Zero-extending the bytes to 16 dwords, an AND
// gives the even values and a shift the odd ones, and x is reordered once per call to match
// ([16 even | 16 odd] per 32 values): 7 instructions per 32 weights instead of 12.
constexpr size_t kPrefetchBlocks = 2;  // W is prefetched into L2 this many NW-row blocks ahead

// Bits is 4 or 0 (any other width, through the generic unpacker).
template <int MR, int NW, int Bits, int GS>
void gemv_block(const float* x, size_t k_dim, const float* xsum, size_t groups, const uint8_t* rows,
                size_t row_bytes, const float* scales, const float* biases, const Unpacker& unpack,
                float* result /* [MR][NW] */) {
  constexpr bool kNibbles = Bits == 4;
  constexpr int kStepValues = kNibbles ? 32 : 16;  // values per unpack step
  constexpr int kSteps = GS / kStepValues;         // steps per group
  const size_t step_bytes = kNibbles ? 16 : unpack.chunk_bytes;
  const size_t group_bytes = kSteps * step_bytes;
  const __m512i low_nibble = _mm512_set1_epi32(0x0F);
  __m512 acc[MR][NW];
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (size_t g = 0; g < groups; ++g) {
    __m512 t[MR][NW][2];
    NXQ_UNROLL
    for (int r = 0; r < MR; ++r) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) t[r][v][0] = t[r][v][1] = _mm512_setzero_ps();
    }
    const uint8_t* group = rows + g * group_bytes;
    const float* xg = x + g * GS;
    // The NW rows are contiguous, so the same place NW rows further on is a later block's data.
    if (group_bytes >= 64 || (g * group_bytes) % 64 == 0) {
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(group + (v + kPrefetchBlocks * NW) * row_bytes),
                     _MM_HINT_T1);
      }
    }
    NXQ_UNROLL
    for (int c = 0; c < kSteps; ++c) {
      __m512 q0[NW], q1[NW];
      NXQ_UNROLL
      for (int v = 0; v < NW; ++v) {
        const uint8_t* p = group + v * row_bytes + c * step_bytes;
        if constexpr (kNibbles) {
          const __m512i b =
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
          q0[v] = _mm512_cvtepi32_ps(_mm512_and_si512(b, low_nibble));
          q1[v] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
        } else {
          q0[v] = unpack(p);
        }
      }
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        const float* xr = xg + r * k_dim + c * kStepValues;
        const __m512 x0 = _mm512_loadu_ps(xr);
        NXQ_UNROLL
        for (int v = 0; v < NW; ++v) {
          if constexpr (kNibbles) {
            t[r][v][0] = _mm512_fmadd_ps(q0[v], x0, t[r][v][0]);
            t[r][v][1] = _mm512_fmadd_ps(q1[v], _mm512_loadu_ps(xr + 16), t[r][v][1]);
          } else {
            t[r][v][c & 1] = _mm512_fmadd_ps(q0[v], x0, t[r][v][c & 1]);
          }
        }
      }
    }
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      const __m512 scale = _mm512_set1_ps(scales[v * groups + g]);
      NXQ_UNROLL
      for (int r = 0; r < MR; ++r) {
        acc[r][v] = _mm512_fmadd_ps(_mm512_add_ps(t[r][v][0], t[r][v][1]), scale, acc[r][v]);
      }
    }
  }
  NXQ_UNROLL
  for (int r = 0; r < MR; ++r) {
    NXQ_UNROLL
    for (int v = 0; v < NW; ++v) {
      result[r * NW + v] =
          _mm512_reduce_add_ps(acc[r][v]) + dot_f32(biases + v * groups, xsum + r * groups, groups);
    }
  }
}

// ---- GEMM ------------------------------------------------------------------------------------
constexpr size_t kNR = kGemmBlock;  // output columns per panel (two zmm)
constexpr size_t kKB = 256;         // K per panel: 256 x 32 f32 = 32 KB, L1/L2 resident
constexpr int kMR = 6;              // rows of x per microkernel call: 12 accumulators

// panel[k][0..32) = W[k0 + k][n0 .. n0 + 32) (W logical [K, N]), as f32 scale * q + bias.
// transpose = true: W is stored [N, K]; rows past N are zero.
void dequantize_panel_nk(const QuantizedMatrix& w, const Unpacker& unpack, size_t n0, size_t k0,
                         size_t kb, float* panel) {
  const Params params{w.scales.data, w.biases.data, w.dtype};
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * static_cast<size_t>(w.spec.bits) / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  for (size_t half = 0; half < 2; ++half) {
    for (size_t kc = 0; kc < kb; kc += 16) {
      __m512 r[16];
      for (size_t j = 0; j < 16; ++j) {
        const size_t n = n0 + half * 16 + j;
        if (n >= w.rows) {
          r[j] = _mm512_setzero_ps();
          continue;
        }
        const size_t k = k0 + kc;
        const size_t g = n * groups + k / gs;
        const __m512 q = unpack(bytes + n * row_bytes + (k / 16) * unpack.chunk_bytes);
        r[j] = _mm512_fmadd_ps(q, _mm512_set1_ps(params.scale(g)), _mm512_set1_ps(params.bias(g)));
      }
      transpose16(r);
      for (size_t i = 0; i < 16; ++i) _mm512_store_ps(panel + (kc + i) * kNR + half * 16, r[i]);
    }
  }
}

// transpose = false: W is stored [K, N] packed along N; n0 is a multiple of 32 and N of the
// group size (>= 32), so a panel's 32 columns are always present and inside one group.
void dequantize_panel_kn(const QuantizedMatrix& w, const Unpacker& unpack, size_t n0, size_t k0,
                         size_t kb, float* panel) {
  const Params params{w.scales.data, w.biases.data, w.dtype};
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = w.cols / gs;
  const size_t row_bytes = w.cols * static_cast<size_t>(w.spec.bits) / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);
  for (size_t k = 0; k < kb; ++k) {
    const size_t g = (k0 + k) * groups + n0 / gs;
    const __m512 scale = _mm512_set1_ps(params.scale(g));
    const __m512 bias = _mm512_set1_ps(params.bias(g));
    const uint8_t* row = bytes + (k0 + k) * row_bytes + (n0 / 16) * unpack.chunk_bytes;
    _mm512_store_ps(panel + k * kNR, _mm512_fmadd_ps(unpack(row), scale, bias));
    _mm512_store_ps(panel + k * kNR + 16,
                    _mm512_fmadd_ps(unpack(row + unpack.chunk_bytes), scale, bias));
  }
}

// c[r][0..32) += sum_k x[r][k] * panel[k][0..32) for r < MR, k < kb (k in order).
template <int MR>
void microkernel(const float* x, size_t ldx, const float* panel, size_t kb, float* c) {
  __m512 a0[MR], a1[MR];
  for (int r = 0; r < MR; ++r) {
    a0[r] = _mm512_loadu_ps(c + r * kNR);
    a1[r] = _mm512_loadu_ps(c + r * kNR + 16);
  }
  for (size_t k = 0; k < kb; ++k) {
    const __m512 b0 = _mm512_load_ps(panel + k * kNR);
    const __m512 b1 = _mm512_load_ps(panel + k * kNR + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r * ldx + k]);
      a0[r] = _mm512_fmadd_ps(xr, b0, a0[r]);
      a1[r] = _mm512_fmadd_ps(xr, b1, a1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * kNR, a0[r]);
    _mm512_storeu_ps(c + r * kNR + 16, a1[r]);
  }
}

void microkernel_tail(int rows, const float* x, size_t ldx, const float* panel, size_t kb,
                      float* c) {
  switch (rows) {
    case 1:
      return microkernel<1>(x, ldx, panel, kb, c);
    case 2:
      return microkernel<2>(x, ldx, panel, kb, c);
    case 3:
      return microkernel<3>(x, ldx, panel, kb, c);
    case 4:
      return microkernel<4>(x, ldx, panel, kb, c);
    case 5:
      return microkernel<5>(x, ldx, panel, kb, c);
    default:
      return microkernel<6>(x, ldx, panel, kb, c);
  }
}

void store_row(const float* values, size_t count, DType dtype, void* out, size_t offset) {
  if (dtype == DType::F32) {
    std::memcpy(static_cast<float*>(out) + offset, values, count * sizeof(float));
  } else {
    for (size_t j = 0; j < count; ++j) store_from_f32(out, dtype, offset + j, values[j]);
  }
}

}  // namespace

void gemv_nk(const float* x, size_t m, const QuantizedMatrix& w, DType out_dtype, size_t n_begin,
             size_t n_end, void* out) {
  const Unpacker unpack(w.spec.bits);
  const size_t k_dim = w.cols, n_dim = w.rows;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const size_t groups = k_dim / gs;
  const size_t row_bytes = k_dim * static_cast<size_t>(w.spec.bits) / 8;
  const auto* bytes = static_cast<const uint8_t*>(w.packed.data);

  // Group sums of x (for the bias term), in the same fixed order on every call.
  std::vector<float> xsum(m * groups);
  for (size_t i = 0; i < m * groups; ++i) {
    __m512 s = _mm512_setzero_ps();
    for (size_t c = 0; c < gs; c += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(x + i * gs + c));
    xsum[i] = _mm512_reduce_add_ps(s);
  }
  // 4 bits: x reordered [16 even | 16 odd] per 32 values (see gemv_block).
  std::vector<float> x_nibbles;
  if (w.spec.bits == 4) {
    x_nibbles = detail::even_odd_order(x, m * k_dim, 32);
    x = x_nibbles.data();
  }

  constexpr int kNW = 4;
  std::vector<float> scales(kNW * groups), biases(kNW * groups);
  float result[2 * kNW];
  auto load_rows = [&](auto nw, size_t n) {
    detail::prefetch_row_params(w, groups, n + kPrefetchBlocks * kNW, kNW);
    for (int v = 0; v < decltype(nw)::value; ++v) {
      params_to_f32(w.scales.data, w.dtype, (n + v) * groups, groups, scales.data() + v * groups);
      params_to_f32(w.biases.data, w.dtype, (n + v) * groups, groups, biases.data() + v * groups);
    }
  };
  auto run = [&](auto mr, auto nw, size_t n, size_t i0) {
    constexpr int MR = decltype(mr)::value, NW = decltype(nw)::value;
    const uint8_t* rows = bytes + n * row_bytes;
    auto block = [&](auto bits, auto group_size) {
      gemv_block<MR, NW, decltype(bits)::value, decltype(group_size)::value>(
          x + i0 * k_dim, k_dim, xsum.data() + i0 * groups, groups, rows, row_bytes, scales.data(),
          biases.data(), unpack, result);
    };
    // The generic unpacker takes the width at run time; 0 stands for "not 4 bits".
    detail::with_group_size(gs, [&](auto group_size) {
      w.spec.bits == 4 ? block(detail::Int<4>{}, group_size) : block(detail::Int<0>{}, group_size);
    });
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NW; ++v)
        store_from_f32(out, out_dtype, (i0 + r) * n_dim + n + v, result[r * NW + v]);
  };
  detail::for_gemv_blocks<kNW>(m, n_begin, n_end, load_rows, run);
}

void gemm(const float* x, size_t m, const QuantizedMatrix& w, bool transpose, DType out_dtype,
          size_t n_begin, size_t n_end, void* out) {
  const Unpacker unpack(w.spec.bits);
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  AlignedBuffer<float> panel(kKB * kNR);
  AlignedBuffer<float> c(m * kNR);
  for (size_t n0 = n_begin; n0 < n_end; n0 += kNR) {
    const size_t nr = std::min(kNR, n_dim - n0);
    std::fill(c.get(), c.get() + m * kNR, 0.0f);
    for (size_t k0 = 0; k0 < k_dim; k0 += kKB) {
      const size_t kb = std::min(kKB, k_dim - k0);
      if (transpose) {
        dequantize_panel_nk(w, unpack, n0, k0, kb, panel.get());
      } else {
        dequantize_panel_kn(w, unpack, n0, k0, kb, panel.get());
      }
      for (size_t i0 = 0; i0 < m; i0 += kMR) {
        const int rows = static_cast<int>(std::min<size_t>(kMR, m - i0));
        microkernel_tail(rows, x + i0 * k_dim + k0, k_dim, panel.get(), kb, c.get() + i0 * kNR);
      }
    }
    for (size_t i = 0; i < m; ++i) store_row(c.get() + i * kNR, nr, out_dtype, out, i * n_dim + n0);
  }
}

}  // namespace nx_quant::avx512
