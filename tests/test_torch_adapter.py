"""adamcore.torch: torch.optim optimizers running adamcore's kernels.

The peer is torch.optim's fused CPU optimizer on a twin of the same model fed the
same batches. torch computes each tensor's first n - n % 16 elements in a vector body
whose arithmetic adamcore reproduces, and the last n % 16 in a scalar tail that can
round exp_avg_sq differently by 1 ulp. So: a model whose tensors all have multiples
of 16 elements must train bit for bit identically for many steps; a model with tails
is compared step by step from identical state (body bitwise, tail within 1 ulp).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from _util import assert_same_bits
from adamcore.oracle import ulp_distance

torch = pytest.importorskip("torch")
import adamcore.torch as act  # noqa: E402  (after the skip: this module needs torch)
from adamcore import _engine  # noqa: E402
from adamcore.schedule import WarmupCosine  # noqa: E402

BATCH = 64


def _model(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def _data(features, classes, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, features, generator=generator),
             torch.randint(0, classes, (BATCH,), generator=generator)) for _ in range(steps)]


def _backward(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach().item()


# Every tensor a multiple of 16 elements: 32*64, 64, 64*48, 48, 48*16, 16.
ALIGNED = (32, 64, 48, 16)

# name: (adamcore.torch class, torch.optim class, keyword arguments for both)
CASES = {
    "AdamW": (act.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.05}),
    "Adam-L2-amsgrad": (act.Adam, torch.optim.Adam, {"lr": 3e-3, "weight_decay": 1e-3, "amsgrad": True}),
    "Adam-maximize-beta1-0.3": (act.Adam, torch.optim.Adam, {"lr": 1e-3, "betas": (0.3, 0.99),
                                                             "maximize": True}),
    "AdamW-decoupled-via-Adam": (act.Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.1,
                                                              "decoupled_weight_decay": True}),
    "Adagrad": (act.Adagrad, torch.optim.Adagrad, {"lr": 5e-2, "lr_decay": 1e-3, "weight_decay": 1e-3,
                                                   "initial_accumulator_value": 0.1}),
}


def _assert_models_equal(ours, theirs, what):
    for k, (a, b) in enumerate(zip(ours.parameters(), theirs.parameters())):
        assert_same_bits(a.detach().numpy(), b.detach().numpy(), f"{what}: parameter {k}")


def _assert_states_equal(ours, theirs, what):
    for k, (a, b) in enumerate(zip(ours.state_dict()["state"].values(),
                                   theirs.state_dict()["state"].values())):
        assert sorted(a) == sorted(b), what
        assert float(a["step"]) == float(b["step"]), what
        for name in a:
            if name != "step":
                assert_same_bits(a[name].numpy(), b[name].numpy(), f"{what}: {name} of parameter {k}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_trains_a_model_bit_for_bit_like_torch_fused(case, report):
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, theirs = _model(ALIGNED), _model(ALIGNED)
    opt = ours_cls(ours.parameters(), **kwargs)
    ref = torch_cls(theirs.parameters(), fused=True, **kwargs)
    steps = 80
    for x, y in _data(ALIGNED[0], ALIGNED[-1], steps):
        loss_ours = _backward(ours, x, y)
        loss_theirs = _backward(theirs, x, y)
        assert loss_ours == loss_theirs
        opt.step()
        ref.step()
    _assert_models_equal(ours, theirs, case)
    _assert_states_equal(opt, ref, case)
    assert any(not torch.equal(a.detach(), b.detach())
               for a, b in zip(ours.parameters(), _model(ALIGNED).parameters()))
    report(f"adamcore.torch {case}: {steps} steps of a {sum(p.numel() for p in ours.parameters())}-parameter "
           "MLP bitwise equal to torch fused=True (parameters and state)")


def test_without_cached_plans(monkeypatch):
    """Every step gathering its state and native groups afresh gives the same bits."""
    monkeypatch.setattr(_engine.Plan, "matches", lambda *args: False)
    ours, theirs = _model(ALIGNED), _model(ALIGNED)
    opt = act.AdamW(ours.parameters(), lr=1e-2, amsgrad=True)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, amsgrad=True, fused=True)
    for x, y in _data(ALIGNED[0], ALIGNED[-1], 20):
        for model, o in ((ours, opt), (theirs, ref)):
            _backward(model, x, y)
            o.step()
    _assert_models_equal(ours, theirs, "rebuilt every step")


# Tensors of 600, 30, 300 and 10 elements: tails of 8, 14, 12 and 10 elements.
UNALIGNED = (20, 30, 10)


def _torch_vector_body(torch_cls, kwargs, param, grad, state):
    """What torch's fused vector body computes for a few elements (a tensor's tail):
    the elements placed at the front of a 16-element tensor, zeros behind them (a zero
    gradient on zero state moves nothing), one step."""
    count = param.numel()

    def padded(values):
        return torch.cat([values.detach().reshape(-1), torch.zeros(16 - count)])

    p = torch.nn.Parameter(padded(param))
    opt = torch_cls([p], fused=True, **kwargs)
    if state:  # else torch creates it, as before a first step
        opt.state[p] = {name: value.clone() if name == "step" else padded(value)
                        for name, value in state.items()}
    p.grad = padded(grad)
    opt.step()
    return {"param": p.detach()[:count].numpy(),
            **{name: value[:count].numpy() for name, value in opt.state[p].items() if name != "step"}}


@pytest.mark.parametrize("case", ["AdamW", "Adam-L2-amsgrad", "Adagrad"])
def test_tails_follow_torchs_vector_body_per_step_from_identical_state(case, report):
    """Every element, the last n % 16 of a tensor included, is computed with the
    arithmetic of torch's vector body: bitwise equal to torch's body elements, and to
    what that body gives for the tail elements. torch's own scalar tail rounds
    exp_avg_sq differently; how far it lands is measured and reported, not asserted
    (a parameter that an update nearly cancels can land several ulps away)."""
    ours_cls, torch_cls, kwargs = CASES[case]
    theirs = _model(UNALIGNED)
    ref = torch_cls(theirs.parameters(), fused=True, **kwargs)
    ours = _model(UNALIGNED)
    opt = ours_cls(ours.parameters(), **kwargs)
    tail_elements = tail_differing = 0
    worst = {}
    for x, y in _data(UNALIGNED[0], UNALIGNED[-1], 60):
        # Start from torch's state: same parameters, same optimizer state, same gradients.
        with torch.no_grad():
            for a, b in zip(ours.parameters(), theirs.parameters()):
                a.copy_(b)
        # (a deep copy: torch's load_state_dict keeps the very tensors it is given)
        opt.load_state_dict(copy.deepcopy(ref.state_dict()))
        _backward(theirs, x, y)
        before = []
        for a, b in zip(ours.parameters(), theirs.parameters()):
            a.grad = b.grad.clone()
            n = a.numel()
            tail = slice(n - n % 16, n)
            state = {name: value if name == "step" else value.reshape(-1)[tail]
                     for name, value in ref.state[b].items()}
            before.append((b.detach().reshape(-1)[tail].clone(), b.grad.reshape(-1)[tail].clone(),
                           copy.deepcopy(state)))
        opt.step()
        ref.step()
        for k, (a, b) in enumerate(zip(ours.parameters(), theirs.parameters())):
            n = a.numel()
            body = n - n % 16
            pairs = {"param": (a.detach().numpy().ravel(), b.detach().numpy().ravel())}
            for name, value in ref.state[b].items():
                if name != "step":
                    pairs[name] = (opt.state[a][name].numpy().ravel(), value.numpy().ravel())
            vector_body = _torch_vector_body(torch_cls, kwargs, *before[k])
            for name, (mine, peer) in pairs.items():
                assert_same_bits(mine[:body], peer[:body], f"{case}: {name} {k} vector body")
                assert_same_bits(mine[body:], vector_body[name], f"{case}: {name} {k} tail vs torch's body")
                distance = ulp_distance(mine[body:], peer[body:])
                worst[name] = max(worst.get(name, 0), int(distance.max(initial=0)))
                if name == "param":
                    tail_elements += n - body
                    tail_differing += int(np.count_nonzero(distance))
    report(f"adamcore.torch {case}, 60 steps from identical state: tails bitwise equal to torch's "
           f"vector-body arithmetic; torch's scalar tail differs in {tail_differing}/{tail_elements} "
           f"tail parameter values, worst ulp per buffer {worst}")


def test_lr_scheduler_drives_it_like_torch():
    ours, theirs = _model(ALIGNED), _model(ALIGNED)
    opt = act.AdamW(ours.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, fused=True)
    schedule = WarmupCosine(1e-2, warmup_steps=5, total_steps=30, final_lr=1e-4)

    def lam(done):
        return schedule(done + 1) / schedule.peak_lr

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lam) for o in (opt, ref)]
    lrs = []
    for x, y in _data(ALIGNED[0], ALIGNED[-1], 30):
        for model, o, s in zip((ours, theirs), (opt, ref), schedulers):
            _backward(model, x, y)
            o.step()
            s.step()
        lrs.append(opt.param_groups[0]["lr"])
        assert lrs[-1] == ref.param_groups[0]["lr"]
    assert lrs[3] == pytest.approx(schedule(5)) and lrs[-1] == pytest.approx(1e-4)
    _assert_models_equal(ours, theirs, "LambdaLR(WarmupCosine)")


def test_param_groups_and_closure():
    ours, theirs = _model(ALIGNED), _model(ALIGNED)

    def groups(model):
        layers = [m for m in model if isinstance(m, torch.nn.Linear)]
        return [{"params": layers[0].parameters(), "lr": 1e-3},
                {"params": [p for m in layers[1:] for p in m.parameters()], "weight_decay": 0.3}]

    opt = act.AdamW(groups(ours), lr=1e-2)
    ref = torch.optim.AdamW(groups(theirs), lr=1e-2, fused=True)
    for x, y in _data(ALIGNED[0], ALIGNED[-1], 10):
        loss = opt.step(lambda: _backward(ours, x, y))
        assert loss == ref.step(lambda: _backward(theirs, x, y))
    _assert_models_equal(ours, theirs, "two groups, closure")


@pytest.mark.parametrize("case", ["AdamW", "Adam-L2-amsgrad", "Adagrad"])
def test_step_in_grad_mode_records_nothing(case):
    """The step does not switch autograd off (it has nothing to record): called with
    grad mode on, with gradients that themselves require grad (made with
    create_graph=True), it gives torch fused's bits, its state requires no grad, and
    no parameter gains a grad_fn."""
    ours_cls, torch_cls, kwargs = CASES[case]
    ours, theirs = _model(ALIGNED), _model(ALIGNED)
    opt, ref = ours_cls(ours.parameters(), **kwargs), torch_cls(theirs.parameters(), fused=True, **kwargs)
    for x, y in _data(ALIGNED[0], ALIGNED[-1], 6):
        for model, o in ((ours, opt), (theirs, ref)):
            params = list(model.parameters())
            loss = torch.nn.functional.cross_entropy(model(x), y)
            for p, g in zip(params, torch.autograd.grad(loss, params, create_graph=True)):
                p.grad = g
            assert torch.is_grad_enabled()
            o.step()
    _assert_models_equal(ours, theirs, f"{case} stepped in grad mode")
    for p in ours.parameters():
        assert p.grad_fn is None and p.requires_grad and p.grad.requires_grad
        assert not any(v.requires_grad for v in opt.state[p].values())


@pytest.mark.parametrize("direction", ["torch->adamcore", "adamcore->torch"])
@pytest.mark.parametrize("case", ["AdamW", "Adam-L2-amsgrad", "Adagrad"])
def test_state_dict_moves_both_ways(case, direction):
    ours_cls, torch_cls, kwargs = CASES[case]
    make = {"torch->adamcore": (lambda p: torch_cls(p, fused=True, **kwargs), lambda p: ours_cls(p)),
            "adamcore->torch": (lambda p: ours_cls(p, **kwargs), lambda p: torch_cls(p, fused=True))}
    first_make, second_make = make[direction]
    data = _data(ALIGNED[0], ALIGNED[-1], 12)
    # Reference: one optimizer of the first kind for all 12 steps.
    ref_model = _model(ALIGNED)
    ref = first_make(ref_model.parameters())
    for x, y in data:
        _backward(ref_model, x, y)
        ref.step()
    # Six steps with the first kind, then hand the state to the second kind.
    model = _model(ALIGNED)
    first = first_make(model.parameters())
    for x, y in data[:6]:
        _backward(model, x, y)
        first.step()
    second = second_make(model.parameters())
    second.load_state_dict(first.state_dict())
    assert second.param_groups[0]["lr"] == kwargs["lr"]
    for x, y in data[6:]:
        _backward(model, x, y)
        second.step()
    _assert_models_equal(model, ref_model, f"{case} {direction}")
    _assert_states_equal(second, ref, f"{case} {direction}")


def test_updates_in_place_without_copies():
    model = _model(ALIGNED)
    opt = act.AdamW(model.parameters())
    weight = model[0].weight
    address = weight.data_ptr()
    outside_view = weight.detach().numpy()  # shares the tensor's memory
    before = outside_view.copy()
    x, y = _data(ALIGNED[0], ALIGNED[-1], 1)[0]
    _backward(model, x, y)
    exp_avg_address = None
    opt.step()
    exp_avg_address = opt.state[weight]["exp_avg"].data_ptr()
    _backward(model, x, y)
    opt.step()
    assert weight.data_ptr() == address
    assert opt.state[weight]["exp_avg"].data_ptr() == exp_avg_address
    assert not np.array_equal(outside_view, before)
    assert_same_bits(outside_view, weight.detach().numpy(), "the view sees the update")
    assert opt.state[weight]["step"].dtype == torch.float32  # as torch's fused optimizer keeps it


def _param(*shape, **kwargs):
    return torch.nn.Parameter(torch.zeros(*shape, **kwargs))


@pytest.mark.parametrize("make, error, message", [
    (lambda: act.AdamW([_param(4, dtype=torch.complex64)]), TypeError,
     r"\['params'\]\[0\] must have dtype float32.*got complex64"),
    (lambda: act.Adam([_param(4, device="meta", dtype=torch.complex64)]), TypeError,
     r"\['params'\]\[0\] must have dtype float32, float64, bfloat16 or float16, got complex64"),
    (lambda: act.Adagrad([torch.nn.Parameter(torch.zeros(4, 8)[:, ::2])]), ValueError,
     r"\['params'\]\[0\] \(shape \(4, 4\), strides \(8, 2\)\) overlaps itself or leaves gaps"),
    (lambda: act.AdamW([_param(4)], capturable=True), ValueError, "capturable=True"),
    (lambda: act.AdamW([_param(4)], differentiable=True), ValueError, "differentiable=True"),
    (lambda: act.AdamW([_param(4)], lr=-1.0), ValueError, "lr must be finite and >= 0"),
    (lambda: act.Adam([_param(4)], betas=(0.9, 1.5)), ValueError, r"beta2 \(betas\[1\]\) must be in"),
    (lambda: act.Adagrad([_param(4)], eps=-1.0), ValueError, "eps must be finite"),
])
def test_constructor_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def _complex_param(p):
    p.data = p.data.to(torch.complex64)  # after construction, as model.to(...) would
    p.grad = torch.ones(4, 4, dtype=torch.complex64)


@pytest.mark.parametrize("spoil, error, message", [
    (lambda p: setattr(p, "grad", torch.zeros(4, 4).t()), ValueError, r"\['params'\]\[0\]\.grad must be C-contiguous"),
    (lambda p: setattr(p, "grad", torch.zeros(4, 4).to_sparse()), TypeError, r"\.grad is a sparse tensor"),
    (_complex_param, TypeError, r"param_groups\[1\]\['params'\]\[0\] must have dtype float32.*got complex64"),
])
def test_step_errors_change_nothing(spoil, error, message):
    good, bad = _param(4, 4), _param(4, 4)
    opt = act.AdamW([{"params": [good]}, {"params": [bad]}])
    good.grad = torch.ones(4, 4)
    spoil(bad)
    with pytest.raises(error, match=message):
        opt.step()
    assert torch.equal(good.detach(), torch.zeros(4, 4)) and not opt.state[good]  # nothing ran


def test_lr_may_be_a_tensor_and_hyperparameters_change_between_steps():
    ours, theirs = _model(ALIGNED), _model(ALIGNED)
    opt = act.Adam(ours.parameters(), lr=torch.tensor(1e-2))
    ref = torch.optim.Adam(theirs.parameters(), lr=torch.tensor(1e-2), fused=True)
    for t, (x, y) in enumerate(_data(ALIGNED[0], ALIGNED[-1], 8)):
        if t == 4:
            for group in (opt.param_groups[0], ref.param_groups[0]):
                group.update(lr=2e-3, betas=(0.8, 0.9), weight_decay=0.01)
        for model, o in ((ours, opt), (theirs, ref)):
            _backward(model, x, y)
            o.step()
    _assert_models_equal(ours, theirs, "changed hyperparameters")


def test_importing_adamcore_never_imports_torch():
    code = ("import sys, numpy as np, adamcore, adamcore.optim, adamcore.schedule\n"
            "opt = adamcore.AdamW([np.zeros(4, np.float32)])\n"
            "opt.step([np.ones(4, np.float32)])\n"
            "assert adamcore.Adam and adamcore.AMSGrad and adamcore.Adagrad\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print(loaded)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
