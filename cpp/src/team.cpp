#include "team.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#if defined(ADAMCORE_HAVE_OPENMP)
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define ADAMCORE_HAVE_ATFORK 1
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#else
#include <cfenv>
#endif

namespace adamcore::detail {
namespace {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- floating-point mode
// The control state that changes float results: MXCSR on x86 (FTZ, DAZ, rounding),
// FPCR on AArch64 (FZ, rounding), the C floating-point environment elsewhere.
class FpMode {
 public:
  static FpMode current() {
    FpMode m;
#if defined(__x86_64__) || defined(__i386__)
    m.csr_ = _mm_getcsr();
#elif defined(__aarch64__)
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(m.csr_));
#else
    std::fegetenv(&m.env_);
#endif
    return m;
  }
  void apply() const {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(csr_);
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(csr_));
#else
    std::fesetenv(&env_);
#endif
  }

 private:
#if defined(__x86_64__) || defined(__i386__)
  unsigned csr_ = 0;
#elif defined(__aarch64__)
  std::uint64_t csr_ = 0;
#else
  std::fenv_t env_{};
#endif
};

// ---------------------------------------------------------------- fork
std::atomic<bool> g_forked_child{false};

void mark_forked_child() { g_forked_child.store(true, std::memory_order_relaxed); }

void watch_for_fork() {
#if defined(ADAMCORE_HAVE_ATFORK)
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, &mark_forked_child); });
#endif
}

// ---------------------------------------------------------------- stall guard
// A caller that waits this long for its team was held up by a helper the OS did not
// run (a healthy team's wait is one part at most, tens of microseconds).
constexpr auto kStall = std::chrono::microseconds(200);
// Steps run alone after a stall: 256, then 4x for each stall in a row, at most 65536
// steps or two seconds. Under persistent load fewer than 1 step in 256 is a probe.
constexpr std::int64_t kFirstBackoff = 256;
constexpr std::int64_t kMaxBackoff = 65536;
constexpr auto kMaxSolo = std::chrono::seconds(2);

std::atomic<std::int64_t> g_solo_left{0};
std::atomic<std::int64_t> g_backoff{0};
std::atomic<std::int64_t> g_stalls{0};
std::atomic<std::int64_t> g_solo_since{0};  // Clock ticks when the back-off began

std::int64_t ticks(Clock::time_point t) { return t.time_since_epoch().count(); }

// True if this step should run on the caller alone (and counts it).
bool take_solo_step() {
  std::int64_t left = g_solo_left.load(std::memory_order_relaxed);
  if (left <= 0) return false;
  if (Clock::now() - Clock::time_point(Clock::duration(g_solo_since.load())) > kMaxSolo) {
    g_solo_left.store(0, std::memory_order_relaxed);
    return false;
  }
  while (left > 0 &&
         !g_solo_left.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
  }
  return left > 0;
}

void record_wait(Clock::duration wait) {
  if (wait < kStall) {
    g_backoff.store(0, std::memory_order_relaxed);
    return;
  }
  g_stalls.fetch_add(1, std::memory_order_relaxed);
  const std::int64_t previous = g_backoff.load(std::memory_order_relaxed);
  const std::int64_t next = previous == 0 ? kFirstBackoff : std::min(previous * 4, kMaxBackoff);
  g_backoff.store(next, std::memory_order_relaxed);
  g_solo_since.store(ticks(Clock::now()), std::memory_order_relaxed);
  g_solo_left.store(next, std::memory_order_relaxed);
}

}  // namespace

bool in_forked_child() { return g_forked_child.load(std::memory_order_relaxed); }
std::int64_t solo_steps_left() { return std::max<std::int64_t>(0, g_solo_left.load()); }
std::int64_t stall_count() { return g_stalls.load(); }

void reset_stall_guard() {
  g_solo_left.store(0);
  g_backoff.store(0);
}

void run_parts(std::size_t parts, int threads, PartFn fn) {
  watch_for_fork();
  if (threads <= 1 || parts <= 1 || in_forked_child() || take_solo_step()) {
    for (std::size_t k = 0; k < parts; ++k) fn(k, 0);
    return;
  }
  std::atomic<std::size_t> next{0};
  const auto drain = [&](int member) {
    for (;;) {
      const std::size_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= parts) return;
      fn(k, member);
    }
  };
  const FpMode caller = FpMode::current();
  const auto helper = [&](int member) {
    const FpMode own = FpMode::current();
    caller.apply();
    drain(member);
    own.apply();
  };
  // libgomp can hold the caller at either end of a region: at the start until every
  // helper is back from the previous one, at the end until every helper has arrived.
  const Clock::time_point enter = Clock::now();
  Clock::time_point started, done;
#if defined(ADAMCORE_HAVE_OPENMP)
#pragma omp parallel num_threads(threads)
  {
    const int member = omp_get_thread_num();  // 0 is the calling thread
    if (member == 0) {
      started = Clock::now();
      drain(0);
      done = Clock::now();
    } else {
      helper(member);
    }
  }
#else
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<std::size_t>(threads - 1));
  for (int member = 1; member < threads; ++member) helpers.emplace_back(helper, member);
  started = Clock::now();
  drain(0);
  done = Clock::now();
  for (auto& t : helpers) t.join();
#endif
  record_wait(std::max(started - enter, Clock::now() - done));
}

}  // namespace adamcore::detail
