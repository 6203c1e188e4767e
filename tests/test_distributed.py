"""adamcore.torch optimizers as the local optimizer of ZeroRedundancyOptimizer.

Two worker processes (this file run as a script) train the same small model over
gloo on 127.0.0.1, each on half of every batch, with the optimizer state sharded
between them. The parameters they end with must equal, bit for bit, a single-process
run that averages the two half-batch gradients the same way all_reduce does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _launch import run_ranks

STEPS = 30
FEATURES, HIDDEN, CLASSES, BATCH = 24, 40, 6, 64
# ZeRO with per-parameter broadcasts, and with parameters living in flat bucket buffers
# (then every parameter is a view at an offset into a shared buffer).
CONFIGS = {"per_param": False, "bucket_view": True}


def _model():
    import torch

    torch.manual_seed(1234)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh(),
                               torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Tanh(),
                               torch.nn.Linear(HIDDEN, CLASSES))


def _batches():
    import torch

    generator = torch.Generator().manual_seed(99)
    for _ in range(STEPS):
        x = torch.randn(BATCH, FEATURES, generator=generator)
        y = torch.randint(0, CLASSES, (BATCH,), generator=generator)
        yield x, y


def _half_gradients(model, x, y, rank):
    """Gradients of the mean loss over half ``rank`` of the batch."""
    import torch

    half = BATCH // 2
    model.zero_grad(set_to_none=True)
    sl = slice(rank * half, (rank + 1) * half)
    torch.nn.functional.cross_entropy(model(x[sl]), y[sl]).backward()
    return [p.grad.clone() for p in model.parameters()]


HYPER = dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.05, amsgrad=True)


def _worker(out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import adamcore.torch as act

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")  # rank, world size and address from the environment
    report = {}
    for name, bucket_view in CONFIGS.items():
        model = _model()
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=act.AdamW,
                                       parameters_as_bucket_view=bucket_view, **HYPER)
        for x, y in _batches():
            _half_gradients(model, x, y, rank)
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad.div_(2)
            zero.step()
        local = zero.optim
        report[name] = {
            "params": [p.detach().flatten().tolist() for p in model.parameters()],
            "local_params": sum(len(g["params"]) for g in local.param_groups),
            "local_state": len(local.state),
            "local_state_elements": sum(s["exp_avg"].numel() for s in local.state.values()),
            "steps": sorted({int(s["step"]) for s in local.state.values()}),
        }
        zero.consolidate_state_dict(to=0)
        if rank == 0:
            full = zero.state_dict()
            report[name]["consolidated_exp_avg"] = {
                str(k): v["exp_avg"].flatten().tolist() for k, v in full["state"].items()}
    dist.destroy_process_group()
    Path(out).write_text(json.dumps(report))


def _single_process():
    """The same training in one process with adamcore.torch.AdamW over all parameters."""
    import torch

    import adamcore.torch as act

    # The workers run torch on one thread; so does this run, so that the forward and
    # backward passes (whose reductions depend on the thread count) match.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        optimizer = act.AdamW(model.parameters(), **HYPER)
        for x, y in _batches():
            g0 = _half_gradients(model, x, y, 0)
            g1 = _half_gradients(model, x, y, 1)
            for p, a, b in zip(model.parameters(), g0, g1):
                p.grad = (a + b).div_(2)  # what all_reduce(SUM) then div_(2) gives both ranks
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model, optimizer


def test_zero_redundancy_matches_single_process(tmp_path):
    pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    reports = run_ranks(__file__, [], tmp_path, timeout=120)

    model, optimizer = _single_process()
    expected = [p.detach().flatten().tolist() for p in model.parameters()]
    expected_exp_avg = [optimizer.state[p]["exp_avg"].flatten().tolist() for p in model.parameters()]
    n_params = len(expected)
    for name in CONFIGS:
        per_rank = [rep[name] for rep in reports]
        for r in range(2):
            # Bitwise: JSON carries floats exactly (repr round-trips).
            assert per_rank[r]["params"] == expected, f"{name}: rank {r} parameters differ"
        # The state really is sharded: each rank holds some parameters, none holds all.
        local = [rep["local_state"] for rep in per_rank]
        assert all(0 < k < n_params for k in local) and sum(local) == n_params, local
        assert [rep["local_params"] for rep in per_rank] == local
        total = sum(p.numel() for p in model.parameters())
        assert sum(rep["local_state_elements"] for rep in per_rank) == total
        assert all(rep["steps"] == [STEPS] for rep in per_rank)
        consolidated = per_rank[0]["consolidated_exp_avg"]
        assert [consolidated[str(k)] for k in range(n_params)] == expected_exp_avg, name
    # And the training did something: the parameters moved.
    assert expected != [p.detach().flatten().tolist() for p in _model().parameters()]


# ---------------------------------------------------------------- threads per rank

_LAUNCH_VARIABLES = ("ADAMCORE_NUM_THREADS", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "OMP_NUM_THREADS")

# Prints the thread count adamcore starts with, the cores in the affinity mask, what
# `python -m adamcore info` reports, and the count after an explicit set_num_threads.
_THREADS_CHILD = """
import io, json, os, sys, contextlib
if {cpus!r} is not None:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:{cpus!r}]))
import adamcore
from adamcore.__main__ import main
at_import = adamcore.get_num_threads()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    main(["info", "--json"])
info = json.loads(out.getvalue())
adamcore.set_num_threads(at_import + 3)
after = io.StringIO()
with contextlib.redirect_stdout(after):
    main(["info", "--json"])
