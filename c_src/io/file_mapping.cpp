#include "nx_quant/file_mapping.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

namespace nx_quant {

std::atomic<long> FileMapping::live_{0};

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path, int err) {
  throw InvalidArgument("cannot " + what + " " + path + ": " + std::strerror(err));
}

}  // namespace

std::shared_ptr<FileMapping> FileMapping::open(const std::string& path) {
  return map(*RegularFile::open(path));
}

std::shared_ptr<FileMapping> FileMapping::map(const RegularFile& file) {
  const size_t size = static_cast<size_t>(file.size());
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, file.fd(), 0);
    if (p == MAP_FAILED) fail("map", file.path(), errno);
    data = static_cast<const uint8_t*>(p);
  }
  // The mapping keeps the file's pages reachable after the descriptor is closed.
  return std::shared_ptr<FileMapping>(new FileMapping(file.path(), data, size));
}

FileMapping::FileMapping(std::string path, const uint8_t* data, size_t size)
    : path_(std::move(path)), data_(data), size_(size) {
  ++live_;
}

FileMapping::~FileMapping() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  --live_;
}

}  // namespace nx_quant
