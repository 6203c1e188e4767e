"""convention= and tail_width=: each peer's arithmetic reproduced bit for bit against the
real peer (torch fused and DeepSpeed's CPU Adam/AdaGrad, scalar tails included; optax under
jax.jit; Keras 3 on the jax backend), and the same bits on every ISA and thread count."""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest

import adamcore

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")

STEPS = 100

# A tail and a few vectors, and a million elements (threads split it; marked large, so
# the sanitizer stage of CI, where it costs minutes, can leave it out).
PEER_SIZES = [37, pytest.param(1_000_003, marks=pytest.mark.large)]


def _bits(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)


def _assert_same_bits(ours, theirs, what: str) -> None:
    a, b = _bits(ours), _bits(theirs)
    diff = np.flatnonzero(a != b)
    assert diff.size == 0, (f"{what}: {diff.size} of {a.size} elements differ, first at "
                            f"{diff[0]}: {a.view(np.float32)[diff[0]]!r} vs {b.view(np.float32)[diff[0]]!r}")


def _grads(rng, n):
    # A spread of magnitudes, so the products and sums round in every way.
    return (rng.standard_normal(n) * np.exp(rng.uniform(-6, 2, n))).astype(np.float32)


# ------------------------------------------------------------------ torch fused, tail included

TORCH_CASES = {
    "adam": dict(weight_decay=0.0, amsgrad=False, maximize=False),
    "adam-l2": dict(weight_decay=0.1, amsgrad=False, maximize=False),
    "adamw": dict(weight_decay=0.1, amsgrad=False, maximize=False, decoupled=True),
    "amsgrad": dict(weight_decay=0.0, amsgrad=True, maximize=False),
    "adamw-amsgrad-maximize": dict(weight_decay=0.05, amsgrad=True, maximize=True, decoupled=True),
}