print(json.dumps({{"threads": at_import, "cores": len(os.sched_getaffinity(0)), "info": info,
                  "openmp": adamcore._core.built_with_openmp(),
                  "after_set": json.loads(after.getvalue())}}))
"""


def _threads_child(cpus=None, **env):
    full = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES}
    full.update(env)
    result = subprocess.run([sys.executable, "-c", _THREADS_CHILD.format(cpus=cpus)],
                            capture_output=True, text=True, env=full, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"),
                                    reason="no affinity mask on this OS")


@needs_affinity
@pytest.mark.parametrize("variable", ["LOCAL_WORLD_SIZE", "LOCAL_SIZE"])  # torchrun, deepspeed
def test_local_ranks_divide_the_affinity_mask(variable):
    child = _threads_child(**{variable: "2", "OMP_NUM_THREADS": "5"})
    if not child["openmp"]:
        pytest.skip("built without OpenMP: always one thread")
    assert child["threads"] == max(1, child["cores"] // 2)
    assert child["info"]["threads"] == child["threads"]
    assert child["info"]["threads_source"].startswith(f"{variable}=2: {child['cores']} cores")
    # A later set_num_threads wins, and info says so.
    assert child["after_set"]["threads"] == child["threads"] + 3
    assert child["after_set"]["threads_source"] == "set_num_threads()"


@needs_affinity
def test_more_local_ranks_than_cores_leaves_one_thread_each():
    child = _threads_child(cpus=1, LOCAL_WORLD_SIZE="4")
    assert child["cores"] == 1 and child["threads"] == 1
    assert child["info"]["threads_source"] == "LOCAL_WORLD_SIZE=4: 1 cores in the affinity mask // 4 local ranks"


@needs_affinity
@pytest.mark.parametrize("env", [{}, {"LOCAL_WORLD_SIZE": "1"}, {"LOCAL_WORLD_SIZE": "two"},
                                 {"LOCAL_SIZE": "0"}])
def test_one_local_rank_keeps_the_openmp_default(env):
    child = _threads_child(**env, OMP_NUM_THREADS="5")
    if not child["openmp"]:
        pytest.skip("built without OpenMP: always one thread")
    assert child["threads"] == 5  # OpenMP's default, which OMP_NUM_THREADS sets
    assert child["info"]["threads_source"] == "OpenMP default"


def test_explicit_thread_count_wins_over_local_ranks():
    child = _threads_child(ADAMCORE_NUM_THREADS="3", LOCAL_WORLD_SIZE="2")
    if not child["openmp"]:
        pytest.skip("built without OpenMP: always one thread")
    assert child["threads"] == 3
    assert child["info"]["threads_source"] == "ADAMCORE_NUM_THREADS"


if __name__ == "__main__":
    _worker(sys.argv[1])
