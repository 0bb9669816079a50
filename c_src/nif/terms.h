// Decoding NIF arguments with precise errors, and turning C++ exceptions into Elixir ones.
//
// Every NIF body runs inside guarded(): argument problems become an Elixir ArgumentError whose
// message names the function, the argument (position and name) and what was expected; the
// kernel's nx_quant::InvalidArgument becomes an ArgumentError too; std::bad_alloc and any
// other exception become a RuntimeError. No exception ever crosses into the VM.
#pragma once

#include <erl_nif.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>

#include "nx_quant/dtype.h"
#include "nx_quant/error.h"
#include "nx_quant/kernels.h"

namespace nx_quant::nif {

// A bad NIF argument; the message is complete (function, argument, expectation, what came).
class BadArg : public std::runtime_error {
 public:
  explicit BadArg(const std::string& what) : std::runtime_error(what) {}
};

// Raise %ArgumentError{message: message} / %RuntimeError{message: message} from a NIF.
// Both only allocate on the process heap, never throw.
ERL_NIF_TERM raise_argument_error(ErlNifEnv* env, const char* message) noexcept;
ERL_NIF_TERM raise_runtime_error(ErlNifEnv* env, const char* message) noexcept;

// `text` with every byte that is not part of a valid UTF-8 sequence written as \xNN. Every
// exception message goes through it (raise_argument_error / raise_runtime_error).
std::string printable_utf8(const char* text, size_t n);

// A short description of a term for error messages ("-1", ":foo", "a binary of 12 bytes",
// "a list", ...): never prints a whole large term.
std::string describe_term(ErlNifEnv* env, ERL_NIF_TERM term);

// The arguments of one NIF call, decoded by position. `fun` is "name/arity", used in messages.
class Args {
 public:
  Args(ErlNifEnv* env, const char* fun, const ERL_NIF_TERM argv[])
      : env_(env), fun_(fun), argv_(argv) {}

  ErlNifEnv* env() const { return env_; }
  const char* fun() const { return fun_; }
  ERL_NIF_TERM term(int i) const { return argv_[i]; }

  // A non-negative integer that fits size_t.
  size_t size(int i, const char* name) const;
  // An integer in [lo, hi].
  int integer(int i, const char* name, int lo, int hi) const;
  // One of 2, 3, 4, 5, 6, 8 / one of 32, 64, 128.
  int bits(int i, const char* name) const;
  int group_size(int i, const char* name) const;
  // The atom true or false.
  bool boolean(int i, const char* name) const;
  // The atom f32, f16 or bf16.
  DType dtype(int i, const char* name) const;
  // The atom affine, mxfp4, mxfp8 or nvfp4.
  nx_quant::QuantMode mode(int i, const char* name) const;
  // The atom exact or int8, alone or as {precision, :batch_invariant} (see batch_invariant).
  nx_quant::Precision precision(int i, const char* name) const;
  // Whether the precision argument i is the tuple {precision, :batch_invariant}
  // (ExecOptions::batch_invariant); precision(i, name) validates the term.
  bool batch_invariant(int i) const;
  // A binary (no copy: the bytes stay owned by the term, valid for the whole call).
  ErlNifBinary binary(int i, const char* name) const;

  // Throws BadArg: "<fun>: argument <i+1> (<name>) <problem>".
  [[noreturn]] void fail(int i, const char* name, const std::string& problem) const;
  // Throws BadArg: "<fun>: argument <i+1> (<name>) must be <expected>, got: <description>".
  [[noreturn]] void expected(int i, const char* name, const char* expected) const;

