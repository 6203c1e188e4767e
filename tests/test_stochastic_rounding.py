"""Stochastic rounding of 16-bit stores (issue 9): ``rounding="stochastic"``.

Each 16-bit store (params, exp_avg, exp_avg_sq, max_exp_avg_sq, AdaGrad's sum, the
param copy) rounds up or down with probability proportional to the distance, from 32
random bits per element that hash (seed, step, the tensor's stream, element index,
buffer). Checked here:
- it is unbiased: the mean error of 4 x 10^6 draws of one value is below 1e-3 of its ulp
  (the draws' own standard error is at most 2.5e-4 ulp), for bfloat16 and float16,
  float16 subnormals included; every result is one of the two neighbours;
- it is reproducible: the same seed and step give the same bits on every ISA of this
  machine and thread count, whatever the tensor's neighbours in the list; another seed
  or step gives other bits;
- it makes progress where round-to-nearest stalls (updates under half an ulp);
- float32 and float64 buffers, and grads written back under grad_scale, are rounded
  to nearest as before.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamcore

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


def stochastic_copy(x: np.ndarray, dtype, seed: int = 0, step: int = 1, **kw) -> np.ndarray:
    """x rounded stochastically to ``dtype`` by an AdaGrad step with lr = 0 (which leaves
    the float32 params as they are) writing a param_copy."""
    p = x.astype(np.float32)
    copy = np.empty(p.size, dtype)
    adamcore.adagrad_step(p, np.zeros_like(p), np.zeros_like(p), step=step, lr=0.0,
                          param_copy=copy, rounding="stochastic", seed=seed, **kw)
    return copy


def neighbours(x: np.float32, dtype) -> tuple:
    """The two values of ``dtype`` around x (equal when x is one of them)."""
    nearest = np.array([x]).astype(dtype)
    near = float(nearest.astype(np.float64)[0])
    if near == float(x):
        return near, near
    # One step along the 16-bit grid, towards x (sign-magnitude bits: away from zero
    # adds one to the magnitude).
    bits = nearest.view(np.uint16).astype(np.int64)[0]
    towards_larger_magnitude = abs(float(x)) > abs(near)
    other_bits = bits + (1 if towards_larger_magnitude else -1)
    other = float(np.array([other_bits], np.uint16).view(dtype).astype(np.float64)[0])
    return tuple(sorted([near, other]))


VALUES = [1.0 + 2.0**-9, np.pi, -1 / 3, 3e-6, 1e-7, -2.5e-8, 6e-8, 60000.5, 1e-30, -7.3e12]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("value", VALUES)
def test_unbiased_over_4_million_draws(dtype, value):
    x = np.float32(value)
    if dtype == F16 and abs(x) > 65504:
        pytest.skip("beyond float16's range")
    lo, hi = neighbours(x, dtype)
    draws = np.full(1_000_000, x, np.float32)
    total, count = 0.0, 0
    for seed in range(4):
        got = stochastic_copy(draws, dtype, seed=seed).astype(np.float64)
        assert np.all((got == lo) | (got == hi)), "a result that is not a neighbour"
        total += float(np.sum(got - np.float64(x)))
        count += got.size
    if hi == lo:
        assert total == 0.0
        return
    mean_error = total / count / (hi - lo)
    assert abs(mean_error) < 1e-3, f"mean error {mean_error:.2e} ulp"


def test_probabilities_follow_the_distance():
    """x a quarter of the way from one bfloat16 to the next rounds up a quarter of the
    time (within 5 standard errors)."""
    x = np.float32(1.0 + 2.0**-9)  # bfloat16's ulp at 1 is 2^-7
    got = stochastic_copy(np.full(1_000_000, x, np.float32), BF16, seed=3).astype(np.float64)
    up = np.mean(got > 1.0)
    assert abs(up - 0.25) < 5 * np.sqrt(0.25 * 0.75 / got.size)


def test_specials_are_kept():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 65504.0, 3.0e38], np.float32)
    for dtype in (BF16, F16):
        got = stochastic_copy(np.repeat(x, 100), dtype).astype(np.float64).reshape(-1, 100)
        assert np.all(got[0] == np.inf) and np.all(got[1] == -np.inf)
        assert np.all(np.isnan(got[2]))
        assert np.all(got[3] == 0) and not np.any(np.signbit(got[3]))
        assert np.all(got[4] == 0) and np.all(np.signbit(got[4]))
    assert np.all(stochastic_copy(np.full(10, 3.0e38, np.float32), F16).astype(np.float64) == np.inf)


LAYOUTS = {  # (params, grads, state, copy): every 16-bit store kind
    "bfloat16": (BF16, BF16, BF16, None),
    "float16": (F16, F16, F16, None),
    "bf16 params, f32 state": (BF16, BF16, np.float32, None),
    "f32 params, bf16 state + copy": (np.float32, np.float32, BF16, BF16),
    "f32 params, fp16 copy": (np.float32, F16, np.float32, F16),
}


def _adam_run(layout, threads, seed, isa="scalar", split=False):
    pdt, gdt, sdt, cdt = LAYOUTS[layout]
    rng = np.random.default_rng(21)
    sizes = [40_000 + 7, 333]
    ps = [rng.standard_normal(k).astype(pdt) for k in sizes]
    states = [[np.zeros(k, sdt) for k in sizes] for _ in range(3)]
    copies = None if cdt is None else [np.zeros(k, cdt) for k in sizes]
    saved = adamcore.get_num_threads()
    adamcore.set_num_threads(threads)
    try:
        with adamcore.use_isa(isa):
            for step in range(1, 6):
                gs = [(rng.standard_normal(k) * 1e-2).astype(gdt) for k in sizes]
                kw = dict(step=step, lr=1e-3, amsgrad=True, rounding="stochastic", seed=seed)
                if split:  # tensor 0 alone in its call: its stream (0) is unchanged
                    adamcore.adam_step([ps[0]], [gs[0]], [states[0][0]], [states[1][0]],
                                       max_exp_avg_sq=[states[2][0]],
                                       param_copy=None if copies is None else [copies[0]], **kw)
                else:
                    adamcore.adam_step(ps, gs, states[0], states[1], max_exp_avg_sq=states[2],
                                       param_copy=copies, **kw)
    finally:
        adamcore.set_num_threads(saved)
    first = [ps[0]] + [s[0] for s in states] + ([] if copies is None else [copies[0]])
    return first


def _same(a, b) -> bool:
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_same_bits_on_every_isa_thread_count_and_grouping(layout):
    want = _adam_run(layout, 1, seed=5)
    for isa in adamcore.available_isas():
        for threads in (1, 2):
            assert _same(_adam_run(layout, threads, seed=5, isa=isa), want), (isa, threads)
    assert _same(_adam_run(layout, 2, seed=5, split=True), want), "alone in its call"
    assert not _same(_adam_run(layout, 1, seed=6), want), "another seed, the same bits"


def test_each_step_draws_afresh():
    x = np.full(10_000, 1.0 + 2.0**-9, np.float32)
    a, b = stochastic_copy(x, BF16, step=1), stochastic_copy(x, BF16, step=2)
    assert a.tobytes() != b.tobytes()
    assert stochastic_copy(x, BF16, step=1).tobytes() == a.tobytes()


def test_optimizer_classes_and_groups_take_rounding_and_seed():
    rng = np.random.default_rng(2)
    ps = [rng.standard_normal(k).astype(BF16) for k in (100, 5000)]
    ref = [p.copy() for p in ps]
    opt = adamcore.Adam(ps, lr=1e-3, rounding="stochastic", seed=9)
    ref_m = [np.zeros(p.size, BF16) for p in ps]
    ref_v = [np.zeros(p.size, BF16) for p in ps]
    for step in range(1, 4):
        gs = [rng.standard_normal(p.size).astype(BF16) for p in ps]
        opt.step(gs)
        adamcore.adam_step(ref, gs, ref_m, ref_v, step=step, lr=1e-3, rounding="stochastic", seed=9)
    assert _same(ps, ref)


def test_stochastic_rounding_moves_where_nearest_stalls():
    """A bfloat16 param at 1.0 with updates of a tenth of its ulp: round-to-nearest never
    moves it; stochastic rounding moves it by the expected amount on average."""
    n = 100_000
    nearest, stochastic = np.ones(n, BF16), np.ones(n, BF16)
    g = np.full(n, 1.0, BF16)
    lr = 2.0**-7 / 10  # AdaGrad's first step moves each param down by lr: a fifth of the ulp below 1
    for step in range(1, 11):  # (a fresh sum each time: every step is a first step)
        adamcore.adagrad_step(nearest, g, np.zeros(n, BF16), step=1, lr=lr)
        adamcore.adagrad_step(stochastic, g, np.zeros(n, BF16), step=1, lr=lr,
                              rounding="stochastic", seed=step)
    assert np.all(nearest.astype(np.float32) == 1.0)
    moved = 1.0 - float(np.mean(stochastic.astype(np.float64)))
    assert abs(moved - 10 * lr) < 0.05 * 10 * lr, moved


@pytest.mark.parametrize("bad, error, match", [
    ("up", ValueError, "^rounding must be 'nearest' or 'stochastic'"),
    (1, TypeError, "^rounding must be"),
])
def test_bad_rounding_raises(bad, error, match):
    p = np.ones(4, BF16)
    with pytest.raises(error, match=match):
        adamcore.adam_step(p, p.copy(), p.copy(), p.copy(), step=1, rounding=bad)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2**64, ValueError), (True, TypeError),
                                        (1.5, TypeError)])
def test_bad_seed_raises(bad, error):
    p = np.ones(4, BF16)
    with pytest.raises(error, match="^seed must be"):
        adamcore.adam_step(p, p.copy(), p.copy(), p.copy(), step=1, rounding="stochastic", seed=bad)


def test_float32_buffers_and_written_grads_round_to_nearest():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(1000).astype(np.float32)
    g = (rng.standard_normal(1000) * 1000).astype(BF16)
    m, v = np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    q, gq, mq, vq = p.copy(), g.copy(), m.copy(), v.copy()
    adamcore.adam_step(p, g, m, v, step=1, grad_scale=3.0, rounding="stochastic", seed=1)
    adamcore.adam_step(q, gq, mq, vq, step=1, grad_scale=3.0)
    assert _same([p, g, m, v], [q, gq, mq, vq])
