"""Γ diagnostics under every convention: each from the convention's own effective step.

For a step p <- p - a * m / den (docs/numerics.md, "Γ under the conventions"), Γ_i =
den_{t,i}/a_t - den_{t-1,i}/a_{t-1} and the effective learning rate is a_t/den_{t,i},
where den is where each peer puts eps and its bias correction:

- torch-fused: den = sqrt(v)/sqrt(bc2) + eps, a = lr/bc1;
- deepspeed:   den = fma(sqrt(v), 1/sqrt(bc2), eps), a = lr/bc1 (its float32 powers);
- optax:       den = sqrt(v/bc2 + eps_root) + eps (amsgrad: of its bias-corrected max),
               a = lr/bc1 (as lr times the float32 reciprocal 1/bc1);
- keras:       den = sqrt(v) + eps, a = lr*sqrt(bc2)/bc1 (its alpha);
- AdaGrad:     den = sqrt(s) + eps (keras: sqrt(s + eps)), a = lr.

The kernels' statistics must equal, exactly, a NumPy float32 recomputation from the state
before the step and the state that adamcore.conventions' emulation of the peer leaves
(which the kernels' own state must equal bit for bit), on every ISA with 1 and 2 threads.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamcore
from adamcore import conventions
from adamcore._sr_emulation import fma32
from _util import assert_same_bits, gamma_reductions, stats_key

F32 = np.float32
N = 1013  # not a multiple of 8 or 16: the tails take part
STEP = 5
BASE = dict(lr=2e-3, prev_lr=1.5e-3, beta1=0.9, beta2=0.99, eps=1e-8)

# name: (convention, options over BASE)
ADAM_CASES = {
    "torch-fused-amsgrad-tail8": ("torch-fused", dict(amsgrad=True, tail_width=8)),
    "deepspeed-adam": ("deepspeed", dict()),
    "deepspeed-adamw-tail8": ("deepspeed", dict(weight_decay=0.1, decoupled=True,
                                                tail_width=8)),
    "optax-adam": ("optax", dict()),
    "optax-adamw-eps_root-nesterov": ("optax", dict(weight_decay=0.1, decoupled=True,
                                                    eps_root=1e-10, nesterov=True)),
    "optax-amsgrad-eps_root": ("optax", dict(amsgrad=True, eps_root=1e-12)),
    "keras-adam": ("keras", dict()),
    "keras-adamw": ("keras", dict(weight_decay=0.1, decoupled=True)),
    "keras-amsgrad": ("keras", dict(amsgrad=True)),
}
ADAGRAD_CASES = {
    "deepspeed-wd-tail8": ("deepspeed", dict(lr=0.05, prev_lr=0.04, eps=1e-10,
                                             weight_decay=0.1, tail_width=8)),
    "keras": ("keras", dict(lr=0.05, prev_lr=0.08, eps=1e-7)),
}


def adam_state(amsgrad: bool, seed: int = 7):
    rng = np.random.default_rng(seed)
    state = {
        "param": rng.standard_normal(N).astype(F32),
        "exp_avg": (0.01 * rng.standard_normal(N)).astype(F32),
        # second moments spread over decades: v grows for some coordinates, shrinks for others
        "exp_avg_sq": (10.0 ** rng.uniform(-9, -1, N)).astype(F32),
    }
    if amsgrad:
        state["max_exp_avg_sq"] = (state["exp_avg_sq"] * rng.uniform(1, 3, N)).astype(F32)
    grad = (rng.standard_normal(N) * 10.0 ** rng.integers(-4, 1, N)).astype(F32)
    return state, grad


def run_adam_kernel(state, grad, convention, cfg, step=STEP):
    fn = adamcore.adamw_step if cfg.get("decoupled") else adamcore.adam_step
    return fn(state["param"], grad, state["exp_avg"], state["exp_avg_sq"], step=step,
              lr=cfg["lr"], prev_lr=cfg["prev_lr"], beta1=cfg["beta1"], beta2=cfg["beta2"],
              eps=cfg["eps"], weight_decay=cfg.get("weight_decay", 0.0),
              amsgrad=cfg.get("amsgrad", False), max_exp_avg_sq=state.get("max_exp_avg_sq"),
              convention=convention, tail_width=cfg.get("tail_width", 0),
              eps_root=cfg.get("eps_root", 0.0), nesterov=cfg.get("nesterov", False),
              diagnostics=True)


def adam_host_scalars(convention: str, t: int, lr: float, cfg):
    """(a, D): the step size and the bias-correction factor den uses, as each peer forms
    them in float32 (D: sqrt(bc2) for torch, 1/sqrt(bc2) for DeepSpeed, 1/bc2 for optax)."""
    b1, b2, one = cfg["beta1"], cfg["beta2"], F32(1.0)
    if convention == "torch-fused":
        return F32(lr / (1.0 - b1 ** t)), F32(math.sqrt(1.0 - b2 ** t))
    if convention == "deepspeed":  # beta^t as one float32 product per step
        p1 = p2 = one
        for _ in range(t):
            p1, p2 = F32(p1 * F32(b1)), F32(p2 * F32(b2))
        return F32(F32(lr) / F32(one - p1)), F32(one / np.sqrt(F32(one - p2)))
    if convention == "optax":
        r1 = F32(one / F32(one - conventions.float32_power(b1, t)))
        r2 = F32(one / F32(one - conventions.float32_power(b2, t)))
        return F32(F32(lr) * r1), r2
    assert convention == "keras"  # b^t by float32 pow (the C library's powf, as Keras's)
    sqrt_bc2 = np.sqrt(F32(one - np.power(F32(b2), F32(t))))
    return F32(F32(F32(lr) * sqrt_bc2) / F32(one - np.power(F32(b1), F32(t)))), None


def adam_denominator(convention: str, state, d, cfg):
    amsgrad = cfg.get("amsgrad", False)
    v = state["max_exp_avg_sq"] if amsgrad else state["exp_avg_sq"]
    eps, eps_root = F32(cfg["eps"]), F32(cfg.get("eps_root", 0.0))
    with np.errstate(all="ignore"):
        if convention == "torch-fused":
            return np.sqrt(v) / d + eps
        if convention == "deepspeed":
            return fma32(np.sqrt(v), d, eps)
        if convention == "optax":  # optax's max is of the bias-corrected v already
            shifted = v + eps_root if amsgrad else fma32(v, d, eps_root)
            return np.sqrt(shifted) + eps
        return np.sqrt(v) + eps


def adam_gamma(convention, before, after, cfg, step=STEP):
    a, d = adam_host_scalars(convention, step, cfg["lr"], cfg)
    a_prev, d_prev = adam_host_scalars(convention, step - 1, cfg["prev_lr"], cfg)
    den = adam_denominator(convention, after, d, cfg)
    den_old = adam_denominator(convention, before, d_prev, cfg)
    with np.errstate(all="ignore"):
        gamma = (den / a - den_old / a_prev) + F32(0.0)
        lr_eff = a / den
    assert gamma.dtype == F32 and lr_eff.dtype == F32
    return gamma, lr_eff


def emulate_adam(convention, state, grad, cfg, step=STEP):
    keys = ("amsgrad", "weight_decay", "decoupled", "eps_root", "nesterov")
    tail = cfg.get("tail_width") or None
    return conventions.adam_step(convention, state, grad, step=step, lr=cfg["lr"],
                                 beta1=cfg["beta1"], beta2=cfg["beta2"], eps=cfg["eps"],
                                 tail_width=tail, **{k: cfg[k] for k in keys if k in cfg})


def every_isa_and_thread_count(run):
    """run() on every ISA with 1 and 2 threads; returns {(isa, threads): result}."""
    results = {}
    for isa in adamcore.available_isas():
        for threads in (1, 2):
            adamcore.set_num_threads(threads)
            with adamcore.use_isa(isa):
                results[(isa, threads)] = run()
    return results


@pytest.mark.parametrize("name", sorted(ADAM_CASES))
def test_adam_gamma_under_each_convention(name, split_threads):
    convention, options = ADAM_CASES[name]
    cfg = dict(BASE, **options)
    initial, grad = adam_state(cfg.get("amsgrad", False))
    emulated = emulate_adam(convention, initial, grad, cfg)
    gamma, lr_eff = adam_gamma(convention, initial, emulated, cfg)
    expected = gamma_reductions(gamma, lr_eff, True)

    def run():
        state = {k: v.copy() for k, v in initial.items()}
        stats = run_adam_kernel(state, grad.copy(), convention, cfg)
        return stats, state

    for where, (stats, state) in every_isa_and_thread_count(run).items():
        for key in emulated:  # the kernels' step is the peer's ...
            assert_same_bits(state[key], emulated[key], f"{name} {key} on {where}")
        # ... and so is their Γ, exactly
        assert stats.as_dict() == expected, f"{name} on {where}"
    # Both signs occur (else the counts prove little); AMSGrad's max only grows.
    assert 0 < expected["negative"] < N or cfg.get("amsgrad")
    assert expected["lr_min"] < expected["lr_max"]


@pytest.mark.parametrize("convention", ["deepspeed", "optax", "keras"])
def test_each_convention_places_eps_in_its_own_gamma(convention):
    """The conventions' Γ differ from torch-fused's on the same inputs (so each is its own,
    not the canonical one relabelled), and Γ is undefined at step 1 as for torch-fused."""
    cfg = dict(BASE, eps=1e-4)  # an eps that matters for most coordinates
    initial, grad = adam_state(False, seed=3)
    stats = {}
    for c in ("torch-fused", convention):
        state = {k: v.copy() for k, v in initial.items()}
        stats[c] = run_adam_kernel(state, grad.copy(), c, cfg)
    assert stats_key(stats[convention]) != stats_key(stats["torch-fused"])
    fresh = {k: np.zeros_like(v) if k != "param" else v.copy() for k, v in initial.items()}
    first = run_adam_kernel(fresh, grad.copy(), convention, cfg, step=1)
    assert first.defined is False and math.isnan(first.gamma_min) and first.negative == 0
    assert 0 < first.lr_min <= first.lr_max


@pytest.mark.parametrize("name", sorted(ADAGRAD_CASES))
def test_adagrad_gamma_under_each_convention(name, split_threads):
    convention, cfg = ADAGRAD_CASES[name]
    rng = np.random.default_rng(13)
    initial = {"param": rng.standard_normal(N).astype(F32),
               "state_sum": (10.0 ** rng.uniform(-6, 0, N)).astype(F32)}
    grad = (rng.standard_normal(N) * 10.0 ** rng.integers(-3, 1, N)).astype(F32)
    emulated = conventions.adagrad_step(convention, initial, grad, step=STEP, lr=cfg["lr"],
                                        eps=cfg["eps"], weight_decay=cfg.get("weight_decay", 0.0),
                                        tail_width=cfg.get("tail_width"))
    eps, a, a_prev = F32(cfg["eps"]), F32(cfg["lr"]), F32(cfg["prev_lr"])
    with np.errstate(all="ignore"):
        if convention == "keras":  # eps under the square root
            den, den_old = np.sqrt(emulated["state_sum"] + eps), np.sqrt(initial["state_sum"] + eps)
        else:
            den, den_old = np.sqrt(emulated["state_sum"]) + eps, np.sqrt(initial["state_sum"]) + eps
        gamma = (den / a - den_old / a_prev) + F32(0.0)
    expected = gamma_reductions(gamma, a / den, True)

    def run():
        state = {k: v.copy() for k, v in initial.items()}
        stats = adamcore.adagrad_step(state["param"], grad.copy(), state["state_sum"], step=STEP,
                                      lr=cfg["lr"], prev_lr=cfg["prev_lr"], eps=cfg["eps"],
                                      weight_decay=cfg.get("weight_decay", 0.0),
                                      convention=convention, tail_width=cfg.get("tail_width", 0),
                                      diagnostics=True)
        return stats, state

    for where, (stats, state) in every_isa_and_thread_count(run).items():
        for key in emulated:
            assert_same_bits(state[key], emulated[key], f"{name} {key} on {where}")
        assert stats.as_dict() == expected, f"{name} on {where}"
    # s only grows: Γ >= 0 everywhere when the lr falls (keras case); some < 0 when it
    # rises (deepspeed case).
    if cfg["lr"] < cfg["prev_lr"]:
        assert expected["negative"] == 0
    else:
        assert expected["negative"] > 0


def test_optimizer_classes_report_gamma_under_a_convention():
    """adamcore.Adam(convention=...).step(diagnostics=True) returns the kernel's Γ."""
    cfg = dict(BASE, prev_lr=BASE["lr"])
    initial, grad = adam_state(False, seed=5)
    param = initial["param"].copy()
    opt = adamcore.Adam([param], lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                        eps=cfg["eps"], convention="keras")
    state = {k: v.copy() if k == "param" else np.zeros_like(v) for k, v in initial.items()}
    results = []
    for step in (1, 2):
        (got,) = opt.step([grad], diagnostics=True)
        want = run_adam_kernel(state, grad.copy(), "keras", cfg, step=step)
        results.append(got)
        assert stats_key(got) == stats_key(want)
    assert results[0].defined is False and results[1].defined is True
