#include "cpu_features.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
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
  const bool leaf7_1 = __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx);
  const bool bf16 = leaf7_1 && (eax & (1u << 5)) != 0;
  const bool avx_vnni = leaf7_1 && (eax & (1u << 4)) != 0;
  f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  f.avx_vnni = f.avx2_fma && avx_vnni;
  f.avx512 = f.avx2_fma && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vbmi");
  f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
  f.avx512_bf16 = f.avx512 && bf16;
#endif
#if defined(__aarch64__) && defined(__linux__)
  // Bits of <asm/hwcap.h>, spelled out for older headers.
  constexpr unsigned long kHwcapAsimd = 1ul << 1, kHwcapAsimdDp = 1ul << 20;
  constexpr unsigned long kHwcap2I8mm = 1ul << 13;
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  f.neon = (hwcap & kHwcapAsimd) != 0;
  f.neon_dotprod = f.neon && (hwcap & kHwcapAsimdDp) != 0;
  f.neon_i8mm = f.neon_dotprod && (hwcap2 & kHwcap2I8mm) != 0;
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is part of every AArch64 CPU; the extensions stay off
#endif
  return f;
}

struct State {
  CpuFeatures features;
  std::optional<IsaLevel> cap;
};

State read_state() {
  State s;
  const char* text = std::getenv("NX_QUANT_MAX_ISA");
  s.cap = parse_isa_level(text);
  if (!s.cap && text != nullptr && *text != '\0') {
    std::fprintf(
        stderr,
        "nx_quant: ignoring NX_QUANT_MAX_ISA=%s (expected avx512, avx2, neon or portable)\n", text);
  }
  s.features = s.cap ? capped(detect(), *s.cap) : detect();
  return s;
}

State& state() {
  static State s = read_state();
  return s;
}

bool equals_ignoring_case(const char* text, const char* word) {
  for (; *text != '\0' && *word != '\0'; ++text, ++word) {
    if (std::tolower(static_cast<unsigned char>(*text)) != *word) return false;
  }
  return *text == '\0' && *word == '\0';
}

}  // namespace

const CpuFeatures& cpu_features() {
  return state().features;
}

std::optional<IsaLevel> isa_cap() {
  return state().cap;
}

std::optional<IsaLevel> parse_isa_level(const char* text) {
  if (text == nullptr) return std::nullopt;
  for (IsaLevel level : {IsaLevel::Avx512, IsaLevel::Avx2, IsaLevel::Neon, IsaLevel::Portable}) {
    if (equals_ignoring_case(text, isa_level_name(level))) return level;
  }
  return std::nullopt;
}

const char* isa_level_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::Avx512:
      return "avx512";
    case IsaLevel::Avx2:
      return "avx2";
    case IsaLevel::Neon:
      return "neon";
    default:
      return "portable";
  }
}

CpuFeatures capped(CpuFeatures f, IsaLevel cap) {
  if (cap < IsaLevel::Avx512) f.avx512 = f.avx512_vnni = f.avx512_bf16 = false;
  if (cap < IsaLevel::Avx2) f.avx2_fma = f.avx_vnni = false;
  if (cap <= IsaLevel::Neon) f.neon_dotprod = f.neon_i8mm = false;
  if (cap < IsaLevel::Neon) f.neon = false;
  return f;
}

ScopedCpuFeatures::ScopedCpuFeatures(const CpuFeatures& allowed) : saved_(cpu_features()) {
  CpuFeatures& f = state().features;
  f.avx2_fma = f.avx2_fma && allowed.avx2_fma;
  f.avx_vnni = f.avx_vnni && allowed.avx_vnni;
  f.avx512 = f.avx512 && allowed.avx512;
  f.avx512_vnni = f.avx512_vnni && allowed.avx512_vnni;
  f.avx512_bf16 = f.avx512_bf16 && allowed.avx512_bf16;
  f.neon = f.neon && allowed.neon;
  f.neon_dotprod = f.neon_dotprod && allowed.neon_dotprod;
  f.neon_i8mm = f.neon_i8mm && allowed.neon_i8mm;
}

ScopedCpuFeatures::~ScopedCpuFeatures() {
  state().features = saved_;
}

}  // namespace nx_quant::detail
