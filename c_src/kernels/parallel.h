// Splitting a range of independent work items over threads. Each item is processed entirely by
// one thread, so results never depend on the thread count or the split.
#pragma once

#include <cstddef>
#include <functional>

namespace nx_quant::detail {

// The default thread count: NX_QUANT_THREADS if set (>= 1), else the hardware's.
int default_threads();

// Calls fn(begin, end) over [0, count) in chunks whose boundaries are multiples of `grain`
// (except the last end, which is count), on up to `threads` threads (0: default_threads()).
void parallel_for(size_t count, size_t grain, int threads,
                  const std::function<void(size_t, size_t)>& fn);

}  // namespace nx_quant::detail
