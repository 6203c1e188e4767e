"""The benchmark harness: its CLI output, and that what it times is the real step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import adamcore
from adamcore import bench
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
        assert numpy_check["param_max_ulp_vs_adamcore"] >= 0
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
