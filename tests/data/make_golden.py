"""Committed golden trajectories: write them (needs torch 2.13) and read them (needs NumPy).

    python tests/data/make_golden.py [--out DIR]

writes ``DIR`` (default: ``tests/data/golden`` beside this file): one ``<case>.npz``
per case and ``manifest.json`` with every case's optimizer, hyperparameters, step
numbers, gradient seed and the SHA-256 of its file and of its gradients.

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
import zipfile
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
    data = buffer.getvalue()
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
    args = parser.parse_args(argv)
    manifest = build(args.out)
    size = sum(os.path.getsize(os.path.join(args.out, e["file"])) for e in manifest["cases"])
    size += os.path.getsize(os.path.join(args.out, MANIFEST))
    print(f"wrote {len(manifest['cases'])} cases to {args.out} ({size / 1024:.1f} KiB)")
    print(f"manifest sha256 {manifest_sha256(args.out)} (pin it in "
          f"tests/test_golden_committed.py as MANIFEST_SHA256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
