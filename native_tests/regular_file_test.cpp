// RegularFile: stat before open, never blocking on a FIFO; exact reads; truncation and in-place
// rewrites after open detected; the header read from a prefix of the file.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "nx_quant/file_mapping.h"
#include "nx_quant/regular_file.h"
#include "nx_quant/safetensors_format.h"

using nx_quant::InvalidArgument;
using nx_quant::RegularFile;

namespace {

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + name;
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

// An old modification time, so that a later write surely changes it.
void age(const std::string& path) {
  struct timeval times[2] = {{1'000'000'000, 0}, {1'000'000'000, 0}};
  ASSERT_EQ(::utimes(path.c_str(), times), 0);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(RegularFile, ReadsExactRanges) {
  const std::string path = temp_path("nx_quant_regular_file.bin");
  write_file(path, "0123456789");
  auto f = RegularFile::open(path);
  EXPECT_EQ(f->size(), 10u);
  char out[4] = {};
  f->read(3, out, 4);
  EXPECT_EQ(std::string(out, 4), "3456");
  f->read(10, out, 0);
  EXPECT_NE(error_of([&] { f->read(8, out, 3); }).find("it has 10 bytes"), std::string::npos);
  std::remove(path.c_str());
}

TEST(RegularFile, TruncationAndInPlaceRewritesAfterOpenAreErrors) {
  const std::string path = temp_path("nx_quant_regular_file_changed.bin");
  write_file(path, std::string(4096, 'a'));
  age(path);
  auto f = RegularFile::open(path);
  char out[16];
  f->read(0, out, 16);
  EXPECT_NO_THROW(f->check_unchanged());

  // Same size, rewritten in place (no truncation).
  {
    int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "bbbb", 4, 100), 4);
    ::close(fd);
  }
  std::string e = error_of([&] { f->read(0, out, 16); });
  EXPECT_NE(e.find(path + " changed since it was opened: it was modified in place"),
            std::string::npos)
      << e;

  auto g = RegularFile::open(path);
  ASSERT_EQ(::truncate(path.c_str(), 10), 0);
  e = error_of([&] { g->read(0, out, 16); });
  EXPECT_NE(e.find("it is now 10 bytes, it was 4096"), std::string::npos) << e;
  std::remove(path.c_str());
}

TEST(RegularFile, FifosDirectoriesAndMissingFilesAreRefusedWithoutBlocking) {
  const std::string fifo = temp_path("nx_quant_regular_file.fifo");
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A blocking open(2) of a FIFO with no writer would hang: SIGALRM then kills the test binary,
  // failing it instead.
  ::alarm(30);
  std::string e = error_of([&] { RegularFile::open(fifo); });
  EXPECT_NE(e.find(fifo + ": not a regular file (it is a FIFO)"), std::string::npos) << e;
  e = error_of([&] { nx_quant::FileMapping::open(fifo); });
  EXPECT_NE(e.find("it is a FIFO"), std::string::npos) << e;
  ::alarm(0);
  std::remove(fifo.c_str());

  e = error_of([&] { RegularFile::open(::testing::TempDir()); });
  EXPECT_NE(e.find("it is a directory"), std::string::npos) << e;
  e = error_of([&] { RegularFile::open(temp_path("nx_quant_no_such_file")); });
  EXPECT_NE(e.find("No such file"), std::string::npos) << e;

  // A symlink to a regular file is followed.
  const std::string target = temp_path("nx_quant_regular_target.bin");
  const std::string link = temp_path("nx_quant_regular_link.bin");
  write_file(target, "xyz");
  std::remove(link.c_str());
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  EXPECT_EQ(RegularFile::open(link)->size(), 3u);
  std::remove(link.c_str());
  std::remove(target.c_str());
}

TEST(RegularFile, ClosesWhenDropped) {
  const std::string path = temp_path("nx_quant_regular_file_live.bin");
  write_file(path, "x");
  const long before = RegularFile::live_count();
  {
    auto f = RegularFile::open(path);
    EXPECT_EQ(RegularFile::live_count(), before + 1);
  }
  EXPECT_EQ(RegularFile::live_count(), before);
  std::remove(path.c_str());
}

TEST(SafetensorsHeader, ParsesFromAPrefixOfTheFile) {
  namespace st = nx_quant::safetensors;
  const std::string json = R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 8; ++i)
    bytes.push_back(static_cast<uint8_t>((json.size() >> (8 * i)) & 0xff));
  bytes.insert(bytes.end(), json.begin(), json.end());
  EXPECT_EQ(st::header_length(bytes.data(), bytes.size()), json.size());
  // Only the header is in memory; the file is 4 bytes longer.
  const st::Header h = st::parse_header(bytes.data(), bytes.size(), bytes.size() + 4);
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].end, 4u);
  // The offsets are checked against the whole file's size.
  EXPECT_THROW(st::parse_header(bytes.data(), bytes.size(), bytes.size() + 3), InvalidArgument);
  // Too few bytes given for the header is the caller's bug, not the file's.
  EXPECT_THROW(st::parse_header(bytes.data(), 12, bytes.size() + 4), std::logic_error);
}
