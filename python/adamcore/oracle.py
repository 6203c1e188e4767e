"""Check any optimizer implementation against adamcore's golden vectors.

A golden set (written by ``python -m adamcore golden write DIR``, see
:mod:`adamcore.golden`) holds, for every case, the initial state, the gradient of every
step, and the exact float32 bits of every state array after every step. :func:`check`
replays those gradients through an implementation and reports, per case, array and
step, the largest distance in ulps and the first element that differs.

An implementation is a *step function*::

    step_fn(case, state, grad, step, lr) -> None

which applies one step of ``case.optimizer`` (``"adam"``, ``"adamw"`` or ``"adagrad"``)
with the hyperparameters ``case.hyper`` and learning rate ``lr`` to the arrays in
``state`` (a dict: ``param``, ``exp_avg``, ``exp_avg_sq`` and, with amsgrad,
``max_exp_avg_sq``; or ``param`` and ``state_sum``), in place. ``step`` is the step
number after incrementing (1 on the first step). A step function that cannot run a case
raises :class:`Unsupported`; the case is then reported as skipped.

Distances are measured on the float32 bit patterns ordered as integers, so one ulp is
one representable float32 apart; -0 and +0 count as one ulp apart. NaN is compared by
position only: a NaN where the golden value is NaN matches whatever its sign and
payload (NaN payloads and signs are not part of adamcore's bitwise contract); a NaN on
one side only is reported as an infinite distance.

Built-in step functions: :func:`get_step_fn` with ``"adamcore"`` (the active ISA),
``"adamcore:<isa>"`` (one ISA), ``"reference"`` (the float64 reference; its state stays
in float64 and is rounded to float32 only for comparison), and, when torch is
installed, ``"torch-default"`` (the for-loop path), ``"torch-foreach"`` and
``"torch-fused"``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "Case",
    "CheckReport",
    "Mismatch",
    "Unsupported",
    "check",
    "get_step_fn",
    "implementations",
    "load",
    "state_keys",
    "ulp_distance",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

StepFn = Callable[["Case", Dict[str, np.ndarray], np.ndarray, int, float], None]


class Unsupported(Exception):
    """Raised by a step function for a case its implementation cannot express."""


def state_keys(optimizer: str, amsgrad: bool = False) -> tuple:
    """The state arrays of ``optimizer``, in the order the golden files store them."""
    if optimizer in ("adam", "adamw"):
        keys = ("param", "exp_avg", "exp_avg_sq")
        return keys + ("max_exp_avg_sq",) if amsgrad else keys
    if optimizer == "adagrad":
        return ("param", "state_sum")
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'adagrad', got {optimizer!r}")


@dataclass
class Case:
    """One golden trajectory.

    ``steps[k]`` and ``lrs[k]`` are the step number and learning rate of step k;
    ``grads[k]`` its gradient; ``expected[key][k]`` the float32 state after it and
    ``reference[key][k]`` the float64 reference's state after it (same inputs).
    """

    name: str
    optimizer: str
    hyper: Dict[str, object]
    steps: List[int]
    lrs: List[float]
    initial: Dict[str, np.ndarray]
    grads: np.ndarray
    expected: Dict[str, np.ndarray]
    reference: Dict[str, np.ndarray] = field(default_factory=dict)
    tags: List[str] = field(default_factory=list)

    @property
    def keys(self) -> tuple:
        return state_keys(self.optimizer, bool(self.hyper.get("amsgrad", False)))

    @property
    def size(self) -> int:
        return int(self.grads.shape[1])


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _ordered(bits: np.ndarray) -> np.ndarray:
    """float32 bit patterns -> integers in the order of the values (-0 just below +0)."""
    b = bits.astype(np.int64)
    negative = b >= 0x80000000
    return np.where(negative, -(b - 0x80000000) - 1, b)


def ulp_distance(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per-element distance in float32 ulps (float64 array; inf where only one is NaN)."""
    e = np.ascontiguousarray(expected, dtype=np.float32)
    a = np.ascontiguousarray(actual, dtype=np.float32)
    if e.shape != a.shape:
        raise ValueError(f"shapes differ: expected {e.shape}, actual {a.shape}")
    dist = np.abs(_ordered(_bits(e)) - _ordered(_bits(a))).astype(np.float64)
    e_nan, a_nan = np.isnan(e), np.isnan(a)
    dist[e_nan & a_nan] = 0.0
    dist[e_nan ^ a_nan] = np.inf
    return dist


