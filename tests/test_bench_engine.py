"""``bench --engine deepspeed``: its timers, its summary and its command line, without
running DeepSpeed (the run itself takes minutes; BENCHMARKS.md has its figures)."""

from __future__ import annotations

import argparse
import time

import pytest

from adamcore import _bench_engine as be
from adamcore.__main__ import build_parser


def test_zero_timers_sum_each_phase_per_step():
    pending = {}
    timers = be._ZeroTimers(pending)
    for _ in range(2):  # two groups in one step: the intervals add up
        timers("optimizer_step").start()
        time.sleep(0.002)
        timers("optimizer_step").stop(record=False)
    timers("optimizer_allgather").start()
    timers("optimizer_allgather").stop()
    timers.log(["optimizer_step"])  # DeepSpeed's call; logs nothing
    assert set(pending) == {"zero_step", "zero_allgather"}
    assert pending["zero_step"] >= 0.004 and pending["zero_allgather"] < pending["zero_step"]
    assert timers("optimizer_step") is timers("optimizer_step")


def test_client_step_is_timed_and_still_steps():
    calls = []

    class Optimizer:
        def step(self, *args, **kwargs):
            calls.append((args, kwargs))
            time.sleep(0.001)
            return "loss"

    optimizer, pending = Optimizer(), {}
    be._time_client_step(optimizer, pending)
    assert optimizer.step(1, fp16_param_groups=None) == "loss"
    assert calls == [((1,), {"fp16_param_groups": None})]
    assert pending["client_step"] >= 0.001


def _run(optimizer, width, round_, client, total=10.0):
    times = {phase: [] for phase in be.PHASES}
    for i in range(3):
        times["client_step"].append(client + i * 1e-3)
        times["zero_gradients"].append(0.5e-3)
        times["zero_step"].append(client + 1e-3)
        times["zero_allgather"].append(2e-3)
        times["engine_step"].append(client + 5e-3)
        times["forward"].append(1e-3)
        times["backward"].append(3e-3)
        times["iteration"].append(total * 1e-3)
    return {"times": times, "partition": width * 10, "params": width * 20, "round": round_,
            "width": width, "optimizer": optimizer}


def test_summary_medians_shares_and_table():
    runs = [_run(which, w, r, client=(2e-3 if which == "DeepSpeedCPUAdam" else 1e-3) * (r + 1))
            for r in range(2) for w in (64, 128) for which in be.OPTIMIZERS]
    rows = be._summary({"runs": runs}, [64, 128], 2)
    assert [(row["width"], row["optimizer"]) for row in rows] == [
        (w, which) for w in (64, 128) for which in be.OPTIMIZERS]
    adamcore_64 = rows[1]
    # client steps: round 0 -> 1, 2, 3 ms; round 1 -> 2, 3, 4 ms: median of all 2.5 ms
    assert adamcore_64["client_step"] == pytest.approx(2.5e-3)
    assert adamcore_64["client_step_rounds"] == pytest.approx([2e-3, 3e-3])
    assert adamcore_64["share"] == pytest.approx(0.25)
    assert adamcore_64["params"] == 64 * 20 and adamcore_64["partition"] == 640
    table = be._table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == 10 for line in table)
    assert "| adamcore.torch.AdamW | 2.50 (2.00–3.00) |" in table[3]
    assert "25%" in table[3]


def test_engine_options_are_parsed():
    args = build_parser().parse_args(["bench", "--engine", "deepspeed", "--engine-widths", "64",
                                      "128", "--engine-steps", "3", "--engine-rounds", "1"])
    assert (args.engine, args.engine_widths, args.engine_steps, args.engine_rounds) == (
        "deepspeed", [64, 128], 3, 1)
    assert build_parser().parse_args(["bench", "--quick"]).engine is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--engine", "megatron"])


def test_without_deepspeed_the_engine_bench_says_so(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_deepspeed(name, *args, **kwargs):
        if name == "deepspeed" or name.startswith("deepspeed."):
            raise ImportError("No module named 'deepspeed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepspeed)
    args = argparse.Namespace(quick=True, engine="deepspeed", engine_widths=None, engine_steps=None,
                              engine_rounds=None, out=tmp_path)
    with pytest.raises(SystemExit, match="needs DeepSpeed"):
        be.run(args)
