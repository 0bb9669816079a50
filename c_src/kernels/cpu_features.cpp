#include "cpu_features.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

namespace nx_quant::detail {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0). F16C and
  // AVX512_BF16 are read from CPUID directly: clang 14's builtin knows neither name.
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
  const bool bf16 = __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0;
  f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  f.avx512 = f.avx2_fma && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vbmi");
  f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
  f.avx512_bf16 = f.avx512 && bf16;
#endif
  return f;
}

CpuFeatures& current() {
  static CpuFeatures features = detect();
  return features;
}

}  // namespace

const CpuFeatures& cpu_features() {
  return current();
}

ScopedCpuFeatures::ScopedCpuFeatures(const CpuFeatures& allowed) : saved_(current()) {
  CpuFeatures& f = current();
  f.avx2_fma = f.avx2_fma && allowed.avx2_fma;
  f.avx512 = f.avx512 && allowed.avx512;
  f.avx512_vnni = f.avx512_vnni && allowed.avx512_vnni;
  f.avx512_bf16 = f.avx512_bf16 && allowed.avx512_bf16;
}

ScopedCpuFeatures::~ScopedCpuFeatures() {
  current() = saved_;
}

}  // namespace nx_quant::detail
