"""Buffer dtypes other than float32, in one pass (issue 9, first slice).

- One dtype everywhere (bfloat16, float16, float64): bit-identical to torch 2.13's
  ``fused=True`` Adam/AdamW/Adagrad on every element of its vector body over 1,000
  steps; its scalar tail step by step from identical state within a stated bound.
- float32 master weights: float32 params and state with bfloat16/float16 grads, and/or
  a 16-bit ``param_copy`` written in the same pass, equal to ``param.astype``.
- Every ISA of this machine gives the same bits for every layout (the C++ tests do the
  same for every compiled ISA, NEON under qemu).
- Any other combination raises a TypeError naming the accepted layouts, writing nothing.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import adamcore
from _util import ADAGRAD_CASES, ADAM_CASES

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F64 = np.dtype(np.float64)
DTYPES = {"bfloat16": BF16, "float16": F16, "float64": F64}

# torch's vector body covers the first n - n % (64 / itemsize) elements on AVX-512 and
# a superset of them on AVX2 (its vectors hold 32 bytes there).
def _body(n: int, dtype: np.dtype) -> int:
    lanes = 64 // dtype.itemsize
    return n - n % lanes


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bitwise equality of any float dtype; NaN matches NaN (payloads are not compared)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan_g = np.isnan(got.astype(np.float64))
    nan_w = np.isnan(want.astype(np.float64))
    assert np.array_equal(nan_g, nan_w), f"{what}: NaN positions differ"
    diff = np.flatnonzero((_bits(got) != _bits(want)) & ~nan_g)
    if diff.size:
        i = diff[0]
        raise AssertionError(f"{what}: {diff.size} of {got.size} elements differ; first at {i}: "
                             f"{got.flat[i]!r} vs {want.flat[i]!r}")


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place of the arrays' own dtype (finite values)."""
    signed = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    lowest = np.iinfo(signed).min

    def key(x: np.ndarray) -> np.ndarray:  # sign-magnitude bits -> a monotonic integer line
        i = x.view(signed)
        return np.where(i < 0, lowest - i, i).astype(np.int64)

    return np.abs(key(a) - key(b))


# ---------------------------------------------------------------- torch as the reference
torch = pytest.importorskip("torch")
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


def to_torch(a: np.ndarray) -> "torch.Tensor":
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def to_numpy(t: "torch.Tensor") -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16).copy()
    return t.numpy().copy()


# (the parity option families are in _util; the tail test only: no weight decay, see
# TAIL_BOUND_ULPS)
ADAGRAD_TAIL_CASES = {"adagrad-lr-decay": {"lr_decay": 0.01, "maximize": True}}


def _gradient(rng: np.random.Generator, n: int, dtype: np.dtype) -> np.ndarray:
    # Scales that wander over orders of magnitude exercise the rounding of every term.
    return (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 1)).astype(dtype)


class AdamRun:
    """One Adam-family trajectory in torch fused and in adamcore, side by side."""

    def __init__(self, case: str, dtype: np.dtype, n: int, rng: np.random.Generator):
        cls_name, self.step_fn, opts = ADAM_CASES[case]
        self.opts = {k: v for k, v in opts.items() if k != "amsgrad"}
        self.amsgrad = bool(opts.get("amsgrad"))
        self.lr = 1e-2
        self.p = rng.standard_normal(n).astype(dtype)
        self.m, self.v = np.zeros(n, dtype), np.zeros(n, dtype)
        self.vmax = np.zeros(n, dtype) if self.amsgrad else None
        self.t_param = to_torch(self.p).requires_grad_(True)
        kw = dict(opts)
        betas = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
        self.opt = getattr(torch.optim, cls_name)([self.t_param], lr=self.lr, betas=betas,
                                                  fused=True, **kw)

    def step(self, step: int, g: np.ndarray) -> None:
        self.t_param.grad = to_torch(g)
        self.opt.step()
        self.step_fn(self.p, g, self.m, self.v, step=step, lr=self.lr, amsgrad=self.amsgrad,
                     max_exp_avg_sq=self.vmax, **self.opts)

    def arrays(self):
        return [self.p, self.m, self.v] + ([self.vmax] if self.amsgrad else [])

    def pairs(self):
        state = self.opt.state[self.t_param]
        out = [("param", self.p, to_numpy(self.t_param)), ("exp_avg", self.m, to_numpy(state["exp_avg"])),
               ("exp_avg_sq", self.v, to_numpy(state["exp_avg_sq"]))]
        if self.amsgrad:
            out.append(("max_exp_avg_sq", self.vmax, to_numpy(state["max_exp_avg_sq"])))
        return out

    def sync_from_torch(self) -> None:
        for _, ours, theirs in self.pairs():
            np.copyto(ours, theirs)


