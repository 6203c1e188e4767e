"""Golden vectors: exact trajectories of every optimizer, option combination and layout.

``python -m adamcore golden write DIR`` writes one ``.npz`` per case plus
``manifest.json``; ``python -m adamcore golden check DIR --impl NAME`` replays a set
through an implementation (:mod:`adamcore.oracle`) and reports ulps per case, array and
step, in each array's own dtype.

Format (``format_version`` 2; version 1 is its all-float32 subset and is still read).
The manifest holds the generator and, per case: ``name``, ``file`` and its ``sha256``,
``optimizer`` ("adam", "adamw", "adagrad"), ``hyper`` (the functional API's keyword
arguments), ``steps`` (the step number passed to each step: after a ``found_inf`` step it
repeats, as torch's optimizers keep their count), ``lrs`` (per step), ``size``,
``arrays`` (the state arrays), ``tags``, and:

- ``layout``: the dtype of ``param``, ``grad``, ``state`` (every optimizer state array)
  and ``param_copy`` (null when the layout has none), each "float32", "float64",
  "bfloat16" or "float16" (docs/numerics.md, "Buffer dtypes");
- ``rounding``: "nearest" or "stochastic", with ``seed`` for the latter (the tensor is
  alone in its call: stream 0);
- optionally ``grad_scale`` (per step, a float or null) and ``found_inf`` (per step, a
  bool), the AMP arguments; and ``reference_steps`` (the step indices the reference
  arrays are stored for; all steps when absent).

The ``.npz`` holds every value as the bits of its dtype, so that any implementation can
read them without a bfloat16 type: float32 as ``uint32``, float64 as ``uint64``,
bfloat16 as ``uint16`` (the top half of a float32) and float16 as ``uint16`` (IEEE
binary16). Arrays: ``grads`` (steps, size) in the grads' dtype; ``initial_<key>`` (size,)
and ``expected_<key>`` (steps, size) for every state array and ``param_copy``;
``expected_grad`` (steps, size), with ``grad_scale``, the gradients as each step writes
them back; ``reference_<key>`` (float64) the float64 reference's state
(:mod:`adamcore.reference`, 16-bit buffers rounded once per step to their dtype).
NaN is compared by position: its sign and payload are not part of the bitwise contract.

The float32 cases cover Adam, AdamW, AMSGrad (both with L2 and decoupled decay),
maximize, no bias correction, both branches of the momentum update (beta1 = 0.9 and
0.3), AdaGrad with lr_decay and weight decay; lengths that are and are not multiples of
16 (1, 15, 16, 17, 33, 67); later step numbers; learning rates that change every step;
and gradients and states with subnormals, huge (|g|^2 overflows) and tiny (|g|^2
underflows) magnitudes, zeros (both signs), NaN and +/-Inf. With ml_dtypes installed,
the layout cases add bfloat16, float16 and float64 buffers, float32 master weights with
16-bit grads and a param copy, 16-bit params with float32 state and float32 params with
bfloat16 state, an AMP case (grad_scale and a found_inf step) and stochastic rounding.
The expected bits are adamcore's, identical on every ISA of the writing machine (or
nothing is written); tests/data/make_golden.py writes a committed set from peers instead.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import zipfile
from typing import Dict, List, Sequence

import numpy as np

import adamcore

from . import oracle
from .oracle import FORMAT_VERSION, MANIFEST, Case, state_keys

__all__ = ["add_parser", "build_cases", "build_layout_cases", "build_lion_sgd_cases",
           "case_arrays", "npz_bytes", "trajectory", "write", "write_lion_sgd", "write_set"]

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


def _layout_specials(n: int) -> np.ndarray:
    """Awkward values for a 16-bit or float64 layout's gradients (finite, +-0, subnormals
    of the dtype, NaN and +-Inf)."""
    f16_sub = 2.0 ** -20
    values = [0.0, -0.0, f16_sub, -f16_sub, 1e-30, -1e-38, 3e4, -6e4, np.nan, np.inf, -np.inf]
    return np.resize(np.array(values, dtype=np.float64), n)


# Layout cases of ``golden write``: (name, optimizer, hyper overrides, layout, options)
_LAYOUT_CONFIGS = (
    ("bf16-adam", "adam", {}, ("bfloat16",) * 3 + (None,), {}),
    ("bf16-adamw_amsgrad", "adamw", {"amsgrad": True, "weight_decay": 0.1},
     ("bfloat16",) * 3 + (None,), {}),
    ("fp16-adagrad", "adagrad", {"lr_decay": 0.01}, ("float16",) * 3 + (None,), {}),
    ("fp16-adam_specials", "adam", {"weight_decay": 0.01}, ("float16",) * 3 + (None,),
     {"specials": True}),
    ("f64-adamw_amsgrad", "adamw", {"amsgrad": True, "weight_decay": 0.1},
     ("float64",) * 3 + (None,), {}),
    ("master-bf16_grads_copy", "adamw", {"weight_decay": 0.1},
     ("float32", "bfloat16", "float32", "bfloat16"), {}),
    ("bf16_params-f32_state", "adam", {"amsgrad": True},
     ("bfloat16", "bfloat16", "float32", None), {}),
    ("f32_params-bf16_state", "adamw", {"amsgrad": True},
     ("float32", "float32", "bfloat16", "bfloat16"), {}),
    ("amp-fp16_grads", "adam", {}, ("float32", "float16", "float32", "float16"),
     {"grad_scale": 1024.0, "inf_step": 3}),
    ("sr-bf16-adamw_amsgrad", "adamw", {"amsgrad": True},
     ("bfloat16",) * 3 + (None,), {"seed": 12345}),
    ("sr-fp16-adagrad", "adagrad", {}, ("float16",) * 3 + (None,), {"seed": 7}),
)


def _cast(values: np.ndarray, name: str) -> np.ndarray:
    """float32/float64 values in dtype ``name``, rounded to nearest (16-bit: through float32)."""
    dtype = oracle.dtype_of(name)
    with np.errstate(over="ignore", invalid="ignore"):
        if name in ("bfloat16", "float16"):
            values = np.asarray(values).astype(np.float32)
        return np.ascontiguousarray(np.asarray(values).astype(dtype))


def build_layout_cases(seed: int = 2018, *, n: int = 37, steps: int = 6) -> List[Case]:
    """Cases in the other layouts (docs/numerics.md, "Buffer dtypes"), AMP and stochastic
    rounding, inputs drawn from ``seed`` (expected arrays left empty). Needs ml_dtypes."""
    oracle.dtype_of("bfloat16")  # raises Unsupported without ml_dtypes
    rng = np.random.default_rng(seed + 1)
    cases = []
    for name, optimizer, overrides, (p, g, s, c), opts in _LAYOUT_CONFIGS:
        base = _ADAGRAD_BASE if optimizer == "adagrad" else _ADAM_BASE
        hyper = {**base, **overrides}
        layout = {"param": p, "grad": g, "state": s, "param_copy": c}
        case = Case(name=name, optimizer=optimizer, hyper=hyper,
                    steps=list(range(1, steps + 1)), lrs=_lrs(float(hyper["lr"]), steps,
                                                              "normal"),
                    initial={}, grads=np.empty((0, 0)), expected={}, layout=layout,
                    tags=["layout"] + [k for k in ("specials",) if opts.get(k)])
        state = _initial_state(optimizer, hyper, n, "late", rng)
        for key in state:
            case.initial[key] = _cast(state[key], case.dtype(key))
        if c:
            case.initial["param_copy"] = _cast(state["param"], c)
        grads = (rng.standard_normal((steps, n)) * 10.0 ** rng.integers(-3, 1, (steps, n)))
        if opts.get("specials"):
            for k in range(steps):
                grads[k] = np.roll(np.where(np.arange(n) < 11, _layout_specials(n),
                                            grads[k]), 3 * k)
        if "grad_scale" in opts:
            scale = float(opts["grad_scale"])
            scales, found, numbers, t = [], [], [], 1
            for k in range(steps):
                grads[k] *= scale
                inf = k == opts["inf_step"]
                if inf:
                    grads[k, k] = np.inf
                scales.append(scale)
                found.append(inf)
                numbers.append(t)
                if inf:
                    scale /= 2.0  # as GradScaler backs off; the step count stays
                else:
                    t += 1
            case.grad_scale, case.found_inf, case.steps = scales, found, numbers
        if "seed" in opts:
            case.rounding, case.seed = "stochastic", int(opts["seed"])
        case.grads = _cast(grads, g)
        cases.append(case)
    return cases


def trajectory(case: Case, step_fn, state_dtype=None) -> Dict[str, np.ndarray]:
    """Every array of ``case`` after every step of ``step_fn`` ({key: (steps, size)});
    with ``grad_scale``, ``"grad"`` holds the gradients as written back."""
    wide = state_dtype is not None and np.dtype(state_dtype) == np.float64
    state = oracle.initial_state(case, state_dtype)
    out = {k: np.empty((len(case.steps), case.size), dtype=state[k].dtype) for k in case.keys}
    if case.grad_scale is not None:
        out["grad"] = np.empty((len(case.steps), case.size),
                               dtype=np.float64 if wide else case.grads.dtype)
    for k, (step, lr) in enumerate(zip(case.steps, case.lrs)):
        grad = case.grads[k].astype(np.float64) if wide else case.grads[k].copy()
        step_fn(case, state, grad, step, lr, **case.step_options(k))
        for key in case.keys:
            out[key][k] = state[key]
        if "grad" in out:
            out["grad"][k] = grad
    return out


def _fill(case: Case) -> None:
    """Compute the expected bits on every ISA (they must agree) and the float64 reference."""
    results = {}
    for isa in adamcore.available_isas():
        step_fn, _ = oracle.get_step_fn(f"adamcore:{isa}")
        results[isa] = trajectory(case, step_fn)
    first_isa, expected = next(iter(results.items()))
    for isa, got in results.items():
        for key in expected:
            dist = oracle.ulp_distance(expected[key], got[key], case.dtype(key))
            if dist.max(initial=0) != 0:
                raise RuntimeError(f"{case.name}: {key} differs between ISA {first_isa} and "
                                   f"{isa}; refusing to write golden vectors")
    case.expected_grad = expected.pop("grad", None)
    case.expected = expected
    ref_fn, ref_dtype = oracle.get_step_fn("reference")
    reference = trajectory(case, ref_fn, ref_dtype)
    reference.pop("grad", None)
    if case.reference_steps is not None:
        reference = {k: v[case.reference_steps] for k, v in reference.items()}
    case.reference = reference


def case_arrays(case: Case) -> Dict[str, np.ndarray]:
    """The arrays of a case's ``.npz`` (format 2): every value of a buffer stored as the
    bits of its dtype (uint32 float32, uint16 bfloat16/float16, uint64 float64); the
    reference in float64."""
    arrays = {"grads": oracle.to_bits(case.grads, case.dtype("grad"))}
    for key in case.keys:
        arrays[f"initial_{key}"] = oracle.to_bits(case.initial[key], case.dtype(key))
        arrays[f"expected_{key}"] = oracle.to_bits(case.expected[key], case.dtype(key))
        if key in case.reference:
            arrays[f"reference_{key}"] = np.asarray(case.reference[key], dtype=np.float64)
    if case.expected_grad is not None:
        arrays["expected_grad"] = oracle.to_bits(case.expected_grad, case.dtype("grad"))
    return arrays


def npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    """A NumPy-readable ``.npz`` whose bytes depend only on the arrays (sorted members,
    fixed timestamps), so a regenerated set has the same hashes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def manifest_entry(case: Case, file_name: str, digest: str) -> Dict[str, object]:
    entry = {"name": case.name, "file": file_name, "sha256": digest,
             "optimizer": case.optimizer, "hyper": case.hyper, "steps": case.steps,
             "lrs": case.lrs, "size": case.size, "arrays": list(case.keys),
             "tags": case.tags, "layout": dict(case.layout), "rounding": case.rounding}
    if case.seed is not None:
        entry["seed"] = case.seed
    if case.grad_scale is not None:
        entry["grad_scale"] = [None if s is None else float(s) for s in case.grad_scale]
    if case.found_inf is not None:
        entry["found_inf"] = [bool(f) for f in case.found_inf]
    if case.reference_steps is not None:
        entry["reference_steps"] = list(case.reference_steps)
    # Written when not the default ("torch-fused" without a tail), so that existing sets
    # regenerate byte for byte; readers take an absent field as "torch-fused".
    if case.convention != "torch-fused" or case.tail_width is not None:
        entry["convention"] = case.convention
    if case.tail_width is not None:
        entry["tail_width"] = int(case.tail_width)
    return entry


