"""adamcore.torch optimizers as the local optimizer of ZeroRedundancyOptimizer.

Two worker processes (this file run as a script) train the same small model over
gloo on 127.0.0.1, each on half of every batch, with the optimizer state sharded
between them. The parameters they end with must equal, bit for bit, a single-process
run that averages the two half-batch gradients the same way all_reduce does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def _worker(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import adamcore.torch as act

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), str(outs[r])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=120)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for r, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {r} failed:\n{logs[r]}"
    reports = [json.loads(out.read_text()) for out in outs]

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


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
