"""Clipping fused into the step (issue 9): ``max_grad_norm=`` on the step functions,
the groups and the optimizer classes.

The grads are read once for their total norm (adamcore's reproducible norm,
tests/test_clip.py), then the step multiplies each grad by torch's clip coefficient in
its pass without writing the grads. Checked: the result equals ``clip_grad_norm`` (in
place) followed by the plain step, bit for bit, for every dtype; equals torch's
``clip_grad_norm_`` + fused step given the same coefficient; the step returns the
norm; non-finite norms follow torch's error_if_nonfinite; bad combinations raise
before anything is written.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamcore

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float32), BF16, np.dtype(np.float16), np.dtype(np.float64)]


def _grads(rng, sizes, dtype, scale=1.0):
    return [(rng.standard_normal(k) * scale).astype(dtype) for k in sizes]


def _same(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("family", ["adamw", "adagrad"])
def test_fused_equals_clip_then_step(isa, dtype, family):
    rng = np.random.default_rng(1)
    sizes = [7, 300, 5000]
    ps = [rng.standard_normal(k).astype(dtype) for k in sizes]
    ref = [p.copy() for p in ps]
    k = 1 if family == "adagrad" else 2
    state = [[np.zeros(n, dtype) for n in sizes] for _ in range(k)]
    ref_state = [[a.copy() for a in col] for col in state]
    for step in range(1, 8):
        gs = _grads(rng, sizes, dtype, scale=[0.01, 1.0, 30.0][step % 3])
        kept = [g.copy() for g in gs]
        clipped = [g.copy() for g in gs]
        want_norm = adamcore.clip_grad_norm(clipped, 1.0)
        if family == "adagrad":
            norm = adamcore.adagrad_step(ps, gs, state[0], step=step, max_grad_norm=1.0)
            adamcore.adagrad_step(ref, clipped, ref_state[0], step=step)
        else:
            norm = adamcore.adamw_step(ps, gs, state[0], state[1], step=step, max_grad_norm=1.0)
            adamcore.adamw_step(ref, clipped, ref_state[0], ref_state[1], step=step)
        assert norm == want_norm
        assert _same(gs, kept), "the fused step wrote the grads"
        assert _same(ps, ref), f"step {step}"
        for a, b in zip(state, ref_state):
            assert _same(a, b)


def test_groups_and_optimizer_classes_clip_too():
    rng = np.random.default_rng(2)
    sizes = [64, 1000]
    ps = [rng.standard_normal(k).astype(np.float32) for k in sizes]
    qs = [p.copy() for p in ps]
    rs = [p.copy() for p in ps]
    opt = adamcore.AdamW(ps, lr=1e-2, max_grad_norm=0.5)
    group = adamcore.AdamGroup(qs, [np.zeros(k, np.float32) for k in sizes],
                               [np.zeros(k, np.float32) for k in sizes])
    ref = adamcore.AdamW(rs, lr=1e-2)
    for step in range(1, 6):
        gs = _grads(rng, sizes, np.float32, 3.0)
        clipped = [g.copy() for g in gs]
        norm = adamcore.clip_grad_norm(clipped, 0.5)
        opt.step(gs)
        got = group.step(gs, step=step, lr=1e-2, weight_decay=1e-2, decoupled=True,
                         max_grad_norm=0.5)
        ref.step(clipped)
        assert opt.last_grad_norm == got == norm
        assert _same(ps, rs) and _same(qs, rs)


def test_matches_torch_clip_grad_norm_then_fused_step_given_its_coefficient():
    """torch's norm differs from adamcore's in the last bits (tests/test_clip.py), so
    its coefficient can too; given torch's coefficient (clip_coef=), the step is torch's
    clip-then-fused-step bit for bit; with adamcore's own norm the coefficients differ
    by at most one float32 ulp here."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    sizes = [64, 1024]
    ps = [rng.standard_normal(k).astype(np.float32) for k in sizes]
    tps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in ps]
    topt = torch.optim.AdamW(tps, lr=1e-2, fused=True)
    ms, vs = ([np.zeros(k, np.float32) for k in sizes] for _ in range(2))
    worst = 0
    for step in range(1, 11):
        gs = _grads(rng, sizes, np.float32, 5.0)
        for tp, g in zip(tps, gs):
            tp.grad = torch.from_numpy(g.copy())
        tnorm = torch.nn.utils.clip_grad_norm_(tps, 1.0)
        coef = float(torch.clamp(1.0 / (tnorm + 1e-6), max=1.0))  # as clip_grad_norm_ does
        topt.step()
        ours = adamcore.clip_coefficient(adamcore.grad_norm(gs), 1.0)
        worst = max(worst, abs(int(np.float32(ours).view(np.int32)) - int(np.float32(coef).view(np.int32))))
        adamcore.adamw_step(ps, gs, ms, vs, step=step, lr=1e-2, clip_coef=coef)
        for p, tp in zip(ps, tps):
            assert p.tobytes() == tp.detach().numpy().tobytes()
    assert worst <= 1


