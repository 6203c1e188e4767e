"""The SGD and Lion golden set (golden.write_lion_sgd): adamcore replays it with 0 ulp on
every ISA; torch's SGD paths are checked against it (for-each: every element; fused: its
vector body, its scalar tail within a few ulp per step); the float64 reference is close."""

from __future__ import annotations

import numpy as np
import pytest

import adamcore
from adamcore import golden, oracle


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden_lion_sgd")
    golden.write_lion_sgd(str(directory))
    return oracle.load(str(directory))


def test_coverage(cases):
    assert {c.optimizer for c in cases} == {"sgd", "lion"}
    assert {c.hyper.get("convention") for c in cases if c.optimizer == "lion"} == {"paper",
                                                                                   "deepspeed"}
    assert any(c.hyper.get("nesterov") for c in cases)
    assert {c.size % 8 for c in cases} >= {0, 3, 5}
    grads = np.concatenate([c.grads.ravel() for c in cases])
    assert np.isnan(grads).any() and np.isinf(grads).any()


@pytest.mark.parametrize("isa", adamcore.available_isas())
@pytest.mark.parametrize("mode", ["trajectory", "per_step"])
def test_adamcore_passes_with_zero_ulp_on_every_isa(cases, isa, mode):
    step_fn, dtype = oracle.get_step_fn(f"adamcore:{isa}")
    report = oracle.check(step_fn, cases, mode=mode, state_dtype=dtype)
    assert report.cases_run == [c.name for c in cases] and not report.skipped
    assert report.max_ulp == 0.0


def test_one_ulp_perturbation_is_caught(cases):
    base, _ = oracle.get_step_fn("adamcore")

    def perturbed(case, state, grad, step, lr):
        base(case, state, grad, step, lr)
        if case.name == "lion-normal64" and step == 3:
            state["exp_avg"][5] = np.nextafter(state["exp_avg"][5], np.float32(np.inf))

    report = oracle.check(perturbed, cases, mode="per_step")
    first = report.first_mismatch
    assert (first.case, first.array, first.step, first.first_index) == ("lion-normal64", "exp_avg", 3, 5)
    assert first.max_ulp == 1 and first.count == 1


def test_reference_is_close_on_normal_inputs(cases):
    ref_fn, dtype = oracle.get_step_fn("reference")
    normal = [c for c in cases if "normal" in c.tags]
    report = oracle.check(ref_fn, normal, mode="per_step", state_dtype=dtype)
    # float32 rounding in one step, in ulps of float32: large only where a parameter is
    # near zero (as for Adam's reference, tests/test_golden.py).
    assert 0 < report.max_ulp < 1000


def test_torch_sgd_paths(cases):
    pytest.importorskip("torch")
    foreach, _ = oracle.get_step_fn("torch-foreach")
    report = oracle.check(foreach, cases, mode="trajectory")
    assert set(report.skipped) == {c.name for c in cases if c.optimizer == "lion"}
    assert report.max_ulp == 0.0  # torch's for-each SGD rounds as the fused vector body
    fused, _ = oracle.get_step_fn("torch-fused")
    report = oracle.check(fused, cases, mode="per_step")
    sizes = {c.name: c.size for c in cases}
    width = 16 if adamcore.get_isa() == "avx512" else 8  # (torch's own width: at least 8)
    for row in report.rows:
        if row.count:  # only torch's scalar tail, and only with momentum
            assert row.indices.min() >= sizes[row.case] - sizes[row.case] % width, row.describe()
            assert "momentum" in row.case or "nesterov" in row.case
    assert report.max_ulp <= 16