ARRAYS_DOC = {
    "grads": "bits of the grads' dtype, shape (steps, size)",
    "initial_<array>": "bits of the array's dtype, shape (size,)",
    "expected_<array>": "bits of the array's dtype after each step, shape (steps, size)",
    "expected_grad": "with grad_scale: bits of the gradients as written back by each "
                     "step, shape (steps, size)",
    "reference_<array>": "float64 reference after each step (or after the steps listed "
                         "in reference_steps), shape (steps or len(reference_steps), size)",
}
BITS_DOC = {"float32": "uint32", "float64": "uint64", "bfloat16": "uint16 (the top half "
            "of a float32)", "float16": "uint16 (IEEE binary16)"}


def write_set(directory: str, cases: Sequence[Case], *, description: str,
              generator: Dict[str, object], force: bool = False) -> List[str]:
    """Write filled ``cases`` and their manifest (format 2) into ``directory``."""
    if os.path.exists(os.path.join(directory, MANIFEST)) and not force:
        raise FileExistsError(f"{directory!r} already holds a golden set; pass force=True "
                              "(--force) to overwrite it")
    os.makedirs(directory, exist_ok=True)
    entries, paths = [], []
    for case in cases:
        data = npz_bytes(case_arrays(case))
        file_name = f"{case.name}.npz"
        path = os.path.join(directory, file_name)
        with open(path, "wb") as f:
            f.write(data)
        entries.append(manifest_entry(case, file_name, hashlib.sha256(data).hexdigest()))
        paths.append(path)
    manifest = {
        "format_version": FORMAT_VERSION,
        "description": description,
        "generator": generator,
        "arrays": ARRAYS_DOC,
        "bits": BITS_DOC,
        "layout": "per case: the dtype of param, grad, state (every optimizer state array) "
                  "and param_copy (null: none); format 1 cases are all float32",
        "rounding": "per case: nearest, or stochastic with seed (docs/numerics.md); "
                    "grad_scale and found_inf, when present, per step",
        "nan_policy": "NaN is compared by position; NaN sign and payload are not part of "
                      "the bitwise contract",
        "cases": entries,
    }
    manifest_path = os.path.join(directory, MANIFEST)
    with open(manifest_path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    paths.append(manifest_path)
    return paths


def write(directory: str, *, seed: int = 2018, force: bool = False) -> List[str]:
    """Write the golden set into ``directory``; returns the paths written."""
    if os.path.exists(os.path.join(directory, MANIFEST)) and not force:
        raise FileExistsError(f"{directory!r} already holds a golden set; pass force=True "
                              "(--force) to overwrite it")
    cases = build_cases(seed)
    try:
        cases += build_layout_cases(seed)
    except oracle.Unsupported:  # no ml_dtypes: the float32 cases only
        pass
    for case in cases:
        _fill(case)
    generator = {"adamcore": adamcore.__version__, "isas": adamcore.available_isas(),
                 "numpy": np.__version__, "python": platform.python_version(), "seed": seed}
    return write_set(directory, cases, force=True, generator=generator,
                     description="adamcore golden vectors: every buffer's state after every "
                                 "step, stored as the bits of its dtype; float64 reference "
                                 "beside them")


# ---------------------------------------------------------------- SGD and Lion
_SGD_BASE = {"lr": 1e-2, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
             "nesterov": False, "maximize": False}
_LION_BASE = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0, "maximize": False,
              "convention": "paper"}
