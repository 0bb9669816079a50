// The fast microscaled quantizer (quantize_fast.cpp, x86/avx2 and x86/avx512
// microscaled_quantize_*.cpp): byte for byte the reference (reference.cpp, MLX's per-operation
// dtype rounding), group by group. What makes it fast, and why each step is the reference's:
//   - max|w| as the maximum of the values' bit patterns with the sign cleared (integer order is
//     the order of non-negative floats; a pattern above +Inf's is a NaN);
//   - mxfp4/mxfp8: the E8M0 exponent rint(log2(scale)) (log2 rounded to the dtype, then rint
//     half to even) is a step function of the scale within each binade 2^k <= scale < 2^(k+1):
//     k below a threshold mantissa, k + 1 from it on. The thresholds are found once per dtype by
//     bisection on the reference's own expression (std::log2 and all; e8m0_thresholds), and the
//     divisor 2^e is then exact, so w / 2^e is w * 2^-e. The tests check the thresholds against
//     that expression for every f16 and bf16 scale and around every f32 step (a disabled test
//     does every normal f32 scale, ~2^31 of them: it passed);
//   - E2M1 elements: for |q| <= kFastQMax every difference q - entry that can decide the
//     reference's argmin is exact (Sterbenz) and the others are farther by more than their
//     rounding error, so its result is the nearest entry, ties to the smaller magnitude, -0 and
//     every |q| <= 0.25 to code 0. e2m1_code finds it from the bit pattern of |q| minus one ulp
//     (a tie then falls into the lower interval): the exponent and top two mantissa bits index a
//     16-entry table. native_tests/microscaled_quantize_test.cpp checks it against the
//     reference's argmin for all 65,536 f16 and bf16 patterns and around every f32 boundary;
//   - anything outside those conditions (a NaN or Inf in the group, an f32-subnormal scale, a q
//     beyond kFastQMax) goes through the reference for that
//     group alone (reference_group). (An nvfp4 scale that encodes to 0 is no exception: every
//     code is then 0, GroupScale::zero_codes.)
#pragma once

#include <cstddef>
#include <cstdint>

#include "microscaled/codec.h"
#include "microscaled/microscaled.h"
#include "microscaled/tables.h"

namespace nx_quant::microscaled::fast {

// The largest |q| (an element divided by its scale, in the reference's arithmetic) e2m1_code is
// used for; larger ones (only nvfp4 with a saturated E4M3 scale can get there) take the
// reference.
constexpr float kFastQMax = 16.0f;

// e2m1_code's table: the code of |q| in (lo, hi] for the 16 quarter-binades of [0.5, 8).
inline constexpr uint8_t kE2m1QuarterCodes[16] = {1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7};

// Bits of 0.25f: |q| at or below it is code 0.
constexpr uint32_t kQuarterBits = 0x3E800000u;

// The reference's nearest_e2m1(q, dtype) for |q| <= kFastQMax (not NaN), in integer steps the
// SIMD kernels repeat lane by lane.
inline uint32_t e2m1_code(float q) {
  const uint32_t bits = bit_cast<uint32_t>(q);
  const int32_t a = static_cast<int32_t>(bits & 0x7FFFFFFFu);
  int32_t index = ((a - 1) >> 21) - 504;  // (a - 1)'s exponent and top two mantissa bits
  index = index < 0 ? 0 : (index > 15 ? 15 : index);
  const uint32_t code = kE2m1QuarterCodes[index] | ((bits >> 28) & 8u);
  return static_cast<uint32_t>(a) > kQuarterBits ? code : 0u;
}

// e2m1_code by seven comparisons with the midpoints' bit patterns (a tie is not above its
// midpoint: the smaller magnitude), for loops a compiler vectorizes; tested equal to it.
inline uint32_t e2m1_code_by_compares(float q) {
  const uint32_t bits = bit_cast<uint32_t>(q);
  const uint32_t a = bits & 0x7FFFFFFFu;
  const uint32_t magnitude = (a > kQuarterBits) + (a > 0x3F400000u) + (a > 0x3FA00000u) +
                             (a > 0x3FE00000u) + (a > 0x40200000u) + (a > 0x40600000u) +
                             (a > 0x40A00000u);  // 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5
  return magnitude | ((bits >> 28) & 8u & (0u - static_cast<uint32_t>(a > kQuarterBits)));
}

// For each biased f32 exponent E (1..254) of a normal scale, the smallest 23-bit mantissa from
// which the reference's E8M0 exponent is E - 126 instead of E - 127 (2^23: never).
const uint32_t* e8m0_thresholds(DType dtype);

// The reference's exponent expression for a non-zero scale, as an int (the value it rounds to
// the dtype, exactly, for every normal scale). Used to build and to test the thresholds.
int e8m0_exponent_reference(float scale, DType dtype);

// What a matrix's groups share.
struct Context {
  DType dtype;
  QuantMode mode;
  int group_size;
  int bits;
  float maxval;                // 6 (E2M1) or 448 (E4M3)
  float encode;                // nvfp4: 2688 / global_scale, or 1
  const uint32_t* thresholds;  // mxfp4/mxfp8
  const float* e4m3;           // nvfp4: E4M3 byte -> value
  int e_min, e_max;            // mx exponents whose 2^e and 2^-e are exact in f32 and the dtype

