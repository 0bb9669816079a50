#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace nx_quant::detail {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A persistent pool: workers sleep on a condition variable between jobs; the submitting
// thread works too. Waking a sleeping thread costs tens of microseconds (more in a VM), a
// noticeable share of a decode-sized matmul (~0.2-1 ms), and decode calls come back to back:
// so a worker that has just finished spins for a while (kSpinTime) watching for the next job
// before it sleeps, and the caller spins the same way for the helpers to finish. The spin is
// timed, not counted: a pause takes 10 ns on one CPU and 140 on another. (It was 4000 pauses,
// 40 us on a Sapphire Rapids Xeon: in a decode step, where the dense ops between two pooled
// calls take longer than that, every call woke a sleeping worker that then came too late to
// help — a q.k^T at context 256 took 60-80 us with 2 threads after a 50-500 us gap, 37-40 us
// back to back, 60 us on one thread.)
constexpr auto kSpinTime = std::chrono::microseconds(300);
constexpr int kPausesPerClockRead = 32;

// Spins until done() or kSpinTime has passed; true if done() became true.
template <typename Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  for (;;) {
    for (int i = 0; i < kPausesPerClockRead; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

// How a job's units are shared. Each party (the caller and each helper) owns one contiguous
// range and takes pieces from its front, so that it streams through memory in order (a GEMV's
// prefetches run on from one piece into the next); a party that has finished its own range
// takes pieces from the back of the others'. A helper woken from sleep starts tens of
// microseconds after the caller, and the stealing absorbs that without the fixed chunks that
// would either leave one thread idle at the end or break every thread's stream into many
// short ones. Pieces shrink as a range empties (a quarter of what is left, at least
// `min_piece`), so the parties finish within about one small piece of each other.
class WorkRanges {
 public:
  void reset(size_t units, size_t parties) {
    ranges_.assign(parties, Range{});
    for (size_t p = 0; p < parties; ++p) {
      ranges_[p].front = units * p / parties;
      ranges_[p].back = units * (p + 1) / parties;
    }
    min_piece_ = std::max<size_t>(1, units / (parties * 64));
  }

  // Claims the next piece for `party`: false when no work is left anywhere.
  bool claim(size_t party, size_t& begin, size_t& end) {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t parties = ranges_.size();
    for (size_t i = 0; i < parties; ++i) {
      Range& r = ranges_[(party + i) % parties];
      const size_t left = r.back - r.front;
      if (left == 0) continue;
      const size_t piece = std::min(left, std::max(min_piece_, left / 4));
      if (i == 0) {  // its own range: from the front
        begin = r.front;
        r.front += piece;
        end = r.front;
      } else {  // another's: from the back
        end = r.back;
        r.back -= piece;
        begin = r.back;
      }
      return true;
    }
    return false;
  }

 private:
  struct Range {
    size_t front = 0, back = 0;
  };
  std::mutex mutex_;  // claims are few (tens per job): a lock costs nothing measurable
  std::vector<Range> ranges_;
  size_t min_piece_ = 1;
};

class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { worker_loop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int workers() const { return static_cast<int>(threads_.size()); }

  // Runs piece(begin, end) over pieces covering [0, units) using the caller and up to
  // `helpers` workers. Returns false without running anything if another job holds the pool.
  bool try_run(size_t units, int helpers, const std::function<void(size_t, size_t)>& piece) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &piece;
      error_ = nullptr;
      active_helpers_ = std::min(helpers, workers());
      ranges_.reset(units, static_cast<size_t>(active_helpers_) + 1);
      pending_ = active_helpers_;
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void work(size_t party) {
    size_t begin, end;
    while (ranges_.claim(party, begin, end)) {
      try {
        (*job_)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void worker_loop(int index) {
    size_t seen = 0;
    for (;;) {
      spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (index >= active_helpers_) continue;  // not needed for this job
      }
      work(static_cast<size_t>(index) + 1);  // party 0 is the caller
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --pending_;
      }
      done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex busy_;  // held by the one job using the pool
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(size_t, size_t)>* job_ = nullptr;
  WorkRanges ranges_;
  std::exception_ptr error_;
  std::atomic<size_t> generation_{0};  // written under mutex_; read without it while spinning
  int active_helpers_ = 0;
  std::atomic<int> pending_{0};  // likewise
  bool stopping_ = false;
};

ThreadPool& pool() {
  static ThreadPool instance(default_threads() - 1);
  return instance;
}

}  // namespace

int default_threads() {
  static const int threads = [] {
    if (const char* env = std::getenv("NX_QUANT_THREADS")) {
      const int n = std::atoi(env);
      if (n >= 1) return std::min(n, 256);
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(std::min(hw, 256u));
  }();
  return threads;
}

void parallel_for(size_t count, size_t grain, int threads,
                  const std::function<void(size_t, size_t)>& fn) {
  if (count == 0) return;
  if (grain == 0) grain = 1;
  const size_t units = (count + grain - 1) / grain;
  const size_t wanted = static_cast<size_t>(threads <= 0 ? default_threads() : threads);
  const size_t n_threads = std::min(wanted, units);
  if (n_threads <= 1) {
    fn(0, count);
    return;
  }
  const std::function<void(size_t, size_t)> piece = [&](size_t begin, size_t end) {
    fn(begin * grain, std::min(count, end * grain));
  };
  if (!pool().try_run(units, static_cast<int>(n_threads) - 1, piece)) {
    fn(0, count);  // the pool is serving another caller: run here, single-threaded
  }
}

}  // namespace nx_quant::detail
