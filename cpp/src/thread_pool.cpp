#include "thread_pool.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace adamcore::detail {
namespace {

// How long an idle worker watches for the next step before it sleeps: long enough that
// a training loop's back-to-back steps skip the futex wake-up (~10-20 us), short
// enough to leave the core to others between steps.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class Pool {
 public:
  void run(std::size_t items, int threads, void (*fn)(void*, std::size_t), void* context) {
    std::unique_lock<std::mutex> busy(call_mutex_, std::try_to_lock);
    if (!busy.owns_lock() || threads <= 1 || items <= 1) {
      for (std::size_t i = 0; i < items; ++i) fn(context, i);
      return;
    }
    ensure_workers(threads - 1);
    bool sleepers = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = fn;
      context_ = context;
      items_ = items;
      next_.store(0, std::memory_order_relaxed);
      open_ = true;
      wanted_ = threads - 1;
      epoch_.store(epoch_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
      sleepers = sleeping_ > 0;
    }
    if (sleepers) wake_.notify_all();
    drain();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      open_ = false;  // a worker waking from now on finds nothing to join
    }
    // Only workers that joined while the job was open can still be running items.
    while (active_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  }

 private:
  void drain() {
    for (;;) {
      const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= items_) return;
      fn_(context_, i);
    }
  }

  void ensure_workers(int count) {
    const pid_t pid = getpid();
    if (pid != pid_) {  // a forked child inherits no threads
      workers_ = 0;
      pid_ = pid;
    }
    while (workers_ < count) {
      std::thread([this] { work(); }).detach();
      ++workers_;
    }
  }

  void work() {
    std::uint64_t seen = epoch_.load(std::memory_order_acquire);
    for (;;) {
      const auto spin_until = std::chrono::steady_clock::now() + kSpin;
      bool changed = false;
      while (!changed && std::chrono::steady_clock::now() < spin_until) {
        for (int i = 0; i < 64 && !changed; ++i) {
          cpu_relax();
          changed = epoch_.load(std::memory_order_acquire) != seen;
        }
      }
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!changed) {
          ++sleeping_;
          wake_.wait(lock, [&] { return epoch_.load(std::memory_order_relaxed) != seen; });
          --sleeping_;
        }
        seen = epoch_.load(std::memory_order_relaxed);
        if (!open_ || wanted_ <= 0) continue;
        --wanted_;
        active_.fetch_add(1, std::memory_order_acq_rel);
      }
      drain();
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex call_mutex_;  // one parallel step at a time
  std::mutex mutex_;       // guards the job description below
  std::condition_variable wake_;
  std::atomic<std::uint64_t> epoch_{0};  // written under mutex_, watched while spinning
  int sleeping_ = 0;                     // workers waiting on wake_
  bool open_ = false;
  int wanted_ = 0;  // workers still allowed to join this job
  void (*fn_)(void*, std::size_t) = nullptr;
  void* context_ = nullptr;
  std::size_t items_ = 0;
  std::atomic<std::size_t> next_{0};
  std::atomic<int> active_{0};
  int workers_ = 0;
  pid_t pid_ = 0;
};

// Never destroyed: detached workers may still be waiting on it at exit.
Pool& pool() {
  static Pool* instance = new Pool;
  return *instance;
}

}  // namespace

void parallel_for(std::size_t items, int threads, void (*fn)(void*, std::size_t),
                  void* context) {
  pool().run(items, threads, fn, context);
}

}  // namespace adamcore::detail
