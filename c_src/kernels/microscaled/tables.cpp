#include "microscaled/tables.h"

#include "microscaled/codec.h"

namespace nx_quant::microscaled {

namespace {

Tables build() {
  Tables t;
  for (int b = 0; b < 256; ++b) {
    t.e4m3[b] = e4m3_to_f32(static_cast<uint8_t>(b));
    t.e8m0[b] = e8m0_to_f32(static_cast<uint8_t>(b));
  }
  return t;
}

}  // namespace

const Tables& tables() {
  static const Tables instance = build();
  return instance;
}

}  // namespace nx_quant::microscaled
