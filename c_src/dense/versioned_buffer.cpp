// VersionedBuffer (nx_quant/versioned_buffer.h): in-place writes with an undo log.
#include "nx_quant/versioned_buffer.h"

#include <cstring>
#include <limits>
#include <new>
#include <string>

#include "nx_quant/error.h"

namespace nx_quant::dense {

namespace {

constexpr std::align_val_t kAlignment{64};

}  // namespace

void VersionedBuffer::AlignedDelete::operator()(uint8_t* p) const {
  ::operator delete[](p, kAlignment);
}

VersionedBuffer::VersionedBuffer(Type type, size_t count) : type_(type), count_(count) {
  if (count > std::numeric_limits<size_t>::max() / 8) throw std::bad_alloc();
  const size_t n = count * type_size(type);
  data_.reset(static_cast<uint8_t*>(::operator new[](n == 0 ? 1 : n, kAlignment)));
}

uint64_t VersionedBuffer::record_write(const Shape& shape, int64_t offset,
                                       const std::vector<int64_t>& strides) {
  Undo undo{shape, offset, strides, {}};
  undo.saved.resize(element_count(shape) * type_size(type_));
  View window{data_.get(), count_, type_, offset, strides};
  // Validates the window (a bad one throws before anything changes). One thread: the windows
  // written in place are small (a KV-cache row), and the caller holds an exclusive lock.
  unary(UnaryOp::Copy, shape, window, type_, undo.saved.data(), 1);
  undo_bytes_ += undo.saved.size();
  undo_.push_back(std::move(undo));
  return version();
}

void VersionedBuffer::read_version(uint64_t v, void* out) const {
  if (v > version()) {
    throw InvalidArgument("versioned buffer: version " + std::to_string(v) +
                          " does not exist (the newest is " + std::to_string(version()) + ")");
  }
  if (bytes() == 0) return;
  std::memcpy(out, data_.get(), bytes());
  for (uint64_t u = version(); u-- > v;) {
    const Undo& undo = undo_[u];
    const View saved{undo.saved.data(), element_count(undo.shape), type_, 0,
                     contiguous_strides(undo.shape)};
    copy_into(undo.shape, saved, type_, out, count_, undo.offset, undo.strides, 1);
  }
}

}  // namespace nx_quant::dense
