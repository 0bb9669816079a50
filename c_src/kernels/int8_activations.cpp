#include "int8_activations.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nx_quant::detail {

namespace {

// Round half to even for |v| < 2^22 without a libm call: adding 1.5 * 2^23 leaves no fraction
// bits, so the FPU's own round-to-nearest-even does the rounding.
inline float round_small(float v) {
  constexpr float magic = 12582912.0f;
  return (v + magic) - magic;
}

}  // namespace

Int8Activations quantize_activations(const float* x, size_t m, size_t k, size_t group_size) {
  Int8Activations a;
  a.m = m;
  a.k = k;
  a.k_padded = (k + 127) / 128 * 128;
  const size_t blocks = a.k_padded / kInt8Block;
  const size_t groups = k / group_size;
  a.q.assign(m * a.k_padded, 0);
  a.d.assign(m * blocks, 0.0f);
  a.group_sum.assign(m * groups, 0.0f);
  for (size_t i = 0; i < m; ++i) {
    const float* row = x + i * k;
    for (size_t b = 0; b < k / kInt8Block; ++b) {
      const float* v = row + b * kInt8Block;
      float amax = 0.0f;
      bool finite = true;
      for (size_t j = 0; j < kInt8Block; ++j) {
        finite = finite && std::isfinite(v[j]);
        amax = std::max(amax, std::fabs(v[j]));
      }
      if (!finite) {
        a.d[i * blocks + b] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const float inv = 127.0f / amax;
      // amax == 0, or so tiny (< 127 / FLT_MAX) that 1/d overflows: the block counts as zero.
      if (!(inv <= std::numeric_limits<float>::max())) continue;
      a.d[i * blocks + b] = amax / 127.0f;
      int8_t* q = a.q.data() + i * a.k_padded + b * kInt8Block;
      for (size_t j = 0; j < kInt8Block; ++j) {
        const float r = std::min(127.0f, std::max(-127.0f, round_small(v[j] * inv)));
        q[j] = static_cast<int8_t>(r);
      }
    }
    for (size_t g = 0; g < groups; ++g) {
      float s = 0.0f;
      for (size_t j = 0; j < group_size; ++j) s += row[g * group_size + j];
      a.group_sum[i * groups + g] = s;
    }
  }
  return a;
}

}  // namespace nx_quant::detail
