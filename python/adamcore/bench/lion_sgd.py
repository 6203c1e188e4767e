"""SGD and Lion timed side by side with their peers: adamcore.sgd_step against
torch.optim.SGD's fused and for-each implementations, adamcore.lion_step against
DeepSpeedCPULion. Each round times every implementation once (a batch of steps, in an
order rotated per round); the table reports the median time per step and each peer's
ratio to adamcore. Run: ``python -m adamcore.bench.lion_sgd [--sizes ...] [--rounds N]``.
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List

import numpy as np

import adamcore

from .side_by_side import measure


def _sgd_contenders(n: int) -> Dict[str, Callable[[], None]]:
    import torch

    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    m = np.zeros(n, np.float32)
    hyper = dict(lr=1e-3, momentum=0.9, weight_decay=1e-4)
    out = {"adamcore": lambda: adamcore.sgd_step(p, g, m, **hyper)}
    for name, flags in (("torch fused", dict(fused=True)), ("torch foreach", dict(foreach=True))):
        t = torch.nn.Parameter(torch.tensor(p.copy()))
        t.grad = torch.tensor(g.copy())
        opt = torch.optim.SGD([t], **hyper, **flags)
        out[name] = opt.step
    return out


def _lion_contenders(n: int) -> Dict[str, Callable[[], None]]:
    rng = np.random.default_rng(1)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    m = np.zeros(n, np.float32)
    out = {name: (lambda c=convention: adamcore.lion_step(p, g, m, lr=1e-4, weight_decay=0.1,
                                                           convention=c))
           for name, convention in (("adamcore", "paper"), ("adamcore deepspeed", "deepspeed"))}
    try:
        import torch
        from deepspeed.ops.lion import DeepSpeedCPULion

        t = torch.nn.Parameter(torch.tensor(p.copy()))
        t.grad = torch.tensor(g.copy())
        out["DeepSpeedCPULion"] = DeepSpeedCPULion([t], lr=1e-4, weight_decay=0.1).step
    except Exception as err:  # optional peer; its op may not build here
        print(f"(DeepSpeedCPULion left out: {err})")
    return out


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 65536, 1 << 20, 1 << 24])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--batch-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    adamcore.set_num_threads(args.threads)
    print(f"threads {args.threads}, ISA {adamcore.get_isa()}, {args.rounds} rounds")
    for title, make in (("SGD (momentum 0.9, weight decay), float32", _sgd_contenders),
                        ("Lion (weight decay 0.1), float32", _lion_contenders)):
        print(f"\n{title}\n| elements | implementation | median us/step | x adamcore |")
        print("|---:|---|---:|---:|")
        for row in measure(make, args.sizes, args.rounds, args.batch_ms / 1e3):
            print(f"| {row['size']} | {row['impl']} | {row['median_us']:.1f} | {row['ratio']:.2f} |")


if __name__ == "__main__":
    main()
