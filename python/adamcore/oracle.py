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

Distances are measured on the bit patterns ordered as integers, so one ulp is
one representable value apart; -0 and +0 count as one ulp apart. NaN is compared by
position only: a NaN where the golden value is NaN matches whatever its sign and
payload (NaN payloads and signs are not part of adamcore's bitwise contract); a NaN on
one side only is reported as an infinite distance.

Built-in step functions: :func:`get_step_fn` with ``"adamcore"`` (the active ISA),
``"adamcore:<isa>"`` (one ISA), ``"reference"`` (the float64 reference; its state stays
in float64 and is rounded to float32 only for comparison), and, when torch is
installed, ``"torch-default"`` (the for-loop path), ``"torch-foreach"`` and
``"torch-fused"``, and ``"emulation"`` (:mod:`adamcore._sr_emulation`: the documented
float32 recipe, 16-bit stores and stochastic rounding in NumPy, exact; float64 layouts
are skipped).

Layouts (format version 2). A case may record the dtype of each buffer
(``case.layout``: ``param``, ``grad``, ``state``, ``param_copy``; "float32", "float64",
"bfloat16" or "float16"), its rounding (``"nearest"`` or ``"stochastic"`` with
``case.seed``) and per-step ``grad_scale`` and ``found_inf``. The state handed to a step
function then holds arrays of those dtypes (bfloat16 is ``ml_dtypes.bfloat16``), plus
``param_copy`` when the layout has one, and the gradient has the grads' dtype. A case
with any of ``grad_scale``, ``found_inf`` or stochastic rounding calls the step function
with the keyword arguments ``grad_scale=`` (a float or None), ``found_inf=`` (a bool),
``rounding=`` and ``seed=``; a step function that accepts neither them nor ``**kwargs``
has such cases skipped. With ``grad_scale`` the gradient written back by the step
(the functional API's contract) is compared too, as the array ``grad``. Distances are
measured in ulps of each array's stored dtype (a bfloat16 ulp for a bfloat16 buffer);
results in another dtype (the float64 reference) are rounded to it to nearest first.
The report names each case's layout.
"""

from __future__ import annotations

import hashlib
import inspect
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
    "initial_state",
    "layout_name",
    "load",
    "state_keys",
    "ulp_distance",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    if optimizer == "sgd":
        return ("param", "momentum_buffer")
    if optimizer == "lion":
        return ("param", "exp_avg")
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'adagrad', got {optimizer!r}")


# ---------------------------------------------------------------- dtypes and layouts

DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
# Storage of each dtype in a golden file: its bits as an unsigned integer of its width.
_BITS = {"float32": np.uint32, "float64": np.uint64, "bfloat16": np.uint16,
         "float16": np.uint16}
_SHORT = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "fp16"}
DEFAULT_LAYOUT = {"param": "float32", "grad": "float32", "state": "float32",
                  "param_copy": None}


def dtype_of(name: str) -> np.dtype:
    """The NumPy dtype of a dtype name (bfloat16 needs the ``ml_dtypes`` package)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise Unsupported("bfloat16 arrays need the ml-dtypes package") from None
        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return np.dtype(name)


def dtype_name(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.itemsize == 2 and dtype.name == "bfloat16":
        return "bfloat16"
    if dtype.name in DTYPE_NAMES:
        return dtype.name
    raise TypeError(f"{dtype} is not one of {', '.join(DTYPE_NAMES)}")


def layout_name(layout: Optional[Dict[str, Optional[str]]]) -> str:
    """A short name of a layout: "f32", "bf16", "f32 params, bf16 grads, f32 state + bf16 copy"."""
    lay = {**DEFAULT_LAYOUT, **(layout or {})}
    p, g, s, c = (lay[k] for k in ("param", "grad", "state", "param_copy"))
    if p == g == s:
        name = _SHORT[p]
    else:
        name = f"{_SHORT[p]} params, {_SHORT[g]} grads, {_SHORT[s]} state"
    return name + (f" + {_SHORT[c]} copy" if c else "")


def to_bits(a: np.ndarray, name: str) -> np.ndarray:
    """The bits of ``a`` (an array of dtype ``name``) as unsigned integers of its width."""
    return np.ascontiguousarray(a, dtype=dtype_of(name)).view(_BITS[name])


def from_bits(bits: np.ndarray, name: str) -> np.ndarray:
    return np.ascontiguousarray(bits, dtype=_BITS[name]).view(dtype_of(name))


@dataclass
class Case:
    """One golden trajectory.

    ``steps[k]`` and ``lrs[k]`` are the step number and learning rate of step k;
    ``grads[k]`` its gradient; ``expected[key][k]`` the state after it and
    ``reference[key][r]`` the float64 reference's state after step ``reference_steps[r]``
    (an index into ``steps``; every step when ``reference_steps`` is None), same inputs.
    ``layout`` gives each buffer's dtype name; ``rounding``/``seed`` the rounding of its
    16-bit stores; ``grad_scale[k]`` and ``found_inf[k]`` step k's AMP arguments (None:
    not used); ``expected_grad[k]``, with ``grad_scale``, the gradient written back.
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
    layout: Dict[str, Optional[str]] = field(default_factory=lambda: dict(DEFAULT_LAYOUT))
    rounding: str = "nearest"
    seed: Optional[int] = None
    grad_scale: Optional[List[Optional[float]]] = None
    found_inf: Optional[List[bool]] = None
    expected_grad: Optional[np.ndarray] = None
    reference_steps: Optional[List[int]] = None
    # The arithmetic the expected bits follow (adamcore.conventions); tail_width: the
    # vector width whose scalar tail it emulates (torch-fused, deepspeed), or None.
    convention: str = "torch-fused"
    tail_width: Optional[int] = None

    def __post_init__(self):
        self.layout = {**DEFAULT_LAYOUT, **(self.layout or {})}

    @property
    def keys(self) -> tuple:
        keys = state_keys(self.optimizer, bool(self.hyper.get("amsgrad", False)))
        return keys + ("param_copy",) if self.layout.get("param_copy") else keys

    @property
    def size(self) -> int:
        return int(self.grads.shape[1])

    @property
    def layout_name(self) -> str:
        return layout_name(self.layout) + (
            f", stochastic rounding (seed {self.seed})" if self.rounding == "stochastic"
            else "")

    def dtype(self, key: str) -> str:
        """The dtype name of array ``key`` (a state key, ``"grad"``, or ``"param_copy"``)."""
        if key in ("param", "grad", "param_copy"):
            return self.layout[key]
        return self.layout["state"]

    @property
    def has_options(self) -> bool:
        """Whether steps take ``grad_scale``/``found_inf``/``rounding``/``seed``."""
        return (self.grad_scale is not None or self.found_inf is not None
                or self.rounding != "nearest")

    def step_options(self, k: int) -> Dict[str, object]:
        """The keyword arguments of step k (empty for a case without options)."""
        if not self.has_options:
            return {}
        return {"grad_scale": None if self.grad_scale is None else self.grad_scale[k],
                "found_inf": bool(self.found_inf[k]) if self.found_inf is not None else False,
                "rounding": self.rounding, "seed": int(self.seed or 0)}


def _ordered(bits: np.ndarray, width: int) -> np.ndarray:
    """Bit patterns of one width -> integers in the order of the values (-0 just below +0)."""
    sign = 1 << (width - 1)
    if width == 64:  # beyond int64 once the sign is folded in: Python integers
        return np.array([(b if b < sign else -(b - sign) - 1) for b in bits.tolist()],
                        dtype=object)
    b = bits.astype(np.int64)
    return np.where(b >= sign, -(b - sign) - 1, b)


def _as_stored(values, name: str) -> np.ndarray:
    """``values`` in the dtype ``name``: rounded to nearest when they are another dtype."""
    dtype = dtype_of(name)
    a = np.asarray(values)
    if a.dtype == dtype:
        return np.ascontiguousarray(a)
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "bfloat16" and a.dtype == np.float64:
            a = a.astype(np.float32)  # (float64 -> float32 -> bfloat16: the reference only)
        return np.ascontiguousarray(a.astype(dtype))


def ulp_distance(expected: np.ndarray, actual: np.ndarray, dtype=None) -> np.ndarray:
    """Per-element distance in ulps of ``dtype`` (a name or NumPy dtype; default float32,
    or the expected array's dtype when it is float64, bfloat16 or float16). A float64
    array of distances: 0 where both are NaN, inf where only one is."""
    if dtype is None:
        e0 = np.asarray(expected)
        dtype = e0.dtype if e0.dtype in (np.float64, np.float16) or (
            e0.dtype.itemsize == 2 and e0.dtype.name == "bfloat16") else np.float32
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    e = _as_stored(expected, name)
    a = _as_stored(actual, name)
    if e.shape != a.shape:
        raise ValueError(f"shapes differ: expected {e.shape}, actual {a.shape}")
    width = 8 * e.dtype.itemsize
    diff = _ordered(to_bits(e, name).ravel(), width) - _ordered(to_bits(a, name).ravel(), width)
    dist = np.array([abs(int(d)) for d in diff], dtype=np.float64) if width == 64 \
        else np.abs(diff).astype(np.float64)
    dist = dist.reshape(e.shape)
    e_nan = np.isnan(e.astype(np.float64))
    a_nan = np.isnan(a.astype(np.float64))
    dist[e_nan & a_nan] = 0.0
    dist[e_nan ^ a_nan] = np.inf
    return dist


@dataclass
class Mismatch:
    """Distance of one array after one step of one case, in ulps of its dtype.

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
    dtype: str = "float32"

    def describe(self) -> str:
        digits = 2 * np.dtype(_BITS[self.dtype]).itemsize
        e_bits = int(to_bits(_as_stored([self.expected], self.dtype), self.dtype)[0])
        a_bits = int(to_bits(_as_stored([self.actual], self.dtype), self.dtype)[0])
        unit = "ulp" if self.dtype == "float32" else f"{self.dtype} ulp"
        return (f"{self.case}: {self.array} after step {self.step}: {self.count} element(s) "
                f"differ, max {self.max_ulp:g} {unit}; first at index {self.first_index}: "
                f"expected {self.expected!r} (0x{e_bits:0{digits}x}), got {self.actual!r} "
                f"(0x{a_bits:0{digits}x})")


@dataclass
class CheckReport:
    """What :func:`check` found; ``rows`` has one entry per (case, array, step).
    ``layouts`` names each case's layout (see :func:`layout_name`)."""

    implementation: str
    mode: str
    tolerance_ulp: float
    rows: List[Mismatch] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    cases_run: List[str] = field(default_factory=list)
    layouts: Dict[str, str] = field(default_factory=dict)

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
        width = max((len(c) for c in list(self.cases_run) + list(self.skipped)), default=4)
        dtypes: Dict[str, set] = {}
        for r in self.rows:
            dtypes.setdefault(r.case, set()).add(r.dtype)
        for case, worst in self.max_ulp_by("case").items():
            layout = self.layouts.get(case, "f32")
            units = "/".join(sorted(dtypes.get(case, {"float32"})))
            lines.append(f"  {case:<{width}}  max {worst:g} ulp ({units})  [{layout}]")
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


def load(directory: str, names: Optional[Iterable[str]] = None) -> List[Case]:
    """Read the golden set in ``directory`` (optionally only the cases in ``names``)."""
    manifest_path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"no {MANIFEST} in {directory!r}: not a golden set")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{manifest_path}: format_version {version!r} is not supported "
                         f"(this adamcore reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    if manifest.get("cases") and not isinstance(manifest["cases"][0].get("steps"), list):
        raise ValueError(f"{manifest_path}: not an oracle golden set (this looks like the "
                         f"test suite's torch-fused set, read by tests/data/make_golden.py; "
                         f"its layout cases are in the 'layouts' directory beside it)")
    wanted = None if names is None else set(names)
    cases = []
    for entry in manifest["cases"]:
        if wanted is not None and entry["name"] not in wanted:
            continue
        path = os.path.join(directory, entry["file"])
        if _sha256(path) != entry["sha256"]:
            raise ValueError(f"{path}: checksum does not match the manifest")
        layout = {**DEFAULT_LAYOUT, **entry.get("layout", {})}
        case = Case(name=entry["name"], optimizer=entry["optimizer"],
                    hyper=dict(entry["hyper"]), steps=[int(s) for s in entry["steps"]],
                    lrs=[float(x) for x in entry["lrs"]], initial={},
                    grads=np.empty((0, 0)), expected={}, tags=list(entry.get("tags", [])),
                    layout=layout, rounding=entry.get("rounding", "nearest"),
                    seed=entry.get("seed"), grad_scale=entry.get("grad_scale"),
                    found_inf=entry.get("found_inf"),
                    reference_steps=entry.get("reference_steps"),
                    convention=entry.get("convention", "torch-fused"),
                    tail_width=entry.get("tail_width"))
        with np.load(path, allow_pickle=False) as data:
            case.grads = from_bits(data["grads"], case.dtype("grad"))
            for k in case.keys:
                case.initial[k] = from_bits(data[f"initial_{k}"], case.dtype(k))
                case.expected[k] = from_bits(data[f"expected_{k}"], case.dtype(k))
                if f"reference_{k}" in data.files:
                    case.reference[k] = np.array(data[f"reference_{k}"], dtype=np.float64)
            if "expected_grad" in data.files:
                case.expected_grad = from_bits(data["expected_grad"], case.dtype("grad"))
        cases.append(case)
    if wanted is not None:
        missing = wanted - {c.name for c in cases}
        if missing:
            raise ValueError(f"no such case(s) in {directory!r}: {', '.join(sorted(missing))}")
    return cases


# ---------------------------------------------------------------- checking

_OPTION_NAMES = ("grad_scale", "found_inf", "rounding", "seed")


def _takes_options(step_fn) -> bool:
    try:
        params = inspect.signature(step_fn).parameters.values()
    except (TypeError, ValueError):
        return True
    names = {p.name for p in params}
    return any(p.kind is p.VAR_KEYWORD for p in params) or set(_OPTION_NAMES) <= names


def initial_state(case: Case, state_dtype=None) -> Dict[str, np.ndarray]:
    """Copies of the case's initial arrays: in their layout's dtypes, or all in
    ``state_dtype`` when it is float64 (the reference's state)."""
    wide = state_dtype is not None and np.dtype(state_dtype) == np.float64
    return {k: (case.initial[k].astype(np.float64) if wide else case.initial[k].copy())
            for k in case.keys}


def check(step_fn: StepFn, golden: Union[str, Sequence[Case]], *, mode: str = "trajectory",
          state_dtype=None, tolerance_ulp: float = 0.0, name: str = "",
          cases: Optional[Iterable[str]] = None) -> CheckReport:
    """Replay the golden gradients through ``step_fn`` and measure every state array.

    ``golden`` is a directory (read with :func:`load`) or already loaded cases.
    ``mode="trajectory"`` lets the implementation carry its own state from step to step
    (differences compound, as in training); ``mode="per_step"`` restarts every step from
    the golden state after the previous step, so each number is one step's difference.
    ``state_dtype=np.float64`` hands every array (gradients included) to ``step_fn`` in
    float64 (the reference); otherwise (None, or float32 for the format-1 cases) each
    array has its layout's dtype. Results are rounded to nearest to the stored dtype
    before comparison, and distances are in ulps of that dtype.
    """
    if mode not in ("trajectory", "per_step"):
        raise ValueError(f"mode must be 'trajectory' or 'per_step', got {mode!r}")
    if not callable(step_fn):
        raise TypeError("step_fn must be callable as step_fn(case, state, grad, step, lr)")
    loaded = load(golden, cases) if isinstance(golden, (str, os.PathLike)) else list(golden)
    if cases is not None and not isinstance(golden, (str, os.PathLike)):
        wanted = set(cases)
        loaded = [c for c in loaded if c.name in wanted]
    wide = state_dtype is not None and np.dtype(state_dtype) == np.float64
    takes_options = _takes_options(step_fn)
    report = CheckReport(name or getattr(step_fn, "__name__", "step_fn"), mode,
                         float(tolerance_ulp))
    for case in loaded:
        report.layouts[case.name] = case.layout_name
        if case.has_options and not takes_options:
            report.skipped[case.name] = ("the step function takes no grad_scale/found_inf/"
                                         "rounding/seed keywords")
            continue
        rows: List[Mismatch] = []
        try:
            state = initial_state(case, state_dtype)
            for k, (step, lr) in enumerate(zip(case.steps, case.lrs)):
                if mode == "per_step" and k > 0:
                    for key in case.keys:
                        state[key][...] = case.expected[key][k - 1]
                grad = case.grads[k].astype(np.float64) if wide else case.grads[k].copy()
                step_fn(case, state, grad, step, lr, **case.step_options(k))
                compared = [(key, case.expected[key][k], state[key]) for key in case.keys]
                if case.expected_grad is not None:
                    compared.append(("grad", case.expected_grad[k], grad))
                for key, expected, got in compared:
                    dtype = case.dtype(key)
                    actual = _as_stored(got, dtype)
                    dist = ulp_distance(expected, actual, dtype)
                    bad = np.flatnonzero(dist > 0)
                    first = int(bad[0]) if bad.size else -1
                    rows.append(Mismatch(
                        case.name, key, step, float(dist.max()) if dist.size else 0.0,
                        int(bad.size), first,
                        float(expected[first]) if bad.size else 0.0,
                        float(actual[first]) if bad.size else 0.0, bad, dtype))
        except Unsupported as why:
            report.skipped[case.name] = str(why)
            continue
        report.rows.extend(rows)
        report.cases_run.append(case.name)
    return report


# ---------------------------------------------------------------- built-in step functions

def _adamcore_step_fn(isa: Optional[str]) -> StepFn:
    import adamcore

    def step_fn(case: Case, state, grad, step, lr, **options):
        h = case.hyper
        if "param_copy" in state:
            options["param_copy"] = state["param_copy"]
        if options.get("grad_scale") is None:
            options.pop("grad_scale", None)
        if isa is not None:
            previous = adamcore.get_isa()
            adamcore.set_isa(isa)
        try:
            if case.optimizer in ELEMENTWISE_OPTIMIZERS:
                _call_elementwise(adamcore, case, state, grad, step, lr, **options)
            elif case.optimizer == "adagrad":
                adamcore.adagrad_step(state["param"], grad, state["state_sum"], step=step,
                                      lr=lr, lr_decay=h["lr_decay"],
                                      weight_decay=h["weight_decay"], eps=h["eps"],
                                      maximize=h["maximize"], **options)
            else:
                fn = adamcore.adamw_step if case.optimizer == "adamw" else adamcore.adam_step
                fn(state["param"], grad, state["exp_avg"], state["exp_avg_sq"], step=step,
                   lr=lr, beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                   weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                   max_exp_avg_sq=state.get("max_exp_avg_sq"), maximize=h["maximize"],
                   bias_correction=h["bias_correction"], **options)
        finally:
            if isa is not None:
                adamcore.set_isa(previous)

    step_fn.__name__ = "adamcore" if isa is None else f"adamcore:{isa}"
    return step_fn


#: Optimizers whose golden cases the SGD/Lion writer makes (golden.build_lion_sgd_cases).
ELEMENTWISE_OPTIMIZERS = ("sgd", "lion")


def _call_elementwise(module, case: Case, state, grad, step, lr, **extra):
    """SGD or Lion through ``module``'s sgd_step/lion_step (adamcore's or the reference's).
    SGD's first step is step 1 (torch creates the momentum buffer then)."""
    h = case.hyper
    fn = getattr(module, f"{case.optimizer}_step", None)
    if fn is None:
        raise Unsupported(f"{getattr(module, '__name__', module)} has no {case.optimizer}_step")
    if case.optimizer == "sgd":
        buffer = state["momentum_buffer"] if h["momentum"] else None
        fn(state["param"], grad, buffer, lr=lr, momentum=h["momentum"], dampening=h["dampening"],
           weight_decay=h["weight_decay"], nesterov=h["nesterov"], maximize=h["maximize"],
           first_step=step == 1, **extra)
        return
    if getattr(module, "__name__", "").endswith("reference"):
        extra = {}  # the float64 reference is the paper's formula for both conventions
    else:
        extra = dict(extra, convention=h["convention"])
    fn(state["param"], grad, state["exp_avg"], lr=lr, beta1=h["beta1"], beta2=h["beta2"],
       weight_decay=h["weight_decay"], maximize=h["maximize"], **extra)


def _call(module, case: Case, state, grad, step, lr, **extra):
    h = case.hyper
    if case.optimizer in ELEMENTWISE_OPTIMIZERS:
        _call_elementwise(module, case, state, grad, step, lr, **extra)
        return
    if case.optimizer == "adagrad":
        module.adagrad_step(state["param"], grad, state["state_sum"], step=step, lr=lr,
                            lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                            eps=h["eps"], maximize=h["maximize"], **extra)
    else:
        fn = module.adamw_step if case.optimizer == "adamw" else module.adam_step
        fn(state["param"], grad, state["exp_avg"], state["exp_avg_sq"], step=step, lr=lr,
           beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
           weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
           max_exp_avg_sq=state.get("max_exp_avg_sq"), maximize=h["maximize"],
           bias_correction=h["bias_correction"], **extra)


def _reference_step_fn(case: Case, state, grad, step, lr, **options):
    """The float64 reference; with a layout other than all float32, each 16-bit buffer
    is rounded once per step to its dtype (see :mod:`adamcore.reference`)."""
    from . import reference

    extra = dict(options)
    if case.layout != DEFAULT_LAYOUT:
        extra["layout"] = dict(case.layout)
        if "param_copy" in state:
            extra["param_copy"] = state["param_copy"]
    with np.errstate(all="ignore"):  # inf/NaN inputs are part of the golden set
        _call(reference, case, state, grad, step, lr, **extra)


def _emulation_step_fn(case: Case, state, grad, step, lr, **options):
    """The NumPy emulation of the documented float32 recipe (exact; no float64)."""
    from . import _sr_emulation

    if "float64" in case.layout.values():
        raise Unsupported("the NumPy emulation covers float32 arithmetic (no float64 layout)")
    extra = dict(options)
    if "param_copy" in state:
        extra["param_copy"] = state["param_copy"]
    with np.errstate(all="ignore"):
        _call(_sr_emulation, case, state, grad, step, lr, **extra)


_emulation_step_fn.__name__ = "emulation"


_TORCH_PATHS = {"torch-default": {"foreach": False},
                "torch-foreach": {"foreach": True},
                "torch-fused": {"fused": True}}


def _torch_step_fn(name: str) -> StepFn:
    import torch

    path = _TORCH_PATHS[name]
    torch_dtypes = {"float32": torch.float32, "float64": torch.float64,
                    "bfloat16": torch.bfloat16, "float16": torch.float16}

    def tensor(a: np.ndarray):
        """A torch view of a NumPy array (bfloat16 through its uint16 bits)."""
        if dtype_name(a.dtype) == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    def step_fn(case: Case, state, grad, step, lr):
        h = case.hyper
        lay = case.layout
        if not (lay["param"] == lay["grad"] == lay["state"]) or lay["param_copy"]:
            raise Unsupported(f"torch.optim has no {layout_name(lay)} layout")
        # Views of the caller's arrays: torch updates them in place.
        param = torch.nn.Parameter(tensor(state["param"]))
        param.grad = tensor(grad)
        counter = torch.tensor(float(step - 1), dtype=torch.float32)
        if case.optimizer == "lion":
            raise Unsupported("torch.optim has no Lion")
        if case.optimizer == "sgd":
            opt = torch.optim.SGD([param], lr=lr, momentum=h["momentum"],
                                  dampening=h["dampening"], weight_decay=h["weight_decay"],
                                  nesterov=h["nesterov"], maximize=h["maximize"], **path)
            if h["momentum"] and step > 1:  # at step 1 torch creates the buffer itself
                opt.state[param] = {"momentum_buffer": tensor(state["momentum_buffer"])}
            opt.step()
            tensor(state["param"]).copy_(param.detach())
            if h["momentum"]:
                tensor(state["momentum_buffer"]).copy_(opt.state[param]["momentum_buffer"])
            return
        if case.optimizer == "adagrad":
            opt = torch.optim.Adagrad([param], lr=lr, lr_decay=h["lr_decay"],
                                      weight_decay=h["weight_decay"], eps=h["eps"],
                                      maximize=h["maximize"], **path)
            opt.state[param] = {"step": counter, "sum": tensor(state["state_sum"])}
        else:
            if not h["bias_correction"]:
                raise Unsupported("torch.optim.Adam always applies bias correction")
            cls = torch.optim.AdamW if case.optimizer == "adamw" else torch.optim.Adam
            opt = cls([param], lr=lr, betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                      weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                      maximize=h["maximize"], **path)
            opt.state[param] = {"step": counter,
                                "exp_avg": tensor(state["exp_avg"]),
                                "exp_avg_sq": tensor(state["exp_avg_sq"])}
            if h["amsgrad"]:
                opt.state[param]["max_exp_avg_sq"] = tensor(state["max_exp_avg_sq"])
        opt.step()
        # Copy back in case a path replaced a tensor instead of updating it in place.
        tensor(state["param"]).copy_(param.detach().to(torch_dtypes[lay["param"]]))
        for key, tensor_key in (("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq"),
                                ("max_exp_avg_sq", "max_exp_avg_sq"), ("state_sum", "sum")):
            if key in state:
                tensor(state[key]).copy_(opt.state[param][tensor_key])

    step_fn.__name__ = name
    return step_fn


# Real peers run through adamcore._peers, each checked against its own convention's set;
# "emulate:<convention>[@W]" runs adamcore.conventions' emulation.
_PEER_NAMES = ("optax", "keras", "deepspeed")


def implementations() -> List[str]:
    """Names accepted by :func:`get_step_fn` on this machine that follow adamcore's
    torch-fused convention (the peers in _PEER_NAMES and "emulate:<convention>" are
    accepted too, and are checked against sets of their own convention)."""
    import adamcore

    names = ["adamcore"] + [f"adamcore:{isa}" for isa in adamcore.available_isas()]
    names += ["reference", "emulation"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return names
    return names + list(_TORCH_PATHS)


def get_step_fn(name: str):
    """(step_fn, state_dtype) of the built-in implementation ``name``; ``state_dtype`` is
    None (each array in its layout's dtype) or float64 (the reference)."""
    import adamcore

    if name == "adamcore":
        return _adamcore_step_fn(None), None
    if name.startswith("adamcore:"):
        isa = name.split(":", 1)[1]
        if isa not in adamcore.available_isas():
            raise ValueError(f"ISA {isa!r} is not available here; available: "
                             f"{', '.join(adamcore.available_isas())}")
        return _adamcore_step_fn(isa), None
    if name == "reference":
        return _reference_step_fn, np.float64
    if name == "emulation":
        return _emulation_step_fn, None
    if name in _TORCH_PATHS:
        try:
            return _torch_step_fn(name), None
        except ImportError:
            raise ValueError(f"{name} needs torch, which is not installed") from None
    if name in _PEER_NAMES or name.startswith("emulate:"):
        from . import _peers
        return _peers.oracle_step_fn(name), None
    raise ValueError(f"unknown implementation {name!r}; choose from "
                     f"{', '.join(implementations() + list(_PEER_NAMES))} or "
                     f"emulate:<convention>")