_LION_SGD_CONFIGS = (
    ("sgd", "sgd", {}),
    ("sgd_wd_maximize", "sgd", {"weight_decay": 0.1, "maximize": True}),
    ("sgd_momentum", "sgd", {"momentum": 0.9}),
    ("sgd_momentum_dampening_wd", "sgd", {"momentum": 0.9, "dampening": 0.25,
                                          "weight_decay": 0.05}),
    ("sgd_nesterov_maximize", "sgd", {"momentum": 0.8, "nesterov": True, "maximize": True}),
    ("lion", "lion", {}),
    ("lion_wd_maximize", "lion", {"weight_decay": 0.1, "maximize": True}),
    ("lion_deepspeed", "lion", {"convention": "deepspeed"}),
    ("lion_deepspeed_wd", "lion", {"convention": "deepspeed", "weight_decay": 0.1}),
)


def build_lion_sgd_cases(seed: int = 2018) -> List[Case]:
    """SGD and Lion cases (float32): lengths 64 (whole vectors on every x86 width) and
    67 (a tail), 'normal' and 'special' inputs (the awkward values of the Adam cases),
    8 steps from step 1 (SGD's first step creates its momentum buffer)."""
    rng = np.random.default_rng(seed + 11)
    cases = []
    for name, optimizer, overrides in _LION_SGD_CONFIGS:
        hyper = {**(_SGD_BASE if optimizer == "sgd" else _LION_BASE), **overrides}
        for kind, n in (("normal", 64), ("normal", 67), ("special", 45)):
            steps = 8
            initial = {"param": rng.standard_normal(n).astype(np.float32)}
            if optimizer == "sgd":
                initial["momentum_buffer"] = np.zeros(n, np.float32)
            else:
                initial["exp_avg"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
            if kind == "special":
                every_other = _special_values()[::2]
                initial["param"][: every_other.size] = every_other
            cases.append(Case(
                name=f"{name}-{kind}{n}", optimizer=optimizer, hyper=dict(hyper),
                steps=list(range(1, steps + 1)), lrs=_lrs(float(hyper["lr"]), steps, kind),
                initial=initial, grads=_gradients(n, steps, kind, rng), expected={},
                reference={}, tags=[kind] + ([] if n % 16 else ["multiple_of_16"])))
    return cases


def write_lion_sgd(directory: str, *, seed: int = 2018, force: bool = False) -> List[str]:
    """Write the SGD and Lion golden set into ``directory`` (its own set: the Adam set's
    readers expect Adam and AdaGrad only); returns the paths written."""
    cases = build_lion_sgd_cases(seed)
    for case in cases:
        _fill(case)
    generator = {"adamcore": adamcore.__version__, "isas": adamcore.available_isas(),
                 "numpy": np.__version__, "python": platform.python_version(), "seed": seed}
    return write_set(directory, cases, force=force, generator=generator,
                     description="adamcore golden vectors for SGD and Lion: every buffer's "
                                 "state after every step, stored as the bits of its dtype; "
                                 "float64 reference beside them")


# ---------------------------------------------------------------- per-convention sets

# (convention, tail width it emulates, optimizers): each set is the emulation's bits,
# which the real peer reproduces (tests/test_golden_conventions.py). optax's AdaGrad is
# left out: XLA's rsqrt is not correctly rounded (docs/conventions.md).
CONVENTION_SETS = (
    ("torch-fused", 8, ("adam", "adamw", "amsgrad", "adagrad")),
    ("torch-foreach", None, ("adam", "adamw", "amsgrad", "adagrad")),
    ("deepspeed", 8, ("adam", "adamw", "adagrad")),
    ("optax", None, ("adam", "adamw", "amsgrad")),
    ("keras", None, ("adam", "adamw", "amsgrad", "adagrad")),
)


def build_convention_cases(convention: str, tail_width, optimizers, *, seed: int = 2018,
                           size: int = 35, steps: int = 12) -> List[Case]:
    """Small float32 cases whose expected bits follow ``convention`` (size 35 leaves a
    tail of 3 for vector widths 8 and 16)."""
    from . import _peers
    cases = []
    for k, name in enumerate(optimizers):
        rng = np.random.default_rng(seed + k)
        param = rng.standard_normal(size).astype(np.float32)
        grads = rng.standard_normal((steps, size)).astype(np.float32)
        if name == "adagrad":
            init = 0.1 if convention in ("optax", "keras") else 0.0
            hyper = dict(_ADAGRAD_BASE, eps=1e-7 if convention == "keras" else 1e-10)
            initial = {"param": param, "state_sum": np.full(size, init, np.float32)}
            optimizer = "adagrad"
        else:
            hyper = dict(_ADAM_BASE, lr=1e-2, amsgrad=name == "amsgrad",
                         weight_decay=1e-2 if name == "adamw" else 0.0)
            optimizer = "adamw" if name == "adamw" else "adam"
            initial = {"param": param}
            initial.update({key: np.zeros(size, np.float32)
                            for key in state_keys(optimizer, hyper["amsgrad"])[1:]})
        case = Case(name=f"{convention}_{name}", optimizer=optimizer, hyper=hyper,
                    steps=list(range(1, steps + 1)), lrs=[hyper["lr"]] * steps,
                    initial=initial, grads=grads, expected={}, tags=["convention"],
                    convention=convention, tail_width=tail_width)
        emulated = trajectory(case, _peers.oracle_step_fn(f"emulate:{convention}"))
        case.expected = {key: emulated[key] for key in case.keys}
        cases.append(case)
    return cases


def write_conventions(directory: str, *, force: bool = False) -> List[str]:
    """One golden set per convention, in ``directory/<convention>/``."""
    paths = []
    for convention, width, optimizers in CONVENTION_SETS:
        paths += write_set(os.path.join(directory, convention),
                           build_convention_cases(convention, width, optimizers),
                           description=f"float32 trajectories in the {convention} convention "
                                       "(adamcore.conventions' emulation)",
                           generator={"adamcore": adamcore.__version__, "convention": convention,
                                      "tail_width": width}, force=force)
    return paths


def _explain_mismatch(report, directory: str, step_fn, dtype) -> None:
    """Print which convention would explain the first failing case (adamcore.explain)."""
    from . import explain
    first = report.first_mismatch
    if first is None:
        return
    loaded = oracle.load(directory, [first.case])[0]
    if loaded.optimizer in oracle.ELEMENTWISE_OPTIMIZERS:
        print(f"(explain replays Adam and AdaGrad conventions; {loaded.optimizer} has none "
              "to replay: docs/numerics.md states the peers' known differences)")
        return
    if loaded.has_options or any(v != "float32" for k, v in loaded.layout.items()
                                 if k != "param_copy") or loaded.layout.get("param_copy"):
        return
    actual = trajectory(loaded, step_fn, dtype)
    actual.pop("grad", None)
    problem = explain.Problem(loaded.optimizer, dict(loaded.hyper), dict(loaded.initial),
                              loaded.grads, loaded.steps, loaded.lrs, name=loaded.name)
    result = explain.explain(problem, dict(loaded.expected), actual,
                             f"golden ({loaded.convention})", "implementation")
    print("which convention would explain it:\n" + result.format())


def _conventions_command(args: argparse.Namespace) -> int:
    try:
        paths = write_conventions(args.directory, force=args.force)
    except FileExistsError as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {len(paths)} cases under {args.directory}")
    return 0


def _write_command(args: argparse.Namespace) -> int:
    try:
        writer = write_lion_sgd if getattr(args, "lion_sgd", False) else write
        paths = writer(args.directory, seed=args.seed, force=args.force)
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
        try:
            report = oracle.check(step_fn, args.directory, mode=args.mode,
                                  state_dtype=dtype, tolerance_ulp=args.tolerance, name=name,
                                  cases=args.case or None)
        except (OSError, ValueError) as err:  # not a golden set, bad checksum, unknown case
            print(f"error: {err}")
            return 2
        print(report.format(verbose=args.verbose))
        if not report.passed:
            status = 1
            if args.explain and dtype is None:
                _explain_mismatch(report, args.directory, step_fn, dtype)
    return status


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``golden`` command (``write`` and ``check``) to ``python -m adamcore``."""
    parser = subparsers.add_parser("golden", help="write or check golden vectors")
    sub = parser.add_subparsers(dest="golden_command", required=True)
    w = sub.add_parser("write", help="write the golden set into DIR")
    w.add_argument("directory", metavar="DIR")
    w.add_argument("--seed", type=int, default=2018, help="seed of the inputs")
    w.add_argument("--force", action="store_true", help="overwrite an existing set")
    w.add_argument("--lion-sgd", action="store_true",
                   help="write the SGD and Lion cases (a set of their own) instead")
    w.set_defaults(func=_write_command)
    wc = sub.add_parser("conventions", help="write one small set per convention into "
                                            "DIR/<convention>/ (adamcore.conventions)")
    wc.add_argument("directory", metavar="DIR")
    wc.add_argument("--force", action="store_true", help="overwrite existing sets")
    wc.set_defaults(func=_conventions_command)
    c = sub.add_parser("check", help="check an implementation against the set in DIR")
    c.add_argument("directory", metavar="DIR")
    c.add_argument("--impl", default="adamcore",
                   help="adamcore, adamcore:<isa>, reference, torch-default, torch-foreach, "
                        "torch-fused, optax, keras, deepspeed, emulate:<convention>, or all")
    c.add_argument("--mode", choices=("trajectory", "per_step"), default="trajectory",
                   help="carry the implementation's own state, or restart each step from "
                        "the golden state")
    c.add_argument("--tolerance", type=float, default=0.0, help="ulps allowed (default 0)")
    c.add_argument("--case", action="append", help="only this case (repeatable)")
    c.add_argument("--verbose", action="store_true", help="list every differing array/step")
    c.add_argument("--no-explain", dest="explain", action="store_false",
                   help="on a mismatch, do not replay the first failing case under every "
                        "convention (python -m adamcore explain)")
    c.set_defaults(func=_check_command)
    return parser
