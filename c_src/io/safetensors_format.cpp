// Reading and writing safetensors headers with nlohmann::json (Debian's nlohmann-json3-dev).
#include "nx_quant/safetensors_format.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace nx_quant::safetensors {

namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8},   {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8},         {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},   {DType::I8, "I8", 1},           {DType::U64, "U64", 8},
    {DType::U32, "U32", 4},   {DType::U16, "U16", 2},         {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1}, {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
};

const DTypeInfo& info(DType dtype) {
  for (const auto& entry : kDTypes)
    if (entry.dtype == dtype) return entry;
  throw InvalidArgument("unknown safetensors dtype");
}

[[noreturn]] void fail(const std::string& message) {
  throw InvalidArgument(message);
}

// At most `limit` bytes of `text`, cut at a UTF-8 character boundary (messages reach Elixir as
// strings), with "..." when something was left off.
std::string clipped(const std::string& text, size_t limit) {
  if (text.size() <= limit) return text;
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "...";
}

std::string shown(const std::string& name) {
  // Names are valid UTF-8 here (nlohmann checked), but may be long: keep messages short.
  return "'" + clipped(name, 200) + "'";
}

// A JSON value for an error message, rendered without recursion: dump() recurses once per level
// of nesting, and a small hostile header ("shape": [[[[...]]]]) nests deep enough to overflow a
// thread's stack (a BEAM dirty scheduler has ~320 KB). Only scalars and flat, short arrays or
// objects are printed; anything else is described by its type and size.
std::string shown_value(const nlohmann::json& value) {
  if (value.is_structured()) {
    bool flat = value.size() <= 8;
    for (const auto& element : value) flat = flat && element.is_primitive();
    if (!flat)
      return std::string(value.is_array() ? "an array" : "an object") + " of " +
             std::to_string(value.size()) + " elements";
  }
  return clipped(value.dump(), 80);  // depth <= 1 here
}

uint64_t mul_or_fail(uint64_t a, uint64_t b, const std::string& tensor) {
  if (a != 0 && b > UINT64_MAX / a) fail("tensor " + shown(tensor) + ": shape size overflows");
  return a * b;
}

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

uint64_t byte_size(DType dtype, const std::vector<uint64_t>& shape, const std::string& name) {
  uint64_t n = dtype_size(dtype);
  for (uint64_t d : shape) n = mul_or_fail(n, d, name);
  return n;
}

TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry, uint64_t data_size) {
  const std::string where = "tensor " + shown(name);
  if (!entry.is_object()) fail(where + ": expected an object with dtype, shape, data_offsets");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) fail(where + ": missing \"" + key + "\"");

  TensorInfo t;
  t.name = name;
  const auto& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(where + ": \"dtype\" must be a string");
  auto parsed = dtype_from_name(dtype.get_ref<const std::string&>());
  if (!parsed) fail(where + ": unknown dtype \"" + dtype.get<std::string>() + "\"");
  t.dtype = *parsed;

  const auto& shape = entry["shape"];
  if (!shape.is_array()) fail(where + ": \"shape\" must be an array of non-negative integers");
  for (const auto& d : shape) {
    if (!d.is_number_unsigned())
      fail(where + ": \"shape\" must be an array of non-negative integers, got " + shown_value(d));
    t.shape.push_back(d.get<uint64_t>());
  }

  const auto& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    fail(where + ": \"data_offsets\" must be [begin, end] of non-negative integers, got " +
         shown_value(offsets));
  t.begin = offsets[0].get<uint64_t>();
  t.end = offsets[1].get<uint64_t>();
  const std::string range = "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
  if (t.begin > t.end) fail(where + ": data_offsets " + range + " end before they begin");
  if (t.end > data_size)
    fail(where + ": data_offsets " + range + " run past the data section (" +
         std::to_string(data_size) + " bytes)");

  const uint64_t needed = byte_size(t.dtype, t.shape, name);
  if (needed != t.end - t.begin)
    fail(where + ": shape " + shape_text(t.shape) + " of " + dtype_name(t.dtype) + " needs " +
         std::to_string(needed) + " bytes but data_offsets " + range + " give " +
         std::to_string(t.end - t.begin));
  return t;
}

}  // namespace

