"""Golden vectors and the oracle: adamcore passes with 0 ulp; perturbations are located.

These sets are written by adamcore's own kernels during the run, so they test the oracle,
the file format and cross-ISA agreement, not the arithmetic: a change every ISA makes
alike passes here. tests/test_golden_committed.py checks the kernels against committed
bits from torch fused and the float64 reference.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import adamcore
from adamcore import golden, oracle
from adamcore.__main__ import main


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden")
    golden.write(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def cases(golden_dir):
    return oracle.load(golden_dir)


def test_manifest_and_files(golden_dir, cases, tmp_path):
    with open(os.path.join(golden_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["format_version"] == oracle.FORMAT_VERSION
    names = [c["name"] for c in manifest["cases"]]
    assert len(names) == len(set(names)) == len(cases)
    total = sum(os.path.getsize(os.path.join(golden_dir, f)) for f in os.listdir(golden_dir))
    assert total < 3 * 1024 * 1024
    with np.load(os.path.join(golden_dir, manifest["cases"][0]["file"])) as data:
        assert data["grads"].dtype == np.uint32
        assert data["expected_param"].dtype == np.uint32
        assert data["reference_param"].dtype == np.float64
    bits = {"float32": np.uint32, "float64": np.uint64, "bfloat16": np.uint16,
            "float16": np.uint16}
    for entry in manifest["cases"]:  # every value stored as the bits of its dtype
        with np.load(os.path.join(golden_dir, entry["file"])) as data:
            assert data["grads"].dtype == bits[entry["layout"]["grad"]]
            assert data["expected_param"].dtype == bits[entry["layout"]["param"]]
    # Written deterministically: the same inputs give the same bytes.
    again = str(tmp_path / "again")
    golden.write(again)
    for entry in manifest["cases"]:
        with open(os.path.join(golden_dir, entry["file"]), "rb") as a, \
                open(os.path.join(again, entry["file"]), "rb") as b:
            assert a.read() == b.read(), entry["name"]


def test_coverage(cases):
    optimizers = {c.optimizer for c in cases}
    assert optimizers == {"adam", "adamw", "adagrad"}
    assert any(c.hyper.get("amsgrad") for c in cases)
    assert any(c.hyper.get("maximize") for c in cases)
    assert any(c.hyper.get("bias_correction") is False for c in cases)
    assert any(c.optimizer == "adam" and c.hyper["weight_decay"] > 0 for c in cases)
    assert {c.hyper.get("beta1") for c in cases} >= {0.9, 0.3}  # both lerp branches
    assert any(c.hyper.get("lr_decay", 0) > 0 for c in cases)
    sizes = {c.size for c in cases}
    assert any(s % 16 for s in sizes) and 16 in sizes and 1 in sizes
    assert any(c.steps[0] > 1 for c in cases)
    assert any(len(set(c.lrs)) > 1 for c in cases)
    f32 = [c for c in cases if "layout" not in c.tags]
    grads = np.concatenate([c.grads.ravel() for c in f32])
    finite = grads[np.isfinite(grads)]
    tiny = np.finfo(np.float32).tiny
    assert np.isnan(grads).any() and np.isposinf(grads).any() and np.isneginf(grads).any()
    assert ((finite != 0) & (np.abs(finite) < tiny)).any()          # subnormal
    assert (np.abs(finite) > 1e19).any()                             # g*g overflows
    assert ((finite != 0) & (np.abs(finite) < 1e-19)).any()          # g*g underflows
    assert (finite == 0).any() and np.signbit(finite[finite == 0]).any()
    # The stored trajectories really reach the awkward regions.
    for key in ("param", "exp_avg_sq"):
        values = np.concatenate([c.expected[key].ravel() for c in f32 if key in c.expected])
        assert np.isnan(values).any() and np.isinf(values).any()
    # The other layouts (with ml_dtypes), AMP and stochastic rounding.
    layouts = {oracle.layout_name(c.layout) for c in cases}
    assert {"f32", "bf16", "fp16", "f64", "f32 params, bf16 grads, f32 state + bf16 copy",
            "bf16 params, bf16 grads, f32 state", "f32 params, f32 grads, bf16 state + bf16 copy",
            "f32 params, fp16 grads, f32 state + fp16 copy"} <= layouts
    amp = [c for c in cases if c.grad_scale is not None]
    assert amp and any(any(c.found_inf) for c in amp) and amp[0].expected_grad is not None
    assert {c.layout["param"] for c in cases if c.rounding == "stochastic"} == {"bfloat16",
                                                                               "float16"}
    special16 = [c for c in cases if "specials" in c.tags]
    assert special16 and np.isnan(special16[0].grads.astype(np.float32)).any()


@pytest.mark.parametrize("isa", adamcore.available_isas())
@pytest.mark.parametrize("mode", ["trajectory", "per_step"])
def test_adamcore_passes_with_zero_ulp_on_every_isa(cases, isa, mode):
    step_fn, dtype = oracle.get_step_fn(f"adamcore:{isa}")
    report = oracle.check(step_fn, cases, mode=mode, state_dtype=dtype)
    assert report.cases_run == [c.name for c in cases] and not report.skipped
    assert report.max_ulp == 0.0
    assert report.passed and report.first_mismatch is None


def test_stored_reference_is_the_float64_reference(cases):
    ref_fn, dtype = oracle.get_step_fn("reference")
    for case in cases:
        got = golden.trajectory(case, ref_fn, dtype)
        for key in case.keys:
            np.testing.assert_array_equal(got[key], case.reference[key], err_msg=case.name)


def test_reference_is_close_but_not_bitwise(cases):
    ref_fn, dtype = oracle.get_step_fn("reference")
    normal = [c for c in cases if "normal" in c.tags]
    report = oracle.check(ref_fn, normal, state_dtype=dtype, name="reference")
    assert not report.passed
    # float32 rounding after a handful of steps on well-scaled inputs: ulps, not orders.
    assert 0 < report.max_ulp < 1000


def _perturbed(case_name, array, step, index):
    """adamcore, except one element of one array is moved one ulp at one step."""
    base, _ = oracle.get_step_fn("adamcore")

    def step_fn(case, state, grad, s, lr):
        base(case, state, grad, s, lr)
        if case.name == case_name and s == step:
            a = state[array]
            a[index] = np.nextafter(a[index], np.float32(np.inf), dtype=np.float32)

    return step_fn


@pytest.mark.parametrize("case_name, array, step_index, index", [
    ("adam-normal", "param", 3, 5),              # vector body
    ("adam_amsgrad-normal", "max_exp_avg_sq", 0, 66),  # scalar tail, first step
    ("adagrad_decay_wd-late", "state_sum", 3, 32),    # last step, last element
    ("adamw-special", "exp_avg", 2, 17),
])
@pytest.mark.parametrize("mode", ["trajectory", "per_step"])
def test_one_ulp_perturbation_is_caught_and_located(cases, case_name, array, step_index,
                                                    index, mode):
    case = next(c for c in cases if c.name == case_name)
    step = case.steps[step_index]
    expected_value = case.expected[array][step_index][index]
    assert np.isfinite(expected_value)
    report = oracle.check(_perturbed(case_name, array, step, index), cases, mode=mode)
    assert not report.passed
    first = report.first_mismatch
    assert (first.case, first.array, first.step, first.first_index) == (
        case_name, array, step, index)
    assert first.max_ulp == 1.0 and first.count == 1
    assert first.expected == expected_value
    assert first.actual == np.nextafter(expected_value, np.float32(np.inf), dtype=np.float32)
    assert "index %d" % index in first.describe()
    if mode == "per_step":
        # Restarting from the golden state confines the difference to that one element.
        assert [(r.case, r.array, r.step) for r in report.failures] == [
            (case_name, array, step)]


def test_nan_is_compared_by_position_not_payload(cases):
    base, _ = oracle.get_step_fn("adamcore")

    def other_payload(case, state, grad, step, lr):
        base(case, state, grad, step, lr)
        for a in state.values():
            bits = a.view(np.uint32)
            nan = np.isnan(a)
            bits[nan] = 0x7FC00001 ^ (bits[nan] & 0x80000000) ^ 0x80000000  # flip sign too

    def nan_to_zero(case, state, grad, step, lr):
        base(case, state, grad, step, lr)
        for a in state.values():
            a[np.isnan(a)] = 0.0

    special = [c for c in cases if "special" in c.tags]
    assert oracle.check(other_payload, special).passed
    report = oracle.check(nan_to_zero, special)
    assert not report.passed and report.max_ulp == np.inf
    assert np.isnan(report.first_mismatch.expected) and report.first_mismatch.actual == 0.0


def test_ulp_distance():
    f = np.float32
    one = f(1.0)
    assert oracle.ulp_distance([one], [np.nextafter(one, f(2), dtype=f)])[0] == 1
    assert oracle.ulp_distance([f(-0.0)], [f(0.0)])[0] == 1  # the sign of zero counts
    denorm = f(1e-45)
    assert oracle.ulp_distance([-denorm], [denorm])[0] == 3  # -d, -0, +0, +d
    assert oracle.ulp_distance([np.finfo(f).max], [f(np.inf)])[0] == 1
    assert oracle.ulp_distance([f(np.nan)], [f(-np.nan)])[0] == 0
    assert oracle.ulp_distance([f(np.nan)], [f(1.0)])[0] == np.inf
    with pytest.raises(ValueError, match="shapes"):
        oracle.ulp_distance(np.zeros(2, f), np.zeros(3, f))


def test_format_version_and_checksum_are_enforced(golden_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(golden_dir, copy)
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    first_file = copy / manifest["cases"][0]["file"]
    data = bytearray(first_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        oracle.load(str(copy))
    manifest["format_version"] = 999
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version"):
        oracle.load(str(copy))
    with pytest.raises(FileNotFoundError, match="manifest"):
        oracle.load(str(tmp_path))


def test_unsupported_cases_are_skipped(cases):
    def adam_only(case, state, grad, step, lr):
        if case.optimizer != "adam":
            raise oracle.Unsupported("adam only")
        oracle.get_step_fn("adamcore")[0](case, state, grad, step, lr)

    report = oracle.check(adam_only, cases)
    assert report.passed
    # (and the cases whose steps take grad_scale/found_inf/rounding, which adam_only cannot)
    assert set(report.skipped) == {c.name for c in cases
                                   if c.optimizer != "adam" or c.has_options}


@pytest.mark.parametrize("name", ["torch-default", "torch-foreach", "torch-fused"])
def test_torch_paths(cases, name):
    pytest.importorskip("torch")
    step_fn, dtype = oracle.get_step_fn(name)
    cases = [c for c in cases if "layout" not in c.tags]  # (the float32 cases)
    report = oracle.check(step_fn, cases, mode="per_step", name=name)
    # torch.optim.Adam has no bias_correction=False.
    assert set(report.skipped) == {c.name for c in cases
                                   if c.hyper.get("bias_correction") is False}
    sizes = {c.name: c.size for c in cases}
    finite_rows = [r for r in report.rows if np.isfinite(r.max_ulp)]
    if name == "torch-fused":
        # Bitwise on the 16-element vector body; the scalar tail's v may be 1 ulp off
        # per step, and its amsgrad max does not propagate NaN.
        for r in report.rows:
            if r.count:
                tail_start = sizes[r.case] - sizes[r.case] % 16
                assert r.indices.min() >= tail_start, r.describe()
        assert max(r.max_ulp for r in finite_rows) <= 1
        assert report.max_ulp_by("case")["adagrad-normal"] == 0
    else:
        # MKL's sqrt is not correctly rounded: a few ulp, never more on these inputs.
        assert max(r.max_ulp for r in finite_rows) <= 8
    assert report.max_ulp_by("case")["adam_amsgrad-len16"] == 0


def test_command_line_write_and_check(tmp_path, capsys):
    directory = str(tmp_path / "set")
    assert main(["golden", "write", directory]) == 0
    assert main(["golden", "write", directory]) == 2  # refuses to overwrite
    assert main(["golden", "write", directory, "--force"]) == 0
    assert main(["golden", "check", directory]) == 0
    assert main(["golden", "check", directory, "--impl", "reference"]) == 1
    assert main(["golden", "check", directory, "--impl", "nonsense"]) == 2
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" in out and "unknown implementation" in out
