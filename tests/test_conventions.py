"""convention= and tail_width=: each peer's arithmetic reproduced bit for bit against the
real peer (torch fused and DeepSpeed's CPU Adam/AdaGrad, scalar tails included), and the
same bits on every ISA and thread count."""

from __future__ import annotations

import numpy as np
import pytest

import adamcore

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")

STEPS = 100


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


@pytest.mark.parametrize("n", [37, 1_000_003])
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


def _deepspeed_tail_width():
    # DeepSpeed's SIMD_WIDTH for float32: its op builder compiles with __AVX512__ or __AVX256__.
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


# One case: DeepSpeedCPUAdagrad's step took about 1.3 s here (its OpenMP loops on a busy
# 2-core machine); weight decay covers the plain path's operations too.
@pytest.mark.parametrize("weight_decay", [0.1])
def test_deepspeed_adagrad_is_bitwise(weight_decay):
    torch = pytest.importorskip("torch")
    cls = _deepspeed_or_skip("adagrad")
    n = DS_SIZE
    rng, p0, tp = _start(torch, 12)
    opt = cls([tp], lr=2e-2, eps=1e-10, weight_decay=weight_decay, fp32_optimizer_states=True)
    p, s = p0.copy(), np.zeros(n, np.float32)
    for t in range(1, STEPS + 1):
        g = _grads(rng, n)
        tp.grad = torch.from_numpy(g.copy())  # (its scalar loop overwrites the grad)
        opt.step()
        adamcore.adagrad_step(p, g, s, step=t, lr=2e-2, eps=1e-10, weight_decay=weight_decay,
                              convention="deepspeed", tail_width=_deepspeed_tail_width())
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
    (dict(convention="optax"), "convention"),
    (dict(convention=3), "convention"),
    (dict(tail_width=7), "tail_width"),
    (dict(tail_width=8.0), "tail_width"),
    (dict(convention="deepspeed", amsgrad=True), "amsgrad"),
    (dict(convention="deepspeed", diagnostics=True), "convention"),
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
