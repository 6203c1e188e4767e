"""Helpers shared by the tests."""

from __future__ import annotations

import math

import numpy as np

import adamcore


def f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Bitwise equality; NaN matches NaN (payload bits are not part of the contract)."""
    assert got.shape == want.shape, what
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), f"{what}: NaN positions differ"
    diff = np.flatnonzero((got.view(np.uint32) != want.view(np.uint32)) & ~nan_g)
    if diff.size:
        i = diff[0]
        raise AssertionError(
            f"{what}: {diff.size} of {got.size} elements differ; first at {i}: "
            f"{got.flat[i]!r} (0x{got.view(np.uint32).flat[i]:08x}) vs "
            f"{want.flat[i]!r} (0x{want.view(np.uint32).flat[i]:08x})")


def snapshot(*arrays: np.ndarray) -> list[bytes]:
    return [np.asarray(a).tobytes() for a in arrays]


def adam_state(rng: np.random.Generator, n: int, amsgrad: bool = False):
    p = f32(rng.standard_normal(n))
    m = f32(rng.standard_normal(n) * 0.01)
    v = f32(rng.standard_normal(n) ** 2 * 1e-4)
    vmax = v.copy() if amsgrad else None
    return p, m, v, vmax


def assert_every_isa_matches_scalar(run, what: str = "") -> None:
    """run() -> arrays; every available ISA must give the scalar ISA's bits."""
    with adamcore.use_isa("scalar"):
        want = run()
    for name in adamcore.available_isas():
        with adamcore.use_isa(name):
            got = run()
        for a, b in zip(got, want):
            assert_same_bits(a, b, f"{what} {name}".strip())


def cpuinfo() -> dict | None:
    """The first processor of /proc/cpuinfo as {field: value} (``flags``/``Features`` as a
    set), or None where the file does not exist or is unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    info: dict = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    for key in ("flags", "Features"):
        if key in info:
            info[key] = set(info[key].split())
    return info


def expected_isas_from_cpuinfo(info: dict, compiled: list) -> tuple[list, str]:
    """(ISAs this CPU should support, the ISA dispatch should pick) from /proc/cpuinfo.

    The rule of cpp/src/cpu_features.cpp and dispatch.cpp, restated: AVX2 needs avx, avx2,
    fma and f16c (float16 buffers); AVX-512 also avx512f, avx512vl, avx512bw and avx512dq
    (Linux lists them only when the OS saves the registers); NEON on aarch64 ('asimd').
    The widest wins, except that AMD family 19h (25) prefers AVX2 to AVX-512.
    """
    flags = info.get("flags", set())
    supported = ["scalar"]
    avx2 = {"avx", "avx2", "fma", "f16c"} <= flags
    if "avx2" in compiled and avx2:
        supported.append("avx2")
    if "avx512" in compiled and avx2 and {"avx512f", "avx512vl", "avx512bw",
                                          "avx512dq"} <= flags:
        supported.append("avx512")
    if "neon" in compiled and "asimd" in info.get("Features", set()):
        supported.append("neon")
    amd_19h = (info.get("vendor_id") == "AuthenticAMD"
               and info.get("cpu family", "").strip() == "25")
    if amd_19h and "avx2" in supported:
        best = "avx2"
    else:
        best = next((isa for isa in ("avx512", "avx2", "neon") if isa in supported), "scalar")
    return supported, best


# The option families the torch parity suites run (float32 in test_parity_torch.py, the
# other dtypes in test_dtypes.py). name: (torch class, adamcore function, options).
ADAM_CASES = {
    "adam": ("Adam", adamcore.adam_step, {}),
    "adam-l2": ("Adam", adamcore.adam_step, {"weight_decay": 0.1}),
    "adamw": ("AdamW", adamcore.adamw_step, {"weight_decay": 0.1}),
    "adam-amsgrad": ("Adam", adamcore.adam_step, {"amsgrad": True}),
    "adamw-amsgrad-l2": ("AdamW", adamcore.adamw_step, {"amsgrad": True, "weight_decay": 0.05}),
    "adam-maximize": ("Adam", adamcore.adam_step, {"maximize": True, "weight_decay": 0.01}),
    # 1 - beta1 >= 0.5: torch's lerp takes its other branch.
    "adam-beta1-0.3": ("Adam", adamcore.adam_step, {"beta1": 0.3, "beta2": 0.99}),
    "adamw-beta1-0.3-amsgrad-maximize": (
        "AdamW", adamcore.adamw_step,
        {"beta1": 0.3, "beta2": 0.9, "amsgrad": True, "maximize": True, "weight_decay": 0.2}),
}
ADAGRAD_CASES = {
    "adagrad": {},
    "adagrad-decay": {"lr_decay": 0.01, "weight_decay": 0.05},
    "adagrad-maximize-init": {"maximize": True, "initial_accumulator_value": 0.3, "eps": 1e-6},
}


def stats_key(stats):
    """A GammaStats as a hashable tuple in which NaN equals NaN."""
    d = stats.as_dict()
    return tuple((k, "nan" if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in sorted(d.items()))


def gamma_reductions(gamma: np.ndarray, lr_eff: np.ndarray, defined: bool) -> dict:
    """GammaStats.as_dict() of per-coordinate Γ and effective learning rates, reduced as
    the kernels reduce them: NaN coordinates are skipped, -0 counts as +0."""
    finite_gamma = gamma[~np.isnan(gamma)]
    finite_lr = lr_eff[~np.isnan(lr_eff)]
    return {
        "defined": defined,
        "count": int(gamma.size),
        "negative": int(np.count_nonzero(finite_gamma < 0)) if defined else 0,
        "undefined": int(np.count_nonzero(np.isnan(gamma))) if defined else 0,
        "gamma_min": float(finite_gamma.min()) if defined and finite_gamma.size else
        (float("inf") if defined else float("nan")),
        "lr_min": float(finite_lr.min()) if finite_lr.size else float("inf"),
        "lr_max": float(finite_lr.max()) if finite_lr.size else float("-inf"),
    }


def assert_adamcore_replays_every_bit(cases, isa: str, mode: str):
    """adamcore on ``isa`` replays every case of a golden set with 0 ulp in ``mode``
    ("trajectory" or "per_step"); returns the oracle's report."""
    from adamcore import oracle

    step_fn, dtype = oracle.get_step_fn(f"adamcore:{isa}")
    result = oracle.check(step_fn, cases, mode=mode, state_dtype=dtype)
    assert not result.skipped, result.skipped
    assert result.cases_run == [c.name for c in cases]
    assert result.passed and result.max_ulp == 0.0, result.format()
    return result
