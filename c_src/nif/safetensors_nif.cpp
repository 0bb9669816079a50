// safetensors files and JSON for Elixir: a resource holding an open, validated file; tensors
// handed out as binaries read into owned memory (the default) or, when the file was opened with
// mmap, binaries over the mapping (no copy) and quantized tensors built on it; header planning
// for writers; JSON decode/encode (config.json) with nlohmann::json.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "nif_functions.h"
#include "nx_quant/file_mapping.h"
#include "nx_quant/format.h"
#include "nx_quant/regular_file.h"
#include "nx_quant/safetensors_format.h"
#include "qtensor_resource.h"
#include "terms.h"

namespace nx_quant::nif {

namespace st = nx_quant::safetensors;

namespace {

struct StFile {
  std::shared_ptr<RegularFile> file;     // kept open: reads, and checks that it is unchanged
  std::shared_ptr<FileMapping> mapping;  // null unless opened with mmap
  st::Header header;
};

ErlNifResourceType* st_file_type = nullptr;

void destroy_st_file(ErlNifEnv* /*env*/, void* object) {
  // Closes the descriptor and drops this file's share of the mapping, if any: the last share
  // (quantized tensors built on the file hold others) unmaps it.
  static_cast<StFile*>(object)->~StFile();
}

StFile& get_st_file(const Args& args, int i) {
  void* object = nullptr;
  if (!enif_get_resource(args.env(), args.term(i), st_file_type, &object))
    args.expected(i, "file", "a safetensors file reference from safetensors_open/1");
  return *static_cast<StFile*>(object);
}

std::string string_arg(const Args& args, int i, const char* name) {
  ErlNifBinary bin = args.binary(i, name);
  return std::string(reinterpret_cast<const char*>(bin.data), bin.size);
}

ERL_NIF_TERM make_string(ErlNifEnv* env, const std::string& s) {
  ERL_NIF_TERM term;
  unsigned char* data = enif_make_new_binary(env, s.size(), &term);
  if (!s.empty()) std::memcpy(data, s.data(), s.size());
  return term;
}

const st::TensorInfo& tensor_info(const Args& args, const StFile& file, int i, const char* what) {
  const std::string name = string_arg(args, i, what);
  const st::TensorInfo* t = file.header.find(name);
  if (t == nullptr)
    args.fail(i, what, "names no tensor of " + file.file->path() + ": '" + name + "'");
  return *t;
}

// Over the mapping (mmap mode only).
ConstBuffer tensor_bytes(const StFile& file, const st::TensorInfo& t) {
  return {file.mapping->data() + file.header.data_start + t.begin,
          static_cast<size_t>(t.end - t.begin)};
}

// Reads a tensor's bytes into `out` (its exact size; throws if the file changed since open).
void read_tensor(const StFile& file, const st::TensorInfo& t, void* out) {
  file.file->read(file.header.data_start + t.begin, out, static_cast<size_t>(t.end - t.begin));
}

// The header read with pread: the 8 length bytes, then the JSON (if the length is plausible;
// parse_header names the problem otherwise).
st::Header read_header(const RegularFile& file) {
  std::vector<uint8_t> bytes(static_cast<size_t>(std::min<uint64_t>(file.size(), 8)));
  file.read(0, bytes.data(), bytes.size());
  const uint64_t n = st::header_length(bytes.data(), bytes.size());
  if (bytes.size() == 8 && n <= file.size() - 8 && n <= st::kMaxHeaderBytes) {
    bytes.resize(static_cast<size_t>(8 + n));
    file.read(8, bytes.data() + 8, static_cast<size_t>(n));
  }
  return st::parse_header(bytes.data(), bytes.size(), file.size());
}

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// The triplet's shapes must be those of a rows x cols matrix with `spec`: the weight
// [..., cols * bits / 32], scales and biases [..., cols / group_size], the leading axes equal
// and multiplying to rows. Byte counts alone would let 4x256 be read from an 8x128 triplet.
void check_triplet_shapes(const Args& args, const st::TensorInfo& w, const st::TensorInfo& s,
                          const st::TensorInfo& b, size_t rows, size_t cols,
                          const QuantSpec& spec) {
  const std::string layout = "rows " + std::to_string(rows) + ", cols " + std::to_string(cols) +
                             ", bits " + std::to_string(spec.bits) + ", group_size " +
                             std::to_string(spec.group_size);
  auto fail = [&](int i, const char* what, const st::TensorInfo& t, const std::string& expected) {
    args.fail(i, what,
              "'" + t.name + "' has shape " + shape_text(t.shape) + ", expected " + expected +
                  " for " + layout);
  };
  if (w.shape.empty()) fail(1, "weight", w, "rank >= 1");
  // group_size is a multiple of 32, so this makes cols * bits a whole number of words
  if (cols % spec.group_size != 0)
    args.fail(5, "cols", std::to_string(cols) + " is not a multiple of group_size");
  const uint64_t words = mul_or_fail(cols / 32, spec.bits, "cols * bits");
  std::vector<uint64_t> leading(w.shape.begin(), w.shape.end() - 1);
  bool rows_match = true;
  uint64_t product = 1;
  for (uint64_t d : leading) {
    if (d != 0 && product > UINT64_MAX / d) rows_match = false;  // more rows than size_t holds
    product *= d;
  }
  rows_match = rows_match && product == rows;
  std::vector<uint64_t> expected = leading;
  expected.push_back(words);
  if (!rows_match) fail(1, "weight", w, "leading axes multiplying to " + std::to_string(rows));
  if (w.shape != expected) fail(1, "weight", w, shape_text(expected));
  std::vector<uint64_t> groups = leading;
  groups.push_back(cols / spec.group_size);
  if (s.shape != groups) fail(2, "scales", s, shape_text(groups));
  if (b.shape != groups) fail(3, "biases", b, shape_text(groups));
}

// ---- JSON <-> terms --------------------------------------------------------------------------

constexpr int kMaxJsonDepth = 256;

ERL_NIF_TERM json_to_term(ErlNifEnv* env, const nlohmann::json& j, int depth) {
  if (depth > kMaxJsonDepth) throw InvalidArgument("JSON nested deeper than 256 levels");
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return enif_make_atom(env, "nil");
    case nlohmann::json::value_t::boolean:
      return enif_make_atom(env, j.get<bool>() ? "true" : "false");
    case nlohmann::json::value_t::number_integer:
      return enif_make_int64(env, j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return enif_make_uint64(env, j.get<uint64_t>());
    case nlohmann::json::value_t::number_float:
      return enif_make_double(env, j.get<double>());
    case nlohmann::json::value_t::string:
      return make_string(env, j.get_ref<const std::string&>());
    case nlohmann::json::value_t::array: {
      ERL_NIF_TERM list = enif_make_list(env, 0);
      for (auto it = j.rbegin(); it != j.rend(); ++it)
        list = enif_make_list_cell(env, json_to_term(env, *it, depth + 1), list);
      return list;
    }
    case nlohmann::json::value_t::object: {
      ERL_NIF_TERM map = enif_make_new_map(env);
      for (const auto& [key, value] : j.items())
        enif_make_map_put(env, map, make_string(env, key), json_to_term(env, value, depth + 1),
                          &map);
      return map;
    }
    default:
      throw InvalidArgument("unsupported JSON value");
  }
}

nlohmann::ordered_json term_to_json(ErlNifEnv* env, ERL_NIF_TERM term, int depth);

std::string json_key(ErlNifEnv* env, ERL_NIF_TERM key) {
  ErlNifBinary bin;
  if (enif_inspect_binary(env, key, &bin))
    return std::string(reinterpret_cast<char*>(bin.data), bin.size);
  char atom[256];
  if (enif_get_atom(env, key, atom, sizeof atom, ERL_NIF_LATIN1) > 0) return atom;
  throw InvalidArgument("JSON object keys must be strings or atoms, got: " +
                        describe_term(env, key));
}

nlohmann::ordered_json term_to_json(ErlNifEnv* env, ERL_NIF_TERM term, int depth) {
  if (depth > kMaxJsonDepth) throw InvalidArgument("term nested deeper than 256 levels");
  ErlNifBinary bin;
  ErlNifSInt64 i;
  ErlNifUInt64 u;
  double d;
  char atom[16];
  unsigned length;
  if (enif_inspect_binary(env, term, &bin))
    return std::string(reinterpret_cast<char*>(bin.data), bin.size);
  if (enif_get_int64(env, term, &i)) return static_cast<int64_t>(i);
  if (enif_get_uint64(env, term, &u)) return static_cast<uint64_t>(u);
  if (enif_get_double(env, term, &d)) return d;
  if (enif_get_atom(env, term, atom, sizeof atom, ERL_NIF_LATIN1) > 0) {
    if (std::strcmp(atom, "true") == 0) return true;
    if (std::strcmp(atom, "false") == 0) return false;
    if (std::strcmp(atom, "nil") == 0) return nullptr;
  }
  if (enif_get_list_length(env, term, &length)) {
    auto array = nlohmann::ordered_json::array();
    ERL_NIF_TERM head, tail = term;
    while (enif_get_list_cell(env, tail, &head, &tail))
      array.push_back(term_to_json(env, head, depth + 1));
    return array;
  }
  if (enif_is_map(env, term)) {
    // Sorted keys: the same map always gives the same text.
    std::vector<std::pair<std::string, ERL_NIF_TERM>> items;
    ErlNifMapIterator it;
    if (!enif_map_iterator_create(env, term, &it, ERL_NIF_MAP_ITERATOR_FIRST))
      throw InvalidArgument("cannot iterate a map");
    ERL_NIF_TERM key, value;
    while (enif_map_iterator_get_pair(env, &it, &key, &value)) {
      try {
        items.emplace_back(json_key(env, key), value);
      } catch (...) {
        enif_map_iterator_destroy(env, &it);
        throw;
      }
      enif_map_iterator_next(env, &it);
    }
    enif_map_iterator_destroy(env, &it);
    std::sort(items.begin(), items.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    auto object = nlohmann::ordered_json::object();
    for (const auto& [k, v] : items) object[k] = term_to_json(env, v, depth + 1);
    return object;
  }
  throw InvalidArgument("cannot encode as JSON: " + describe_term(env, term));
}

}  // namespace

bool open_safetensors_resource_type(ErlNifEnv* env) {
  ErlNifResourceFlags tried;
  st_file_type = enif_open_resource_type(
      env, nullptr, "nx_quant_safetensors_file", destroy_st_file,
      static_cast<ErlNifResourceFlags>(ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER), &tried);
  return st_file_type != nullptr;
}

// safetensors_open(path, mmap) -> {file, [{name, dtype, shape, begin, end}], [{key, value}],
// data_start}. Runs on a dirty IO scheduler: open/read/mmap may wait on the disk (never on a
// FIFO: RegularFile refuses it without blocking).
ERL_NIF_TERM safetensors_open_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "safetensors_open/2", [&] {
    const Args args(env, "safetensors_open/2", argv);
    const std::string path = string_arg(args, 0, "path");
    if (path.find('\0') != std::string::npos) args.fail(0, "path", "contains a NUL byte");
    const bool mmap = args.boolean(1, "mmap");
    auto file = RegularFile::open(path);
    std::shared_ptr<FileMapping> mapping;
    st::Header header;
    try {
      if (mmap) {
        mapping = FileMapping::map(*file);
        header = st::parse_header(mapping->data(), mapping->size());
      } else {
        header = read_header(*file);
      }
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(path + ": " + e.what());
    }

    std::vector<ERL_NIF_TERM> tensors;
    for (const auto& t : header.tensors) {
      std::vector<ERL_NIF_TERM> dims;
      for (uint64_t d : t.shape) dims.push_back(enif_make_uint64(env, d));
      tensors.push_back(enif_make_tuple5(
          env, make_string(env, t.name), enif_make_atom(env, st::dtype_name(t.dtype)),
          enif_make_tuple_from_array(env, dims.data(), static_cast<unsigned>(dims.size())),
          enif_make_uint64(env, t.begin), enif_make_uint64(env, t.end)));
    }
    std::vector<ERL_NIF_TERM> metadata;
    for (const auto& [k, v] : header.metadata)
      metadata.push_back(enif_make_tuple2(env, make_string(env, k), make_string(env, v)));

    void* memory = enif_alloc_resource(st_file_type, sizeof(StFile));
    if (memory == nullptr) throw std::bad_alloc();
    new (memory) StFile{std::move(file), std::move(mapping), std::move(header)};
    ERL_NIF_TERM ref = enif_make_resource(env, memory);
    enif_release_resource(memory);
    return enif_make_tuple4(
        env, ref,
        enif_make_list_from_array(env, tensors.data(), static_cast<unsigned>(tensors.size())),
        enif_make_list_from_array(env, metadata.data(), static_cast<unsigned>(metadata.size())),
        enif_make_uint64(env, static_cast<StFile*>(memory)->header.data_start));
  });
}

