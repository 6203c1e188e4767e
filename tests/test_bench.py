"""The benchmark harness: its CLI output, and that what it times is the real step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import adamcore
from adamcore import _contention, bench
from adamcore.__main__ import main

TINY = ["--repeats", "3", "--batch-ms", "0.2", "--no-progress"]


def run_bench(tmp_path, *args: str) -> dict:
    code = main(["bench", *args, *TINY, "--out", str(tmp_path)])
    assert code == 0
    return json.loads((tmp_path / "bench.json").read_text())


def test_cli_json_structure_and_times(tmp_path, capsys):
    data = run_bench(tmp_path, "--sizes", "1024", "--cases", "sizes", "small-tensors",
                     "--optimizers", "adam", "adagrad", "--threads", "1", "2",
                     "--peers", "numpy", "--no-plot")
    out = capsys.readouterr().out
    assert "time/step" in out and "adamcore" in out and "stream" in out
    assert not (tmp_path / "bench.png").exists()

    assert data["machine"]["adamcore"]["version"] == adamcore.__version__
    assert data["settings"]["implementations"] == ["adamcore", "numpy"]
    rows = data["results"]
    groups = {(r["case"], r["optimizer"], r["threads"]) for r in rows}
    assert len(groups) == 2 * 2 * 2  # (N=1K, 500 tensors) x (adam, adagrad) x (1, 2)
    for key in groups:
        names = sorted(r["implementation"] for r in rows
                       if (r["case"], r["optimizer"], r["threads"]) == key)
        assert names == ["adamcore", "numpy", "stream"]
    for r in rows:
        assert len(r["seconds_per_step"]) == r["rounds"] == 3
        assert all(math.isfinite(t) and t > 0 for t in r["seconds_per_step"])
        assert r["median_seconds"] == sorted(r["seconds_per_step"])[1]
        assert r["gbps"] > 0 and r["fraction_of_stream"] > 0
        per_element = 12 if r["implementation"] == "stream" else bench.BYTES_PER_ELEMENT[
            r["optimizer"]]
        assert r["bytes_per_step"] == per_element * r["elements"]
        if r["implementation"] == "numpy":
            adamcore_row = next(a for a in rows if a["implementation"] == "adamcore" and
                                (a["case"], a["optimizer"], a["threads"]) ==
                                (r["case"], r["optimizer"], r["threads"]))
            assert r["adamcore_speedup"] == pytest.approx(
                r["median_seconds"] / adamcore_row["median_seconds"])
    small = [r for r in rows if r["case"].startswith("500 tensors")]
    assert all(r["tensors"] == 500 for r in small)

    for check in data["first_step_checks"]:
        assert check["first_step"]["adamcore"] == {"param_max_ulp_vs_adamcore": 0,
                                                   "param_max_abs_diff_vs_adamcore": 0.0,
                                                   "params_changed": True}
        # NumPy without fused multiply-adds is a rounding or two away from the recipe:
        # parameters are ~0.02 in size and a step moves them by ~lr, so 1e-8 is a few
        # ulps of the step, far below the step itself.
        numpy_check = check["first_step"]["numpy"]
        assert numpy_check["params_changed"]
        assert numpy_check["param_max_ulp_vs_adamcore"] > 0  # NumPy really ran (not bitwise)
        assert numpy_check["param_max_abs_diff_vs_adamcore"] < 1e-8


def test_budget_stops_new_rounds_for_every_implementation(tmp_path, capsys):
    data = run_bench(tmp_path, "--sizes", "1024", "--cases", "sizes", "--optimizers", "adam",
                     "--threads", "1", "--peers", "numpy", "--no-plot", "--budget", "1e-9")
    assert {r["rounds"] for r in data["results"]} == {1}
    assert "1 of 3 rounds (--budget reached)" in capsys.readouterr().out


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    run_bench(tmp_path, "--sizes", "1024", "4096", "--cases", "sizes", "--optimizers",
              "adam", "--threads", "1", "--peers", "numpy")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "amsgrad", "adagrad"])
def test_torch_fused_peer_matches_adamcore_bitwise(tmp_path, optimizer):
    # The harness hands torch its state arrays: if that went wrong, or torch were
    # stepping different hyperparameters, the first step would not be bit-identical.
    pytest.importorskip("torch")
    data = run_bench(tmp_path, "--sizes", "4096", "--cases", "sizes", "--optimizers",
                     optimizer, "--threads", "1", "--peers", "torch-fused", "--no-plot")
    (check,) = data["first_step_checks"]
    assert check["first_step"]["torch-fused"] == {"param_max_ulp_vs_adamcore": 0,
                                                  "param_max_abs_diff_vs_adamcore": 0.0,
                                                  "params_changed": True}


def test_isas_run_side_by_side_and_agree_bitwise(tmp_path):
    isas = adamcore.available_isas()
    best = adamcore.get_isa()
    data = run_bench(tmp_path, "--sizes", "1000", "--cases", "sizes", "--optimizers", "adam",
                     "--threads", "1", "--isas", best, "scalar", "--peers", "numpy",
                     "--no-plot")
    names = [f"adamcore[{best}]"] + (["adamcore[scalar]"] if best != "scalar" else [])
    assert data["settings"]["implementations"] == names + ["numpy"]
    (check,) = data["first_step_checks"]
    for name in names:  # every ISA gives the same bits
        assert check["first_step"][name]["param_max_ulp_vs_adamcore"] == 0
    assert adamcore.get_isa() == best  # the run restores the ISA it found
    assert "scalar" in isas


def test_unsupported_isa_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--isas"):
        main(["bench", "--isas", "no-such-isa", "--out", str(tmp_path)])


def direct_steps(optimizer: str, buffers: bench.Buffers, steps: int) -> None:
    """The same steps as the harness's adamcore runner, one plain call per tensor."""
    h = bench.HYPER[optimizer]
    s = buffers.states
    for t in range(1, steps + 1):
        for i, (p, g) in enumerate(zip(buffers.params, buffers.grads)):
            if optimizer == "adagrad":
                adamcore.adagrad_step(p, g, s["state_sum"][i], step=t, **h)
                continue
            fn = adamcore.adamw_step if optimizer == "adamw" else adamcore.adam_step
            extra = {}
            if optimizer == "amsgrad":
                extra = {"amsgrad": True, "max_exp_avg_sq": s["max_exp_avg_sq"][i]}
            fn(p, g, s["exp_avg"][i], s["exp_avg_sq"][i], step=t, **h, **extra)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "amsgrad", "adagrad"])
