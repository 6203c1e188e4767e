"""adamcore.torch on every parameter torch's fused optimizer takes (issue 10 item 6,
issue 9 item 5): dense tensors in any memory layout (channels_last, transposed),
parameters built on the meta device and materialised later, and float64, bfloat16 and
float16 parameters (state in the parameter's dtype, as torch fused keeps it).

The peer is torch.optim.*(fused=True) on a twin model fed the same batches: torch's
fused kernel runs over a tensor's memory in memory order, computing the first
n - n % lanes elements in a vector body whose arithmetic adamcore reproduces and the
rest in a scalar tail (docs/numerics.md). Models whose tensors all have a multiple of
32 elements (a whole number of vectors for every dtype) train bit for bit; a model
with tails is compared step by step from identical state, body bitwise and tail within
tests/test_dtypes.py's bound, with its helpers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")
import adamcore.torch as act  # noqa: E402
from test_dtypes import (TAIL_BOUND_ULPS, _body, _tail_within_bound,  # noqa: E402
                         assert_same_bits, to_numpy, ulps)

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}

# name: (adamcore.torch class, torch.optim class, keyword arguments for both)
CASES = {
    "AdamW": (act.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.05}),
    "Adam-L2": (act.Adam, torch.optim.Adam, {"lr": 3e-3, "weight_decay": 1e-3}),
    "AMSGrad-maximize-beta1-0.3": (act.Adam, torch.optim.Adam,
                                   {"lr": 1e-3, "betas": (0.3, 0.99), "amsgrad": True, "maximize": True}),
    "Adagrad": (act.Adagrad, torch.optim.Adagrad, {"lr": 5e-2, "lr_decay": 1e-3, "weight_decay": 1e-3,
                                                   "initial_accumulator_value": 0.1}),
}


def _numpy(t):
    return to_numpy(t)  # a copy in logical order, bfloat16 as ml_dtypes.bfloat16


def _assert_same(ours, theirs, what):
    """Parameters and every state buffer bit for bit; state laid out like its parameter."""
    ours_params = [p for g in ours.param_groups for p in g["params"]]
    theirs_params = [p for g in theirs.param_groups for p in g["params"]]
    for k, (a, b) in enumerate(zip(ours_params, theirs_params)):
        assert a.dtype == b.dtype and a.stride() == b.stride(), what
        assert_same_bits(_numpy(a), _numpy(b), f"{what}: parameter {k}")
        sa, sb = ours.state[a], theirs.state[b]
        assert sorted(sa) == sorted(sb), what
        assert float(sa["step"]) == float(sb["step"]), what
        for name in sa:
            if name != "step":
                assert sa[name].dtype == sb[name].dtype == a.dtype, f"{what}: {name} dtype"
                assert sa[name].stride() == a.stride(), f"{what}: {name} layout"
                assert_same_bits(_numpy(sa[name]), _numpy(sb[name]), f"{what}: {name} of parameter {k}")


def _train(models_and_opts, batches, loss_fn):
    for x, y in batches:
        for model, opt in models_and_opts:
            opt.zero_grad(set_to_none=True)
            loss_fn(model, x, y).backward()
            opt.step()


# ------------------------------------------------------------------ channels_last CNN

def _cnn(seed=0, dtype=torch.float32):
    # Every tensor a multiple of 32 elements: 16*4*3*3, 16, 32*16*3*3, 32, 16*32, 16.
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 16))
    return model.to(dtype=dtype, memory_format=torch.channels_last)


def _images(steps, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, 6, 6, generator=generator).to(dtype=dtype, memory_format=torch.channels_last),
             torch.randint(0, 16, (8,), generator=generator)) for _ in range(steps)]


def _cross_entropy(model, x, y):
    return torch.nn.functional.cross_entropy(model(x).float(), y)


@pytest.mark.parametrize("case", list(CASES))
def test_channels_last_cnn_trains_bit_for_bit_like_torch_fused(case, report):
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, theirs = _cnn(), _cnn()
    weight = ours[0].weight
    assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    opt = ours_cls(ours.parameters(), **kwargs)
    ref = torch_cls(theirs.parameters(), fused=True, **kwargs)
    steps = 12
    _train([(ours, opt), (theirs, ref)], _images(steps), _cross_entropy)
    _assert_same(opt, ref, f"channels_last {case}")
    assert not torch.equal(weight, _cnn()[0].weight)
    report(f"adamcore.torch {case}: channels_last CNN ({sum(p.numel() for p in ours.parameters())} "
           f"parameters, conv weights strided {tuple(weight.stride())}), {steps} steps bitwise equal to "
           "torch fused=True (parameters and state)")


def test_strided_params_are_updated_in_place_without_copies():
    model = _cnn()
    opt = act.AdamW(model.parameters(), lr=1e-2)
    weight = model[2].weight
    address = weight.data_ptr()
    # The weight's memory, seen from outside in memory order.
    memory = weight.detach().as_strided((weight.numel(),), (1,), weight.storage_offset()).numpy()
    before = memory.copy()
    batches = _images(2)
    _train([(model, opt)], batches[:1], _cross_entropy)
    exp_avg = opt.state[weight]["exp_avg"]
    exp_avg_address = exp_avg.data_ptr()
    _train([(model, opt)], batches[1:], _cross_entropy)
    assert weight.data_ptr() == address and weight.stride() == (144, 1, 48, 16)
    assert opt.state[weight]["exp_avg"] is exp_avg and exp_avg.data_ptr() == exp_avg_address
    assert exp_avg.stride() == weight.stride()
    assert np.count_nonzero(memory != before) > 0.9 * memory.size  # the update is in that memory
    assert_same_bits(memory.reshape(32, 3, 3, 16).transpose(0, 3, 1, 2), weight.detach().numpy(),
                     "the weight is its memory")


def test_a_transposed_weight_trains_like_torch_fused():
    """Any dense layout, not only channels_last: a Linear weight stored transposed."""
    def model():
        torch.manual_seed(0)
        m = torch.nn.Linear(32, 16)
        m.weight.data = m.weight.data.t().contiguous().t()  # same values, column-major
        return m

    ours, theirs = model(), model()
    assert ours.weight.stride() == (1, 16)
    opt = act.Adam(ours.parameters(), lr=1e-2, amsgrad=True)
    ref = torch.optim.Adam(theirs.parameters(), lr=1e-2, amsgrad=True, fused=True)
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 32, generator=generator), torch.randint(0, 16, (8,), generator=generator))
               for _ in range(10)]
    _train([(ours, opt), (theirs, ref)], batches,
           lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y))
    assert ours.weight.grad.stride() == (1, 16)  # autograd lays the gradient out like its parameter
    _assert_same(opt, ref, "transposed weight")


# ------------------------------------------------------------------ refused layouts

def _unchanged(tensors, before, what):
    for t, b in zip(tensors, before):
        assert torch.equal(t, b), what


@pytest.mark.parametrize("make, message", [
    (lambda: torch.zeros(1, 8).expand(4, 8), r"\['params'\]\[0\] \(shape \(4, 8\), strides \(0, 1\)\) "
                                              "overlaps itself or leaves gaps in memory"),
    (lambda: torch.zeros(4, 16)[:, ::2], r"\['params'\]\[0\] \(shape \(4, 8\), strides \(16, 2\)\) overlaps"),
    (lambda: torch.zeros(8, 8)[:, :4], r"\['params'\]\[0\] \(shape \(8, 4\), strides \(8, 1\)\) overlaps"),
])
@pytest.mark.parametrize("cls", [act.Adam, act.Adagrad])
def test_overlapping_or_gapped_params_are_refused_at_construction(cls, make, message):
    with pytest.raises(ValueError, match=message):
        cls([torch.nn.Parameter(make())])


def _two_groups():
    good = torch.nn.Parameter(torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    bad = torch.nn.Parameter(torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    good.grad = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    return good, bad


@pytest.mark.parametrize("grad, message", [
    (lambda: torch.randn(8, 4, 3, 3),  # contiguous: not laid out like the channels_last param
     r"param_groups\[1\]\['params'\]\[0\]\.grad has strides \(36, 9, 3, 1\) but "
     r"param_groups\[1\]\['params'\]\[0\] has strides \(36, 1, 12, 4\) \(shape \(8, 4, 3, 3\)\)"),
    (lambda: torch.randn(1, 4, 3, 3).expand(8, 4, 3, 3),
     r"param_groups\[1\]\['params'\]\[0\]\.grad \(shape \(8, 4, 3, 3\), strides \(0, 9, 3, 1\)\) "
     "overlaps itself"),
])
@pytest.mark.parametrize("cls", [act.AdamW, act.Adagrad])
def test_a_gradient_laid_out_unlike_its_param_is_refused_and_nothing_is_written(cls, grad, message):
    good, bad = _two_groups()
    opt = cls([{"params": [good]}, {"params": [bad]}])
    bad.grad = grad()
    before = [good.detach().clone(), bad.detach().clone()]
    state_before = {p: {name: value.clone() for name, value in opt.state[p].items()}
                    for p in (good, bad) if p in opt.state}
    with pytest.raises(ValueError, match=message):
        opt.step()
    _unchanged([good, bad], before, "params")
    for p in (good, bad):  # AdaGrad's eager state untouched, Adam's not created
        assert sorted(opt.state.get(p, {})) == sorted(state_before.get(p, {}))
        for name, value in opt.state.get(p, {}).items():
            assert torch.equal(value, state_before[p][name])


def test_a_state_buffer_laid_out_unlike_its_param_is_refused_and_nothing_is_written():
    good, bad = _two_groups()
    bad.grad = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    opt = act.Adam([{"params": [good]}, {"params": [bad]}])
    opt.step()
    opt.state[bad]["exp_avg_sq"] = opt.state[bad]["exp_avg_sq"].contiguous()  # same values, other layout
    before = [good.detach().clone(), bad.detach().clone(), opt.state[good]["exp_avg"].clone()]
    with pytest.raises(ValueError, match=r"state\[param_groups\[1\]\['params'\]\[0\]\]\['exp_avg_sq'\] has "
                                         r"strides \(36, 9, 3, 1\) but param_groups\[1\]\['params'\]\[0\] "
                                         r"has strides \(36, 1, 12, 4\)"):
        opt.step()
    _unchanged([good, bad, opt.state[good]["exp_avg"]], before, "nothing written")
    assert float(opt.state[good]["step"]) == 1.0
    # Laid out like the parameter again, the step goes on.
    opt.state[bad]["exp_avg_sq"] = opt.state[bad]["exp_avg_sq"].contiguous(memory_format=torch.channels_last)
    opt.step()
    assert float(opt.state[bad]["step"]) == 2.0


def test_torch_fused_itself_gets_mismatched_layouts_wrong():
    """Why the refusal: torch's fused kernel pairs elements by memory position too, and
    with a contiguous gradient on a channels_last parameter it silently updates each
    element with another element's gradient."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    q = torch.nn.Parameter(p.detach().contiguous())
    g = torch.randn(2, 3, 4, 5)
    for param in (p, q):
        param.grad = g.clone()
        torch.optim.Adam([param], lr=0.1, fused=True).step()
    assert not torch.equal(p.detach(), q.detach())