def _run_torch_adam(n, case, steps, tail_width, seed=0):
    """Steps torch.optim.Adam/AdamW(fused=True) and adamcore side by side; returns the
    params, exp_avg_sq and the per-step count of differing param elements."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(np.float32)
    decoupled = case.get("decoupled", False)
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=case["weight_decay"],
              amsgrad=case["amsgrad"], maximize=case["maximize"], fused=True)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)([tp], **kw)
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    vmax = np.zeros(n, np.float32) if case["amsgrad"] else None
    step_fn = adamcore.adamw_step if decoupled else adamcore.adam_step
    for t in range(1, steps + 1):
        g = _grads(rng, n)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        step_fn(p, g, m, v, step=t, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=case["weight_decay"], amsgrad=case["amsgrad"], max_exp_avg_sq=vmax,
                maximize=case["maximize"], convention="torch-fused", tail_width=tail_width)
    state = opt.state[tp]
    return p, v, tp.detach().numpy(), state["exp_avg_sq"].numpy(), m, state["exp_avg"].numpy()


@pytest.mark.parametrize("n", PEER_SIZES)
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_fused_with_tail_is_bitwise_on_every_element(n, case):
    from adamcore.torch import torch_tail_width
    width = torch_tail_width()
    assert n % width != 0  # the sizes have a scalar tail on every width
    steps = STEPS if n < 1000 else 20 if case != "adam" else STEPS
    p, v, tp, tv, m, tm = _run_torch_adam(n, TORCH_CASES[case], steps, width)
    _assert_same_bits(p, tp, "param")
    _assert_same_bits(m, tm, "exp_avg")
    _assert_same_bits(v, tv, "exp_avg_sq")


def test_default_without_tail_matches_the_body_and_differs_in_the_tail(report):
    from adamcore.torch import torch_tail_width
    width = torch_tail_width()
    n = 4096 + 13
    body = n - n % width
    p, v, tp, tv, _, _ = _run_torch_adam(n, TORCH_CASES["adam"], STEPS, 0)
    _assert_same_bits(p[:body], tp[:body], "param body")
    _assert_same_bits(v[:body], tv[:body], "exp_avg_sq body")
    # The vector recipe in torch's scalar tail: a different exp_avg_sq rounding somewhere.
    tail_diff = int(np.count_nonzero(_bits(v[body:]) != _bits(tv[body:])))
    report(f"torch-fused without tail_width: {tail_diff} of {n - body} tail exp_avg_sq "
           f"elements differ from torch's scalar tail after {STEPS} steps (width {width})")
    assert tail_diff > 0


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_torch_fused_adagrad_with_tail_is_bitwise(weight_decay, maximize):
    torch = pytest.importorskip("torch")
    from adamcore.torch import torch_tail_width
    n = 1037
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(n).astype(np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adagrad([tp], lr=0.05, lr_decay=0.01, weight_decay=weight_decay,
                              initial_accumulator_value=0.1, maximize=maximize, fused=True)
    p, s = p0.copy(), np.full(n, 0.1, np.float32)
    for t in range(1, STEPS + 1):
        g = _grads(rng, n)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        adamcore.adagrad_step(p, g, s, step=t, lr=0.05, lr_decay=0.01, weight_decay=weight_decay,
                              maximize=maximize, tail_width=torch_tail_width())
    _assert_same_bits(p, tp.detach().numpy(), "param")
    _assert_same_bits(s, opt.state[tp]["sum"].numpy(), "sum")


def test_torch_tail_width_reports_torchs_vector_width():
    torch = pytest.importorskip("torch")
    from adamcore.torch import torch_tail_width
    capability = torch.backends.cpu.get_cpu_capability()
    assert torch_tail_width() == (16 if capability.startswith("AVX512") else 8)


# ------------------------------------------------------------------ DeepSpeed CPU Adam / AdaGrad

def _deepspeed_or_skip(kind):
    pytest.importorskip("deepspeed")
    try:
        if kind == "adam":
            from deepspeed.ops.adam import DeepSpeedCPUAdam as cls
        else:
            from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad as cls
        torch = pytest.importorskip("torch")
        probe = torch.nn.Parameter(torch.zeros(4))
        cls([probe])  # JIT-builds (or loads) the cpu_adam / cpu_adagrad op
    except Exception as err:  # the op could not build here: nothing to compare with
        pytest.skip(f"DeepSpeed's CPU {kind} op is unavailable: {err}")
    return cls


@functools.lru_cache(maxsize=None)
def _deepspeed_tail_width():
    # DeepSpeed's SIMD_WIDTH for float32: its op builder compiles with __AVX512__ or __AVX256__.
    # (Cached: each simd_width() probes the CPU in a child process, about 1.4 s here.)
    from deepspeed.ops.op_builder import CPUAdamBuilder
    return 16 if "AVX512" in CPUAdamBuilder().simd_width() else 8


# 1000 + 37: DeepSpeed's AVX body (64 wide), its 4- and 1-span passes and its scalar loop
# (the last n % SIMD_WIDTH elements).
DS_SIZE = 1037


def _start(torch, seed, n=DS_SIZE):
    """A generator, the start params as a NumPy array and as a torch Parameter (a copy)."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(np.float32)
    return rng, p0, torch.nn.Parameter(torch.from_numpy(p0.copy()))


@pytest.mark.parametrize("adamw_mode", [False, True])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_deepspeed_adam_is_bitwise(adamw_mode, bias_correction):
    torch = pytest.importorskip("torch")
    cls = _deepspeed_or_skip("adam")
    n = DS_SIZE
    rng, p0, tp = _start(torch, 11)
    wd = 0.05
    opt = cls([tp], lr=3e-3, bias_correction=bias_correction, betas=(0.9, 0.99), eps=1e-7,
              weight_decay=wd, adamw_mode=adamw_mode, fp32_optimizer_states=True)
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    step_fn = adamcore.adamw_step if adamw_mode else adamcore.adam_step
    width = _deepspeed_tail_width()
    for t in range(1, STEPS + 1):
        g = _grads(rng, n)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        step_fn(p, g, m, v, step=t, lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-7, weight_decay=wd,
                bias_correction=bias_correction, convention="deepspeed", tail_width=width)
        if t in (1, 2, STEPS):
            _assert_same_bits(p, tp.detach().numpy(), f"param at step {t}")
    state = opt.state[tp]
    _assert_same_bits(m, state["exp_avg"].numpy(), "exp_avg")
    _assert_same_bits(v, state["exp_avg_sq"].numpy(), "exp_avg_sq")


