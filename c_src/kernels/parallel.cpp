#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace nx_quant::detail {

namespace {

// A persistent pool: workers sleep on a condition variable between jobs. A job is a set of
// chunks claimed through an atomic counter; the submitting thread works on chunks too.
// Waking a sleeping thread costs tens of microseconds (more in a VM), a noticeable share of a
// decode-sized matmul (~0.2-1 ms), and decode calls come back to back: so a worker that has
// just finished spins for a short while (kSpinIterations pauses, ~0.1 ms) watching for the
// next job before it sleeps, and the caller spins the same way for the helpers to finish.
constexpr int kSpinIterations = 4000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
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

  // Runs chunk(i) for i in [0, chunks) using the caller and up to `helpers` workers.
  // Returns false without running anything if another job holds the pool.
  bool try_run(size_t chunks, int helpers, const std::function<void(size_t)>& chunk) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &chunk;
      chunks_ = chunks;
      next_.store(0);
      error_ = nullptr;
      active_helpers_ = std::min(helpers, workers());
      pending_ = active_helpers_;
      ++generation_;
    }
    wake_.notify_all();
    work();
    for (int i = 0; i < kSpinIterations && pending_.load(std::memory_order_acquire) != 0; ++i) {
      cpu_relax();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void work() {
    for (size_t i = next_.fetch_add(1); i < chunks_; i = next_.fetch_add(1)) {
      try {
        (*job_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void worker_loop() {
    size_t seen = 0;
    int index;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      index = started_++;
    }
    for (;;) {
      for (int i = 0; i < kSpinIterations && generation_.load(std::memory_order_acquire) == seen;
           ++i) {
        cpu_relax();
      }
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (index >= active_helpers_) continue;  // not needed for this job
      }
      work();
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
  const std::function<void(size_t)>* job_ = nullptr;
  size_t chunks_ = 0;
  std::atomic<size_t> next_{0};
  std::exception_ptr error_;
  std::atomic<size_t> generation_{0};  // written under mutex_; read without it while spinning
  int active_helpers_ = 0;
  std::atomic<int> pending_{0};  // likewise
  int started_ = 0;
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
  // Chunk boundaries depend on n_threads only through the chunk count; since each work item
  // is computed entirely within one chunk, the results do not depend on it at all.
  const size_t chunks = std::min(units, n_threads * 4);
  const size_t per_chunk = (units + chunks - 1) / chunks;
  const std::function<void(size_t)> chunk = [&](size_t i) {
    const size_t begin = std::min(count, i * per_chunk * grain);
    const size_t end = std::min(count, (i + 1) * per_chunk * grain);
    if (begin < end) fn(begin, end);
  };
  if (!pool().try_run(chunks, static_cast<int>(n_threads) - 1, chunk)) {
    fn(0, count);  // the pool is serving another caller: run here, single-threaded
  }
}

}  // namespace nx_quant::detail
