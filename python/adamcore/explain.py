"""``python -m adamcore explain``: why do two optimizer trajectories differ?

Given two trajectories of the same case (two implementations run on a generated case, or
two golden sets), find the first step and element where they diverge, replay that step
from the last state they agree on under every candidate convention
(:mod:`adamcore.conventions`), and name the conventions that reproduce each side, with
the sizes of the difference in ulps.

    python -m adamcore explain --impl torch-fused --vs torch-foreach --optimizer adamw \\
        --steps 50 --size 1003
    python -m adamcore explain GOLDEN_DIR_A GOLDEN_DIR_B [--case NAME]

Implementation names: adamcore, torch-fused, torch-foreach, torch-forloop, deepspeed,
optax, keras (the real peers, when installed), and ``emulate:<convention>[@W]``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import conventions
from .oracle import ulp_distance

F32 = np.float32
Trajectory = Dict[str, np.ndarray]   # key -> (steps, size) float32

# What each convention changes relative to torch-fused (adamcore's default), for the report.
CAUSES = {
    "torch-fused": "adamcore's canonical recipe (torch fused's vector body)",
    "torch-fused@": "torch fused's scalar tail: the last n % {w} elements compute "
                    "exp_avg_sq = fma(v, beta2, (1-beta2)*g*g) instead of "
                    "fma((1-beta2)*g, g, v*beta2)",
    "torch-foreach": "torch's for-loop/foreach path: AdamW's decay factor 1 - lr*wd rounded "
                     "without an fma",
    "torch-foreach+torch.sqrt": "torch's for-loop/foreach path: torch.sqrt (MKL vsSqrt, not "
                                "correctly rounded) and AdamW's 1 - lr*wd without an fma",
    "deepspeed@": "DeepSpeed CPU: float32 host scalars, beta^t by repeated multiplication, "
                  "multiplication by 1/sqrt(1-beta2^t), m and v as fmas of beta*x + (1-beta)*g "
                  "(scalar tail of the last n % {w} elements contracted the other way)",
    "optax": "optax under jit: m and v bias-corrected before the division (by float32 "
             "reciprocals), beta^t in float32, eps_root inside the sqrt, XLA's fmas",
    "keras": "Keras: epsilon-hat form, alpha = lr*sqrt(1-beta2^t)/(1-beta1^t) with eps "
             "outside, m += (g-m)*(1-beta1), no fma",
    "reddi": "Reddi et al.'s AMSGrad: no bias correction, step alpha/sqrt(t)",
}


@dataclass
class Problem:
    """One case: ``optimizer`` "adam", "adamw" or "adagrad"; ``hyper`` the functional API's
    keyword arguments (``amsgrad`` included); ``initial`` the state before step 1;
    ``grads`` (steps, size); ``steps`` and ``lrs`` per step."""

    optimizer: str
    hyper: Dict[str, object]
    initial: Dict[str, np.ndarray]
    grads: np.ndarray
    steps: List[int]
    lrs: List[float]
    name: str = ""


@dataclass
class Candidate:
    label: str
    max_ulp_to_a: float
    max_ulp_to_b: float
    differing_from_b: int


@dataclass
class Explanation:
    label_a: str
    label_b: str
    problem: Problem
    step_index: Optional[int] = None      # 0-based; None: the trajectories agree
    element: int = -1
    key: str = ""
    value_a: float = 0.0
    value_b: float = 0.0
    ulp: float = 0.0
    per_key: Dict[str, Tuple[int, float]] = field(default_factory=dict)  # count, max ulp
    candidates: List[Candidate] = field(default_factory=list)

    @property
    def reproduces_b(self) -> List[str]:
        return [c.label for c in self.candidates if c.max_ulp_to_b == 0]

    @property
    def reproduces_a(self) -> List[str]:
        return [c.label for c in self.candidates if c.max_ulp_to_a == 0]

    def format(self) -> str:
        p = self.problem
        head = (f"explain: A = {self.label_a}, B = {self.label_b}: {p.name or p.optimizer}, "
                f"{p.grads.shape[1]} elements, {p.grads.shape[0]} steps")
        if self.step_index is None:
            return head + "\nthe trajectories are identical, bit for bit"
        t = p.steps[self.step_index]
        lines = [head,
                 f"first divergence: step {t}, element {self.element}, {self.key}: "
                 f"A {self.value_a!r} B {self.value_b!r} ({self.ulp:g} ulp)",
                 "  at that step: " + "; ".join(
                     f"{k} {n} element(s) differ, max {u:g} ulp"
                     for k, (n, u) in self.per_key.items()),
                 f"replayed step {t} from the last agreeing state "
                 f"({'the initial state' if self.step_index == 0 else f'after step {p.steps[self.step_index - 1]}'})"
                 " under each convention:"]
        for c in self.candidates:
            mark = "reproduces B" if c.max_ulp_to_b == 0 else (
                "reproduces A" if c.max_ulp_to_a == 0 else "")
            lines.append(f"  {c.label:26s} to A {c.max_ulp_to_a:>8g} ulp  to B "
                         f"{c.max_ulp_to_b:>8g} ulp ({c.differing_from_b} differ)  {mark}")
        b = self.reproduces_b
        if b:
            lines.append("explained: B follows " + " = ".join(b) + "; " + _cause(b[0]))
            if self.reproduces_a:
                lines.append("           A follows " + " = ".join(self.reproduces_a))
        else:
            best = min(self.candidates, key=lambda c: c.max_ulp_to_b, default=None)
            lines.append("not explained: no convention reproduces B"
                         + (f"; closest {best.label} ({best.max_ulp_to_b:g} ulp)" if best else ""))
        return "\n".join(lines)


def _label_order(label: str):
    """Ties list adamcore's own convention first, then the others in the usual order."""
    base, _, variant = label.partition("+")
    name, _, width = base.partition("@")
    order = conventions.ADAM_CONVENTIONS
    return order.index(name) if name in order else len(order), int(width or 0), variant