 private:
  ErlNifEnv* env_;
  const char* fun_;
  const ERL_NIF_TERM* argv_;
};

// a * b for sizes, throwing BadArg naming `what` on overflow.
size_t mul_or_fail(size_t a, size_t b, const char* what);

ERL_NIF_TERM make_dtype_atom(ErlNifEnv* env, DType dtype);

// Runs body() (returning the NIF's result term) and converts every exception as described at
// the top of this file. `fun` prefixes messages that do not carry it already.
template <typename Body>
ERL_NIF_TERM guarded(ErlNifEnv* env, const char* fun, Body&& body) noexcept {
  char message[512];
  try {
    return body();
  } catch (const BadArg& e) {
    return raise_argument_error(env, e.what());
  } catch (const nx_quant::InvalidArgument& e) {
    std::snprintf(message, sizeof message, "%s: %s", fun, e.what());
    return raise_argument_error(env, message);
  } catch (const std::bad_alloc&) {
    std::snprintf(message, sizeof message, "%s: out of memory", fun);
    return raise_runtime_error(env, message);
  } catch (const std::exception& e) {
    std::snprintf(message, sizeof message, "%s: internal error: %s", fun, e.what());
    return raise_runtime_error(env, message);
  } catch (...) {
    std::snprintf(message, sizeof message, "%s: internal error (unknown C++ exception)", fun);
    return raise_runtime_error(env, message);
  }
}

// Work estimated to take longer than this on one thread goes to a dirty scheduler (the
// Erlang documentation asks NIFs on normal schedulers to return within about 1 ms). For the
// quantized matmul, whose decode-sized calls are the hot path: the dirty switch costs tens of
// microseconds, more than the rest of the NIF layer.
inline constexpr double kNormalSchedulerBudgetNs = 1e6;

// The budget of quantize, dequantize and quantized_tensor: conversions done when a model is
// loaded, where the dirty switch costs little. Calls under it run here (reporting their time),
// so a loop on them rotates with the other processes like any loop of ~1 ms timeslices; a
// loop on longer calls (e.g. 8 processes quantizing 0.45 ms matrices) runs on the dirty
// schedulers and leaves the normal ones to everything else.
inline constexpr double kConversionBudgetNs = 100'000;

// What a full timeslice (CONTEXT_REDS, 4000 reductions) is worth in NIF time. The Erlang
// documentation says about 1 ms, but plain Elixir code uses up its 4000 reductions in under
// 0.1 ms on current CPUs (73 us measured here), so at 1 ms a process looping on NIF calls
// would keep its scheduler ~10x longer per turn than one looping on Elixir code, and a
// process waiting behind 4 of them would wait ~5 ms per turn instead of ~0.5 ms.
inline constexpr int64_t kTimesliceNs = 250'000;

// Tells the scheduler that a NIF on a normal scheduler ran for `ns`.
void consume_timeslice(ErlNifEnv* env, int64_t ns);

// An output binary released on every exit path unless handed to a term.
class OutputBinary {
 public:
  explicit OutputBinary(size_t bytes) {
    if (!enif_alloc_binary(bytes, &bin_)) throw std::bad_alloc();
    owned_ = true;
  }
  ~OutputBinary() {
    if (owned_) enif_release_binary(&bin_);
  }
  OutputBinary(const OutputBinary&) = delete;
  OutputBinary& operator=(const OutputBinary&) = delete;

  MutableBuffer buffer() { return {bin_.data, bin_.size}; }
  ERL_NIF_TERM release_to_term(ErlNifEnv* env) {
    owned_ = false;
    return enif_make_binary(env, &bin_);
  }

 private:
  ErlNifBinary bin_{};
  bool owned_ = false;
};

using NifFunction = ERL_NIF_TERM (*)(ErlNifEnv*, int, const ERL_NIF_TERM[]);

// Re-runs `fn` with the same arguments on a dirty CPU scheduler.
ERL_NIF_TERM reschedule_dirty(ErlNifEnv* env, const char* name, NifFunction fn, int argc,
                              const ERL_NIF_TERM argv[]);

// Calls estimated under this are charged by their estimate: two clock reads would cost a
// noticeable part of them, and they are too short for an error in the estimate to matter.
inline constexpr double kMeasureAboveNs = 10'000;

// The one scheduling rule of every NIF whose work depends on its arguments: work estimated
// (one thread, deliberately high) above `budget_ns` re-runs `self` on a dirty CPU scheduler;
// anything else runs here and reports its time with enif_consume_timeslice, so that a process
// looping on sub-millisecond calls is preempted as one running Elixir code would be (without
// it, a NIF call counts as one reduction and such a loop holds its scheduler for seconds).
// On a dirty scheduler `work` just runs.
template <typename Work>
ERL_NIF_TERM run_scheduled(ErlNifEnv* env, double estimated_ns, double budget_ns, const char* name,
                           NifFunction self, int argc, const ERL_NIF_TERM argv[], Work&& work) {
  if (enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER) return work();
  if (estimated_ns > budget_ns) return reschedule_dirty(env, name, self, argc, argv);
  if (estimated_ns < kMeasureAboveNs) {
    ERL_NIF_TERM result = work();
    consume_timeslice(env, static_cast<int64_t>(estimated_ns));
    return result;
  }
  const auto start = std::chrono::steady_clock::now();
  ERL_NIF_TERM result = work();
  consume_timeslice(env, std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now() - start)
                             .count());
  return result;
}

}  // namespace nx_quant::nif