# One case (weight decay covers the plain path's operations too).
@pytest.mark.parametrize("weight_decay", [0.1])
def test_deepspeed_adagrad_is_bitwise(weight_decay):
    torch = pytest.importorskip("torch")
    cls = _deepspeed_or_skip("adagrad")
    n = DS_SIZE
    rng, p0, tp = _start(torch, 12)
    opt = cls([tp], lr=2e-2, eps=1e-10, weight_decay=weight_decay, fp32_optimizer_states=True)
    p, s = p0.copy(), np.zeros(n, np.float32)
    width = _deepspeed_tail_width()
    for t in range(1, STEPS + 1):
        g = _grads(rng, n)
        tp.grad = torch.from_numpy(g.copy())  # (its scalar loop overwrites the grad)
        opt.step()
        adamcore.adagrad_step(p, g, s, step=t, lr=2e-2, eps=1e-10, weight_decay=weight_decay,
                              convention="deepspeed", tail_width=width)
    _assert_same_bits(p, tp.detach().numpy(), "param")
    _assert_same_bits(s, opt.state[tp]["exp_avg_sq"].numpy(), "exp_avg_sq")


# ------------------------------------------------------------------ every ISA and thread count

CONVENTION_RUNS = [
    ("torch-fused", 8), ("torch-fused", 16), ("deepspeed", 0), ("deepspeed", 8),
]


def _adam_run(n, convention, tail_width, amsgrad, decoupled):
    rng = np.random.default_rng(5)
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    vmax = np.zeros(n, np.float32) if amsgrad else None
    fn = adamcore.adamw_step if decoupled else adamcore.adam_step
    for t in range(1, 11):
        fn(p, _grads(rng, n), m, v, step=t, lr=1e-2, weight_decay=0.05, amsgrad=amsgrad,
           max_exp_avg_sq=vmax, convention=convention, tail_width=tail_width)
    s = np.full(n, 0.1, np.float32)
    q = p.copy()
    for t in range(1, 11):
        adamcore.adagrad_step(q, _grads(rng, n), s, step=t, lr=1e-2, weight_decay=0.05,
                              convention=convention, tail_width=tail_width)
    return [p, m, v, q, s] + ([vmax] if amsgrad else [])


@pytest.mark.parametrize("convention,tail_width", CONVENTION_RUNS)
def test_every_isa_and_thread_count_gives_the_same_bits(convention, tail_width):
    n = 20_000 + 29  # several 4K parts (threshold 1024), a tail, an unaligned end
    amsgrad_options = [False] if convention == "deepspeed" else [False, True]
    saved_threads, saved_threshold = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    try:
        for amsgrad in amsgrad_options:
            for decoupled in (False, True):
                reference = None
                for isa in adamcore.available_isas():
                    for threads in (1, 2, 3):
                        adamcore.set_num_threads(threads)
                        adamcore.set_parallel_threshold(1024)
                        with adamcore.use_isa(isa):
                            got = _adam_run(n, convention, tail_width, amsgrad, decoupled)
                        if reference is None:
                            reference = got
                            continue
                        for name, a, b in zip("p m v q s vmax".split(), got, reference):
                            _assert_same_bits(a, b, f"{name} on {isa}, {threads} threads")
    finally:
        adamcore.set_num_threads(saved_threads)
        adamcore.set_parallel_threshold(saved_threshold)


def test_conventions_differ_from_each_other():
    # The recipes are distinct arithmetic: a convention that fell back to the default
    # would pass the cross-ISA test trivially.
    a = _adam_run(999, "torch-fused", 0, False, False)
    b = _adam_run(999, "deepspeed", 0, False, False)
    c = _adam_run(999, "torch-fused", 8, False, False)
    assert np.any(_bits(a[0]) != _bits(b[0]))
    assert np.any(_bits(a[2][-(999 % 8):]) != _bits(c[2][-(999 % 8):]))
    assert np.array_equal(_bits(a[2][:992]), _bits(c[2][:992]))
    d = _adam_run(999, "deepspeed", 8, False, False)
    assert np.any(_bits(b[1][992:]) != _bits(d[1][992:]))
    assert np.array_equal(_bits(b[1][:992]), _bits(d[1][:992]))


