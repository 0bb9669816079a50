// Runtime CPU-feature detection for kernel dispatch: one binary runs on any x86-64 or aarch64
// CPU (and the portable kernels everywhere else).
//
// NX_QUANT_MAX_ISA=avx512|avx2|neon|portable (read once, by the first cpu_features() call) caps
// what is reported, so every dispatch point runs the kernels of a lesser CPU: scripts/test uses
// it to test the AVX2 and portable paths on an AVX-512 machine, scripts/cross-test-arm64 the
// plain NEON and portable paths on an aarch64 CPU with dotprod and i8mm. `neon` keeps NEON
// without dotprod/i8mm (on x86 it means portable); the x86 levels leave aarch64 features as
// they are. Unset or empty: no cap; any other value is ignored with a warning on stderr.
#pragma once

#include <optional>

namespace nx_quant::detail {

struct CpuFeatures {
  bool avx2_fma = false;      // AVX2 + FMA + F16C
  bool avx_vnni = false;      // avx2_fma plus AVX-VNNI (VEX int8 dot products, AVX2's int8 path)
  bool avx512 = false;        // AVX-512 F, BW, VL, DQ and VBMI (byte permutes unpack any bit width)
  bool avx512_vnni = false;   // avx512 plus VNNI (int8 dot products, the Precision::Int8 path)
  bool avx512_bf16 = false;   // avx512 plus BF16 (bf16 dot products, the exact 4-bit GEMV)
  bool neon = false;          // aarch64 Advanced SIMD (HWCAP_ASIMD)
  bool neon_dotprod = false;  // neon plus SDOT/UDOT (HWCAP_ASIMDDP, the Precision::Int8 path)
  bool neon_i8mm = false;     // neon_dotprod plus USDOT/USMMLA (HWCAP2_I8MM)
};

// The dispatch levels NX_QUANT_MAX_ISA names, lowest first.
enum class IsaLevel { Portable, Neon, Avx2, Avx512 };

// What this CPU supports at or below NX_QUANT_MAX_ISA, narrowed while a ScopedCpuFeatures is
// alive.
const CpuFeatures& cpu_features();

// The cap NX_QUANT_MAX_ISA set (nullopt: none, or an unrecognised value).
std::optional<IsaLevel> isa_cap();

// NX_QUANT_MAX_ISA's value, case-insensitively: "avx512", "avx2", "neon" or "portable"; nullopt for
// anything else (including null and "").
std::optional<IsaLevel> parse_isa_level(const char* text);

// "avx512", "avx2", "neon" or "portable".
const char* isa_level_name(IsaLevel level);

// `features` with everything above `cap` switched off (avx512 also drops VNNI and BF16; neon
// drops dotprod and i8mm, portable everything).
CpuFeatures capped(CpuFeatures features, IsaLevel cap);

// Tests and benchmarks run every code path on one machine by switching features off (never
// on) for a scope. Not thread-safe: create it while no kernel runs.
class ScopedCpuFeatures {
 public:
  explicit ScopedCpuFeatures(const CpuFeatures& allowed);
  ~ScopedCpuFeatures();
  ScopedCpuFeatures(const ScopedCpuFeatures&) = delete;
  ScopedCpuFeatures& operator=(const ScopedCpuFeatures&) = delete;

 private:
  CpuFeatures saved_;
};

}  // namespace nx_quant::detail
