"""The training-loop case (issue 8): an MLP's forward, backward and AdamW step,
adamcore.torch.AdamW against torch.optim.AdamW(fused=True), idle and contended."""

from __future__ import annotations

import gc
import math
import os
import time
from typing import Callable, Sequence

import adamcore

from .cases import CONDITIONS, TRAIN_BATCH, TRAIN_DIMS
from .contended import _spinners_for, threading_snapshot
from .report import cpu_identity, machine_cpus
from .runners import openmp_runtime_paths
from .timing import _visit_length, latency_stats


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_mlp(torch, dims: Sequence[int] = TRAIN_DIMS, seed: int = 0):
    """Linear layers of ``dims``; GELU and LayerNorm after every hidden layer."""
    nn = torch.nn
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.GELU(), nn.LayerNorm(b)]
    return nn.Sequential(*layers)


def train_rounds(iterations: int, conditions: Sequence[str] = CONDITIONS) -> int:
    return -(-iterations // _visit_length(iterations, 10)) * len(conditions)


def measure_train_loop(iterations: int = 200, batch: int = TRAIN_BATCH,
                       dims: Sequence[int] = TRAIN_DIMS, adamcore_threads: Sequence[int] = (1, 2),
                       include_torch_fused: bool = True, conditions: Sequence[str] = CONDITIONS,
                       spinners: int | None = None, budget_seconds: float = math.inf,
                       torch_threads: int | None = None, warmup: int = 2,
                       on_round: Callable[[], None] = lambda: None) -> dict:
    """A real training loop on the CPU: an MLP's forward and backward (torch's own
    OpenMP threads), then the optimizer step, for ``adamcore.torch.AdamW`` with each of
    ``adamcore_threads`` and for ``torch.optim.AdamW(fused=True)``. Each variant trains
    its own copy of the same model on the same batch; the variants take turns in rounds.
    Times the step alone and the whole iteration (zero_grad, forward, backward, step)."""
    import copy

    import torch

    import adamcore.torch as adamcore_torch

    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"conditions must be among {CONDITIONS}, got {bad}")
    saved = (adamcore.get_num_threads(), torch.get_num_threads())
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    torch_threads_used = torch.get_num_threads()
    base = build_mlp(torch, dims)
    params = sum(p.numel() for p in base.parameters())
    tensors = sum(1 for _ in base.parameters())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, dims[0], generator=gen)
    y = torch.randn(batch, dims[-1], generator=gen)
    loss_fn = torch.nn.functional.mse_loss
    hyper = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

    variants = []  # (name, adamcore threads or None, api, model, optimizer)
    for t in adamcore_threads:
        model = copy.deepcopy(base)
        variants.append(("adamcore", t, "adamcore.torch.AdamW", model,
                         adamcore_torch.AdamW(model.parameters(), **hyper)))
    if include_torch_fused:
        model = copy.deepcopy(base)
        variants.append(("torch-fused", None, "torch.optim.AdamW(fused=True)", model,
                         torch.optim.AdamW(model.parameters(), fused=True, **hyper)))
    if not variants:
        raise ValueError("train loop: no variants to run")

    clock = time.perf_counter

    def iterate(model, opt, out: list | None) -> None:
        start = clock()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        mid = clock()
        opt.step()
        end = clock()
        if out is not None:
            out.append((end - start, mid - start, end - mid))

    block = _visit_length(iterations, 10)
    rounds = -(-iterations // block)
    began_all = clock()
    rows: list[dict] = []
    condition_info: list[dict] = []
    gc_was_enabled = gc.isenabled()
    try:
        for condition in conditions:
            info: dict = {"condition": condition, "load_average_before": os.getloadavg()[0],
                          "threading_status_before": threading_snapshot()}
            spin = _spinners_for(condition, spinners)
            samples: list[list[tuple[float, float, float]]] = [[] for _ in variants]
            done = 0
            try:
                if spin is not None:
                    spin.start()
                for name, t, _, model, opt in variants:
                    if t is not None:
                        adamcore.set_num_threads(t)
                    for _ in range(warmup):
                        iterate(model, opt, None)
                gc.collect()
                gc.disable()
                began = clock()
                for r in range(rounds):
                    if r and clock() - began > budget_seconds:
                        for _ in range(rounds - r):
                            on_round()
                        break
                    k = min(block, iterations - r * block)
                    order = list(range(len(variants)))
                    order = order[r % len(order):] + order[:r % len(order)]
                    for i in order:
                        name, t, _, model, opt = variants[i]
                        if t is not None:
                            adamcore.set_num_threads(t)
                        for _ in range(k):
                            iterate(model, opt, samples[i])
                    done += 1
                    on_round()
                if gc_was_enabled:
                    gc.enable()
            finally:
                if spin is not None:
                    spin.stop()
                    info["spinners"] = spin.report()
            info["load_average_after"] = os.getloadavg()[0]
            info["threading_status_after"] = threading_snapshot()
            condition_info.append(info)
            for (name, t, api, _, _), s in zip(variants, samples):
                whole = [a for a, _, _ in s]
                fwd_bwd = [b for _, b, _ in s]
                step = [c for _, _, c in s]
                rows.append({"condition": condition, "implementation": name,
                             "adamcore_threads": t, "api": api, "rounds": done,
                             "step": latency_stats(step), "iteration": latency_stats(whole),
                             "forward_backward": latency_stats(fwd_bwd),
                             "step_samples_seconds": step, "iteration_samples_seconds": whole})
    finally:
        if gc_was_enabled:
            gc.enable()
        adamcore.set_num_threads(saved[0])
        torch.set_num_threads(saved[1])

    reference = variants[-1][3] if include_torch_fused else variants[0][3]
    drift = {}
    with torch.no_grad():
        for name, t, _, model, _ in variants:
            label = name if t is None else f"{name} {t}t"
            drift[label] = max(float((a - b).abs().max()) for a, b in
                               zip(model.parameters(), reference.parameters()))
    changed = any(not torch.equal(a, b) for a, b in zip(variants[0][3].parameters(),
                                                        base.parameters()))
    for r in rows:
        ref = next((q for q in rows if q["condition"] == r["condition"]
                    and q["implementation"] == "torch-fused"), None)
        r["step_median_over_torch_fused"] = (r["step"]["median_seconds"]
                                             / ref["step"]["median_seconds"] if ref else None)
        r["iteration_median_over_torch_fused"] = (
            r["iteration"]["median_seconds"] / ref["iteration"]["median_seconds"]
            if ref else None)
    shape = "-".join(str(d) for d in dims)
    return {"model": f"MLP {shape}" + (" (GELU, LayerNorm after each hidden layer)"
                                       if len(dims) > 2 else "") + ", MSE loss",
            "parameters": int(params), "tensors": int(tensors), "batch": int(batch),
            "cpu": cpu_identity(), "usable_cpus": machine_cpus(),
            "elapsed_seconds": clock() - began_all,
            "torch_threads": torch_threads_used, "iterations": iterations,
            "warmup_iterations": warmup, "hyperparameters": {**hyper, "betas": list(hyper["betas"])},
            "method": "each variant trains its own copy of the same model on one fixed batch; "
                      "variants take turns in rounds (rotated order); 'step' is perf_counter "
                      "around opt.step(), 'iteration' is zero_grad + forward + backward + step; "
                      "Python's garbage collector off while timing",
            "openmp_runtimes": openmp_runtime_paths(),
            "conditions": condition_info, "rows": rows,
            "param_max_abs_diff_vs_" + ("torch_fused" if include_torch_fused else "first"): drift,
            "params_changed": changed}
