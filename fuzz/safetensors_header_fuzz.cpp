// libFuzzer harness for the safetensors header parser: any bytes are either rejected with
// InvalidArgument or give a header whose every tensor lies inside the file, with the byte size
// its shape and dtype need, and no two non-empty tensors overlapping. Anything else (another
// exception, a sanitizer report, an invariant broken) is a finding.
#include <cstdint>
#include <cstdlib>

#include "nx_quant/safetensors_format.h"

namespace st = nx_quant::safetensors;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  st::Header header;
  try {
    header = st::parse_header(data, size);
  } catch (const nx_quant::InvalidArgument&) {
    return 0;
  }
  if (header.data_start > size) __builtin_trap();
  const uint64_t data_size = size - header.data_start;
  uint64_t previous_end = 0;
  for (const auto& t : header.tensors) {
    if (t.begin > t.end || t.end > data_size) __builtin_trap();
    uint64_t bytes = st::dtype_size(t.dtype);
    for (uint64_t d : t.shape) bytes *= d;  // cannot overflow: the parser checked
    if (bytes != t.end - t.begin) __builtin_trap();
    if (t.begin != t.end) {
      if (t.begin < previous_end) __builtin_trap();
      previous_end = t.end;
    }
    // Touch the first and last byte, as a reader would: ASan reports any read outside.
    if (t.begin != t.end) {
      volatile uint8_t first = data[header.data_start + t.begin];
      volatile uint8_t last = data[header.data_start + t.end - 1];
      (void)first;
      (void)last;
    }
  }
  return 0;
}