def _cause(label: str) -> str:
    name, _, width = label.partition("@")
    if width:
        return CAUSES[name + "@"].format(w=width)
    return CAUSES.get(label, CAUSES.get(name, ""))


# ---------------------------------------------------------------- candidates

def candidates(problem: Problem) -> List[Tuple[str, Callable]]:
    """(label, step) for every convention that can run ``problem``'s options; ``step``
    maps (state, grad, step number, lr) to the new state."""
    out = []
    widths = (8, 16)
    h = dict(problem.hyper)
    if problem.optimizer == "adagrad":
        step_fn = conventions.adagrad_step
        kw = {k: h[k] for k in ("lr_decay", "weight_decay", "eps", "maximize") if k in h}
        names = [(n, None, None) for n in conventions.ADAGRAD_CONVENTIONS]
        names += [("deepspeed", w, None) for w in widths]
    else:
        step_fn = conventions.adam_step
        kw = {k: h[k] for k in ("beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize",
                                "bias_correction") if k in h}
        kw["decoupled"] = problem.optimizer == "adamw"
        names = [(n, None, None) for n in conventions.ADAM_CONVENTIONS if n != "deepspeed"]
        names += [(n, w, None) for n in ("torch-fused", "deepspeed") for w in widths]
    names += _torch_sqrt_variant()

    def make(name, width, sqrt):
        def step(state, g, t, lr):
            return step_fn(name, state, g, step=t, lr=lr, tail_width=width, sqrt=sqrt, **kw)
        return step

    for name, width, sqrt in names:
        label = name + (f"@{width}" if width else "") + ("+torch.sqrt" if sqrt else "")
        out.append((label, make(name, width, sqrt)))
    return out


def _torch_sqrt_variant():
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    from ._peers import torch_sqrt
    return [("torch-foreach", None, torch_sqrt)]


# ---------------------------------------------------------------- the analysis

def first_divergence(a: Trajectory, b: Trajectory) -> Optional[Tuple[int, str, int]]:
    """(step index, key, element) of the first difference (keys in a's order), or None."""
    steps = min(len(v) for v in a.values())
    for k in range(steps):
        for key in a:
            if key not in b:
                continue
            d = ulp_distance(a[key][k], b[key][k])
            if np.any(d > 0):
                return k, key, int(np.flatnonzero(d > 0)[0])
    return None


def explain(problem: Problem, a: Trajectory, b: Trajectory, label_a: str = "A",
            label_b: str = "B") -> Explanation:
    """Find where ``a`` and ``b`` diverge and which convention reproduces each side."""
    result = Explanation(label_a, label_b, problem)
    found = first_divergence(a, b)
    if found is None:
        return result
    k, key, element = found
    keys = [x for x in a if x in b]
    result.step_index, result.key, result.element = k, key, element
    result.value_a, result.value_b = float(a[key][k][element]), float(b[key][k][element])
    one = slice(element, element + 1)
    result.ulp = float(ulp_distance(a[key][k][one], b[key][k][one])[0])
    for x in keys:
        d = ulp_distance(a[x][k], b[x][k])
        if np.any(d > 0):
            result.per_key[x] = (int(np.count_nonzero(d)), float(d.max()))
    start = problem.initial if k == 0 else {x: a[x][k - 1] for x in keys}
    start = {x: np.array(v, dtype=F32) for x, v in start.items()}
    for label, step in candidates(problem):
        try:
            with np.errstate(all="ignore"):
                new = step(start, np.array(problem.grads[k], dtype=F32), problem.steps[k],
                           problem.lrs[k])
        except ValueError:      # an option this convention does not have
            continue
        to_a = max(float(ulp_distance(a[x][k], new[x]).max()) for x in keys)
        dist_b = [ulp_distance(b[x][k], new[x]) for x in keys]
        result.candidates.append(Candidate(label, to_a, max(float(d.max()) for d in dist_b),
                                           sum(int(np.count_nonzero(d)) for d in dist_b)))
    result.candidates.sort(key=lambda c: (c.max_ulp_to_b, c.max_ulp_to_a, _label_order(c.label)))
    return result


