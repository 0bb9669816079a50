#include "nx_quant/regular_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace nx_quant {

std::atomic<long> RegularFile::live_{0};

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path, int err) {
  throw InvalidArgument("cannot " + what + " " + path + ": " + std::strerror(err));
}

const char* kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

[[noreturn]] void not_regular(const std::string& path, mode_t mode) {
  throw InvalidArgument("cannot read " + path + ": not a regular file (it is " + kind(mode) + ")");
}

bool same_time(const struct timespec& a, const struct timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

#if defined(__APPLE__)
const struct timespec& mtime(const struct stat& st) {
  return st.st_mtimespec;
}
#else
const struct timespec& mtime(const struct stat& st) {
  return st.st_mtim;
}
#endif

}  // namespace

std::shared_ptr<RegularFile> RegularFile::open(const std::string& path) {
  // stat first: never open(2) a FIFO or a device at all (opening some has side effects).
  struct stat before {};
  if (::stat(path.c_str(), &before) != 0) fail("open", path, errno);
  if (!S_ISREG(before.st_mode)) not_regular(path, before.st_mode);
  // O_NONBLOCK: if the path was swapped for a FIFO since, open(2) still returns at once.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) fail("open", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("stat", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    not_regular(path, st.st_mode);
  }
  return std::shared_ptr<RegularFile>(new RegularFile(path, fd, st));
}

RegularFile::RegularFile(std::string path, int fd, const struct stat& st)
    : path_(std::move(path)), fd_(fd), opened_(st) {
  ++live_;
}

RegularFile::~RegularFile() {
  ::close(fd_);
  --live_;
}

void RegularFile::check_unchanged() const {
  struct stat now {};
  if (::fstat(fd_, &now) != 0) fail("stat", path_, errno);
  if (now.st_size != opened_.st_size)
    throw InvalidArgument(path_ + " changed since it was opened: it is now " +
                          std::to_string(now.st_size) + " bytes, it was " +
                          std::to_string(opened_.st_size) + " (reopen it)");
  if (!same_time(mtime(now), mtime(opened_)))
    throw InvalidArgument(path_ +
                          " changed since it was opened: it was modified in place (reopen it)");
}

void RegularFile::read(uint64_t offset, void* out, size_t n) const {
  check_unchanged();
  if (offset > size() || n > size() - offset)
    throw InvalidArgument("cannot read bytes [" + std::to_string(offset) + ", " +
                          std::to_string(offset + n) + ") of " + path_ + ": it has " +
                          std::to_string(size()) + " bytes");
  auto* p = static_cast<uint8_t*>(out);
  size_t done = 0;
  while (done < n) {
    const ssize_t got = ::pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      fail("read", path_, errno);
    }
    if (got == 0)
      throw InvalidArgument(path_ + " changed since it was opened: it ends before byte " +
                            std::to_string(offset + n) + " (truncated; reopen it)");
    done += static_cast<size_t>(got);
  }
  check_unchanged();  // a rewrite during the read would have mixed two versions
}

}  // namespace nx_quant
