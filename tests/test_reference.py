"""float32 kernels against the float64 reference of the same formulas."""

from __future__ import annotations

import numpy as np
import pytest

import adamcore
from adamcore import reference
from _util import f32

# Stated tolerances after 1,000 steps (lr 1e-3, unit-scale parameters and gradients):
# parameters within 5e-5 * max(1, |param|), exp_avg_sq / state_sum within 5e-5 relative,
# exp_avg within 1e-5 absolute (it is a sum of O(1) gradients with rounding each step).
PARAM_TOL = 5e-5
SECOND_MOMENT_RTOL = 5e-5
EXP_AVG_ATOL = 1e-5

CASES = {
    "adam": {},
    "adam-l2": {"weight_decay": 0.01},
    "adamw": {"weight_decay": 0.1, "decoupled": True},
    "amsgrad": {"amsgrad": True},
    "beta1-0.3": {"beta1": 0.3, "beta2": 0.99},
    "maximize-no-bias-correction": {"maximize": True, "bias_correction": False},
}


@pytest.mark.parametrize("case", list(CASES))
def test_adam_family_close_to_float64(isa, case, report):
    opts = dict(CASES[case])
    decoupled = opts.pop("decoupled", False)
    rng = np.random.default_rng(21)
    n, steps, lr = 2048, 1000, 1e-3
    p = f32(rng.standard_normal(n))
    m, v, vm = (np.zeros(n, np.float32) for _ in range(3))
    P, M, V, VM = (a.astype(np.float64) for a in (p, m, v, vm))
    ams = opts.get("amsgrad", False)
    ours = adamcore.adamw_step if decoupled else adamcore.adam_step
    theirs = reference.adamw_step if decoupled else reference.adam_step
    for step in range(1, steps + 1):
        g = f32(rng.standard_normal(n))
        ours(p, g, m, v, step=step, lr=lr, max_exp_avg_sq=vm if ams else None, **opts)
        theirs(P, g, M, V, step=step, lr=lr, max_exp_avg_sq=VM if ams else None, **opts)
    p_err = float((np.abs(p - P) / np.maximum(1.0, np.abs(P))).max())
    v_err = float((np.abs(v - V) / V).max())
    m_err = float(np.abs(m - M).max())
    assert p_err <= PARAM_TOL and v_err <= SECOND_MOMENT_RTOL and m_err <= EXP_AVG_ATOL, (
        p_err, v_err, m_err)
    if ams:  # the running maximum is state too: it must follow the reference's
        vm_err = float((np.abs(vm - VM) / VM).max())
        assert vm_err <= SECOND_MOMENT_RTOL and np.all(vm >= v), vm_err
    # The reference is a different computation: it must not be bit-identical by accident.
    assert p_err > 0
    if isa == adamcore.available_isas()[-1]:
        report(f"float64 reference [{case}]: after {steps} steps max relative param error "
               f"{p_err:.2e}, max exp_avg_sq relative error {v_err:.2e}, "
               f"max |exp_avg error| {m_err:.2e}")


def test_adagrad_close_to_float64(isa, report):
    rng = np.random.default_rng(22)
    n, steps = 2048, 1000
    p = f32(rng.standard_normal(n))
    s = np.full(n, 0.1, np.float32)
    P, S = p.astype(np.float64), s.astype(np.float64)
    for step in range(1, steps + 1):
        g = f32(rng.standard_normal(n))
        adamcore.adagrad_step(p, g, s, step=step, lr=0.01, lr_decay=1e-3, weight_decay=1e-3)
        reference.adagrad_step(P, g, S, step=step, lr=0.01, lr_decay=1e-3, weight_decay=1e-3)
    p_err = float((np.abs(p - P) / np.maximum(1.0, np.abs(P))).max())
    s_err = float((np.abs(s - S) / S).max())
    assert 0 < p_err <= PARAM_TOL and s_err <= SECOND_MOMENT_RTOL, (p_err, s_err)
    if isa == adamcore.available_isas()[-1]:
        report(f"float64 reference [adagrad]: after {steps} steps max relative param error "
               f"{p_err:.2e}, max state_sum relative error {s_err:.2e}")
