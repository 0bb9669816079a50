// ExecOptions::batch_invariant (see batch_invariant.h): every m runs through row blocks of a
// decode GEMV, so the GEMV/GEMM boundary, whose two sides sum in different orders, is never
// crossed. The kernels used here compute each output in an order fixed by the shape of W:
//   AVX-512  transpose: 4 bits with bf16 x (AVX512_BF16) gemv_nk_4bit_bf16, every row in a
//            pair (its chains differ between a lone row and a pair, so an odd block gets a
//            zero row); 2 and 4 bits otherwise gemv_nk_f32lut, 3/5/6 bits AVX2's gemv_nk_lut,
//            8 bits gemv_nk; [K, N]:
//            the sliced gemv_kn (slices depend on W's shape only); int8 (VNNI): gemv_nk_int8.
//   AVX2     transpose: gemv_nk_lut (int8: gemv_nk_int8); [K, N]: the GEMM, whose microkernel
//            sums each output over k in order whatever the number of rows beside it.
//   NEON     gemv_nk / gemv_kn; int8: the dotprod kernel (the i8mm one pairs rows).
//   portable the scalar loops, one fixed order per output.
// Precision::Int8 then applies at every m (not only below 8 rows), so a row's result is the
// same alone or in any batch.
#include "batch_invariant.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "int8_activations.h"
#include "microscaled/microscaled.h"
#include "parallel.h"
#include "portable/portable.h"
#if defined(__x86_64__)
#include "simd_kernels.h"
#include "x86/avx2/gemv_avx2.h"
#endif
#if defined(__aarch64__)
#include "arm/neon/neon_kernels.h"
#endif

namespace nx_quant::detail {

namespace {

// f(i0, rows) over [0, m) in blocks of kInvariantRowBlock rows of x.
template <typename F>
void for_row_blocks(size_t m, F&& f) {
  for (size_t i0 = 0; i0 < m; i0 += kInvariantRowBlock) {
    f(i0, std::min(kInvariantRowBlock, m - i0));
  }
}

void* out_row(void* out, DType out_dtype, size_t i0, size_t n_dim) {
  return static_cast<char*>(out) + i0 * n_dim * dtype_size(out_dtype);
}

}  // namespace

void batch_invariant_matmul(const float* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                            bool transpose, DType out_dtype, void* out, KernelChoice kernel,
                            const ExecOptions& options) {
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  const size_t gs = static_cast<size_t>(w.spec.group_size);
  const bool int8 = options.precision == Precision::Int8 && transpose;
  const int threads = options.threads;
  const auto& cpu = cpu_features();
  (void)cpu;
  auto rows = [&](size_t i0) { return x + i0 * k_dim; };
#if defined(__x86_64__)
  if (kernel == KernelChoice::Avx512) {
    if (int8 && cpu.avx512_vnni) {
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        const auto xa = quantize_activations(rows(i0), mb, k_dim, gs);
        const auto operand = avx512::prepare_int8(xa, w.spec.bits);
        void* o = out_row(out, out_dtype, i0, n_dim);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          avx512::gemv_nk_int8(operand, w, out_dtype, begin, end, o);
        });
      });
    }
    if (transpose && w.spec.bits == 4 && x_dtype == DType::BF16 && cpu.avx512_bf16) {
      // bf16 x: one bf16 part per value, the fastest exact 4-bit GEMV; rows always in pairs.
      std::vector<float> padded;
      std::vector<uint8_t> scratch;
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        const float* xb = rows(i0);
        void* o = out_row(out, out_dtype, i0, n_dim);
        const size_t row_out = n_dim * dtype_size(out_dtype);
        if (mb % 2 == 1) {
          padded.assign((mb + 1) * k_dim, 0.0f);
          std::copy(xb, xb + mb * k_dim, padded.begin());
          scratch.resize((mb + 1) * row_out);
          xb = padded.data();
        }
        const size_t mp = mb + mb % 2;
        void* ob = mb % 2 == 1 ? scratch.data() : o;
        const auto xs = avx512::prepare_bf16(xb, mp, k_dim, w.spec.group_size);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          avx512::gemv_nk_4bit_bf16(xs, w, out_dtype, begin, end, ob);
        });
        if (ob != o) std::memcpy(o, scratch.data(), mb * row_out);
      });
    }
    if (transpose && (w.spec.bits == 2 || w.spec.bits == 4)) {
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        const auto xs = avx512::prepare_f32(rows(i0), mb, k_dim, w.spec.group_size, w.spec.bits);
        void* o = out_row(out, out_dtype, i0, n_dim);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          avx512::gemv_nk_f32lut(xs, w, out_dtype, begin, end, o);
        });
      });
    }
    if (transpose && (w.spec.bits == 3 || w.spec.bits == 5 || w.spec.bits == 6)) {
      // As plan_avx512.cpp: these widths take the AVX2 in-place GEMV on AVX-512 CPUs too.
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        const auto xs = avx2::prepare_lut(rows(i0), mb, k_dim, w.spec.group_size, w.spec.bits);
        void* o = out_row(out, out_dtype, i0, n_dim);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          avx2::gemv_nk_lut(xs, w, out_dtype, begin, end, o);
        });
      });
    }
    if (transpose) {
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        void* o = out_row(out, out_dtype, i0, n_dim);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          avx512::gemv_nk(rows(i0), mb, w, out_dtype, begin, end, o);
        });
      });
    }
    return for_row_blocks(m, [&](size_t i0, size_t mb) {
      avx512::KnPartials partials(mb, w);
      const float* xb = rows(i0);
      if (partials.slices > 1) {
        parallel_for(partials.slices, 1, threads, [&](size_t begin, size_t end) {
          for (size_t s = begin; s < end; ++s) avx512::gemv_kn_slice(xb, w, s, 0, n_dim, partials);
        });
      } else if (partials.slices == 1) {
        parallel_for(n_dim, avx512::kGemvKnTile, threads, [&](size_t begin, size_t end) {
          avx512::gemv_kn_slice(xb, w, 0, begin, end, partials);
        });
      }
      void* o = out_row(out, out_dtype, i0, n_dim);
      parallel_for(n_dim, 64, threads, [&](size_t begin, size_t end) {
        avx512::gemv_kn_combine(partials, gs, out_dtype, begin, end, o);
      });
    });
  }
  if (kernel == KernelChoice::Avx2) {
    if (int8 && avx2::has_int8_path(w.spec.bits)) {
      const bool vnni = cpu.avx_vnni;
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        const auto xa = quantize_activations(rows(i0), mb, k_dim, gs);
        const auto operand = avx2::prepare_int8(xa, w.spec.bits);
        void* o = out_row(out, out_dtype, i0, n_dim);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          avx2::gemv_nk_int8(operand, w, out_dtype, begin, end, o, vnni);
        });
      });
    }
    if (transpose) {
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        const auto xs = avx2::prepare_lut(rows(i0), mb, k_dim, w.spec.group_size, w.spec.bits);
        void* o = out_row(out, out_dtype, i0, n_dim);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          avx2::gemv_nk_lut(xs, w, out_dtype, begin, end, o);
        });
      });
    }
    parallel_for(n_dim, avx2::kGemmBlock, threads, [&](size_t begin, size_t end) {
      avx2::gemm(x, m, w, false, out_dtype, begin, end, out);
    });
    return;
  }