@pytest.mark.parametrize("sizes", [[3000], [17, 1024, 5, 4099]])
def test_timed_adamcore_runner_is_the_real_step(optimizer, sizes):
    case = bench.Case("t", "sizes", sizes)
    initial = bench.make_initial_state(case, optimizer)
    timed = initial.fresh_buffers(optimizer)
    expected = initial.fresh_buffers(optimizer)
    runner = bench.make_runner("adamcore", optimizer, timed)
    runner.run(2)
    runner.run(1)
    direct_steps(optimizer, expected, 3)
    for got, want in zip(timed.writable(), expected.writable()):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(timed.params[0], initial.params[0])


def test_subnormal_case_state_is_subnormal():
    (case,) = bench.build_cases(["subnormal"], [], quick=True)
    initial = bench.make_initial_state(case, "adam")
    tiny = np.finfo(np.float32).tiny
    zero_rows = initial.grads[0].reshape(-1, 1024)[::2]
    assert not zero_rows.any()
    for name in ("exp_avg", "exp_avg_sq"):
        rows = initial.states[name][0].reshape(-1, 1024)[::2]
        assert (rows > 0).all() and (rows < tiny).all()
    buffers = initial.fresh_buffers("adam")
    bench.make_runner("adamcore", "adam", buffers).run(1)
    decayed = buffers.states["exp_avg_sq"][0].reshape(-1, 1024)[::2]
    assert (decayed > 0).all() and (decayed < tiny).all()


