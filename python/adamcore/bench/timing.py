"""Timing: batches calibrated to a target duration, implementations interleaved in
rotated rounds, per-step latency statistics, the thread crossover, progress bars."""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

import adamcore

from .cases import BYTES_PER_ELEMENT, FLOAT32_STEP, LAYOUTS, STREAM_BYTES_PER_ELEMENT, Case, \
    format_count, make_initial_state
from .checks import first_step_check
from .runners import STREAM, AdamcoreRunner, Runner, StreamRunner, case_implementations, \
    make_runner, set_all_threads, supports


# ---------------------------------------------------------------- timing
@dataclasses.dataclass
class Measurement:
    case: str
    kind: str
    optimizer: str
    threads: int
    implementation: str
    api: str
    elements: int
    tensors: int
    bytes_per_step: int
    steps_per_batch: int
    seconds_per_step: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds_per_step)


def _calibrate(runner, target_seconds: float, restore: Callable[[], None] | None) -> int:
    """Steps per timed batch: enough that a batch lasts about target_seconds. One step
    after other work is slower than a step in a run (cold caches and predictors), so the
    rate is taken from doubling runs of warm steps."""
    slow_runs = 0
    for _ in range(2):  # a step longer than a batch twice in a row: one step per batch
        if restore is not None:
            restore()
        start = time.perf_counter()
        runner.run(1)
        slow_runs += time.perf_counter() - start >= target_seconds
    if slow_runs == 2:
        return 1
    steps, per_step = 1, math.inf
    while True:
        if restore is not None:
            restore()
        start = time.perf_counter()
        runner.run(steps)
        elapsed = time.perf_counter() - start
        # The fastest rate seen: one run stalled by another process must not shrink
        # the batch, so at least three runs (1, 2, 4 steps) are taken.
        per_step = min(per_step, max(elapsed / steps, 1e-9))
        if (elapsed >= target_seconds / 4 and steps >= 4) or steps >= 100_000:
            break
        steps *= 2
    return int(min(100_000, max(1, round(target_seconds / per_step))))


def measure_case(case: Case, optimizer: str, thread_counts: Sequence[int],
                 implementations: Sequence[str], repeats: int, batch_seconds: float,
                 pool: ThreadPoolExecutor | None, on_repeat: Callable[[], None] = lambda: None,
                 budget_seconds: float = math.inf,
                 ) -> tuple[list[Measurement], dict[str, dict]]:
    """Times every implementation (and the stream probe) on one case, round-robin, at
    each thread count. The same buffers serve every thread count.

    After ``budget_seconds`` at one thread count, no further round starts there (every
    implementation keeps the same number of rounds). On an oversubscribed machine a
    threaded peer stepping hundreds of tensors can take seconds per step."""
    initial = make_initial_state(case, optimizer)
    runners: dict[str, Runner] = {}
    for name in case_implementations(case, implementations):
        if supports(name, optimizer):
            runners[name] = make_runner(name, optimizer, initial.fresh_buffers(
                optimizer, float32=name == FLOAT32_STEP))
    set_all_threads(thread_counts[0])
    check = first_step_check(runners, initial)

    stream = StreamRunner(case.elements, pool)
    timed: dict[str, object] = {**runners, STREAM: stream}
    restorers: dict[str, Callable[[], None] | None] = {name: None for name in timed}
    if case.restore_each_batch:
        for name, runner in runners.items():
            restorers[name] = functools.partial(
                _copy_all, runner.buffers.writable(), initial.fresh_buffers(optimizer).writable())
    del initial  # its arrays are not needed any more (restorers hold their own copies)

    names = list(timed)
    results = []
    for threads in thread_counts:
        set_all_threads(threads)
        stream.set_threads(threads)
        began = time.perf_counter()
        batch = {name: _calibrate(r, batch_seconds, restorers[name]) for name, r in timed.items()}
        samples: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(repeats):
            if rep > 0 and time.perf_counter() - began > budget_seconds:
                for _ in range(repeats - rep):
                    on_repeat()
                break
            # Rotate the order every round so no implementation always follows the same one.
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                if restorers[name] is not None:
                    restorers[name]()
                runner = timed[name]
                start = time.perf_counter()
                runner.run(batch[name])
                samples[name].append((time.perf_counter() - start) / batch[name])
            on_repeat()
        for name in names:
            per_element = (STREAM_BYTES_PER_ELEMENT if name == STREAM
                           else LAYOUTS[case.layout].bytes_per_element
                           if case.layout is not None and name != FLOAT32_STEP
                           else BYTES_PER_ELEMENT[optimizer])
            results.append(Measurement(case.name, case.kind, optimizer, threads, name,
                                       timed[name].api, case.elements, case.tensors,
                                       per_element * case.elements, batch[name], samples[name]))
    return results, check