  Context(DType t, const QuantSpec& spec);
  // False: every group takes the reference (nvfp4 with a global scale whose encoding factor is
  // not a finite positive number).
  bool fast() const { return mode != QuantMode::Nvfp4 || (encode > 0.0f && encode < INFINITY); }
};

// One group's scale: its byte, and the factor (mx: 2^-e, multiply) or divisor (nvfp4: divide)
// applied to every element before its dtype rounding.
struct GroupScale {
  uint8_t byte;
  float factor;
  // nvfp4 whose scale encodes to 0 (max|w| / 6 times the encoding factor below E4M3's 2^-10):
  // every element is divided by 0, so every q is +-Inf or NaN and every code 0.
  bool zero_codes;
};

// The group's scale from max|w|'s bit pattern (sign cleared); false: the group must take the
// reference. T is c.dtype (a template parameter for the kernels' sake).
template <DType T>
inline __attribute__((always_inline)) bool group_scale(const Context& c, uint32_t amax_bits,
                                                       GroupScale* out) {
  if (amax_bits >= 0x7F800000u) return false;  // Inf or NaN
  const float amax = bit_cast<float>(amax_bits);
  const float scale = round_to_dtype(amax / c.maxval, T);
  if (c.mode == QuantMode::Nvfp4) {
    const uint8_t byte = e4m3_from_f32(scale * c.encode);
    const float divisor = c.e4m3[byte];
    if (divisor == 0.0f) {
      *out = {byte, divisor, true};
      return true;
    }
    const float qmax = round_to_dtype(amax / divisor, T) * c.encode;
    if (!(qmax <= kFastQMax)) return false;
    *out = {byte, divisor, false};
    return true;
  }
  int e = 0;
  if (scale != 0.0f) {
    const uint32_t sb = bit_cast<uint32_t>(scale);
    const uint32_t exponent = sb >> 23;
    if (exponent == 0) return false;  // f32-subnormal scale
    e = static_cast<int>(exponent) - 127 + ((sb & 0x7FFFFFu) >= c.thresholds[exponent] ? 1 : 0);
  }
  if (e < c.e_min || e > c.e_max) return false;
  const float factor = bit_cast<float>(static_cast<uint32_t>(127 - e) << 23);
  if (c.bits == 4 && !(round_to_dtype(amax * factor, T) <= kFastQMax)) return false;
  *out = {static_cast<uint8_t>(e + 127), factor, false};
  return true;
}

inline bool group_scale(const Context& c, uint32_t amax_bits, GroupScale* out) {
  switch (c.dtype) {
    case DType::F32:
      return group_scale<DType::F32>(c, amax_bits, out);
    case DType::F16:
      return group_scale<DType::F16>(c, amax_bits, out);
    default:
      return group_scale<DType::BF16>(c, amax_bits, out);
  }
}

// Group g of row r (cols values per row) through the reference: its scale byte and its words.
void reference_group(const void* dense, DType dtype, size_t cols, const QuantSpec& spec, size_t r,
                     size_t g, uint32_t* packed, uint8_t* scales);

// The fast portable rows [row_begin, row_end) (quantize_fast.cpp).
void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, uint8_t* scales);

}  // namespace nx_quant::microscaled::fast

#if defined(__x86_64__)
namespace nx_quant::microscaled::avx512 {
void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, uint8_t* scales);
}
namespace nx_quant::microscaled::avx2 {
void quantize_rows(const void* dense, DType dtype, size_t cols, const QuantSpec& spec,
                   size_t row_begin, size_t row_end, uint32_t* packed, uint8_t* scales);
}
#endif