def test_gpt2_small_shapes():
    sizes = bench.gpt2_small_sizes()
    assert len(sizes) == 148
    assert sum(sizes) == 124_439_808


def test_crossover_mode(tmp_path, capsys):
    threads, threshold = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    code = main(["bench", "--crossover", "--sizes", "4K", "8K", *TINY, "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "crossover.json").read_text())
    assert [r["elements"] for r in data["rows"]] == [4096, 8192]
    for r in data["rows"]:
        assert r["one_thread_seconds"] > 0 and r["two_threads_seconds"] > 0
    assert "two threads win from" in capsys.readouterr().out
    assert (adamcore.get_num_threads(), adamcore.get_parallel_threshold()) == (threads, threshold)


@pytest.mark.parametrize("bad", [["--sizes", "12Q"], ["--sizes", "0"], ["--threads", "0"],
                                 ["--optimizers", "sgd"], ["--repeats", "-1"]])
def test_bad_arguments_are_rejected(tmp_path, bad, capsys):
    with pytest.raises(SystemExit):
        main(["bench", *bad, "--out", str(tmp_path)])
    assert bad[0] in capsys.readouterr().err


def test_first_step_check_flags_a_wrong_or_missing_update():
    good = {"params_changed": True, "param_max_ulp_vs_adamcore": 3,
            "param_max_abs_diff_vs_adamcore": 2e-9}
    assert bench.first_step_agrees(good, "adam")
    assert not bench.first_step_agrees({**good, "params_changed": False}, "adam")
    assert not bench.first_step_agrees({**good, "param_max_ulp_vs_adamcore": -1}, "adam")
    # A peer that stepped with lr 1e-2 instead of 1e-3 moves parameters ~9e-3 further.
    assert not bench.first_step_agrees({**good, "param_max_abs_diff_vs_adamcore": 9e-3},
                                       "adam")


def test_unknown_implementation_is_named():
    case = bench.Case("t", "sizes", [64])
    buffers = bench.make_initial_state(case, "adam").fresh_buffers("adam")
    with pytest.raises(ValueError, match="implementation"):
        bench.make_runner("jax", "adam", buffers)
    with pytest.raises(ValueError, match="optimizer"):
        bench.make_runner("adamcore", "sgd", buffers)


# ---------------------------------------------------------------- layouts (issue 9)


def test_layout_cases_are_built_per_layout_and_size():
    quick = bench.build_cases(["layouts"], [], quick=True)
    assert [(c.layout, c.sizes) for c in quick] == [
        (name, [n]) for name in bench.LAYOUTS for n in bench.LAYOUT_QUICK_SIZES]
    chosen = bench.build_cases(["layouts"], [], quick=False, layout_sizes=[4096],
                               layouts=["all-bf16"])
    assert [(c.name, c.kind, c.layout) for c in chosen] == [
        ("all-bf16 N=4K", "layouts", "all-bf16")]
    for layout in bench.LAYOUTS.values():  # bytes a step moves, from the dtypes
        size = {"float32": 4, "bfloat16": 2}
        moved = (2 * size[layout.param] + size[layout.grad] + 4 * size[layout.state]
                 + (size[layout.param_copy] if layout.param_copy else 0))
        assert layout.bytes_per_element == moved, layout.name


@pytest.mark.parametrize("layout", ["all-bf16", "f32-master+bf16-copy",
                                    "bf16-params+f32-state", "f32-params+bf16-state"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_timed_layout_runner_is_the_functional_step(layout, optimizer):
    pytest.importorskip("ml_dtypes")
    case = bench.Case("t", "layouts", [3000], layout=layout)
    initial = bench.make_initial_state(case, optimizer)
    spec = bench.LAYOUTS[layout]
    timed = initial.fresh_buffers(optimizer)
    expected = initial.fresh_buffers(optimizer)
    for name, arrays in (("param", timed.params), ("grad", timed.grads),
                         ("state", timed.states["exp_avg"])):
        assert arrays[0].dtype == bench.numpy_dtype(getattr(spec, name))
    runner = bench.make_runner("adamcore", optimizer, timed)
    runner.run(2)
    fn = adamcore.adamw_step if optimizer == "adamw" else adamcore.adam_step
    s = expected.states
    for t in (1, 2):
        extra = {} if expected.param_copy is None else {"param_copy": expected.param_copy[0]}
        fn(expected.params[0], expected.grads[0], s["exp_avg"][0], s["exp_avg_sq"][0],
           step=t, **bench.HYPER[optimizer], **extra)
    for got, want in zip(timed.writable(), expected.writable()):
        np.testing.assert_array_equal(got, want)
    if spec.param_copy:
        np.testing.assert_array_equal(timed.param_copy[0],
                                      timed.params[0].astype(timed.param_copy[0].dtype))
    # The float32 reference steps the same values, all in float32.
    wide = initial.fresh_buffers(optimizer, float32=True)
    assert all(a.dtype == np.float32 for a in wide.writable() + wide.grads)
    assert wide.param_copy is None
    np.testing.assert_array_equal(wide.grads[0], initial.grads[0].astype(np.float32))


def test_layouts_run_side_by_side_with_their_references(tmp_path, capsys):
    pytest.importorskip("ml_dtypes")
    data = run_bench(tmp_path, "--cases", "layouts", "--sizes", "4K", "--optimizers",
                     "adamw", "adagrad", "--threads", "1", "--no-plot")
    out = capsys.readouterr().out
    installed = data["settings"]["implementations"]
    assert "layouts: adamcore's functional API" in out
    rows = data["results"]
    assert {r["optimizer"] for r in rows} == {"adamw"}  # the layouts are Adam's
    assert {r["case"] for r in rows} == {f"{name} N=4K" for name in bench.LAYOUTS}
    for name, layout in bench.LAYOUTS.items():
        group = {r["implementation"]: r for r in rows if r["case"] == f"{name} N=4K"}
        peers = [p for p in layout.peers if p == bench.FLOAT32_STEP or p in installed]
        assert list(group) == ["adamcore", *peers, "stream"]
        assert group["adamcore"]["bytes_per_step"] == layout.bytes_per_element * 4096
        if bench.FLOAT32_STEP in group:
            assert group[bench.FLOAT32_STEP]["bytes_per_step"] == 28 * 4096
        for peer in peers:
            assert group[peer]["adamcore_speedup"] == pytest.approx(
                group[peer]["median_seconds"] / group["adamcore"]["median_seconds"])
    for check in data["first_step_checks"]:
        for name, v in check["first_step"].items():
            if name == "deepspeed":  # its own roundings (docs/usage.md): close, not bitwise
                assert bench.first_step_agrees(v, "adamw")
                continue
            # torch fused bf16 and the float32 step (16-bit grads widened; 16-bit state
            # rounded only when stored) give the same bits after one step.
            assert v == {"param_max_ulp_vs_adamcore": 0, "param_max_abs_diff_vs_adamcore": 0.0,
                         "params_changed": True}, (check["case"], name)
    assert set(data["settings"]["layouts"]) == set(bench.LAYOUTS)


_CPUINFO_UNTOUCHED_BY_IMPORT = """
import cpuinfo
before = cpuinfo.get_cpu_info
import adamcore.bench
import adamcore.bench.runners
assert cpuinfo.get_cpu_info is before, cpuinfo.get_cpu_info
"""


def test_bench_leaves_cpuinfo_as_it_was(monkeypatch):
    # DeepSpeed's constructors ask py-cpuinfo about the CPU (a second each); the harness
    # caches the answer only while it builds DeepSpeed optimizers, never process-wide.
    import subprocess
    import sys

    cpuinfo = pytest.importorskip("cpuinfo")
    subprocess.run([sys.executable, "-c", _CPUINFO_UNTOUCHED_BY_IMPORT], check=True,
                   timeout=120)
    calls = []
    original = cpuinfo.get_cpu_info

    def counting():
        calls.append(1)
        return original()

    monkeypatch.setattr(cpuinfo, "get_cpu_info", counting)
    if "deepspeed" not in bench.available_implementations(["deepspeed"]):
        assert cpuinfo.get_cpu_info is counting
        pytest.skip("DeepSpeed's CPU op is not available here")
    case = bench.Case("t", "sizes", [4096])
    initial = bench.make_initial_state(case, "adamw")
    for _ in range(2):
        bench.make_runner("deepspeed", "adamw", initial.fresh_buffers("adamw")).run(1)
        assert cpuinfo.get_cpu_info is counting
    assert len(calls) <= 1  # asked at most once: the cache served the rest


# ---------------------------------------------------------------- contended and train-loop


def _stats_ordered(stats: dict) -> None:
    assert stats["count"] >= 1
    for key in ("median_seconds", "p90_seconds", "p99_seconds", "max_seconds", "mean_seconds"):
        assert math.isfinite(stats[key]) and stats[key] > 0, key
    assert (stats["median_seconds"] <= stats["p90_seconds"] <= stats["p99_seconds"]
            <= stats["max_seconds"])


def _assert_gone(pids) -> None:
    """Each PID has exited and been reaped (or, if re-parented to an init that has not
    reaped it yet, is a zombie): nothing of ours is still running."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state in ("Z", "X"), f"spinner {pid} still running (state {state})"
    assert _contention.live_spinner_children() == []


def test_latency_stats_and_step_counts():
    stats = bench.latency_stats([3e-6, 1e-6, 2e-6, 100e-6] + [2e-6] * 96)
    assert stats["count"] == 100
    assert stats["median_seconds"] == 2e-6
    assert stats["max_seconds"] == 100e-6
    _stats_ordered(stats)
    with pytest.raises(ValueError):
        bench.latency_stats([])
    assert bench.contended_steps(1 << 16, 1000) == 1000
    assert bench.contended_steps(1 << 12, 1000) == 1000
    assert bench.contended_steps(1 << 20, 1000) == 200
    assert bench.contended_steps(1 << 20, 3) == 3


def test_cpu_identity_is_recorded():
    ident = bench.cpu_identity()
    assert ident["cpu"]
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return
    if "cpu family" in text:
        assert isinstance(ident["cpu_family"], int) and isinstance(ident["cpu_model"], int)


def test_spinners_run_and_stop():
    with _contention.Spinners(2) as spin:
        assert len(spin.alive()) == 2
        assert sorted(_contention.live_spinner_children()) == sorted(spin.pids)
    assert spin.alive() == []
    _assert_gone(spin.pids)
    report = spin.report()
    assert report["count"] == 2 and report["pids"] == spin.pids
    spin.stop()  # idempotent


def test_spinners_stop_when_the_block_raises():
    spin = _contention.Spinners(1)
    with pytest.raises(RuntimeError, match="boom"):
        with spin:
            raise RuntimeError("boom")
    _assert_gone(spin.pids)


_ORPHAN_PARENT = """
import os, sys
from adamcore._contention import Spinners
spin = Spinners(1, pdeathsig={pdeathsig}).start(settle_seconds=0)
print(spin.pids[0], flush=True)
{exit}
"""


@pytest.mark.parametrize("pdeathsig, exit", [
    (True, "os._exit(0)"),             # killed parent: the kernel's parent-death signal
    (False, "os._exit(0)"),            # no such signal: the child's getppid() poll
    (False, "sys.exit(0)"),            # normal exit without stop(): atexit
])
def test_spinners_never_outlive_their_parent(pdeathsig, exit):
    import subprocess
    import sys
    import time

    out = subprocess.run([sys.executable, "-c",
                          _ORPHAN_PARENT.format(pdeathsig=pdeathsig, exit=exit)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    pid = int(out.split()[0])
    deadline = time.monotonic() + 10  # a liveness bound, not a timing claim
    while time.monotonic() < deadline:
        try:
            _assert_gone([pid])
            return
        except AssertionError:
            time.sleep(0.05)
    _assert_gone([pid])


def test_contended_case_structure(tmp_path, capsys):
    data = run_bench(tmp_path, "--cases", "contended", "--contended-sizes", "4K", "64K",
                     "--steps", "6", "--peers", "numpy", "--spinners", "2")
    out = capsys.readouterr().out
    assert "Contended case" in out and "Ratios to the 1-thread median" in out
    assert data["machine"]["cpu"] and "cpu_family" in data["machine"]
    assert data["results"] == []  # no ordinary case was asked for
    c = data["contended"]
    assert c["implementations"] == ["adamcore"]  # torch-fused only when it is a peer
    assert c["threads"] == [1, 2]
    assert [i["condition"] for i in c["conditions"]] == ["idle", "contended"]
    assert "spinners" not in c["conditions"][0]
    spin = c["conditions"][1]["spinners"]
    assert spin["count"] == 2 and len(spin["pids"]) == 2
    _assert_gone(spin["pids"])  # the spinners were stopped and reaped
    keys = {(r["condition"], r["elements"], r["implementation"], r["threads"])
            for r in c["rows"]}
    assert keys == {(cond, n, "adamcore", t) for cond in ("idle", "contended")
                    for n in (4096, 65536) for t in (1, 2)}
    for r in c["rows"]:
        _stats_ordered(r)
        assert r["count"] == len(r["samples_seconds"]) == r["steps_wanted"] == 6
        assert r["median_seconds"] == pytest.approx(float(np.median(r["samples_seconds"])))
        assert r["max_seconds"] == max(r["samples_seconds"])
    by_key = {(r["condition"], r["elements"], r["threads"]): r for r in c["rows"]}
    assert len(c["ratios"]) == 4
    for q in c["ratios"]:
        one = by_key[(q["condition"], q["elements"], 1)]
        two = by_key[(q["condition"], q["elements"], 2)]
        assert q["threads"] == 2
        assert q["median_over_one_thread_median"] == pytest.approx(
            two["median_seconds"] / one["median_seconds"])
        assert q["p99_over_one_thread_median"] == pytest.approx(
            two["p99_seconds"] / one["median_seconds"])
        assert q["p99_over_one_thread_p99"] == pytest.approx(
            two["p99_seconds"] / one["p99_seconds"])
        judged = q["condition"] == "contended"
        for key, limit in (("median_target_met", 1.5), ("p99_target_met", 3.0)):
            if judged:
                ratio = q["median_over_one_thread_median" if key.startswith("median")
                          else "p99_over_one_thread_median"]
                assert q[key] is (ratio <= limit)
            else:
                assert q[key] is None
    verdicts = [line for line in out.splitlines() if line.startswith("contended")
                and ("median met" in line or "median MISSED" in line)]
    assert len(verdicts) == 2  # adamcore, 2 threads, at 4K and 64K


def test_contended_case_runs_torch_fused_beside(tmp_path):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    data = run_bench(tmp_path, "--cases", "contended", "--contended-sizes", "4K",
                     "--steps", "4", "--peers", "torch-fused", "--spinners", "1")
    c = data["contended"]
    assert c["implementations"] == ["adamcore", "torch-fused"]
    names = {(r["implementation"], r["threads"]) for r in c["rows"]}
    assert names == {("adamcore", 1), ("adamcore", 2), ("torch-fused", 1), ("torch-fused", 2)}
    for r in c["rows"]:
        _stats_ordered(r)
    fused = [q for q in c["ratios"] if q["implementation"] == "torch-fused"]
    assert fused and all(q["median_target_met"] is None for q in fused)
    assert torch.get_num_threads() == threads  # restored
    _assert_gone(c["conditions"][1]["spinners"]["pids"])


def test_contended_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="implementations"):
        bench.measure_contended([64], implementations=["numpy"], steps_at_64k=1)
    with pytest.raises(ValueError, match="conditions"):
        bench.measure_contended([64], steps_at_64k=1, conditions=["busy"],
                                implementations=["adamcore"])


def test_train_loop_structure():
    torch = pytest.importorskip("torch")
    threads = adamcore.get_num_threads(), torch.get_num_threads()
    r = bench.measure_train_loop(iterations=4, batch=4, dims=(8, 16, 8), spinners=1, warmup=1)
    assert (adamcore.get_num_threads(), torch.get_num_threads()) == threads  # restored
    assert r["torch_threads"] == threads[1]
    assert r["parameters"] == 8 * 16 + 16 + 2 * 16 + 16 * 8 + 8
    assert [i["condition"] for i in r["conditions"]] == ["idle", "contended"]
    _assert_gone(r["conditions"][1]["spinners"]["pids"])
    variants = [(row["condition"], row["implementation"], row["adamcore_threads"])
                for row in r["rows"]]
    assert variants == [(cond, name, t) for cond in ("idle", "contended")
                        for name, t in (("adamcore", 1), ("adamcore", 2), ("torch-fused", None))]
    for row in r["rows"]:
        for part in ("step", "iteration", "forward_backward"):
            _stats_ordered(row[part])
            assert row[part]["count"] == 4
        assert all(s <= w for s, w in zip(row["step_samples_seconds"],
                                          row["iteration_samples_seconds"]))
        if row["implementation"] == "torch-fused":
            assert row["step_median_over_torch_fused"] == 1.0
    assert r["params_changed"]
    # Every variant took the same steps on the same data: adamcore.torch matches torch
    # fused (bit for bit on these sizes; allow a rounding or two per step).
    assert max(r["param_max_abs_diff_vs_torch_fused"].values()) < 1e-5


def test_train_loop_cli(tmp_path, capsys):
    pytest.importorskip("torch")
    data = run_bench(tmp_path, "--cases", "train-loop", "--iterations", "2",
                     "--train-dims", "8", "4", "--train-batch", "2", "--spinners", "1")
    out = capsys.readouterr().out
    assert "Training loop" in out and "torch threads" in out
    t = data["train_loop"]
    assert t["iterations"] == 2 and t["batch"] == 2
    assert {row["api"] for row in t["rows"]} == {"adamcore.torch.AdamW",
                                                "torch.optim.AdamW(fused=True)"}
    assert _contention.live_spinner_children() == []


def test_train_loop_is_skipped_without_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "torch_available", lambda: False)
    data = run_bench(tmp_path, "--cases", "train-loop", "--peers", "numpy")
    assert data["train_loop"] == {"skipped": "torch is not installed"}
    assert "train-loop: skipped (torch is not installed)" in capsys.readouterr().out


def _threads_ab():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "threads_ab.py"
    spec = importlib.util.spec_from_file_location("threads_ab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_threads_ab_script_runs_and_compares(tmp_path, capsys):
    ab = _threads_ab()
    with_torch = bench.torch_available()
    out_json = tmp_path / "a.json"
    assert ab.main(["--label", "A", "--json", str(out_json), "--sizes", "4096", "--steps", "4",
                    "--iterations", "2", "--dims", "8", "4", "--batch", "2",
                    "--spinners", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| condition | size | implementation | threads | median |" in out
    assert "2t median ÷ 1t median" in out
    assert ("Training loop (" in out) == with_torch
    data = json.loads(out_json.read_text())
    assert data["label"] == "A" and data["build"]["extension_sha256_16"]
    assert data["machine"]["cpu"]
    for r in data["contended"]["rows"]:
        _stats_ordered(r)
    assert _contention.live_spinner_children() == []
    b = dict(data, label="B")
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert ab.main(["--compare", str(out_json), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| A median | B median | B ÷ A |" in out and "1.00×" in out