class AdagradRun:
    def __init__(self, case: str, dtype: np.dtype, n: int, rng: np.random.Generator):
        opts = dict({**ADAGRAD_CASES, **ADAGRAD_TAIL_CASES}[case])
        init = opts.pop("initial_accumulator_value", 0.0)
        self.opts, self.lr = opts, 5e-2
        self.p = rng.standard_normal(n).astype(dtype)
        self.s = np.full(n, init, dtype)
        self.t_param = to_torch(self.p).requires_grad_(True)
        self.opt = torch.optim.Adagrad([self.t_param], lr=self.lr, initial_accumulator_value=init,
                                       fused=True, **opts)

    def step(self, step: int, g: np.ndarray) -> None:
        self.t_param.grad = to_torch(g)
        self.opt.step()
        adamcore.adagrad_step(self.p, g, self.s, step=step, lr=self.lr, **self.opts)

    def arrays(self):
        return [self.p, self.s]

    def pairs(self):
        return [("param", self.p, to_numpy(self.t_param)),
                ("state_sum", self.s, to_numpy(self.opt.state[self.t_param]["sum"]))]

    def sync_from_torch(self) -> None:
        for _, ours, theirs in self.pairs():
            np.copyto(ours, theirs)


def _make_run(case: str, dtype: np.dtype, n: int, rng: np.random.Generator):
    if case.startswith("adagrad"):
        return AdagradRun(case, dtype, n, rng)
    return AdamRun(case, dtype, n, rng)


ALL_CASES = list(ADAM_CASES) + list(ADAGRAD_CASES)


@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_same_dtype_bitwise_with_torch_fused_over_1000_steps(isa, dtype_name, case, report):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(7)
    n, steps = 1024, 1000  # a multiple of every vector width: torch's body is everything
    run = _make_run(case, dtype, n, rng)
    for step in range(1, steps + 1):
        run.step(step, _gradient(rng, n, dtype))
    moved = 0
    for name, ours, theirs in run.pairs():
        assert ours.dtype == dtype
        assert_same_bits(ours, theirs, f"{dtype_name} {case} {name}")
        moved += int(np.count_nonzero(ours))
    assert moved > 0
    if isa == adamcore.available_isas()[-1]:
        report(f"torch fused parity [{dtype_name} {case}]: {n} x {steps} steps bit-identical")


# torch's scalar tail against adamcore (= torch's body arithmetic), per step from
# identical state, measured on this machine (AVX2; 200 steps): Adam family 0-1 ulp in
# the buffers' dtype (bf16 beta1=0.3: 1; float64: 1; fp16: 0), so the bound is 1 ulp.
# torch's 16-bit AdaGrad tail uses float32 clr, eps and weight_decay where its body
# rounds them to the 16-bit dtype first (up to 2^-9 relative for bf16), so there the
# bound also scales with the step's change: 1 ulp + |change| * 2^-6. With weight decay
# no such bound exists: where p*wd cancels the gradient, the two weight decays give
# different sums (measured: 7 bf16 ulp of state_sum at step 1), so the tail case has
# none; the body is bitwise with weight decay in the 1,000-step test above.
TAIL_BOUND_ULPS = 1


def _tail_within_bound(ours, theirs, before, loose: bool) -> np.ndarray:
    """Per element: within TAIL_BOUND_ULPS, or (loose) within 1 ulp + |change| * 2^-6."""
    close = ulps(ours, theirs) <= TAIL_BOUND_ULPS
    if not loose:
        return close
    o, t, b = (x.astype(np.float64) for x in (ours, theirs, before))
    if theirs.dtype == BF16:  # bf16 keeps float32's exponent and 7 of its 23 fraction bits
        ulp = np.abs(np.spacing(theirs.astype(np.float32))).astype(np.float64) * 2.0 ** 16
    else:
        ulp = np.abs(np.spacing(theirs)).astype(np.float64)
    return close | (np.abs(o - t) <= ulp + np.abs(t - b) * 2.0 ** -6)


