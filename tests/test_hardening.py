"""Real-world callers: runtimes that grant fewer threads, fork, re-entrant arguments,
lying list subclasses, extreme settings, misaligned views, flush-to-zero.

Each case here lost data, crashed or hung before it was fixed (issue 8). Cases that
could crash or hang run in a child interpreter with a timeout, so a regression fails
the test instead of taking the test run down with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import adamcore
from _util import assert_same_bits, f32, snapshot

# A step big enough to be split across threads with the default threshold.
N = 1 << 16


def _run_child(code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


# Prints the number of elements a 4-thread Adam step left unchanged, and whether the
# result equals the one-thread result bit for bit.
_COUNT_UPDATED = f"""
    import numpy as np, adamcore
    def run(threads):
        adamcore.set_num_threads(threads)
        p = np.ones({N}, np.float32); g = np.full_like(p, 0.5)
        m = np.zeros_like(p); v = np.zeros_like(p)
        adamcore.adam_step(p, g, m, v, step=1, lr=1e-2)
        return p, m, v
    want = run(1)
    got = run(4)
    print(int((got[0] == 1.0).sum()), all(np.array_equal(a, b) for a, b in zip(got, want)))
"""


@pytest.mark.parametrize("env", [{"OMP_DYNAMIC": "true"}, {"OMP_THREAD_LIMIT": "1"},
                                 {"OMP_THREAD_LIMIT": "2"}])
def test_every_element_is_updated_whatever_threads_the_runtime_grants(env):
    # The split used to assume the team had every thread it asked for: with
    # OMP_THREAD_LIMIT=1 three quarters of the step were silently skipped.
    result = _run_child(_COUNT_UPDATED, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "True"], (env, result.stdout)


_FORK = f"""
    import os, sys, numpy as np, adamcore
    {{prelude}}
    adamcore.set_num_threads(2)
    def step(seed):
        rng = np.random.default_rng(seed)
        p = rng.standard_normal({N}).astype(np.float32); g = rng.standard_normal({N}).astype(np.float32)
        m = np.zeros_like(p); v = np.zeros_like(p)
        for t in range(1, 4):
            adamcore.adamw_step(p, g, m, v, step=t, lr=1e-2)
        return p
    parent = step(0)                       # the parent's team of threads exists now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        child = step(0)                    # hung forever before the fix
        ok = np.array_equal(child, parent) and adamcore._core.threading_status()["forked_child"]
        os.write(write, b"ok" if ok else b"wrong")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    print(os.read(read, 16).decode(), status, adamcore._core.threading_status()["forked_child"])
"""


@pytest.mark.parametrize("prelude", ["pass", "import torch; torch.ones(1 << 20).sum()"],
                         ids=["numpy", "after-torch-threads"])
def test_forked_child_steps_instead_of_hanging(prelude):
    if "torch" in prelude:
        pytest.importorskip("torch")
    result = _run_child(_FORK.replace("{prelude}", prelude), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "0", "False"], result.stdout


def test_reentrant_hyperparameter_does_not_swap_the_outer_call_arrays():
    rng = np.random.default_rng(3)
    outer = [f32(rng.standard_normal(1000)) for _ in range(4)]
    inner = [f32(rng.standard_normal(10)) for _ in range(4)]
    want_outer = [a.copy() for a in outer]
    want_inner = [a.copy() for a in inner]
    adamcore.adam_step(*want_inner, step=1, lr=0.5)
    adamcore.adam_step(*want_outer, step=1, lr=1e-3)

    class LoggingLr:
        """A learning rate that steps another model when read (a logger, say)."""

        def __float__(self):
            adamcore.adam_step(*inner, step=1, lr=0.5)
            return 1e-3

    adamcore.adam_step(*outer, step=1, lr=LoggingLr())
    for got, want, name in zip(outer + inner, want_outer + want_inner,
                               ["p", "g", "m", "v"] * 2):
        assert_same_bits(got, want, name)


def test_reentrant_step_number_in_a_group_step():
    rng = np.random.default_rng(4)
    params = [f32(rng.standard_normal(100))]
    group = adamcore.AdamGroup(params, [np.zeros(100, np.float32)], [np.zeros(100, np.float32)])
    other = adamcore.AdamGroup([f32(rng.standard_normal(7))], [np.zeros(7, np.float32)],
                               [np.zeros(7, np.float32)])
    other_grads = [f32(rng.standard_normal(7))]
    grads = [f32(rng.standard_normal(100))]
    expected = params[0].copy()
    adamcore.adam_step(expected, grads[0], np.zeros(100, np.float32), np.zeros(100, np.float32),
                       step=2, lr=0.1)

    class Step:
        def __index__(self):
            other.step(other_grads, step=1, lr=0.5)  # the same entry point, re-entered
            return 2

    group.step(grads, step=Step(), lr=0.1)
    assert_same_bits(params[0], expected, "param")


_LYING_LIST = """
    import numpy as np, adamcore
    class Lying(list):
        def __len__(self):
            return {claimed}
    n = 64
    arrays = [[np.full(n, 1.0 + k, np.float32) for k in range(3)] for _ in range(4)]
    p, g, m, v = (Lying(a) for a in arrays)
    adamcore.adam_step(p, g, m, v, step=1, lr=0.1)
    print(all(not np.array_equal(a, np.full(n, 1.0 + k, np.float32)) for k, a in enumerate(arrays[0])))
