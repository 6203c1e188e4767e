"""adamcore.torch.AdamW as DeepSpeed's client optimizer, against torch's fused AdamW.

Two ranks on the CPU accelerator (gloo) train a small transformer under ZeRO stages
1, 2 and 3, each with and without ``offload_optimizer: cpu``, in fp32 and bf16. Each
configuration runs twice in the same process pair, once with
``torch.optim.AdamW(fused=True)`` and once with ``adamcore.torch.AdamW`` as the
client optimizer; the loss curves, the final parameters (gathered) and the optimizer
state DeepSpeed holds must be bit for bit the same.

What the client optimizer sees under ZeRO is not the model's parameters: DeepSpeed
replaces its parameter groups with one flat float32 partition per rank and group
(stages 1 and 2), or per sub-group of the rank's share of each parameter (stage 3),
and steps that. The test checks that this is so, and that each partition's length is
a multiple of 16, so every element lies in torch's vector body (on a tail of
``n % 16`` torch's scalar code rounds ``exp_avg_sq`` differently; docs/usage.md).

The workers are this file run as a script, two processes launched with the
environment torchrun and the deepspeed launcher set (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). One launch runs every configuration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from _launch import run_ranks

STEPS = 24
VOCAB, DIM, HEADS, FFN, LAYERS, SEQ, MICRO_BATCH = 64, 32, 4, 64, 2, 16, 4
HYPER = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05)
STAGES = (1, 2, 3)
CONFIGS = [f"zero{stage}-{'offload' if offload else 'device'}-{dtype}"
           for stage in STAGES for offload in (False, True) for dtype in ("fp32", "bf16")]
OPTIMIZERS = ("torch_fused", "adamcore")


def _parse(name):
    stage, where, dtype = name.split("-")
    return int(stage[-1]), where == "offload", dtype


def _model():
    import torch

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, DIM)
            self.pos = torch.nn.Parameter(torch.randn(SEQ, DIM) * 0.02)
            layer = torch.nn.TransformerEncoderLayer(DIM, HEADS, FFN, dropout=0.0, batch_first=True)
            self.body = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(DIM)
            self.head = torch.nn.Linear(DIM, VOCAB)

        def forward(self, tokens, targets):
            mask = torch.nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
            h = self.body(self.embed(tokens) + self.pos, mask=mask.to(self.pos.dtype), is_causal=True)
            logits = self.head(self.norm(h))
            return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    torch.manual_seed(1234)
    return TinyLM()


def _batches(rank):
    import torch

    generator = torch.Generator().manual_seed(7 + rank)
    for _ in range(STEPS):
        # A learnable sequence: each token is the previous one plus a small step.
        start = torch.randint(0, VOCAB, (MICRO_BATCH, 1), generator=generator)
        step = torch.randint(1, 4, (MICRO_BATCH, 1), generator=generator)
        seq = (start + step * torch.arange(SEQ + 1)) % VOCAB
        yield seq[:, :-1], seq[:, 1:]


def _ds_config(stage, offload, dtype):
    zero = {"stage": stage}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**9,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def _master_partitions(zero, stage):
    """The flat float32 tensors DeepSpeed's ZeRO optimizer hands the client optimizer
    (stage 3 puts each sub-group's into the group only for the duration of its step)."""
    if stage == 3:
        return list(zero.fp32_partitioned_groups_flat)
    return list(zero.single_partition_of_fp32_groups)


def _bits(tensors):
    """The tensors' bytes, concatenated, as hex: equal strings are equal bits. (Copies:
    a tensor that shares memory with NumPy can no longer have its storage resized,
    which FSDP and ZeRO-3 do to gathered parameters.)"""
    import torch

    parts = []
    for t in tensors:
        t = t.detach().flatten().clone()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        parts.append(t.numpy().tobytes().hex())
    return "".join(parts)


def _run(name, which, rank):
    import deepspeed
    import torch

    import adamcore.torch as act

    start = time.perf_counter()
    stage, offload, dtype = _parse(name)
    model = _model()
    params = list(model.parameters())
    model_elements = sum(p.numel() for p in params)
    if which == "torch_fused":
        client = torch.optim.AdamW(params, fused=True, **HYPER)
    else:
        client = act.AdamW(params, **HYPER)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=client, config=_ds_config(stage, offload, dtype))
    # The client optimizer now steps DeepSpeed's flat float32 partitions, not the model.
    assert engine.optimizer.optimizer is client, type(engine.optimizer)
    seen = _master_partitions(engine.optimizer, stage)
    assert all(p.dtype == torch.float32 and p.dim() == 1 for p in seen), name
    assert not any(p is q for p in seen for q in params), name
    losses = []
    for tokens, targets in _batches(rank):
        loss = engine(tokens, targets)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())  # a float32 loss: exact as a Python float
    # Each rank's optimizer state: its flat partition's moments and step count.
    state = [client.state[p] for p in seen]
    report = {
        "losses": [loss.hex() for loss in losses],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "partitions": [p.numel() for p in seen],
        "seconds": time.perf_counter() - start,
        "model_elements": model_elements,
        "master": _bits(seen),
        "exp_avg": _bits([s["exp_avg"] for s in state]),
        "exp_avg_sq": _bits([s["exp_avg_sq"] for s in state]),
        "steps": [float(s["step"]) for s in state],
    }
    # The model's parameters at the end, gathered (stage 3 partitions them too).
    module_params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(module_params, enabled=stage == 3):
        report["param_dtypes"] = sorted({str(p.dtype) for p in module_params})
        report["params"] = _bits(module_params)
    engine.destroy()
    return report