@pytest.mark.parametrize("n", [21, 1013])
@pytest.mark.parametrize("case", ["adam", "adamw-amsgrad-l2", "adam-beta1-0.3", "adagrad-lr-decay"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_tail_per_step_from_identical_state(isa, dtype_name, case, n, report):
    """torch's scalar tail (the last n % lanes) rounds differently from its own body:
    compare every step from identical state, body bitwise and tail within a bound."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(3)
    body = _body(n, dtype)
    run = _make_run(case, dtype, n, rng)
    loose = case.startswith("adagrad") and dtype.itemsize == 2
    worst = 0
    for step in range(1, 201):
        if step > 1:
            run.sync_from_torch()
        before = [a.copy() for a in run.arrays()]
        run.step(step, _gradient(rng, n, dtype))
        for (name, ours, theirs), old in zip(run.pairs(), before):
            assert_same_bits(ours[:body], theirs[:body], f"{dtype_name} {case} n={n} step {step} {name} body")
            worst = max(worst, int(ulps(ours[body:], theirs[body:]).max(initial=0)))
            ok = _tail_within_bound(ours[body:], theirs[body:], old[body:], loose)
            assert ok.all(), (f"{dtype_name} {case} n={n} step {step} {name}: tail "
                              f"{ulps(ours[body:], theirs[body:]).max()} ulp from torch")
    if isa == adamcore.available_isas()[-1]:
        report(f"torch fused tail [{dtype_name} {case} n={n}]: worst {worst} ulp per step")


def test_nan_and_inf_gradients_propagate_like_torch(isa):
    for dtype_name, dtype in DTYPES.items():
        rng = np.random.default_rng(1)
        n = 256
        for case in ("adam-amsgrad", "adagrad"):
            run = _make_run(case, dtype, n, rng)
            for step in range(1, 6):
                g = _gradient(rng, n, dtype)
                g[rng.integers(0, n, 5)] = np.nan
                g[rng.integers(0, n, 5)] = np.inf
                run.step(step, g)
            for name, ours, theirs in run.pairs():
                assert_same_bits(ours, theirs, f"{dtype_name} {case} {name} with NaN/Inf grads")


# ---------------------------------------------------------------- float32 master weights
@pytest.mark.parametrize("copy_dtype", [BF16, F16], ids=["bf16-copy", "fp16-copy"])
@pytest.mark.parametrize("family", ["adam", "adamw-amsgrad", "adagrad"])
def test_param_copy_is_the_float32_step_rounded(isa, family, copy_dtype):
    """With param_copy the float32 step is unchanged (it is torch fused's float32 step)
    and the copy equals param.astype(copy dtype) bit for bit, after every step."""
    rng = np.random.default_rng(5)
    n = 1000
    p = rng.standard_normal(n).astype(np.float32)
    ref_p = p.copy()
    k = 1 if family == "adagrad" else 3 if family.endswith("amsgrad") else 2
    state = [np.zeros(n, np.float32) for _ in range(k)]
    ref_state = [np.zeros(n, np.float32) for _ in range(k)]
    copy = np.full(n, np.nan, copy_dtype)
    for step in range(1, 101):
        g = _gradient(rng, n, np.dtype(np.float32))
        if family == "adagrad":
            kw = dict(step=step, lr_decay=0.01, weight_decay=0.01)
            adamcore.adagrad_step(p, g, state[0], param_copy=copy, **kw)
            adamcore.adagrad_step(ref_p, g, ref_state[0], **kw)
        else:
            ams = family.endswith("amsgrad")
            kw = dict(step=step, lr=1e-2, amsgrad=ams)
            adamcore.adamw_step(p, g, state[0], state[1], max_exp_avg_sq=state[2] if ams else None,
                                param_copy=copy, **kw)
            adamcore.adamw_step(ref_p, g, ref_state[0], ref_state[1],
                                max_exp_avg_sq=ref_state[2] if ams else None, **kw)
        assert_same_bits(copy, p.astype(copy_dtype), f"{family} param_copy at step {step}")
    assert_same_bits(p, ref_p, f"{family} param")
    for a, b in zip(state, ref_state):
        assert_same_bits(a, b, f"{family} state")


@pytest.mark.parametrize("grad_dtype", [BF16, F16], ids=["bf16-grads", "fp16-grads"])
@pytest.mark.parametrize("family", ["adam", "adamw-amsgrad", "adagrad"])
def test_16_bit_grads_equal_the_float32_step_on_widened_grads(isa, family, grad_dtype):
    """16-bit grads are widened exactly, so the step equals the float32 step (which is
    torch fused's float32 step) on grad.astype(float32); a copy of the grads' dtype
    equals param.astype, over many steps."""
    rng = np.random.default_rng(5)
    n = 1000
    p = rng.standard_normal(n).astype(np.float32)
    ref_p = p.copy()
    k = 1 if family == "adagrad" else 3 if family.endswith("amsgrad") else 2
    state = [np.zeros(n, np.float32) for _ in range(k)]
    ref_state = [np.zeros(n, np.float32) for _ in range(k)]
    copy = np.full(n, np.nan, grad_dtype)
    for step in range(1, 101):
        g = _gradient(rng, n, grad_dtype)
        if family == "adagrad":
            kw = dict(step=step, lr_decay=0.01, weight_decay=0.01)
            adamcore.adagrad_step(p, g, state[0], param_copy=copy, **kw)
            adamcore.adagrad_step(ref_p, g.astype(np.float32), ref_state[0], **kw)
        else:
            ams = family.endswith("amsgrad")
            kw = dict(step=step, lr=1e-2, amsgrad=ams)
            adamcore.adamw_step(p, g, state[0], state[1], max_exp_avg_sq=state[2] if ams else None,
                                param_copy=copy, **kw)
            adamcore.adamw_step(ref_p, g.astype(np.float32), ref_state[0], ref_state[1],
                                max_exp_avg_sq=ref_state[2] if ams else None, **kw)
        assert_same_bits(copy, p.astype(grad_dtype), f"{family} param_copy at step {step}")
    assert_same_bits(p, ref_p, f"{family} param")
    for a, b in zip(state, ref_state):
        assert_same_bits(a, b, f"{family} state")


@pytest.mark.parametrize("copy_dtype", [BF16, F16], ids=["bf16-copy", "fp16-copy"])
def test_param_copy_rounds_to_nearest_even_on_awkward_values(isa, copy_dtype):
    """Values that sit on rounding ties, overflow the 16-bit range, are subnormal there,
    or are NaN/Inf: the copy equals NumPy/ml_dtypes' astype (round to nearest even)."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0x3F808000, 0x3F818000, 0x477FF000, 0x477FEFFF, 0x47800000, 0x33000000,
                         0x33000001, 0x387FC000, 0x38800000, 0x00000001, 0x80000000, 0x7F800000,
                         0xFF800000, 0x7F7FFFFF, 0x7F7F8000, 0x7FC00000, 0x7F800001], np.uint32)
    p = np.concatenate([bits, specials, specials + 1, specials - 1]).view(np.float32).copy()
    g = np.zeros_like(p)
    s = np.zeros_like(p)
    copy = np.empty(p.size, copy_dtype)
    # lr = 0: the step leaves p as it is (p + 0/x), so the copy must be p.astype exactly.
    with np.errstate(invalid="ignore", over="ignore"):
        want = p.astype(copy_dtype)
    adamcore.adagrad_step(p, g, s, step=1, lr=0.0, param_copy=copy)
    assert_same_bits(copy, want, "param_copy")


def test_groups_take_every_layout(isa):
    """AdamGroup/AdagradGroup hold 16-bit, float64 and master-weight buffers (with
    param_copies) and give the functional API's bits."""
    rng = np.random.default_rng(2)
    sizes = [5, 64, 300]
    for dtype in (BF16, F16, F64):
        ps = [rng.standard_normal(k).astype(dtype) for k in sizes]
        ms = [np.zeros(k, dtype) for k in sizes]
        vs = [np.zeros(k, dtype) for k in sizes]
        ref = [a.copy() for a in ps], [a.copy() for a in ms], [a.copy() for a in vs]
        group = adamcore.AdamGroup(ps, ms, vs)
        for step in range(1, 4):
            gs = [_gradient(rng, k, dtype) for k in sizes]
            group.step(gs, step=step, weight_decay=0.1, decoupled=True)
            adamcore.adamw_step(ref[0], gs, ref[1], ref[2], step=step, weight_decay=0.1)
        for got, want in zip(ps + ms + vs, ref[0] + ref[1] + ref[2]):
            assert_same_bits(got, want, f"AdamGroup {dtype}")
    ps = [rng.standard_normal(k).astype(np.float32) for k in sizes]
    sums = [np.zeros(k, np.float32) for k in sizes]
    copies = [np.empty(k, BF16) for k in sizes]
    group = adamcore.AdagradGroup(ps, sums, param_copies=copies)
    group.step([_gradient(rng, k, BF16) for k in sizes], step=1)
    for p, c in zip(ps, copies):
        assert_same_bits(c, p.astype(BF16), "AdagradGroup param_copies")


# ---------------------------------------------------------------- mixed layouts
# Each mixed layout's contract: the float32 step on the buffers widened exactly, then each
# 16-bit buffer rounded to nearest even (16-bit values are never rounded twice in a step).
MIXED = {
    "bf16 params+grads, f32 state": (BF16, BF16, np.float32, None),
    "fp16 params+grads, f32 state": (F16, F16, np.float32, None),
    "f32 params, bf16 state": (np.float32, np.float32, BF16, None),
    "f32 params, bf16 state+grads": (np.float32, BF16, BF16, None),
    "f32 params, bf16 state, bf16 copy": (np.float32, np.float32, BF16, BF16),
    "f32 params, bf16 state+grads+copy": (np.float32, BF16, BF16, BF16),
}


@pytest.mark.parametrize("family", ["adam", "adamw-amsgrad", "adagrad"])
@pytest.mark.parametrize("layout", list(MIXED))
def test_mixed_layouts_equal_the_float32_step_then_rounding(isa, layout, family):
    pdt, gdt, sdt, cdt = MIXED[layout]
    rng = np.random.default_rng(11)
    n = 1000 + 3
    k = 1 if family == "adagrad" else 3 if family.endswith("amsgrad") else 2
    p = rng.standard_normal(n).astype(pdt)
    state = [np.zeros(n, sdt) for _ in range(k)]
    copy = None if cdt is None else np.full(n, np.nan, cdt)
    for step in range(1, 51):
        g = _gradient(rng, n, gdt)
        ref_p = p.astype(np.float32)
        ref_state = [s.astype(np.float32) for s in state]
        if family == "adagrad":
            kw = dict(step=step, lr_decay=0.01, weight_decay=0.01)
            adamcore.adagrad_step(p, g, state[0], param_copy=copy, **kw)
            adamcore.adagrad_step(ref_p, g.astype(np.float32), ref_state[0], **kw)
        else:
            ams = family.endswith("amsgrad")
            kw = dict(step=step, lr=1e-2, amsgrad=ams, weight_decay=0.01)
            adamcore.adamw_step(p, g, state[0], state[1], max_exp_avg_sq=state[2] if ams else None,
                                param_copy=copy, **kw)
            adamcore.adamw_step(ref_p, g.astype(np.float32), ref_state[0], ref_state[1],
                                max_exp_avg_sq=ref_state[2] if ams else None, **kw)
        assert_same_bits(p, ref_p.astype(pdt), f"{layout} {family} param at step {step}")
        for a, b in zip(state, ref_state):
            assert_same_bits(a, b.astype(sdt), f"{layout} {family} state at step {step}")
        if copy is not None:
            assert_same_bits(copy, ref_p.astype(cdt), f"{layout} {family} copy at step {step}")


def test_groups_take_the_mixed_layouts(isa):
    rng = np.random.default_rng(3)
    sizes = [5, 64, 300]
    for pdt, gdt, sdt, cdt in MIXED.values():
        ps = [rng.standard_normal(k).astype(pdt) for k in sizes]
        ms, vs = ([np.zeros(k, sdt) for k in sizes] for _ in range(2))
        cs = None if cdt is None else [np.zeros(k, cdt) for k in sizes]
        ref = [[a.copy() for a in col] for col in (ps, ms, vs)]
        ref_cs = None if cs is None else [a.copy() for a in cs]
        group = adamcore.AdamGroup(ps, ms, vs, param_copies=cs)
        for step in range(1, 4):
            gs = [_gradient(rng, k, gdt) for k in sizes]
            group.step(gs, step=step)
            adamcore.adam_step(ref[0], gs, ref[1], ref[2], step=step, param_copy=ref_cs)
        for got, want in zip(ps + ms + vs + (cs or []), ref[0] + ref[1] + ref[2] + (ref_cs or [])):
            assert_same_bits(got, want, f"AdamGroup {pdt}/{gdt}/{sdt}/{cdt}")


# ---------------------------------------------------------------- every ISA, every layout
LAYOUTS = {
    "bfloat16": (BF16, BF16, BF16, None),
    "float16": (F16, F16, F16, None),
    "float64": (F64, F64, F64, None),
    "f32+bf16-copy": (np.float32, np.float32, np.float32, BF16),
    "f32+fp16-copy": (np.float32, np.float32, np.float32, F16),
    "f32+bf16-grads+bf16-copy": (np.float32, BF16, np.float32, BF16),
    "f32+fp16-grads": (np.float32, F16, np.float32, None),
    "bf16+f32-state": (BF16, BF16, np.float32, None),
    "fp16+f32-state": (F16, F16, np.float32, None),
    "f32+bf16-state": (np.float32, np.float32, BF16, None),
    "f32+bf16-state+bf16-grads+bf16-copy": (np.float32, BF16, BF16, BF16),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_isa_and_thread_count_gives_the_same_bits(layout):
    pdt, gdt, sdt, cdt = LAYOUTS[layout]

    def run(threads: int):
        rng = np.random.default_rng(9)
        n = 40_000 + 7  # above the parallel threshold, with a tail
        p = rng.standard_normal(n).astype(pdt)
        m, v, vmax = (np.zeros(n, sdt) for _ in range(3))
        copy = None if cdt is None else np.zeros(n, cdt)
        saved = adamcore.get_num_threads()
        adamcore.set_num_threads(threads)
        try:
            for step in range(1, 6):
                g = _gradient(rng, n, gdt)
                g[::97] = np.nan
                adamcore.adam_step(p[1:], g[1:], m[1:], v[1:], step=step, amsgrad=True,
                                   max_exp_avg_sq=vmax[1:], weight_decay=0.01,
                                   param_copy=None if copy is None else copy[1:])
        finally:
            adamcore.set_num_threads(saved)
        return [p, m, v, vmax] + ([] if copy is None else [copy])

    with adamcore.use_isa("scalar"):
        want = run(1)
    for name in adamcore.available_isas():
        with adamcore.use_isa(name):
            for threads in (1, 2):
                for got, ref in zip(run(threads), want):
                    assert_same_bits(got, ref, f"{layout} {name} threads={threads}")


# ---------------------------------------------------------------- refusals
def _adam_buffers(dtypes, n=8):
    return [np.ones(n, d) for d in dtypes]


REFUSED = {
    # (param, grad, exp_avg, exp_avg_sq), copy dtype, argument named, dtype it must have
    "float64 grads for float32 params": ((np.float32, F64, np.float32, np.float32), None, "grad", "float32"),
    "bf16 params with fp16 state": ((BF16, BF16, F16, F16), None, "exp_avg", "float32"),
    "fp16 state with float32 params": ((np.float32, np.float32, F16, F16), None, "exp_avg", "float32"),
    "bf16 state with fp16 grads": ((np.float32, F16, BF16, BF16), None, "grad", "float32"),
    "float64 params with float32 state": ((F64, np.float32, np.float32, np.float32), None, "param", "float32"),
    "mixed state": ((BF16, BF16, BF16, F16), None, "exp_avg_sq", "bfloat16"),
    "fp16 grads for bf16 params": ((BF16, F16, BF16, BF16), None, "grad", "bfloat16"),
    "copy for bf16 params": ((BF16, BF16, BF16, BF16), BF16, "param", "float32"),
    "float32 copy": ((np.float32, np.float32, np.float32, np.float32), np.float32, "param_copy", "bfloat16"),
    "fp16 copy for bf16 grads": ((np.float32, BF16, np.float32, np.float32), F16, "grad", "float32"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_other_layouts_are_refused_and_nothing_is_written(case):
    dtypes, copy_dtype, argument, expected = REFUSED[case]
    p, g, m, v = _adam_buffers(dtypes)
    copy = None if copy_dtype is None else np.ones(8, copy_dtype)
    arrays = [p, g, m, v] + ([] if copy is None else [copy])
    before = [a.tobytes() for a in arrays]
    with pytest.raises(TypeError, match=rf"^{argument} must have dtype {expected}, got .*Accepted: "
                                        r"one dtype for params, grads and state"):
        adamcore.adam_step(p, g, m, v, step=1, param_copy=copy)
    with pytest.raises(TypeError, match=rf"^{argument}\[0\] must have dtype {expected}"):
        adamcore.adam_step([p], [g], [m], [v], step=1, param_copy=None if copy is None else [copy])
    assert [a.tobytes() for a in arrays] == before


def test_refusals_name_the_argument_and_write_nothing_elsewhere():
    p, m, v = (np.ones(8, BF16) for _ in range(3))
    before = [a.tobytes() for a in (p, m, v)]
    with pytest.raises(TypeError, match=r"^grads\[0\] must have dtype bfloat16, got float32"):
        adamcore.AdamGroup([p], [m], [v]).step([np.ones(8, np.float32)], step=1)
    with pytest.raises(TypeError, match=r"^param\[1\] must have dtype bfloat16 like param\[0\]"):
        adamcore.adam_step([p, np.ones(4, F16)], [p.copy(), np.ones(4, F16)],
                           [m, np.ones(4, F16)], [v, np.ones(4, F16)], step=1)
    with pytest.raises(TypeError, match=r"^state_sum must have dtype float32, float64, bfloat16 or "
                                        r"float16, got int32"):
        adamcore.adagrad_step(np.ones(8, np.float32), np.ones(8, np.float32), np.ones(8, np.int32),
                              step=1)
    with pytest.raises(TypeError, match=r"^param_copy must be an array like param"):
        adamcore.adam_step(p, p.copy(), m, v, step=1, param_copy=[np.ones(8, BF16)])
    with pytest.raises(ValueError, match=r"^param_copy has 4 elements but param has 8"):
        adamcore.adamw_step(np.ones(8, np.float32), np.ones(8, np.float32), np.ones(8, np.float32),
                            np.ones(8, np.float32), step=1, param_copy=np.ones(4, BF16))
    assert [a.tobytes() for a in (p, m, v)] == before


def test_param_copy_may_not_share_memory():
    p, g, m, v = (np.ones(8, np.float32) for _ in range(4))
    with pytest.raises(ValueError, match="overlap in memory"):
        adamcore.adam_step(p, g, m, v, step=1, param_copy=p.view(BF16)[:8])


def test_16_bit_views_need_2_byte_alignment_and_float64_8():
    raw = np.zeros(64, np.uint8)
    odd = raw[1:33].view(BF16)
    with pytest.raises(ValueError, match="not aligned to 2 bytes"):
        adamcore.adam_step(odd, odd.copy(), odd.copy(), odd.copy(), step=1)
    four = raw[4:36].view(F64)
    with pytest.raises(ValueError, match="not aligned to 8 bytes"):
        adamcore.adam_step(four, four.copy(), four.copy(), four.copy(), step=1)


def test_bfloat16_is_recognised_without_importing_ml_dtypes():
    code = ("import sys, adamcore, numpy as np; assert 'ml_dtypes' not in sys.modules; "
            "p = np.ones(4, np.float32); "
            "adamcore.adam_step(p, p.copy(), p.copy(), p.copy(), step=1); "
            "assert 'ml_dtypes' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