@dataclass
class Mismatch:
    """Distance of one state array after one step of one case.

    ``count`` elements differ (``indices``); the first of them is ``first_index`` (-1 when
    none), with the golden value ``expected`` and the implementation's ``actual``.
    """

    case: str
    array: str
    step: int
    max_ulp: float
    count: int
    first_index: int
    expected: float
    actual: float
    indices: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64),
                                repr=False)

    def describe(self) -> str:
        e_bits = int(np.float32(self.expected).view(np.uint32))
        a_bits = int(np.float32(self.actual).view(np.uint32))
        return (f"{self.case}: {self.array} after step {self.step}: {self.count} element(s) "
                f"differ, max {self.max_ulp:g} ulp; first at index {self.first_index}: "
                f"expected {self.expected!r} (0x{e_bits:08x}), got {self.actual!r} "
                f"(0x{a_bits:08x})")


@dataclass
class CheckReport:
    """What :func:`check` found; ``rows`` has one entry per (case, array, step)."""

    implementation: str
    mode: str
    tolerance_ulp: float
    rows: List[Mismatch] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    cases_run: List[str] = field(default_factory=list)

    @property
    def max_ulp(self) -> float:
        return max((r.max_ulp for r in self.rows), default=0.0)

    @property
    def failures(self) -> List[Mismatch]:
        return [r for r in self.rows if r.max_ulp > self.tolerance_ulp]

    @property
    def passed(self) -> bool:
        return bool(self.cases_run) and not self.failures

    @property
    def first_mismatch(self) -> Optional[Mismatch]:
        """The first row (in case, step, array order) with any differing element."""
        return next((r for r in self.rows if r.count), None)

    def max_ulp_by(self, what: str = "case") -> Dict[str, float]:
        """Largest distance per ``"case"`` or per ``"array"``."""
        if what not in ("case", "array"):
            raise ValueError(f"what must be 'case' or 'array', got {what!r}")
        out: Dict[str, float] = {}
        for r in self.rows:
            key = r.case if what == "case" else r.array
            out[key] = max(out.get(key, 0.0), r.max_ulp)
        return out

    def format(self, verbose: bool = False) -> str:
        lines = [f"implementation {self.implementation} ({self.mode}): "
                 f"{len(self.cases_run)} case(s) run, {len(self.skipped)} skipped, "
                 f"max {self.max_ulp:g} ulp, tolerance {self.tolerance_ulp:g} ulp: "
                 f"{'PASS' if self.passed else 'FAIL'}"]
        width = max((len(c) for c in self.cases_run), default=4)
        for case, worst in self.max_ulp_by("case").items():
            lines.append(f"  {case:<{width}}  max {worst:g} ulp")
        for case, reason in self.skipped.items():
            lines.append(f"  {case:<{width}}  skipped: {reason}")
        shown = [r for r in self.rows if r.count] if verbose else self.failures[:10]
        for r in shown:
            lines.append("  " + r.describe())
        if not verbose and len(self.failures) > 10:
            lines.append(f"  ... {len(self.failures) - 10} more rows over tolerance")
        return "\n".join(lines)


# ---------------------------------------------------------------- reading a golden set

def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _float32(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits, dtype=np.uint32).view(np.float32)


def load(directory: str, names: Optional[Iterable[str]] = None) -> List[Case]:
    """Read the golden set in ``directory`` (optionally only the cases in ``names``)."""
    manifest_path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"no {MANIFEST} in {directory!r}: not a golden set")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{manifest_path}: format_version {version!r} is not supported "
                         f"(this adamcore reads version {FORMAT_VERSION})")
    wanted = None if names is None else set(names)
    cases = []
    for entry in manifest["cases"]:
        if wanted is not None and entry["name"] not in wanted:
            continue
        path = os.path.join(directory, entry["file"])
        if _sha256(path) != entry["sha256"]:
            raise ValueError(f"{path}: checksum does not match the manifest")
        with np.load(path) as data:
            keys = state_keys(entry["optimizer"], bool(entry["hyper"].get("amsgrad", False)))
            cases.append(Case(
                name=entry["name"], optimizer=entry["optimizer"], hyper=dict(entry["hyper"]),
                steps=[int(s) for s in entry["steps"]], lrs=[float(x) for x in entry["lrs"]],
                initial={k: _float32(data[f"initial_{k}"]) for k in keys},
                grads=_float32(data["grads"]),
                expected={k: _float32(data[f"expected_{k}"]) for k in keys},
                reference={k: np.array(data[f"reference_{k}"], dtype=np.float64)
                           for k in keys},
                tags=list(entry.get("tags", []))))
    if wanted is not None:
        missing = wanted - {c.name for c in cases}
        if missing:
            raise ValueError(f"no such case(s) in {directory!r}: {', '.join(sorted(missing))}")
    return cases


