"""Where Adam fails: a beta1 x beta2 phase diagram on two problems, run on adamcore's kernels.

``reddi``  Reddi et al.'s synthetic online problem on F = [-1, 1]: f_t(x) = 1010x when
           t mod 101 = 1, else -10x (optimum x* = -1, worst point +1). Every cell runs
           several starting points x_1 side by side as independent coordinates and
           reports the mean iterate over the last period (101 steps), averaged over the
           starting points: +1 means Adam went to the worst point, -1 the optimum.
``zhang``  The divergence example Zhang et al. (NeurIPS 2022) take from Shi et al. (2021):
           f(x) = sum_{i<n} f_i(x) on all of R with f_0(x) = n*x and f_i(x) = -x (i > 0)
           for x >= -1, continued by quadratics below -1 (f_0 = n/2 (x+2)^2 - 3n/2,
           f_i = -1/2 (x+2)^2 + 3/2) so that f is smooth with its minimum at x* = -2.
           Adam visits the f_i in a random order each epoch (random reshuffling); every
           cell runs several shuffling seeds side by side as independent coordinates and
           reports the median distance |x_T - x*| (diverging runs grow without bound).

Every cell advances all of its coordinates with one :func:`adamcore.adam_step` call
per step (beta1 and beta2 are per-call scalars, so cells cannot share a call). Both
problems use the step size alpha_t = alpha/sqrt(t) with adamcore's bias correction
on and eps = 1e-8; ``--no-bias-correction`` runs the papers' uncorrected form.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

import adamcore

__all__ = [
    "DEFAULT_BETA1",
    "DEFAULT_BETA2",
    "PhaseResult",
    "add_parser",
    "plot_phase",
    "reddi_cell",
    "run_grid",
    "zhang_cell",
    "zhang_gradient",
]

DEFAULT_BETA1 = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_BETA2 = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)
REDDI_STARTS = (-1.0, -0.5, 0.0, 0.5, 1.0)
REDDI_PERIOD = 101
ZHANG_OPTIMUM = -2.0


def _check_betas(beta1: float, beta2: float) -> None:
    if not (0.0 <= beta1 < 1.0):
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    if not (0.0 <= beta2 < 1.0):
        raise ValueError(f"beta2 must be in [0, 1), got {beta2}")


def _adam_state(x: np.ndarray):
    param = np.ascontiguousarray(x, dtype=np.float32).copy()
    return param, np.zeros_like(param), np.zeros_like(param)


def reddi_cell(beta1: float, beta2: float, *, steps: int = 30_300, alpha: float = 0.5,
               starts: Sequence[float] = REDDI_STARTS, bias_correction: bool = True) -> float:
    """Mean iterate of Reddi's synthetic problem over the last period of ``steps`` steps.

    Averaged over the starting points ``starts`` (each one coordinate of the same call):
    near +1 Adam settled at the worst point, near -1 at the optimum.
    """
    _check_betas(beta1, beta2)
    if steps < REDDI_PERIOD:
        raise ValueError(f"steps must be >= {REDDI_PERIOD} (one period), got {steps}")
    param, exp_avg, exp_avg_sq = _adam_state(np.asarray(starts, dtype=np.float64))
    if param.ndim != 1 or param.size == 0 or np.any(np.abs(param) > 1):
        raise ValueError("starts must be a non-empty list of points in [-1, 1]")
    grad = np.empty_like(param)
    low, high = np.float32(-1.0), np.float32(1.0)
    last_period_sum = np.zeros(param.size, dtype=np.float64)
    for t in range(1, steps + 1):
        grad.fill(1010.0 if t % REDDI_PERIOD == 1 else -10.0)
        adamcore.adam_step(param, grad, exp_avg, exp_avg_sq, step=t, lr=alpha / math.sqrt(t),
                           beta1=beta1, beta2=beta2, eps=1e-8,
                           bias_correction=bias_correction)
        np.clip(param, low, high, out=param)  # projection onto F
        if t > steps - REDDI_PERIOD:
            last_period_sum += param
    return float(np.mean(last_period_sum / REDDI_PERIOD))


def zhang_gradient(x: np.ndarray, is_first: np.ndarray, n: int) -> np.ndarray:
    """Gradient of f_0 (where ``is_first``) or f_i, i > 0 (elsewhere) at ``x``, in float32."""
    x = np.asarray(x, dtype=np.float32)
    # Both pieces share the factor h(x) = 1 for x >= -1, x + 2 below; f_0 scales it by n,
    # the others by -1.
    h = np.where(x >= np.float32(-1.0), np.float32(1.0), x + np.float32(2.0))
    return np.where(is_first, np.float32(n), np.float32(-1.0)) * h


def _first_function_mask(steps: int, n: int, seeds: int, seed: int) -> np.ndarray:
    """mask[t, s]: step t+1 of shuffling seed s visits f_0 (once per epoch, random slot)."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps // n)
    slot = rng.integers(0, n, size=(epochs, seeds))
    mask = np.arange(n)[None, :, None] == slot[:, None, :]  # (epochs, n, seeds)
    return mask.reshape(epochs * n, seeds)[:steps]


