"""A step that raises leaves everything as it was: no state created, no step count
incremented, no parameter or buffer written, in any group (the project's standard:
validate everything before touching anything). For every optimizer class: adamcore's
NumPy Adam/AdamW/AMSGrad/Adagrad/SGD/Lion and the adamcore.torch drop-ins."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import adamcore

F32 = np.float32


def snapshot_numpy(opt, params):
    """Everything a NumPy optimizer's step could write, copied."""
    return ([p.copy() for p in params],
            {i: {k: np.array(v, copy=True) for k, v in s.items()} for i, s in opt.state.items()})


def assert_numpy_unchanged(opt, params, before):
    want_params, want_state = before
    for p, w in zip(params, want_params):
        assert p.tobytes() == w.tobytes()
    now = {i: s for i, s in opt.state.items() if s}
    assert set(now) == {i for i, s in want_state.items() if s}
    for i, entries in want_state.items():
        assert set(opt.state[i]) == set(entries)
        for key, value in entries.items():
            assert np.asarray(opt.state[i][key]).tobytes() == value.tobytes(), (i, key)


def numpy_optimizer(name, groups):
    if name == "SGD":
        return adamcore.SGD(groups, lr=0.1, momentum=0.9)
    if name == "Lion":
        return adamcore.Lion(groups, lr=1e-2)
    return getattr(adamcore, name)(groups, lr=1e-2)


NUMPY_CLASSES = ["Adam", "AdamW", "AMSGrad", "Adagrad", "SGD", "Lion"]


@pytest.mark.parametrize("name", NUMPY_CLASSES)
def test_numpy_bad_group_setting_in_a_later_group_writes_nothing(name):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(9).astype(F32) for _ in range(3)]
    opt = numpy_optimizer(name, [{"params": params[:2]}, {"params": params[2:]}])
    grads = [rng.standard_normal(9).astype(F32) for _ in params]
    opt.step(grads)  # every parameter has state now
    opt.step([grads[0], None, grads[2]])  # and params[1] is a step behind (SGD: buffer kept)
    before = snapshot_numpy(opt, params)
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step(grads)
    assert_numpy_unchanged(opt, params, before)


@pytest.mark.parametrize("name", NUMPY_CLASSES)
def test_numpy_bad_grad_of_a_new_parameter_writes_nothing(name):
    """One parameter with state, one without: a bad grad for the new one must not let the
    other be updated first, nor leave state for the new one."""
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(9).astype(F32) for _ in range(2)]
    opt = numpy_optimizer(name, [{"params": params}])
    opt.step([rng.standard_normal(9).astype(F32), None])
    before = snapshot_numpy(opt, params)
    bad = rng.standard_normal(9)  # float64: not the param's dtype
    with pytest.raises(TypeError, match="dtype"):
        opt.step([rng.standard_normal(9).astype(F32), bad])
    assert_numpy_unchanged(opt, params, before)


# ---------------------------------------------------------------- adamcore.torch

def torch_optimizer(torch_module, name, groups):
    if name == "SGD":
        return torch_module.SGD(groups, lr=0.1, momentum=0.9)
    if name == "Lion":
        return torch_module.Lion(groups, lr=1e-2)
    return getattr(torch_module, name)(groups, lr=1e-2)


TORCH_CLASSES = ["Adam", "AdamW", "Adagrad", "SGD", "Lion"]


def snapshot_torch(opt, params):
    return ([p.detach().clone() for p in params],
            {id(p): {k: (v.clone() if hasattr(v, "clone") else copy.copy(v))
                     for k, v in opt.state[p].items()} for p in params if p in opt.state})


def assert_torch_unchanged(torch, opt, params, before):
    want_params, want_state = before
    for p, w in zip(params, want_params):
        assert torch.equal(p.detach(), w)
    assert {id(p) for p in params if opt.state.get(p)} == set(want_state)
    for p in params:
        for key, value in want_state.get(id(p), {}).items():
            now = opt.state[p][key]
            if hasattr(value, "clone"):
                assert torch.equal(now, value), key
            else:
                assert now == value, key


@pytest.mark.parametrize("name", TORCH_CLASSES)
def test_torch_first_step_with_a_bad_setting_creates_no_state(name):
    """The reported bug: adamcore.torch.Lion created exp_avg, then raised."""
    torch = pytest.importorskip("torch")
    import adamcore.torch as ac_torch

    w = torch.nn.Parameter(torch.randn(9))
    opt = torch_optimizer(ac_torch, name, [w])
    opt.param_groups[0]["lr"] = -1.0
    w.grad = torch.randn(9)
    before = snapshot_torch(opt, [w])
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert_torch_unchanged(torch, opt, [w], before)


@pytest.mark.parametrize("name", TORCH_CLASSES)
def test_torch_bad_setting_in_a_later_group_writes_nothing(name):
    torch = pytest.importorskip("torch")
    import adamcore.torch as ac_torch

    params = [torch.nn.Parameter(torch.randn(9)) for _ in range(3)]
    opt = torch_optimizer(ac_torch, name, [{"params": params[:2]}, {"params": params[2:]}])
    for p in params:
        p.grad = torch.randn(9)
    opt.step()
    params[1].grad = None
    opt.step()
    params[1].grad = torch.randn(9)
    before = snapshot_torch(opt, params)
    opt.param_groups[1]["weight_decay"] = -1.0
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    assert_torch_unchanged(torch, opt, params, before)


@pytest.mark.parametrize("name", TORCH_CLASSES)
def test_torch_bad_grad_of_a_new_parameter_writes_nothing(name):
    """A parameter with state and one at its first step, the latter's grad not usable
    (a stepped view: adamcore never copies): neither is written, no state is created."""
    torch = pytest.importorskip("torch")
    import adamcore.torch as ac_torch

    params = [torch.nn.Parameter(torch.randn(9)) for _ in range(2)]
    opt = torch_optimizer(ac_torch, name, params)
    params[0].grad = torch.randn(9)
    opt.step()
    params[0].grad = torch.randn(9)
    params[1].grad = torch.randn(18)[::2]
    before = snapshot_torch(opt, params)
    with pytest.raises(ValueError, match=r"\[1\]\.grad"):
        opt.step()
    assert_torch_unchanged(torch, opt, params, before)
