"""Reddi, Kale & Kumar's counterexample (ICLR 2018), run on adamcore's kernels.

Three online problems on the feasible set F = [-1, 1], each with linear losses
f_t(x) = g_t * x whose sum is minimised at x = -1:

``synthetic``   g_t = 1010 when t mod 101 = 1, else -10 (the paper's Section 5 problem;
                beta1 = 0.9, beta2 = 0.99).
``stochastic``  g_t = 1010 with probability 0.01, else -10 (same betas); E[g] = 0.2 > 0.
``theorem1``    g_t = C when t mod 3 = 1, else -1, with beta1 = 0 and
                beta2 = 1 / (1 + C^2) (the construction of the paper's Theorem 1).

Each problem is run with two schedules:

``paper``    the paper's algorithms: no bias correction, step size alpha_t = alpha/sqrt(t),
             eps = 0, and projection onto F after every step.
``default``  what users run: bias correction on, a constant lr (0.01 unless given),
             eps = 1e-8, and the same projection.

and two algorithms: ``adam`` (exponential moving average of g^2) and ``amsgrad``
(running max of it). Every step is one call of :func:`adamcore.adam_step` with
``diagnostics=True``, so the run also records how often Γ (the change of the inverse
effective learning rate, see :class:`adamcore.GammaStats`) went negative.

The paper does not state alpha or x_1 for its synthetic runs; the defaults here are
alpha = 0.5 and x_1 = 0 for every problem, and C = 3 for ``theorem1`` (Theorem 1 also
asks for alpha < sqrt(1 - beta2) = 0.95 there, which 0.5 satisfies).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

import numpy as np

import adamcore
from adamcore._cli import positive_int

__all__ = [
    "ALGORITHMS",
    "PROBLEMS",
    "SCHEDULES",
    "Problem",
    "RunResult",
    "add_parser",
    "get_problem",
    "gradients",
    "plot_runs",
    "run",
    "run_all",
]

DEFAULT_ALPHA = 0.5
DEFAULT_LR = 0.01
DEFAULT_X1 = 0.0
DEFAULT_C = 3.0
OPTIMUM = -1.0

ALGORITHMS = ("adam", "amsgrad")
SCHEDULES = ("paper", "default")


@dataclass(frozen=True)
class Problem:
    """One online problem: its name, its betas and how to draw its gradients."""

    name: str
    beta1: float
    beta2: float
    description: str
    stochastic: bool
    # (steps, coordinates, rng) -> float32 array of shape (steps, coordinates)
    draw: Callable[[int, int, np.random.Generator], np.ndarray] = field(repr=False)


def _synthetic(steps: int, coords: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(1, steps + 1)
    column = np.where(t % 101 == 1, 1010.0, -10.0).astype(np.float32)
    return np.repeat(column[:, None], coords, axis=1)


def _stochastic(steps: int, coords: int, rng: np.random.Generator) -> np.ndarray:
    big = rng.random((steps, coords)) < 0.01
    return np.where(big, 1010.0, -10.0).astype(np.float32)


def _theorem1_draw(c: float) -> Callable[[int, int, np.random.Generator], np.ndarray]:
    def draw(steps: int, coords: int, rng: np.random.Generator) -> np.ndarray:
        t = np.arange(1, steps + 1)
        column = np.where(t % 3 == 1, c, -1.0).astype(np.float32)
        return np.repeat(column[:, None], coords, axis=1)

    return draw


PROBLEMS = ("synthetic", "stochastic", "theorem1")


def get_problem(name: str, c: float = DEFAULT_C) -> Problem:
    """The problem called ``name`` (one of :data:`PROBLEMS`); ``c`` is Theorem 1's C."""
    if name == "synthetic":
        return Problem("synthetic", 0.9, 0.99, "f_t = 1010x if t mod 101 = 1 else -10x",
                       False, _synthetic)
    if name == "stochastic":
        return Problem("stochastic", 0.9, 0.99, "f_t = 1010x w.p. 0.01 else -10x",
                       True, _stochastic)
    if name == "theorem1":
        if not (math.isfinite(c) and c > 2.0):
            raise ValueError(f"c must be finite and > 2 (Theorem 1 needs C > 2), got {c}")
        return Problem("theorem1", 0.0, 1.0 / (1.0 + c * c),
                       f"f_t = {c:g}x if t mod 3 = 1 else -x", False, _theorem1_draw(c))
    raise ValueError(f"problem must be one of {', '.join(PROBLEMS)}, got {name!r}")