def _copy_all(targets: list[np.ndarray], sources: list[np.ndarray]) -> None:
    for target, source in zip(targets, sources):
        np.copyto(target, source)


# ---------------------------------------------------------------- progress
class _SimpleProgress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.label = ""

    def set_description(self, label: str) -> None:
        self.label = label
        self._draw()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        self.stream.write(f"\r[{'#' * filled}{' ' * (width - filled)}] "
                          f"{self.done}/{self.total} {self.label[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def make_progress(total: int, enabled: bool):
    if not enabled:
        return _SimpleProgress(total, stream=io.StringIO())
    try:
        from tqdm import tqdm
    except ImportError:
        return _SimpleProgress(total)
    return tqdm(total=total, file=sys.stderr, unit="round", leave=False)


# ---------------------------------------------------------------- thread crossover
def measure_thread_crossover(sizes: Sequence[int], repeats: int, batch_seconds: float,
                             on_repeat: Callable[[], None] = lambda: None) -> list[dict]:
    """adamcore's Adam step with 1 thread against 2 threads forced on (parallel
    threshold 0), interleaved per size. The smallest size from which 2 threads keep
    winning is where the threshold belongs."""
    saved_threads, saved_threshold = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    rows = []
    try:
        adamcore.set_parallel_threshold(0)
        for n in sizes:
            case = Case(f"N={format_count(n)}", "sizes", [int(n)])
            initial = make_initial_state(case, "adam")
            runner = AdamcoreRunner("adam", initial.fresh_buffers("adam"))
            times: dict[int, list[float]] = {1: [], 2: []}
            adamcore.set_num_threads(1)
            batch = _calibrate(runner, batch_seconds, None)
            for rep in range(repeats):
                for threads in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    adamcore.set_num_threads(threads)
                    start = time.perf_counter()
                    runner.run(batch)
                    times[threads].append((time.perf_counter() - start) / batch)
                on_repeat()
            one, two = statistics.median(times[1]), statistics.median(times[2])
            rows.append({"elements": int(n), "one_thread_seconds": one,
                         "two_threads_seconds": two, "speedup_two_threads": one / two,
                         "one_thread_samples": times[1], "two_thread_samples": times[2]})
    finally:
        adamcore.set_num_threads(saved_threads)
        adamcore.set_parallel_threshold(saved_threshold)
    return rows


def latency_stats(samples: Sequence[float]) -> dict:
    """Count, median, p90, p99, max and mean of per-step times in seconds (percentiles
    interpolated linearly between order statistics)."""
    if not len(samples):
        raise ValueError("latency_stats: no samples")
    a = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
    return {"count": int(a.size), "median_seconds": p50, "p90_seconds": p90,
            "p99_seconds": p99, "max_seconds": float(a.max()), "mean_seconds": float(a.mean())}


def _visit_length(total: int, most: int) -> int:
    """Steps a variant takes per visit: at least 20 rounds when there are enough steps."""
    return max(1, min(most, total // 20))


def _torch_module():
    """torch if this process has already imported it (then its thread count is set with
    adamcore's), else None. Never imports it."""
    return sys.modules.get("torch")


def _use_threads(threads: int) -> None:
    """adamcore's and (if loaded) torch's intra-op thread count."""
    adamcore.set_num_threads(threads)
    torch = _torch_module()
    if torch is not None:
        torch.set_num_threads(threads)
