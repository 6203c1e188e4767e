"""adamcore.torch.AdamW and torch.optim.AdamW side by side on a small CPU model.

Three copies of one MLP train on scikit-learn's digits with the same initial weights
and the same batches; they differ only in the optimizer:

* ``adamcore.torch.AdamW``            adamcore's kernel, zero-copy on the tensors;
* ``torch.optim.AdamW(fused=True)``   torch's fused CPU kernel, the same arithmetic;
* ``torch.optim.AdamW()``             torch's default implementation.

The script prints the median time of ``optimizer.step()`` for each, checks that the
first two loss curves are identical (not merely close), and plots all three to a PNG.
Every tensor of the model has a multiple of 16 elements: torch's fused kernel computes
the last n % 16 elements of a tensor in a scalar tail that may round 1 ulp
differently, and a 1-ulp difference would grow over the steps; with none, the
trajectories are bit for bit the same.

    python examples/torch_cpu.py --out loss.png
    python examples/torch_cpu.py --hidden 1024 --steps 200   # a step-bound model
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch

import adamcore
import adamcore.torch as act


def digits_tensors(seed: int):
    """Train and test tensors of scikit-learn's digits (pixels scaled to [0, 1])."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25,
                                                        stratify=digits.target, random_state=seed)
    return (torch.from_numpy(x_train), torch.from_numpy(y_train).long(),
            torch.from_numpy(x_test), torch.from_numpy(y_test).long())


def make_model(hidden: int, seed: int) -> torch.nn.Module:
    """64 -> hidden -> hidden -> 10; the output layer has no bias, so every tensor
    (64*hidden, hidden, hidden*hidden, 10*hidden) is a multiple of 16 when hidden is."""
    if hidden % 16:
        raise ValueError(f"--hidden must be a multiple of 16, got {hidden}")
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10, bias=False))


def run(steps: int = 300, hidden: int = 256, batch_size: int = 64, lr: float = 2e-3,
        weight_decay: float = 1e-2, seed: int = 0, out: str | None = "torch_cpu_loss.png",
        verbose: bool = True) -> dict:
    """Train the three copies in lockstep; return losses, timings and accuracies."""
    x_train, y_train, x_test, y_test = digits_tensors(seed)
    base = make_model(hidden, seed)
    runs = {
        "adamcore.torch.AdamW": lambda p: act.AdamW(p, lr=lr, weight_decay=weight_decay),
        "torch.optim.AdamW(fused=True)": lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay,
                                                                     fused=True),
        "torch.optim.AdamW()": lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay),
    }
    models = {name: copy.deepcopy(base) for name in runs}
    optimizers = {name: make(models[name].parameters()) for name, make in runs.items()}
    losses = {name: [] for name in runs}
    step_times = {name: [] for name in runs}
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = torch.randint(0, len(x_train), (batch_size,), generator=generator)
        x, y = x_train[batch], y_train[batch]
        for name in runs:
            model, optimizer = models[name], optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            t0 = time.perf_counter()
            optimizer.step()
            step_times[name].append(time.perf_counter() - t0)
            losses[name].append(loss.detach().item())
    with torch.no_grad():
        accuracy = {name: float((m(x_test).argmax(1) == y_test).float().mean()) for name, m in models.items()}
    ours, fused, default = runs
    results = {
        "steps": steps,
        "parameters": sum(p.numel() for p in base.parameters()),
        "median_step_us": {name: float(np.median(t) * 1e6) for name, t in step_times.items()},
        "test_accuracy": accuracy,
        "max_loss_difference_vs_fused": max(abs(a - b) for a, b in zip(losses[ours], losses[fused])),
        "identical_to_fused": losses[ours] == losses[fused]
        and all(torch.equal(a, b) for a, b in zip(models[ours].parameters(), models[fused].parameters())),
        "max_loss_difference_vs_default": max(abs(a - b) for a, b in zip(losses[ours], losses[default])),
        "losses": losses,
        "isa": adamcore.get_isa(),
        "torch_threads": torch.get_num_threads(),
    }
    if out:
        plot(losses, out)
        results["plot"] = out
    if verbose:
        print(f"{results['parameters']} parameters, {steps} steps of batch {batch_size}, "
              f"adamcore ISA {results['isa']}, torch threads {results['torch_threads']}")
        ref = results["median_step_us"][fused]
        for name in runs:
            t = results["median_step_us"][name]
            print(f"  {name:<31} optimizer.step() median {t:9.1f} us  ({t / ref:5.2f}x fused)  "
                  f"test accuracy {accuracy[name]:.4f}  final loss {losses[name][-1]:.6f}")
        print(f"loss curves of adamcore and torch fused identical: {results['identical_to_fused']} "
              f"(max difference {results['max_loss_difference_vs_fused']}); "
              f"vs torch default: max difference {results['max_loss_difference_vs_default']:.3g}")
        if out:
            print(f"plot written to {out}")
    return results


def plot(losses: dict, path: str) -> None:
    """Both loss curves (they coincide) and torch's default, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"adamcore.torch.AdamW": dict(lw=3, alpha=0.5),
              "torch.optim.AdamW(fused=True)": dict(lw=1, ls="--", color="k"),
              "torch.optim.AdamW()": dict(lw=1, ls=":", color="tab:red")}
    for name, curve in losses.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name, **styles.get(name, {}))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title("MLP on digits: adamcore vs torch.optim AdamW")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    """Command line: run, print (or --json) the figures; exit 1 unless the curves are identical."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=256, help="hidden width (a multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="torch_cpu_loss.png", help="PNG path ('' for no plot)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and adamcore (default: their own defaults)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        adamcore.set_num_threads(args.threads)
    results = run(args.steps, args.hidden, args.batch_size, args.lr, seed=args.seed, out=args.out or None,
                  verbose=not args.json)
    if args.json:
        print(json.dumps(results))
    return 0 if results["identical_to_fused"] else 1


if __name__ == "__main__":
    sys.exit(main())