def test_nonfinite_norms_follow_torch():
    p = np.ones(8, np.float32)
    g = np.ones(8, np.float32)
    g[3] = np.nan
    m, v = np.zeros(8, np.float32), np.zeros(8, np.float32)
    before = [a.tobytes() for a in (p, g, m, v)]
    with pytest.raises(RuntimeError, match="non-finite"):
        adamcore.adam_step(p, g, m, v, step=1, max_grad_norm=1.0, error_if_nonfinite=True)
    assert [a.tobytes() for a in (p, g, m, v)] == before
    norm = adamcore.adam_step(p, g, m, v, step=1, max_grad_norm=1.0)
    assert math.isnan(norm) and np.all(np.isnan(p))  # torch: NaN coefficient, NaN params
    opt = adamcore.Adam([q := np.ones(8, np.float32)], max_grad_norm=1.0)
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.step([np.full(8, np.inf, np.float32)], error_if_nonfinite=True)
    assert np.all(q == 1.0) and 0 not in opt.state


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_grad_norm=-1.0), ValueError, "^max_grad_norm must be >= 0"),
    (dict(max_grad_norm=float("nan")), ValueError, "^max_grad_norm must be >= 0"),
    (dict(max_grad_norm="1"), TypeError, "^max_grad_norm must be a real number"),
    (dict(max_grad_norm=1.0, norm_type=0.0), ValueError, "^norm_type"),
    (dict(max_grad_norm=1.0, clip_coef=0.5), ValueError, "max_grad_norm or clip_coef"),
    (dict(max_grad_norm=1.0, grad_scale=2.0), ValueError, "unscale them first"),
    (dict(max_grad_norm=1.0, error_if_nonfinite=1), TypeError, "^error_if_nonfinite must be a bool"),
])
def test_bad_arguments_raise_and_write_nothing(kwargs, error, match):
    p, g = np.ones(8, np.float32), np.full(8, 5.0, np.float32)
    m, v = np.zeros(8, np.float32), np.zeros(8, np.float32)
    before = [a.tobytes() for a in (p, g, m, v)]
    with pytest.raises(error, match=match):
        adamcore.adam_step(p, g, m, v, step=1, **kwargs)
    assert [a.tobytes() for a in (p, g, m, v)] == before


def test_check_only_and_found_inf_read_nothing_and_return_none_or_nan():
    p, g = np.ones(8, np.float32), np.full(8, 5.0, np.float32)
    m, v = np.zeros(8, np.float32), np.zeros(8, np.float32)
    assert adamcore.adam_step(p, g, m, v, step=1, max_grad_norm=1.0, check_only=True) is None
    assert math.isnan(adamcore.adam_step(p, g, m, v, step=1, max_grad_norm=1.0, found_inf=True))
    assert np.all(p == 1.0)
    stats, norm = adamcore.adam_step(p, g, m, v, step=1, max_grad_norm=1.0, diagnostics=True)
    assert norm == adamcore.grad_norm(g) and stats.count == 8
