// The safetensors file format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of UTF-8 JSON, then the data section. The JSON maps
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets into the
// data section) and may hold "__metadata__", a map of strings.
//
// Reading validates the whole header against the file size before any tensor is touched, so a
// caller can take [data_start + begin, data_start + end) of a mapping without further checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nx_quant/error.h"

namespace nx_quant::safetensors {

enum class DType {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U64,
  U32,
  U16,
  U8,
  BOOL,
  F8_E4M3,
  F8_E5M2
};

// The format's spelling ("F32", "BF16", "F8_E4M3", ...).
const char* dtype_name(DType dtype);
std::optional<DType> dtype_from_name(std::string_view name);
size_t dtype_size(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section
  uint64_t end = 0;
};

struct Header {
  std::vector<TensorInfo> tensors;                            // sorted by begin (file order)
  std::vector<std::pair<std::string, std::string>> metadata;  // sorted by key
  uint64_t data_start = 0;  // absolute offset of the data section: 8 + header length

  const TensorInfo* find(std::string_view name) const;
};

// The reference implementation refuses headers above 100 MB; so do we (it also bounds the
// memory a hostile length can make us allocate).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Parses and validates the header of a file whose first `size` bytes are at `data` (the whole
// file, so offsets can be checked against it). Never reads outside [data, data + size).
// Throws InvalidArgument naming the problem (and the tensor) otherwise.
Header parse_header(const uint8_t* data, size_t size);

// The same from the file's first `available` bytes (at least 8 + the header length, or the
// whole file if shorter) when the whole file (`size` bytes) is not in memory.
Header parse_header(const uint8_t* data, size_t available, uint64_t size);

// The header length stored in the first 8 bytes (0 when fewer are available).
uint64_t header_length(const uint8_t* data, size_t available);

// Writing: the entries of a file in data order.
struct WriteEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;
};

struct PlannedFile {
  std::string header_bytes;  // the 8 length bytes + JSON, space-padded to a multiple of 8
  std::vector<std::pair<uint64_t, uint64_t>> offsets;  // each entry's [begin, end)
  uint64_t total_size = 0;                             // header_bytes.size() + the data section
};

// Lays the entries out contiguously in the given order and builds the header (with
// "__metadata__" when metadata is non-empty). Rejects empty, duplicate and reserved names
// and sizes that overflow.
PlannedFile plan_file(const std::vector<WriteEntry>& entries,
                      const std::vector<std::pair<std::string, std::string>>& metadata);

}  // namespace nx_quant::safetensors
