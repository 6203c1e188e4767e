"""The optimizer classes over NumPy arrays: adamcore.Adam, AdamW, AMSGrad, Adagrad.

Peers: the functional kernels called by hand (no torch needed), and torch.optim's
fused optimizers with the same parameter groups, bit for bit. Tensor sizes are
multiples of 16 in the torch comparisons: torch's scalar tail (the last n % 16
elements) rounds differently and is covered in tests/test_torch_adapter.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamcore
from adamcore import _engine
from adamcore.schedule import Constant, WarmupCosine, schedule_from_dict
from _util import assert_same_bits, f32

SHAPES = [(32, 16), (48,), (4, 4, 8)]


def _params(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [f32(rng.standard_normal(s)) for s in shapes]


def _grad_stream(seed, shapes=SHAPES, steps=40):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        # Shrinking and growing gradients exercise both signs of Γ.
        scale = float(np.exp(rng.uniform(-3, 1)))
        yield [f32(rng.standard_normal(s) * scale) for s in shapes]


def _torch_run(torch, cls_name, groups_np, steps, **kwargs):
    """Run torch.optim.<cls>(fused=True) over copies of ``groups_np`` on the given grads."""
    tensors = [[torch.nn.Parameter(torch.from_numpy(p.copy())) for p in g["params"]] for g in groups_np]
    groups = [dict({k: v for k, v in g.items() if k != "params"}, params=ts)
              for g, ts in zip(groups_np, tensors)]
    opt = getattr(torch.optim, cls_name)(groups, fused=True, **kwargs)
    flat = [t for ts in tensors for t in ts]
    for grads in steps:
        for t, g in zip(flat, grads):
            t.grad = None if g is None else torch.from_numpy(g.copy())
        opt.step()
    return [t.detach().numpy() for t in flat], opt


# case: (adamcore class, torch class, shared options, options only torch needs)
NUMPY_VS_TORCH = {
    "Adam": (adamcore.Adam, "Adam", {"weight_decay": 0.02}, {}),
    "AdamW": (adamcore.AdamW, "AdamW", {"weight_decay": 0.1}, {}),
    "AMSGrad": (adamcore.AMSGrad, "Adam", {"weight_decay": 0.01}, {"amsgrad": True}),
    "AdamW-amsgrad-maximize": (adamcore.AdamW, "AdamW", {"amsgrad": True, "maximize": True}, {}),
    "Adam-beta1-0.3": (adamcore.Adam, "Adam", {"betas": (0.3, 0.99)}, {}),
    "Adagrad": (adamcore.Adagrad, "Adagrad", {"lr_decay": 0.01, "weight_decay": 0.01,
                                              "initial_accumulator_value": 0.1}, {}),
}


@pytest.mark.parametrize("case", sorted(NUMPY_VS_TORCH))
@pytest.mark.parametrize("cached", [True, False], ids=["cached-plan", "rebuilt-every-step"])
def test_matches_torch_fused_with_param_groups(case, cached, monkeypatch):
    torch = pytest.importorskip("torch")
    cls, torch_name, options, torch_only = NUMPY_VS_TORCH[case]
    if not cached:  # every step gathers its state and native groups afresh
        monkeypatch.setattr(_engine.Plan, "matches", lambda *args: False)
    params = _params(1)
    # Two groups with their own learning rates; the second also its own eps.
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3, "eps": 1e-6}]
    grads = list(_grad_stream(2))
    # A parameter without a gradient at some steps: its step count falls behind.
    for k in (5, 6, 17):
        grads[k][1] = None
    want, torch_opt = _torch_run(torch, torch_name, groups, grads, lr=1e-2, **options, **torch_only)
    opt = cls([dict(g) for g in groups], lr=1e-2, **options)
    for g in grads:
        opt.step(g)
    for k, (got, exp) in enumerate(zip(params, want)):
        assert_same_bits(got, exp, f"{case} param {k}")
    torch_state = torch_opt.state_dict()["state"]
    for index, state in opt.state_dict()["state"].items():
        assert state["step"] == int(torch_state[index]["step"])
        for name, value in state.items():
            if name != "step":
                assert_same_bits(value, torch_state[index][name].numpy(), f"{case} {name} {index}")
    assert opt.state[1]["step"] == len(grads) - 3


def test_equals_the_functional_kernel_step_by_step():
    """No torch: the class is exactly a sequence of adam_step calls with its hyperparameters."""
    params = _params(3)
    mirror = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    vmax = [np.zeros_like(p) for p in params]
    opt = adamcore.AMSGrad(params, lr=2e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.01)
    for t, grads in enumerate(_grad_stream(4, steps=25), start=1):
        opt.step(grads)
        adamcore.adam_step(mirror, grads, m, v, step=t, lr=2e-3, beta1=0.8, beta2=0.95, eps=1e-7,
                           weight_decay=0.01, amsgrad=True, max_exp_avg_sq=vmax)
    for got, exp in zip(params, mirror):
        assert_same_bits(got, exp, "AMSGrad vs adam_step")
    (plan,) = opt._engine._plans.values()
    (call,) = plan.calls  # the steps went through one held native group
    assert isinstance(call.native, adamcore.AdamGroup)
    for k in range(len(params)):
        assert_same_bits(opt.state[k]["max_exp_avg_sq"], vmax[k], "max_exp_avg_sq")


def test_hyperparameters_changed_between_steps_take_effect():
    torch = pytest.importorskip("torch")
    params = _params(5)
    grads = list(_grad_stream(6, steps=12))
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    ref = torch.optim.AdamW(tensors, lr=1e-2, fused=True)
    opt = adamcore.AdamW(params, lr=1e-2)
    for t, g in enumerate(grads):
        if t == 4:
            for group in (opt.param_groups[0], ref.param_groups[0]):
                group["lr"] = 5e-3
                group["betas"] = (0.5, 0.9)
                group["weight_decay"] = 0.3
        if t == 8:
            opt.param_groups[0]["amsgrad"] = True  # switched on mid-run: the maximum starts at zero
            ref.param_groups[0]["amsgrad"] = True
            for p in ref.param_groups[0]["params"]:
                ref.state[p]["max_exp_avg_sq"] = torch.zeros_like(p)
        opt.step(g)
        for p, gg in zip(tensors, g):
            p.grad = torch.from_numpy(gg.copy())
        ref.step()
    for got, p in zip(params, tensors):
        assert_same_bits(got, p.detach().numpy(), "after hyperparameter changes")
    with pytest.raises(ValueError, match=r"param_groups\[0\]: beta2 \(betas\[1\]\) must be in \[0, 1\)"):
        opt.param_groups[0]["betas"] = (0.9, 1.0)
        opt.step(grads[0])


def test_callable_lr_is_evaluated_at_the_step_number():
    schedule = WarmupCosine(1e-2, warmup_steps=3, total_steps=10, final_lr=1e-4)
    params = _params(7)
    mirror = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    opt = adamcore.Adam(params, lr=schedule)
    for t, grads in enumerate(_grad_stream(8, steps=12), start=1):
        opt.step(grads)
        adamcore.adam_step(mirror, grads, m, v, step=t, lr=schedule(t))
    for got, exp in zip(params, mirror):
        assert_same_bits(got, exp, "scheduled lr")
    opt.param_groups[0]["lr"] = lambda step: -1.0
    with pytest.raises(ValueError, match=r"lr\(13\) must be finite and >= 0"):
        opt.step(list(_grad_stream(9, steps=1))[0])


def test_diagnostics_are_passed_through_per_group():
    params = _params(10)
    opt = adamcore.Adam([{"params": params[:1]}, {"params": params[1:], "amsgrad": True}], lr=1e-2)
    twins = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    vmax = [np.zeros_like(p) for p in params[1:]]
    for t, grads in enumerate(_grad_stream(11, steps=30), start=1):
        stats = opt.step(grads, diagnostics=True)
        assert len(stats) == 2 and stats[0].defined == stats[1].defined == (t > 1)
        direct = [adamcore.adam_step(twins[:1], grads[:1], m[:1], v[:1], step=t, lr=1e-2, diagnostics=True),
                  adamcore.adam_step(twins[1:], grads[1:], m[1:], v[1:], step=t, lr=1e-2, amsgrad=True,
                                     max_exp_avg_sq=vmax, diagnostics=True)]
        assert [repr(s) for s in stats] == [repr(s) for s in direct]  # repr: NaN fields compare equal
    assert opt.step(list(_grad_stream(12, steps=1))[0]) is None


def test_adagrad_effective_learning_rate_never_grows():
    """AdaGrad's accumulator only grows: Γ >= 0 at every coordinate (Duchi et al.),
    while Adam on the same gradients lets some effective learning rates grow."""
    adagrad = adamcore.Adagrad(_params(20), lr=0.1)
    adam = adamcore.Adam(_params(20), lr=0.1)
    adam_negative = 0
    for grads in _grad_stream(21, steps=30):
        (a,) = adagrad.step(grads, diagnostics=True)
        assert a.negative == 0
        adam_negative += adam.step(grads, diagnostics=True)[0].negative
    assert adam_negative > 0


def test_adagrad_state_exists_from_construction():
    params = _params(13)
    opt = adamcore.Adagrad(params, initial_accumulator_value=0.25)
    assert sorted(opt.state) == [0, 1, 2]
    for k, p in enumerate(params):
        assert opt.state[k]["step"] == 0
        assert opt.state[k]["sum"].shape == p.shape and np.all(opt.state[k]["sum"] == np.float32(0.25))


def test_add_param_group_takes_defaults_and_new_indices():
    params = _params(14)
    opt = adamcore.AdamW(params[:2], lr=1e-3, weight_decay=0.5)
    opt.add_param_group({"params": [params[2]], "lr": 1e-1})
    assert opt.param_groups[1]["lr"] == 1e-1 and opt.param_groups[1]["weight_decay"] == 0.5
    grads = list(_grad_stream(15, steps=1))[0]
    before = params[2].copy()
    opt.step(grads)
    assert opt.state_dict()["param_groups"][1]["params"] == [2]
    assert not np.array_equal(before, params[2])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] and "
                                         r"param_groups\[2\]\['params'\]\[0\] overlap in memory"):
        opt.add_param_group({"params": [params[0][:1]]})


def _bad_grads(params):
    good = [np.ones_like(p) for p in params]
    yield "count", good[:-1], ValueError, "grads has 2 entries but the optimizer has 3"
    yield "dtype", [good[0].astype(np.float64)] + good[1:], TypeError, r"grads?\[0\].*float32"
    yield "strided", good[:1] + [np.ones(96, np.float32)[::2]] + good[2:], ValueError, r"grads\[1\] must be C-contiguous"
    yield "shape", good[:2] + [good[2].reshape(8, 16)], ValueError, r"grads\[2\] has shape \(8, 16\)"
    # A vector of the wrong length: named by Python's shape check or the extension's size check.
    yield "length", good[:1] + [np.ones(47, np.float32)] + good[2:], ValueError, (
        r"grads\[1\] has (shape \(47,\) but parameter|47 elements but) param_groups\[\d\]\['params'\]\[\d\]")
    yield "type", good[:2] + [[1.0] * 128], TypeError, r"grads\[2\] must be a numpy.ndarray of float32"
    yield "single array", good[0], TypeError, "wrap it in a list"


@pytest.mark.parametrize("groups", [1, 2])
def test_bad_gradients_raise_and_change_nothing(groups):
    params = _params(16)
    spec = [{"params": params}] if groups == 1 else [{"params": params[:1]}, {"params": params[1:]}]
    opt = adamcore.Adam(spec, lr=1e-2)
    opt.step(list(_grad_stream(17, steps=1))[0])
    for name, grads, error, message in _bad_grads(params):
        before = [p.copy() for p in params]
        state_before = {k: {n: np.copy(x) for n, x in s.items()} for k, s in opt.state.items()}
        with pytest.raises(error, match=message):
            opt.step(grads)
        for p, b in zip(params, before):
            assert_same_bits(p, b, f"{name}: parameter changed")
        for k, s in opt.state.items():
            assert s["step"] == 1, name
            for n, x in s.items():
                if n != "step":
                    assert_same_bits(x, state_before[k][n], f"{name}: {n} changed")


@pytest.mark.parametrize("bad", [(2, 8), (16,), (1, 16)])
def test_gradient_shapes_are_checked_when_most_parameters_are_vectors(bad):
    """Where most parameters have at most one dimension, a gradient's ndim settles its
    shape (the extension checks sizes); a matrix parameter's gradient is still checked
    in full."""
    params = _params(21, shapes=[(16,), (32,), (4, 4)]) + [np.array(0.5, np.float32)]
    opt = adamcore.AdamW(params, lr=1e-2)
    good = [np.ones_like(p) for p in params]
    opt.step(good)
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match=rf"grads\[2\] has shape \({bad[0]},{' ' + str(bad[1]) if len(bad) > 1 else ''}\)"):
        opt.step(good[:2] + [np.ones(bad, np.float32)] + good[3:])
    for p, b in zip(params, before):
        assert_same_bits(p, b, "a parameter changed")
    with pytest.raises(ValueError, match=r"grads\[3\] has shape \(1,\) but parameter .* has shape \(\)"):
        opt.step(good[:3] + [np.ones(1, np.float32)])
    opt.step(good)
    assert all(opt.state[k]["step"] == 2 for k in range(4))


@pytest.mark.parametrize("make, error, message", [
    (lambda p: adamcore.Adam(p[0]), TypeError, "single array"),
    (lambda p: adamcore.Adam([]), ValueError, "empty parameter list"),
    (lambda p: adamcore.Adam([p[0].astype(np.int32)]), TypeError, r"\['params'\]\[0\] must have dtype float32.*got int32"),
    (lambda p: adamcore.Adam([p[0].T]), ValueError, "must be C-contiguous"),
    (lambda p: adamcore.Adam([p[0], p[0]]), ValueError, "are the same memory"),
    (lambda p: adamcore.Adam([p[0][:4], p[0][2:8]]), ValueError, "overlap in memory"),
    (lambda p: adamcore.Adam(p, lr=-1.0), ValueError, "lr must be finite and >= 0"),
    (lambda p: adamcore.Adam(p, lr=math.nan), ValueError, "lr must be finite"),
    (lambda p: adamcore.Adam(p, betas=(0.9,)), TypeError, "betas must be a pair"),
    (lambda p: adamcore.Adam(p, betas=(1.0, 0.999)), ValueError, r"beta1 \(betas\[0\]\) must be in \[0, 1\)"),
    (lambda p: adamcore.AdamW(p, eps=-1e-8), ValueError, "eps must be finite and >= 0"),
    (lambda p: adamcore.AdamW(p, weight_decay="0.1"), TypeError, "weight_decay must be a real number"),
    (lambda p: adamcore.AdamW(p, amsgrad=1), TypeError, "amsgrad must be a bool"),
    (lambda p: adamcore.Adagrad(p, lr_decay=-0.1), ValueError, "lr_decay must be finite and >= 0"),
    (lambda p: adamcore.Adagrad(p, initial_accumulator_value=-1), ValueError, "initial_accumulator_value"),
    (lambda p: adamcore.Adam([{"lr": 1.0}]), ValueError, "needs a 'params' entry"),
])
def test_constructor_validation(make, error, message):
    with pytest.raises(error, match=message):
        make(_params(18))


def test_read_only_parameter_is_refused():
    frozen = _params(18)[0]
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"\['params'\]\[0\] is read-only"):
        adamcore.Adam([frozen])


def test_warmup_cosine_shape():
    s = WarmupCosine(1.0, warmup_steps=4, total_steps=14, final_lr=0.1)
    assert s(0) == 0.0
    assert [s(t) for t in range(1, 5)] == [0.25, 0.5, 0.75, 1.0]
    assert s(9) == pytest.approx(0.55)  # halfway through the decay: the mean of peak and final
    decay = [s(t) for t in range(4, 15)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert s(14) == 0.1 and s(1000) == 0.1
    assert WarmupCosine(2.0, warmup_steps=0, total_steps=1)(1) == 0.0  # straight to final_lr
    assert schedule_from_dict(s.as_dict()) == s
    assert schedule_from_dict(Constant(0.5).as_dict())(7) == 0.5
    assert "warmup_steps=4" in repr(s)


@pytest.mark.parametrize("kwargs, error", [
    ({"peak_lr": -1.0, "warmup_steps": 1, "total_steps": 2}, ValueError),
    ({"peak_lr": 1.0, "warmup_steps": 5, "total_steps": 2}, ValueError),
    ({"peak_lr": 1.0, "warmup_steps": 1.5, "total_steps": 2}, TypeError),
    ({"peak_lr": 1.0, "warmup_steps": 0, "total_steps": 0}, ValueError),
])
def test_warmup_cosine_validation(kwargs, error):
    with pytest.raises(error):
        WarmupCosine(kwargs.pop("peak_lr"), **kwargs)


def test_schedule_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        schedule_from_dict({"kind": "step"})
    with pytest.raises(ValueError, match="bad fields"):
        schedule_from_dict({"kind": "constant", "rate": 1.0})


def test_repr_lists_groups():
    opt = adamcore.Adagrad(_params(19), lr=0.5)
    text = repr(opt)
    assert text.startswith("Adagrad (") and "lr: 0.5" in text and "3 arrays" in text


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_a_stepped_optimizer_copies_and_pickles(copier):
    """The cached native groups are not part of the optimizer's state: a copy gathers
    its own from its own arrays and steps exactly like the original."""
    import copy
    import pickle

    params = _params(22)
    opt = adamcore.AMSGrad(params, lr=1e-2)
    grads = list(_grad_stream(23, steps=4))
    opt.step(grads[0])
    twin = copy.deepcopy(opt) if copier == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = twin.param_groups[0]["params"]
    assert not any(np.shares_memory(a, b) for a, b in zip(params, twin_params))
    for g in grads[1:]:
        opt.step(g)
        twin.step(g)
    for a, b in zip(params, twin_params):
        assert_same_bits(a, b, f"{copier}: parameter")
    assert twin.state[0]["step"] == opt.state[0]["step"] == 4


def test_defaults_are_torchs():
    """One source of defaults (adamcore._engine), and it says what torch.optim says."""
    import inspect

    torch = pytest.importorskip("torch")
    import adamcore.torch as act

    for ours, peer in ((adamcore.Adam, torch.optim.Adam), (adamcore.AdamW, torch.optim.AdamW),
                       (adamcore.Adagrad, torch.optim.Adagrad), (act.Adam, torch.optim.Adam),
                       (act.AdamW, torch.optim.AdamW), (act.Adagrad, torch.optim.Adagrad)):
        mine = inspect.signature(ours).parameters
        theirs = inspect.signature(peer).parameters
        for name in ("lr", "betas", "eps", "weight_decay", "amsgrad", "lr_decay",
                     "initial_accumulator_value", "maximize", "decoupled_weight_decay"):
            if name in mine and name in theirs:
                assert mine[name].default == theirs[name].default, (ours, name)
