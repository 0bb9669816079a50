// Which microscaled implementation runs for a (validated) call.
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "microscaled/int8/int8.h"
#include "microscaled/microscaled.h"
#include "microscaled/quantize_fast.h"
#include "parallel.h"

namespace nx_quant::microscaled {

void quantize(const void* dense, DType dtype, size_t rows, size_t cols, const QuantSpec& spec,
              uint32_t* packed, uint8_t* scales, KernelChoice kernel, int threads) {
  // Every choice but Reference runs the fast quantizer (quantize_fast.h), byte for byte the
  // reference's results; the SIMD kernels where the choice has them.
  auto run = fast::quantize_rows;
  if (kernel == KernelChoice::Reference) run = reference::quantize_rows;
#if defined(__x86_64__)
  if (kernel == KernelChoice::Avx512) run = avx512::quantize_rows;
  if (kernel == KernelChoice::Avx2) run = avx2::quantize_rows;
#endif
  detail::parallel_for(rows, 1, threads, [&](size_t begin, size_t end) {
    run(dense, dtype, cols, spec, begin, end, packed, scales);
  });
}

void dequantize(const QuantizedMatrix& w, void* out, bool transpose_out, KernelChoice kernel,
                int threads) {
  if (kernel == KernelChoice::Reference) {
    reference::dequantize(w, out, transpose_out);
    return;
  }
  detail::parallel_for(w.rows, 1, threads, [&](size_t begin, size_t end) {
    portable::dequantize_rows(w, transpose_out, begin, end, out);
  });
}

void quantized_matmul(const void* x, DType x_dtype, size_t m, const QuantizedMatrix& w,
                      bool transpose, DType out_dtype, void* out, KernelChoice kernel, int threads,
                      Precision precision) {
  if (kernel == KernelChoice::Reference) {
    reference::quantized_matmul(x, x_dtype, m, w, transpose, out_dtype, out);
    return;
  }
  const size_t k_dim = transpose ? w.cols : w.rows;
  const size_t n_dim = transpose ? w.rows : w.cols;
  std::vector<float> xf(m * k_dim);
  for (size_t i = 0; i < xf.size(); ++i) xf[i] = load_as_f32(x, x_dtype, i);
  if (precision == Precision::Int8 && transpose && m <= kGemvMaxRows &&
      int8::has_int8_path(w.spec.mode) && kernel != KernelChoice::Neon) {
    const auto xa =
        detail::quantize_activations(xf.data(), m, k_dim, static_cast<size_t>(w.spec.group_size));
#if defined(__x86_64__)
    if (kernel == KernelChoice::Avx512 || kernel == KernelChoice::Avx2) {
      const auto xo = int8::prepare(xa, w.spec.mode);
      const detail::CpuFeatures& cpu = detail::cpu_features();
      const bool evex = kernel == KernelChoice::Avx512 && cpu.avx512_vnni;
      detail::parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
        if (evex) {
          int8::gemv_avx512(xo, w, out_dtype, begin, end, out);
        } else {
          int8::gemv_avx2(xo, w, out_dtype, begin, end, out, cpu.avx_vnni);
        }
      });
      return;
    }
#endif
    detail::parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
      int8::gemv_portable(xa, w, out_dtype, begin, end, out);
    });
    return;
  }
#if defined(__x86_64__)
  if (kernel == KernelChoice::Avx512 || kernel == KernelChoice::Avx2) {
    const bool avx512 = kernel == KernelChoice::Avx512;
    if (!transpose || m > kGemvMaxRows) {
      // 64-column pieces for transpose = false: whole groups, whole 32-column panels.
      detail::parallel_for(n_dim, transpose ? 32 : 64, threads, [&](size_t begin, size_t end) {
        if (!transpose) {
          (avx512 ? avx512::matmul_kn : avx2::matmul_kn)(xf.data(), m, w, out_dtype, begin, end,
                                                         out);
        } else {
          (avx512 ? avx512::gemm_nk : avx2::gemm_nk)(xf.data(), m, w, out_dtype, begin, end, out);
        }
      });
      return;
    }
  }
  if (transpose && kernel == KernelChoice::Avx512) {
    const avx512::XOperand xo = avx512::prepare_x(xf.data(), m, w);
    detail::parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
      avx512::gemv_nk(xo, w, out_dtype, begin, end, out);
    });
    return;
  }
  if (transpose && kernel == KernelChoice::Avx2) {
    if (w.spec.bits == 4) xf = avx2::prepare_x4(xf.data(), m, k_dim);
    detail::parallel_for(n_dim, 8, threads, [&](size_t begin, size_t end) {
      avx2::gemv_nk(xf.data(), m, w, out_dtype, begin, end, out);
    });
    return;
  }
#endif
#if defined(__aarch64__)
  if (kernel == KernelChoice::Neon) {
    detail::parallel_for(n_dim, transpose ? 8 : 64, threads, [&](size_t begin, size_t end) {
      if (!transpose) {
        neon::matmul_kn(xf.data(), m, w, out_dtype, begin, end, out);
      } else if (m > kGemvMaxRows) {
        neon::gemm_nk(xf.data(), m, w, out_dtype, begin, end, out);
      } else {
        neon::gemv_nk(xf.data(), m, w, out_dtype, begin, end, out);
      }
    });
    return;
  }
#endif
  // transpose = false splits columns on 64-column boundaries (whole groups, whole words).
  detail::parallel_for(n_dim, transpose ? 1 : 64, threads, [&](size_t begin, size_t end) {
    portable::matmul(xf.data(), m, w, transpose, out_dtype, begin, end, out);
  });
}

}  // namespace nx_quant::microscaled
