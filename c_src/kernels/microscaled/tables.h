// Decoding tables of the microscaled formats, built once from codec.h.
#pragma once

#include <cstdint>

namespace nx_quant::microscaled {

struct Tables {
  float e4m3[256];  // E4M3 byte -> value (mxfp8 elements, nvfp4 scales)
  float e8m0[256];  // E8M0 byte -> 2^(b - 127) (mxfp4/mxfp8 scales)
};

const Tables& tables();

}  // namespace nx_quant::microscaled
