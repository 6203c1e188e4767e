// Running the parts of one step on a team of threads.
//
// The calling thread always works: parts are claimed one at a time from a shared
// counter, so every part runs exactly once whatever number of threads the runtime
// grants (OMP_DYNAMIC, OMP_THREAD_LIMIT), and the helpers run in the caller's
// floating-point mode (flush-to-zero and denormals-are-zero are per thread), so the
// bits never depend on the thread count.
//
// A fork-join team still ends at a barrier that waits for every helper, including one
// the OS has not run yet: on a machine whose cores are busy that is a time slice
// (~8 ms) for a step of microseconds. The team therefore watches how long the caller
// waits after its last part; a wait that long means the helpers are not being
// scheduled, and the following steps run on the calling thread alone, which never
// waits for anyone, for a back-off that grows while the stalls persist. In a process
// forked after threads ran, libgomp's team no longer exists and a parallel region
// would hang: there every step runs on the calling thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace adamcore::detail {

// A borrowed callable: fn(part, member), member in [0, team size).
class PartFn {
 public:
  template <class F>
  explicit PartFn(const F& f)
      : object_(&f), call_([](const void* o, std::size_t part, int member) {
          (*static_cast<const F*>(o))(part, member);
        }) {}
  void operator()(std::size_t part, int member) const { call_(object_, part, member); }

 private:
  const void* object_;
  void (*call_)(const void*, std::size_t, int);
};

// Runs fn(k, member) once for every k in [0, parts) on up to `threads` threads,
// the caller included; returns when every part has run.
void run_parts(std::size_t parts, int threads, PartFn fn);

bool in_forked_child();
std::int64_t solo_steps_left();
std::int64_t stall_count();
// Forgets any back-off (tests).
void reset_stall_guard();

}  // namespace adamcore::detail
