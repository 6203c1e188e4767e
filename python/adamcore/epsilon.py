"""``python -m adamcore epsilon``: how epsilon's placement changes the effective learning
rate of a rarely-updated coordinate, under each convention (docs/conventions.md).

A coordinate sees a gradient ``grad`` once every ``period`` steps and 0 otherwise, as an
embedding row of a rare token does. Between its updates ``v`` decays by beta2 per step,
so ``sqrt(v)`` shrinks until epsilon takes over; where epsilon sits (outside the sqrt,
torch; outside but not scaled by sqrt(1-beta2^t), Keras's epsilon-hat; inside the sqrt,
optax's ``eps_root``) decides how large the step on the next rare gradient is.

The effective learning rate is measured, not derived: at every step t, eta_t = -dp / m is
the factor a step would apply to the first moment if the rare gradient arrived at that
step (a probe step from the current state, not kept), from the float32 emulation of each
convention (:mod:`adamcore.conventions`). Gamma_t = 1/eta_t - 1/eta_{t-1} is the change of
its inverse (Reddi et al.'s Gamma for one coordinate); Gamma < 0 means the effective
learning rate grew.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from . import conventions

F32 = np.float32

# (label, convention, keyword arguments): each peer's default epsilon, and optax's eps_root.
VARIANTS = (
    ("torch (eps=1e-8 outside the sqrt)", "torch-fused", {"eps": 1e-8}),
    ("Keras (eps-hat=1e-7, default)", "keras", {"eps": 1e-7}),
    ("optax (eps=1e-8)", "optax", {"eps": 1e-8}),
    ("optax (eps=0, eps_root=1e-8 inside)", "optax", {"eps": 0.0, "eps_root": 1e-8}),
    ("DeepSpeed (eps=1e-8)", "deepspeed", {"eps": 1e-8}),
)


@dataclass
class Trace:
    label: str
    convention: str
    eta: np.ndarray          # effective learning rate per step (float64 from float32 bits)
    gamma: np.ndarray        # 1/eta_t - 1/eta_{t-1}, from step 2

    @property
    def gamma_negative_steps(self) -> int:
        return int(np.count_nonzero(self.gamma < 0))


def rare_coordinate_trace(convention: str, *, steps: int = 4000, period: int = 1000,
                          grad: float = 1e-6, lr: float = 1e-3, beta1: float = 0.9,
                          beta2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                          label: str = "") -> Trace:
    """Run one rarely-updated coordinate for ``steps`` steps under ``convention``."""
    if steps < 2 or period < 1:
        raise ValueError("steps must be >= 2 and period >= 1")
    state = conventions.init_adam_state(np.zeros(1, F32))
    eta = np.empty(steps)
    g_on, g_off = np.array([grad], F32), np.zeros(1, F32)
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, eps_root=eps_root)
    for t in range(1, steps + 1):
        # The probe: the step the rare gradient would get if it arrived now (p from 0, so
        # the whole update is representable; m and v do not depend on p).
        probe = conventions.adam_step(convention, dict(state, param=np.zeros(1, F32)), g_on,
                                      step=t, **kw)
        eta[t - 1] = -float(probe["param"][0]) / float(probe["exp_avg"][0])
        g = g_on if (t - 1) % period == 0 else g_off
        state = conventions.adam_step(convention, state, g, step=t, **kw)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.diff(1.0 / eta)
    return Trace(label or convention, convention, eta, gamma)


def traces(**kwargs) -> List[Trace]:
    return [rare_coordinate_trace(conv, label=label, **{**kwargs, **kw})
            for label, conv, kw in VARIANTS]


def plot(results: Sequence[Trace], path: str, *, period: int, grad: float) -> bool:
    """Save the figure to ``path``; False when matplotlib is not installed."""
    from .reddi import _matplotlib   # pyplot with the Agg backend, or None
    plt = _matplotlib()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ["-", "--", "-.", ":", (0, (1, 4))]
    for res, style in zip(results, styles):
        steps = np.arange(1, res.eta.size + 1)
        ax.plot(steps, res.eta, linestyle=style, linewidth=1.4,
                label=f"{res.label}: Γ<0 on {res.gamma_negative_steps} steps")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("effective learning rate  -Δp / m")
    ax.set_title(f"A coordinate with gradient {grad:g} once every {period} steps (Adam, lr 1e-3)")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _command(args: argparse.Namespace) -> int:
    try:
        results = traces(steps=args.steps, period=args.period, grad=args.grad)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    last = args.steps - 1
    before = max(0, (last // args.period) * args.period - 1)  # just before the last rare step
    print(f"{'convention':40s} {'eta before rare grad':>22s} {'max eta':>10s} {'steps Γ<0':>10s}")
    for res in results:
        print(f"{res.label:40s} {res.eta[before]:22.4g} {np.nanmax(res.eta):10.4g} "
              f"{res.gamma_negative_steps:10d}")
    if args.out:
        if plot(results, args.out, period=args.period, grad=args.grad):
            print(f"wrote {args.out}")
        else:
            print("matplotlib is not installed: no figure")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "epsilon", help="effective learning rate of a rarely-updated coordinate under each "
                        "epsilon placement")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--period", type=int, default=1000, help="steps between its gradients")
    parser.add_argument("--grad", type=float, default=1e-6, help="its gradient when it has one")
    parser.add_argument("--out", default=None, help="write the figure (PNG) here")
    parser.set_defaults(func=_command)
    return parser