# ------------------------------------------------------------------ meta device

@pytest.fixture
def swap_on_conversion():
    """to_empty() keeps the parameter objects (the optimizer's) only when modules swap
    tensors on conversion; by default it makes new Parameters, which no optimizer made
    before can know (torch's own included)."""
    saved = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(saved)


def _meta_model():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 16))
    return model


def _materialise(model):
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def _mlp_batches(steps):
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 32, generator=generator), torch.randint(0, 16, (16,), generator=generator))
            for _ in range(steps)]


def _mlp_loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("case", ["AdamW", "Adagrad"])
def test_built_on_meta_then_materialised_trains_like_torch_fused(case, swap_on_conversion):
    ours_cls, torch_cls, kwargs = CASES[case]
    model = _meta_model()
    params = list(model.parameters())
    opt = ours_cls(model.parameters(), **kwargs)  # on meta: no memory to check yet
    assert all(p.device.type == "meta" for p in params) and not opt.state
    _materialise(model)
    assert all(a is b and a.device.type == "cpu" for a, b in zip(params, model.parameters()))
    # The peer: torch fused, built after materialising (torch's AdaGrad made on meta
    # keeps a meta 'sum' and fails at its first step).
    twin = _meta_model()
    _materialise(twin)
    ref = torch_cls(twin.parameters(), fused=True, **kwargs)
    _train([(model, opt), (twin, ref)], _mlp_batches(10), _mlp_loss)
    _assert_same(opt, ref, f"meta {case}")


