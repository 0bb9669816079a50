// A regular file opened for reading, safely: the path is checked with stat(2) before open(2),
// which is O_NONBLOCK (so a FIFO or a device never blocks the caller, even if it appears between
// the two calls), and fstat(2) must then show the same regular file. Reads are pread(2) of an
// exact range, refused when the file is now shorter or has been modified since it was opened
// (size or modification time differ): a file rewritten underneath gives an error, never bytes
// of two versions.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "nx_quant/error.h"

namespace nx_quant {

class RegularFile {
 public:
  // Throws InvalidArgument naming the path and the problem (missing, not a regular file, ...).
  static std::shared_ptr<RegularFile> open(const std::string& path);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  int fd() const { return fd_; }
  uint64_t size() const { return static_cast<uint64_t>(opened_.st_size); }
  const std::string& path() const { return path_; }

  // Reads bytes [offset, offset + n) into out. Throws InvalidArgument naming the file if it
  // has been truncated or modified since open (checked before and after the read).
  void read(uint64_t offset, void* out, size_t n) const;

  // Throws InvalidArgument if the file's size or modification time differ from those at open.
  void check_unchanged() const;

  // How many are open in this process (tests check that dropping the last user closes it).
  static long live_count() { return live_.load(); }

 private:
  RegularFile(std::string path, int fd, const struct stat& st);

  std::string path_;
  int fd_ = -1;
  struct stat opened_ {};
  static std::atomic<long> live_;
};

}  // namespace nx_quant
