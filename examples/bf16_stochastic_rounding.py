"""Train in bfloat16 only, with and without stochastic rounding, beside a float32 run.

A linear regression on synthetic data (a noisy linear teacher), trained three ways with
adamcore.Adam and the same decaying learning rate, minibatches and initial weights:

1. float32: params, grads, exp_avg and exp_avg_sq all float32 (the baseline);
2. bfloat16, round to nearest: params, grads, exp_avg and exp_avg_sq all
   ``ml_dtypes.bfloat16`` (the optimizer's arithmetic is float32, every store is rounded
   to nearest even);
3. the same bfloat16 buffers with ``rounding="stochastic"``.

What is bfloat16 in runs 2 and 3: every buffer the optimizer holds or reads. The forward
and backward passes widen the bf16 weights to float32, compute the loss and gradient in
float32 and round the gradient to bf16 (nearest even, ``astype``) before the step. The
loss is always evaluated in float32 on the whole training set from the stored weights.

Why round-to-nearest stalls. The teacher's weights are of order 1, where a bfloat16
ulp is 2^-7 (2^-8 just below 1), so a weight keeps its value unless its update exceeds
half an ulp, 2e-3 to 4e-3. Adam's update is lr * m_hat / sqrt(v_hat), under the lr as
soon as the gradients are noisy; with the lr decaying from 3e-2, the updates of most
weights drop below half an ulp a few hundred steps in, long before the float32 run has
converged, and the bf16 weights freeze. exp_avg_sq is worse off: with beta2 = 0.999 a
step changes it by (1 - beta2) * (g^2 - v), and when it would shrink that is under
1e-3 of v, always less than half an ulp (at least 2^-9 of v), so with round-to-nearest
it never decreases, and grows only when g^2 exceeds several times v. Stochastic
rounding stores each value up or down with probability proportional to the distance,
so the expected stored value is the exact one and the small updates add up.

The figure plots the training loss minus the least-squares optimum (float64), with the
optimum's own weights rounded to bfloat16 as a reference: no bf16 weights can be
expected to do much better than that line, and the stochastic run ends a few times above
it, while round-to-nearest stalls orders of magnitude higher.

    python examples/bf16_stochastic_rounding.py                 # plot to docs/figures/
    python examples/bf16_stochastic_rounding.py --quick --json  # the test's settings
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import adamcore

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - the example needs it
    sys.exit("this example needs ml_dtypes (pip install ml-dtypes) for numpy's bfloat16")

BF16 = np.dtype(ml_dtypes.bfloat16)
RUNS = ("float32", "bf16 nearest", "bf16 stochastic")
DEFAULT_FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "bf16_stochastic_rounding.png"


def make_data(samples: int, features: int, noise: float, seed: int):
    """(x, y, w_true, b_true): float32 inputs ~ N(0, 1), targets from a linear teacher
    with weights ~ N(0, 1) plus Gaussian noise of standard deviation ``noise``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features)).astype(np.float32)
    w_true = rng.standard_normal(features).astype(np.float32)
    b_true = np.float32(rng.standard_normal())
    y = (x @ w_true + b_true + noise * rng.standard_normal(samples)).astype(np.float32)
    return x, y, w_true, b_true