# ------------------------------------------------------------------ errors, nothing written

def _adam_buffers(n=40, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) for _ in range(4)]


@pytest.mark.parametrize("kwargs,match", [
    (dict(convention="tensorflow"), "convention"),
    (dict(convention="optax", maximize=True), "maximize"),
    (dict(convention="optax", weight_decay=0.1), "weight_decay"),
    (dict(convention="keras", bias_correction=False), "bias_correction"),
    (dict(convention="keras", nesterov=True), "nesterov"),
    (dict(eps_root=1e-8), "eps_root"),
    (dict(convention="optax", eps_root=-1.0), "eps_root"),
    (dict(convention="optax", nesterov=True, amsgrad=True), "nesterov"),
    (dict(convention="keras", tail_width=8), "tail_width"),
    (dict(convention=3), "convention"),
    (dict(tail_width=7), "tail_width"),
    (dict(tail_width=8.0), "tail_width"),
    (dict(convention="deepspeed", amsgrad=True), "amsgrad"),
])
def test_bad_convention_arguments_raise_and_write_nothing(kwargs, match):
    p, g, m, v = _adam_buffers()
    before = [x.copy() for x in (p, g, m, v)]
    if kwargs.get("amsgrad"):
        kwargs = dict(kwargs, max_exp_avg_sq=np.zeros_like(p))
    with pytest.raises((TypeError, ValueError), match=match):
        adamcore.adam_step(p, g, m, v, step=1, **kwargs)
    for x, y in zip((p, g, m, v), before):
        assert np.array_equal(_bits(x), _bits(y))


def test_non_default_convention_needs_the_float32_layout():
    p, g, m, v = _adam_buffers(dtype=np.float64)
    before = p.copy()
    with pytest.raises(ValueError, match="convention='deepspeed' needs float32"):
        adamcore.adam_step(p, g, m, v, step=1, convention="deepspeed")
    with pytest.raises(ValueError, match="tail_width"):
        adamcore.adam_step(p, g, m, v, step=1, tail_width=8)
    assert np.array_equal(p, before)
    adamcore.adam_step(p, g, m, v, step=1, convention="torch-fused")  # the default: any layout


def test_deepspeed_adagrad_rejects_lr_decay():
    p, g, s, _ = _adam_buffers()
    with pytest.raises(ValueError, match="lr_decay"):
        adamcore.adagrad_step(p, g, s, step=1, lr_decay=0.1, convention="deepspeed")


# ------------------------------------------------------------------ optimizer classes

def test_optimizer_classes_take_a_convention_and_keep_it_in_state_dict():
    from adamcore.optim import Adagrad, AdamW
    rng = np.random.default_rng(2)
    n = 333
    w = rng.standard_normal(n).astype(np.float32)
    p, m, v = w.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    opt = AdamW([w], lr=1e-2, weight_decay=0.1, convention="deepspeed")
    for t in range(1, 6):
        g = _grads(rng, n)
        opt.step([g])
        adamcore.adamw_step(p, g, m, v, step=t, lr=1e-2, weight_decay=0.1, convention="deepspeed")
    _assert_same_bits(w, p, "AdamW(convention='deepspeed')")
    group = opt.state_dict()["param_groups"][0]
    assert group["convention"] == "deepspeed" and group["tail_width"] == 0
    with pytest.raises(ValueError, match="convention"):
        Adagrad([np.zeros(3, np.float32)], convention="keras-ish")


def test_torch_adapter_takes_a_convention():
    torch = pytest.importorskip("torch")
    from adamcore.torch import Adam, torch_tail_width
    rng = np.random.default_rng(4)
    n = 1000 + 5
    p0 = rng.standard_normal(n).astype(np.float32)
    ours = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    theirs = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    a = Adam([ours], lr=1e-2, tail_width=torch_tail_width())
    b = torch.optim.Adam([theirs], lr=1e-2, fused=True)
    for _ in range(STEPS):
        g = torch.from_numpy(_grads(rng, n))
        ours.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    _assert_same_bits(ours.detach().numpy(), theirs.detach().numpy(), "adamcore.torch.Adam")
    assert a.state_dict()["param_groups"][0]["convention"] == "torch-fused"