# ---------------------------------------------------------------- checking

def check(step_fn: StepFn, golden: Union[str, Sequence[Case]], *, mode: str = "trajectory",
          state_dtype=np.float32, tolerance_ulp: float = 0.0, name: str = "",
          cases: Optional[Iterable[str]] = None) -> CheckReport:
    """Replay the golden gradients through ``step_fn`` and measure every state array.

    ``golden`` is a directory (read with :func:`load`) or already loaded cases.
    ``mode="trajectory"`` lets the implementation carry its own state from step to step
    (differences compound, as in training); ``mode="per_step"`` restarts every step from
    the golden state after the previous step, so each number is one step's difference.
    ``state_dtype`` is the dtype of the arrays handed to ``step_fn`` (float64 for the
    reference); they are rounded to float32 before comparison.
    """
    if mode not in ("trajectory", "per_step"):
        raise ValueError(f"mode must be 'trajectory' or 'per_step', got {mode!r}")
    if not callable(step_fn):
        raise TypeError("step_fn must be callable as step_fn(case, state, grad, step, lr)")
    loaded = load(golden, cases) if isinstance(golden, (str, os.PathLike)) else list(golden)
    if cases is not None and not isinstance(golden, (str, os.PathLike)):
        wanted = set(cases)
        loaded = [c for c in loaded if c.name in wanted]
    dtype = np.dtype(state_dtype)
    report = CheckReport(name or getattr(step_fn, "__name__", "step_fn"), mode,
                         float(tolerance_ulp))
    for case in loaded:
        state = {k: case.initial[k].astype(dtype) for k in case.keys}
        rows: List[Mismatch] = []
        try:
            for k, (step, lr) in enumerate(zip(case.steps, case.lrs)):
                if mode == "per_step" and k > 0:
                    for key in case.keys:
                        state[key][...] = case.expected[key][k - 1]
                step_fn(case, state, case.grads[k].copy(), step, lr)
                for key in case.keys:
                    expected = case.expected[key][k]
                    with np.errstate(over="ignore"):  # float64 beyond float32 -> inf
                        actual = np.asarray(state[key]).astype(np.float32)
                    dist = ulp_distance(expected, actual)
                    bad = np.flatnonzero(dist > 0)
                    first = int(bad[0]) if bad.size else -1
                    rows.append(Mismatch(
                        case.name, key, step, float(dist.max()) if dist.size else 0.0,
                        int(bad.size), first,
                        float(expected[first]) if bad.size else 0.0,
                        float(actual[first]) if bad.size else 0.0, bad))
        except Unsupported as why:
            report.skipped[case.name] = str(why)
            continue
        report.rows.extend(rows)
        report.cases_run.append(case.name)
    return report


# ---------------------------------------------------------------- built-in step functions

def _adamcore_step_fn(isa: Optional[str]) -> StepFn:
    import adamcore

    def step_fn(case: Case, state, grad, step, lr):
        h = case.hyper
        if isa is not None:
            previous = adamcore.get_isa()
            adamcore.set_isa(isa)
        try:
            if case.optimizer == "adagrad":
                adamcore.adagrad_step(state["param"], grad, state["state_sum"], step=step,
                                      lr=lr, lr_decay=h["lr_decay"],
                                      weight_decay=h["weight_decay"], eps=h["eps"],
                                      maximize=h["maximize"])
            else:
                fn = adamcore.adamw_step if case.optimizer == "adamw" else adamcore.adam_step
                fn(state["param"], grad, state["exp_avg"], state["exp_avg_sq"], step=step,
                   lr=lr, beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                   weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                   max_exp_avg_sq=state.get("max_exp_avg_sq"), maximize=h["maximize"],
                   bias_correction=h["bias_correction"])
        finally:
            if isa is not None:
                adamcore.set_isa(previous)

    step_fn.__name__ = "adamcore" if isa is None else f"adamcore:{isa}"
    return step_fn


