// Output binaries of the dense NIFs, recycled.
//
// A decode step allocates the same large outputs again and again (a put_slice of the KV cache
// copies all of it, every step). A fresh binary of that size is fresh memory from the OS: in the
// VMs these machines are, first-touch page faults cost ~2.3 us per 4 KB page, which made copying
// a 4 MB cache 5x slower than the copy itself. So outputs of at least kPooledMinBytes are
// resource binaries over buffers kept in a process-wide pool: when the last reference to such a
// binary is garbage collected, its buffer goes back to the pool (up to a cap on the idle bytes,
// NX_QUANT_BUFFER_POOL_MB, default 256) and the next output of its size class reuses the same,
// already mapped pages. Smaller outputs are ordinary binaries.
#pragma once

#include <erl_nif.h>

#include <cstddef>
#include <cstdint>

namespace nx_quant::nif {

inline constexpr size_t kPooledMinBytes = size_t{64} * 1024;

// Registers the buffer resource type. Call from load/upgrade.
bool open_buffer_resource_type(ErlNifEnv* env);

// An output of `bytes` bytes, released on every exit path unless handed to a term.
class OutputBuffer {
 public:
  explicit OutputBuffer(size_t bytes);  // throws std::bad_alloc
  ~OutputBuffer();
  OutputBuffer(const OutputBuffer&) = delete;
  OutputBuffer& operator=(const OutputBuffer&) = delete;

  void* data() { return data_; }
  size_t size() const { return size_; }
  // The binary term; the buffer then belongs to it.
  ERL_NIF_TERM release(ErlNifEnv* env);

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
  void* resource_ = nullptr;  // pooled: the resource owning the buffer
  ErlNifBinary bin_{};        // not pooled
  bool owned_ = false;
};

struct BufferPoolStats {
  uint64_t reused = 0;       // outputs served from the pool
  uint64_t allocated = 0;    // outputs that needed new memory
  uint64_t idle_bytes = 0;   // bytes held for reuse now
  uint64_t limit_bytes = 0;  // the cap on idle bytes
};

BufferPoolStats buffer_pool_stats();

}  // namespace nx_quant::nif
