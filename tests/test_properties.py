"""Hypothesis: random sizes, offsets and hyperparameters give the same bits on every ISA."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import adamcore
from _util import assert_every_isa_matches_scalar, f32

hyper = st.fixed_dictionaries({
    "lr": st.floats(0, 1, allow_subnormal=False),
    "beta1": st.floats(0, 0.999),
    "beta2": st.floats(0, 0.9999),
    "eps": st.sampled_from([0.0, 1e-12, 1e-8, 1e-3]),
    "weight_decay": st.sampled_from([0.0, 1e-4, 0.1, 2.0]),
    "maximize": st.booleans(),
    "bias_correction": st.booleans(),
    "amsgrad": st.booleans(),
})


def _run(n, offset, seed, opts, decoupled, steps):
    rng = np.random.default_rng(seed)
    total = n + offset
    scale = 10.0 ** rng.uniform(-20, 20)
    p = f32(rng.standard_normal(total) * scale)
    m = f32(rng.standard_normal(total) * scale * 1e-2)
    v = f32((rng.standard_normal(total) * scale * 1e-2) ** 2)
    vm = v.copy()
    m0 = m.copy()
    fn = adamcore.adamw_step if decoupled else adamcore.adam_step
    for step in range(1, steps + 1):
        g = f32(rng.standard_normal(total) * scale * 10.0 ** rng.uniform(-5, 5))
        fn(p[offset:], g[offset:], m[offset:], v[offset:], step=step,
           max_exp_avg_sq=vm[offset:] if opts["amsgrad"] else None, **opts)
    return p, m, v, vm, m0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), offset=st.integers(0, 17), seed=st.integers(0, 2**32 - 1),
       opts=hyper, decoupled=st.booleans(), steps=st.integers(1, 4))
def test_adam_family_same_bits_on_every_isa(n, offset, seed, opts, decoupled, steps):
    assert_every_isa_matches_scalar(lambda: _run(n, offset, seed, opts, decoupled, steps),
                                    "adam family")
    # Agreement alone would also hold for kernels that wrote nothing: the first moment
    # moves towards the gradient on every step (1 - beta1 >= 0.001, g never equals m).
    _, m, _, _, m0 = _run(n, offset, seed, opts, decoupled, steps)
    assert m[:offset].tobytes() == m0[:offset].tobytes()  # outside the views: untouched
    if n:
        assert m[offset:].tobytes() != m0[offset:].tobytes()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), offset=st.integers(0, 17), seed=st.integers(0, 2**32 - 1),
       lr=st.floats(0, 1), lr_decay=st.floats(0, 1), weight_decay=st.sampled_from([0.0, 0.5]),
       eps=st.sampled_from([0.0, 1e-10, 1e-3]), maximize=st.booleans())
def test_adagrad_same_bits_on_every_isa(n, offset, seed, lr, lr_decay, weight_decay, eps,
                                        maximize):
    def run():
        rng = np.random.default_rng(seed)
        p = f32(rng.standard_normal(n + offset) * 10.0 ** rng.uniform(-10, 10))
        s = f32(rng.random(n + offset))
        for step in range(1, 4):
            g = f32(rng.standard_normal(n + offset) * 10.0 ** rng.uniform(-10, 10))
            adamcore.adagrad_step(p[offset:], g[offset:], s[offset:], step=step, lr=lr,
                                  lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                  maximize=maximize)
        return p, s
    assert_every_isa_matches_scalar(run, "adagrad")