#endif
#if defined(__aarch64__)
  if (kernel == KernelChoice::Neon) {
    if (int8 && cpu.neon_dotprod) {
      return for_row_blocks(m, [&](size_t i0, size_t mb) {
        const auto xa = quantize_activations(rows(i0), mb, k_dim, gs);
        void* o = out_row(out, out_dtype, i0, n_dim);
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          neon::gemv_nk_int8_dotprod(xa, w, out_dtype, begin, end, o);
        });
      });
    }
    return for_row_blocks(m, [&](size_t i0, size_t mb) {
      void* o = out_row(out, out_dtype, i0, n_dim);
      if (transpose) {
        parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
          neon::gemv_nk(rows(i0), mb, w, out_dtype, begin, end, o);
        });
      } else {
        parallel_for(n_dim, neon::kGemmBlock, threads, [&](size_t begin, size_t end) {
          neon::gemv_kn(rows(i0), mb, w, out_dtype, begin, end, o);
        });
      }
    });
  }
#endif
  // Portable (and any kernel without a plan above).
  for_row_blocks(m, [&](size_t i0, size_t mb) {
    void* o = out_row(out, out_dtype, i0, n_dim);
    if (int8) {
      const auto xa = quantize_activations(rows(i0), mb, k_dim, gs);
      parallel_for(n_dim, 1, threads, [&](size_t begin, size_t end) {
        portable::matmul_nk_int8(xa, w, out_dtype, begin, end, o);
      });
      return;
    }
    parallel_for(n_dim, transpose ? 1 : gs, threads, [&](size_t begin, size_t end) {
      portable::matmul(rows(i0), mb, w, transpose, out_dtype, begin, end, o);
    });
  });
}

void batch_invariant_microscaled_matmul(const void* x, DType x_dtype, size_t m,
                                        const QuantizedMatrix& w, bool transpose, DType out_dtype,
                                        void* out, KernelChoice kernel, int threads,
                                        Precision precision) {
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  const size_t x_row = k_dim * dtype_size(x_dtype), out_row = n_dim * dtype_size(out_dtype);
  for (size_t i = 0; i < m; i += kInvariantRowBlock) {
    const size_t rows = std::min(kInvariantRowBlock, m - i);
    microscaled::quantized_matmul(static_cast<const uint8_t*>(x) + i * x_row, x_dtype, rows, w,
                                  transpose, out_dtype, static_cast<uint8_t*>(out) + i * out_row,
                                  kernel, threads, precision);
  }
}

}  // namespace nx_quant::detail