// safetensors_tensor(file, name) -> binary: the tensor's bytes read into a new binary, or (mmap)
// a binary over the mapping (no copy; it keeps the file mapped). Dirty IO: the read may be large.
ERL_NIF_TERM safetensors_tensor_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "safetensors_tensor/2", [&] {
    const Args args(env, "safetensors_tensor/2", argv);
    StFile& file = get_st_file(args, 0);
    const st::TensorInfo& t = tensor_info(args, file, 1, "name");
    file.file->check_unchanged();
    if (file.mapping) {
      const ConstBuffer bytes = tensor_bytes(file, t);
      return enif_make_resource_binary(env, &file, bytes.data, bytes.bytes);
    }
    ErlNifBinary bin;
    if (!enif_alloc_binary(static_cast<size_t>(t.end - t.begin), &bin)) throw std::bad_alloc();
    try {
      read_tensor(file, t, bin.data);
    } catch (...) {
      enif_release_binary(&bin);
      throw;
    }
    return enif_make_binary(env, &bin);
  });
}

// safetensors_quantized(file, weight, scales, biases, rows, cols, bits, group_size) -> qtensor
// read into owned memory, or (mmap) over the mapping: no copy when the three tensors are
// aligned for their element types (files written by the reference library and by us are), else
// one copy. Every shape is checked. Dirty IO: the reads may be large.
ERL_NIF_TERM safetensors_quantized_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "safetensors_quantized/8", [&] {
    const Args args(env, "safetensors_quantized/8", argv);
    StFile& file = get_st_file(args, 0);
    const st::TensorInfo& w = tensor_info(args, file, 1, "weight");
    const st::TensorInfo& s = tensor_info(args, file, 2, "scales");
    const st::TensorInfo& b = tensor_info(args, file, 3, "biases");
    const size_t rows = args.size(4, "rows");
    const size_t cols = args.size(5, "cols");
    const QuantSpec spec{args.bits(6, "bits"), args.group_size(7, "group_size")};

    if (w.dtype != st::DType::U32)
      args.fail(1, "weight",
                "'" + w.name + "' has dtype " + st::dtype_name(w.dtype) + ", expected U32");
    DType dtype;
    switch (s.dtype) {
      case st::DType::F32:
        dtype = DType::F32;
        break;
      case st::DType::F16:
        dtype = DType::F16;
        break;
      case st::DType::BF16:
        dtype = DType::BF16;
        break;
      default:
        args.fail(2, "scales",
                  "'" + s.name + "' has dtype " + st::dtype_name(s.dtype) +
                      ", expected F32, F16 or BF16");
    }
    if (b.dtype != s.dtype)
      args.fail(3, "biases",
                "'" + b.name + "' has dtype " + st::dtype_name(b.dtype) + ", but the scales are " +
                    st::dtype_name(s.dtype));

    file.file->check_unchanged();
    check_triplet_shapes(args, w, s, b, rows, cols, spec);

    QuantizedMatrix m;
    if (file.mapping) {
      m.packed = tensor_bytes(file, w);
      m.scales = tensor_bytes(file, s);
      m.biases = tensor_bytes(file, b);
    } else {
      // Sizes only, for the checks below (nothing is read before they pass).
      static const uint8_t nothing = 0;
      m.packed = {&nothing, static_cast<size_t>(w.end - w.begin)};
      m.scales = {&nothing, static_cast<size_t>(s.end - s.begin)};
      m.biases = {&nothing, static_cast<size_t>(b.end - b.begin)};
    }
    m.dtype = dtype;
    m.rows = rows;
    m.cols = cols;
    m.spec = spec;
    const size_t elem = dtype_size(dtype);
    auto aligned = [](const ConstBuffer& buf, size_t a) {
      return reinterpret_cast<uintptr_t>(buf.data) % a == 0;
    };
    if (!file.mapping) {
      validate_quantized_matrix(m, "quantized tensor");
      OwnedQTensor out = allocate_owned_qtensor(rows, cols, spec, dtype);
      read_tensor(file, w, out.packed);
      read_tensor(file, s, out.scales);
      read_tensor(file, b, out.biases);
      return make_qtensor_term(env, out.matrix, std::move(out.keeper));
    }
    if (aligned(m.packed, 4) && aligned(m.scales, elem) && aligned(m.biases, elem)) {
      // validate_quantized_matrix (in make_qtensor_term) checks every size against the layout.
      return make_qtensor_term(env, m, std::shared_ptr<const void>(file.mapping));
    }
    validate_quantized_matrix(m, "quantized tensor");
    OwnedQTensor out = allocate_owned_qtensor(rows, cols, spec, dtype);
    std::memcpy(out.packed, m.packed.data, m.packed.bytes);
    std::memcpy(out.scales, m.scales.data, m.scales.bytes);
    std::memcpy(out.biases, m.biases.data, m.biases.bytes);
    return make_qtensor_term(env, out.matrix, std::move(out.keeper));
  });
}

