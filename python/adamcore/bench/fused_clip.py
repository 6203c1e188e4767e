"""Gradient clipping fused into the step, timed side by side with the unfused forms and
with torch: issue 9's clipping targets.

    python -m adamcore.bench.fused_clip [--sizes 1M 16M] [--threads 1 2] [--rounds 15]

AdamW on float32, the elements split into 8 tensors (one parameter group). Contenders:

- ``step``: ``adamcore.adamw_step`` on the group, no clipping (the baseline);
- ``fused clip+step``: the same call with ``max_grad_norm=`` (one read of the grads for
  the norm, then the step applies the coefficient; the grads are not written);
- ``clip, then step``: ``adamcore.clip_grad_norm`` (norm, then grads scaled in place),
  then the step;
- ``torch fused step`` and ``torch clip_grad_norm_ + fused step``:
  ``torch.optim.AdamW(fused=True)``, with ``torch.nn.utils.clip_grad_norm_`` first.

Every call is timed alone; before each one, untimed, the grads are restored to their
original values, whose norm is far above ``max_norm``, so every clipping call scales.
Each round runs every contender once, in an order rotated per round; the table gives
the median per contender and its ratio to adamcore's unclipped step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

import adamcore

MAX_NORM = 1.0
TENSORS = 8
HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

# (time this, restore the grads before it, untimed)
Contender = Tuple[Callable[[], None], Callable[[], None]]


def adamcore_contenders(n: int, rng: np.random.Generator
                        ) -> Tuple[Dict[str, Contender], List[np.ndarray]]:
    """adamcore's contenders, and the params they update."""
    sizes = [n // TENSORS + (i < n % TENSORS) for i in range(TENSORS)]
    params = [rng.standard_normal(k).astype(np.float32) for k in sizes]
    original = [rng.standard_normal(k).astype(np.float32) for k in sizes]
    grads = [g.copy() for g in original]
    exp_avgs = [np.zeros(k, np.float32) for k in sizes]
    exp_avg_sqs = [np.zeros(k, np.float32) for k in sizes]
    lr, (beta1, beta2), eps, wd = (HYPER[k] for k in ("lr", "betas", "eps", "weight_decay"))

    def restore() -> None:
        for g, g0 in zip(grads, original):
            np.copyto(g, g0)

    def step(**clip) -> None:
        adamcore.adamw_step(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=lr, beta1=beta1,
                            beta2=beta2, eps=eps, weight_decay=wd, **clip)

    def clip_then_step() -> None:
        adamcore.clip_grad_norm(grads, MAX_NORM)
        step()

    return {"step": (step, restore),
            "fused clip+step": (lambda: step(max_grad_norm=MAX_NORM), restore),
            "clip, then step": (clip_then_step, restore)}, params


def _torch_contenders(n: int, rng: np.random.Generator) -> Dict[str, Contender]:
    import torch

    sizes = [n // TENSORS + (i < n % TENSORS) for i in range(TENSORS)]
    params = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(k).astype(np.float32)))
              for k in sizes]
    original = [torch.from_numpy(rng.standard_normal(k).astype(np.float32)) for k in sizes]
    for p, g0 in zip(params, original):
        p.grad = g0.clone()
    optimizer = torch.optim.AdamW(params, **HYPER, fused=True)

    def restore() -> None:
        with torch.no_grad():
            for p, g0 in zip(params, original):
                p.grad.copy_(g0)

    def clip_then_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        optimizer.step()

    return {"torch fused step": (optimizer.step, restore),
            "torch clip_grad_norm_ + fused step": (clip_then_step, restore)}


def measure(n: int, rounds: int) -> List[dict]:
    rng = np.random.default_rng(0)
    contenders, _ = adamcore_contenders(n, rng)
    try:
        contenders.update(_torch_contenders(n, rng))
    except ImportError:
        print("(torch not installed: its rows are left out)")
    names = list(contenders)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up, untimed
        for name in names[r % len(names):] + names[:r % len(names)]:
            run, restore = contenders[name]
            restore()
            start = time.perf_counter()
            run()
            if r:
                samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["step"])
    return [dict(size=n, impl=name, median_us=statistics.median(samples[name]) * 1e6,
                 ratio=statistics.median(samples[name]) / base) for name in names]


def _size(text: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1].upper(), 1)
    return int(text.rstrip("KMkm")) * scale


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_size, nargs="+", default=[1 << 20, 1 << 24])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"ISA {adamcore.get_isa()}, {args.rounds} rounds, AdamW float32 in {TENSORS} tensors, "
          f"max_norm {MAX_NORM}")
    print("\n| elements | threads | contender | median us | x adamcore step |")
    print("|---:|---:|---|---:|---:|")
    for threads in args.threads:
        adamcore.set_num_threads(threads)
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
        for n in args.sizes:
            for row in measure(n, args.rounds):
                print(f"| {row['size']:,} | {threads} | {row['impl']} | "
                      f"{row['median_us']:,.0f} | {row['ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
