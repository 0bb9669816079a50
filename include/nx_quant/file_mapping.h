// A read-only memory mapping of a whole file: opening a multi-GB checkpoint costs a system call,
// and only the pages of the tensors actually read are ever loaded.
//
// The risk of any mapping: the bytes are the file's, not a copy. If another process truncates
// the file, touching a page past the new end raises SIGBUS (the whole process dies); if it
// rewrites the file in place, the mapped bytes change too (MAP_PRIVATE copies only the pages
// this process writes, and this mapping is read-only). Hence reading into owned memory
// (RegularFile::read) is the default of the safetensors loader and mapping is an opt-in.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "nx_quant/error.h"
#include "nx_quant/regular_file.h"

namespace nx_quant {

class FileMapping {
 public:
  // Throws InvalidArgument naming the path and the system error.
  // Opens with RegularFile::open (never blocks on a FIFO or a device).
  static std::shared_ptr<FileMapping> open(const std::string& path);
  // Maps an open file (its size at open).
  static std::shared_ptr<FileMapping> map(const RegularFile& file);
  ~FileMapping();
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // How many mappings are alive in this process (tests check that dropping the last user
  // unmaps the file).
  static long live_count() { return live_.load(); }

 private:
  FileMapping(std::string path, const uint8_t* data, size_t size);

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  static std::atomic<long> live_;
};

}  // namespace nx_quant