# ---------------------------------------------------------------- inputs

def generated_problem(optimizer: str, steps: int, size: int, seed: int = 0,
                      lr: Optional[float] = None) -> Tuple[Problem, str, dict]:
    """A generated case for ``_peers.run``: (problem, the peers' optimizer name, hyper)."""
    from . import _peers
    if optimizer not in _peers.OPTIMIZERS:
        raise ValueError(f"--optimizer: {optimizer!r} is not one of {', '.join(_peers.OPTIMIZERS)}")
    if steps < 1 or size < 1:
        raise ValueError("--steps and --size must be >= 1")
    hyper = _peers.default_hyper(optimizer)
    if lr is not None:
        hyper["lr"] = lr
    param, grads = _peers.make_case(size, steps, seed)
    if optimizer == "adagrad":
        problem_hyper = {"eps": hyper["eps"]}
        initial = conventions.init_adagrad_state(param)
    else:
        problem_hyper = {k: hyper[k] for k in ("beta1", "beta2", "eps", "weight_decay")}
        problem_hyper["amsgrad"] = optimizer == "amsgrad"
        initial = conventions.init_adam_state(param, amsgrad=optimizer == "amsgrad")
    problem = Problem("adam" if optimizer == "amsgrad" else optimizer, problem_hyper, initial,
                      np.stack(grads), list(range(1, steps + 1)), [hyper["lr"]] * steps,
                      name=f"{optimizer}, seed {seed}")
    return problem, optimizer, hyper


def stack(states: Sequence[Dict[str, np.ndarray]]) -> Trajectory:
    return {k: np.stack([s[k] for s in states]) for k in states[0]}


def run_pair(impl: str, vs: str, optimizer: str, steps: int, size: int, seed: int = 0,
             lr: Optional[float] = None) -> Explanation:
    from . import _peers
    problem, opt, hyper = generated_problem(optimizer, steps, size, seed, lr)
    param = problem.initial["param"]
    grads = list(problem.grads)
    a = stack(_peers.run(impl, opt, param, grads, hyper))
    b = stack(_peers.run(vs, opt, param, grads, hyper))
    return explain(problem, a, b, impl, vs)


def golden_problems(directory: str, names=None):
    """(problem, expected trajectory) per float32 case of a golden set."""
    from . import oracle
    out = []
    for case in oracle.load(directory, names):
        if any(v != "float32" for k, v in case.layout.items() if k != "param_copy") \
                or case.layout.get("param_copy") or case.has_options:
            continue
        problem = Problem(case.optimizer, dict(case.hyper), dict(case.initial), case.grads,
                          list(case.steps), list(case.lrs), name=case.name)
        out.append((problem, dict(case.expected)))
    return out


# ---------------------------------------------------------------- command line

def _command(args: argparse.Namespace) -> int:
    try:
        if args.golden:
            if len(args.golden) != 2 or args.impl or args.vs:
                raise ValueError("give two golden set directories, or --impl and --vs")
            a_sets = dict((p.name, (p, t)) for p, t in golden_problems(args.golden[0], args.case))
            b_sets = dict((p.name, t) for p, t in golden_problems(args.golden[1], args.case))
            shown = 0
            for name, (problem, ta) in a_sets.items():
                if name not in b_sets:
                    continue
                result = explain(problem, ta, b_sets[name], args.golden[0], args.golden[1])
                if result.step_index is not None or args.case:
                    print(result.format() + "\n")
                    shown += 1
            if not shown:
                print(f"explain: the {len(a_sets)} common float32 case(s) agree bit for bit")
            return 0
        if not (args.impl and args.vs):
            raise ValueError("give --impl and --vs (or two golden set directories)")
        result = run_pair(args.impl, args.vs, args.optimizer, args.steps, args.size,
                          args.seed, args.lr)
    except (ValueError, OSError, ImportError) as err:
        print(f"error: {err}")
        return 2
    print(result.format())
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``explain`` to ``python -m adamcore``."""
    parser = subparsers.add_parser(
        "explain", help="find where two trajectories diverge and which convention explains it")
    parser.add_argument("golden", nargs="*", metavar="DIR",
                        help="two golden set directories to compare (instead of --impl/--vs)")
    parser.add_argument("--case", action="append", help="golden sets: only this case")
    parser.add_argument("--impl", help="first implementation (e.g. torch-fused, adamcore)")
    parser.add_argument("--vs", help="second implementation (e.g. torch-foreach, deepspeed, "
                                     "optax, keras, emulate:deepspeed@8)")
    parser.add_argument("--optimizer", default="adam", help="adam, adamw, amsgrad or adagrad")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=1003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None)
    parser.set_defaults(func=_command)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return parser