def zhang_cell(beta1: float, beta2: float, *, steps: int = 20_000, alpha: float = 1.0,
               n: int = 10, seeds: int = 8, x0: float = 0.0, seed: int = 0,
               bias_correction: bool = True) -> np.ndarray:
    """Final iterates x_T of Zhang et al.'s example, one per shuffling seed."""
    _check_betas(beta1, beta2)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if steps < 1 or seeds < 1:
        raise ValueError(f"steps and seeds must be >= 1, got {steps} and {seeds}")
    first = _first_function_mask(steps, n, seeds, seed)
    param, exp_avg, exp_avg_sq = _adam_state(np.full(seeds, x0))
    for t in range(1, steps + 1):
        grad = zhang_gradient(param, first[t - 1], n)
        adamcore.adam_step(param, grad, exp_avg, exp_avg_sq, step=t, lr=alpha / math.sqrt(t),
                           beta1=beta1, beta2=beta2, eps=1e-8,
                           bias_correction=bias_correction)
    return param


@dataclass
class PhaseResult:
    """One problem's grid: ``values[i, j]`` belongs to (beta1[i], beta2[j])."""

    problem: str
    beta1: List[float]
    beta2: List[float]
    values: np.ndarray
    converged: np.ndarray
    metric: str
    settings: Dict[str, object]
    seconds: float

    def threshold(self) -> List[Optional[float]]:
        """Per beta1: the smallest grid beta2 from which every larger grid beta2 converged."""
        out: List[Optional[float]] = []
        for row in self.converged:
            found = None
            for j in range(len(self.beta2) - 1, -1, -1):
                if not row[j]:
                    break
                found = self.beta2[j]
            out.append(found)
        return out


def run_grid(problem: str, beta1: Sequence[float] = DEFAULT_BETA1,
             beta2: Sequence[float] = DEFAULT_BETA2, *, steps: Optional[int] = None,
             alpha: Optional[float] = None, bias_correction: bool = True, n: int = 10,
             seeds: int = 8) -> PhaseResult:
    """Run every (beta1, beta2) cell of ``problem`` (``"reddi"`` or ``"zhang"``)."""
    beta1, beta2 = [float(b) for b in beta1], [float(b) for b in beta2]
    if not beta1 or not beta2:
        raise ValueError("beta1 and beta2 grids must not be empty")
    values = np.empty((len(beta1), len(beta2)), dtype=np.float64)
    start = time.perf_counter()
    if problem == "reddi":
        steps = 30_300 if steps is None else steps
        alpha = 0.5 if alpha is None else alpha
        for i, b1 in enumerate(beta1):
            for j, b2 in enumerate(beta2):
                values[i, j] = reddi_cell(b1, b2, steps=steps, alpha=alpha,
                                          bias_correction=bias_correction)
        # The starting points average to 0: a negative mean moved towards the optimum.
        converged = values < 0.0
        metric = "mean x over the last period (x* = -1, worst = +1)"
        settings = {"steps": steps, "alpha": alpha, "starts": list(REDDI_STARTS)}
    elif problem == "zhang":
        steps = 20_000 if steps is None else steps
        alpha = 1.0 if alpha is None else alpha
        for i, b1 in enumerate(beta1):
            for j, b2 in enumerate(beta2):
                final = zhang_cell(b1, b2, steps=steps, alpha=alpha, n=n, seeds=seeds,
                                   bias_correction=bias_correction)
                values[i, j] = float(np.median(np.abs(final.astype(np.float64)
                                                      - ZHANG_OPTIMUM)))
        converged = values < 0.1
        metric = "median |x_T - x*| over shuffling seeds (x* = -2)"
        settings = {"steps": steps, "alpha": alpha, "n": n, "seeds": seeds, "x0": 0.0}
    else:
        raise ValueError(f"problem must be 'reddi' or 'zhang', got {problem!r}")
    settings["bias_correction"] = bias_correction
    return PhaseResult(problem, beta1, beta2, values, converged, metric, settings,
                       time.perf_counter() - start)


