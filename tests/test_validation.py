"""Bad input raises TypeError/ValueError naming the argument, and writes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamcore
from _util import f32, snapshot

N = 64


def _buffers(amsgrad=False):
    rng = np.random.default_rng(0)
    arrays = {
        "param": f32(rng.standard_normal(N)),
        "grad": f32(rng.standard_normal(N)),
        "exp_avg": f32(rng.standard_normal(N)),
        "exp_avg_sq": f32(rng.random(N)),
    }
    if amsgrad:
        arrays["max_exp_avg_sq"] = f32(rng.random(N))
    return arrays


def _call_adam(fn, arrays, **kw):
    a = dict(arrays)
    vmax = a.pop("max_exp_avg_sq", None)
    kw.setdefault("step", 1)
    kw.setdefault("amsgrad", vmax is not None)
    return fn(a["param"], a["grad"], a["exp_avg"], a["exp_avg_sq"], max_exp_avg_sq=vmax, **kw)


def _expect_error(exc, match, fn, arrays, keep=(), **kw):
    """Calls fn; requires exc mentioning `match`; requires every buffer unchanged."""
    watched = list(arrays.values()) + list(keep)
    before = snapshot(*watched)
    with pytest.raises(exc, match=match):
        fn(arrays, **kw)
    assert snapshot(*watched) == before, "a buffer was written despite the error"


ADAM_FUNCS = [pytest.param(adamcore.adam_step, id="adam"),
              pytest.param(adamcore.adamw_step, id="adamw")]


@pytest.mark.parametrize("fn", ADAM_FUNCS)
@pytest.mark.parametrize("name", ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64])
def test_wrong_dtype(fn, name, dtype):
    if name == "grad" and dtype == np.float16:
        pytest.skip("float32 params with float16 grads is an accepted layout (tests/test_dtypes.py)")
    arrays = _buffers(amsgrad=True)
    original = arrays[name]
    arrays[name] = original.astype(dtype)
    _expect_error(TypeError, name, lambda a, **kw: _call_adam(fn, a, **kw), arrays,
                  keep=[original])


@pytest.mark.parametrize("name", ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
def test_byteswapped_float32_rejected(name):
    arrays = _buffers(amsgrad=True)
    arrays[name] = arrays[name].astype(">f4")
    _expect_error(TypeError, name, lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw), arrays)


@pytest.mark.parametrize("name", ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
@pytest.mark.parametrize("view", ["strided", "reversed", "fortran-2d"])
def test_non_contiguous_views(name, view):
    arrays = _buffers(amsgrad=True)
    backing = f32(np.arange(2 * N))
    if view == "strided":
        arrays[name] = backing[::2]
    elif view == "reversed":
        arrays[name] = backing[:N][::-1]
    else:
        arrays[name] = np.asfortranarray(backing[:N].reshape(8, 8))
        for other in arrays:
            if other != name:
                arrays[other] = arrays[other].reshape(8, 8)
    _expect_error(ValueError, name, lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw),
                  arrays, keep=[backing])


@pytest.mark.parametrize("name", ["param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
def test_read_only_outputs(name):
    arrays = _buffers(amsgrad=True)
    arrays[name].flags.writeable = False
    _expect_error(ValueError, f"{name} is read-only",
                  lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw), arrays)


def test_read_only_grad_is_fine():
    arrays = _buffers()
    arrays["grad"].flags.writeable = False
    before = arrays["param"].copy()
    _call_adam(adamcore.adam_step, arrays)
    assert not np.array_equal(before, arrays["param"])


@pytest.mark.parametrize("name", ["grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
def test_size_mismatch(name):
    arrays = _buffers(amsgrad=True)
    arrays[name] = f32(np.ones(N + 1))
    _expect_error(ValueError, name, lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw), arrays)


@pytest.mark.parametrize("first,second", [("param", "grad"), ("exp_avg", "exp_avg_sq"),
                                          ("param", "max_exp_avg_sq"), ("grad", "exp_avg")])
def test_same_memory_twice(first, second):
    arrays = _buffers(amsgrad=True)
    arrays[second] = arrays[first]
    _expect_error(ValueError, "same memory",
                  lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw), arrays)


def test_overlapping_views():
    backing = f32(np.random.default_rng(1).random(2 * N))
    arrays = _buffers()
    arrays["exp_avg"] = backing[:N]
    arrays["exp_avg_sq"] = backing[N // 2: N // 2 + N]
    _expect_error(ValueError, "exp_avg.*overlap",
                  lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw), arrays, keep=[backing])


def test_amsgrad_buffer_required_and_not_extra():
    arrays = _buffers(amsgrad=True)
    vmax = arrays.pop("max_exp_avg_sq")
    _expect_error(ValueError, "max_exp_avg_sq is required",
                  lambda a, **kw: _call_adam(adamcore.adam_step, a, amsgrad=True, **kw), arrays)
    arrays["max_exp_avg_sq"] = vmax
    _expect_error(ValueError, "max_exp_avg_sq was given",
                  lambda a, **kw: _call_adam(adamcore.adam_step, a, amsgrad=False, **kw), arrays)


BAD_ADAM_HYPER = [
    ("step", 0), ("step", -3),
    ("lr", -1e-3), ("lr", math.nan), ("lr", math.inf),
    ("beta1", -0.1), ("beta1", 1.0), ("beta1", math.nan),
    ("beta2", 1.0), ("beta2", 1.5), ("beta2", -math.inf),
    ("eps", -1e-8), ("eps", math.nan), ("eps", math.inf),
    ("weight_decay", -0.01), ("weight_decay", math.nan), ("weight_decay", math.inf),
    ("prev_lr", -1.0), ("prev_lr", math.nan),
]


@pytest.mark.parametrize("fn", ADAM_FUNCS)
@pytest.mark.parametrize("name,value", BAD_ADAM_HYPER)
def test_bad_adam_hyperparameters(fn, name, value):
    arrays = _buffers(amsgrad=True)
    _expect_error(ValueError, name, lambda a, **kw: _call_adam(fn, a, **kw), arrays,
                  **{name: value})


BAD_ADAGRAD_HYPER = [
    ("step", 0), ("lr", -1.0), ("lr", math.nan), ("lr_decay", -0.1), ("lr_decay", math.inf),
    ("weight_decay", -1.0), ("eps", -1.0), ("eps", math.nan), ("prev_lr", math.inf),
]


def _call_adagrad(arrays, **kw):
    kw.setdefault("step", 1)
    return adamcore.adagrad_step(arrays["param"], arrays["grad"], arrays["state_sum"], **kw)


def _adagrad_buffers():
    rng = np.random.default_rng(2)
    return {"param": f32(rng.standard_normal(N)), "grad": f32(rng.standard_normal(N)),
            "state_sum": f32(rng.random(N))}


@pytest.mark.parametrize("name,value", BAD_ADAGRAD_HYPER)
def test_bad_adagrad_hyperparameters(name, value):
    _expect_error(ValueError, name, _call_adagrad, _adagrad_buffers(), **{name: value})


@pytest.mark.parametrize("name", ["param", "grad", "state_sum"])
def test_adagrad_buffers_checked(name):
    arrays = _adagrad_buffers()
    arrays[name] = arrays[name].astype(np.float64)
    _expect_error(TypeError, name, _call_adagrad, arrays)
    arrays = _adagrad_buffers()
    arrays[name] = f32(np.ones(N + 1)) if name != "param" else f32(np.ones(N - 1))
    _expect_error(ValueError, "elements", _call_adagrad, arrays)
    arrays = _adagrad_buffers()
    arrays["state_sum" if name != "state_sum" else "param"] = arrays[name]
    _expect_error(ValueError, "same memory", _call_adagrad, arrays)


def test_not_an_array():
    arrays = _buffers()
    arrays["grad"] = "not an array"
    _expect_error(TypeError, "grad must be a numpy.ndarray",
                  lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw), arrays)
    arrays["grad"] = [0.0] * N  # a list where the other arguments are single arrays
    _expect_error(TypeError, "grad must be an array like param",
                  lambda a, **kw: _call_adam(adamcore.adam_step, a, **kw), arrays)


def test_list_form_checks_every_tensor_before_writing():
    rng = np.random.default_rng(3)
    params = [f32(rng.standard_normal(n)) for n in (5, 17, 33)]
    grads = [f32(rng.standard_normal(n)) for n in (5, 17, 33)]
    ms = [np.zeros(n, np.float32) for n in (5, 17, 33)]
    vs = [np.zeros(n, np.float32) for n in (5, 17, 33)]
    vs[2] = vs[2].astype(np.float64)  # the last tensor is bad
    before = snapshot(*params, *ms)
    with pytest.raises(TypeError, match=r"exp_avg_sq\[2\]"):
        adamcore.adam_step(params, grads, ms, vs, step=1)
    assert snapshot(*params, *ms) == before
    vs[2] = np.zeros(33, np.float32)
    with pytest.raises(ValueError, match=r"exp_avg has 2 arrays"):
        adamcore.adam_step(params, grads, ms[:2], vs, step=1)
    with pytest.raises(ValueError, match=r"(grad\[1\] and exp_avg\[1\]|exp_avg\[1\] and "
                                         r"grad\[1\]) are the same memory"):
        adamcore.adam_step(params, [grads[0], ms[1], grads[2]], ms, vs, step=1)
    assert snapshot(*params, *ms) == before


def test_group_checks_grads_each_step():
    rng = np.random.default_rng(4)
    params = [f32(rng.standard_normal(n)) for n in (8, 40)]
    ms = [np.zeros(n, np.float32) for n in (8, 40)]
    vs = [np.zeros(n, np.float32) for n in (8, 40)]
    group = adamcore._core.AdamGroup(params, ms, vs)
    grads = [f32(rng.standard_normal(n)) for n in (8, 40)]
    before = snapshot(*params, *ms, *vs)
    for bad, exc, match in (([grads[0]], ValueError, "grads has 1 arrays"),
                            ([grads[0], grads[1].astype(np.float64)], TypeError, r"grads\[1\]"),
                            ([grads[0], vs[1]], ValueError, r"grads\[1\] and exp_avg_sqs\[1\]"),
                            ([grads[0], grads[1][:39]], ValueError, r"grads\[1\] has 39")):
        with pytest.raises(exc, match=match):
            group.step(bad, step=1)
        assert snapshot(*params, *ms, *vs) == before
    with pytest.raises(ValueError, match="beta2"):
        group.step(grads, step=1, beta2=1.0)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] and exp_avg_sqs\[0\]"):
        adamcore._core.AdamGroup(params, ms, [ms[0], vs[1]])
    group.step(grads, step=1)
    assert snapshot(*params) != before[:2]


@pytest.mark.parametrize("kwargs,match", [
    ({"step": 1.5}, "step must be an integer"),
    ({"step": True}, "step must be an integer"),
    ({"step": 1, "lr": "0.1"}, "lr must be a real number"),
    ({"step": 1, "maximize": "yes"}, "maximize must be a bool"),
    ({"step": 1, "betas": (0.9, 0.99)}, "unexpected keyword argument 'betas'"),
    ({}, "missing required argument 'step'"),
])
def test_argument_errors_name_the_argument(kwargs, match):
    arrays = _buffers()
    before = snapshot(*arrays.values())
    with pytest.raises(TypeError, match=match):
        adamcore.adam_step(arrays["param"], arrays["grad"], arrays["exp_avg"],
                           arrays["exp_avg_sq"], **kwargs)
    with pytest.raises(TypeError, match="positional"):
        adamcore.adam_step(arrays["param"], arrays["grad"], arrays["exp_avg"],
                           arrays["exp_avg_sq"], 1)
    with pytest.raises(TypeError, match="multiple values for argument 'grad'"):
        adamcore.adam_step(arrays["param"], arrays["grad"], arrays["exp_avg"],
                           arrays["exp_avg_sq"], grad=arrays["grad"], step=1)
    assert snapshot(*arrays.values()) == before


def test_numpy_scalars_are_accepted_as_hyperparameters():
    arrays = _buffers(amsgrad=True)
    want = {k: a.copy() for k, a in arrays.items()}
    adamcore.adam_step(want["param"], want["grad"], want["exp_avg"], want["exp_avg_sq"],
                       step=3, lr=0.01, beta1=0.8, amsgrad=True,
                       max_exp_avg_sq=want["max_exp_avg_sq"])
    adamcore.adam_step(arrays["param"], arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"],
                       step=np.int64(3), lr=np.float64(0.01), beta1=np.float64(0.8),
                       amsgrad=np.bool_(True), max_exp_avg_sq=arrays["max_exp_avg_sq"])
    for key in arrays:
        assert arrays[key].tobytes() == want[key].tobytes(), key
