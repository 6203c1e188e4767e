"""The step's scalar keywords take what the rest of the API takes, and refuse the rest
by name with nothing written: norm_type='inf' (grad_norm, clip_grad_norm and torch's
clip_grad_norm_ accept it) and arrays of more than zero dimensions for grad_scale and
found_inf (NumPy will not turn them into a number: the error must still name the
argument)."""

import numpy as np
import pytest

import adamcore


def _buffers(n=37, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 3).astype(np.float32)
    return p, g, np.zeros(n, np.float32), np.zeros(n, np.float32)


def _adam(buffers, **kw):
    return adamcore.adam_step(*buffers, step=1, **kw)


def _adamw_group(buffers, **kw):
    p, g, m, v = buffers
    return adamcore.AdamGroup([p], [m], [v]).step([g], step=1, decoupled=True, **kw)


def _adagrad(buffers, **kw):
    p, g, s, _ = buffers
    return adamcore.adagrad_step(p, g, s, step=1, **kw)


STEPS = [_adam, _adamw_group, _adagrad]


@pytest.mark.parametrize("step_fn", STEPS)
def test_norm_type_inf_as_a_string_is_the_infinity_norm(step_fn):
    spelled, number = _buffers(), _buffers()
    norm_spelled = step_fn(spelled, max_grad_norm=0.5, norm_type="inf")
    norm_number = step_fn(number, max_grad_norm=0.5, norm_type=float("inf"))
    assert norm_spelled == norm_number == adamcore.grad_norm([_buffers()[1]], "inf")
    for a, b in zip(spelled, number):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("step_fn", STEPS)
def test_other_strings_for_norm_type_are_refused_by_name(step_fn):
    buffers = _buffers()
    before = [b.copy() for b in buffers]
    with pytest.raises(ValueError, match="norm_type"):
        step_fn(buffers, max_grad_norm=0.5, norm_type="fro")
    for a, b in zip(buffers, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("step_fn", STEPS)
@pytest.mark.parametrize("name,value", [("grad_scale", np.array([2.0], np.float32)),
                                        ("found_inf", np.array([1.0], np.float32)),
                                        ("found_inf", np.array([0.0, 1.0]))])
def test_arrays_with_dimensions_are_refused_naming_the_argument(step_fn, name, value):
    buffers = _buffers()
    before = [b.copy() for b in buffers]
    with pytest.raises(TypeError, match=name):
        step_fn(buffers, **{name: value})
    for a, b in zip(buffers, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("step_fn", STEPS)
def test_zero_dimensional_arrays_are_numbers(step_fn):
    scaled, plain = _buffers(), _buffers()
    step_fn(scaled, grad_scale=np.array(2.0, np.float32), found_inf=np.array(0.0))
    step_fn(plain, grad_scale=2.0, found_inf=0.0)
    for a, b in zip(scaled, plain):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