# ------------------------------------------------------------------ optax and keras

def _isas_and_threads():
    """(isa, threads) for every ISA this CPU runs, one and two threads (small parts, so
    two threads split even the mid-size tensors)."""
    return [(isa, threads) for isa in adamcore.available_isas() for threads in (1, 2)]


def _run_ours_everywhere(run):
    """run() on every ISA and thread count; returns the list of results."""
    saved_threads, saved_threshold = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    results = []
    try:
        for isa, threads in _isas_and_threads():
            adamcore.set_num_threads(threads)
            adamcore.set_parallel_threshold(1024)
            with adamcore.use_isa(isa):
                results.append(((isa, threads), run()))
    finally:
        adamcore.set_num_threads(saved_threads)
        adamcore.set_parallel_threshold(saved_threshold)
    return results


def _adam_ours(p0, grads, *, decoupled, amsgrad, **kw):
    """adamcore's Adam/AdamW over the given grads from p0 and zero state."""
    n = p0.size
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    vmax = np.zeros(n, np.float32) if amsgrad else None
    fn = adamcore.adamw_step if decoupled else adamcore.adam_step
    for t, g in enumerate(grads, start=1):
        fn(p, g, m, v, step=t, amsgrad=amsgrad, max_exp_avg_sq=vmax, **kw)
    return {"param": p, "exp_avg": m, "exp_avg_sq": v, "max_exp_avg_sq": vmax}


def _compare_everywhere(run, theirs, what):
    for (isa, threads), ours in _run_ours_everywhere(run):
        for name, value in theirs.items():
            _assert_same_bits(ours[name], value, f"{what} {name} on {isa}, {threads} threads")


OPTAX_CASES = {
    "adam": dict(),
    "adam-eps_root": dict(eps_root=1e-12),
    "adam-nesterov": dict(nesterov=True),
    "adamw": dict(weight_decay=0.1),
    "adamw-nesterov-eps_root": dict(weight_decay=0.1, nesterov=True, eps_root=1e-10),
    "amsgrad": dict(amsgrad=True),
    "amsgrad-eps_root": dict(amsgrad=True, eps_root=1e-12),
}


