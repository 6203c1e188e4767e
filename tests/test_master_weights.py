"""float32 master weights in the optimizer classes (issue 9): ``master_weights=True``.

16-bit params keep a float32 copy in ``state['master_param']`` and float32 state; each
step updates the float32 copy with the 16-bit grads widened, and writes the 16-bit
param as its rounding in the same pass. Checked: the bits equal torch's fused float32
step on float32 masters followed by ``.to(bfloat16/float16)``; state dicts and
checkpoint files round-trip (and a 16-bit state saved without masters loads, widened);
float32 params are refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamcore

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


def _params(rng, dtype):
    return [rng.standard_normal(k).astype(dtype) for k in (5, 64, 1000)]


def _same(a, b) -> bool:
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["Adam", "AdamW", "AMSGrad", "Adagrad"])
def test_master_weights_equal_the_float32_step_then_rounding(name, dtype):
    rng = np.random.default_rng(3)
    params = _params(rng, dtype)
    masters = [p.astype(np.float32) for p in params]
    opt = getattr(adamcore, name)(params, lr=1e-2, master_weights=True)
    ref = getattr(adamcore, name)(masters, lr=1e-2)
    for _ in range(30):
        grads = [rng.standard_normal(p.size).astype(dtype) for p in params]
        opt.step(grads)
        ref.step([g.astype(np.float32) for g in grads])
        assert _same(params, [m.astype(dtype) for m in masters])
    for i in range(len(params)):
        for key, value in ref.state[i].items():
            got = opt.state[i][key]
            assert (got == value) if key == "step" else _same([got], [value]), key
        assert _same([opt.state[i]["master_param"]], [masters[i]])


def test_master_weights_match_torch_fused_on_float32_masters():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(k).astype(BF16) for k in (64, 1024)]
    opt = adamcore.AdamW(params, lr=1e-2, weight_decay=0.1, master_weights=True)
    masters = [torch.from_numpy(p.astype(np.float32)) for p in params]
    topt = torch.optim.AdamW(masters, lr=1e-2, weight_decay=0.1, fused=True)
    for _ in range(20):
        grads = [rng.standard_normal(p.size).astype(BF16) for p in params]
        opt.step(grads)
        for m, g in zip(masters, grads):
            m.grad = torch.from_numpy(g.astype(np.float32))
        topt.step()
        for p, m in zip(params, masters):
            want = m.to(torch.bfloat16).view(torch.int16).numpy()
            assert np.array_equal(p.view(np.int16), want)


def test_state_dicts_and_files_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    params = _params(rng, BF16)
    twin = [p.copy() for p in params]
    opt = adamcore.Adam(params, lr=1e-2, master_weights=True)
    grads = [[rng.standard_normal(p.size).astype(BF16) for p in params] for _ in range(6)]
    for g in grads[:3]:
        opt.step(g)
    twin = [p.copy() for p in params]
    other = adamcore.Adam(twin, lr=1e-2, master_weights=True)
    other.load_state_dict(opt.state_dict())
    opt.save(tmp_path / "ckpt")
    third_params = [p.copy() for p in params]
    third = adamcore.Adam(third_params, lr=1e-2, master_weights=True)
    third.load(tmp_path / "ckpt")
    for g in grads[3:]:
        opt.step(g)
        other.step(g)
        third.step(g)
    assert _same(params, twin) and _same(params, third_params)
    assert _same([opt.state[2]["master_param"]], [other.state[2]["master_param"]])


def test_a_16_bit_state_without_masters_loads_widened():
    """torch fused's bf16 layout keeps bf16 state: loaded with master_weights, the
    state is widened exactly and the master starts as the param."""
    rng = np.random.default_rng(6)
    params = _params(rng, BF16)
    plain = adamcore.Adam([p.copy() for p in params], lr=1e-2)
    plain.step([rng.standard_normal(p.size).astype(BF16) for p in params])
    opt = adamcore.Adam(params, lr=1e-2, master_weights=True)
    opt.load_state_dict(plain.state_dict())
    for i, p in enumerate(params):
        assert opt.state[i]["exp_avg"].dtype == np.float32
        assert _same([opt.state[i]["exp_avg"]], [plain.state[i]["exp_avg"].astype(np.float32)])
        assert _same([opt.state[i]["master_param"]], [p.astype(np.float32)])
    with pytest.raises(ValueError, match=r"state\[0\] has entries \['master_param'\]"):
        plain.load_state_dict(opt.state_dict())
    saved = opt.state_dict()
    for entry in saved["state"].values():
        del entry["master_param"]
    with pytest.raises(TypeError, match=r"state\[0\]\['exp_avg'\] has dtype float32; expected bfloat16"):
        plain.load_state_dict(saved)


def test_float32_params_are_refused():
    with pytest.raises(TypeError, match=r"^param_groups\[0\]\['params'\]\[1\] must be a bfloat16 or "
                                        r"float16 array with master_weights=True, got float32"):
        adamcore.Adam([np.ones(3, BF16), np.ones(3, np.float32)], master_weights=True)
    with pytest.raises(TypeError, match="^master_weights must be a bool"):
        adamcore.Adam([np.ones(3, BF16)], master_weights=1)


def test_master_weights_with_amp_and_stochastic_rounding():
    rng = np.random.default_rng(7)
    params = _params(rng, F16)
    opt = adamcore.Adam(params, lr=1e-3, master_weights=True, rounding="stochastic", seed=3)
    masters = [p.astype(np.float32) for p in params]
    ref = adamcore.Adam(masters, lr=1e-3)
    grads = [(rng.standard_normal(p.size) * 64).astype(F16) for p in params]
    opt.step([g.copy() for g in grads], grad_scale=64.0)
    ref.step([(g.astype(np.float32) / np.float32(64)) for g in grads])
    assert _same([opt.state[2]["master_param"]], [masters[2]])
    m = masters[2]
    nearest = m.astype(F16)
    lo = np.where(nearest.astype(np.float32) > m, np.nextafter(nearest, F16.type(-np.inf)), nearest)
    hi = np.where(nearest.astype(np.float32) < m, np.nextafter(nearest, F16.type(np.inf)), nearest)
    assert np.all((params[2] == lo) | (params[2] == hi)), "not a neighbour of the master"
    assert not _same([params[2]], [masters[2].astype(F16)]), "rounded to nearest"
