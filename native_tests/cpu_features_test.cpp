// CPU-feature detection: NX_QUANT_MAX_ISA's parsing and cap, and that the features reported to
// every dispatch point obey the cap this process was started with (scripts/test runs the suite
// at each level the machine supports).
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>

#include "cpu_features.h"

using namespace nx_quant::detail;

namespace {

CpuFeatures all_features() {
  CpuFeatures f;
  f.avx2_fma = f.avx512 = f.avx512_vnni = f.avx512_bf16 = true;
  f.neon = f.neon_dotprod = f.neon_i8mm = true;
  return f;
}

bool same(const CpuFeatures& a, const CpuFeatures& b) {
  return a.avx2_fma == b.avx2_fma && a.avx512 == b.avx512 && a.avx512_vnni == b.avx512_vnni &&
         a.avx512_bf16 == b.avx512_bf16 && a.neon == b.neon && a.neon_dotprod == b.neon_dotprod &&
         a.neon_i8mm == b.neon_i8mm;
}

}  // namespace

TEST(CpuFeatures, ParsesTheIsaLevelNames) {
  EXPECT_EQ(parse_isa_level("avx512"), IsaLevel::Avx512);
  EXPECT_EQ(parse_isa_level("avx2"), IsaLevel::Avx2);
  EXPECT_EQ(parse_isa_level("portable"), IsaLevel::Portable);
  EXPECT_EQ(parse_isa_level("AVX2"), IsaLevel::Avx2);
  EXPECT_EQ(parse_isa_level("Portable"), IsaLevel::Portable);
  EXPECT_EQ(parse_isa_level("neon"), IsaLevel::Neon);
  EXPECT_EQ(parse_isa_level("NEON"), IsaLevel::Neon);
  for (const char* bad : {"", "avx", "avx2 ", " avx2", "avx5122", "sse2", "none", "neon2"}) {
    EXPECT_EQ(parse_isa_level(bad), std::nullopt) << '"' << bad << '"';
  }
  EXPECT_EQ(parse_isa_level(nullptr), std::nullopt);
  for (IsaLevel level : {IsaLevel::Avx512, IsaLevel::Avx2, IsaLevel::Neon, IsaLevel::Portable}) {
    EXPECT_EQ(parse_isa_level(isa_level_name(level)), level);
  }
}

TEST(CpuFeatures, CapSwitchesOffEverythingAboveIt) {
  EXPECT_TRUE(same(capped(all_features(), IsaLevel::Avx512), all_features()));
  const CpuFeatures avx2 = capped(all_features(), IsaLevel::Avx2);
  EXPECT_TRUE(avx2.avx2_fma);
  EXPECT_FALSE(avx2.avx512 || avx2.avx512_vnni || avx2.avx512_bf16);
  // The x86 levels leave the aarch64 features alone.
  EXPECT_TRUE(avx2.neon && avx2.neon_dotprod && avx2.neon_i8mm);
  // neon: NEON without its extensions, and nothing of x86.
  const CpuFeatures neon = capped(all_features(), IsaLevel::Neon);
  EXPECT_TRUE(neon.neon);
  EXPECT_FALSE(neon.neon_dotprod || neon.neon_i8mm || neon.avx2_fma || neon.avx512);
  const CpuFeatures portable = capped(all_features(), IsaLevel::Portable);
  EXPECT_FALSE(portable.avx2_fma || portable.avx512 || portable.avx512_vnni ||
               portable.avx512_bf16 || portable.neon || portable.neon_dotprod ||
               portable.neon_i8mm);
  // Never switches anything on.
  EXPECT_TRUE(same(capped(CpuFeatures{}, IsaLevel::Avx512), CpuFeatures{}));
}

TEST(CpuFeatures, ReportsNothingAboveNxQuantMaxIsa) {
  const std::optional<IsaLevel> expected = parse_isa_level(std::getenv("NX_QUANT_MAX_ISA"));
  ASSERT_EQ(isa_cap(), expected);
  const CpuFeatures f = cpu_features();
  if (expected) {
    EXPECT_TRUE(same(f, capped(f, *expected))) << isa_level_name(*expected);
  }
  // Dependent features come with their base.
  EXPECT_TRUE(f.avx2_fma || !f.avx512);
  EXPECT_TRUE(f.avx512 || !(f.avx512_vnni || f.avx512_bf16));
  EXPECT_TRUE(f.neon || !f.neon_dotprod);
  EXPECT_TRUE(f.neon_dotprod || !f.neon_i8mm);
#if defined(__aarch64__) && defined(__linux__)
  // Every AArch64 Linux CPU has Advanced SIMD: only a cap switches it off.
  if (!expected || *expected != IsaLevel::Portable) {
    EXPECT_TRUE(f.neon);
  }
#endif
  // A scope that allows everything cannot lift the cap.
  {
    ScopedCpuFeatures everything(all_features());
    EXPECT_TRUE(same(cpu_features(), f));
  }
  EXPECT_TRUE(same(cpu_features(), f));
}
