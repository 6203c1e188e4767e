"""Threads: any thread count gives the same bits; concurrent Python threads are safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import adamcore
from _util import assert_same_bits, f32


@pytest.fixture
def many_threads_small_threshold():
    saved = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    adamcore.set_parallel_threshold(64)  # so even small calls really split
    yield
    adamcore.set_num_threads(saved[0])
    adamcore.set_parallel_threshold(saved[1])


def _group(seed, sizes):
    rng = np.random.default_rng(seed)
    params = [f32(rng.standard_normal(n)) for n in sizes]
    ms = [np.zeros(n, np.float32) for n in sizes]
    vs = [np.zeros(n, np.float32) for n in sizes]
    vmaxs = [np.zeros(n, np.float32) for n in sizes]
    grads = [[f32(rng.standard_normal(n)) for n in sizes] for _ in range(4)]
    return params, ms, vs, vmaxs, grads


SIZES = [1000, 3, 70000, 129, 0, 4097, 20000, 65]


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_thread_count_does_not_change_bits(isa, threads, many_threads_small_threshold):
    adamcore.set_num_threads(1)
    want = _group(1, SIZES)
    for step, grads in enumerate(want[4], 1):
        adamcore.adamw_step(want[0], grads, want[1], want[2], step=step, amsgrad=True,
                            max_exp_avg_sq=want[3])
    adamcore.set_num_threads(threads)
    assert adamcore.get_num_threads() == (threads if adamcore._core.built_with_openmp() else 1)
    got = _group(1, SIZES)
    group = adamcore._core.AdamGroup(got[0], got[1], got[2], got[3])
    for step, grads in enumerate(got[4], 1):
        group.step(grads, step=step, weight_decay=1e-2, decoupled=True)
    for a, b in zip(sum(got[:4], []), sum(want[:4], [])):
        assert_same_bits(a, b, f"{threads} threads")
    # Equal to the one-thread run, and that run really stepped every element (a kernel
    # that skipped elements on every thread count would otherwise pass).
    start = _group(1, SIZES)
    for before, after in zip(start[0] + start[1], got[0] + got[1]):
        assert np.count_nonzero(before == after) <= after.size // 1000  # (a rare no-op element)


def test_concurrent_python_threads_match_serial(isa):
    sizes = [5000, 77, 30000]
    configs = [dict(lr=1e-2), dict(lr=3e-3, weight_decay=0.1), dict(lr=1e-3, beta1=0.3),
               dict(lr=2e-2, maximize=True)]

    def run(cfg, seed):
        params, ms, vs, _, grads = _group(seed, sizes)
        for _ in range(25):
            for step, g in enumerate(grads, 1):
                adamcore.adam_step(params, g, ms, vs, step=step, **cfg)
        return params + ms + vs

    serial = [run(cfg, i) for i, cfg in enumerate(configs)]
    results = [None] * len(configs)

    def worker(i):
        results[i] = run(configs[i], i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for want, got in zip(serial, results):
        for a, b in zip(got, want):
            assert_same_bits(a, b, "concurrent vs serial")
    start = _group(0, sizes)
    for before, after in zip(start[0], serial[0][:len(sizes)]):
        assert np.count_nonzero(before == after) <= after.size // 1000  # the reference moved