def _worker(out: str, names) -> None:
    start = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    import deepspeed

    # On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op when
    # its communication backend starts (minutes on two busy cores). It serves only
    # inference_all_reduce (tensor-parallel inference); ZeRO's collectives go through
    # torch.distributed (gloo) either way, so training does not change without it.
    # (deepspeed.comm.torch as an attribute is torch itself, re-exported by a star import.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    rank = int(os.environ["RANK"])
    report = {"startup_seconds": time.perf_counter() - start}
    for name in names:
        report[name] = {which: _run(name, which, rank) for which in OPTIMIZERS}
    Path(out).write_text(json.dumps(report))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    pytest.importorskip("torch")
    # Only the workers import DeepSpeed (it sets up an accelerator on import).
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed (pip install deepspeed)")
    tmp = tmp_path_factory.mktemp("deepspeed")
    return run_ranks(__file__, CONFIGS, tmp, timeout=600, DS_ACCELERATOR="cpu",
                     TORCH_EXTENSIONS_DIR=str(tmp / "torch_extensions"), PYTHONWARNINGS="ignore")


@pytest.mark.parametrize("name", CONFIGS)
def test_engine_matches_torch_fused(reports, name):
    """Loss curve, final model parameters, DeepSpeed's float32 master partition and the
    optimizer state: bit for bit torch fused's on both ranks."""
    stage, offload, dtype = _parse(name)
    for rank, report in enumerate(reports):
        fused, ours = report[name]["torch_fused"], report[name]["adamcore"]
        for key in ("losses", "params", "master", "exp_avg", "exp_avg_sq", "steps"):
            assert ours[key] == fused[key], f"{name}, rank {rank}: {key} differ from torch fused"
        assert fused["steps"] == [float(STEPS)]
        assert fused["param_dtypes"] == ["torch.bfloat16" if dtype == "bf16" else "torch.float32"]
        # It trained: the loss fell.
        assert fused["last_loss"] < 0.9 * fused["first_loss"], (name, fused["first_loss"], fused["last_loss"])
    # Data parallel: both ranks end with the same model, having seen different batches.
    assert reports[0][name]["adamcore"]["params"] == reports[1][name]["adamcore"]["params"], name
    assert reports[0][name]["adamcore"]["losses"] != reports[1][name]["adamcore"]["losses"], name


@pytest.mark.parametrize("name", CONFIGS)
def test_client_optimizer_steps_one_flat_partition_per_rank(reports, name):
    """What adamcore sees under ZeRO: one flat float32 buffer per rank holding that
    rank's share of every parameter (padded to the partition alignment), whose length
    is a multiple of 16, so no element falls in torch's scalar tail."""
    elements = reports[0][name]["adamcore"]["model_elements"]
    lengths = [report[name]["adamcore"]["partitions"] for report in reports]
    assert all(len(per_rank) == 1 for per_rank in lengths), lengths
    total = sum(per_rank[0] for per_rank in lengths)
    assert elements <= total < elements + 64 * len(lengths), (elements, lengths)
    assert all(per_rank[0] % 16 == 0 for per_rank in lengths), lengths
    # Each rank's master partition is its own (not a copy of the other's).
    assert reports[0][name]["adamcore"]["master"] != reports[1][name]["adamcore"]["master"]


def test_bf16_really_differs_from_fp32(reports):
    """The bf16 configurations really train in bf16: other parameters than fp32's."""
    report = reports[0]
    for stage in STAGES:
        fp32 = report[f"zero{stage}-device-fp32"]["adamcore"]["params"]
        bf16 = report[f"zero{stage}-device-bf16"]["adamcore"]["params"]
        assert fp32 != bf16, stage


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