def _optax_peer(p0, grads, case, lr, b1, b2, eps):
    """optax 0.2.8's adam/adamw/amsgrad, one jax.jit-compiled step (update and
    apply_updates), float32 on CPU; returns its params and moments."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jnp = jax.numpy
    eps_root = case.get("eps_root", 0.0)
    if case.get("amsgrad"):
        tx = optax.amsgrad(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    elif "weight_decay" in case:
        tx = optax.adamw(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                         weight_decay=case["weight_decay"], nesterov=case.get("nesterov", False))
    else:
        tx = optax.adam(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                        nesterov=case.get("nesterov", False))
    cpu = jax.devices("cpu")[0]

    @jax.jit
    def step(params, state, grad):
        updates, state = tx.update(grad, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.device_put(jnp.asarray(p0), cpu)
    state = tx.init(params)
    for g in grads:
        params, state = step(params, state, jax.device_put(jnp.asarray(g), cpu))
    moments = state[0]  # ScaleByAdamState / ScaleByAmsgradState
    out = {"param": np.asarray(params), "exp_avg": np.asarray(moments.mu),
           "exp_avg_sq": np.asarray(moments.nu)}
    if case.get("amsgrad"):
        out["max_exp_avg_sq"] = np.asarray(moments.nu_max)  # optax maxes the bias-corrected v
    assert all(x.dtype == np.float32 for x in out.values())
    return out


def _peer_grads(n, steps, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(np.float32), [_grads(rng, n) for _ in range(steps)]


@pytest.mark.parametrize("n", PEER_SIZES)
@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_optax_is_bitwise_on_every_element(n, case):
    kw = OPTAX_CASES[case]
    p0, grads = _peer_grads(n, STEPS, seed=11)
    hyper = dict(lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    theirs = _optax_peer(p0, grads, kw, hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"])
    decoupled = "weight_decay" in kw
    ours = dict(hyper, weight_decay=kw.get("weight_decay", 0.0), eps_root=kw.get("eps_root", 0.0),
                nesterov=kw.get("nesterov", False), convention="optax")
    _compare_everywhere(lambda: _adam_ours(p0, grads, decoupled=decoupled,
                                           amsgrad=kw.get("amsgrad", False), **ours),
                        theirs, f"optax {case}")


OPTAX_CLASS_CASES = {
    "adam-eps_root-nesterov": dict(eps_root=1e-12, nesterov=True),
    "adamw-eps_root": dict(weight_decay=0.1, eps_root=1e-10),
    "amsgrad-eps_root": dict(amsgrad=True, eps_root=1e-12),
}


def _class_steps(make, step, p0, grads):
    """Steps optimizer ``make(param)`` over ``grads`` from ``p0``; returns its param and
    state dict (``step(opt, param, g)`` runs one step)."""
    param = p0.copy()
    opt = make(param)
    for g in grads:
        step(opt, param, g)
    return param, opt.state_dict()


@pytest.mark.parametrize("api", ["numpy", "torch"])
@pytest.mark.parametrize("case", sorted(OPTAX_CLASS_CASES))
def test_optimizer_classes_with_eps_root_and_nesterov_match_optax(api, case):
    """eps_root= and nesterov= on adamcore.Adam/AdamW and adamcore.torch.Adam/AdamW:
    bitwise optax (every ISA, 1 and 2 threads), kept in param_groups and state dicts."""
    kw = OPTAX_CLASS_CASES[case]
    p0, grads = _peer_grads(37, 30, seed=5)
    lr, b1, b2, eps = 3e-3, 0.9, 0.999, 1e-8
    theirs = _optax_peer(p0, grads, kw, lr, b1, b2, eps)
    options = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=kw.get("weight_decay", 0.0),
                   amsgrad=kw.get("amsgrad", False), convention="optax",
                   eps_root=kw["eps_root"], nesterov=kw.get("nesterov", False))
    if api == "numpy":
        cls = adamcore.AdamW if "weight_decay" in kw else adamcore.Adam
        make = lambda p: cls([p], **options)  # noqa: E731

        def step(opt, p, g):
            opt.step([g])

        def as_array(x):
            return x
    else:
        torch = pytest.importorskip("torch")
        import adamcore.torch as ac_torch
        cls = ac_torch.AdamW if "weight_decay" in kw else ac_torch.Adam

        def make(p):
            return cls([torch.nn.Parameter(torch.from_numpy(p))], **options)

        def step(opt, p, g):
            opt.param_groups[0]["params"][0].grad = torch.from_numpy(g.copy())
            opt.step()

        def as_array(x):
            return x.numpy()

    results = _run_ours_everywhere(lambda: _class_steps(make, step, p0, grads))
    for (isa, threads), (param, state_dict) in results:
        where = f"{api} {case} on {isa}, {threads} threads"
        _assert_same_bits(param, theirs["param"], where)
        for key, value in theirs.items():
            if key != "param":
                _assert_same_bits(as_array(state_dict["state"][0][key]), value, f"{where} {key}")
        group = state_dict["param_groups"][0]
        assert (group["eps_root"], group["nesterov"]) == (kw["eps_root"], kw.get("nesterov", False))

    if api == "numpy":  # a fresh optimizer loading the state dict takes both from it
        fresh = cls([p0.copy()], lr=lr, convention="optax")
        fresh.load_state_dict(results[0][1][1])
        group = fresh.param_groups[0]
        assert (group["eps_root"], group["nesterov"]) == (kw["eps_root"], kw.get("nesterov", False))


@pytest.mark.parametrize("api", ["numpy", "torch"])
@pytest.mark.parametrize("convention", ["torch-fused", "deepspeed", "keras"])
@pytest.mark.parametrize("option, value", [("eps_root", 1e-8), ("nesterov", True)])
def test_eps_root_and_nesterov_are_refused_under_other_conventions(api, convention, option,
                                                                   value):
    if api == "torch":
        torch = pytest.importorskip("torch")
        import adamcore.torch as ac_torch
        param = torch.nn.Parameter(torch.ones(5))
        cls, params = ac_torch.Adam, [param]
    else:
        param = np.ones(5, np.float32)
        cls, params = adamcore.Adam, [param]
    with pytest.raises(ValueError, match=option):
        cls(params, convention=convention, **{option: value})
    # Set on a live group: the step refuses it before writing anything.
    opt = cls(params, convention=convention)
    opt.param_groups[0][option] = value
    if api == "torch":
        param.grad = torch.ones(5)
        with pytest.raises(ValueError, match=option):
            opt.step()
        assert torch.equal(param.detach(), torch.ones(5)) and not opt.state.get(param)
    else:
        with pytest.raises(ValueError, match=option):
            opt.step([np.ones(5, np.float32)])
        assert (param == 1).all() and not any(opt.state.values())


def test_state_dicts_without_eps_root_or_nesterov_still_load():
    """State dicts saved before eps_root/nesterov existed: the defaults (0, False)."""
    param = np.ones(5, np.float32)
    opt = adamcore.Adam([param], lr=1e-2)
    opt.step([np.full(5, 0.5, np.float32)])
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["eps_root"], group["nesterov"]
    fresh = adamcore.Adam([param.copy()], lr=1e-2)
    fresh.load_state_dict(saved)
    fresh.step([np.full(5, 0.5, np.float32)])
    torch = pytest.importorskip("torch")
    import adamcore.torch as ac_torch
    w = torch.nn.Parameter(torch.ones(5))
    topt = ac_torch.Adam([w], lr=1e-2)
    w.grad = torch.full((5,), 0.5)
    topt.step()
    tsaved = topt.state_dict()
    for group in tsaved["param_groups"]:
        del group["eps_root"], group["nesterov"]
    tfresh = ac_torch.Adam([w], lr=1e-2)
    tfresh.load_state_dict(tsaved)
    assert (tfresh.param_groups[0]["eps_root"], tfresh.param_groups[0]["nesterov"]) == (0.0, False)
    tfresh.step()


def test_optax_host_scalars_match_over_1000_steps():
    # optax's bias corrections 1/(1 - b^t) come from the host; 1000 steps of a small
    # tensor with b2 = 0.99 and 0.999 check every one against XLA's.
    for b2 in (0.99, 0.999):
        p0, grads = _peer_grads(5, 1000, seed=12)
        theirs = _optax_peer(p0, grads, {"nesterov": True}, 1e-3, 0.9, b2, 1e-8)
        ours = _adam_ours(p0, grads, decoupled=False, amsgrad=False, lr=1e-3, beta1=0.9,
                          beta2=b2, eps=1e-8, nesterov=True, convention="optax")
        for name, value in theirs.items():
            _assert_same_bits(ours[name], value, f"optax b2={b2} {name} at step 1000")


def test_optax_adagrad_is_refused_naming_convention():
    # optax.adagrad's update is rsqrt(s + eps) * g and XLA's rsqrt is not correctly
    # rounded, so no IEEE recipe matches it bit for bit: refused, nothing written.
    p, g, s, _ = _adam_buffers()
    before = [x.copy() for x in (p, s)]
    with pytest.raises(ValueError, match="convention='optax' has no AdaGrad recipe"):
        adamcore.adagrad_step(p, g, s, step=1, convention="optax")
    for x, y in zip((p, s), before):
        assert np.array_equal(_bits(x), _bits(y))


def _keras_or_skip():
    """keras with the jax backend (set before keras is first imported)."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras runs the {keras.backend.backend()} backend, not jax")
    return keras