def loss_and_grads(w32: np.ndarray, b32: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Half the mean squared error of ``x @ w + b`` against ``y``, and its gradients (float32)."""
    residual = x @ w32 + b32[0] - y
    loss = 0.5 * float(np.mean(residual.astype(np.float64) ** 2))
    scale = np.float32(1.0 / len(y))
    return loss, (x.T @ residual) * scale, np.array([residual.sum() * scale], np.float32)


def lr_at(step: int, steps: int, peak: float, final: float) -> float:
    """Exponential decay from ``peak`` at step 1 to ``final`` at the last step."""
    return peak * (final / peak) ** ((step - 1) / max(steps - 1, 1))


def train(dtype: np.dtype, rounding: str, x, y, w0, steps: int, batch: int, peak_lr: float,
          final_lr: float, seed: int, log_every: int, last: int) -> dict:
    """One run. Returns the loss curve, the final loss and which buffers moved lately."""
    w = w0.astype(dtype)
    b = np.zeros(1, dtype)
    optimizer = adamcore.Adam([w, b], lr=lambda t: lr_at(t, steps, peak_lr, final_lr),
                              rounding=rounding, seed=seed)
    order_rng = np.random.default_rng(seed + 1)  # the same minibatches for every run
    x_batches = len(x) // batch

    def full_loss():
        return loss_and_grads(w.astype(np.float32), b.astype(np.float32), x, y)[0]

    curve_steps, curve = [0], [full_loss()]
    snapshot = None
    seconds = 0.0
    perm = order_rng.permutation(len(x))
    for t in range(1, steps + 1):
        k = (t - 1) % x_batches
        if k == 0 and t > 1:
            perm = order_rng.permutation(len(x))
        rows = perm[k * batch:(k + 1) * batch]
        _, gw, gb = loss_and_grads(w.astype(np.float32), b.astype(np.float32), x[rows], y[rows])
        if t == steps - last + 1:
            snapshot = (w.copy(), optimizer.state[0]["exp_avg_sq"].copy())
        t0 = time.perf_counter()
        optimizer.step([gw.astype(dtype), gb.astype(dtype)])
        seconds += time.perf_counter() - t0
        if t <= 100 or t % log_every == 0 or t == steps:  # every early step: log-x plot
            curve_steps.append(t)
            curve.append(full_loss())
    return {"steps": curve_steps, "loss": curve, "final_loss": curve[-1],
            "unchanged_weights": float(np.mean(w == snapshot[0])),
            "unchanged_exp_avg_sq": float(np.mean(optimizer.state[0]["exp_avg_sq"] == snapshot[1])),
            "optimizer_seconds": seconds, "weights": (w, b)}


def run(steps: int = 6000, features: int = 256, samples: int = 16384, batch: int = 256,
        noise: float = 0.5, peak_lr: float = 3e-2, final_lr: float = 1e-5, seed: int = 0,
        last: int = 1000, log_every: int = 20) -> dict:
    """The three runs on one data set; the figures as a dict (curves included)."""
    x, y, _, _ = make_data(samples, features, noise, seed)
    # The best any weights can do: the least-squares solution (float64), and the same
    # solution rounded to bf16 (what bf16 storage costs by itself).
    x64 = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    solution = np.linalg.lstsq(x64, y.astype(np.float64), rcond=None)[0]
    optimum = 0.5 * float(np.mean((x64 @ solution - y) ** 2))
    rounded = solution.astype(np.float32).astype(BF16).astype(np.float64)
    optimum_in_bf16 = 0.5 * float(np.mean((x64 @ rounded - y) ** 2))
    w0 = np.zeros(features, np.float32)
    results = {}
    for name in RUNS:
        dtype = np.dtype(np.float32) if name == "float32" else BF16
        rounding = "stochastic" if name.endswith("stochastic") else "nearest"
        r = train(dtype, rounding, x, y, w0, steps, batch, peak_lr, final_lr, seed, log_every,
                  min(last, steps))
        del r["weights"]
        r["excess_loss"] = [loss - optimum for loss in r["loss"]]
        r["final_excess"] = r["final_loss"] - optimum
        results[name] = r
    return {
        "runs": results,
        "settings": {"steps": steps, "features": features, "samples": samples, "batch": batch,
                     "noise": noise, "peak_lr": peak_lr, "final_lr": final_lr, "seed": seed,
                     "last": min(last, steps)},
        "optimum_loss": optimum,
        "optimum_rounded_to_bf16_excess": optimum_in_bf16 - optimum,
        "isa": adamcore.get_isa(),
    }


def plot(results: dict, path: Path) -> None:
    """Excess loss against step (log-log), the three runs, and the lr, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    fig, (ax, axlr) = plt.subplots(2, 1, figsize=(7.5, 6.4), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    styles = {"float32": ("black", "-", 2.2), "bf16 nearest": ("tab:red", "-", 1.4),
              "bf16 stochastic": ("tab:blue", "-", 1.0)}
    for name, r in results["runs"].items():
        color, ls, lw = styles[name]
        steps = np.array(r["steps"][1:])
        ax.plot(steps, r["excess_loss"][1:], color=color, ls=ls, lw=lw,
                label=f"{name}: final {r['final_excess']:.2e}")
    ax.axhline(results["optimum_rounded_to_bf16_excess"], color="grey", lw=1, ls=":",
               label=f"least-squares optimum rounded to bf16: "
                     f"{results['optimum_rounded_to_bf16_excess']:.2e}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("training loss − least-squares optimum")
    ax.set_title(f"Adam, linear regression ({s['features']} weights, label noise {s['noise']:g}); "
                 f"bf16 = params, grads, m, v\n"
                 f"lr {s['peak_lr']:g} → {s['final_lr']:g} (exponential), batch {s['batch']}, "
                 f"seed {s['seed']}", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    t = np.arange(1, s["steps"] + 1)
    axlr.plot(t, [lr_at(i, s["steps"], s["peak_lr"], s["final_lr"]) for i in t], color="black", lw=1)
    axlr.axhline(2.0 ** -9, color="tab:red", lw=0.8, ls=":",
                 label="2^-9: half a bf16 ulp of a weight in [1, 2)")
    axlr.set_yscale("log")
    axlr.set_ylabel("lr")
    axlr.set_xlabel("step")
    axlr.legend(fontsize=8, loc="lower left")
    axlr.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--noise", type=float, default=0.5, help="label noise (standard deviation)")
    parser.add_argument("--peak-lr", type=float, default=3e-2)
    parser.add_argument("--final-lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--last", type=int, default=1000,
                        help="count the values that did not change over the last N steps")
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--quick", action="store_true",
                        help="64 weights, 4,096 samples, 1,500 steps, the last 250 counted "
                             "(the test's settings; overrides those four options)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"PNG to write (default: docs/figures/{DEFAULT_FIGURE.name}; "
                             "none with --quick or --json unless given)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    if args.quick:
        args.features, args.samples, args.steps, args.last = 64, 4096, 1500, 250
    steps, last = args.steps, args.last
    results = run(steps=steps, features=args.features, samples=args.samples, batch=args.batch, noise=args.noise,
                  peak_lr=args.peak_lr, final_lr=args.final_lr, seed=args.seed, last=last)
    out = args.out if args.out is not None else (None if args.quick or args.json else DEFAULT_FIGURE)
    if out is not None:
        plot(results, out)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"Adam, {args.features} weights, {steps} steps, lr {args.peak_lr:g} -> {args.final_lr:g}, "
          f"seed {args.seed}, isa {results['isa']}")
    print(f"least-squares optimum {results['optimum_loss']:.5f}; rounded to bf16 it is "
          f"{results['optimum_rounded_to_bf16_excess']:.2e} above that")
    f32 = results["runs"]["float32"]["final_excess"]
    print(f"{'run':<16} {'final loss':>10} {'excess':>9} {'/ float32':>10}   unchanged in the last {last} "
          f"steps: weights, exp_avg_sq")
    for name, r in results["runs"].items():
        print(f"{name:<16} {r['final_loss']:>10.5f} {r['final_excess']:>9.2e} {r['final_excess'] / f32:>10.3g}"
              f"   {r['unchanged_weights']:>7.1%}  {r['unchanged_exp_avg_sq']:>7.1%}")
    if out is not None:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