// safetensors_plan([{name, dtype, [dims]}], [{key, value}]) -> {header_bytes, [{begin, end}]}
ERL_NIF_TERM safetensors_plan_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "safetensors_plan/2", [&] {
    const Args args(env, "safetensors_plan/2", argv);
    std::vector<st::WriteEntry> entries;
    ERL_NIF_TERM head, tail = args.term(0);
    unsigned length;
    if (!enif_get_list_length(env, tail, &length)) args.expected(0, "entries", "a list");
    while (enif_get_list_cell(env, tail, &head, &tail)) {
      int arity;
      const ERL_NIF_TERM* items;
      ErlNifBinary name;
      char dtype_name[16];
      if (!enif_get_tuple(env, head, &arity, &items) || arity != 3 ||
          !enif_inspect_binary(env, items[0], &name) ||
          enif_get_atom(env, items[1], dtype_name, sizeof dtype_name, ERL_NIF_LATIN1) <= 0)
        args.fail(0, "entries",
                  "must hold {name, dtype_atom, dims}, got: " + describe_term(env, head));
      st::WriteEntry entry;
      entry.name.assign(reinterpret_cast<char*>(name.data), name.size);
      auto dtype = st::dtype_from_name(dtype_name);
      if (!dtype) args.fail(0, "entries", "has unknown dtype " + std::string(dtype_name));
      entry.dtype = *dtype;
      ERL_NIF_TERM dim, dims = items[2];
      ErlNifUInt64 d;
      while (enif_get_list_cell(env, dims, &dim, &dims)) {
        if (!enif_get_uint64(env, dim, &d)) args.fail(0, "entries", "has a bad dimension");
        entry.shape.push_back(d);
      }
      entries.push_back(std::move(entry));
    }
    std::vector<std::pair<std::string, std::string>> metadata;
    if (!enif_get_list_length(env, args.term(1), &length)) args.expected(1, "metadata", "a list");
    tail = args.term(1);
    while (enif_get_list_cell(env, tail, &head, &tail)) {
      int arity;
      const ERL_NIF_TERM* items;
      ErlNifBinary k, v;
      if (!enif_get_tuple(env, head, &arity, &items) || arity != 2 ||
          !enif_inspect_binary(env, items[0], &k) || !enif_inspect_binary(env, items[1], &v))
        args.fail(1, "metadata", "must hold {key, value} binaries");
      metadata.emplace_back(std::string(reinterpret_cast<char*>(k.data), k.size),
                            std::string(reinterpret_cast<char*>(v.data), v.size));
    }
    const st::PlannedFile plan = st::plan_file(entries, metadata);
    std::vector<ERL_NIF_TERM> offsets;
    for (const auto& [begin, end] : plan.offsets)
      offsets.push_back(
          enif_make_tuple2(env, enif_make_uint64(env, begin), enif_make_uint64(env, end)));
    return enif_make_tuple2(
        env, make_string(env, plan.header_bytes),
        enif_make_list_from_array(env, offsets.data(), static_cast<unsigned>(offsets.size())));
  });
}