"""


@pytest.mark.parametrize("claimed", [0, 1, 10_000])
def test_list_subclass_lying_about_its_length(claimed):
    # The size came from __len__ and items were read unchecked: a longer claim read
    # past the item array, a shorter one silently skipped parameters.
    result = _run_child(_LYING_LIST.format(claimed=claimed))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_huge_parallel_threshold_means_never_parallel():
    result = _run_child(f"""
        import numpy as np, adamcore
        adamcore.set_parallel_threshold(2**64 - 1)
        adamcore.set_num_threads(2)
        p = np.ones({N}, np.float32)
        adamcore.adam_step(p, np.ones_like(p), np.zeros_like(p), np.zeros_like(p), step=1)
        print(adamcore.get_parallel_threshold(), int((p == 1).sum()))
    """)
    assert result.returncode == 0, result.stderr  # SIGFPE before the fix
    assert result.stdout.split() == [str(2**64 - 1), "0"]


@pytest.mark.parametrize("n", [0, -1, 1025, 2**40])
def test_set_num_threads_is_bounded(n):
    before = adamcore.get_num_threads()
    with pytest.raises((ValueError, TypeError), match="n must be in"):
        adamcore.set_num_threads(n)
    assert adamcore.get_num_threads() == before


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5", "1025", "99999999999999999999", " 2"])
def test_malformed_thread_environment_fails_the_import(value):
    result = _run_child("import adamcore", ADAMCORE_NUM_THREADS=value)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "ADAMCORE_NUM_THREADS" in result.stderr


def test_thread_environment_sets_the_count():
    result = _run_child("import adamcore; print(adamcore.get_num_threads())",
                        ADAMCORE_NUM_THREADS="3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def _misaligned(n: int) -> np.ndarray:
    buffer = bytearray(4 * n + 8)
    view = np.frombuffer(buffer, np.float32, count=n, offset=1)
    view[:] = 0.5
    return view


@pytest.mark.parametrize("which", range(4))
def test_misaligned_buffers_are_rejected_and_nothing_is_written(which):
    arrays = [f32(np.linspace(-1, 1, 33)) for _ in range(4)]
    arrays[which] = _misaligned(33)
    before = snapshot(*arrays)
    name = ["param", "grad", "exp_avg", "exp_avg_sq"][which]
    with pytest.raises(ValueError, match=f"^{name} is not aligned"):
        adamcore.adam_step(*arrays, step=1)
    with pytest.raises(ValueError, match=rf"^{name}\[1\] is not aligned"):
        adamcore.adam_step(*[[f32(np.ones(33)), a] for a in arrays], step=1)
    assert snapshot(*arrays) == before


def test_misaligned_grad_in_a_group_is_rejected():
    group = adamcore.AdagradGroup([f32(np.ones(33))], [f32(np.ones(33))])
    with pytest.raises(ValueError, match=r"^grads\[0\] is not aligned"):
        group.step([_misaligned(33)], step=1)


def test_flags_are_bools_only():
    p, g, m, v = (f32(np.ones(8)) for _ in range(4))
    for flag in ("amsgrad", "maximize", "bias_correction", "diagnostics", "check_only"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool, got int"):
            adamcore.adam_step(p, g, m, v, step=1, **{flag: 1})
    adamcore.adam_step(p, g, m, v, step=1, maximize=np.bool_(True))


def test_check_only_validates_and_writes_nothing():
    rng = np.random.default_rng(5)
    p, g, m, v = (f32(rng.standard_normal(100)) for _ in range(4))
    v = np.abs(v)
    before = snapshot(p, g, m, v)
    assert adamcore.adam_step(p, g, m, v, step=1, check_only=True) is None
    assert adamcore.adagrad_step(p, g, v, step=1, check_only=True) is None
    assert adamcore.adam_step([p], [g], [m], [v], step=1, check_only=True) is None
    group = adamcore.AdamGroup([p], [m], [v])
    assert group.step([g], step=1, check_only=True) is None
    assert snapshot(p, g, m, v) == before
    with pytest.raises(ValueError, match="lr must be finite"):
        adamcore.adam_step(p, g, m, v, step=1, lr=-1.0, check_only=True)
    with pytest.raises(TypeError, match=r"grads\[0\] must have dtype float32"):
        group.step([g.astype(np.float64)], step=1, check_only=True)
    adamcore.adam_step(p, g, m, v, step=1)
    assert snapshot(p) != before[:1]


# Subnormal-heavy state: exp_avg_sq and gradients near the bottom of float32's range.
_FTZ = f"""
    import numpy as np, torch, adamcore
    torch.set_num_threads(1)
    def run(threads, flush):
        torch.set_flush_denormal(flush)
        adamcore.set_num_threads(threads)
        rng = np.random.default_rng(7)
        tiny = np.float32(1e-38)
        p = (rng.standard_normal({N}) * tiny).astype(np.float32)
        g = (rng.standard_normal({N}) * tiny).astype(np.float32)
        m = (rng.standard_normal({N}) * tiny).astype(np.float32)
        v = (rng.random({N}) * tiny).astype(np.float32)
        for t in range(1, 4):
            adamcore.adam_step(p, g, m, v, step=t, lr=1e-3, eps=0.0, weight_decay=0.5)
        torch.set_flush_denormal(False)
        return np.concatenate([p, m, v]).view(np.uint32)
    flushed = [run(t, True) for t in (1, 2, 1, 2)]
    plain = [run(t, False) for t in (1, 2)]
    print(all(np.array_equal(a, flushed[0]) for a in flushed),
          np.array_equal(plain[0], plain[1]), not np.array_equal(plain[0], flushed[0]))
"""


def test_flush_to_zero_mode_reaches_every_thread():
    pytest.importorskip("torch")
    if not adamcore._core.built_with_openmp():
        pytest.skip("no second thread in this build")
    result = _run_child(_FTZ)
    assert result.returncode == 0, result.stderr
    # 1 and 2 threads agree under flush-to-zero, and without it; and flush-to-zero
    # really changed the result (else this test would prove nothing).
    assert result.stdout.split() == ["True", "True", "True"], result.stdout