def test_torch_fused_adam_on_meta_gives_the_same_bits(swap_on_conversion):
    """torch's own Adam made on meta (its state is created at the first step) and
    adamcore's, made the same way, agree bit for bit."""
    models = [_meta_model(), _meta_model()]
    opts = [act.Adam(models[0].parameters(), lr=1e-2, amsgrad=True),
            torch.optim.Adam(models[1].parameters(), lr=1e-2, amsgrad=True, fused=True)]
    for model in models:
        _materialise(model)
    _train(list(zip(models, opts)), _mlp_batches(10), _mlp_loss)
    _assert_same(opts[0], opts[1], "meta Adam vs torch fused on meta")


def test_a_meta_param_with_a_gradient_at_step_time_is_refused():
    p = torch.nn.Parameter(torch.empty(4, device="meta"))
    opt = act.Adam([p])
    p.grad = torch.empty(4, device="meta")
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\] is on device meta"):
        opt.step()
    assert not opt.state


# ------------------------------------------------------------------ dtypes

def _mlp(dtype, sizes=(32, 64, 32), seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


def _batches(features, classes, steps, dtype, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, features, generator=generator).to(dtype),
             torch.randint(0, classes, (32,), generator=generator)) for _ in range(steps)]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype_name", ["float64", "bfloat16", "float16"])