// json_decode(binary) -> term (objects: maps with binary keys; null: nil)
ERL_NIF_TERM json_decode_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "json_decode/1", [&] {
    const Args args(env, "json_decode/1", argv);
    ErlNifBinary bin = args.binary(0, "json");
    const char* text = reinterpret_cast<const char*>(bin.data);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text, text + bin.size);
    } catch (const nlohmann::json::exception& e) {
      throw InvalidArgument(std::string("invalid JSON: ") + e.what());
    }
    return json_to_term(env, j, 0);
  });
}

// json_encode(term, pretty) -> binary
ERL_NIF_TERM json_encode_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM argv[]) {
  return guarded(env, "json_encode/2", [&] {
    const Args args(env, "json_encode/2", argv);
    const bool pretty = args.boolean(1, "pretty");
    std::string text;
    try {
      text = term_to_json(env, args.term(0), 0).dump(pretty ? 2 : -1);
    } catch (const nlohmann::json::exception& e) {
      throw InvalidArgument(std::string("cannot encode as JSON: ") + e.what());
    }
    return make_string(env, text);
  });
}

// live_mappings() -> how many files are mapped now (tests: a dropped checkpoint is unmapped).
ERL_NIF_TERM live_mappings_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM /*argv*/[]) {
  return enif_make_long(env, FileMapping::live_count());
}

}  // namespace nx_quant::nif
