#include "nx_quant/file_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("open", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("stat", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InvalidArgument("cannot map " + path + ": not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail("map", path, err);
    }
    data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  return std::shared_ptr<FileMapping>(new FileMapping(path, data, size));
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
