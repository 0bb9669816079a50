// parallel_for: every item exactly once, in grain-aligned pieces, whatever the thread count,
// with the helpers' uneven speed, exceptions and concurrent callers.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "parallel.h"

using nx_quant::detail::parallel_for;

namespace {

struct Piece {
  size_t begin, end;
  std::thread::id thread;
};

// Runs parallel_for and checks that its pieces tile [0, count) exactly, on grain boundaries.
std::vector<Piece> run_and_check(size_t count, size_t grain, int threads, bool uneven) {
  std::vector<std::atomic<int>> seen(count);
  std::mutex mutex;
  std::vector<Piece> pieces;
  const std::thread::id caller = std::this_thread::get_id();
  parallel_for(count, grain, threads, [&](size_t begin, size_t end) {
    EXPECT_LT(begin, end);
    EXPECT_EQ(begin % grain, 0u) << "begin " << begin;
    EXPECT_TRUE(end == count || end % grain == 0) << "end " << end;
    for (size_t i = begin; i < end; ++i) seen[i].fetch_add(1);
    // A slow caller: the helpers must take over its work rather than wait for it.
    if (uneven && std::this_thread::get_id() == caller) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    std::lock_guard<std::mutex> lock(mutex);
    pieces.push_back({begin, end, std::this_thread::get_id()});
  });
  for (size_t i = 0; i < count; ++i) {
    EXPECT_EQ(seen[i].load(), 1) << "item " << i << " of " << count << ", grain " << grain
                                 << ", threads " << threads;
  }
  return pieces;
}

}  // namespace

TEST(ParallelFor, EveryItemExactlyOnceOnGrainBoundaries) {
  for (int threads : {0, 1, 2, 3, 8}) {
    for (size_t grain : {1, 3, 8, 64}) {
      for (size_t count : {1, 2, 7, 64, 65, 1000, 4096}) {
        run_and_check(count, grain, threads, false);
      }
    }
  }
}

TEST(ParallelFor, ASlowThreadsWorkIsTakenOverByTheOthers) {
  if (nx_quant::detail::default_threads() < 2) GTEST_SKIP() << "a single-threaded pool";
  const std::thread::id caller = std::this_thread::get_id();
  // The caller sleeps 200 us per piece: the helper, which does not, ends up with most of the
  // work instead of waiting for the caller's half. On a machine loaded by other processes the
  // helper may get no CPU for a whole run, so the property must show in one of three runs
  // (without stealing it shows in none).
  size_t by_caller = 0, pieces = 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const auto run = run_and_check(4096, 8, 2, true);
    by_caller = 0;
    pieces = run.size();
    for (const Piece& p : run) {
      if (p.thread == caller) by_caller += p.end - p.begin;
    }
    if (by_caller < 4096u / 2) break;
  }
  EXPECT_LT(by_caller, 4096u / 2) << pieces << " pieces";
}

TEST(ParallelFor, AnExceptionReachesTheCallerAndThePoolStaysUsable) {
  EXPECT_THROW(parallel_for(1000, 1, 2,
                            [](size_t begin, size_t end) {
                              if (begin <= 500 && 500 < end) throw std::runtime_error("item 500");
                            }),
               std::runtime_error);
  run_and_check(1000, 1, 2, false);
}

TEST(ParallelFor, ConcurrentCallersEachGetEveryItemOnce) {
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([c] {
      for (int round = 0; round < 20; ++round) run_and_check(500 + 37 * c, 4, 2, false);
    });
  }
  for (auto& t : callers) t.join();
}
