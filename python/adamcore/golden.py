"""Golden vectors: exact float32 trajectories of every optimizer and option combination.

``python -m adamcore golden write DIR`` writes one ``.npz`` per case plus
``manifest.json`` (``format_version``, the generator, and per case its optimizer,
hyperparameters, step numbers, learning rates, file and SHA-256). Every float32 array
is stored as its exact bits (``uint32``): the initial state, the gradient of every step
and every state array after every step; beside them, the float64 reference's state after
every step from the same inputs (``float64``). ``python -m adamcore golden check DIR
--impl NAME`` replays a set through an implementation (:mod:`adamcore.oracle`).

The cases cover Adam, AdamW, AMSGrad (both with L2 and decoupled decay), maximize,
no bias correction, both branches of the momentum update (beta1 = 0.9 and 0.3),
AdaGrad with lr_decay and weight decay; lengths that are and are not multiples of 16
(1, 15, 16, 17, 33, 67); later step numbers; learning rates that change every step;
and gradients and states with subnormals, huge (|g|^2 overflows) and tiny (|g|^2
underflows) magnitudes, zeros (both signs), NaN and +/-Inf.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from typing import Dict, List, Sequence

import numpy as np

import adamcore

from . import oracle
from .oracle import FORMAT_VERSION, MANIFEST, Case, state_keys

__all__ = ["add_parser", "build_cases", "write"]

_ADAM_BASE = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
              "amsgrad": False, "maximize": False, "bias_correction": True}
_ADAGRAD_BASE = {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10,
                 "maximize": False}

# (name, optimizer, hyperparameters over the base)
_CONFIGS = (
    ("adam", "adam", {}),
    ("adam_amsgrad", "adam", {"amsgrad": True}),
    ("adam_l2", "adam", {"weight_decay": 0.1}),
    ("adam_amsgrad_l2_maximize", "adam", {"amsgrad": True, "weight_decay": 0.05,
                                          "maximize": True}),
    ("adam_lerp_high", "adam", {"beta1": 0.3, "beta2": 0.5, "eps": 1e-6}),
    ("adam_no_bias_correction", "adam", {"bias_correction": False, "lr": 1e-2}),
    ("adamw", "adamw", {"weight_decay": 1e-2}),
    ("adamw_amsgrad_maximize", "adamw", {"weight_decay": 0.1, "amsgrad": True,
                                         "maximize": True, "lr": 3e-2}),
    ("adagrad", "adagrad", {}),
    ("adagrad_decay_wd", "adagrad", {"lr_decay": 0.05, "weight_decay": 0.1}),
    ("adagrad_maximize", "adagrad", {"maximize": True, "eps": 1e-6}),
)

# Input kinds: (suffix, length, number of steps, first step number)
_KINDS = (
    ("normal", 67, 8, 1),
    ("special", 45, 6, 1),
    ("late", 33, 4, 1000),
)
_TAIL_LENGTHS = (1, 15, 16, 17)


def _special_values() -> np.ndarray:
    """The awkward float32 values placed into 'special' gradients and states."""
    f = np.float32
    tiny = np.finfo(np.float32).tiny
    return np.array([
        0.0, -0.0, f(1e-45), f(-1e-45), tiny / 2, -tiny / 3, tiny, f(3e-39),  # subnormals
        f(1e-20), f(-3e-22), f(1e-30),                                            # g^2 underflows
        f(2e19), f(-5e19), f(3e38), f(-np.finfo(np.float32).max), f(1e25),        # g^2 overflows
        np.nan, -np.nan, np.inf, -np.inf,
    ], dtype=np.float32)


def _initial_state(optimizer: str, hyper: Dict[str, object], n: int, kind: str,
                   rng: np.random.Generator) -> Dict[str, np.ndarray]:
    keys = state_keys(optimizer, bool(hyper.get("amsgrad", False)))
    state = {k: np.zeros(n, dtype=np.float32) for k in keys}
    state["param"] = rng.standard_normal(n).astype(np.float32)
    if kind in ("late", "special"):
        # A state as it looks mid-training (and, for 'special', with awkward entries).
        if "exp_avg" in state:
            state["exp_avg"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
            state["exp_avg_sq"] = (0.01 * rng.random(n) ** 2).astype(np.float32)
            if "max_exp_avg_sq" in state:
                state["max_exp_avg_sq"] = (state["exp_avg_sq"]
                                           * rng.uniform(1.0, 2.0, n)).astype(np.float32)
        else:
            state["state_sum"] = rng.random(n).astype(np.float32)
    if kind == "special":
        special = _special_values()
        every_other = special[::2]
        state["param"][: every_other.size] = every_other
        if "exp_avg_sq" in state:
            state["exp_avg_sq"][-3:] = [np.float32(1e-45), np.float32(0.0), np.float32(3e38)]
    return state


def _gradients(n: int, steps: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    scale = np.float32(10.0) ** rng.integers(-3, 2, size=(steps, n)).astype(np.float32)
    grads = (rng.standard_normal((steps, n)) * scale).astype(np.float32)
    if kind == "special":
        special = _special_values()
        for k in range(steps):
            # Rotate the awkward values through the positions (body and tail) step by step.
            where = (np.arange(special.size) * 2 + k) % n
            grads[k, where] = special
        grads[steps // 2, :] = 0.0  # one step with an all-zero gradient
    return grads


def _lrs(base: float, steps: int, kind: str) -> List[float]:
    if kind == "normal":
        # A schedule: every step a different learning rate.
        return [float(base * (1.0 + 0.25 * np.cos(k))) for k in range(steps)]
    return [float(base)] * steps


def build_cases(seed: int = 2018) -> List[Case]:
    """The golden cases, with inputs drawn from ``seed`` (expected arrays left empty)."""
    rng = np.random.default_rng(seed)
    plan = []
    for name, optimizer, overrides in _CONFIGS:
        base = _ADAGRAD_BASE if optimizer == "adagrad" else _ADAM_BASE
        hyper = {**base, **overrides}
        for kind, n, steps, first in _KINDS:
            plan.append((f"{name}-{kind}", optimizer, hyper, kind, n, steps, first))
    for n in _TAIL_LENGTHS:
        plan.append((f"adam_amsgrad-len{n}", "adam", {**_ADAM_BASE, "amsgrad": True},
                     "normal", n, 5, 1))
        plan.append((f"adagrad-len{n}", "adagrad", dict(_ADAGRAD_BASE), "normal", n, 5, 1))
    cases = []
    for name, optimizer, hyper, kind, n, steps, first in plan:
        cases.append(Case(
            name=name, optimizer=optimizer, hyper=dict(hyper),
            steps=list(range(first, first + steps)),
            lrs=_lrs(float(hyper["lr"]), steps, kind),
            initial=_initial_state(optimizer, hyper, n, kind, rng),
            grads=_gradients(n, steps, kind, rng), expected={}, reference={},
            tags=[kind] + ([] if n % 16 else ["multiple_of_16"])))
    return cases


def _trajectory(case: Case, step_fn, dtype) -> Dict[str, np.ndarray]:
    state = {k: case.initial[k].astype(dtype) for k in case.keys}
    out = {k: np.empty((len(case.steps), case.size), dtype=dtype) for k in case.keys}
    for k, (step, lr) in enumerate(zip(case.steps, case.lrs)):
        step_fn(case, state, case.grads[k].copy(), step, lr)
        for key in case.keys:
            out[key][k] = state[key]
    return out


def _fill(case: Case) -> None:
    """Compute the expected bits on every ISA (they must agree) and the float64 reference."""
    results = {}
    for isa in adamcore.available_isas():
        step_fn, _ = oracle.get_step_fn(f"adamcore:{isa}")
        results[isa] = _trajectory(case, step_fn, np.float32)
    first_isa, expected = next(iter(results.items()))
    for isa, got in results.items():
        for key in case.keys:
            if oracle.ulp_distance(expected[key], got[key]).max() != 0:
                raise RuntimeError(f"{case.name}: {key} differs between ISA {first_isa} and "
                                   f"{isa}; refusing to write golden vectors")
    case.expected = expected
    ref_fn, ref_dtype = oracle.get_step_fn("reference")
    case.reference = _trajectory(case, ref_fn, ref_dtype)


def write(directory: str, *, seed: int = 2018, force: bool = False) -> List[str]:
    """Write the golden set into ``directory``; returns the paths written."""
    if os.path.exists(os.path.join(directory, MANIFEST)) and not force:
        raise FileExistsError(f"{directory!r} already holds a golden set; pass force=True "
                              "(--force) to overwrite it")
    os.makedirs(directory, exist_ok=True)
    cases = build_cases(seed)
    entries, paths = [], []
    for case in cases:
        _fill(case)
        arrays = {"grads": case.grads.view(np.uint32)}
        for key in case.keys:
            arrays[f"initial_{key}"] = case.initial[key].view(np.uint32)
            arrays[f"expected_{key}"] = case.expected[key].view(np.uint32)
            arrays[f"reference_{key}"] = case.reference[key]
        file_name = f"{case.name}.npz"
        path = os.path.join(directory, file_name)
        np.savez_compressed(path, **arrays)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        entries.append({"name": case.name, "file": file_name, "sha256": digest,
                        "optimizer": case.optimizer, "hyper": case.hyper,
                        "steps": case.steps, "lrs": case.lrs, "size": case.size,
                        "arrays": list(case.keys), "tags": case.tags})
        paths.append(path)
    manifest = {
        "format_version": FORMAT_VERSION,
        "description": "adamcore golden vectors: float32 state after every step, stored as "
                       "uint32 bits; float64 reference beside them",
        "generator": {"adamcore": adamcore.__version__, "isas": adamcore.available_isas(),
                      "numpy": np.__version__, "python": platform.python_version(),
                      "seed": seed},
        "arrays": {
            "grads": "uint32 bits of float32, shape (steps, size)",
            "initial_<array>": "uint32 bits of float32, shape (size,)",
            "expected_<array>": "uint32 bits of float32 after each step, shape (steps, size)",
            "reference_<array>": "float64 reference after each step, shape (steps, size)",
        },
        "nan_policy": "NaN is compared by position; NaN sign and payload are not part of "
                      "the bitwise contract",
        "cases": entries,
    }
    manifest_path = os.path.join(directory, MANIFEST)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    paths.append(manifest_path)
    return paths


def _write_command(args: argparse.Namespace) -> int:
    try:
        paths = write(args.directory, seed=args.seed, force=args.force)
    except FileExistsError as err:
        print(f"error: {err}")
        return 2
    size = sum(os.path.getsize(p) for p in paths)
    print(f"wrote {len(paths) - 1} cases and {MANIFEST} to {args.directory} "
          f"({size / 1024:.0f} KiB)")
    return 0


def _check_command(args: argparse.Namespace) -> int:
    names: Sequence[str] = oracle.implementations() if args.impl == "all" else [args.impl]
    status = 0
    for name in names:
        try:
            step_fn, dtype = oracle.get_step_fn(name)
        except ValueError as err:
            print(f"error: {err}")
            return 2
        report = oracle.check(step_fn, args.directory, mode=args.mode, state_dtype=dtype,
                              tolerance_ulp=args.tolerance, name=name,
                              cases=args.case or None)
        print(report.format(verbose=args.verbose))
        if not report.passed:
            status = 1
    return status


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``golden`` command (``write`` and ``check``) to ``python -m adamcore``."""
    parser = subparsers.add_parser("golden", help="write or check golden vectors")
    sub = parser.add_subparsers(dest="golden_command", required=True)
    w = sub.add_parser("write", help="write the golden set into DIR")
    w.add_argument("directory", metavar="DIR")
    w.add_argument("--seed", type=int, default=2018, help="seed of the inputs")
    w.add_argument("--force", action="store_true", help="overwrite an existing set")
    w.set_defaults(func=_write_command)
    c = sub.add_parser("check", help="check an implementation against the set in DIR")
    c.add_argument("directory", metavar="DIR")
    c.add_argument("--impl", default="adamcore",
                   help="adamcore, adamcore:<isa>, reference, torch-default, torch-foreach, "
                        "torch-fused, or all")
    c.add_argument("--mode", choices=("trajectory", "per_step"), default="trajectory",
                   help="carry the implementation's own state, or restart each step from "
                        "the golden state")
    c.add_argument("--tolerance", type=float, default=0.0, help="ulps allowed (default 0)")
    c.add_argument("--case", action="append", help="only this case (repeatable)")
    c.add_argument("--verbose", action="store_true", help="list every differing array/step")
    c.set_defaults(func=_check_command)
    return parser
