// safetensors headers: hand-built files (length bytes and JSON written out) parsed exactly, every
// malformation rejected with a message naming it, and the writer's output read back.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "nx_quant/file_mapping.h"
#include "nx_quant/safetensors_format.h"

namespace st = nx_quant::safetensors;
using nx_quant::InvalidArgument;

namespace {

// 8-byte little-endian length, the JSON text, then `data_bytes` bytes of data.
std::vector<uint8_t> file(const std::string& json, size_t data_bytes, uint64_t length) {
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>((length >> (8 * i)) & 0xff));
  out.insert(out.end(), json.begin(), json.end());
  out.insert(out.end(), data_bytes, 0xab);
  return out;
}

std::vector<uint8_t> file(const std::string& json, size_t data_bytes) {
  return file(json, data_bytes, json.size());
}

st::Header parse(const std::vector<uint8_t>& bytes) {
  return st::parse_header(bytes.data(), bytes.size());
}

void expect_error(const std::vector<uint8_t>& bytes, const std::string& words) {
  try {
    parse(bytes);
    ADD_FAILURE() << "no error, expected: " << words;
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << words;
  }
}

}  // namespace

TEST(SafetensorsHeader, ParsesAHandBuiltFileExactly) {
  const std::string json = R"({"__metadata__":{"format":"mlx","b":"2"},)"
                           R"("w":{"dtype":"U32","shape":[2,1],"data_offsets":[8,16]},)"
                           R"("s":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},)"
                           R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[16,16]},)"
                           R"("c":{"dtype":"I8","shape":[],"data_offsets":[16,17]}}   )";
  auto bytes = file(json, 17);
  // The length field is bytes 0..7, little-endian.
  ASSERT_EQ(bytes[0], json.size() & 0xff);
  ASSERT_EQ(bytes[1], json.size() >> 8);
  const st::Header h = parse(bytes);
  EXPECT_EQ(h.data_start, 8 + json.size());
  ASSERT_EQ(h.tensors.size(), 4u);
  EXPECT_EQ(h.tensors[0].name, "s");
  EXPECT_EQ(h.tensors[0].dtype, st::DType::BF16);
  EXPECT_EQ(h.tensors[0].shape, (std::vector<uint64_t>{2, 2}));
  EXPECT_EQ(h.tensors[0].begin, 0u);
  EXPECT_EQ(h.tensors[0].end, 8u);
  EXPECT_EQ(h.tensors[1].name, "w");
  EXPECT_EQ(h.tensors[1].dtype, st::DType::U32);
  EXPECT_EQ(h.find("e")->shape, (std::vector<uint64_t>{0, 3}));
  EXPECT_TRUE(h.find("c")->shape.empty());
  EXPECT_EQ(h.find("c")->end - h.find("c")->begin, 1u);
  EXPECT_EQ(h.find("nope"), nullptr);
  ASSERT_EQ(h.metadata.size(), 2u);
  EXPECT_EQ(h.metadata[0], (std::pair<std::string, std::string>{"b", "2"}));
  EXPECT_EQ(h.metadata[1], (std::pair<std::string, std::string>{"format", "mlx"}));
}

