"""Lion: the paper convention against a float32 NumPy transcription and the float64
reference, the deepspeed convention against the real DeepSpeedCPULion, validation, the
torch drop-in, and identical bits on every ISA and thread count."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import adamcore

F32 = np.float32


def paper_lion_float32(p, g, m, lr, beta1, beta2, wd):
    """docs/numerics.md's paper recipe, one NumPy float32 operation per rounding."""
    interp = F32(beta1) * m + F32(1.0 - beta1) * g
    if wd > 0:
        p = p * F32(1.0 - lr * wd)
    p = p - F32(lr) * np.sign(interp)
    m = F32(beta2) * m + F32(1.0 - beta2) * g
    return p.astype(F32), m.astype(F32)


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_paper_convention_matches_its_float32_transcription(wd, maximize):
    rng = np.random.default_rng(0)
    n = 1005
    p = rng.standard_normal(n).astype(F32)
    m = (0.1 * rng.standard_normal(n)).astype(F32)
    want_p, want_m = p.copy(), m.copy()
    for _ in range(200):
        g = rng.standard_normal(n).astype(F32)
        g[::50] = 0.0  # sign(0) = 0 once the momentum is zero too
        adamcore.lion_step(p, g, m, lr=1e-3, weight_decay=wd, maximize=maximize)
        want_p, want_m = paper_lion_float32(want_p, -g if maximize else g, want_m, 1e-3, 0.9,
                                            0.99, wd)
    assert p.tobytes() == want_p.tobytes() and m.tobytes() == want_m.tobytes()


def test_sign_of_zero_and_nan():
    p = np.ones(4, F32)
    m = np.array([0.0, -0.0, 0.0, 0.0], F32)  # c is -0 only when both terms are
    g = np.array([0.0, -0.0, np.nan, 1e-38], F32)  # 0.1 * 1e-38: a subnormal c
    adamcore.lion_step(p, g, m, lr=0.5, beta1=0.9, beta2=0.99)
    assert p[0] == 1.0 and p[1] == 1.0 and np.isnan(p[2]) and p[3] == 0.5
    p = np.ones(4, F32)
    m = np.array([0.0, -0.0, 0.0, 0.0], F32)
    adamcore.lion_step(p, g, m, lr=0.5, convention="deepspeed")
    # DeepSpeed: -copysign(lr, c), so +0 steps down, -0 up; a NaN steps by its sign bit.
    assert p[0] == 0.5 and p[1] == 1.5 and not np.isnan(p[2]) and p[3] == 0.5


def test_float64_paper_equals_the_reference():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(301)
    m = np.zeros(301)
    ref_p, ref_m = p.copy(), m.copy()
    for _ in range(100):
        g = rng.standard_normal(301)
        adamcore.lion_step(p, g, m, lr=1e-3, weight_decay=0.1)
        adamcore.reference.lion_step(ref_p, g, ref_m, lr=1e-3, weight_decay=0.1)
    assert p.tobytes() == ref_p.tobytes() and m.tobytes() == ref_m.tobytes()


def deepspeed_lion():
    pytest.importorskip("torch")
    lion = pytest.importorskip("deepspeed.ops.lion")
    try:
        import torch

        probe = torch.nn.Parameter(torch.zeros(1))
        lion.DeepSpeedCPULion([probe])
    except Exception as err:  # its C++ op is compiled on first use; no compiler: skip
        pytest.skip(f"DeepSpeedCPULion's op cannot be built here: {err}")
    return lion.DeepSpeedCPULion


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_deepspeed_convention_matches_deepspeed_cpu_lion(wd):
    import torch

    cpu_lion = deepspeed_lion()
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    n = 1005
    p = rng.standard_normal(n).astype(F32)
    theirs = torch.nn.Parameter(torch.tensor(p.copy()))
    opt = cpu_lion([theirs], lr=1e-3, betas=(0.9, 0.99), weight_decay=wd)
    m = np.zeros(n, F32)
    for _ in range(100):
        g = rng.standard_normal(n).astype(F32)
        g[::97] = 0.0
        theirs.grad = torch.tensor(g.copy())
        opt.step()
        adamcore.lion_step(p, g, m, lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=wd,
                           convention="deepspeed")
    their_m = opt.state[theirs]["exp_avg"].numpy()
    # DeepSpeed's AVX body covers whole vectors (8 floats here); its scalar remainder
    # evaluates the momentum without fused multiply-adds, so compare the body bitwise.
    body = n - n % 8
    assert p[:body].tobytes() == theirs.detach().numpy()[:body].tobytes()
    assert m[:body].tobytes() == their_m[:body].tobytes()
    np.testing.assert_allclose(m[body:], their_m[body:], rtol=1e-5, atol=1e-7)


