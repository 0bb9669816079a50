#include "parallel.h"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace nx_quant::detail {

int default_threads() {
  if (const char* env = std::getenv("NX_QUANT_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

void parallel_for(size_t count, size_t grain, int threads,
                  const std::function<void(size_t, size_t)>& fn) {
  if (count == 0) return;
  if (grain == 0) grain = 1;
  const size_t units = (count + grain - 1) / grain;
  size_t n_threads = static_cast<size_t>(threads <= 0 ? default_threads() : threads);
  n_threads = std::min(n_threads, units);
  if (n_threads <= 1) {
    fn(0, count);
    return;
  }
  const size_t per_thread = (units + n_threads - 1) / n_threads;
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(n_threads);
  auto run = [&](size_t t) {
    const size_t begin = std::min(count, t * per_thread * grain);
    const size_t end = std::min(count, (t + 1) * per_thread * grain);
    if (begin >= end) return;
    try {
      fn(begin, end);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  for (size_t t = 1; t < n_threads; ++t) workers.emplace_back(run, t);
  run(0);
  for (auto& worker : workers) worker.join();
  for (auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace nx_quant::detail