TEST(SafetensorsHeader, EveryDtypeByNameAndSize) {
  const std::vector<std::pair<std::string, size_t>> all = {
      {"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2},    {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
      {"U16", 2}, {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  for (const auto& [name, size] : all) {
    auto dtype = st::dtype_from_name(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(st::dtype_name(*dtype), name);
    EXPECT_EQ(st::dtype_size(*dtype), size) << name;
    const std::string json = R"({"t":{"dtype":")" + name + R"(","shape":[3],"data_offsets":[0,)" +
                             std::to_string(3 * size) + "]}}";
    EXPECT_EQ(parse(file(json, 3 * size)).tensors.at(0).dtype, *dtype);
  }
  EXPECT_FALSE(st::dtype_from_name("F7").has_value());
  EXPECT_FALSE(st::dtype_from_name("f32").has_value());
}

TEST(SafetensorsHeader, MalformedFilesAreRejectedByName) {
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_error({}, "file is 0 bytes, shorter than the 8-byte header length");
  expect_error(std::vector<uint8_t>(7, 0), "file is 7 bytes");
  expect_error(file(ok, 8, ok.size() + 9), "runs past the end of the");
  expect_error(file(ok, 8, UINT64_MAX), "header length 18446744073709551615 runs past");
  expect_error(file("{\"t\": ", 0), "not valid UTF-8 JSON");
  expect_error(file("{\"\xff\":{}}", 0), "not valid UTF-8 JSON");
  expect_error(file("[1,2]", 0), "must be a JSON object, got array");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                    R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                    8),
               "header names tensor 't' twice");
  expect_error(file(R"({"t":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})", 8),
               "tensor 't': unknown dtype \"F7\"");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[2]}})", 8),
               "tensor 't': missing \"data_offsets\"");
  expect_error(file(R"({"t":[1]})", 8), "tensor 't': expected an object");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", 8),
               "\"data_offsets\" must be [begin, end] of non-negative integers");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0.5,8]}})", 8),
               "\"data_offsets\" must be [begin, end]");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
               "\"data_offsets\" must be [begin, end]");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
               "\"shape\" must be an array of non-negative integers");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
               "data_offsets [8, 0] end before they begin");
  expect_error(file(ok, 7), "tensor 't': data_offsets [0, 8] run past the data section (7 bytes)");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 12),
               "tensor 't': shape [3] of F32 needs 12 bytes but data_offsets [0, 8] give 8");
  expect_error(file(R"({"t":{"dtype":"F32","shape":[1099511627776,1099511627776],)"
                    R"("data_offsets":[0,8]}})",
                    8),
               "tensor 't': shape size overflows");
  expect_error(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                    8),
               "tensors 'a' and 'b' have overlapping data_offsets");
  expect_error(file(R"({"__metadata__":{"k":1}})", 0),
               "\"__metadata__\" value of 'k' must be a string");
  expect_error(file(R"({"__metadata__":[]})", 0), "\"__metadata__\" must be an object");
}

TEST(SafetensorsHeader, DeeplyNestedValuesAreRejectedWithoutRecursion) {
  // Error messages must not render the offending value recursively: a few hundred KB of "["
  // would overflow the stack (and a dirty scheduler's ~320 KB one with far less).
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  for (const auto& [json, words] : std::vector<std::pair<std::string, std::string>>{
           {R"({"t":{"dtype":"F32","shape":[)" + deep + R"(],"data_offsets":[0,0]}})",
            "\"shape\" must be an array of non-negative integers, got an array of 1 elements"},
           {R"({"t":{"dtype":"F32","shape":[],"data_offsets":)" + deep + "}}",
            "\"data_offsets\" must be [begin, end] of non-negative integers, got an array of 1"},
           {R"({"__metadata__":{"k":)" + deep + "}}",
            "\"__metadata__\" value of 'k' must be a string, got an array of 1 elements"},
           {deep, "must be a JSON object, got array"}}) {
    try {
      parse(file(json, 0));
      ADD_FAILURE() << "no error, expected: " << words;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
      EXPECT_LT(std::string(e.what()).size(), 200u);
    }
  }
}

TEST(SafetensorsHeader, LongNamesAndValuesAreClippedAtCharacterBoundaries) {
  // 'a' then 100 two-byte characters: byte 200 is the middle of the 100th, so the name is cut
  // before it, never inside it.
  std::string name = "a";
  for (int i = 0; i < 100; ++i) name += "\xc3\xa9";  // U+00E9
  std::string clipped = "'a";
  for (int i = 0; i < 99; ++i) clipped += "\xc3\xa9";
  expect_error(file(R"({")" + name + R"(":{"dtype":"F7","shape":[],"data_offsets":[0,0]}})", 0),
               clipped + "...': unknown dtype");
  const std::string long_value(1000, 'x');
  expect_error(file(R"({"__metadata__":{"k":[")" + long_value + R"("]}})", 0),
               "got [\"" + std::string(78, 'x') + "...");
}