def _reference_step_fn(case: Case, state, grad, step, lr):
    from . import reference

    h = case.hyper
    with np.errstate(all="ignore"):  # inf/NaN inputs are part of the golden set
        if case.optimizer == "adagrad":
            reference.adagrad_step(state["param"], grad, state["state_sum"], step=step, lr=lr,
                                   lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                                   eps=h["eps"], maximize=h["maximize"])
        else:
            fn = reference.adamw_step if case.optimizer == "adamw" else reference.adam_step
            fn(state["param"], grad, state["exp_avg"], state["exp_avg_sq"], step=step, lr=lr,
               beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
               weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
               max_exp_avg_sq=state.get("max_exp_avg_sq"), maximize=h["maximize"],
               bias_correction=h["bias_correction"])


_TORCH_PATHS = {"torch-default": {"foreach": False},
                "torch-foreach": {"foreach": True},
                "torch-fused": {"fused": True}}


def _torch_step_fn(name: str) -> StepFn:
    import torch

    path = _TORCH_PATHS[name]

    def step_fn(case: Case, state, grad, step, lr):
        h = case.hyper
        # Views of the caller's arrays: torch updates them in place.
        param = torch.nn.Parameter(torch.from_numpy(state["param"]))
        param.grad = torch.from_numpy(grad)
        counter = torch.tensor(float(step - 1), dtype=torch.float32)
        if case.optimizer == "adagrad":
            opt = torch.optim.Adagrad([param], lr=lr, lr_decay=h["lr_decay"],
                                      weight_decay=h["weight_decay"], eps=h["eps"],
                                      maximize=h["maximize"], **path)
            opt.state[param] = {"step": counter, "sum": torch.from_numpy(state["state_sum"])}
        else:
            if not h["bias_correction"]:
                raise Unsupported("torch.optim.Adam always applies bias correction")
            cls = torch.optim.AdamW if case.optimizer == "adamw" else torch.optim.Adam
            opt = cls([param], lr=lr, betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                      weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                      maximize=h["maximize"], **path)
            opt.state[param] = {"step": counter,
                                "exp_avg": torch.from_numpy(state["exp_avg"]),
                                "exp_avg_sq": torch.from_numpy(state["exp_avg_sq"])}
            if h["amsgrad"]:
                opt.state[param]["max_exp_avg_sq"] = torch.from_numpy(state["max_exp_avg_sq"])
        opt.step()
        # Copy back in case a path replaced a tensor instead of updating it in place.
        state["param"][...] = param.detach().numpy()
        for key, tensor_key in (("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq"),
                                ("max_exp_avg_sq", "max_exp_avg_sq"), ("state_sum", "sum")):
            if key in state:
                state[key][...] = opt.state[param][tensor_key].numpy()

    step_fn.__name__ = name
    return step_fn


def implementations() -> List[str]:
    """Names accepted by :func:`get_step_fn` on this machine."""
    import adamcore

    names = ["adamcore"] + [f"adamcore:{isa}" for isa in adamcore.available_isas()]
    names.append("reference")
    try:
        import torch  # noqa: F401
    except ImportError:
        return names
    return names + list(_TORCH_PATHS)


def get_step_fn(name: str):
    """(step_fn, state_dtype) of the built-in implementation ``name``."""
    import adamcore

    if name == "adamcore":
        return _adamcore_step_fn(None), np.float32
    if name.startswith("adamcore:"):
        isa = name.split(":", 1)[1]
        if isa not in adamcore.available_isas():
            raise ValueError(f"ISA {isa!r} is not available here; available: "
                             f"{', '.join(adamcore.available_isas())}")
        return _adamcore_step_fn(isa), np.float32
    if name == "reference":
        return _reference_step_fn, np.float64
    if name in _TORCH_PATHS:
        try:
            return _torch_step_fn(name), np.float32
        except ImportError:
            raise ValueError(f"{name} needs torch, which is not installed") from None
    raise ValueError(f"unknown implementation {name!r}; choose from "
                     f"{', '.join(implementations())}")