const char* dtype_name(DType dtype) {
  return info(dtype).name;
}
size_t dtype_size(DType dtype) {
  return info(dtype).size;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& entry : kDTypes)
    if (name == entry.name) return entry.dtype;
  return std::nullopt;
}

const TensorInfo* Header::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

Header parse_header(const uint8_t* data, size_t size) {
  return parse_header(data, size, size);
}

uint64_t header_length(const uint8_t* data, size_t available) {
  if (available < 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];  // little-endian, whatever the host
  return n;
}

Header parse_header(const uint8_t* data, size_t available, uint64_t size) {
  if (size < 8)
    fail("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  if (available < 8) throw std::logic_error("parse_header: given fewer than 8 bytes");
  const uint64_t n = header_length(data, available);
  if (n > size - 8)
    fail("header length " + std::to_string(n) + " runs past the end of the " +
         std::to_string(size) + "-byte file");
  if (n > kMaxHeaderBytes)
    fail("header length " + std::to_string(n) + " is above the " + std::to_string(kMaxHeaderBytes) +
         "-byte limit");
  if (available < 8 + n)
    throw std::logic_error("parse_header: given " + std::to_string(available) +
                           " bytes of the file, the header needs " + std::to_string(8 + n));

  // nlohmann keeps the last of duplicate keys silently; a duplicate tensor name must be an
  // error (two readers could disagree on which one is meant), so watch the top-level keys.
  std::set<std::string> seen;
  std::string duplicate;
  auto watch = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1) {
      auto key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };

  const char* text = reinterpret_cast<const char*>(data + 8);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text, text + n, watch);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("header is not valid UTF-8 JSON: ") + e.what());
  }
  if (!duplicate.empty()) fail("header names tensor " + shown(duplicate) + " twice");
  if (!json.is_object()) fail("header must be a JSON object, got " + std::string(json.type_name()));

  Header header;
  header.data_start = 8 + n;
  const uint64_t data_size = size - header.data_start;
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("\"__metadata__\" must be an object of strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          fail("\"__metadata__\" value of " + shown(key) + " must be a string, got " +
               shown_value(value));
        header.metadata.emplace_back(key, value.get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(parse_entry(name, entry, data_size));
  }
  std::sort(header.metadata.begin(), header.metadata.end());
  std::sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });

  // Non-empty ranges may not overlap (holes are allowed: they are never read).
  const TensorInfo* previous = nullptr;
  for (const auto& t : header.tensors) {
    if (t.begin == t.end) continue;
    if (previous && t.begin < previous->end)
      fail("tensors " + shown(previous->name) + " and " + shown(t.name) +
           " have overlapping data_offsets");
    previous = &t;
  }
  return header;
}

PlannedFile plan_file(const std::vector<WriteEntry>& entries,
                      const std::vector<std::pair<std::string, std::string>>& metadata) {
  nlohmann::ordered_json json = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    json["__metadata__"] = meta;
  }

  PlannedFile plan;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& e : entries) {
    if (e.name.empty()) fail("a tensor name may not be empty");
    if (e.name == "__metadata__") fail("\"__metadata__\" is reserved and cannot name a tensor");
    if (!names.insert(e.name).second) fail("tensor " + shown(e.name) + " is given twice");
    const uint64_t bytes = byte_size(e.dtype, e.shape, e.name);
    if (offset > UINT64_MAX - bytes) fail("the data section's size overflows");
    plan.offsets.emplace_back(offset, offset + bytes);
    json[e.name] = {{"dtype", dtype_name(e.dtype)},
                    {"shape", e.shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }

  std::string text;
  try {
    text = json.dump();  // throws on names that are not valid UTF-8
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("cannot write the header: ") + e.what());
  }
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  plan.header_bytes.resize(8);
  for (int i = 0; i < 8; ++i) plan.header_bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  plan.header_bytes += text;
  plan.total_size = plan.header_bytes.size() + offset;
  return plan;
}

}  // namespace nx_quant::safetensors