TEST(SafetensorsHeader, HolesAndEmptyTensorsAreAllowed) {
  auto h = parse(file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[6,8]},)"
                      R"("z":{"dtype":"U8","shape":[0],"data_offsets":[7,7]}})",
                      8));
  EXPECT_EQ(h.tensors.size(), 2u);
  EXPECT_TRUE(parse(file("{}", 0)).tensors.empty());
}

TEST(SafetensorsWriter, PlannedFilesParseBackToTheSameEntries) {
  std::vector<st::WriteEntry> entries = {{"layer.weight", st::DType::U32, {4, 8}},
                                         {"layer.scales", st::DType::BF16, {4, 1}},
                                         {"norm", st::DType::F16, {5}},
                                         {"empty", st::DType::F32, {0, 7}}};
  auto plan = st::plan_file(entries, {{"format", "mlx"}});
  EXPECT_EQ((plan.header_bytes.size()) % 8, 0u);
  ASSERT_EQ(plan.offsets.size(), 4u);
  EXPECT_EQ(plan.offsets[0], (std::pair<uint64_t, uint64_t>{0, 128}));
  EXPECT_EQ(plan.offsets[1], (std::pair<uint64_t, uint64_t>{128, 136}));
  EXPECT_EQ(plan.offsets[2], (std::pair<uint64_t, uint64_t>{136, 146}));
  EXPECT_EQ(plan.total_size, plan.header_bytes.size() + 146);

  std::vector<uint8_t> bytes(plan.header_bytes.begin(), plan.header_bytes.end());
  bytes.resize(plan.total_size, 0);
  auto h = parse(bytes);
  EXPECT_EQ(h.data_start, plan.header_bytes.size());
  ASSERT_EQ(h.tensors.size(), 4u);
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto* t = h.find(entries[i].name);
    ASSERT_NE(t, nullptr) << entries[i].name;
    EXPECT_EQ(t->dtype, entries[i].dtype);
    EXPECT_EQ(t->shape, entries[i].shape);
    EXPECT_EQ(t->begin, plan.offsets[i].first);
    EXPECT_EQ(t->end, plan.offsets[i].second);
  }
  EXPECT_EQ(h.metadata.at(0).second, "mlx");
}

TEST(SafetensorsWriter, RejectsBadNamesAndOverflow) {
  EXPECT_THROW(st::plan_file({{"", st::DType::F32, {1}}}, {}), InvalidArgument);
  EXPECT_THROW(st::plan_file({{"__metadata__", st::DType::F32, {1}}}, {}), InvalidArgument);
  EXPECT_THROW(st::plan_file({{"a", st::DType::F32, {1}}, {"a", st::DType::F32, {1}}}, {}),
               InvalidArgument);
  EXPECT_THROW(st::plan_file({{"a", st::DType::F64, {1ull << 40, 1ull << 40}}}, {}),
               InvalidArgument);
  EXPECT_THROW(st::plan_file({{"bad\xff", st::DType::F32, {1}}}, {}), InvalidArgument);
}

TEST(FileMapping, MapsTheFilesBytesAndUnmapsWhenDropped) {
  const std::string path = ::testing::TempDir() + "nx_quant_mapping_test.bin";
  const std::string content = "hello, mapping";
  std::ofstream(path, std::ios::binary) << content;
  const long before = nx_quant::FileMapping::live_count();
  {
    auto m = nx_quant::FileMapping::open(path);
    EXPECT_EQ(nx_quant::FileMapping::live_count(), before + 1);
    ASSERT_EQ(m->size(), content.size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data()), m->size()), content);
  }
  EXPECT_EQ(nx_quant::FileMapping::live_count(), before);

  std::ofstream(path, std::ios::binary | std::ios::trunc).close();
  EXPECT_EQ(nx_quant::FileMapping::open(path)->size(), 0u);
  std::remove(path.c_str());

  try {
    nx_quant::FileMapping::open(path);
    ADD_FAILURE() << "no error for a missing file";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos);
  }
  EXPECT_THROW(nx_quant::FileMapping::open(::testing::TempDir()), InvalidArgument);
}
