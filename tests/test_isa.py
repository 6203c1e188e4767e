"""ISA selection and cross-ISA bit identity over sizes, offsets and options."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import adamcore
from _util import assert_every_isa_matches_scalar, assert_same_bits, cpuinfo, f32

SIZES = [0, 1, 7, 15, 16, 17, 63, 64, 65, 1000, 65537]
OFFSETS = [0, 1, 3, 5]  # in elements: views that start off any vector alignment


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_runtime_info_is_consistent():
    info = adamcore.runtime_info()
    assert set(info) >= {"isa", "compiled", "supported", "threads", "version"}
    assert info["isa"] in info["supported"]
    assert set(info["supported"]) <= set(info["compiled"])
    assert "scalar" in info["supported"]
    assert info["version"] == adamcore.__version__
    assert info["threads"] >= 1
    assert info["best"] == adamcore.best_isa() and info["best"] in info["supported"]
    # Dispatch's rule: the widest supported ISA, except AVX2 over AVX-512 on AMD family
    # 19h (checked against /proc/cpuinfo in test_cpu_features.py).
    widest = info["supported"][-1]
    if info["best"] != widest:
        cpu = cpuinfo()
        assert (info["best"], widest) == ("avx2", "avx512"), info
        assert cpu is not None and cpu.get("vendor_id") == "AuthenticAMD"
        assert cpu.get("cpu family") == "25", cpu.get("cpu family")


def test_set_isa_and_use_isa_restore():
    start = adamcore.get_isa()
    for name in adamcore.available_isas():
        with adamcore.use_isa(name):
            assert adamcore.get_isa() == name
        assert adamcore.get_isa() == start
    with pytest.raises(ValueError, match="valid choices: scalar, avx2, avx512, neon"):
        adamcore.set_isa("sse9")
    unsupported = [n for n in ("scalar", "avx2", "avx512", "neon")
                   if n not in adamcore.available_isas()]
    for name in unsupported:
        with pytest.raises(ValueError, match="available here"):
            adamcore.set_isa(name)
    assert adamcore.get_isa() == start


@pytest.mark.parametrize("name", ["scalar", "avx2", "avx512", "neon"])
def test_environment_override(name):
    result = _run_python("import adamcore; print(adamcore.get_isa())", ADAMCORE_ISA=name)
    if name in adamcore.available_isas():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == name
    else:
        assert result.returncode != 0
        assert "ADAMCORE_ISA" in result.stderr and "available here" in result.stderr


def test_environment_override_rejects_unknown_name():
    result = _run_python("import adamcore", ADAMCORE_ISA="avx1024")
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "valid choices: scalar, avx2, avx512, neon" in result.stderr


def test_info_command():
    result = _run_python("import sys; from adamcore.__main__ import main; "
                         "sys.exit(main(['info', '--json']))")
    assert result.returncode == 0, result.stderr
    import json
    info = json.loads(result.stdout)
    assert info["isa"] == (os.environ.get("ADAMCORE_ISA") or adamcore.best_isa())


def _adam_trajectory(n, offset, opts, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    total = n + offset
    backing = {k: f32(rng.standard_normal(total) * s)
               for k, s in (("p", 1.0), ("m", 0.01), ("v", 0.01), ("vmax", 0.01))}
    backing["v"] **= 2
    backing["vmax"] **= 2
    views = {k: a[offset:] for k, a in backing.items()}
    initial = {k: a.copy() for k, a in backing.items()}
    for step in range(1, steps + 1):
        g = f32(rng.standard_normal(total) * 10.0 ** rng.uniform(-3, 1))[offset:]
        g[::37] = 0.0
        adamcore.adam_step(views["p"], g, views["m"], views["v"], step=step,
                           max_exp_avg_sq=views["vmax"] if opts.get("amsgrad") else None, **opts)
    # Agreement between ISAs would also hold for kernels that wrote nothing: the views
    # must have moved (every element of exp_avg: g is never equal to m), nothing else.
    for key in ("p", "m"):
        assert backing[key][:offset].tobytes() == initial[key][:offset].tobytes(), key
    assert np.all(backing["m"][offset:] != initial["m"][offset:])
    return backing


OPTION_SETS = [
    {},
    {"weight_decay": 0.1, "maximize": True},
    {"amsgrad": True, "beta1": 0.3, "beta2": 0.9},
    {"bias_correction": False, "lr": 0.1},
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_every_isa_same_bits_for_sizes_and_offsets(n, offset):
    for opts in OPTION_SETS:
        with adamcore.use_isa("scalar"):
            want = _adam_trajectory(n, offset, opts)
        for name in adamcore.available_isas():
            with adamcore.use_isa(name):
                got = _adam_trajectory(n, offset, opts)
            for key in want:
                assert_same_bits(got[key], want[key], f"{name} n={n} offset={offset} {opts} {key}")


@pytest.mark.parametrize("n", [0, 1, 15, 17, 1000, 65537])
def test_adagrad_every_isa_same_bits(n):
    def run():
        rng = np.random.default_rng(n)
        p, s = f32(rng.standard_normal(n + 1))[1:], np.full(n, 0.1, np.float32)
        for step in range(1, 6):
            g = f32(rng.standard_normal(n))
            adamcore.adagrad_step(p, g, s, step=step, lr=0.05, lr_decay=0.1, weight_decay=0.01)
        assert np.all(s > np.float32(0.1))  # the sums grew: the kernel ran on every element
        return p, s
    assert_every_isa_matches_scalar(run, f"adagrad n={n}")


def test_multidimensional_arrays_are_updated_whole(isa):
    rng = np.random.default_rng(9)
    p = f32(rng.standard_normal((7, 9, 3)))
    g = f32(rng.standard_normal((7, 9, 3)))
    m, v = np.zeros_like(p), np.zeros_like(p)
    before = p.copy()
    flat = [a.reshape(-1).copy() for a in (p, g, m, v)]
    adamcore.adam_step(p, g, m, v, step=1, lr=0.1)
    adamcore.adam_step(flat[0], flat[1], flat[2], flat[3], step=1, lr=0.1)
    for got, want, name in ((p, flat[0], "param"), (m, flat[2], "exp_avg"),
                            (v, flat[3], "exp_avg_sq")):
        assert got.shape == (7, 9, 3)
        assert_same_bits(got.reshape(-1), want, f"3-d {name}")
    # Adam's first step from zero moments moves every element by lr against its gradient
    # (m_hat = g, sqrt(v_hat) = |g|), so the whole 3-d array must have moved by 0.1.
    moved = before.astype(np.float64) - p
    np.testing.assert_allclose(moved, 0.1 * np.sign(g), rtol=1e-5, atol=0)
    # From zero, m = fma(W, g - 0, 0) = fl(W * g) with W = fl(1 - beta1) (docs/numerics.md).
    assert_same_bits(m, np.float32(0.1) * g, "3-d exp_avg after one step")