KERAS_CASES = {
    "adam": dict(),
    "adam-b2-0.99": dict(beta2=0.99),
    "adamw": dict(weight_decay=0.1),
    "amsgrad": dict(amsgrad=True),
    "adamw-amsgrad": dict(weight_decay=0.1, amsgrad=True),
}


def _keras_adam_peer(p0, grads, case, lr, b1, b2, eps):
    """keras.optimizers.Adam / AdamW (Keras 3, jax backend), eager apply_gradients."""
    keras = _keras_or_skip()
    kw = dict(learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps,
              amsgrad=case.get("amsgrad", False))
    opt = (keras.optimizers.AdamW(weight_decay=case["weight_decay"], **kw)
           if "weight_decay" in case else keras.optimizers.Adam(**kw))
    var = keras.Variable(p0.copy(), dtype="float32")
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    out = {"param": np.asarray(var.value), "exp_avg": np.asarray(opt._momentums[0].value),
           "exp_avg_sq": np.asarray(opt._velocities[0].value)}
    if case.get("amsgrad"):
        out["max_exp_avg_sq"] = np.asarray(opt._velocity_hats[0].value)
    assert int(opt.iterations.value) == len(grads)
    return out


@pytest.mark.parametrize("n", PEER_SIZES)
@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_keras_adam_is_bitwise_on_every_element(n, case):
    kw = KERAS_CASES[case]
    p0, grads = _peer_grads(n, STEPS, seed=13)
    hyper = dict(lr=3e-3, beta1=0.9, beta2=kw.get("beta2", 0.999), eps=1e-7)
    theirs = _keras_adam_peer(p0, grads, kw, hyper["lr"], hyper["beta1"], hyper["beta2"],
                              hyper["eps"])
    decoupled = "weight_decay" in kw
    _compare_everywhere(lambda: _adam_ours(p0, grads, decoupled=decoupled,
                                           amsgrad=kw.get("amsgrad", False),
                                           weight_decay=kw.get("weight_decay", 0.0),
                                           convention="keras", **hyper),
                        theirs, f"keras {case}")