def plot_phase(results: Sequence[PhaseResult], path: str) -> bool:
    """Heatmaps of ``results`` side by side into ``path``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.9), dpi=90,
                             squeeze=False)
    for ax, res in zip(axes[0], results):
        if res.problem == "reddi":
            shown, cmap, vmin, vmax = res.values, "coolwarm", -1.0, 1.0
            label = "mean x_T (+1 worst, -1 optimum)"
            fmt = "{:+.2f}"
        else:
            shown = np.log10(np.maximum(res.values, 1e-4))
            cmap, vmin, vmax = "coolwarm", -4.0, 2.0
            label = "log10 median |x_T - x*|"
            fmt = "{:.1f}"
        image = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                          aspect="auto")
        for i in range(shown.shape[0]):
            for j in range(shown.shape[1]):
                ax.text(j, i, fmt.format(shown[i, j]), ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(res.beta2)))
        ax.set_xticklabels([f"{b:g}" for b in res.beta2], rotation=45, fontsize=7)
        ax.set_yticks(range(len(res.beta1)))
        ax.set_yticklabels([f"{b:g}" for b in res.beta1], fontsize=7)
        ax.set_xlabel("beta2")
        ax.set_ylabel("beta1")
        s = res.settings
        title = ("Reddi et al. synthetic" if res.problem == "reddi"
                 else f"Zhang et al. (n = {s['n']}, shuffled)")
        ax.set_title(f"{title}: {s['steps']} steps, alpha={s['alpha']:g}/sqrt(t)", fontsize=8)
        fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _print_result(res: PhaseResult) -> None:
    print(f"{res.problem}: {res.metric}; {res.settings}; {res.seconds:.1f} s")
    print("beta1 \\ beta2 " + "".join(f"{b:>9g}" for b in res.beta2) + "   converges from")
    for b1, row, thr in zip(res.beta1, res.values, res.threshold()):
        cells = "".join(f"{v:>9.3g}" for v in row)
        print(f"{b1:<14g}{cells}   {'-' if thr is None else f'{thr:g}'}")


def _float_list(text: str) -> List[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {err}") from None


def _command(args: argparse.Namespace) -> int:
    problems = ("reddi", "zhang") if args.problem == "all" else (args.problem,)
    results = []
    for name in problems:
        try:
            res = run_grid(name, args.beta1, args.beta2, steps=args.steps,
                           bias_correction=args.bias_correction, n=args.n, seeds=args.seeds)
        except ValueError as err:
            print(f"error: {err}")
            return 2
        _print_result(res)
        results.append(res)
    if args.plot:
        directory = os.path.dirname(args.plot)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if plot_phase(results, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("matplotlib is not installed: skipping the plot")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``phase`` command to the ``python -m adamcore`` parser."""
    parser = subparsers.add_parser(
        "phase", help="beta1 x beta2 phase diagram of Adam on Reddi's and Zhang's problems",
        description="Runs every (beta1, beta2) cell with adamcore's kernels and prints "
                    "where Adam reaches the optimum.")
    parser.add_argument("--problem", choices=("all", "reddi", "zhang"), default="all")
    parser.add_argument("--beta1", type=_float_list, default=list(DEFAULT_BETA1),
                        help="comma-separated beta1 grid")
    parser.add_argument("--beta2", type=_float_list, default=list(DEFAULT_BETA2),
                        help="comma-separated beta2 grid")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per cell (default 30300 for reddi, 20000 for zhang)")
    parser.add_argument("--n", type=int, default=10, help="Zhang et al.'s number of functions")
    parser.add_argument("--seeds", type=int, default=8, help="shuffling seeds per cell (zhang)")
    parser.add_argument("--no-bias-correction", dest="bias_correction", action="store_false")
    parser.add_argument("--plot", default=None, help="write the heatmaps to this PNG")
    parser.set_defaults(func=_command)
    return parser