def test_every_isa_and_thread_count_gives_the_same_bits():
    rng = np.random.default_rng(3)
    n = 100_003
    p0, g = rng.standard_normal(n).astype(F32), rng.standard_normal(n).astype(F32)
    m0 = rng.standard_normal(n).astype(F32)
    results = []
    threads_before, threshold_before = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    try:
        adamcore.set_parallel_threshold(1024)
        for isa, threads, convention in itertools.product(adamcore.available_isas(), [1, 2, 3],
                                                          ["paper", "deepspeed"]):
            p, m = p0.copy(), m0.copy()
            adamcore.set_num_threads(threads)
            with adamcore.use_isa(isa):
                adamcore.lion_step(p[1:], g[1:], m[1:], lr=1e-3, weight_decay=0.1,
                                   convention=convention)
            results.append((convention, p.tobytes() + m.tobytes()))
    finally:
        adamcore.set_num_threads(threads_before)
        adamcore.set_parallel_threshold(threshold_before)
    assert len({r for c, r in results if c == "paper"}) == 1
    assert len({r for c, r in results if c == "deepspeed"}) == 1


@pytest.mark.parametrize("kwargs, match, error", [
    (dict(lr=float("inf")), "lr", ValueError),
    (dict(beta1=1.5), "beta1", ValueError),
    (dict(beta2=-0.1), "beta2", ValueError),
    (dict(weight_decay=-1.0), "weight_decay", ValueError),
    (dict(convention="optax"), "convention", ValueError),
    (dict(state_dtype=np.float64), "exp_avg must have dtype float32", TypeError),
    (dict(all_dtype=np.float64, convention="deepspeed"), "deepspeed convention", TypeError),
])
def test_validation_names_the_argument_and_writes_nothing(kwargs, match, error):
    kwargs = dict(kwargs)
    dtype = kwargs.pop("all_dtype", F32)
    state_dtype = kwargs.pop("state_dtype", dtype)
    p, g, m = np.ones(9, dtype), np.ones(9, dtype), np.full(9, 2.0, state_dtype)
    with pytest.raises(error, match=match):
        adamcore.lion_step(p, g, m, **kwargs)
    assert (p == 1).all() and (m == 2).all()


def test_bfloat16_and_float16_round_the_float32_result():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(4)
    for dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
        p = rng.standard_normal(67).astype(dtype)
        g = rng.standard_normal(67).astype(dtype)
        m = (0.1 * rng.standard_normal(67)).astype(dtype)
        want_p, want_m = paper_lion_float32(p.astype(F32), g.astype(F32), m.astype(F32),
                                            1e-2, 0.9, 0.99, 0.1)
        adamcore.lion_step(p, g, m, lr=1e-2, weight_decay=0.1)
        assert p.tobytes() == want_p.astype(dtype).tobytes()
        assert m.tobytes() == want_m.astype(dtype).tobytes()


def test_torch_drop_in_matches_the_functional_step():
    torch = pytest.importorskip("torch")
    import adamcore.torch

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(37))
    p, m = w.detach().numpy().copy(), np.zeros(37, F32)
    opt = adamcore.torch.Lion([w], lr=1e-3, weight_decay=0.1)
    for _ in range(10):
        g = torch.randn(37)
        w.grad = g.clone()
        opt.step()
        adamcore.lion_step(p, g.numpy(), m, lr=1e-3, weight_decay=0.1)
    assert w.detach().numpy().tobytes() == p.tobytes()
    assert opt.state_dict()["state"][0]["exp_avg"].numpy().tobytes() == m.tobytes()


def test_numpy_lion_class_equals_the_functional_step_and_reloads():
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(5).astype(F32), rng.standard_normal((3, 7)).astype(F32)]
    copies = [p.copy() for p in params]
    states = [np.zeros_like(p) for p in params]
    opt = adamcore.Lion(params, lr=1e-2, weight_decay=0.1, convention="deepspeed")
    for step in range(6):
        grads = [rng.standard_normal(p.shape).astype(F32) for p in params]
        opt.step(grads)
        for p, g, m in zip(copies, grads, states):
            adamcore.lion_step(p, g, m, lr=1e-2, weight_decay=0.1, convention="deepspeed")
        if step == 2:
            saved = opt.state_dict()
            fresh = adamcore.Lion(params, lr=0.5)
            fresh.load_state_dict(saved)
            assert fresh.param_groups[0]["convention"] == "deepspeed"
            assert fresh.param_groups[0]["lr"] == 1e-2
            opt = fresh
    for p, c, m, i in zip(params, copies, states, range(2)):
        assert p.tobytes() == c.tobytes()
        assert opt.state[i]["exp_avg"].tobytes() == m.tobytes()