def test_other_dtypes_train_bit_for_bit_like_torch_fused(dtype_name, case, report):
    dtype = DTYPES[dtype_name]
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, theirs = _mlp(dtype), _mlp(dtype)  # 32*64, 64, 64*32, 32: whole vectors for every dtype
    opt = ours_cls(ours.parameters(), **kwargs)
    ref = torch_cls(theirs.parameters(), fused=True, **kwargs)
    steps = 60
    _train([(ours, opt), (theirs, ref)], _batches(32, 32, steps, dtype), _cross_entropy)
    _assert_same(opt, ref, f"{dtype_name} {case}")
    assert not torch.equal(ours[0].weight, _mlp(dtype)[0].weight)
    report(f"adamcore.torch {case} {dtype_name}: {steps} steps of a 4,192-parameter MLP bitwise equal to "
           "torch fused=True (parameters and state in the parameter's dtype)")


@pytest.mark.parametrize("dtype_name", ["float64", "bfloat16", "float16"])
def test_16_bit_and_float64_params_are_updated_in_place_channels_last(dtype_name):
    dtype = DTYPES[dtype_name]
    ours, theirs = _cnn(dtype=dtype), _cnn(dtype=dtype)
    opt = act.AdamW(ours.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, fused=True)
    addresses = [p.data_ptr() for p in ours.parameters()]
    _train([(ours, opt), (theirs, ref)], _images(6, dtype), _cross_entropy)
    assert [p.data_ptr() for p in ours.parameters()] == addresses
    _assert_same(opt, ref, f"channels_last {dtype_name}")


def test_a_group_may_mix_dtypes_as_torch_fused_does():
    """One native call per dtype of a group (torch fused groups by dtype too)."""
    def model():
        m = _mlp(torch.float32)
        m[2].to(torch.bfloat16)  # the last layer in bfloat16, the first in float32
        return m

    def loss(m, x, y):
        return torch.nn.functional.cross_entropy(m[2](m[1](m[0](x)).to(torch.bfloat16)).float(), y)

    ours, theirs = model(), model()
    opt = act.AdamW(ours.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, fused=True)
    _train([(ours, opt), (theirs, ref)], _batches(32, 32, 20, torch.float32), loss)
    assert {p.dtype for p in ours.parameters()} == {torch.float32, torch.bfloat16}
    _assert_same(opt, ref, "float32 and bfloat16 in one group")


def test_params_of_two_dtypes_sharing_memory_are_refused():
    memory = torch.zeros(64)
    a = torch.nn.Parameter(memory[:32])
    b = torch.nn.Parameter(memory.view(torch.bfloat16)[:16])
    with pytest.raises(ValueError, match="overlaps .* in memory"):
        act.Adam([a, b])


