"""Committed golden trajectories: write them (needs torch 2.13) and read them (needs NumPy).

    python tests/data/make_golden.py [--out DIR] [--only torch|layouts]

writes ``DIR`` (default: ``tests/data/golden`` beside this file): one ``<case>.npz``
per case and ``manifest.json`` with every case's optimizer, hyperparameters, step
numbers, gradient seed and the SHA-256 of its file and of its gradients; and
``DIR/layouts``, the bfloat16/float16/float64 and mixed layouts, AMP and stochastic
rounding in :mod:`adamcore.golden`'s format 2 (see "layouts" below; needs ml_dtypes),
which ``python -m adamcore golden check DIR/layouts`` reads.

The expected bits come from *peers*, never from adamcore's kernels:

* ``torch_*`` arrays: ``torch.optim.Adam/AdamW/Adagrad(fused=True)`` of torch 2.13 (CPU),
  one optimizer carried through all steps, as in training;
* ``reference_*`` arrays: the float64 reference (``adamcore.reference``, plain NumPy).

Cases that torch cannot express (``bias_correction=False``) have the reference only.

Per case the ``.npz`` holds (float32 values stored as their ``uint32`` bits):

``initial_<key>``      (n,)        the state before the first step
``lrs``                (N,)        float64 learning rate of every step
``torch_<key>``        (C, n)      torch's state after each checkpoint step (``checkpoints``)
``torch_tail_<key>``   (N, n%16)   torch's last n % 16 elements (its scalar tail) after
                                   *every* step
``torch_tailbody_<key>`` (N, n%16) what torch's *vector body* computes for those elements
                                   in that step from the state before it (the elements
                                   placed at the front of a 16-element tensor, zeros
                                   behind them): adamcore's contract for every element
``reference_<key>``    (n,)        float64 reference state after the last step

The gradients are not stored: :func:`gradients` derives them from the case's seed with
SplitMix64 (integer arithmetic only, so no library or platform can change them) and the
manifest holds their SHA-256. ``<key>`` is ``param``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq`` (Adam family) or ``param``, ``state_sum`` (AdaGrad).

Files are written byte-for-byte reproducibly (fixed zip timestamps, sorted members), so
regenerating with the same torch, NumPy and zlib gives the same hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, "golden")
TORCH_VERSION = "2.13"  # the peer these bits come from
VECTOR = 16  # torch fused's vector body covers the first n - n % 16 elements

ADAM_DEFAULTS = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
                 "amsgrad": False, "maximize": False, "bias_correction": True}
ADAGRAD_DEFAULTS = {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10,
                    "initial_accumulator_value": 0.0, "maximize": False}

NAN, INF = float("nan"), float("inf")
# (step index, element, value): gradients overwritten with awkward values. The size of
# these cases is 37: elements 0-31 are torch's vector body, 32-36 its scalar tail.
NONFINITE = (
    (4, 2, NAN), (4, 33, NAN),            # NaN, body and tail
    (11, 5, INF), (11, 34, -INF),         # +Inf body, -Inf tail
    (19, 9, -INF), (26, 12, INF),
    (29, 13, -0.0), (29, 14, 0.0), (29, 15, 1e-40), (29, 35, -3e-39),  # zeros, subnormals
    (30, 15, 1e-41), (31, 15, -2e-40), (32, 36, 1e-42),
    (40, 20, 1e-30), (41, 21, -1e-25),    # g * g underflows in float32
    (60, 24, NAN), (60, 25, -INF),
)

# name, optimizer, options over the defaults, size, steps, first step, extra
CASES = (
    ("adam", "adam", {}, 37, 100, 1, {}),
    ("adam_l2", "adam", {"weight_decay": 0.1}, 45, 100, 1, {}),
    ("adamw", "adamw", {"weight_decay": 0.01}, 37, 100, 1, {"schedule": True}),
    ("adam_amsgrad_l2", "adam", {"amsgrad": True, "weight_decay": 0.05}, 37, 100, 501,
     {}),
    ("adamw_amsgrad", "adamw", {"amsgrad": True, "weight_decay": 0.1, "lr": 3e-3}, 37, 100,
     1, {}),
    ("adam_maximize", "adam", {"maximize": True, "weight_decay": 0.01}, 37, 100, 1, {}),
    # 1 - beta1 >= 0.5: torch's lerp takes its other branch.
    ("adam_beta1_0.3", "adam", {"beta1": 0.3, "beta2": 0.9, "eps": 1e-6}, 37, 100, 1, {}),
    ("adamw_beta1_0.3_amsgrad_maximize", "adamw",
     {"beta1": 0.3, "beta2": 0.99, "amsgrad": True, "maximize": True, "weight_decay": 0.2},
     45, 100, 201, {}),
    ("adam_amsgrad_l2_nonfinite", "adam", {"amsgrad": True, "weight_decay": 0.05}, 37, 100,
     1, {"specials": True}),
    ("adamw_1000", "adamw", {"weight_decay": 0.1}, 1000, 50, 1, {"schedule": True}),
    ("adam_no_bias_correction", "adam", {"bias_correction": False, "lr": 1e-2}, 37, 100,
     1, {}),
    ("adamw_amsgrad_no_bias_correction", "adamw",
     {"bias_correction": False, "amsgrad": True, "weight_decay": 0.1, "lr": 1e-2}, 37, 100,
     1, {}),
    ("adagrad", "adagrad", {}, 37, 100, 1, {}),
    ("adagrad_decay_wd_init_maximize", "adagrad",
     {"lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1,
      "maximize": True, "eps": 1e-6}, 45, 100, 1, {}),
    ("adagrad_late_schedule", "adagrad", {"lr_decay": 0.001, "lr": 3e-2}, 37, 100, 301,
     {"schedule": True}),
    ("adagrad_nonfinite", "adagrad", {"weight_decay": 0.01}, 37, 100, 1, {"specials": True}),
)


def state_keys(optimizer: str, amsgrad: bool) -> tuple:
    if optimizer == "adagrad":
        return ("param", "state_sum")
    return ("param", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())


def checkpoints(steps: int, n: int) -> List[int]:
    """Step counts (1-based, within the trajectory) after which the full state is stored:
    the first steps (where bias correction matters most), every 25th and the last; for
    larger tensors only the first, middle and last (the data must stay small)."""
    if n > 64:
        return sorted({1, steps // 2, steps})
    return sorted({1, 2, 3, *range(25, steps + 1, 25), steps})


# ---------------------------------------------------------------- inputs

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(seed: int, count: int) -> np.ndarray:
    """``count`` SplitMix64 outputs of stream ``seed`` (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
             + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK64


def _floats(words: np.ndarray, low_exp: int, high_exp: int, zero_every: int = 0) -> np.ndarray:
    """float32 built bit by bit from 64-bit words: random sign, full 23-bit fraction,
    exponent uniform in [low_exp, high_exp]; about 1 in ``zero_every`` made +-0."""
    w = words.astype(np.uint64)
    frac = (w & np.uint64(0x7FFFFF)).astype(np.uint32)
    sign = ((w >> np.uint64(23)) & np.uint64(1)).astype(np.uint32)
    span = high_exp - low_exp + 1
    exp = (((w >> np.uint64(24)) & np.uint64(0xFFFF)) % np.uint64(span)).astype(np.int64)
    exp = (exp + low_exp + 127).astype(np.uint32)
    bits = (sign << np.uint32(31)) | (exp << np.uint32(23)) | frac
    if zero_every:
        zero = ((w >> np.uint64(40)) % np.uint64(zero_every)) == 0
        bits[zero] &= np.uint32(0x80000000)
    return bits.view(np.float32)


def gradients(seed: int, steps: int, n: int, specials: bool) -> np.ndarray:
    """The (steps, n) float32 gradients of a case: magnitudes 2^-12 .. 2^3, ~1/50 zeros."""
    g = _floats(splitmix64(seed, steps * n), -12, 3, zero_every=50).reshape(steps, n).copy()
    if specials:
        for k, i, value in NONFINITE:
            g[k, i] = np.float32(value)
    return g


def case_seed(index: int) -> int:
    return 0x5EED0000 + 97 * index


def initial_state(optimizer: str, hyper: dict, n: int, first_step: int, seed: int):
    keys = state_keys(optimizer, bool(hyper.get("amsgrad")))
    words = splitmix64(seed ^ 0xA5A5A5A5, 4 * n).reshape(4, n)
    state = {"param": _floats(words[0], -3, 1)}
    if optimizer == "adagrad":
        init = np.float32(hyper["initial_accumulator_value"])
        if first_step == 1:
            state["state_sum"] = np.full(n, init, dtype=np.float32)
        else:  # mid-training: a sum of squares larger than the initial value
            state["state_sum"] = init + np.abs(_floats(words[1], -4, 3))
        return state
    if first_step == 1:
        for key in keys[1:]:
            state[key] = np.zeros(n, dtype=np.float32)
        return state
    state["exp_avg"] = _floats(words[1], -10, -3)
    state["exp_avg_sq"] = np.abs(_floats(words[2], -18, -6))
    if "max_exp_avg_sq" in keys:  # at least exp_avg_sq, as AMSGrad's maximum would be
        bump = np.abs(_floats(words[3], -20, -7))
        state["max_exp_avg_sq"] = (state["exp_avg_sq"] + bump).astype(np.float32)
    return state


def learning_rates(base: float, steps: int, schedule: bool) -> np.ndarray:
    if not schedule:
        return np.full(steps, base, dtype=np.float64)
    k = np.arange(steps, dtype=np.float64)
    return base * (1.0 + 0.5 * np.cos(0.37 * k))  # stored: libm differences cannot matter


def build_specs() -> List[dict]:
    specs = []
    for index, (name, optimizer, options, n, steps, first, extra) in enumerate(CASES):
        base = ADAGRAD_DEFAULTS if optimizer == "adagrad" else ADAM_DEFAULTS
        hyper = {**base, **options}
        unknown = set(options) - set(base)
        if unknown:
            raise ValueError(f"{name}: unknown options {sorted(unknown)}")
        torch_covers = hyper.get("bias_correction", True)
        specs.append({
            "name": name, "optimizer": optimizer, "hyper": hyper, "size": n, "steps": steps,
            "first_step": first, "seed": case_seed(index),
            "specials": bool(extra.get("specials")), "schedule": bool(extra.get("schedule")),
            "source": "torch-fused" if torch_covers else "reference-only",
            "checkpoints": checkpoints(steps, n),
        })
    return specs


def inputs(spec: dict):
    """(initial state, gradients, learning rates) of a case."""
    initial = initial_state(spec["optimizer"], spec["hyper"], spec["size"],
                            spec["first_step"], spec["seed"])
    grads = gradients(spec["seed"], spec["steps"], spec["size"], spec["specials"])
    lrs = learning_rates(spec["hyper"]["lr"], spec["steps"], spec["schedule"])
    return initial, grads, lrs


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- the peers

def _torch_trajectory(spec: dict, initial: dict, grads: np.ndarray, lrs: np.ndarray):
    import torch

    if not torch.__version__.startswith(TORCH_VERSION + "."):
        raise RuntimeError(f"the golden bits come from torch {TORCH_VERSION}; "
                           f"found {torch.__version__}")
    h, optimizer, n = spec["hyper"], spec["optimizer"], spec["size"]
    keys = state_keys(optimizer, bool(h.get("amsgrad")))
    tail = n % VECTOR
    param = torch.nn.Parameter(torch.from_numpy(initial["param"].copy()))
    if optimizer == "adagrad":
        opt = torch.optim.Adagrad([param], lr=float(lrs[0]), lr_decay=h["lr_decay"],
                                  weight_decay=h["weight_decay"],
                                  initial_accumulator_value=h["initial_accumulator_value"],
                                  eps=h["eps"], maximize=h["maximize"], fused=True)
        state = opt.state[param]
        state["sum"].copy_(torch.from_numpy(initial["state_sum"]))
        state["step"].fill_(float(spec["first_step"] - 1))
        names = {"param": None, "state_sum": "sum"}
    else:
        cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
        opt = cls([param], lr=float(lrs[0]), betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                  weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                  maximize=h["maximize"], fused=True)
        if spec["first_step"] > 1:
            opt.state[param] = {
                "step": torch.tensor(float(spec["first_step"] - 1), dtype=torch.float32),
                **{k: torch.from_numpy(initial[k].copy()) for k in keys[1:]}}
        names = {k: k for k in keys}
        names["param"] = None
    full = {k: [] for k in keys}
    tails = {k: np.empty((spec["steps"], tail), dtype=np.float32) for k in keys}
    for k in range(spec["steps"]):
        opt.param_groups[0]["lr"] = float(lrs[k])
        param.grad = torch.from_numpy(grads[k].copy())
        opt.step()
        now = {key: (param.detach() if names[key] is None else opt.state[param][names[key]])
               .numpy().copy() for key in keys}
        for key in keys:
            tails[key][k] = now[key][n - tail:]
            if k + 1 in spec["checkpoints"]:
                full[key].append(now[key])
    # Step k's tail again, from torch's tail state before it, in torch's vector body.
    before = {key: np.concatenate([initial[key][None, n - tail:], tails[key][:-1]])
              for key in keys}
    bodies = _torch_body_steps(spec, keys, names, before, grads[:, n - tail:], lrs)
    expected_steps = spec["first_step"] - 1 + spec["steps"]
    if float(opt.state[param]["step"]) != expected_steps:
        raise RuntimeError(f"{spec['name']}: torch counted {float(opt.state[param]['step'])} "
                           f"steps, expected {expected_steps}")
    return {k: np.stack(v) for k, v in full.items()}, tails, bodies


def _torch_body_steps(spec, keys, names, before, grads, lrs):
    """For every step k: torch fused's result for the elements ``before[key][k]`` with
    gradient ``grads[k]`` and learning rate ``lrs[k]``, computed in its vector body (the
    elements at the front of a 16-element tensor, zeros behind them: a zero gradient on
    zero state moves nothing). One parameter group per step, one optimizer step."""
    import torch

    h = spec["hyper"]
    steps, count = grads.shape

    def padded(values):
        out = np.zeros(VECTOR, dtype=np.float32)
        out[:count] = values
        return torch.from_numpy(out)

    params = [torch.nn.Parameter(padded(before["param"][k])) for k in range(steps)]
    groups = [{"params": [params[k]], "lr": float(lrs[k])} for k in range(steps)]
    if spec["optimizer"] == "adagrad":
        opt = torch.optim.Adagrad(groups, lr_decay=h["lr_decay"],
                                  weight_decay=h["weight_decay"], eps=h["eps"],
                                  maximize=h["maximize"], fused=True)
        for k, p in enumerate(params):
            opt.state[p]["sum"].copy_(padded(before["state_sum"][k]))
            opt.state[p]["step"].fill_(float(spec["first_step"] - 1 + k))
    else:
        cls = torch.optim.AdamW if spec["optimizer"] == "adamw" else torch.optim.Adam
        opt = cls(groups, betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                  weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                  maximize=h["maximize"], fused=True)
        for k, p in enumerate(params):
            opt.state[p] = {
                "step": torch.tensor(float(spec["first_step"] - 1 + k), dtype=torch.float32),
                **{names[key]: padded(before[key][k]) for key in keys[1:]}}
    for k, p in enumerate(params):
        p.grad = padded(grads[k])
    opt.step()
    out = {key: np.empty((steps, count), dtype=np.float32) for key in keys}
    for k, p in enumerate(params):
        for key in keys:
            value = p.detach() if names[key] is None else opt.state[p][names[key]]
            out[key][k] = value.numpy()[:count]
    return out


def _reference_final(spec: dict, initial: dict, grads: np.ndarray, lrs: np.ndarray):
    from adamcore import reference  # plain NumPy in float64

    h, optimizer = spec["hyper"], spec["optimizer"]
    keys = state_keys(optimizer, bool(h.get("amsgrad")))
    state = {k: initial[k].astype(np.float64) for k in keys}
    with np.errstate(all="ignore"):  # NaN/Inf gradients are part of some cases
        for k in range(spec["steps"]):
            step = spec["first_step"] + k
            if optimizer == "adagrad":
                reference.adagrad_step(state["param"], grads[k], state["state_sum"], step=step,
                                       lr=float(lrs[k]), lr_decay=h["lr_decay"],
                                       weight_decay=h["weight_decay"], eps=h["eps"],
                                       maximize=h["maximize"])
            else:
                fn = reference.adamw_step if optimizer == "adamw" else reference.adam_step
                fn(state["param"], grads[k], state["exp_avg"], state["exp_avg_sq"], step=step,
                   lr=float(lrs[k]), beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                   weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                   max_exp_avg_sq=state.get("max_exp_avg_sq"), maximize=h["maximize"],
                   bias_correction=h["bias_correction"])
    return state


# ---------------------------------------------------------------- files

def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def write_npz(path: str, arrays: Dict[str, np.ndarray]) -> bytes:
    """A NumPy-readable ``.npz`` whose bytes depend only on the arrays."""
    from adamcore.golden import npz_bytes  # (the same writer as the format-2 sets)

    data = npz_bytes(arrays)
    with open(path, "wb") as f:
        f.write(data)
    return data


def _build_cases(out_dir: str) -> List[dict]:
    entries = []
    for spec in build_specs():
        initial, grads, lrs = inputs(spec)
        keys = state_keys(spec["optimizer"], bool(spec["hyper"].get("amsgrad")))
        arrays = {"lrs": lrs}
        for key in keys:
            arrays[f"initial_{key}"] = _bits(initial[key])
        if spec["source"] == "torch-fused":
            full, tails, bodies = _torch_trajectory(spec, initial, grads, lrs)
            for key in keys:
                arrays[f"torch_{key}"] = _bits(full[key])
                arrays[f"torch_tail_{key}"] = _bits(tails[key])
                arrays[f"torch_tailbody_{key}"] = _bits(bodies[key])
        ref = _reference_final(spec, initial, grads, lrs)
        for key in keys:
            arrays[f"reference_{key}"] = ref[key]
        file_name = spec["name"] + ".npz"
        data = write_npz(os.path.join(out_dir, file_name), arrays)
        entries.append({**spec, "file": file_name, "sha256": sha256_bytes(data),
                        "grads_sha256": sha256_bytes(_bits(grads).tobytes()),
                        "keys": list(keys)})
    return entries


def build(out_dir: str) -> dict:
    """Compute every case with the peers and write the set into ``out_dir``."""
    import torch
    import adamcore

    os.makedirs(out_dir, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (tensors this small run in one chunk anyway: same bits)
    try:
        entries = _build_cases(out_dir)
    finally:
        torch.set_num_threads(threads)
    manifest = {
        "format_version": FORMAT_VERSION,
        "description": "adamcore golden trajectories from torch fused and the float64 "
                       "reference; see tests/data/make_golden.py",
        "generator": {"script": "tests/data/make_golden.py", "torch": torch.__version__,
                      "numpy": np.__version__, "adamcore_reference": adamcore.__version__},
        "vector_body": VECTOR,
        "cases": entries,
    }
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return manifest


# ---------------------------------------------------------------- layouts (format 2)
#
# The other buffer layouts (docs/numerics.md, "Buffer dtypes"), AMP and stochastic
# rounding, in adamcore.oracle's golden format 2 (``python -m adamcore golden check``
# reads it; adamcore.golden's docstring describes it) in the directory ``layouts`` beside
# the torch set. The expected bits come from peers, never from adamcore's kernels:
#
# * all-bfloat16 and all-float16: torch 2.13 fused (every element in its vector body: the
#   tensors are padded with zeros to a multiple of 32) AND the NumPy emulation of the
#   documented recipe (adamcore._sr_emulation), which must agree bit for bit;
# * float64: torch 2.13 fused (padded likewise);
# * the mixed layouts, AMP (grad_scale, found_inf) and stochastic rounding: the NumPy
#   emulation (torch has none of them in one kernel).
#
# The reference arrays hold the float64 reference after the last step only.

DEFAULT_LAYOUT_DIR = os.path.join(DEFAULT_DIR, "layouts")
LAYOUT_SIZE, LAYOUT_STEPS = 129, 12  # 128 + 1: the last element is a tail on every ISA
F64_SIZE, F64_STEPS = 65, 8  # 64 + 1 likewise
_BF, _FP, _F32, _F64 = "bfloat16", "float16", "float32", "float64"

# name, optimizer, options over the defaults, (param, grad, state, copy), first step, extra
LAYOUT_CASES = (
    ("bf16-adam", "adam", {}, (_BF, _BF, _BF, None), 1, {}),
    ("bf16-adamw_amsgrad", "adamw", {"amsgrad": True, "weight_decay": 0.1},
     (_BF, _BF, _BF, None), 101, {}),
    ("bf16-adagrad", "adagrad", {"lr_decay": 0.01, "weight_decay": 0.1}, (_BF, _BF, _BF, None),
     1, {}),
    ("fp16-adam", "adam", {"weight_decay": 0.01}, (_FP, _FP, _FP, None), 1, {}),
    ("fp16-adamw_amsgrad", "adamw", {"amsgrad": True, "weight_decay": 0.1},
     (_FP, _FP, _FP, None), 101, {}),
    ("fp16-adagrad", "adagrad", {"lr_decay": 0.01}, (_FP, _FP, _FP, None), 1, {}),
    ("f64-adam", "adam", {}, (_F64, _F64, _F64, None), 1, {}),
    ("f64-adamw_amsgrad", "adamw", {"amsgrad": True, "weight_decay": 0.1},
     (_F64, _F64, _F64, None), 101, {}),
    ("f64-adagrad", "adagrad", {"lr_decay": 0.01, "weight_decay": 0.1},
     (_F64, _F64, _F64, None), 1, {}),
    ("master-bf16_grads-bf16_copy", "adamw", {"weight_decay": 0.1}, (_F32, _BF, _F32, _BF),
     1, {}),
    ("bf16_params-f32_state", "adam", {"amsgrad": True}, (_BF, _BF, _F32, None), 101, {}),
    ("f32_params-bf16_state", "adamw", {"amsgrad": True, "weight_decay": 0.1},
     (_F32, _F32, _BF, None), 101, {}),
    ("amp-master-fp16_grads-fp16_copy", "adam", {"weight_decay": 0.01},
     (_F32, _FP, _F32, _FP), 1, {"grad_scale": 65536.0, "inf_step": 5}),
    ("sr-bf16-adamw_amsgrad", "adamw", {"amsgrad": True, "weight_decay": 0.1},
     (_BF, _BF, _BF, None), 101, {"seed": 20260901}),
    ("sr-fp16-adam", "adam", {}, (_FP, _FP, _FP, None), 1, {"seed": 1}),
    ("sr-fp16-adagrad", "adagrad", {"lr_decay": 0.01}, (_FP, _FP, _FP, None), 1,
     {"seed": 0xFFFFFFFFFFFFFFFF}),
    ("sr-f32_params-bf16_state-bf16_copy", "adam", {"amsgrad": True},
     (_F32, _BF, _BF, _BF), 101, {"seed": 99}),
    ("sr-bf16_params-f32_state", "adam", {}, (_BF, _BF, _F32, None), 1, {"seed": 3}),
)


def _cast(values: np.ndarray, name: str) -> np.ndarray:
    """Values in dtype ``name``, rounded to nearest (16-bit: from float32, with the
    documented conversion of adamcore._sr_emulation)."""
    from adamcore import _sr_emulation as sr
    from adamcore import oracle

    values = np.asarray(values)
    if name == _F64:
        return values.astype(np.float64)
    x = values.astype(np.float32)
    if name == _F32:
        return x
    bits = sr.to_bf16_bits(x) if name == _BF else sr.to_f16_bits(x)
    return bits.view(oracle.dtype_of(name))


def layout_case_seed(index: int) -> int:
    return 0x1A70_0000 + 131 * index


def build_layout_cases() -> list:
    """The layout cases with their inputs (adamcore.oracle.Case; expected left empty)."""
    from adamcore.oracle import Case

    cases = []
    for index, (name, optimizer, options, (p, g, s, c), first, extra) in \
            enumerate(LAYOUT_CASES):
        base = ADAGRAD_DEFAULTS if optimizer == "adagrad" else ADAM_DEFAULTS
        hyper = {k: v for k, v in {**base, **options}.items()
                 if k != "initial_accumulator_value"}
        n, steps = (F64_SIZE, F64_STEPS) if p == _F64 else (LAYOUT_SIZE, LAYOUT_STEPS)
        seed = layout_case_seed(index)
        initial = initial_state(optimizer, {**base, **options}, n, first, seed)
        grads = gradients(seed, steps, n, False).astype(np.float64)
        layout = {"param": p, "grad": g, "state": s, "param_copy": c}
        case = Case(name=name, optimizer=optimizer, hyper=hyper,
                    steps=list(range(first, first + steps)),
                    lrs=[float(x) for x in learning_rates(hyper["lr"], steps, True)],
                    initial={}, grads=np.empty((0, 0)), expected={}, layout=layout,
                    reference_steps=[steps - 1])
        for key, value in initial.items():
            case.initial[key] = _cast(value, case.dtype(key))
        if c:
            case.initial["param_copy"] = _cast(np.zeros(n), c)
        if "grad_scale" in extra:  # GradScaler: scaled grads; an Inf skips the step and
            scale, t = float(extra["grad_scale"]), first  # halves the scale
            case.grad_scale, case.found_inf, case.steps = [], [], []
            for k in range(steps):
                grads[k] *= scale
                skip = k == extra["inf_step"]
                if skip:
                    grads[k, [3, n - 1]] = [np.inf, -np.inf]
                case.grad_scale.append(scale)
                case.found_inf.append(skip)
                case.steps.append(t)
                if skip:
                    scale /= 2.0
                else:
                    t += 1
        if "seed" in extra:
            case.rounding, case.seed = "stochastic", int(extra["seed"])
        case.grads = _cast(grads, g)
        case.tags = [p if p == g == s and not c else "mixed"] + (
            ["amp"] if case.grad_scale else []) + (["stochastic"] if case.seed is not None
                                                   else [])
        cases.append(case)
    return cases


def _torch_layout_trajectory(case) -> dict:
    """torch fused's trajectory of a same-dtype case, every element in its vector body
    (zeros appended up to a multiple of 32: zero grads on zero state move nothing)."""
    import torch

    from adamcore import oracle

    name = case.layout["param"]
    tdtype = {_BF: torch.bfloat16, _FP: torch.float16, _F64: torch.float64}[name]
    n = case.size
    padded = -(-n // 32) * 32

    def to_torch(a):
        out = torch.zeros(padded, dtype=tdtype)
        bits = oracle.to_bits(a, name)
        if name == _F64:
            out[:n] = torch.from_numpy(bits.view(np.float64).copy())
        else:
            out.view(torch.int16)[:n] = torch.from_numpy(bits.view(np.int16).copy())
        return out

    def to_numpy(t):
        t = t.detach()[:n]
        if name == _F64:
            return t.numpy().copy()
        return oracle.from_bits(t.view(torch.int16).numpy().view(np.uint16).copy(), name)

    h = case.hyper
    param = torch.nn.Parameter(to_torch(case.initial["param"]))
    if case.optimizer == "adagrad":
        opt = torch.optim.Adagrad([param], lr=case.lrs[0], lr_decay=h["lr_decay"],
                                  weight_decay=h["weight_decay"], eps=h["eps"],
                                  maximize=h["maximize"], fused=True)
        opt.state[param]["sum"].copy_(to_torch(case.initial["state_sum"]))
        opt.state[param]["step"].fill_(float(case.steps[0] - 1))
        names = {"state_sum": "sum"}
    else:
        cls = torch.optim.AdamW if case.optimizer == "adamw" else torch.optim.Adam
        opt = cls([param], lr=case.lrs[0], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                  weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                  maximize=h["maximize"], fused=True)
        keys = [k for k in case.keys if k != "param"]
        names = {k: k for k in keys}
        if case.steps[0] > 1:
            opt.state[param] = {"step": torch.tensor(float(case.steps[0] - 1)),
                                **{k: to_torch(case.initial[k]) for k in keys}}
    out = {k: [] for k in case.keys}
    for k in range(len(case.steps)):
        opt.param_groups[0]["lr"] = case.lrs[k]
        param.grad = to_torch(case.grads[k])
        opt.step()
        out["param"].append(to_numpy(param))
        for key, tkey in names.items():
            out[key].append(to_numpy(opt.state[param][tkey]))
    return {k: np.stack(v) for k, v in out.items()}


def fill_layout_case(case) -> str:
    """Fill the expected bits from the peers (refusing on any disagreement) and the
    reference; returns the source."""
    from adamcore import golden, oracle

    lay = case.layout
    same = lay["param"] == lay["grad"] == lay["state"] and not lay["param_copy"]
    plain = not case.has_options
    results = {}
    if same and plain and lay["param"] != _F32:
        results["torch-fused"] = _torch_layout_trajectory(case)
    if lay["param"] != _F64:
        results["emulation"] = golden.trajectory(case, oracle.get_step_fn("emulation")[0])
    (first, expected), *others = results.items()
    for source, got in others:
        for key in expected:
            if expected[key].tobytes() != got[key].tobytes():
                raise RuntimeError(f"{case.name}: {key}: {source} disagrees with {first}; "
                                   f"refusing to write")
    case.expected_grad = expected.pop("grad", None)
    case.expected = expected
    ref_fn, ref_dtype = oracle.get_step_fn("reference")
    reference = golden.trajectory(case, ref_fn, ref_dtype)
    case.reference = {k: reference[k][case.reference_steps] for k in case.keys}
    return "+".join(results)


def build_layouts(out_dir: str = DEFAULT_LAYOUT_DIR) -> dict:
    """Write the layout set (format 2) into ``out_dir``; returns its manifest."""
    import torch
    import adamcore
    from adamcore import golden

    if not torch.__version__.startswith(TORCH_VERSION + "."):
        raise RuntimeError(f"the golden bits come from torch {TORCH_VERSION}; "
                           f"found {torch.__version__}")
    import ml_dtypes

    cases = build_layout_cases()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case in cases:
            case.tags.append("source:" + fill_layout_case(case))
    finally:
        torch.set_num_threads(threads)
    golden.write_set(out_dir, cases, force=True, generator={
        "script": "tests/data/make_golden.py", "torch": torch.__version__,
        "numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__,
        "adamcore_emulation": adamcore.__version__},
        description="adamcore golden vectors for the bfloat16/float16/float64 and mixed "
                    "layouts, AMP and stochastic rounding, from torch fused and the NumPy "
                    "emulation of docs/numerics.md; see tests/data/make_golden.py")
    with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------- reading

class GoldenError(ValueError):
    """The committed set does not match its manifest (or the manifest its pinned hash)."""


def manifest_sha256(directory: str) -> str:
    with open(os.path.join(directory, MANIFEST), "rb") as f:
        return sha256_bytes(f.read())


def load(directory: str, manifest_hash: Optional[str] = None) -> List[dict]:
    """Every case of the set with its arrays (float32 bits turned back into float32).

    Raises :class:`GoldenError` if the manifest's hash is not ``manifest_hash`` (when
    given), a file's hash is not the manifest's, or the derived gradients' hash is not.
    """
    if manifest_hash is not None and manifest_sha256(directory) != manifest_hash:
        raise GoldenError(f"{directory}/{MANIFEST}: sha256 {manifest_sha256(directory)} is not "
                          f"the pinned {manifest_hash}")
    with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GoldenError(f"format_version {manifest.get('format_version')!r} is not "
                          f"{FORMAT_VERSION}")
    cases = []
    for entry in manifest["cases"]:
        path = os.path.join(directory, entry["file"])
        with open(path, "rb") as f:
            data = f.read()
        if sha256_bytes(data) != entry["sha256"]:
            raise GoldenError(f"{path}: sha256 {sha256_bytes(data)} does not match the "
                              f"manifest's {entry['sha256']}")
        grads = gradients(entry["seed"], entry["steps"], entry["size"], entry["specials"])
        if sha256_bytes(_bits(grads).tobytes()) != entry["grads_sha256"]:
            raise GoldenError(f"{entry['name']}: the gradients derived from seed "
                              f"{entry['seed']} do not match the manifest's hash")
        arrays = {}
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for name in npz.files:
                a = npz[name]
                arrays[name] = a.view(np.float32) if a.dtype == np.uint32 else a
        cases.append({**entry, "grads": grads, "arrays": arrays})
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_DIR, help="directory to write")
    parser.add_argument("--only", choices=("torch", "layouts"),
                        help="write only the torch set (format 1) or only the layout set "
                             "(format 2, into OUT/layouts)")
    args = parser.parse_args(argv)
    if args.only != "torch":
        layout_dir = os.path.join(args.out, "layouts")
        layouts = build_layouts(layout_dir)
        size = sum(os.path.getsize(os.path.join(layout_dir, e["file"]))
                   for e in layouts["cases"]) + os.path.getsize(os.path.join(layout_dir,
                                                                             MANIFEST))
        print(f"wrote {len(layouts['cases'])} layout cases to {layout_dir} "
              f"({size / 1024:.1f} KiB)")
        print(f"layout manifest sha256 {manifest_sha256(layout_dir)} (pin it in "
              f"tests/test_golden_layouts.py as MANIFEST_SHA256)")
        if args.only == "layouts":
            return 0
    manifest = build(args.out)
    size = sum(os.path.getsize(os.path.join(args.out, e["file"])) for e in manifest["cases"])
    size += os.path.getsize(os.path.join(args.out, MANIFEST))
    print(f"wrote {len(manifest['cases'])} cases to {args.out} ({size / 1024:.1f} KiB)")
    print(f"manifest sha256 {manifest_sha256(args.out)} (pin it in "
          f"tests/test_golden_committed.py as MANIFEST_SHA256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
