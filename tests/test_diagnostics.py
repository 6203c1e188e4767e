"""Γ diagnostics: identical on every ISA and thread count, and equal to a NumPy recomputation.

Γ_i = den_{t,i}/a_t − den_{t−1,i}/a_{t−1} (Reddi et al.'s Γ_{t+1} per coordinate, with
adamcore's denominator den = sqrt(v̂)/sqrt(bc2) + eps and step size a = lr/bc1; AdaGrad:
den = sqrt(s) + eps and a = the decayed lr). The kernels evaluate it in float32 with the
same correctly rounded operations as below, so the counts, minimum and learning-rate range
must match the recomputation exactly, not approximately.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamcore
from _util import gamma_reductions as _reduce
from _util import stats_key as _stats_key

N = 1013  # not a multiple of 16: the scalar tail contributes too
THREADS = (1, 2, 3, 4)

ADAM_CONFIGS = {
    "adam": dict(lr=1e-3, prev_lr=0.8e-3, beta1=0.9, beta2=0.999, eps=1e-8),
    "amsgrad": dict(lr=1e-3, prev_lr=0.7e-3, beta1=0.9, beta2=0.99, eps=1e-8, amsgrad=True),
    "no_bias_correction": dict(lr=0.05, prev_lr=0.045, beta1=0.5, beta2=0.9, eps=0.0,
                               bias_correction=False),
    "adamw_maximize": dict(lr=3e-3, prev_lr=3e-3, beta1=0.3, beta2=0.95, eps=1e-6,
                           weight_decay=0.1, maximize=True, decoupled=True),
    "amsgrad_l2_nan": dict(lr=1e-2, prev_lr=5e-3, beta1=0.9, beta2=0.9, eps=1e-8,
                           amsgrad=True, weight_decay=0.01, nan=True),
}


def _adam_state(seed: int, amsgrad: bool, nan: bool):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    state = {
        "param": rng.standard_normal(N).astype(f32),
        "grad": (rng.standard_normal(N) * 10.0 ** rng.integers(-4, 1, N)).astype(f32),
        "exp_avg": (0.01 * rng.standard_normal(N)).astype(f32),
        # A spread of second moments so that v grows for some coordinates and shrinks
        # for others.
        "exp_avg_sq": (10.0 ** rng.uniform(-9, -1, N)).astype(f32),
    }
    if amsgrad:
        state["max_exp_avg_sq"] = (state["exp_avg_sq"] * rng.uniform(1, 3, N)).astype(f32)
    if nan:
        state["grad"][[3, 500, N - 2]] = np.nan
    return state


def _run_adam(state, step, cfg, diagnostics=True):
    cfg = {k: v for k, v in cfg.items() if k != "nan"}
    decoupled = cfg.pop("decoupled", False)
    fn = adamcore.adamw_step if decoupled else adamcore.adam_step
    return fn(state["param"], state["grad"], state["exp_avg"], state["exp_avg_sq"], step=step,
              max_exp_avg_sq=state.get("max_exp_avg_sq"), diagnostics=diagnostics,
              weight_decay=cfg.pop("weight_decay", 0.0), **cfg)


def _adam_gamma_f32(before, after, step, cfg):
    """Γ and the effective lr from the states before and after, in float32 like the kernels."""
    amsgrad = cfg.get("amsgrad", False)
    bias = cfg.get("bias_correction", True)
    f32 = np.float32

    def scalars(t, lr):
        if not bias:
            return f32(lr), f32(1.0)
        bc1 = 1.0 - cfg["beta1"] ** t
        bc2 = 1.0 - cfg["beta2"] ** t
        return f32(lr / bc1), f32(math.sqrt(bc2))

    a, d = scalars(step, cfg["lr"])
    a_prev, d_prev = scalars(step - 1, cfg["prev_lr"])
    e = f32(cfg["eps"])
    key = "max_exp_avg_sq" if amsgrad else "exp_avg_sq"
    with np.errstate(invalid="ignore"):
        den_new = np.sqrt(after[key]) / d + e
        den_old = np.sqrt(before[key]) / d_prev + e
        gamma = (den_new / a - den_old / a_prev) + f32(0.0)
        lr_eff = a / den_new
    assert gamma.dtype == np.float32 and lr_eff.dtype == np.float32
    return gamma, lr_eff


def _adam_gamma_f64(before, after, step, cfg):
    amsgrad = cfg.get("amsgrad", False)
    bias = cfg.get("bias_correction", True)

    def scalars(t, lr):
        if not bias:
            return lr, 1.0
        return lr / (1.0 - cfg["beta1"] ** t), math.sqrt(1.0 - cfg["beta2"] ** t)

    a, d = scalars(step, cfg["lr"])
    a_prev, d_prev = scalars(step - 1, cfg["prev_lr"])
    key = "max_exp_avg_sq" if amsgrad else "exp_avg_sq"
    den_new = np.sqrt(after[key].astype(np.float64)) / d + cfg["eps"]
    den_old = np.sqrt(before[key].astype(np.float64)) / d_prev + cfg["eps"]
    return den_new / a - den_old / a_prev, den_new / a


@pytest.mark.parametrize("name", sorted(ADAM_CONFIGS))
def test_adam_gamma_identical_on_every_isa_and_thread_count(name, split_threads):
    cfg = ADAM_CONFIGS[name]
    seen = {}
    for isa in adamcore.available_isas():
        for threads in THREADS:
            adamcore.set_num_threads(threads)
            state = _adam_state(7, cfg.get("amsgrad", False), cfg.get("nan", False))
            with adamcore.use_isa(isa):
                stats = _run_adam(state, 5, cfg)
            bits = tuple(state[k].view(np.uint32).tobytes() for k in sorted(state))
            seen[(isa, threads)] = (_stats_key(stats), bits)
    reference = seen[("scalar", 1)]
    for where, got in seen.items():
        assert got[0] == reference[0], f"GammaStats differ on {where}"
        assert got[1] == reference[1], f"updated arrays differ on {where}"
    # The run must exercise both signs of Γ (otherwise the counts prove little).
    negative = dict(reference[0])["negative"]
    assert 0 < negative < N


@pytest.mark.parametrize("name", sorted(ADAM_CONFIGS))
def test_adam_gamma_matches_numpy_recomputation(name):
    cfg = ADAM_CONFIGS[name]
    state = _adam_state(11, cfg.get("amsgrad", False), cfg.get("nan", False))
    before = {k: v.copy() for k, v in state.items()}
    stats = _run_adam(state, 4, cfg)
    gamma, lr_eff = _adam_gamma_f32(before, state, 4, cfg)
    expected = _reduce(gamma, lr_eff, True)
    got = stats.as_dict()
    assert got == pytest.approx(expected, rel=0, abs=0)  # exact, float32 values as floats
    assert stats.fraction_negative == expected["negative"] / N

    # The float64 evaluation agrees on the sign wherever Γ is not within rounding of 0.
    gamma64, inv64 = _adam_gamma_f64(before, state, 4, cfg)
    clear = np.abs(gamma64) > 1e-4 * np.abs(inv64)
    clear &= ~np.isnan(gamma64)
    assert clear.sum() > N // 2
    assert np.array_equal(gamma[clear] < 0, gamma64[clear] < 0)


def test_diagnostics_do_not_change_the_update():
    cfg = ADAM_CONFIGS["amsgrad"]
    with_diag = _adam_state(3, True, False)
    without = {k: v.copy() for k, v in with_diag.items()}
    assert _run_adam(without, 9, cfg, diagnostics=False) is None
    assert isinstance(_run_adam(with_diag, 9, cfg), adamcore.GammaStats)
    for key in with_diag:
        assert np.array_equal(with_diag[key].view(np.uint32), without[key].view(np.uint32))


def test_gamma_undefined_at_step_one():
    state = _adam_state(5, False, False)
    state["exp_avg"][:] = 0
    state["exp_avg_sq"][:] = 0
    stats = _run_adam(state, 1, dict(lr=1e-3, prev_lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8))
    assert stats.defined is False
    assert stats.negative == 0 and stats.fraction_negative == 0.0
    assert math.isnan(stats.gamma_min)
    # The effective learning rate is still reported: lr/bc1 / (|g|/sqrt(bc2)... + eps).
    assert 0 < stats.lr_min <= stats.lr_max


def test_group_call_reports_over_all_tensors():
    cfg = dict(lr=1e-3, prev_lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8)
    whole = _adam_state(21, False, False)
    parts = {k: [v[:100].copy(), v[100:517].copy(), v[517:].copy()] for k, v in whole.items()}
    one = _run_adam(whole, 3, cfg)
    group = adamcore.adam_step(parts["param"], parts["grad"], parts["exp_avg"],
                               parts["exp_avg_sq"], step=3, lr=1e-3, beta1=0.9, beta2=0.99,
                               eps=1e-8, diagnostics=True, prev_lr=1e-3)
    assert _stats_key(group) == _stats_key(one)


def test_paper_amsgrad_never_increases_the_effective_lr_but_adam_does():
    # The paper's AMSGrad: v̂ only grows and alpha_t = alpha/sqrt(t) only shrinks, so every
    # Γ_i >= 0 whatever the gradients; Adam's v forgets, on the same stream.
    rng = np.random.default_rng(0)
    ams = {k: np.zeros(N, np.float32) for k in ("param", "exp_avg", "exp_avg_sq", "vmax")}
    adam = {k: np.zeros(N, np.float32) for k in ("param", "exp_avg", "exp_avg_sq")}
    prev = None
    adam_negative = 0
    for t in range(1, 60):
        grad = (rng.standard_normal(N) * 10.0 ** rng.integers(-3, 2, N)).astype(np.float32)
        lr = 0.1 / math.sqrt(t)
        common = dict(step=t, lr=lr, beta1=0.9, beta2=0.9, eps=0.0, bias_correction=False,
                      diagnostics=True, prev_lr=prev)
        stats = adamcore.adam_step(ams["param"], grad, ams["exp_avg"], ams["exp_avg_sq"],
                                   amsgrad=True, max_exp_avg_sq=ams["vmax"], **common)
        adam_stats = adamcore.adam_step(adam["param"], grad, adam["exp_avg"],
                                        adam["exp_avg_sq"], **common)
        prev = lr
        if t > 1:
            assert stats.negative == 0 and stats.gamma_min >= 0
            adam_negative += adam_stats.negative
    assert adam_negative > 0


# ---------------------------------------------------------------- AdaGrad

def _adagrad_state(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "param": rng.standard_normal(N).astype(np.float32),
        "grad": (rng.standard_normal(N) * 10.0 ** rng.integers(-3, 1, N)).astype(np.float32),
        "state_sum": (10.0 ** rng.uniform(-6, 0, N)).astype(np.float32),
    }


def _run_adagrad(state, step, cfg):
    return adamcore.adagrad_step(state["param"], state["grad"], state["state_sum"], step=step,
                                 diagnostics=True, **cfg)


ADAGRAD_CONFIGS = {
    "decay": dict(lr=0.1, prev_lr=0.1, lr_decay=0.5, weight_decay=0.01, eps=1e-10),
    # A warm-up schedule (lr grows between steps) makes Γ negative for some coordinates.
    "warmup": dict(lr=0.2, prev_lr=0.1, lr_decay=0.0, eps=1e-6, maximize=True),
}


@pytest.mark.parametrize("name", sorted(ADAGRAD_CONFIGS))
def test_adagrad_gamma_identical_everywhere_and_matches_numpy(name, split_threads):
    cfg = ADAGRAD_CONFIGS[name]
    step = 6
    seen = set()
    for isa in adamcore.available_isas():
        for threads in THREADS:
            adamcore.set_num_threads(threads)
            state = _adagrad_state(13)
            with adamcore.use_isa(isa):
                seen.add(_stats_key(_run_adagrad(state, step, cfg)))
    assert len(seen) == 1

    state = _adagrad_state(13)
    before = {k: v.copy() for k, v in state.items()}
    stats = _run_adagrad(state, step, cfg)
    f32 = np.float32
    clr = f32(cfg["lr"] / (1.0 + (step - 1) * cfg["lr_decay"]))
    clr_prev = f32(cfg["prev_lr"] / (1.0 + (step - 2) * cfg["lr_decay"]))
    e = f32(cfg["eps"])
    std_new = np.sqrt(state["state_sum"]) + e
    std_old = np.sqrt(before["state_sum"]) + e
    gamma = (std_new / clr - std_old / clr_prev) + f32(0.0)
    expected = _reduce(gamma, clr / std_new, True)
    assert stats.as_dict() == expected
    if name == "decay":
        # The accumulator only grows and the lr only decays: Γ >= 0 everywhere.
        assert stats.negative == 0 and stats.gamma_min >= 0
    else:
        assert stats.negative > 0


@pytest.mark.parametrize("isa_name", adamcore.available_isas())
def test_nan_coordinates_are_counted_as_undefined(isa_name):
    rng = np.random.default_rng(8)
    n = 53
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    s = np.zeros(n, np.float32)
    q = p.copy()
    poisoned = [3, 17, 40]
    with adamcore.use_isa(isa_name):
        g = rng.standard_normal(n).astype(np.float32)
        g[poisoned] = np.nan
        adamcore.adam_step(p, g, m, v, step=1)
        adamcore.adagrad_step(q, g, s, step=1)
        g2 = rng.standard_normal(n).astype(np.float32)
        adam_stats = adamcore.adam_step(p, g2, m, v, step=2, diagnostics=True)
        adagrad_stats = adamcore.adagrad_step(q, g2, s, step=2, diagnostics=True)
    for stats in (adam_stats, adagrad_stats):
        assert stats.count == n
        assert stats.undefined == len(poisoned)
        assert stats.negative <= n - len(poisoned)
        assert math.isfinite(stats.gamma_min)
        assert stats.as_dict()["undefined"] == len(poisoned)
