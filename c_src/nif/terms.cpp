#include "terms.h"

#include <algorithm>
#include <climits>
#include <cstring>

namespace nx_quant::nif {

namespace {

// The length of the valid UTF-8 sequence at s[0..n), or 0 (overlong forms, surrogates and
// code points above U+10FFFF are invalid, as for String.valid?/1).
size_t utf8_sequence(const unsigned char* s, size_t n) {
  const unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t length;
  uint32_t code;
  if ((c & 0xE0) == 0xC0) {
    length = 2;
    code = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    length = 3;
    code = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    length = 4;
    code = c & 0x07;
  } else {
    return 0;
  }
  if (n < length) return 0;
  for (size_t i = 1; i < length; ++i) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    code = (code << 6) | (s[i] & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (code < kMin[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return length;
}

}  // namespace

std::string printable_utf8(const char* text, size_t n) {
  const auto* s = reinterpret_cast<const unsigned char*>(text);
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < n;) {
    const size_t length = utf8_sequence(s + i, n - i);
    if (length == 0) {
      char escape[5];
      std::snprintf(escape, sizeof escape, "\\x%02X", s[i]);
      out += escape;
      ++i;
    } else {
      out.append(text + i, length);
      i += length;
    }
  }
  return out;
}

namespace {

ERL_NIF_TERM raise_exception(ErlNifEnv* env, const char* module, const char* raw) noexcept {
  // Messages quote paths, tensor names and JSON text, whose bytes may be any: the message must
  // be valid UTF-8 all the same (printing one that is not raises).
  std::string message;
  try {
    message = printable_utf8(raw, std::strlen(raw));
  } catch (...) {
    message = "(out of memory while formatting an error)";
  }
  const size_t length = message.size();
  ERL_NIF_TERM text;
  unsigned char* bytes = enif_make_new_binary(env, length, &text);
  if (bytes == nullptr) return enif_make_badarg(env);
  std::memcpy(bytes, message.data(), length);
  ERL_NIF_TERM keys[3] = {enif_make_atom(env, "__struct__"), enif_make_atom(env, "__exception__"),
                          enif_make_atom(env, "message")};
  ERL_NIF_TERM values[3] = {enif_make_atom(env, module), enif_make_atom(env, "true"), text};
  ERL_NIF_TERM exception;
  if (!enif_make_map_from_arrays(env, keys, values, 3, &exception)) return enif_make_badarg(env);
  return enif_raise_exception(env, exception);
}

std::string format_term(ERL_NIF_TERM term) {
  char buffer[128];
  int n = enif_snprintf(buffer, sizeof buffer, "%T", term);
  if (n < 0) return "a term";
  if (static_cast<size_t>(n) >= sizeof buffer) return std::string(buffer) + "...";
  return buffer;
}

}  // namespace

ERL_NIF_TERM raise_argument_error(ErlNifEnv* env, const char* message) noexcept {
  return raise_exception(env, "Elixir.ArgumentError", message);
}

ERL_NIF_TERM raise_runtime_error(ErlNifEnv* env, const char* message) noexcept {
  return raise_exception(env, "Elixir.RuntimeError", message);
}

std::string describe_term(ErlNifEnv* env, ERL_NIF_TERM term) {
  switch (enif_term_type(env, term)) {
    case ERL_NIF_TERM_TYPE_ATOM: {
      // As Elixir prints it: nil/true/false bare, modules without "Elixir.", others as :name.
      const std::string name = format_term(term);
      if (name == "nil" || name == "true" || name == "false") return name;
      if (name.rfind("Elixir.", 0) == 0) return name.substr(7);
      return ":" + name;
    }
    case ERL_NIF_TERM_TYPE_INTEGER:
      return format_term(term);
    case ERL_NIF_TERM_TYPE_FLOAT: {
      double value = 0;
      enif_get_double(env, term, &value);
      char buffer[40];
      std::snprintf(buffer, sizeof buffer, "%.17g", value);
      std::string text = buffer;
      if (text.find_first_of(".e") == std::string::npos) text += ".0";
      return text;
    }
    case ERL_NIF_TERM_TYPE_BITSTRING: {
      ErlNifBinary bin;
      if (enif_inspect_binary(env, term, &bin)) {
        return "a binary of " + std::to_string(bin.size) + " bytes";
      }
      return "a bitstring";
    }
    case ERL_NIF_TERM_TYPE_LIST:
      return "a list";
    case ERL_NIF_TERM_TYPE_TUPLE: {
      int arity = 0;
      const ERL_NIF_TERM* elements;
      enif_get_tuple(env, term, &arity, &elements);
      return "a tuple of size " + std::to_string(arity);
    }
    case ERL_NIF_TERM_TYPE_MAP:
      return "a map";
    case ERL_NIF_TERM_TYPE_REFERENCE:
      return "a reference";
    case ERL_NIF_TERM_TYPE_PID:
      return "a pid";
    case ERL_NIF_TERM_TYPE_PORT:
      return "a port";
    case ERL_NIF_TERM_TYPE_FUN:
      return "a function";
    default:
      return "an unknown term";
  }
}

void Args::fail(int i, const char* name, const std::string& problem) const {
  throw BadArg(std::string(fun_) + ": argument " + std::to_string(i + 1) + " (" + name + ") " +
               problem);
}

void Args::expected(int i, const char* name, const char* expected) const {
  fail(i, name, std::string("must be ") + expected + ", got: " + describe_term(env_, argv_[i]));
}

size_t Args::size(int i, const char* name) const {
  ErlNifUInt64 value;
  if (!enif_get_uint64(env_, argv_[i], &value) || value > SIZE_MAX) {
    expected(i, name, "a non-negative integer below 2^64");
  }
  return static_cast<size_t>(value);
}

int Args::integer(int i, const char* name, int lo, int hi) const {
  int value;
  if (!enif_get_int(env_, argv_[i], &value) || value < lo || value > hi) {
    const std::string range = "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
    expected(i, name, range.c_str());
  }
  return value;
}

int Args::bits(int i, const char* name) const {
  int value;
  if (!enif_get_int(env_, argv_[i], &value) ||
      !(value == 2 || value == 3 || value == 4 || value == 5 || value == 6 || value == 8)) {
    expected(i, name, "one of 2, 3, 4, 5, 6, 8");
  }
  return value;
}

int Args::group_size(int i, const char* name) const {
  int value;
  if (!enif_get_int(env_, argv_[i], &value) || !(value == 32 || value == 64 || value == 128)) {
    expected(i, name, "one of 32, 64, 128");
  }
  return value;
}

bool Args::boolean(int i, const char* name) const {
  char atom[8];
  if (enif_get_atom(env_, argv_[i], atom, sizeof atom, ERL_NIF_LATIN1) > 0) {
    if (std::strcmp(atom, "true") == 0) return true;
    if (std::strcmp(atom, "false") == 0) return false;
  }
  expected(i, name, "true or false");
}

DType Args::dtype(int i, const char* name) const {
  char atom[8];
  if (enif_get_atom(env_, argv_[i], atom, sizeof atom, ERL_NIF_LATIN1) > 0) {
    if (std::strcmp(atom, "f32") == 0) return DType::F32;
    if (std::strcmp(atom, "f16") == 0) return DType::F16;
    if (std::strcmp(atom, "bf16") == 0) return DType::BF16;
  }
  expected(i, name, "one of :f32, :f16, :bf16");
}

nx_quant::QuantMode Args::mode(int i, const char* name) const {
  char atom[8];
  if (enif_get_atom(env_, argv_[i], atom, sizeof atom, ERL_NIF_LATIN1) > 0) {
    for (auto mode : {nx_quant::QuantMode::Affine, nx_quant::QuantMode::Mxfp4,
                      nx_quant::QuantMode::Mxfp8, nx_quant::QuantMode::Nvfp4}) {
      if (std::strcmp(atom, nx_quant::mode_name(mode)) == 0) return mode;
    }
  }
  expected(i, name, "one of :affine, :mxfp4, :mxfp8, :nvfp4");
}

nx_quant::Precision Args::precision(int i, const char* name) const {
  ERL_NIF_TERM term = argv_[i];
  int arity = 0;
  const ERL_NIF_TERM* elements = nullptr;
  if (enif_get_tuple(env_, term, &arity, &elements)) {
    if (arity != 2 || !batch_invariant(i)) {
      expected(i, name,
               "one of :exact, :int8, {:exact, :batch_invariant}, {:int8, :batch_invariant}");
    }
    term = elements[0];
  }
  char atom[8];
  if (enif_get_atom(env_, term, atom, sizeof atom, ERL_NIF_LATIN1) > 0) {
    if (std::strcmp(atom, "exact") == 0) return nx_quant::Precision::Exact;
    if (std::strcmp(atom, "int8") == 0) return nx_quant::Precision::Int8;
  }
  expected(i, name, "one of :exact, :int8, {:exact, :batch_invariant}, {:int8, :batch_invariant}");
}

bool Args::batch_invariant(int i) const {
  int arity = 0;
  const ERL_NIF_TERM* elements = nullptr;
  char atom[16];
  return enif_get_tuple(env_, argv_[i], &arity, &elements) && arity == 2 &&
         enif_get_atom(env_, elements[1], atom, sizeof atom, ERL_NIF_LATIN1) > 0 &&
         std::strcmp(atom, "batch_invariant") == 0;
}

ErlNifBinary Args::binary(int i, const char* name) const {
  ErlNifBinary bin;
  if (!enif_inspect_binary(env_, argv_[i], &bin)) expected(i, name, "a binary");
  return bin;
}

size_t mul_or_fail(size_t a, size_t b, const char* what) {
  if (a != 0 && b > SIZE_MAX / a) throw BadArg(std::string(what) + " overflows size_t");
  return a * b;
}

ERL_NIF_TERM make_dtype_atom(ErlNifEnv* env, DType dtype) {
  return enif_make_atom(env, dtype_name(dtype));
}

void consume_timeslice(ErlNifEnv* env, int64_t ns) {
  const int64_t percent = ns * 100 / kTimesliceNs;
  enif_consume_timeslice(env, static_cast<int>(std::clamp<int64_t>(percent, 1, 100)));
}

ERL_NIF_TERM reschedule_dirty(ErlNifEnv* env, const char* name, NifFunction fn, int argc,
                              const ERL_NIF_TERM argv[]) {
  return enif_schedule_nif(env, name, ERL_NIF_DIRTY_JOB_CPU_BOUND, fn, argc, argv);
}

}  // namespace nx_quant::nif
