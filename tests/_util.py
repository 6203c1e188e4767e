"""Helpers shared by the tests."""

from __future__ import annotations

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
