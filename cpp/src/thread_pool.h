// A small pool of worker threads for splitting one step across cores.
//
// Why not OpenMP: a fork-join region ends at a barrier that waits for every worker,
// including one the OS has not scheduled yet; on a machine whose cores are busy that
// costs a time slice (measured: a 64K-element step, median 19 us, 90th percentile 16 ms
// with two busy processes beside it). Here the calling thread claims work items itself
// and waits only for items a worker has already started, so a late worker costs
// nothing. It also keeps a second OpenMP runtime out of processes that load torch.
#pragma once

#include <cstddef>

namespace adamcore::detail {

// Runs fn(context, item) for every item in [0, items), on the calling thread and up
// to `threads - 1` workers. Items may run in any order and on any thread; returns
// when all have run. If another call is using the pool, this one runs alone on the
// calling thread.
void parallel_for(std::size_t items, int threads, void (*fn)(void*, std::size_t),
                  void* context);

}  // namespace adamcore::detail
