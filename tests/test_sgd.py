"""SGD: parity with torch.optim.SGD(fused=True), the float64 reference, validation, and
identical bits on every ISA and thread count."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import adamcore

torch = pytest.importorskip("torch")
import adamcore.torch  # noqa: E402  (needs torch)

OPTIONS = [  # momentum, dampening, weight_decay, nesterov, maximize
    (0.0, 0.0, 0.0, False, False),
    (0.0, 0.0, 0.01, False, True),
    (0.9, 0.0, 0.0, False, False),
    (0.9, 0.3, 0.01, False, True),
    (0.9, 0.0, 0.01, True, False),
    (0.9, 0.0, 0.0, True, True),
]
NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def torch_vector_width(dtype) -> int:
    """Elements per vector of torch's fused SGD body on this CPU (Vectorized<T>::size())."""
    lanes32 = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    return {torch.float32: lanes32, torch.float64: lanes32 // 2}.get(dtype, 2 * lanes32)


def as_numpy(t):
    if t.dtype == torch.bfloat16:
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def run_both(dtype, n, options, steps, seed=0, tail_width=0):
    momentum, dampening, wd, nesterov, maximize = options
    rng = np.random.default_rng(seed)
    start = torch.tensor(rng.standard_normal(n)).to(dtype)
    theirs = start.clone().requires_grad_(True)
    ours = start.clone()
    opt = torch.optim.SGD([theirs], lr=0.05, momentum=momentum, dampening=dampening,
                          weight_decay=wd, nesterov=nesterov, maximize=maximize, fused=True)
    buf = torch.zeros(n, dtype=dtype) if momentum else None
    for t in range(steps):
        g = torch.tensor(rng.standard_normal(n)).to(dtype)
        theirs.grad = g.clone()
        opt.step()
        adamcore.sgd_step(as_numpy(ours), as_numpy(g.clone()),
                          None if buf is None else as_numpy(buf), lr=0.05, momentum=momentum,
                          dampening=dampening, weight_decay=wd, nesterov=nesterov,
                          maximize=maximize, first_step=t == 0, tail_width=tail_width)
    state = opt.state[theirs].get("momentum_buffer")
    return ours, theirs.detach(), buf, state


def bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS)
def test_matches_torch_fused_on_its_vector_body(dtype, options):
    n = 8 * 16 + 5  # a whole number of vectors plus a scalar tail on every x86 width
    ours, theirs, buf, state = run_both(dtype, n, options, 200)
    body = n - n % torch_vector_width(dtype)
    assert torch.equal(bits(ours[:body]), bits(theirs[:body]))
    if buf is not None:
        assert torch.equal(bits(buf[:body]), bits(state[:body]))
    # torch's scalar tail forms the momentum as fma(m, momentum, g*(1-dampening)) where the
    # body (and adamcore) takes fma(1-dampening, g, m*momentum): close, not bitwise.
    np.testing.assert_allclose(ours[body:].numpy(), theirs[body:].numpy(), rtol=1e-3, atol=1e-5)
    if options[0] == 0:  # without momentum the tail's arithmetic is the body's
        assert torch.equal(bits(ours), bits(theirs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS)
def test_tail_width_matches_torch_fused_on_every_element(dtype, options, split_threads):
    """tail_width=torch_tail_width(): torch's scalar-tail momentum recipe on each tensor's
    last n % W elements (W/2 doubles), so every element equals SGD(fused=True)'s, on every
    ISA with 1 and 2 threads."""
    n = 1000 + 13  # tails of 5 floats / 1 double (AVX2) and 5 / 5 (AVX-512)
    width = adamcore.torch.torch_tail_width()
    for isa in adamcore.available_isas():
        for threads in (1, 2):
            adamcore.set_num_threads(threads)
            with adamcore.use_isa(isa):
                ours, theirs, buf, state = run_both(dtype, n, options, 200, tail_width=width)
            where = f"{isa}, {threads} threads"
            assert torch.equal(bits(ours), bits(theirs)), where
            if buf is not None:
                assert torch.equal(bits(buf), bits(state)), where


def test_tail_width_through_the_classes_matches_torch_fused(split_threads):
    """adamcore.torch.SGD and adamcore.SGD with tail_width, a model whose tensors have
    tails (biases of 3 and 5), momentum and Nesterov: every element of every parameter
    and buffer equals torch fused's; tail_width is kept in the param groups."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(13, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(13, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    twin.load_state_dict(model.state_dict())
    arrays = [p.detach().numpy().copy() for p in model.parameters()]
    width = adamcore.torch.torch_tail_width()
    kw = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ours = adamcore.torch.SGD(model.parameters(), tail_width=width, **kw)
    numpy_sgd = adamcore.SGD(arrays, tail_width=width, **kw)
    theirs = torch.optim.SGD(twin.parameters(), fused=True, **kw)
    x, y = torch.randn(64, 13), torch.randn(64, 3)
    adamcore.set_num_threads(2)
    for _ in range(30):
        for net, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        numpy_sgd.step([p.grad.numpy().copy() for p in twin.parameters()])
    for a, b, c in zip(model.parameters(), twin.parameters(), arrays):
        assert torch.equal(bits(a.detach()), bits(b.detach()))
        assert c.tobytes() == b.detach().numpy().tobytes()
        assert torch.equal(bits(ours.state[a]["momentum_buffer"]),
                           bits(theirs.state[b]["momentum_buffer"]))
    assert ours.state_dict()["param_groups"][0]["tail_width"] == width
    assert numpy_sgd.state_dict()["param_groups"][0]["tail_width"] == width


@pytest.mark.parametrize("kwargs, match, error", [
    (dict(tail_width=7), "tail_width", ValueError),
    (dict(tail_width=8.0), "tail_width must be an integer", TypeError),
    (dict(tail_width=8, dtype=np.float16), "tail_width applies to float32 and float64",
     ValueError),
])
def test_tail_width_validation_names_it_and_writes_nothing(kwargs, match, error):
    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype", np.float32)
    p, g, m = np.ones(9, dtype), np.ones(9, dtype), np.full(9, 2.0, dtype)
    with pytest.raises(error, match=match):
        adamcore.sgd_step(p, g, m, momentum=0.9, **kwargs)
    assert (p == 1).all() and (m == 2).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [o for o in OPTIONS if o[0] == 0])
def test_16bit_matches_torch_fused_scalar_path(dtype, options):
    # torch 2.13's 16-bit fused SGD updates params only in its scalar tail (its vector
    # body stores the momentum but never the params), so compare tensors shorter than a
    # vector: there torch computes in float32 with float32 constants, as adamcore does.
    n = torch_vector_width(dtype) - 1
    ours, theirs, _, _ = run_both(dtype, n, options, 200)
    assert torch.equal(bits(ours), bits(theirs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_with_momentum_stays_close_to_torch_scalar_path(dtype):
    n = torch_vector_width(dtype) - 1
    ours, theirs, buf, state = run_both(dtype, n, OPTIONS[3], 50)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    np.testing.assert_allclose(ours.float().numpy(), theirs.float().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(buf.float().numpy(), state.float().numpy(), rtol=tol, atol=tol)


def test_float64_close_to_reference():
    rng = np.random.default_rng(3)
    p = rng.standard_normal(257)
    ref_p, m, ref_m = p.copy(), np.zeros(257), np.zeros(257)
    for t in range(50):
        g = rng.standard_normal(257)
        kw = dict(lr=0.01, momentum=0.9, weight_decay=0.01, nesterov=True, first_step=t == 0)
        adamcore.sgd_step(p, g.copy(), m, **kw)
        adamcore.reference.sgd_step(ref_p, g.copy(), ref_m, **kw)
    np.testing.assert_allclose(p, ref_p, rtol=1e-12, atol=1e-12)


def test_group_call_equals_single_calls():
    rng = np.random.default_rng(4)
    sizes = [3, 100, 17]
    ps = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    gs = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    ms = [np.zeros(n, np.float32) for n in sizes]
    singles = [(p.copy(), m.copy()) for p, m in zip(ps, ms)]
    adamcore.sgd_step(ps, gs, ms, lr=0.1, momentum=0.9, first_step=True)
    for (p, m), g in zip(singles, gs):
        adamcore.sgd_step(p, g, m, lr=0.1, momentum=0.9, first_step=True)
    for (p, m), p2, m2 in zip(singles, ps, ms):
        assert p.tobytes() == p2.tobytes() and m.tobytes() == m2.tobytes()


def test_every_isa_and_thread_count_gives_the_same_bits():
    rng = np.random.default_rng(5)
    n = 100_003
    p0, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m0 = rng.standard_normal(n).astype(np.float32)
    results = []
    threads_before, threshold_before = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    try:
        adamcore.set_parallel_threshold(1024)
        for isa, threads in itertools.product(adamcore.available_isas(), [1, 2, 3]):
            p, m = p0.copy(), m0.copy()
            adamcore.set_num_threads(threads)
            with adamcore.use_isa(isa):
                adamcore.sgd_step(p[1:], g[1:], m[1:], lr=0.1, momentum=0.9, dampening=0.1,
                                  weight_decay=0.01, maximize=True)
            results.append(p.tobytes() + m.tobytes())
    finally:
        adamcore.set_num_threads(threads_before)
        adamcore.set_parallel_threshold(threshold_before)
    assert len(set(results)) == 1


def test_grad_scale_and_found_inf_as_torch_fused():
    rng = np.random.default_rng(6)
    n = 64
    start = torch.tensor(rng.standard_normal(n), dtype=torch.float32)
    g = torch.tensor(rng.standard_normal(n), dtype=torch.float32) * 1024
    theirs = start.clone().requires_grad_(True)
    theirs.grad = g.clone()
    torch._fused_sgd_([theirs.detach()], [theirs.grad], [], weight_decay=0.0, momentum=0.0,
                      lr=0.1, dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
                      grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(0.0))
    ours, our_grad = start.clone().numpy(), g.clone().numpy()
    adamcore.sgd_step(ours, our_grad, lr=0.1, grad_scale=1024.0, found_inf=0.0)
    assert ours.tobytes() == theirs.detach().numpy().tobytes()
    assert our_grad.tobytes() == theirs.grad.numpy().tobytes()  # unscaled in place
    before = ours.copy()
    adamcore.sgd_step(ours, our_grad, lr=0.1, grad_scale=1024.0, found_inf=1.0)
    assert ours.tobytes() == before.tobytes()


@pytest.mark.parametrize("kwargs, match, error", [
    (dict(lr=-1.0), "lr", ValueError),
    (dict(momentum=-0.5), "momentum", ValueError),
    (dict(weight_decay=float("nan")), "weight_decay", ValueError),
    (dict(momentum=0.9, dampening=0.5, nesterov=True), "nesterov", ValueError),
    (dict(momentum=0.0, buffer=True), "momentum_buffer was given", ValueError),
    (dict(momentum=0.9, buffer=False), "momentum_buffer is required", ValueError),
    (dict(grad_dtype=np.float64), "grad must have dtype float32", TypeError),
    (dict(momentum=0.9, buffer_dtype=np.float16), "momentum_buffer must have dtype", TypeError),
    (dict(lr="x"), "lr must be a real number", TypeError),
])
def test_validation_names_the_argument_and_writes_nothing(kwargs, match, error):
    kwargs = dict(kwargs)
    grad_dtype = kwargs.pop("grad_dtype", np.float32)
    buffer_dtype = kwargs.pop("buffer_dtype", np.float32)
    want_buffer = kwargs.pop("buffer", kwargs.get("momentum", 0) != 0)
    p = np.ones(9, np.float32)
    g = np.ones(9, grad_dtype)
    m = np.full(9, 2.0, buffer_dtype) if want_buffer else None
    with pytest.raises(error, match=match):
        adamcore.sgd_step(p, g, m, **kwargs)
    assert (p == 1).all() and (m is None or (m == 2).all())


def test_adamcore_torch_sgd_trains_like_torch_fused():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    twin.load_state_dict(model.state_dict())
    kw = dict(lr=0.05, momentum=0.0, weight_decay=1e-3)
    ours = adamcore.torch.SGD(model.parameters(), **kw)
    theirs = torch.optim.SGD(twin.parameters(), fused=True, **kw)
    x, y = torch.randn(64, 13), torch.randn(64, 3)
    for _ in range(30):
        for net, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(bits(a.detach()), bits(b.detach()))


def test_adamcore_torch_sgd_momentum_state_dict_interop():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(16))  # a whole number of vectors: no torch tail
    twin = torch.nn.Parameter(w.detach().clone())
    ours = adamcore.torch.SGD([w], lr=0.1, momentum=0.9, nesterov=True)
    theirs = torch.optim.SGD([twin], lr=0.1, momentum=0.9, nesterov=True, fused=True)
    for step in range(20):
        g = torch.randn(16)
        w.grad, twin.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        if step == 9:  # swap states both ways mid-run
            ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
            assert set(ours_sd["state"][0]) == {"momentum_buffer"}
            ours.load_state_dict(theirs_sd)
            theirs.load_state_dict(ours_sd)
    assert torch.equal(bits(w.detach()), bits(twin.detach()))
    assert torch.equal(bits(ours.state[w]["momentum_buffer"]),
                       bits(theirs.state[twin]["momentum_buffer"]))


def test_numpy_sgd_class_matches_torch_and_round_trips_state_dicts():
    rng = np.random.default_rng(7)
    shapes = [(4, 8), (16,)]  # whole vectors: torch's body computes every element
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    twins = [torch.nn.Parameter(torch.tensor(p.copy())) for p in params]
    kw = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
    ours = adamcore.SGD(params, **kw)
    theirs = torch.optim.SGD(twins, fused=True, **kw)
    for step in range(12):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for t, g in zip(twins, grads):
            t.grad = torch.tensor(g.copy())
        ours.step(grads)
        theirs.step()
        if step == 5:
            saved = ours.state_dict()
            assert set(saved["state"][1]) == {"momentum_buffer"}
            ours.load_state_dict(theirs.state_dict())  # torch's tensors, read as arrays
            theirs.load_state_dict({"state": {i: {k: torch.tensor(v) for k, v in s.items()}
                                              for i, s in saved["state"].items()},
                                    "param_groups": saved["param_groups"]})
    for p, t in zip(params, twins):
        assert p.tobytes() == t.detach().numpy().tobytes()


def test_adamcore_torch_sgd_under_grad_scaler_matches_torch_fused():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(32))
    twin = torch.nn.Parameter(w.detach().clone())
    ours = adamcore.torch.SGD([w], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD([twin], lr=0.1, momentum=0.9, fused=True)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    for step in range(8):
        g = torch.randn(32)
        if step == 3:
            g[0] = float("inf")  # the scaler skips this step for both
        for param, opt, scaler in ((w, ours, scalers[0]), (twin, theirs, scalers[1])):
            opt.zero_grad()
            scaler.scale((param * g).sum()).backward()
            scaler.step(opt)
            scaler.update()
    assert torch.equal(bits(w.detach()), bits(twin.detach()))
    assert torch.equal(bits(ours.state[w]["momentum_buffer"]),
                       bits(theirs.state[twin]["momentum_buffer"]))
