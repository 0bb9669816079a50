// A dense buffer updated in place whose earlier versions stay readable.
//
// Nx tensors are immutable, so a put_slice into a KV cache must return a new tensor while the
// old one still reads as before. Copying the whole cache for that (what a binary-backed backend
// has to do) moves 2x the cache's bytes per token: at a 2048-token context that is more traffic
// than the attention itself. A VersionedBuffer makes the update O(slice): the current version
// owns the memory and is written in place; before each write the window's old contents are saved
// to an undo log, so any earlier version v is rebuilt on demand as a copy of the current one
// with the log entries after v undone, newest first (a persistent array by "shallow binding",
// H. Baker 1978). Reading the current version costs nothing; reading an old one costs a copy.
//
// Not thread-safe by itself: hold mutex() shared to read (data(), read_version()) and
// exclusively to write (record_write() followed by the write into data()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <vector>

#include "nx_quant/dense_ops.h"

namespace nx_quant::dense {

class VersionedBuffer {
 public:
  // `count` elements of `type`, uninitialized, at version 0. Throws std::bad_alloc.
  VersionedBuffer(Type type, size_t count);

  Type type() const { return type_; }
  size_t count() const { return count_; }
  size_t bytes() const { return count_ * type_size(type_); }
  // The current version: 0 at creation, +1 per record_write().
  uint64_t version() const { return static_cast<uint64_t>(undo_.size()); }
  // Bytes held by the undo log (the saved windows).
  size_t undo_bytes() const { return undo_bytes_; }

  // The current version's elements, row-major (64-byte aligned).
  void* data() { return data_.get(); }
  const void* data() const { return data_.get(); }

  // Saves the current contents of a strided window (element i of `shape` at element
  // `offset + sum(i_k * strides[k])`) and advances the version; the caller then overwrites that
  // window in data(). Returns the new version. Throws InvalidArgument for a window that leaves
  // the buffer.
  uint64_t record_write(const Shape& shape, int64_t offset, const std::vector<int64_t>& strides);

  // Writes version `v` (v <= version()) of all count() elements into `out`, contiguous.
  // Throws InvalidArgument for a version that does not exist.
  void read_version(uint64_t v, void* out) const;

  std::shared_mutex& mutex() const { return mutex_; }

 private:
  struct Undo {
    Shape shape;
    int64_t offset;
    std::vector<int64_t> strides;
    std::vector<uint8_t> saved;  // the window's elements before the write, contiguous
  };
  struct AlignedDelete {
    void operator()(uint8_t* p) const;
  };

  Type type_;
  size_t count_;
  std::unique_ptr<uint8_t, AlignedDelete> data_;
  std::vector<Undo> undo_;  // undo_[v] turns version v + 1 back into version v
  size_t undo_bytes_ = 0;
  mutable std::shared_mutex mutex_;
};

}  // namespace nx_quant::dense
