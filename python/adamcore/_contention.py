"""Busy background processes for the benchmark's contended case.

``Spinners(n)`` starts ``n`` child processes that each run a tight pure-Python loop
(one busy CPU each), the way data-loader workers or a second job keep a training
machine's cores busy. They are meant to be impossible to leak:

- ``Spinners`` is a context manager and ``stop()`` is idempotent; every live instance is
  also stopped by an ``atexit`` hook;
- each child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG`` on
  Linux), and independently checks ``os.getppid()`` every few milliseconds and exits
  when it has been re-parented (a parent killed with SIGKILL runs no ``finally``);
- each child exits by itself after ``max_seconds`` whatever happens.

A child is a fresh interpreter (``python -S -c``): it imports neither NumPy nor torch,
and it does not inherit the parent's threads or OpenMP state, as ``fork`` would.
(``PR_SET_PDEATHSIG`` fires when the *thread* that started the child exits, so start
spinners from a thread that outlives them, normally the main thread.)
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time

# Marker in each child's command line (tests and ``ps`` can recognise spinners by it).
MARKER = "adamcore-bench-spinner"

_CHILD = r"""
import os, sys, time
parent, max_seconds, pdeathsig = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
if pdeathsig and sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:
        pass
if os.getppid() != parent:  # the parent died before prctl took effect
    sys.exit(0)
deadline = time.monotonic() + max_seconds
sys.stdout.write("ready\n")
sys.stdout.flush()
x = 1
while True:
    for _ in range(20000):  # a few milliseconds of pure arithmetic
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    if os.getppid() != parent or time.monotonic() > deadline:
        break
"""

# Started and not yet stopped (strong references: a forgotten instance is still stopped
# at exit).
_LIVE: "set[Spinners]" = set()


def default_count() -> int:
    """One spinner per CPU this process may run on (2 on a 2-vCPU machine): then every
    core has another runnable process, and any worker thread can be descheduled."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Spinners:
    """``n`` busy child processes while the ``with`` block runs (or start()..stop())."""

    def __init__(self, count: int | None = None, max_seconds: float = 900.0,
                 pdeathsig: bool = True):
        self.count = default_count() if count is None else int(count)
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.max_seconds = float(max_seconds)
        self.pdeathsig = pdeathsig
        self.procs: list[subprocess.Popen] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.cpu_seconds: list[float] = []  # per child while it ran, filled by stop()
        self._cpu_at_start: list[float] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self, settle_seconds: float = 0.2) -> "Spinners":
        """Start the children, wait until each runs its loop, then ``settle_seconds``
        more so the scheduler treats them as the CPU hogs they are."""
        if self.procs:
            raise RuntimeError("spinners already started")
        _LIVE.add(self)
        args = [str(os.getpid()), repr(self.max_seconds), "1" if self.pdeathsig else "0"]
        try:
            for _ in range(self.count):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-S", "-c", _CHILD, *args, MARKER],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, close_fds=True))
            for proc in self.procs:
                line = proc.stdout.readline() if proc.stdout else b""
                if line.strip() != b"ready":
                    raise RuntimeError(f"spinner {proc.pid} did not start "
                                       f"(exit code {proc.poll()})")
        except BaseException:
            self.stop()
            raise
        self.started_at = time.monotonic()
        self._cpu_at_start = [_cpu_seconds(p.pid) or 0.0 for p in self.procs]
        if settle_seconds > 0:
            time.sleep(settle_seconds)
        return self

    def alive(self) -> list[int]:
        """PIDs of children that are still running."""
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        """Stop every child and reap it (idempotent, never raises for a gone child)."""
        if self.stopped_at is not None or not self.procs:
            _LIVE.discard(self)
            return
        if self._cpu_at_start:
            self.cpu_seconds = [(_cpu_seconds(p.pid) or 0.0) - c0
                                for p, c0 in zip(self.procs, self._cpu_at_start)]
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover (SIGKILL cannot be ignored)
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.stopped_at = time.monotonic()
        _LIVE.discard(self)

    def report(self) -> dict:
        """What ran: count, PIDs, wall time, and the share of a CPU each child got
        (Linux; shows the contention was real)."""
        wall = None
        if self.started_at is not None:
            wall = (self.stopped_at or time.monotonic()) - self.started_at
        share = None
        if wall and self.cpu_seconds:
            share = [round(c / wall, 3) for c in self.cpu_seconds]
        return {"count": self.count, "pids": self.pids, "wall_seconds": wall,
                "cpu_share_each": share,
                "command": f"{os.path.basename(sys.executable)} -S -c <tight loop> ({MARKER})"}

    def __enter__(self) -> "Spinners":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def live_spinner_children() -> list[int]:
    """PIDs of this process's children whose command line carries ``MARKER`` (Linux;
    an empty list elsewhere). For tests: nothing should be left after a run."""
    found = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if MARKER.encode() in f.read():
                        found.append(pid)
            except OSError:
                continue
    return found


@atexit.register
def _stop_all() -> None:
    for spinners in list(_LIVE):
        spinners.stop()
