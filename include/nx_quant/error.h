// The one error type the kernel library throws. Every public entry point validates its
// arguments completely before it reads or writes any buffer, and reports the first problem
// with a message that names the argument and what was expected.
#pragma once

#include <stdexcept>
#include <string>

namespace nx_quant {

class InvalidArgument : public std::invalid_argument {
 public:
  explicit InvalidArgument(const std::string& what) : std::invalid_argument(what) {}
};

}  // namespace nx_quant
