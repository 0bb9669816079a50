// The packed words are checked against literals computed by hand from the format's definition
// (value i at stream bits [i*bits, (i+1)*bits), word j = stream bits [32j, 32j+32)), never
// against the code under test.
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "nx_quant/kernels.h"
#include "nx_quant/reference.h"
#include "test_util.h"

using namespace nx_quant;
using namespace nx_quant::testing;

namespace {

// q_i = i mod 2^bits for a 32-value row.
const std::map<int, std::vector<uint32_t>> kCountingWords = {
    {2, {0xE4E4E4E4u, 0xE4E4E4E4u}},
    {3, {0x88FAC688u, 0xC688FAC6u, 0xFAC688FAu}},
    {4, {0x76543210u, 0xFEDCBA98u, 0x76543210u, 0xFEDCBA98u}},
    {5, {0x8A418820u, 0xC5A92839u, 0xCA307B9Au, 0x38BDAB49u, 0xFFBBCDEBu}},
    {6, {0x440C2040u, 0xA2481C61u, 0x3CE34C2Cu, 0x544D2450u, 0xA6585D65u, 0x7DE75C6Du}},
    {8,
     {0x03020100u, 0x07060504u, 0x0B0A0908u, 0x0F0E0D0Cu, 0x13121110u, 0x17161514u, 0x1B1A1918u,
      0x1F1E1D1Cu}},
};

// q_0 = 2^bits - 1, q_1 = 0, q_i = i mod 2^bits after that.
const std::map<int, std::vector<uint32_t>> kQuantizedWords = {
    {2, {0xE4E4E4E3u, 0xE4E4E4E4u}},
    {3, {0x88FAC687u, 0xC688FAC6u, 0xFAC688FAu}},
    {4, {0x7654320Fu, 0xFEDCBA98u, 0x76543210u, 0xFEDCBA98u}},
    {5, {0x8A41881Fu, 0xC5A92839u, 0xCA307B9Au, 0x38BDAB49u, 0xFFBBCDEBu}},
    {6, {0x440C203Fu, 0xA2481C61u, 0x3CE34C2Cu, 0x544D2450u, 0xA6585D65u, 0x7DE75C6Du}},
    {8,
     {0x030200FFu, 0x07060504u, 0x0B0A0908u, 0x0F0E0D0Cu, 0x13121110u, 0x17161514u, 0x1B1A1918u,
      0x1F1E1D1Cu}},
};

}  // namespace

TEST(Pack, ReferencePackAndUnpackMatchHandComputedWords) {
  for (const auto& [bits, expected] : kCountingWords) {
    std::vector<uint32_t> words(expected.size(), 0u);
    for (size_t i = 0; i < 32; ++i) reference::pack_value(words.data(), i, bits, i % (1u << bits));
    EXPECT_EQ(words, expected) << bits << " bits";
    for (size_t i = 0; i < 32; ++i) {
      EXPECT_EQ(reference::unpack_value(expected.data(), i, bits), i % (1u << bits)) << bits;
    }
  }
}

// With w_i = n_bins - q_i and both 0 and n_bins present, MLX's rule gives scale = -1 and
// bias = n_bins exactly, so q_i comes back: the packed words are fully determined.
TEST(Pack, QuantizeProducesHandComputedWordsForEveryBitWidth) {
  for (const auto& [bits, expected] : kQuantizedWords) {
    const int n_bins = (1 << bits) - 1;
    std::vector<float> row(32);
    for (int i = 0; i < 32; ++i) {
      const int q = i == 0 ? n_bins : (i == 1 ? 0 : i % (1 << bits));
      row[i] = static_cast<float>(n_bins - q);
    }
    for (auto kernel : {KernelChoice::Reference, KernelChoice::Auto}) {
      for (DType dtype : kAllDtypes) {
        OwnedQuantized q(TypedBuffer(dtype, row), 1, 32, {bits, 32}, kernel);
        EXPECT_EQ(q.packed, expected) << bits << " bits, " << dtype_name(dtype);
        EXPECT_EQ(q.scales.at(0), -1.0f);
        EXPECT_EQ(q.biases.at(0), static_cast<float>(n_bins));
      }
    }
  }
}

TEST(Pack, EachGroupStartsOnAWordBoundaryAcrossRows) {
  // Two rows of two 64-value groups at 3 bits: 12 words a row, 6 a group. The same pattern in
  // every group must give the same 6-word block at offsets 0, 6, 12, 18.
  std::vector<float> dense;
  for (int r = 0; r < 2; ++r)
    for (int g = 0; g < 2; ++g)
      for (int i = 0; i < 64; ++i) dense.push_back(static_cast<float>(7 - (i % 8)));
  OwnedQuantized q(TypedBuffer(DType::F32, dense), 2, 128, {3, 64});
  ASSERT_EQ(q.packed.size(), 2u * 128 * 3 / 32);
  for (size_t block = 1; block < 4; ++block) {
    for (size_t w = 0; w < 6; ++w) EXPECT_EQ(q.packed[block * 6 + w], q.packed[w]);
  }
  EXPECT_EQ(q.packed[0], 0x88FAC688u);
}