def test_keras_host_scalars_match_over_1000_steps():
    # Keras's alpha = lr*sqrt(1 - b2^t)/(1 - b1^t) with XLA's float32 pow, from the host:
    # 1000 steps of a small tensor, b2 = 0.99 (where pow's rounding differs most often).
    p0, grads = _peer_grads(5, 1000, seed=14)
    theirs = _keras_adam_peer(p0, grads, {}, 1e-3, 0.9, 0.99, 1e-7)
    ours = _adam_ours(p0, grads, decoupled=False, amsgrad=False, lr=1e-3, beta1=0.9,
                      beta2=0.99, eps=1e-7, convention="keras")
    for name, value in theirs.items():
        _assert_same_bits(ours[name], value, f"keras {name} at step 1000")


@pytest.mark.parametrize("n", PEER_SIZES)
def test_keras_adagrad_is_bitwise_on_every_element(n):
    keras = _keras_or_skip()
    p0, grads = _peer_grads(n, STEPS, seed=15)
    opt = keras.optimizers.Adagrad(learning_rate=0.05, initial_accumulator_value=0.1,
                                   epsilon=1e-7)
    var = keras.Variable(p0.copy(), dtype="float32")
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    theirs = {"param": np.asarray(var.value), "state_sum": np.asarray(opt._accumulators[0].value)}

    def run():
        p, s = p0.copy(), np.full(n, 0.1, np.float32)
        for t, g in enumerate(grads, start=1):
            adamcore.adagrad_step(p, g, s, step=t, lr=0.05, eps=1e-7, convention="keras")
        return {"param": p, "state_sum": s}

    _compare_everywhere(run, theirs, "keras adagrad")


def test_keras_adagrad_rejects_torch_only_options():
    p, g, s, _ = _adam_buffers()
    before = p.copy()
    for kwargs in (dict(lr_decay=0.1), dict(weight_decay=0.1), dict(maximize=True)):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            adamcore.adagrad_step(p, g, s, step=1, convention="keras", **kwargs)
    assert np.array_equal(_bits(p), _bits(before))


def test_optax_and_keras_differ_from_the_other_recipes():
    # Distinct arithmetic: a convention that fell back to another recipe would pass the
    # cross-ISA comparisons above only by accident; this would catch it.
    p0, grads = _peer_grads(999, 10, seed=16)
    runs = {c: _adam_ours(p0, grads, decoupled=True, amsgrad=False, lr=1e-2, weight_decay=0.1,
                          convention=c)["param"]
            for c in ("torch-fused", "deepspeed", "optax", "keras")}
    for a in runs:
        for b in runs:
            if a < b:
                assert np.any(_bits(runs[a]) != _bits(runs[b])), (a, b)