def _copy_from(ours_model, ours_opt, theirs_model, theirs_opt):
    with torch.no_grad():
        for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
            a.copy_(b)
    ours_opt.load_state_dict(copy.deepcopy(theirs_opt.state_dict()))


@pytest.mark.parametrize("case", ["AdamW", "AMSGrad-maximize-beta1-0.3", "Adagrad"])
@pytest.mark.parametrize("dtype_name", ["float64", "bfloat16", "float16"])
def test_tails_per_step_from_identical_state(dtype_name, case, report):
    """A model with tails (600, 30, 300, 10 elements): every step starts from torch's
    parameters and state; the body is bitwise, the tail within test_dtypes' bound."""
    dtype = DTYPES[dtype_name]
    ours_cls, torch_cls, kwargs = CASES[case]
    if case == "Adagrad":  # test_dtypes' tail case: no weight decay (see TAIL_BOUND_ULPS there)
        kwargs = {"lr": 5e-2, "lr_decay": 0.01, "maximize": True}
    sizes = (20, 30, 10)
    ours, theirs = _mlp(dtype, sizes), _mlp(dtype, sizes)
    opt = ours_cls(ours.parameters(), **kwargs)
    ref = torch_cls(theirs.parameters(), fused=True, **kwargs)
    loose = case == "Adagrad" and dtype.itemsize == 2
    worst = 0
    for x, y in _batches(20, 10, 40, dtype):
        _copy_from(ours, opt, theirs, ref)
        theirs.zero_grad(set_to_none=True)
        _cross_entropy(theirs, x, y).backward()
        before = {}
        for a, b in zip(ours.parameters(), theirs.parameters()):
            a.grad = b.grad.clone()
            before[b] = [_numpy(b)] + [_numpy(v) for k, v in ref.state[b].items() if k != "step"]
        opt.step()
        ref.step()
        for k, (a, b) in enumerate(zip(ours.parameters(), theirs.parameters())):
            pairs = [(_numpy(a), _numpy(b))] + [(_numpy(opt.state[a][name]), _numpy(v))
                                                for name, v in ref.state[b].items() if name != "step"]
            for (mine, peer), old in zip(pairs, before[b]):
                mine, peer, old = mine.ravel(), peer.ravel(), old.ravel()
                body = _body(mine.size, mine.dtype)
                assert_same_bits(mine[:body], peer[:body], f"{dtype_name} {case} tensor {k} body")
                worst = max(worst, int(ulps(mine[body:], peer[body:]).max(initial=0)))
                assert _tail_within_bound(mine[body:], peer[body:], old[body:], loose).all(), \
                    f"{dtype_name} {case} tensor {k}: tail {ulps(mine[body:], peer[body:]).max()} ulp from torch"
    report(f"adamcore.torch {case} {dtype_name}, 40 steps from identical state: bodies bitwise, "
           f"torch's scalar tail at most {worst} ulp away (bound {TAIL_BOUND_ULPS} ulp"
           f"{' + 2^-6 of the change' if loose else ''})")


@pytest.mark.parametrize("direction", ["torch->adamcore", "adamcore->torch"])
@pytest.mark.parametrize("case", ["AdamW", "AMSGrad-maximize-beta1-0.3", "Adagrad"])
@pytest.mark.parametrize("dtype_name", ["float64", "bfloat16", "float16"])
def test_state_dict_moves_both_ways(dtype_name, case, direction):
    dtype = DTYPES[dtype_name]
    ours_cls, torch_cls, kwargs = CASES[case]
    make = {"torch->adamcore": (lambda p: torch_cls(p, fused=True, **kwargs), lambda p: ours_cls(p)),
            "adamcore->torch": (lambda p: ours_cls(p, **kwargs), lambda p: torch_cls(p, fused=True))}
    first_make, second_make = make[direction]
    data = _batches(32, 32, 12, dtype)
    ref_model = _mlp(dtype)
    ref = first_make(ref_model.parameters())
    _train([(ref_model, ref)], data, _cross_entropy)
    model = _mlp(dtype)
    first = first_make(model.parameters())
    _train([(model, first)], data[:6], _cross_entropy)
    second = second_make(model.parameters())
    second.load_state_dict(first.state_dict())
    _train([(model, second)], data[6:], _cross_entropy)
    _assert_same(second, ref, f"{dtype_name} {case} {direction}")
