// Splitting independent work items over threads.
//
// Determinism: fn(begin, end) is called on pieces whose boundaries are multiples of `grain`
// (except the last end, which is count) and which differ from call to call (threads take work
// from each other as they finish); every work item is processed entirely inside one call and
// the kernels compute an item the same way wherever a grain-aligned piece starts, so results
// never depend on the thread count or on which thread ran which piece.
//
// Threading policy (no oversubscription): one process-wide pool of default_threads() - 1
// workers (default_threads() = NX_QUANT_THREADS if set, else the hardware's thread count). A
// call uses the pool only if it is free; a call that finds it busy (another BEAM dirty
// scheduler is already using it) runs single-threaded on its own thread instead of queueing.
// So at most default_threads() + (concurrent callers - 1) threads compute at any time, and
// concurrent callers each still make progress.
#pragma once

#include <cstddef>
#include <functional>

namespace nx_quant::detail {

int default_threads();

// Calls fn(begin, end) over [0, count) in pieces whose boundaries are multiples of `grain`
// (except the last end, which is count), on up to `threads` threads (0: default_threads()).
void parallel_for(size_t count, size_t grain, int threads,
                  const std::function<void(size_t, size_t)>& fn);

}  // namespace nx_quant::detail
