"""Threads per rank: several training processes on one host share its cores.

A launcher that starts k processes per host (torchrun, the deepspeed launcher) tells
each how many there are: torchrun sets ``LOCAL_WORLD_SIZE``, the deepspeed launcher
``LOCAL_SIZE``. OpenMP's default team is sized from the whole affinity mask, so k
ranks would each start that many threads and oversubscribe the cores k times. At
import, when ``ADAMCORE_NUM_THREADS`` is not set and k > 1, adamcore's thread count
becomes ``max(1, len(os.sched_getaffinity(0)) // k)``. ``ADAMCORE_NUM_THREADS`` (read
by the extension at import) and any later ``adamcore.set_num_threads`` call win.

``OMP_NUM_THREADS`` does not apply under such a launcher (torchrun sets it to 1 for
torch's sake when it starts more than one process); ``ADAMCORE_NUM_THREADS`` does.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

#: The environment variables naming the number of processes on this host, in the
#: order they are read.
LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "LOCAL_SIZE")

# (source, thread count set at import) -- see thread_source().
_at_import: Tuple[str, int] = ("OpenMP default", 0)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), or the CPU count where
    the OS has no affinity mask."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_ranks(environ: Optional[dict] = None) -> Tuple[Optional[str], int]:
    """(variable, k): the launcher's count of processes on this host, or (None, 1)
    when no launcher variable holds an integer >= 1."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_SIZE_VARIABLES:
        text = environ.get(name, "").strip()
        if text.isdigit() and int(text) >= 1:
            return name, int(text)
    return None, 1


def apply(set_num_threads: Callable[[int], None], get_num_threads: Callable[[], int]) -> str:
    """Called once at import: divide the cores among the local ranks unless the thread
    count was set explicitly. Returns where the count came from."""
    global _at_import
    if os.environ.get("ADAMCORE_NUM_THREADS"):
        source = "ADAMCORE_NUM_THREADS"
    else:
        variable, k = local_ranks()
        if variable is not None and k > 1:
            cores = usable_cores()
            set_num_threads(max(1, cores // k))
            source = f"{variable}={k}: {cores} cores in the affinity mask // {k} local ranks"
        else:
            source = "OpenMP default"
    _at_import = (source, get_num_threads())
    return source


def thread_source(get_num_threads: Callable[[], int]) -> str:
    """Where the current thread count comes from: what ``apply`` found at import, or
    ``set_num_threads()`` once the count differs from the one set at import."""
    source, count = _at_import
    return source if get_num_threads() == count else "set_num_threads()"