def gradients(problem: Problem, steps: int, coords: int = 1, seed: int = 0) -> np.ndarray:
    """The gradients g_t (rows: t = 1..steps; columns: independent copies) as float32."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if coords < 1:
        raise ValueError(f"coords must be >= 1, got {coords}")
    return np.ascontiguousarray(problem.draw(steps, coords, np.random.default_rng(seed)))


@dataclass
class RunResult:
    """One run: the iterates, the regret and what Γ did.

    ``x`` has shape (steps + 1, coords): row 0 is x_1, row t the iterate after step t.
    ``avg_regret[t-1]`` is R_t / t with R_t = sum_{s<=t} f_s(x_s) - min_{x in F} sum f_s(x).
    ``gamma_negative`` counts, per step, the coordinates whose Γ was negative.
    ``alpha`` is the paper schedule's alpha (of alpha/sqrt(t)), or the default schedule's
    constant lr.
    """

    problem: str
    algorithm: str
    schedule: str
    alpha: float
    x1: float
    beta1: float
    beta2: float
    x: np.ndarray
    avg_regret: np.ndarray
    gamma_negative: np.ndarray
    gamma_min: np.ndarray

    @property
    def final_x(self) -> np.ndarray:
        return self.x[-1]

    @property
    def steps(self) -> int:
        return self.x.shape[0] - 1

    @property
    def steps_with_negative_gamma(self) -> int:
        return int(np.count_nonzero(self.gamma_negative))

    def summary(self) -> Dict[str, object]:
        finite_min = self.gamma_min[np.isfinite(self.gamma_min)]
        return {
            "problem": self.problem,
            "algorithm": self.algorithm,
            "schedule": self.schedule,
            "alpha": self.alpha,
            "x1": self.x1,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "steps": self.steps,
            "coords": int(self.x.shape[1]),
            "final_x_mean": float(np.mean(self.final_x)),
            "final_x_min": float(np.min(self.final_x)),
            "final_x_max": float(np.max(self.final_x)),
            "avg_regret_final": float(np.mean(self.avg_regret[-1])),
            "steps_with_negative_gamma": self.steps_with_negative_gamma,
            "negative_gamma_coordinate_steps": int(self.gamma_negative.sum()),
            "gamma_min": float(finite_min.min()) if finite_min.size else float("nan"),
        }


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def run(problem: str = "synthetic", *, algorithm: str = "adam", schedule: str = "paper",
        steps: int = 200_000, alpha: float = DEFAULT_ALPHA, lr: float = DEFAULT_LR,
        x1: float = DEFAULT_X1, coords: int = 1, seed: int = 0,
        c: float = DEFAULT_C) -> RunResult:
    """Run one algorithm on one problem with adamcore's kernels, one call per step.

    ``alpha`` is the paper schedule's alpha (step size alpha/sqrt(t)); ``lr`` is the
    default schedule's constant learning rate. ``coords`` independent copies run side by
    side in the same arrays (for the stochastic problem each column draws its own
    gradients from ``seed``).
    """
    prob = get_problem(problem, c)
    _check_choice("algorithm", algorithm, ALGORITHMS)
    _check_choice("schedule", schedule, SCHEDULES)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    if not (math.isfinite(x1) and -1.0 <= x1 <= 1.0):
        raise ValueError(f"x1 must lie in the feasible set [-1, 1], got {x1}")
    grads = gradients(prob, steps, coords, seed)

    param = np.full(coords, x1, dtype=np.float32)
    exp_avg = np.zeros(coords, dtype=np.float32)
    exp_avg_sq = np.zeros(coords, dtype=np.float32)
    amsgrad = algorithm == "amsgrad"
    max_exp_avg_sq = np.zeros(coords, dtype=np.float32) if amsgrad else None
    paper = schedule == "paper"
    eps = 0.0 if paper else 1e-8
    low, high = np.float32(-1.0), np.float32(1.0)

    xs = np.empty((steps + 1, coords), dtype=np.float32)
    xs[0] = param
    gamma_negative = np.zeros(steps, dtype=np.int64)
    gamma_min = np.full(steps, np.nan, dtype=np.float64)
    prev_lr = None
    for t in range(1, steps + 1):
        step_lr = alpha / math.sqrt(t) if paper else lr
        stats = adamcore.adam_step(
            param, grads[t - 1], exp_avg, exp_avg_sq, step=t, lr=step_lr, beta1=prob.beta1,
            beta2=prob.beta2, eps=eps, amsgrad=amsgrad, max_exp_avg_sq=max_exp_avg_sq,
            bias_correction=not paper, diagnostics=True, prev_lr=prev_lr)
        np.clip(param, low, high, out=param)  # projection onto F
        xs[t] = param
        gamma_negative[t - 1] = stats.negative
        gamma_min[t - 1] = stats.gamma_min
        prev_lr = step_lr

    # f_t is evaluated at x_t, the iterate before step t; min over F of x * G is -|G|.
    g64 = grads.astype(np.float64)
    loss = np.cumsum(g64 * xs[:-1].astype(np.float64), axis=0)
    best = -np.abs(np.cumsum(g64, axis=0))
    avg_regret = (loss - best) / np.arange(1, steps + 1)[:, None]
    return RunResult(problem, algorithm, schedule, alpha if paper else lr, x1, prob.beta1,
                     prob.beta2, xs, avg_regret, gamma_negative, gamma_min)


def run_all(problems: Sequence[str] = PROBLEMS, *, steps: int = 200_000,
            alpha: float = DEFAULT_ALPHA, lr: float = DEFAULT_LR,
            x1: float = DEFAULT_X1, seeds: int = 8,
            seed: int = 0, c: float = DEFAULT_C) -> List[RunResult]:
    """Every algorithm and schedule on every problem (``seeds`` copies for the stochastic one)."""
    results = []
    for name in problems:
        coords = seeds if get_problem(name, c).stochastic else 1
        for schedule in SCHEDULES:
            for algorithm in ALGORITHMS:
                results.append(run(name, algorithm=algorithm, schedule=schedule, steps=steps,
                                   alpha=alpha, lr=lr, x1=x1, coords=coords, seed=seed,
                                   c=c))
    return results


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _block_means(series: np.ndarray, blocks: int = 400) -> tuple:
    """(centre step, mean) of ``blocks`` equal blocks of a per-step series (step 1 first)."""
    size = max(1, len(series) // blocks)
    usable = len(series) // size * size
    means = series[:usable].reshape(-1, size).mean(axis=1)
    centres = np.arange(len(means)) * size + (size + 1) / 2.0
    return centres, means


def plot_runs(results: Sequence[RunResult], path: str, title: str = "") -> bool:
    """Plot x_t and R_t/t of ``results`` (one problem) into ``path``; False without matplotlib."""
    plt = _matplotlib()
    if plt is None:
        return False
    fig, (ax_x, ax_r) = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=90)
    styles = {("adam", "paper"): ("tab:red", "-"), ("amsgrad", "paper"): ("tab:blue", "-"),
              ("adam", "default"): ("tab:red", ":"), ("amsgrad", "default"): ("tab:blue", ":")}
    for res in results:
        color, style = styles[(res.algorithm, res.schedule)]
        label = f"{'AMSGrad' if res.algorithm == 'amsgrad' else 'Adam'} ({res.schedule})"
        # Block means (over steps and copies) smooth the within-period swings and keep
        # the PNG small.
        t_x, x_mean = _block_means(res.x[1:].mean(axis=1))
        t_r, r_mean = _block_means(res.avg_regret.mean(axis=1))
        ax_x.plot(t_x, x_mean, style, color=color, label=label, lw=1.2)
        ax_r.plot(t_r, r_mean, style, color=color, label=label, lw=1.2)
    ax_x.set_xlabel("step t")
    ax_x.set_ylabel("x_t")
    ax_x.set_ylim(-1.05, 1.05)
    ax_x.axhline(OPTIMUM, color="0.6", lw=0.8)
    ax_r.set_xlabel("step t")
    ax_r.set_ylabel("average regret R_t / t")
    ax_r.set_yscale("log")
    ax_x.legend(fontsize=7, loc="center right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _format_table(rows: Sequence[Dict[str, object]]) -> str:
    header = ("problem", "algorithm", "schedule", "final x", "R_T/T", "steps Γ<0", "min Γ")
    lines = [f"{header[0]:<11}{header[1]:<10}{header[2]:<9}{header[3]:>10}{header[4]:>11}"
             f"{header[5]:>11}{header[6]:>12}"]
    for r in rows:
        lines.append(f"{r['problem']:<11}{r['algorithm']:<10}{r['schedule']:<9}"
                     f"{r['final_x_mean']:>10.4f}{r['avg_regret_final']:>11.4f}"
                     f"{r['steps_with_negative_gamma']:>11d}{r['gamma_min']:>12.4g}")
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> int:
    problems = PROBLEMS if args.problem == "all" else (args.problem,)
    try:
        results = run_all(problems, steps=args.steps, alpha=args.alpha, lr=args.lr,
                          x1=args.x1, seeds=args.seeds, seed=args.seed, c=args.c)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    rows = [r.summary() for r in results]
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
    else:
        print(f"paper: alpha_t = {args.alpha:g}/sqrt(t), no bias correction, eps = 0; "
              f"default: lr = {args.lr:g}, bias correction, eps = 1e-8")
        print(f"x_1 = {args.x1:g}, steps = {args.steps}, C = {args.c:g}; optimum x* = -1; "
              "final x is the mean over copies")
        print(_format_table(rows))
    if args.plot_dir:
        os.makedirs(args.plot_dir, exist_ok=True)
        for name in problems:
            mine = [r for r in results if r.problem == name]
            prob = get_problem(name, args.c)
            path = os.path.join(args.plot_dir, f"reddi_{name}.png")
            title = (f"{prob.description}; beta1={prob.beta1:g}, beta2={prob.beta2:.4g}, "
                     f"alpha={args.alpha:g}/sqrt(t) (paper), lr={args.lr:g} (default), "
                     f"x1={args.x1:g}")
            if not plot_runs(mine, path, title):
                print("matplotlib is not installed: skipping the plots")
                break
            print(f"wrote {path}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reddi`` command to the ``python -m adamcore`` parser."""
    parser = subparsers.add_parser(
        "reddi", help="run Reddi et al.'s counterexample with Adam and AMSGrad",
        description="Adam drifts to the worst point +1 while AMSGrad reaches the optimum -1.")
    parser.add_argument("--problem", choices=("all",) + PROBLEMS, default="all")
    parser.add_argument("--steps", type=positive_int, default=200_000)
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help="the paper schedule's step size alpha/sqrt(t)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help="the default schedule's constant learning rate")
    parser.add_argument("--x1", type=float, default=DEFAULT_X1, help="starting point in [-1, 1]")
    parser.add_argument("--c", type=float, default=DEFAULT_C, help="Theorem 1's C (> 2)")
    parser.add_argument("--seeds", type=positive_int, default=8,
                        help="independent copies of the stochastic problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-dir", default=None, help="write reddi_<problem>.png here")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    parser.set_defaults(func=_command)
    return parser
