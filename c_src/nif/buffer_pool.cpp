#include "buffer_pool.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include "nif_functions.h"

namespace nx_quant::nif {
namespace {

// The resource object behind a pooled binary.
struct PooledBuffer {
  void* data;
  size_t capacity;
};

ErlNifResourceType* buffer_type = nullptr;

// Size classes: multiples of a quarter of the largest power of two not above the size (at most
// 25% unused), so the outputs of one shape always share a class.
size_t size_class(size_t bytes) {
  size_t p = 1;
  while (p <= bytes / 2) p *= 2;
  const size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

size_t limit_from_env() {
  const char* value = std::getenv("NX_QUANT_BUFFER_POOL_MB");
  if (value == nullptr || *value == '\0') return size_t{256} << 20;
  char* end = nullptr;
  const unsigned long long mb = std::strtoull(value, &end, 10);
  if (end == value || *end != '\0' || mb > (size_t{1} << 24)) return size_t{256} << 20;
  return static_cast<size_t>(mb) << 20;
}

class Pool {
 public:
  void* take(size_t capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(capacity);
      if (it != free_.end() && !it->second.empty()) {
        void* data = it->second.back();
        it->second.pop_back();
        idle_ -= capacity;
        ++reused_;
        return data;
      }
      ++allocated_;
    }
    void* data = std::aligned_alloc(64, capacity);  // capacity is a multiple of 64 here
    if (data == nullptr) throw std::bad_alloc();
    return data;
  }

  void give(void* data, size_t capacity) noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_ + capacity <= limit_) {
        try {
          free_[capacity].push_back(data);
          idle_ += capacity;
          return;
        } catch (...) {  // no memory for the list entry: free the buffer instead
        }
      }
    }
    std::free(data);
  }

  BufferPoolStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {reused_, allocated_, idle_, limit_};
  }

 private:
  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;
  size_t idle_ = 0;
  const size_t limit_ = limit_from_env();
  uint64_t reused_ = 0, allocated_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: buffers may return during VM shutdown
  return *p;
}

void destroy_buffer(ErlNifEnv* /*env*/, void* obj) {
  auto* buffer = static_cast<PooledBuffer*>(obj);
  if (buffer->data != nullptr) pool().give(buffer->data, buffer->capacity);
}

}  // namespace

bool open_buffer_resource_type(ErlNifEnv* env) {
  buffer_type = enif_open_resource_type(
      env, nullptr, "nx_quant_output_buffer", destroy_buffer,
      static_cast<ErlNifResourceFlags>(ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER), nullptr);
  return buffer_type != nullptr;
}

OutputBuffer::OutputBuffer(size_t bytes) : size_(bytes) {
  if (bytes < kPooledMinBytes || buffer_type == nullptr) {
    if (!enif_alloc_binary(bytes, &bin_)) throw std::bad_alloc();
    data_ = bin_.data;
    owned_ = true;
    return;
  }
  auto* buffer = static_cast<PooledBuffer*>(enif_alloc_resource(buffer_type, sizeof(PooledBuffer)));
  if (buffer == nullptr) throw std::bad_alloc();
  buffer->data = nullptr;
  buffer->capacity = size_class(bytes);
  resource_ = buffer;
  owned_ = true;
  try {
    buffer->data = pool().take(buffer->capacity);
  } catch (...) {
    enif_release_resource(buffer);
    resource_ = nullptr;
    owned_ = false;
    throw;
  }
  data_ = buffer->data;
}

OutputBuffer::~OutputBuffer() {
  if (!owned_) return;
  if (resource_ != nullptr) {
    enif_release_resource(resource_);  // the destructor returns the buffer to the pool
  } else {
    enif_release_binary(&bin_);
  }
}

ERL_NIF_TERM OutputBuffer::release(ErlNifEnv* env) {
  owned_ = false;
  if (resource_ == nullptr) return enif_make_binary(env, &bin_);
  ERL_NIF_TERM term = enif_make_resource_binary(env, resource_, data_, size_);
  enif_release_resource(resource_);  // the binary now holds the only reference
  return term;
}

BufferPoolStats buffer_pool_stats() {
  return pool().stats();
}

// buffer_pool_stats() -> %{reused, allocated, idle_bytes, limit_bytes}
ERL_NIF_TERM buffer_pool_stats_nif(ErlNifEnv* env, int /*argc*/, const ERL_NIF_TERM /*argv*/[]) {
  const BufferPoolStats s = buffer_pool_stats();
  ERL_NIF_TERM keys[] = {enif_make_atom(env, "reused"), enif_make_atom(env, "allocated"),
                         enif_make_atom(env, "idle_bytes"), enif_make_atom(env, "limit_bytes")};
  ERL_NIF_TERM values[] = {enif_make_uint64(env, s.reused), enif_make_uint64(env, s.allocated),
                           enif_make_uint64(env, s.idle_bytes),
                           enif_make_uint64(env, s.limit_bytes)};
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, values, 4, &map);
  return map;
}

}  // namespace nx_quant::nif
