"""Peers timed side by side in one run: each round times every contender once (a batch
of steps sized to about a fixed wall time), in an order rotated per round, and the
medians over the rounds are compared with the first contender's."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List


def time_batch(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure(make: Callable[[int], Dict[str, Callable[[], None]]], sizes: List[int], rounds: int,
            batch_seconds: float) -> List[dict]:
    rows = []
    for n in sizes:
        contenders = make(n)
        names = list(contenders)
        for name in names:  # warm up and size the batch to about batch_seconds
            contenders[name]()
        per_step = min(time_batch(contenders[name], 3) for name in names)
        steps = max(1, int(batch_seconds / max(per_step, 1e-7)))
        samples: Dict[str, List[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                samples[name].append(time_batch(contenders[name], steps))
        base = statistics.median(samples[names[0]])
        for name in names:
            median = statistics.median(samples[name])
            rows.append(dict(size=n, impl=name, median_us=median * 1e6, ratio=median / base))
    return rows
