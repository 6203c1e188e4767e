"""adamcore.torch under torch.distributed's data-parallel wrappers, against torch fused.

Two ranks (this file run as a script, gloo on the CPU) train the same small model
under ``DistributedDataParallel`` and ``FullyShardedDataParallel`` with
``use_orig_params=True`` (the optimizer steps each rank's views of the original
parameters) and ``use_orig_params=False`` (it steps each rank's shard of the flat
parameters), each setup twice in the same process pair: with
``torch.optim.AdamW(fused=True)`` and with ``adamcore.torch.AdamW``. Loss curves, the
full parameters at the end and each rank's optimizer state must be bit for bit equal.

Every tensor the optimizer steps has a length that is a multiple of 16 (the test checks
it), so no element falls in torch fused's scalar tail, which rounds ``exp_avg_sq``
differently (docs/usage.md). Under FSDP that holds because every parameter has a
multiple of 16 elements and every FSDP unit a multiple of 32: each flat parameter
splits in two at a multiple of 16, and so does the parameter it splits.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from _launch import run_ranks

STEPS = 25
FEATURES, HIDDEN, CLASSES, BATCH = 32, 64, 32, 32
HYPER = dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.05, amsgrad=True)
SETUPS = ("ddp", "fsdp_orig_params", "fsdp_flat_params")
OPTIMIZERS = ("torch_fused", "adamcore")


def _model():
    import torch

    torch.manual_seed(4321)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.GELU(),
                               torch.nn.LayerNorm(HIDDEN),
                               torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.GELU(),
                               torch.nn.Linear(HIDDEN, CLASSES))


def _batches(rank):
    import torch

    generator = torch.Generator().manual_seed(11 + rank)  # each rank its own data
    teacher = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(5))
    for _ in range(STEPS):
        x = torch.randn(BATCH, FEATURES, generator=generator)
        yield x, (x @ teacher).argmax(dim=1)


def _bits(tensors):
    """The tensors' bytes, concatenated, as hex: equal strings are equal bits. (Copies:
    a tensor that shares memory with NumPy can no longer have its storage resized,
    which FSDP and ZeRO-3 do to gathered parameters.)"""
    return "".join(t.detach().flatten().clone().numpy().tobytes().hex() for t in tensors)


def _wrap(setup, model):
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from torch.nn.parallel import DistributedDataParallel

    if setup == "ddp":
        return DistributedDataParallel(model)
    return FullyShardedDataParallel(model, device_id=torch.device("cpu"),
                                    auto_wrap_policy=ModuleWrapPolicy({torch.nn.Linear}),
                                    use_orig_params=setup == "fsdp_orig_params")


def _run(setup, which, rank):
    import torch
    from torch.distributed.fsdp import FlatParameter, FullyShardedDataParallel

    import adamcore.torch as act

    wrapped = _wrap(setup, _model())
    params = list(wrapped.parameters())
    optimizer = (torch.optim.AdamW(params, fused=True, **HYPER) if which == "torch_fused"
                 else act.AdamW(params, **HYPER))
    losses = []
    for x, y in _batches(rank):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(wrapped(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    state = [optimizer.state[p] for p in params if p in optimizer.state]
    report = {
        "losses": [v.hex() for v in losses],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "stepped": [p.numel() for p in params],
        "flat": [isinstance(p, FlatParameter) for p in params],
        "local": _bits(params),
        "exp_avg": _bits(s["exp_avg"] for s in state),
        "exp_avg_sq": _bits(s["exp_avg_sq"] for s in state),
        "max_exp_avg_sq": _bits(s["max_exp_avg_sq"] for s in state),
        "steps": sorted({float(s["step"]) for s in state}),
    }
    if setup == "ddp":
        report["full"] = _bits(wrapped.module.parameters())
    else:
        with FullyShardedDataParallel.summon_full_params(wrapped):
            report["full"] = _bits(wrapped.parameters())
    report["full_elements"] = sum(p.numel() for p in _model().parameters())
    return report


def _worker(out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # rank, world size and address from the environment
    rank = dist.get_rank()
    report = {setup: {which: _run(setup, which, rank) for which in OPTIMIZERS} for setup in SETUPS}
    dist.destroy_process_group()
    Path(out).write_text(json.dumps(report))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return run_ranks(__file__, [], tmp_path_factory.mktemp("fsdp"), timeout=300,
                     PYTHONWARNINGS="ignore")


@pytest.mark.parametrize("setup", SETUPS)
def test_matches_torch_fused(reports, setup):
    for rank, report in enumerate(reports):
        fused, ours = report[setup]["torch_fused"], report[setup]["adamcore"]
        for key in ("losses", "full", "local", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "steps"):
            assert ours[key] == fused[key], f"{setup}, rank {rank}: {key} differ from torch fused"
        assert fused["steps"] == [float(STEPS)]
        assert fused["last_loss"] < 0.9 * fused["first_loss"], (setup, fused["first_loss"], fused["last_loss"])
    # Data parallel: each rank saw its own batches, and both end with the same model.
    assert reports[0][setup]["adamcore"]["losses"] != reports[1][setup]["adamcore"]["losses"]
    assert reports[0][setup]["adamcore"]["full"] == reports[1][setup]["adamcore"]["full"]


@pytest.mark.parametrize("setup", SETUPS)
def test_what_the_optimizer_steps(reports, setup):
    """DDP: every full parameter on each rank. FSDP: each rank's half of the elements,
    as flat parameter shards (use_orig_params=False) or views of the original
    parameters (True); every length a multiple of 16."""
    per_rank = [report[setup]["adamcore"] for report in reports]
    elements = per_rank[0]["full_elements"]
    stepped = [sum(r["stepped"]) for r in per_rank]
    assert all(n % 16 == 0 for r in per_rank for n in r["stepped"]), [r["stepped"] for r in per_rank]
    if setup == "ddp":
        assert stepped == [elements, elements]
        assert not any(flat for r in per_rank for flat in r["flat"])
        assert per_rank[0]["local"] == per_rank[1]["local"]
    else:
        assert sum(stepped) == elements and all(0 < n < elements for n in stepped), stepped
        assert all(flat == (setup == "fsdp_flat_params") for r in per_rank for flat in r["flat"])
        assert per_rank[0]["local"] != per_rank[1]["local"]


if __name__ == "__main__":
    _worker(sys.argv[1])
