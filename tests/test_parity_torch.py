"""Bitwise parity with torch.optim's fused CPU kernels (torch 2.13).

torch's fused kernel computes each tensor's first n - n % 16 elements in its vector
body, whose arithmetic adamcore reproduces exactly; the last n % 16 go through a
scalar tail whose rounding differs slightly. So: whole-trajectory bitwise equality
over 1,000 steps for lengths that are multiples of 16, and for other lengths
bitwise on the body and within 1 ulp on the tail, step by step from identical state.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamcore
from _util import ADAGRAD_CASES, ADAM_CASES, assert_same_bits, f32
from adamcore.oracle import ulp_distance

torch = pytest.importorskip("torch")


def _torch_adam(cls_name: str, param: np.ndarray, opts: dict, lr: float):
    t = torch.tensor(param.copy(), requires_grad=True)
    kw = dict(opts)
    betas = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
    opt = getattr(torch.optim, cls_name)([t], lr=lr, betas=betas, fused=True, **kw)
    return t, opt


def _our_adam_kwargs(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k != "amsgrad"}


def _gradient(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    # Scales that wander over orders of magnitude exercise the rounding of every term.
    return f32(rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 1))


@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_family_bitwise_over_1000_steps(isa, case, report):
    cls_name, step_fn, opts = ADAM_CASES[case]
    rng = np.random.default_rng(7)
    n, lr, steps = 1024, 1e-2, 1000
    p = f32(rng.standard_normal(n))
    t_param, opt = _torch_adam(cls_name, p, opts, lr)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    vmax = np.zeros(n, np.float32) if opts.get("amsgrad") else None
    for step in range(1, steps + 1):
        g = _gradient(rng, n, step)
        t_param.grad = torch.from_numpy(g.copy())
        opt.step()
        step_fn(p, g, m, v, step=step, lr=lr, amsgrad=vmax is not None, max_exp_avg_sq=vmax,
                **_our_adam_kwargs(opts))
    state = opt.state[t_param]
    assert_same_bits(p, t_param.detach().numpy(), f"{case} param")
    assert_same_bits(m, state["exp_avg"].numpy(), f"{case} exp_avg")
    assert_same_bits(v, state["exp_avg_sq"].numpy(), f"{case} exp_avg_sq")
    if vmax is not None:
        assert_same_bits(vmax, state["max_exp_avg_sq"].numpy(), f"{case} max_exp_avg_sq")
    if isa == adamcore.available_isas()[-1]:
        report(f"torch fused parity [{case}]: {n} elements x {steps} steps bit-identical")


@pytest.mark.parametrize("case", list(ADAGRAD_CASES))
def test_adagrad_bitwise_over_1000_steps(isa, case, report):
    opts = dict(ADAGRAD_CASES[case])
    init = opts.pop("initial_accumulator_value", 0.0)
    rng = np.random.default_rng(11)
    n, lr, steps = 1024, 5e-2, 1000
    p = f32(rng.standard_normal(n))
    t_param = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.Adagrad([t_param], lr=lr, initial_accumulator_value=init, fused=True, **opts)
    state_sum = np.full(n, init, np.float32)
    for step in range(1, steps + 1):
        g = _gradient(rng, n, step)
        t_param.grad = torch.from_numpy(g.copy())
        opt.step()
        adamcore.adagrad_step(p, g, state_sum, step=step, lr=lr, **opts)
    assert_same_bits(p, t_param.detach().numpy(), f"{case} param")
    assert_same_bits(state_sum, opt.state[t_param]["sum"].numpy(), f"{case} sum")


def _copy_state_from_torch(t_param, opt, arrays: dict) -> None:
    np.copyto(arrays["param"], t_param.detach().numpy())
    state = opt.state[t_param]
    for ours, theirs in (("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq"),
                         ("max_exp_avg_sq", "max_exp_avg_sq"), ("state_sum", "sum")):
        if ours in arrays and theirs in state:
            np.copyto(arrays[ours], state[theirs].numpy())


@pytest.mark.parametrize("n", [17, 1013])
@pytest.mark.parametrize("case", ["adam", "adamw-amsgrad-l2", "adam-beta1-0.3", "adagrad"])
def test_tail_within_one_ulp_of_torch_per_step(isa, case, n, report):
    rng = np.random.default_rng(3)
    lr, steps = 1e-2, 200
    body = n - n % 16
    p = f32(rng.standard_normal(n))
    if case == "adagrad":
        t_param = torch.tensor(p.copy(), requires_grad=True)
        opt = torch.optim.Adagrad([t_param], lr=lr, fused=True)
        arrays = {"param": p, "state_sum": np.zeros(n, np.float32)}
    else:
        cls_name, step_fn, opts = ADAM_CASES[case]
        t_param, opt = _torch_adam(cls_name, p, opts, lr)
        arrays = {"param": p, "exp_avg": np.zeros(n, np.float32),
                  "exp_avg_sq": np.zeros(n, np.float32)}
        if opts.get("amsgrad"):
            arrays["max_exp_avg_sq"] = np.zeros(n, np.float32)
    worst_tail = 0
    for step in range(1, steps + 1):
        if step > 1:
            _copy_state_from_torch(t_param, opt, arrays)  # identical state before the step
        g = _gradient(rng, n, step)
        t_param.grad = torch.from_numpy(g.copy())
        opt.step()
        if case == "adagrad":
            adamcore.adagrad_step(arrays["param"], g, arrays["state_sum"], step=step, lr=lr)
            pairs = [("param", t_param.detach().numpy()),
                     ("state_sum", opt.state[t_param]["sum"].numpy())]
        else:
            step_fn(arrays["param"], g, arrays["exp_avg"], arrays["exp_avg_sq"], step=step,
                    lr=lr, amsgrad="max_exp_avg_sq" in arrays,
                    max_exp_avg_sq=arrays.get("max_exp_avg_sq"), **_our_adam_kwargs(opts))
            state = opt.state[t_param]
            pairs = [("param", t_param.detach().numpy())] + [
                (k, state[k].numpy()) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
                if k in arrays]
        for name, theirs in pairs:
            ours = arrays[name]
            assert_same_bits(ours[:body], theirs[:body], f"{case} step {step} {name} body")
            tail_ulps = float(ulp_distance(theirs[body:], ours[body:]).max(initial=0))
            assert tail_ulps <= 1, f"{case} step {step} {name} tail differs by {tail_ulps} ulp"
            worst_tail = max(worst_tail, int(tail_ulps))
    if isa == adamcore.available_isas()[-1]:
        report(f"torch fused tail [{case}, n={n}]: body bitwise, worst tail difference "
               f"{worst_tail} ulp per step over {steps} steps")


def test_nan_and_inf_gradients_propagate_like_torch(isa):
    rng = np.random.default_rng(5)
    n, lr = 256, 1e-2
    for cls_name, step_fn, opts in (ADAM_CASES["adam"], ADAM_CASES["adamw-amsgrad-l2"]):
        p = f32(rng.standard_normal(n))
        t_param, opt = _torch_adam(cls_name, p, opts, lr)
        m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
        vmax = np.zeros(n, np.float32) if opts.get("amsgrad") else None
        for step in range(1, 21):
            g = _gradient(rng, n, step)
            g[rng.integers(0, n, 3)] = np.nan
            g[rng.integers(0, n, 2)] = np.inf
            g[rng.integers(0, n, 2)] = -np.inf
            t_param.grad = torch.from_numpy(g.copy())
            opt.step()
            step_fn(p, g, m, v, step=step, lr=lr, amsgrad=vmax is not None,
                    max_exp_avg_sq=vmax, **_our_adam_kwargs(opts))
        assert np.isnan(p).any(), "the test should have produced NaN parameters"
        state = opt.state[t_param]
        assert_same_bits(p, t_param.detach().numpy(), f"{cls_name} param with NaN/Inf grads")
        assert_same_bits(m, state["exp_avg"].numpy(), "exp_avg with NaN/Inf grads")
        assert_same_bits(v, state["exp_avg_sq"].numpy(), "exp_avg_sq with NaN/Inf grads")
    # AdaGrad too.
    p = f32(rng.standard_normal(n))
    t_param = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.Adagrad([t_param], lr=lr, fused=True)
    s = np.zeros(n, np.float32)
    for step in range(1, 11):
        g = _gradient(rng, n, step)
        g[rng.integers(0, n, 3)] = np.nan
        g[rng.integers(0, n, 3)] = -np.inf
        t_param.grad = torch.from_numpy(g.copy())
        opt.step()
        adamcore.adagrad_step(p, g, s, step=step, lr=lr)
    assert_same_bits(p, t_param.detach().numpy(), "adagrad param with NaN/Inf grads")
    assert_same_bits(s, opt.state[t_param]["sum"].numpy(), "adagrad sum with NaN/Inf grads")
