"""AMP in the pass (issue 9): ``grad_scale`` and ``found_inf`` as torch's fused
optimizers take them from a GradScaler.

- grads are divided by the float32 scale in the layout's arithmetic, the quotients are
  written back (rounded to the grads' dtype) and the update uses the unrounded quotient:
  bit-identical to ``torch._fused_adam_/_fused_adamw_/_fused_adagrad_`` with the same
  ``grad_scale`` tensor, for float32, bfloat16, float16 and float64, grads included;
- a true ``found_inf`` writes nothing at all (params, state, grads; the optimizer
  classes' step counts too), after every argument is checked;
- a bad scale, or read-only grads when a scale is given, raise naming the argument and
  write nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamcore

ml_dtypes = pytest.importorskip("ml_dtypes")
torch = pytest.importorskip("torch")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BF16, "float16": np.dtype(np.float16),
          "float64": np.dtype(np.float64)}


def to_torch(a: np.ndarray) -> "torch.Tensor":
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def bits(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.view(torch.int16).numpy() if a.dtype == torch.bfloat16 else a.numpy()
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bits(got, want, what: str) -> None:
    g, w = bits(got), bits(want)
    diff = np.flatnonzero(g != w)
    assert diff.size == 0, f"{what}: {diff.size} elements differ, first at {diff[:1]}"


def _case(rng, n, dtype, scale):
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * scale).astype(dtype)
    g[::61] *= 1e-3  # some quotients round in 16 bits
    return p, g


pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


@pytest.mark.parametrize("family", ["adam", "adamw-amsgrad", "adagrad"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_grad_scale_is_bitwise_torch_fused(isa, dtype_name, family):
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(4)
    n = 64 * 33  # whole vectors for every width: torch's vector body everywhere
    p, _ = _case(rng, n, dtype, 1.0)
    k = 1 if family == "adagrad" else 3 if family.endswith("amsgrad") else 2
    state = [np.zeros(n, dtype) for _ in range(k)]
    tp, tstate = to_torch(p.copy()), [to_torch(s.copy()) for s in state]
    for step in range(1, 21):
        scale = float(2.0 ** rng.integers(4, 12))
        _, g = _case(rng, n, dtype, scale)
        tg = to_torch(g.copy())
        t_scale = torch.tensor(scale, dtype=torch.float32)
        t_inf = torch.tensor(0.0, dtype=torch.float32)
        t_step = torch.tensor(float(step))
        if family == "adagrad":
            adamcore.adagrad_step(p, g, state[0], step=step, lr=0.05, lr_decay=0.01,
                                  weight_decay=0.01, grad_scale=scale)
            torch._fused_adagrad_([tp], [tg], [tstate[0]], [t_step], lr=0.05, lr_decay=0.01,
                                  weight_decay=0.01, eps=1e-10, maximize=False,
                                  grad_scale=t_scale, found_inf=t_inf)
        else:
            ams = family.endswith("amsgrad")
            adamcore.adamw_step(p, g, state[0], state[1], step=step, lr=1e-2, weight_decay=0.01,
                                amsgrad=ams, max_exp_avg_sq=state[2] if ams else None,
                                grad_scale=scale)
            torch._fused_adamw_([tp], [tg], [tstate[0]], [tstate[1]], [tstate[2]] if ams else [],
                                [t_step], lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.01,
                                eps=1e-8, amsgrad=ams, maximize=False, grad_scale=t_scale,
                                found_inf=t_inf)
        assert_bits(g, tg, f"{dtype_name} {family} unscaled grads, step {step}")
        assert_bits(p, tp, f"{dtype_name} {family} params, step {step}")
        for s, ts in zip(state, tstate):
            assert_bits(s, ts, f"{dtype_name} {family} state, step {step}")


def test_grad_scale_on_master_weights_writes_the_quotient_in_the_grads_dtype(isa):
    """float32 params with bfloat16 grads: the update uses the float32 quotient, the
    grads get it rounded to bfloat16."""
    rng = np.random.default_rng(5)
    n = 1000
    p, g = rng.standard_normal(n).astype(np.float32), (rng.standard_normal(n) * 512).astype(BF16)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ref_p, ref_m, ref_v = p.copy(), m.copy(), v.copy()
    quotient = g.astype(np.float32) / np.float32(512.0)
    adamcore.adam_step(p, g, m, v, step=1, grad_scale=512.0)
    adamcore.adam_step(ref_p, quotient, ref_m, ref_v, step=1)
    assert_bits(g, quotient.astype(BF16), "grads")
    for a, b in ((p, ref_p), (m, ref_m), (v, ref_v)):
        assert_bits(a, b, "step on the float32 quotient")


@pytest.mark.parametrize("found", [True, 1.0, np.float32(1.0), float("nan")])
def test_found_inf_writes_nothing(found):
    rng = np.random.default_rng(6)
    p, g = _case(rng, 100, np.float32, 1e3)
    m, v = np.ones(100, np.float32), np.ones(100, np.float32)
    before = [a.tobytes() for a in (p, g, m, v)]
    adamcore.adam_step(p, g, m, v, step=3, grad_scale=1e3, found_inf=found)
    adamcore.adagrad_step(p, g, m, step=3, grad_scale=1e3, found_inf=found)
    group = adamcore.AdamGroup([p], [m], [v])
    group.step([g], step=3, grad_scale=1e3, found_inf=found)
    assert [a.tobytes() for a in (p, g, m, v)] == before


def test_found_inf_false_or_zero_steps():
    p, g = np.ones(10, np.float32), np.full(10, 4.0, np.float32)
    m, v = np.zeros(10, np.float32), np.zeros(10, np.float32)
    adamcore.adam_step(p, g, m, v, step=1, grad_scale=4.0, found_inf=0.0)
    assert np.all(g == 1.0) and np.all(p < 1.0)


def test_found_inf_still_checks_every_argument():
    p, g = np.ones(10, np.float32), np.ones(10, np.float32)
    m, v = np.zeros(10, np.float32), np.zeros(9, np.float32)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        adamcore.adam_step(p, g, m, v, step=1, found_inf=True)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan"), 1e39, 1e-46])
def test_bad_grad_scale_raises_and_writes_nothing(scale):
    p, g = np.ones(10, np.float32), np.ones(10, np.float32)
    m, v = np.zeros(10, np.float32), np.zeros(10, np.float32)
    before = [a.tobytes() for a in (p, g, m, v)]
    with pytest.raises(ValueError, match="^grad_scale must be finite and > 0"):
        adamcore.adam_step(p, g, m, v, step=1, grad_scale=scale)
    with pytest.raises(ValueError, match="^grad_scale must be finite and > 0"):
        adamcore.AdamGroup([p], [m], [v]).step([g], step=1, grad_scale=scale)
    assert [a.tobytes() for a in (p, g, m, v)] == before


def test_grad_scale_needs_writable_grads():
    p, g = np.ones(10, np.float32), np.ones(10, np.float32)
    m, v = np.zeros(10, np.float32), np.zeros(10, np.float32)
    g.setflags(write=False)
    adamcore.adam_step(p, g, m, v, step=1)  # without a scale the grads are only read
    before = [a.tobytes() for a in (p, g, m, v)]
    with pytest.raises(ValueError, match="^grad .*writ"):
        adamcore.adam_step(p, g, m, v, step=2, grad_scale=2.0)
    with pytest.raises(ValueError, match=r"^grads\[0\] .*writ"):
        adamcore.AdamGroup([p], [m], [v]).step([g], step=2, grad_scale=2.0)
    assert [a.tobytes() for a in (p, g, m, v)] == before


@pytest.mark.parametrize("group_class", ["AdamGroup", "AdagradGroup"])
@pytest.mark.parametrize("shared", ["same array", "overlapping views"])
def test_a_group_refuses_grads_sharing_memory_when_grad_scale_writes_them(group_class, shared):
    # Read-only grads may share memory; unscaled in place, a grad given twice would be
    # divided twice (found by tests/test_fuzz_binding.py's group model).
    params = [np.ones(8, np.float32), np.ones(8, np.float32)]
    states = [[np.zeros(8, np.float32) for _ in params]
              for _ in range(2 if group_class == "AdamGroup" else 1)]
    group = getattr(adamcore, group_class)(params, *states)
    backing = np.full(12, 4.0, np.float32)
    grads = [backing[:8], backing[:8]] if shared == "same array" else [backing[:8], backing[4:]]
    group.step(grads, step=1)  # only read: fine
    before = [a.tobytes() for a in params + [x for s in states for x in s] + [backing]]
    with pytest.raises(ValueError, match=r"^grads\[[01]\] and grads\[[01]\] .*memory"):
        group.step(grads, step=2, grad_scale=2.0)
    assert [a.tobytes() for a in params + [x for s in states for x in s] + [backing]] == before


def test_optimizer_classes_take_grad_scale_and_skip_on_found_inf():
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(k).astype(np.float32) for k in (7, 300)]
    ref = [a.copy() for a in params]
    opt = adamcore.AdamW(params, lr=1e-2)
    ref_opt = adamcore.AdamW(ref, lr=1e-2)
    for step in range(1, 6):
        grads = [(rng.standard_normal(a.size) * 256).astype(np.float32) for a in params]
        skip = step == 3
        before = [a.copy() for a in params]
        opt.step([g.copy() for g in grads], grad_scale=256.0, found_inf=skip)
        if skip:
            assert all(np.array_equal(a, b) for a, b in zip(params, before))
            continue
        ref_opt.step([g / np.float32(256.0) for g in grads])
        for a, b in zip(params, ref):
            assert_bits(a, b, f"step {step}")
    assert all(opt.state[i]["step"] == ref_opt.state[i]["step"] == 4 for i in range(2))


# ---------------------------------------------------------------- torch.amp.GradScaler
def _amp_run(make_opt, dtype, steps=12):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16))
    model = model.to(dtype)
    opt = make_opt(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=3)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = torch.randn(64, 16, generator=torch.Generator().manual_seed(2)).to(dtype)
    trace = []
    for step in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).float().mean()
        if step in (4, 7):
            loss = loss * float("inf")  # an overflow: the scaler must skip the step
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        trace.append((float(loss.detach()), float(scaler.get_scale())))
    return trace, [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad"])
def test_grad_scaler_matches_torch_fused_bit_for_bit(dtype, name):
    """adamcore.torch optimizers declare _step_supports_amp_scaling: GradScaler passes
    grad_scale and found_inf, the step unscales in its pass and skips on overflow; the
    losses, scales, parameters and state equal torch's fused optimizer's, skipped steps
    (4 and 7) and scale growth included. Every tensor has a multiple of 16 elements, so
    torch computes all of them in its vector body (docs/numerics.md: its scalar tail
    rounds differently)."""
    import adamcore.torch as act
    ours = _amp_run(lambda ps: getattr(act, name)(ps, lr=1e-2), dtype)
    theirs = _amp_run(lambda ps: getattr(torch.optim, name)(ps, lr=1e-2, fused=True), dtype)
    assert ours[0] == theirs[0]
    assert [s for _, s in ours[0]][4] < [s for _, s in ours[0]][3], "no step was skipped"
    for a, b in zip(ours[1], theirs[1]):
        assert torch.equal(a.view(torch.int16) if a.dtype != torch.float32 else a,
                           b.view(torch.int16) if b.dtype != torch.float32 else b)
    scales = [2.0**14] + [s for _, s in ours[0]]
    skipped = sum(after < before for before, after in zip(scales, scales[1:]))
    assert skipped >= 2
    for pa, pb in zip(ours[2].state.values(), theirs[2].state.values()):
        assert int(pa["step"]) == int(pb["step"]) == 12 - skipped


# ---------------------------------------------------------------- the clip coefficient
@pytest.mark.parametrize("family", ["adamw", "adagrad"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_clip_coef_equals_torch_clip_then_fused_step(isa, dtype_name, family):
    """Given the same coefficient, a step with ``clip_coef=c`` equals torch multiplying
    the grads by c in place (what clip_grad_norm_ does) and then its fused step, bit for
    bit; adamcore leaves the grad buffer as it was."""
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(12)
    n = 64 * 17
    p, _ = _case(rng, n, dtype, 1.0)
    k = 1 if family == "adagrad" else 2
    state = [np.zeros(n, dtype) for _ in range(k)]
    tp, tstate = to_torch(p.copy()), [to_torch(s.copy()) for s in state]
    for step in range(1, 11):
        _, g = _case(rng, n, dtype, 3.0)
        coef = float(np.float32(rng.uniform(0.05, 1.0)))  # a float32, as torch's is
        tg = to_torch(g.copy())
        # (A tensor coefficient, as clip_grad_norm_ passes: with a Python number torch's
        # _foreach_mul_ would first round it to the grads' dtype.)
        torch._foreach_mul_([tg], torch.tensor(coef, dtype=torch.float32))
        before = g.copy()
        t_step = torch.tensor(float(step))
        if family == "adagrad":
            adamcore.adagrad_step(p, g, state[0], step=step, lr=0.05, clip_coef=coef)
            torch._fused_adagrad_([tp], [tg], [tstate[0]], [t_step], lr=0.05, lr_decay=0.0,
                                  weight_decay=0.0, eps=1e-10, maximize=False)
        else:
            adamcore.adamw_step(p, g, state[0], state[1], step=step, lr=1e-2, clip_coef=coef)
            torch._fused_adamw_([tp], [tg], [tstate[0]], [tstate[1]], [], [t_step], lr=1e-2,
                                beta1=0.9, beta2=0.999, weight_decay=1e-2, eps=1e-8,
                                amsgrad=False, maximize=False)
        assert g.tobytes() == before.tobytes(), "the grads were written"
        assert_bits(p, tp, f"{dtype_name} {family} params, step {step}")
        for s, ts in zip(state, tstate):
            assert_bits(s, ts, f"{dtype_name} {family} state, step {step}")


@pytest.mark.parametrize("coef", [-0.5, float("inf"), float("nan")])
def test_bad_clip_coef_raises(coef):
    p = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="^clip_coef must be finite and >= 0"):
        adamcore.adam_step(p, p.copy(), p.copy(), p.copy(), step=1, clip_coef=coef)
