"""``python -m adamcore bench``: adamcore against its peers, side by side in one process.

Every implementation updates its own copy of the same buffers (the gradients are
shared, read-only). For each (case, optimizer, thread count) the implementations and an
in-place memory stream are timed in round-robin order, rotated every repeat, so slow
drifts of a shared machine hit all of them alike; the table reports medians.

Peers: a careful NumPy implementation (in-place ufuncs, preallocated scratch, always
present), ``torch.optim`` for-loop (default), ``foreach=True`` and ``fused=True`` when
torch is installed, and DeepSpeed's ``DeepSpeedCPUAdam``/``DeepSpeedCPUAdagrad`` when
DeepSpeed is installed (its C++ op is compiled on first use, which takes a minute).

Before timing, every implementation takes one step from identical state and its
parameters are compared with adamcore's (maximum difference in float32 ulps): a peer
that computes something else, or nothing, shows up in the JSON and as a warning
under the table (and the exit code is 1).

Two cases measure threads under load (issue 8) and run by default:

- ``contended``: Adam single steps at 64K and 1M (``--contended-sizes``) for adamcore
  and torch fused with 1 and 2 threads, each step timed alone (``--steps`` at 64K,
  1/5 as many at 1M), variants taking turns in rounds, first on the machine as it is
  ("idle"), then beside busy processes the harness starts and always stops
  (``--spinners``, one per usable CPU by default; see ``adamcore._contention``).
  Median, p90, p99 and max per variant, and the targets' ratios: 2-thread median and
  p99 over the 1-thread median of the same condition and size (<= 1.5x and <= 3x).
- ``train-loop`` (needs torch): an MLP of ~1.1M parameters, forward + backward + AdamW
  step, ``adamcore.torch.AdamW`` on 1 and 2 adamcore threads against
  ``torch.optim.AdamW(fused=True)``, idle and contended; the step alone and the whole
  iteration.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np

import adamcore
from adamcore import _bench_engine
from adamcore._cli import positive_int
from adamcore.oracle import ulp_distance

OPTIMIZERS = ("adam", "adamw", "amsgrad", "adagrad")

# Bytes a step must read and write per element: the physical lower bound on its time.
BYTES_PER_ELEMENT = {"adam": 28, "adamw": 28, "amsgrad": 36, "adagrad": 20}
STREAM_BYTES_PER_ELEMENT = 12  # read x, read y, write y

# The hyperparameters every implementation is given (torch's defaults; AdamW's decay).
HYPER = {
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2},
    "amsgrad": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adagrad": {"lr": 1e-2, "lr_decay": 0.0, "eps": 1e-10, "weight_decay": 0.0},
}

# State buffers per optimizer, in the order adamcore's functions take them.
STATE_NAMES = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "amsgrad": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "adagrad": ("state_sum",),
}

PEERS = ("numpy", "torch-default", "torch-foreach", "torch-fused", "deepspeed")
IMPLEMENTATIONS = ("adamcore",) + PEERS
STREAM = "stream"  # the bandwidth probe's row name

QUICK_SIZES = (1 << 12, 1 << 16, 1 << 20, 1 << 24)
FULL_SIZES = tuple(1 << k for k in range(12, 27, 2))  # 4K ... 64M
CASE_KINDS = ("sizes", "gpt2", "small-tensors", "medium-tensors", "subnormal")
# Cases with their own measurement (single steps under load; a torch training loop).
SPECIAL_KINDS = ("contended", "train-loop")
ALL_KINDS = CASE_KINDS + SPECIAL_KINDS


# ---------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    """A set of tensors every implementation steps as one parameter group."""

    name: str
    kind: str                    # one of CASE_KINDS
    sizes: list[int]             # elements per tensor
    note: str = ""
    # Subnormal case: restore the initial state before every timed batch so the state
    # stays in the subnormal range however many steps are timed.
    restore_each_batch: bool = False

    @property
    def elements(self) -> int:
        return int(sum(self.sizes))

    @property
    def tensors(self) -> int:
        return len(self.sizes)


def gpt2_small_sizes(n_layer: int = 12, include_token_embedding: bool = True) -> list[int]:
    """Element counts of GPT-2 small's parameters (n_embd 768, vocab 50257, context 1024).

    All 12 blocks with the token embedding: 148 tensors, 124,439,808 elements.
    """
    d = 768
    sizes = [50257 * d] if include_token_embedding else []
    sizes.append(1024 * d)  # position embedding
    block = [d, d,                     # ln_1 weight, bias
             d * 3 * d, 3 * d,         # attn.c_attn weight, bias
             d * d, d,                 # attn.c_proj weight, bias
             d, d,                     # ln_2 weight, bias
             d * 4 * d, 4 * d,         # mlp.c_fc weight, bias
             4 * d * d, d]             # mlp.c_proj weight, bias
    sizes += block * n_layer
    sizes += [d, d]                    # ln_f weight, bias
    return sizes


def build_cases(kinds: Sequence[str], sizes: Sequence[int], quick: bool) -> list[Case]:
    rng = np.random.default_rng(2024)
    cases: list[Case] = []
    for kind in kinds:
        if kind == "sizes":
            cases += [Case(f"N={format_count(n)}", kind, [int(n)]) for n in sizes]
        elif kind == "gpt2":
            if quick:
                cases.append(Case("gpt2-small (2 of 12 blocks, no token embedding)", kind,
                                  gpt2_small_sizes(2, include_token_embedding=False),
                                  note="quick mode: a subset of GPT-2 small's shapes"))
            else:
                cases.append(Case("gpt2-small", kind, gpt2_small_sizes()))
        elif kind == "small-tensors":
            cases.append(Case("500 tensors of 16-1024", kind,
                              rng.integers(16, 1025, size=500).tolist()))
        elif kind == "medium-tensors":
            count = 200 if quick else 2000
            cases.append(Case(f"{count} tensors of 1K-64K", kind,
                              rng.integers(1024, 65537, size=count).tolist(),
                              note="quick mode: 200 instead of 2000 tensors" if quick else ""))
        elif kind == "subnormal":
            for n in ((1 << 20,) if quick else (1 << 20, 1 << 24)):
                cases.append(Case(f"subnormal N={format_count(n)}", kind, [n],
                                  note="half the rows have zero gradient and subnormal m, v",
                                  restore_each_batch=True))
        else:
            raise ValueError(f"cases: unknown case kind {kind!r}; choose from {CASE_KINDS}")
    return cases


# ---------------------------------------------------------------- buffers
@dataclasses.dataclass
class Buffers:
    """One implementation's parameters and optimizer state (lists, one array per tensor)."""

    params: list[np.ndarray]
    grads: list[np.ndarray]           # shared by all implementations, never written
    states: dict[str, list[np.ndarray]]

    def writable(self) -> list[np.ndarray]:
        arrays = list(self.params)
        for name in self.states:
            arrays += self.states[name]
        return arrays


@dataclasses.dataclass
class InitialState:
    params: list[np.ndarray]
    grads: list[np.ndarray]
    states: dict[str, list[np.ndarray]] | None  # None: every state starts at zero

    def fresh_buffers(self, optimizer: str) -> Buffers:
        params = [p.copy() for p in self.params]
        states = {}
        for name in STATE_NAMES[optimizer]:
            if self.states is not None:
                states[name] = [s.copy() for s in self.states[name]]
            else:
                states[name] = [np.zeros_like(p) for p in self.params]
        return Buffers(params, self.grads, states)


def make_initial_state(case: Case, optimizer: str, seed: int = 0) -> InitialState:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n, dtype=np.float32) * np.float32(0.02) for n in case.sizes]
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2) for n in case.sizes]
    if case.kind != "subnormal":
        return InitialState(params, grads, None)
    # Rows of 1024 elements; every other row has zero gradient and state that has
    # decayed into the subnormal range (below 2**-126 ~ 1.18e-38), as a frozen embedding
    # row's state does after enough steps. m decays by beta1 and v by beta2 each step.
    states: dict[str, list[np.ndarray]] = {}
    for name in STATE_NAMES[optimizer]:
        arrays = []
        for g in grads:
            s = np.abs(rng.standard_normal(g.size, dtype=np.float32)) * np.float32(1e-4)
            arrays.append(s)
        states[name] = arrays
    for i, g in enumerate(grads):
        rows = g.reshape(-1, 1024) if g.size % 1024 == 0 else g.reshape(1, -1)
        zero_rows = slice(0, rows.shape[0], 2)
        rows[zero_rows] = 0.0
        for name in STATE_NAMES[optimizer]:
            srows = states[name][i].reshape(rows.shape)
            if name == "state_sum":
                # AdaGrad's sum never decays: subnormal sums stay subnormal.
                srows[zero_rows] = rng.uniform(1e-41, 1e-39, size=srows[zero_rows].shape)
            else:
                srows[zero_rows] = rng.uniform(1e-40, 1e-38, size=srows[zero_rows].shape)
    return InitialState(params, grads, states)


# ---------------------------------------------------------------- implementations
class Runner:
    """Steps one implementation's buffers; ``run(k)`` takes k consecutive steps."""

    name = ""
    api = ""

    def __init__(self, optimizer: str, buffers: Buffers):
        self.optimizer = optimizer
        self.buffers = buffers
        self.hyper = HYPER[optimizer]

    def run(self, steps: int) -> None:
        raise NotImplementedError


class AdamcoreRunner(Runner):
    """adamcore with the kernels of ``isa`` (default: the active ones when created).
    The ISA is process-wide, so each batch selects its own first."""

    def __init__(self, optimizer: str, buffers: Buffers, isa: str | None = None):
        super().__init__(optimizer, buffers)
        self.name = "adamcore" if isa is None else f"adamcore[{isa}]"
        self.isa = isa or adamcore.get_isa()
        self._step = 0
        self._call = self._bind()

    def _bind(self) -> Callable[..., object]:
        b, h, opt = self.buffers, self.hyper, self.optimizer
        single = len(b.params) == 1

        def arg(arrays: list[np.ndarray]):
            # One tensor: the plain array form a user calls; several: one native call.
            return arrays[0] if single else arrays

        core = adamcore._core
        if opt == "adagrad":
            group_cls = getattr(core, "AdagradGroup", None)
            kwargs = dict(lr=h["lr"], lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                          eps=h["eps"])
            if group_cls is not None and not single:
                self.api = "AdagradGroup.step"
                group = group_cls(b.params, b.states["state_sum"])
                return functools.partial(group.step, b.grads, **kwargs)
            self.api = "adagrad_step" + ("" if single else " (lists)")
            return functools.partial(adamcore.adagrad_step, arg(b.params), arg(b.grads),
                                     arg(b.states["state_sum"]), **kwargs)

        amsgrad = opt == "amsgrad"
        decoupled = opt == "adamw"
        kwargs = dict(lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                      weight_decay=h["weight_decay"])
        group_cls = getattr(core, "AdamGroup", None)
        if group_cls is not None and not single:
            self.api = "AdamGroup.step"
            group = group_cls(b.params, b.states["exp_avg"], b.states["exp_avg_sq"],
                              b.states["max_exp_avg_sq"] if amsgrad else None)
            return functools.partial(group.step, b.grads, decoupled=decoupled, **kwargs)
        fn = adamcore.adamw_step if decoupled else adamcore.adam_step
        self.api = fn.__name__ + ("" if single else " (lists)")
        if amsgrad:
            kwargs.update(amsgrad=True, max_exp_avg_sq=arg(b.states["max_exp_avg_sq"]))
        return functools.partial(fn, arg(b.params), arg(b.grads), arg(b.states["exp_avg"]),
                                 arg(b.states["exp_avg_sq"]), **kwargs)

    def run(self, steps: int) -> None:
        adamcore.set_isa(self.isa)
        call = self._call
        first = self._step + 1
        for t in range(first, first + steps):
            call(step=t)
        self._step += steps


class NumpyRunner(Runner):
    """The same update in float32 NumPy, written for speed: in-place ufuncs and two
    preallocated scratch buffers, no temporaries per step."""

    name = "numpy"
    api = "in-place ufuncs"

    def __init__(self, optimizer: str, buffers: Buffers):
        super().__init__(optimizer, buffers)
        self._step = 0
        largest = max(p.size for p in buffers.params)
        self._scratch = (np.empty(largest, np.float32), np.empty(largest, np.float32))
        f32 = np.float32
        h = self.hyper
        self._lr, self._eps, self._wd = h["lr"], f32(h["eps"]), f32(h["weight_decay"])

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self._step += 1
            if self.optimizer == "adagrad":
                self._adagrad(self._step)
            else:
                self._adam(self._step)

    def _adam(self, t: int) -> None:
        h, f32 = self.hyper, np.float32
        b1, b2 = h["beta1"], h["beta2"]
        step_size = f32(self._lr / (1.0 - b1 ** t))
        bc2_sqrt = f32(math.sqrt(1.0 - b2 ** t))
        one_minus_b1, one_minus_b2, beta2 = f32(1.0 - b1), f32(1.0 - b2), f32(b2)
        decoupled = self.optimizer == "adamw"
        decay = f32(1.0 - self._lr * h["weight_decay"])
        amsgrad = self.optimizer == "amsgrad"
        s = self.buffers.states
        vmaxes = s["max_exp_avg_sq"] if amsgrad else s["exp_avg_sq"]
        for p, g, m, v, vmax in zip(self.buffers.params, self.buffers.grads, s["exp_avg"],
                                    s["exp_avg_sq"], vmaxes):
            t1, t2 = self._scratch[0][:p.size], self._scratch[1][:p.size]
            if self._wd and decoupled:
                p *= decay
            elif self._wd:
                np.multiply(p, self._wd, out=t2)
                t2 += g
                g = t2
            np.subtract(g, m, out=t1)          # m += (1 - beta1) (g - m)
            t1 *= one_minus_b1
            m += t1
            v *= beta2                          # v = beta2 v + (1 - beta2) g^2
            np.multiply(g, g, out=t1)
            t1 *= one_minus_b2
            v += t1
            if amsgrad:
                np.maximum(vmax, v, out=vmax)
            np.sqrt(vmax, out=t1)               # den = sqrt(v) / sqrt(bc2) + eps
            t1 /= bc2_sqrt
            t1 += self._eps
            np.divide(m, t1, out=t1)            # p -= step_size m / den
            t1 *= -step_size
            p += t1

    def _adagrad(self, t: int) -> None:
        clr = np.float32(self._lr / (1.0 + (t - 1) * self.hyper["lr_decay"]))
        for p, g, ssum in zip(self.buffers.params, self.buffers.grads,
                              self.buffers.states["state_sum"]):
            t1, t2 = self._scratch[0][:p.size], self._scratch[1][:p.size]
            if self._wd:
                np.multiply(p, self._wd, out=t2)
                t2 += g
                g = t2
            np.multiply(g, g, out=t1)           # sum += g^2
            ssum += t1
            np.sqrt(ssum, out=t1)               # p -= clr g / (sqrt(sum) + eps)
            t1 += self._eps
            np.divide(g, t1, out=t1)
            t1 *= -clr
            p += t1


def _torch_state_tensors(torch, buffers: Buffers, index: int) -> dict[str, object]:
    return {name: torch.from_numpy(arrays[index]) for name, arrays in buffers.states.items()}


class TorchRunner(Runner):
    """torch.optim over tensors that share memory with this runner's NumPy buffers."""

    VARIANTS = {"torch-default": {}, "torch-foreach": {"foreach": True},
                "torch-fused": {"fused": True}}

    def __init__(self, variant: str, optimizer: str, buffers: Buffers):
        super().__init__(optimizer, buffers)
        import torch

        self.name = variant
        flags = self.VARIANTS[variant]
        self.api = "torch.optim." + {"adamw": "AdamW", "adagrad": "Adagrad"}.get(optimizer, "Adam")
        self.api += "(" + ", ".join(f"{k}=True" for k in flags) + ")"
        params = [torch.from_numpy(p) for p in buffers.params]
        for p, g in zip(params, buffers.grads):
            p.grad = torch.from_numpy(g)
        h = self.hyper
        if optimizer == "adagrad":
            self.opt = torch.optim.Adagrad(params, lr=h["lr"], lr_decay=h["lr_decay"],
                                           eps=h["eps"], weight_decay=h["weight_decay"], **flags)
        else:
            cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
            self.opt = cls(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                           weight_decay=h["weight_decay"], amsgrad=optimizer == "amsgrad",
                           **flags)
        # Hand torch our state arrays (zero-copy) so every implementation starts from the
        # same state and the subnormal case can restore it between batches.
        torch_names = {"state_sum": "sum"}
        for i, p in enumerate(params):
            state = {torch_names.get(k, k): v
                     for k, v in _torch_state_tensors(torch, buffers, i).items()}
            state["step"] = torch.zeros((), dtype=torch.float32)
            self.opt.state[p] = state

    def run(self, steps: int) -> None:
        step = self.opt.step
        for _ in range(steps):
            step()


@functools.lru_cache(maxsize=None)
def _deepspeed_classes():
    """DeepSpeed's CPU optimizers, or None. Imported quietly: DeepSpeed logs a warning
    about choosing the CPU accelerator, and compiles its op on first use."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
            from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
            from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception:  # not installed, or its op does not build here
        return None
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    # Each DeepSpeed optimizer's constructor asks py-cpuinfo about the CPU, which runs
    # subprocesses for about a second; the answer cannot change within this process.
    with contextlib.suppress(ImportError):
        import cpuinfo

        if not hasattr(cpuinfo.get_cpu_info, "cache_info"):
            cpuinfo.get_cpu_info = functools.lru_cache(maxsize=None)(cpuinfo.get_cpu_info)
    return DeepSpeedCPUAdam, DeepSpeedCPUAdagrad


class DeepSpeedRunner(Runner):
    name = "deepspeed"

    def __init__(self, optimizer: str, buffers: Buffers):
        super().__init__(optimizer, buffers)
        import torch

        classes = _deepspeed_classes()
        if classes is None:
            raise RuntimeError("DeepSpeed is not importable")
        adam_cls, adagrad_cls = classes
        params = [torch.from_numpy(p) for p in buffers.params]
        for p, g in zip(params, buffers.grads):
            p.grad = torch.from_numpy(g)
        h = self.hyper
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if optimizer == "adagrad":
                self.api = "DeepSpeedCPUAdagrad"
                self.opt = adagrad_cls(params, lr=h["lr"], eps=h["eps"],
                                       weight_decay=h["weight_decay"])
            else:
                self.api = "DeepSpeedCPUAdam(adamw_mode=%s)" % (optimizer == "adamw")
                self.opt = adam_cls(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                                    eps=h["eps"], weight_decay=h["weight_decay"],
                                    adamw_mode=optimizer == "adamw")
        ds_names = {"state_sum": "exp_avg_sq"}  # DeepSpeed's AdaGrad calls its sum that
        for i, p in enumerate(params):
            state = {ds_names.get(k, k): v
                     for k, v in _torch_state_tensors(torch, buffers, i).items()}
            state["step"] = 0
            self.opt.state[p] = state

    def run(self, steps: int) -> None:
        step = self.opt.step
        for _ in range(steps):
            step()


def supports(implementation: str, optimizer: str) -> bool:
    return not (implementation == "deepspeed" and optimizer == "amsgrad")


def _deepspeed_works() -> bool:
    """Whether DeepSpeed's CPU op loads here. Its first use compiles it (a minute or
    more), so this is where that time goes, once, before anything is timed."""
    classes = _deepspeed_classes()
    if classes is None:
        return False
    import torch

    param = torch.zeros(16)
    param.grad = torch.ones(16)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            classes[0]([param]).step()
    except Exception as err:  # the op failed to build or load: leave DeepSpeed out
        print(f"note: DeepSpeed is installed but its CPU op does not load ({err}); "
              f"running without it", file=sys.stderr)
        return False
    return True


def available_implementations(candidates: Sequence[str] = PEERS) -> list[str]:
    """adamcore, NumPy and whichever of ``candidates`` can run here."""
    names = ["adamcore", "numpy"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return names
    names += [p for p in TorchRunner.VARIANTS if p in candidates]
    if "deepspeed" in candidates and _deepspeed_works():
        names.append("deepspeed")
    return names


def make_runner(implementation: str, optimizer: str, buffers: Buffers) -> Runner:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if implementation == "adamcore":
        return AdamcoreRunner(optimizer, buffers)
    if implementation.startswith("adamcore[") and implementation.endswith("]"):
        return AdamcoreRunner(optimizer, buffers, isa=implementation[len("adamcore["):-1])
    if implementation == "numpy":
        return NumpyRunner(optimizer, buffers)
    if implementation in TorchRunner.VARIANTS:
        return TorchRunner(implementation, optimizer, buffers)
    if implementation == "deepspeed":
        return DeepSpeedRunner(optimizer, buffers)
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


class StreamRunner:
    """The bandwidth probe: ``y += x`` over as many float32 as the case has (read x,
    read y, write y: 12 bytes per element). One thread: NumPy. More: torch's ``add_``
    (OpenMP threads, as the peers use) when torch is installed, else NumPy split across
    Python threads (NumPy releases the GIL inside the loop; slower to hand off)."""

    name = STREAM
    _SPLIT_FROM = 1 << 18  # smaller streams are not worth a thread hand-off

    def __init__(self, elements: int, pool: ThreadPoolExecutor | None):
        self.x = np.full(elements, 1e-7, np.float32)
        self.y = np.zeros(elements, np.float32)
        self.pool = pool
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.torch_xy = None
        self.set_threads(1)

    def set_threads(self, threads: int) -> None:
        self.parts, self.torch_xy = [], None
        self.api = "numpy.add(y, x, out=y)"
        n = self.x.size
        if threads < 2:
            return
        try:
            import torch
        except ImportError:
            pass
        else:
            self.torch_xy = (torch.from_numpy(self.x), torch.from_numpy(self.y))
            self.api = f"torch.Tensor.add_ ({threads} threads)"
            return
        if n >= self._SPLIT_FROM and self.pool is not None:
            bounds = [n * k // threads // 64 * 64 for k in range(threads)] + [n]
            self.parts = [(self.x[a:b], self.y[a:b]) for a, b in zip(bounds, bounds[1:])]
            self.api = f"numpy.add(y, x, out=y) in {threads} Python threads"

    def run(self, steps: int) -> None:
        if self.torch_xy is not None:
            x, y = self.torch_xy
            for _ in range(steps):
                y.add_(x)
        elif self.parts:
            for _ in range(steps):
                list(self.pool.map(_add_in_place, self.parts))
        else:
            for _ in range(steps):
                np.add(self.y, self.x, out=self.y)


def _add_in_place(xy: tuple[np.ndarray, np.ndarray]) -> None:
    np.add(xy[1], xy[0], out=xy[1])


# ---------------------------------------------------------------- threads
def openmp_runtime_paths() -> list[str]:
    """Paths of the OpenMP runtimes loaded in this process (torch bundles its own
    libgomp; DeepSpeed's op and adamcore load the system one): one path means one
    shared thread pool."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths
                  if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp")))


def _openmp_runtimes() -> list[ctypes.CDLL]:
    """Every OpenMP runtime loaded in this process, opened with ctypes."""
    libs = []
    for path in openmp_runtime_paths():
        with contextlib.suppress(OSError):
            libs.append(ctypes.CDLL(path))
    return libs


def set_all_threads(n: int) -> None:
    """Give every implementation ``n`` threads: adamcore's setting, torch's intra-op
    pool, and each OpenMP runtime's default (DeepSpeed's op uses that)."""
    adamcore.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(n)
    for lib in _openmp_runtimes():
        with contextlib.suppress(AttributeError):
            lib.omp_set_num_threads(ctypes.c_int(n))


# ---------------------------------------------------------------- checks
def max_ulp_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> int:
    """Largest distance in float32 ulps between matching elements (NaN anywhere: -1)."""
    worst = 0
    for x, y in zip(a, b):
        if x.size == 0:
            continue
        if np.isnan(x).any() or np.isnan(y).any():
            return -1
        worst = max(worst, int(ulp_distance(x, y).max()))
    return worst


def first_step_check(runners: dict[str, Runner], initial: InitialState) -> dict[str, dict]:
    """One step of every runner from the same state; compare parameters with adamcore's."""
    for runner in runners.values():
        runner.run(1)
    reference = next(iter(runners.values())).buffers.params  # adamcore's, listed first
    report = {}
    for name, runner in runners.items():
        changed = any(not np.array_equal(p, q) for p, q in zip(runner.buffers.params,
                                                               initial.params))
        abs_diff = max((float(np.abs(p - q).max()) for p, q in zip(runner.buffers.params,
                                                                    reference) if p.size),
                       default=0.0)
        # ulps say "bitwise" (0) or "a rounding apart"; near cancellation (p - update
        # close to 0) a one-ulp difference in the update is many ulps of the result, so
        # the absolute difference is given too.
        report[name] = {"param_max_ulp_vs_adamcore": max_ulp_difference(runner.buffers.params,
                                                                        reference),
                        "param_max_abs_diff_vs_adamcore": abs_diff,
                        "params_changed": changed}
    return report


def first_step_agrees(check: dict, optimizer: str) -> bool:
    """Whether one step of a peer did the same update as adamcore's: it changed the
    parameters, no NaN appeared, and no parameter is further from adamcore's than 1% of
    the learning rate (a first step moves each by about lr; roundings stay far below)."""
    return (check["params_changed"] and check["param_max_ulp_vs_adamcore"] >= 0
            and check["param_max_abs_diff_vs_adamcore"] <= 0.01 * HYPER[optimizer]["lr"])


# ---------------------------------------------------------------- timing
@dataclasses.dataclass
class Measurement:
    case: str
    kind: str
    optimizer: str
    threads: int
    implementation: str
    api: str
    elements: int
    tensors: int
    bytes_per_step: int
    steps_per_batch: int
    seconds_per_step: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds_per_step)


def _calibrate(runner, target_seconds: float, restore: Callable[[], None] | None) -> int:
    """Steps per timed batch: enough that a batch lasts about target_seconds. One step
    after other work is slower than a step in a run (cold caches and predictors), so the
    rate is taken from doubling runs of warm steps."""
    slow_runs = 0
    for _ in range(2):  # a step longer than a batch twice in a row: one step per batch
        if restore is not None:
            restore()
        start = time.perf_counter()
        runner.run(1)
        slow_runs += time.perf_counter() - start >= target_seconds
    if slow_runs == 2:
        return 1
    steps, per_step = 1, math.inf
    while True:
        if restore is not None:
            restore()
        start = time.perf_counter()
        runner.run(steps)
        elapsed = time.perf_counter() - start
        # The fastest rate seen: one run stalled by another process must not shrink
        # the batch, so at least three runs (1, 2, 4 steps) are taken.
        per_step = min(per_step, max(elapsed / steps, 1e-9))
        if (elapsed >= target_seconds / 4 and steps >= 4) or steps >= 100_000:
            break
        steps *= 2
    return int(min(100_000, max(1, round(target_seconds / per_step))))


def measure_case(case: Case, optimizer: str, thread_counts: Sequence[int],
                 implementations: Sequence[str], repeats: int, batch_seconds: float,
                 pool: ThreadPoolExecutor | None, on_repeat: Callable[[], None] = lambda: None,
                 budget_seconds: float = math.inf,
                 ) -> tuple[list[Measurement], dict[str, dict]]:
    """Times every implementation (and the stream probe) on one case, round-robin, at
    each thread count. The same buffers serve every thread count.

    After ``budget_seconds`` at one thread count, no further round starts there (every
    implementation keeps the same number of rounds). On an oversubscribed machine a
    threaded peer stepping hundreds of tensors can take seconds per step."""
    initial = make_initial_state(case, optimizer)
    runners: dict[str, Runner] = {}
    for name in implementations:
        if supports(name, optimizer):
            runners[name] = make_runner(name, optimizer, initial.fresh_buffers(optimizer))
    set_all_threads(thread_counts[0])
    check = first_step_check(runners, initial)

    stream = StreamRunner(case.elements, pool)
    timed: dict[str, object] = {**runners, STREAM: stream}
    restorers: dict[str, Callable[[], None] | None] = {name: None for name in timed}
    if case.restore_each_batch:
        for name, runner in runners.items():
            restorers[name] = functools.partial(
                _copy_all, runner.buffers.writable(), initial.fresh_buffers(optimizer).writable())
    del initial  # its arrays are not needed any more (restorers hold their own copies)

    names = list(timed)
    results = []
    for threads in thread_counts:
        set_all_threads(threads)
        stream.set_threads(threads)
        began = time.perf_counter()
        batch = {name: _calibrate(r, batch_seconds, restorers[name]) for name, r in timed.items()}
        samples: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(repeats):
            if rep > 0 and time.perf_counter() - began > budget_seconds:
                for _ in range(repeats - rep):
                    on_repeat()
                break
            # Rotate the order every round so no implementation always follows the same one.
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                if restorers[name] is not None:
                    restorers[name]()
                runner = timed[name]
                start = time.perf_counter()
                runner.run(batch[name])
                samples[name].append((time.perf_counter() - start) / batch[name])
            on_repeat()
        for name in names:
            per_element = (STREAM_BYTES_PER_ELEMENT if name == STREAM
                           else BYTES_PER_ELEMENT[optimizer])
            results.append(Measurement(case.name, case.kind, optimizer, threads, name,
                                       timed[name].api, case.elements, case.tensors,
                                       per_element * case.elements, batch[name], samples[name]))
    return results, check


def _copy_all(targets: list[np.ndarray], sources: list[np.ndarray]) -> None:
    for target, source in zip(targets, sources):
        np.copyto(target, source)


# ---------------------------------------------------------------- progress
class _SimpleProgress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.label = ""

    def set_description(self, label: str) -> None:
        self.label = label
        self._draw()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        self.stream.write(f"\r[{'#' * filled}{' ' * (width - filled)}] "
                          f"{self.done}/{self.total} {self.label[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def make_progress(total: int, enabled: bool):
    if not enabled:
        return _SimpleProgress(total, stream=io.StringIO())
    try:
        from tqdm import tqdm
    except ImportError:
        return _SimpleProgress(total)
    return tqdm(total=total, file=sys.stderr, unit="round", leave=False)


# ---------------------------------------------------------------- reporting
def format_count(n: int) -> str:
    for shift, suffix in ((20, "M"), (10, "K")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def summarize(measurements: list[Measurement]) -> list[dict]:
    """One row per measurement with medians, GB/s, % of the same group's stream and
    adamcore's speed-up over it (the first adamcore row of each group is the reference)."""
    groups: dict[tuple, dict[str, Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.case, m.optimizer, m.threads), {})[m.implementation] = m
    rows = []
    for (case, optimizer, threads), by_name in groups.items():
        stream = by_name.get(STREAM)
        stream_gbps = stream.bytes_per_step / stream.median / 1e9 if stream else None
        reference = next((n for n in by_name if n.startswith("adamcore")), None)
        ours = by_name.get(reference)
        for name, m in by_name.items():
            gbps = m.bytes_per_step / m.median / 1e9
            rows.append({
                "case": case, "kind": m.kind, "optimizer": optimizer, "threads": threads,
                "implementation": name, "api": m.api, "elements": m.elements,
                "tensors": m.tensors, "bytes_per_step": m.bytes_per_step,
                "steps_per_batch": m.steps_per_batch,
                "seconds_per_step": m.seconds_per_step,
                "median_seconds": m.median, "rounds": len(m.seconds_per_step), "gbps": gbps,
                "fraction_of_stream": gbps / stream_gbps if stream_gbps else None,
                "adamcore_speedup": (m.median / ours.median
                                     if ours and name not in (reference, STREAM) else None),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'case':<34} {'opt':<8} {'thr':>3} {'implementation':<16} "
              f"{'time/step':>11} {'GB/s':>7} {'%bw':>5} {'adamcore x':>10}")
    lines = [header, "-" * len(header)]
    previous = None
    for r in rows:
        key = (r["case"], r["optimizer"], r["threads"])
        if previous is not None and key != previous:
            lines.append("")
        previous = key
        bw = "" if r["fraction_of_stream"] is None else f"{100 * r['fraction_of_stream']:.0f}"
        speed = "" if r["adamcore_speedup"] is None else f"{r['adamcore_speedup']:.2f}x"
        lines.append(f"{r['case'][:34]:<34} {r['optimizer']:<8} {r['threads']:>3} "
                     f"{r['implementation']:<16} {format_time(r['median_seconds']):>11} "
                     f"{r['gbps']:>7.1f} {bw:>5} {speed:>10}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    """Time per step against size (single-tensor cases), log-log, one line per
    implementation, one panel per (optimizer, threads). Returns False if nothing to plot."""
    size_rows = [r for r in rows if r["kind"] == "sizes"]
    panels = sorted({(r["optimizer"], r["threads"]) for r in size_rows},
                    key=lambda k: (OPTIMIZERS.index(k[0]), k[1]))
    if not panels or len({r["elements"] for r in size_rows}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.5 * nrows), squeeze=False)
    for ax, (optimizer, threads) in zip(axes.flat, panels):
        panel = [r for r in size_rows if r["optimizer"] == optimizer and r["threads"] == threads]
        for name in dict.fromkeys(r["implementation"] for r in panel):
            pts = sorted((r["elements"], r["median_seconds"], r["bytes_per_step"]) for r in panel
                         if r["implementation"] == name)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            if name == STREAM:
                # The time a step would take if it moved its bytes at the stream's speed.
                per_elem = BYTES_PER_ELEMENT[optimizer] / STREAM_BYTES_PER_ELEMENT
                ax.plot(xs, [p[1] * per_elem for p in pts], "k--", label="bandwidth bound")
            else:
                ax.plot(xs, [p[1] for p in pts], marker="o", ms=3,
                        lw=2.5 if name.startswith("adamcore") else 1.2, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel("seconds per step (median)")
        ax.set_title(f"{optimizer}, {threads} thread{'s' if threads > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def cpu_identity() -> dict:
    """The first CPU's "model name", family, model and stepping from /proc/cpuinfo
    (family 25 model 1 is AMD Zen 3 "Milan", model 17 Zen 4 "Genoa"); the platform's
    processor string elsewhere."""
    found = {"model name": platform.processor() or platform.machine()}
    wanted = {"model name": str, "cpu family": int, "model": int, "stepping": int}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block only
                key, _, value = line.partition(":")
                key = key.strip()
                if key in wanted:
                    with contextlib.suppress(ValueError):
                        found[key] = wanted[key](value.strip())
    return {"cpu": found["model name"], "cpu_family": found.get("cpu family"),
            "cpu_model": found.get("model"), "cpu_stepping": found.get("stepping")}


def machine_info() -> dict:
    info = {**cpu_identity(), "logical_cpus": os.cpu_count(), "usable_cpus": machine_cpus(),
            "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "adamcore": adamcore.runtime_info(),
            # Other processes on the machine distort timings, threaded ones most.
            "load_average_1_5_15min": list(os.getloadavg())}
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["deepspeed"] = version("deepspeed")
    return info


# ---------------------------------------------------------------- thread crossover
def measure_thread_crossover(sizes: Sequence[int], repeats: int, batch_seconds: float,
                             on_repeat: Callable[[], None] = lambda: None) -> list[dict]:
    """adamcore's Adam step with 1 thread against 2 threads forced on (parallel
    threshold 0), interleaved per size. The smallest size from which 2 threads keep
    winning is where the threshold belongs."""
    saved_threads, saved_threshold = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    rows = []
    try:
        adamcore.set_parallel_threshold(0)
        for n in sizes:
            case = Case(f"N={format_count(n)}", "sizes", [int(n)])
            initial = make_initial_state(case, "adam")
            runner = AdamcoreRunner("adam", initial.fresh_buffers("adam"))
            times: dict[int, list[float]] = {1: [], 2: []}
            adamcore.set_num_threads(1)
            batch = _calibrate(runner, batch_seconds, None)
            for rep in range(repeats):
                for threads in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    adamcore.set_num_threads(threads)
                    start = time.perf_counter()
                    runner.run(batch)
                    times[threads].append((time.perf_counter() - start) / batch)
                on_repeat()
            one, two = statistics.median(times[1]), statistics.median(times[2])
            rows.append({"elements": int(n), "one_thread_seconds": one,
                         "two_threads_seconds": two, "speedup_two_threads": one / two,
                         "one_thread_samples": times[1], "two_thread_samples": times[2]})
    finally:
        adamcore.set_num_threads(saved_threads)
        adamcore.set_parallel_threshold(saved_threshold)
    return rows


# ---------------------------------------------------------------- contended case
# Issue 8: a step beside busy processes. Each variant (implementation, thread count)
# takes many single steps, each timed on its own; the variants take turns in rounds.
CONDITIONS = ("idle", "contended")
CONTENDED_SIZES = (1 << 16, 1 << 20)
CONTENDED_IMPLEMENTATIONS = ("adamcore", "torch-fused")
# Targets for adamcore's 2-thread step, as ratios to the 1-thread median of the same
# condition and size in the same run (issue 8).
CONTENDED_TARGETS = {"median": 1.5, "p99": 3.0}


def latency_stats(samples: Sequence[float]) -> dict:
    """Count, median, p90, p99, max and mean of per-step times in seconds (percentiles
    interpolated linearly between order statistics)."""
    if not len(samples):
        raise ValueError("latency_stats: no samples")
    a = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
    return {"count": int(a.size), "median_seconds": p50, "p90_seconds": p90,
            "p99_seconds": p99, "max_seconds": float(a.max()), "mean_seconds": float(a.mean())}


def contended_steps(elements: int, steps_at_64k: int) -> int:
    """Single steps per variant: ``steps_at_64k`` up to 64K elements, fewer above
    (1000 -> 200 at 1M: about the same wall time per size on one free core)."""
    if elements <= 1 << 16:
        return steps_at_64k
    return max(min(10, steps_at_64k), round(steps_at_64k * ((1 << 16) / elements) ** 0.58))


def _visit_length(total: int, most: int) -> int:
    """Steps a variant takes per visit: at least 20 rounds when there are enough steps."""
    return max(1, min(most, total // 20))


def _torch_module():
    """torch if this process has already imported it (then its thread count is set with
    adamcore's), else None. Never imports it."""
    return sys.modules.get("torch")


def _use_threads(threads: int) -> None:
    """adamcore's and (if loaded) torch's intra-op thread count."""
    adamcore.set_num_threads(threads)
    torch = _torch_module()
    if torch is not None:
        torch.set_num_threads(threads)


def _single_step(runner: Runner) -> Callable[[], object]:
    """A callable that takes exactly one step of ``runner`` with nothing else in it (the
    ISA is selected here, once, not inside the timed call)."""
    if isinstance(runner, AdamcoreRunner):
        adamcore.set_isa(runner.isa)
        call = runner._call

        def step() -> object:
            runner._step += 1
            return call(step=runner._step)

        return step
    if isinstance(runner, (TorchRunner, DeepSpeedRunner)):
        return runner.opt.step
    return functools.partial(runner.run, 1)


@dataclasses.dataclass
class _StepVariant:
    implementation: str
    threads: int
    api: str
    step: Callable[[], object]


def _time_single_steps(variants: Sequence[_StepVariant], steps: int, budget_seconds: float,
                       on_round: Callable[[], None]) -> tuple[list[list[float]], int]:
    """Every variant takes ``steps`` single steps, each timed alone, in rounds: each
    round visits the variants in rotated order, and each visit sets the variant's
    threads, takes one untimed step (the first after a switch), then its timed steps.
    No round starts after ``budget_seconds``; every variant gets the same count."""
    block = _visit_length(steps, 20)
    rounds = -(-steps // block)
    for v in variants:  # warm-up: caches, page faults, thread pools
        _use_threads(v.threads)
        for _ in range(3):
            v.step()
    samples: list[list[float]] = [[] for _ in variants]
    clock = time.perf_counter
    began = clock()
    done = 0
    for r in range(rounds):
        if r and clock() - began > budget_seconds:
            for _ in range(rounds - r):
                on_round()
            break
        k = min(block, steps - r * block)
        for i in (list(range(len(variants)))[r % len(variants):]
                  + list(range(len(variants)))[:r % len(variants)]):
            v, out = variants[i], samples[i]
            _use_threads(v.threads)
            step = v.step
            step()
            for _ in range(k):
                start = clock()
                step()
                out.append(clock() - start)
        done += 1
        on_round()
    return samples, done


def contended_rounds(sizes: Sequence[int], steps_at_64k: int,
                     conditions: Sequence[str] = CONDITIONS) -> int:
    """Rounds the contended case will run (for a progress bar)."""
    per = [-(-contended_steps(n, steps_at_64k) // _visit_length(
        contended_steps(n, steps_at_64k), 20)) for n in sizes]
    return sum(per) * len(conditions)


def threading_snapshot() -> dict | None:
    """The extension's threading counters, if this build exposes any
    (``threading_status()``, e.g. stalls or steps run alone); None otherwise."""
    fn = (getattr(adamcore._core, "threading_status", None)
          or getattr(adamcore, "threading_status", None))
    if fn is None:
        return None
    try:
        value = fn()
    except Exception as err:  # a build in progress: record, do not fail the run
        return {"error": repr(err)}
    if not isinstance(value, dict):
        value = {k: getattr(value, k) for k in dir(value)
                 if not k.startswith("_") and not callable(getattr(value, k))} or {
                     "repr": repr(value)}
    return {str(k): (v if isinstance(v, (bool, int, float, str, type(None))) else repr(v))
            for k, v in value.items()}


def _spinners_for(condition: str, spinners: int | None):
    from ._contention import Spinners

    return Spinners(spinners) if condition == "contended" else None


def measure_contended(sizes: Sequence[int] = CONTENDED_SIZES,
                      threads: Sequence[int] = (1, 2),
                      implementations: Sequence[str] = CONTENDED_IMPLEMENTATIONS,
                      steps_at_64k: int = 1000, conditions: Sequence[str] = CONDITIONS,
                      spinners: int | None = None, budget_seconds: float = math.inf,
                      on_round: Callable[[], None] = lambda: None) -> dict:
    """Adam's step at each size, one step at a time, for every (implementation, thread
    count), on a free machine ("idle") and beside ``spinners`` busy processes
    ("contended"; default one per usable CPU) that this function starts and always
    stops. Returns rows of latency statistics, the 2-thread/1-thread ratios with the
    issue's targets, and what the spinners got."""
    threads = sorted(set(threads) | {1})
    unknown = [i for i in implementations if i not in CONTENDED_IMPLEMENTATIONS]
    if unknown:
        raise ValueError(f"contended case: implementations must be among "
                         f"{CONTENDED_IMPLEMENTATIONS}, got {unknown}")
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"conditions must be among {CONDITIONS}, got {bad}")
    variants: dict[int, list[_StepVariant]] = {}
    for n in sizes:
        initial = make_initial_state(Case(f"N={format_count(n)}", "sizes", [int(n)]), "adam")
        variants[n] = []
        for name in implementations:
            for t in threads:
                runner = make_runner(name, "adam", initial.fresh_buffers("adam"))
                variants[n].append(_StepVariant(name, t, runner.api, _single_step(runner)))
    torch = _torch_module()
    began = time.perf_counter()
    saved = (adamcore.get_num_threads(), adamcore.get_isa(),
             torch.get_num_threads() if torch is not None else None)
    gc_was_enabled = gc.isenabled()
    rows: list[dict] = []
    condition_info: list[dict] = []
    try:
        for condition in conditions:
            info: dict = {"condition": condition, "load_average_before": os.getloadavg()[0],
                          "threading_status_before": threading_snapshot()}
            spin = _spinners_for(condition, spinners)
            try:
                if spin is not None:
                    spin.start()
                for n in sizes:
                    gc.collect()
                    gc.disable()
                    wanted = contended_steps(n, steps_at_64k)
                    samples, done = _time_single_steps(variants[n], wanted, budget_seconds,
                                                       on_round)
                    if gc_was_enabled:
                        gc.enable()
                    for v, s in zip(variants[n], samples):
                        rows.append({"condition": condition, "elements": int(n),
                                     "implementation": v.implementation, "threads": v.threads,
                                     "api": v.api, "steps_wanted": wanted, "rounds": done,
                                     **latency_stats(s), "samples_seconds": s})
            finally:
                if spin is not None:
                    spin.stop()
                    info["spinners"] = spin.report()
            info["load_average_after"] = os.getloadavg()[0]
            info["threading_status_after"] = threading_snapshot()
            condition_info.append(info)
    finally:
        if gc_was_enabled:
            gc.enable()
        adamcore.set_num_threads(saved[0])
        adamcore.set_isa(saved[1])
        if torch is not None:
            torch.set_num_threads(saved[2])
    return {"optimizer": "adam", "hyperparameters": HYPER["adam"], "sizes": list(sizes),
            "cpu": cpu_identity(), "usable_cpus": machine_cpus(),
            "elapsed_seconds": time.perf_counter() - began,
            "threads": threads, "implementations": list(implementations),
            "steps_at_64k": steps_at_64k,
            "method": "single steps, each timed alone with perf_counter; variants take turns "
                      "in rounds (rotated order); each visit sets the variant's threads "
                      "(adamcore's and torch's), takes one untimed step, then its timed "
                      "steps; Python's garbage collector off while timing",
            "parallel_threshold": adamcore.get_parallel_threshold(),
            "openmp_runtimes": openmp_runtime_paths(),
            "conditions": condition_info, "rows": rows, "ratios": contended_ratios(rows),
            "targets": {"two_thread_median_over_one_thread_median_at_most":
                        CONTENDED_TARGETS["median"],
                        "two_thread_p99_over_one_thread_median_at_most":
                        CONTENDED_TARGETS["p99"],
                        "applies_to": "adamcore, contended, 2 threads, every size"}}


def contended_ratios(rows: Sequence[dict]) -> list[dict]:
    """For each (condition, size, implementation) and thread count t > 1: the t-thread
    median and p99 over the 1-thread median of the same condition and size. Targets are
    judged for adamcore's 2-thread step in the contended condition (None elsewhere)."""
    by_key = {(r["condition"], r["elements"], r["implementation"], r["threads"]): r
              for r in rows}
    out = []
    for (condition, n, name, t), r in by_key.items():
        one = by_key.get((condition, n, name, 1))
        if t == 1 or one is None:
            continue
        median_ratio = r["median_seconds"] / one["median_seconds"]
        p99_ratio = r["p99_seconds"] / one["median_seconds"]
        judged = name == "adamcore" and condition == "contended" and t == 2
        out.append({"condition": condition, "elements": n, "implementation": name,
                    "threads": t, "median_over_one_thread_median": median_ratio,
                    "p99_over_one_thread_median": p99_ratio,
                    # Not a target: how much of the tail a single thread has too (one
                    # thread is preempted by busy processes as well).
                    "p99_over_one_thread_p99": r["p99_seconds"] / one["p99_seconds"],
                    "median_target_met": (median_ratio <= CONTENDED_TARGETS["median"]
                                          if judged else None),
                    "p99_target_met": (p99_ratio <= CONTENDED_TARGETS["p99"]
                                       if judged else None)})
    return out


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}" if seconds < 0.1 else f"{seconds * 1e6:,.0f}"


def _condition_lines(result: dict) -> List[str]:
    """One line per condition: the load before it, its busy processes, the stalls."""
    lines = []
    for info in result["conditions"]:
        spin = info.get("spinners")
        text = f"  {info['condition']}: load average {info['load_average_before']:.1f} before"
        if spin:
            shares = spin.get("cpu_share_each")
            text += (f"; {spin['count']} busy processes"
                     + (f" (each got {', '.join(f'{s:.0%}' for s in shares)} of a CPU)"
                        if shares else ""))
        lines.append(text + _stall_text(info))
    return lines


def format_contended(result: dict) -> str:
    lines = [f"Contended case: {result['optimizer']} step, one step at a time "
             f"(up to {result['steps_at_64k']} single steps per variant at 64K, fewer above); "
             f"times in us; {_cpu_text(result)}; {result['elapsed_seconds']:.1f} s"]
    lines += _condition_lines(result)
    header = (f"{'condition':<10} {'size':>5} {'implementation':<14} {'thr':>3} "
              f"{'median':>9} {'p90':>9} {'p99':>9} {'max':>9} {'steps':>6}")
    lines += [header, "-" * len(header)]
    previous = None
    for r in result["rows"]:
        key = (r["condition"], r["elements"])
        if previous is not None and key != previous:
            lines.append("")
        previous = key
        lines.append(f"{r['condition']:<10} {format_count(r['elements']):>5} "
                     f"{r['implementation']:<14} {r['threads']:>3} {_us(r['median_seconds']):>9} "
                     f"{_us(r['p90_seconds']):>9} {_us(r['p99_seconds']):>9} "
                     f"{_us(r['max_seconds']):>9} {r['count']:>6}")
    lines.append("")
    t = CONTENDED_TARGETS
    lines.append(f"Ratios to the 1-thread median of the same condition and size "
                 f"(targets, adamcore contended 2 threads: median <= {t['median']}x, "
                 f"p99 <= {t['p99']}x)")
    header = (f"{'condition':<10} {'size':>5} {'implementation':<14} {'thr':>3} "
              f"{'median/1t':>10} {'p99/1t':>10} {'p99/1t p99':>10}  targets")
    lines += [header, "-" * len(header)]
    for q in result["ratios"]:
        verdict = ""
        if q["median_target_met"] is not None:
            verdict = (f"median {'met' if q['median_target_met'] else 'MISSED'}, "
                       f"p99 {'met' if q['p99_target_met'] else 'MISSED'}")
        lines.append(f"{q['condition']:<10} {format_count(q['elements']):>5} "
                     f"{q['implementation']:<14} {q['threads']:>3} "
                     f"{q['median_over_one_thread_median']:>9.2f}x "
                     f"{q['p99_over_one_thread_median']:>9.2f}x "
                     f"{q['p99_over_one_thread_p99']:>9.2f}x  {verdict}")
    lines.append("median/1t, p99/1t: over the 1-thread median; p99/1t p99: over the 1-thread "
                 "p99 (no target; the tail one thread has too)")
    lines += _busy_machine_notes(result)
    return "\n".join(lines)


def stall_delta(info: dict) -> int | None:
    """How many stalls the extension counted during one condition (builds that report
    ``threading_status()['stalls']``), else None."""
    before = info.get("threading_status_before") or {}
    after = info.get("threading_status_after") or {}
    if isinstance(before.get("stalls"), int) and isinstance(after.get("stalls"), int):
        return after["stalls"] - before["stalls"]
    return None


def _stall_text(info: dict) -> str:
    delta = stall_delta(info)
    return "" if delta is None else f"; adamcore counted {delta} stalls"


def _cpu_text(result: dict) -> str:
    cpu = result.get("cpu") or {}
    return (f"{cpu.get('cpu')} (family {cpu.get('cpu_family')}, model {cpu.get('cpu_model')}), "
            f"{result.get('usable_cpus')} usable CPUs")


def _busy_machine_notes(result: dict) -> list[str]:
    """Warnings when other processes were running: then 'idle' was not idle."""
    cpus = machine_cpus()
    notes = []
    for info in result["conditions"]:
        if info["condition"] == "idle" and info["load_average_before"] >= 0.5 * cpus:
            notes.append(f"note: the machine was busy during 'idle' (load average "
                         f"{info['load_average_before']:.1f} on {cpus} CPUs): other "
                         f"processes contended with every row")
        shares = (info.get("spinners") or {}).get("cpu_share_each")
        if shares and min(shares) < 0.5:
            notes.append(f"note: the busy processes got only "
                         f"{', '.join(f'{s:.0%}' for s in shares)} of a CPU: other "
                         f"processes competed with them too")
    return notes


def machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------- training-loop case
TRAIN_DIMS = (256, 1024, 640, 256)  # 1,086,592 parameters in 10 tensors
TRAIN_BATCH = 32


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_mlp(torch, dims: Sequence[int] = TRAIN_DIMS, seed: int = 0):
    """Linear layers of ``dims``; GELU and LayerNorm after every hidden layer."""
    nn = torch.nn
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.GELU(), nn.LayerNorm(b)]
    return nn.Sequential(*layers)


def train_rounds(iterations: int, conditions: Sequence[str] = CONDITIONS) -> int:
    return -(-iterations // _visit_length(iterations, 10)) * len(conditions)


def measure_train_loop(iterations: int = 200, batch: int = TRAIN_BATCH,
                       dims: Sequence[int] = TRAIN_DIMS, adamcore_threads: Sequence[int] = (1, 2),
                       include_torch_fused: bool = True, conditions: Sequence[str] = CONDITIONS,
                       spinners: int | None = None, budget_seconds: float = math.inf,
                       torch_threads: int | None = None, warmup: int = 2,
                       on_round: Callable[[], None] = lambda: None) -> dict:
    """A real training loop on the CPU: an MLP's forward and backward (torch's own
    OpenMP threads), then the optimizer step, for ``adamcore.torch.AdamW`` with each of
    ``adamcore_threads`` and for ``torch.optim.AdamW(fused=True)``. Each variant trains
    its own copy of the same model on the same batch; the variants take turns in rounds.
    Times the step alone and the whole iteration (zero_grad, forward, backward, step)."""
    import copy

    import torch

    import adamcore.torch as adamcore_torch

    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"conditions must be among {CONDITIONS}, got {bad}")
    saved = (adamcore.get_num_threads(), torch.get_num_threads())
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    torch_threads_used = torch.get_num_threads()
    base = build_mlp(torch, dims)
    params = sum(p.numel() for p in base.parameters())
    tensors = sum(1 for _ in base.parameters())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, dims[0], generator=gen)
    y = torch.randn(batch, dims[-1], generator=gen)
    loss_fn = torch.nn.functional.mse_loss
    hyper = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

    variants = []  # (name, adamcore threads or None, api, model, optimizer)
    for t in adamcore_threads:
        model = copy.deepcopy(base)
        variants.append(("adamcore", t, "adamcore.torch.AdamW", model,
                         adamcore_torch.AdamW(model.parameters(), **hyper)))
    if include_torch_fused:
        model = copy.deepcopy(base)
        variants.append(("torch-fused", None, "torch.optim.AdamW(fused=True)", model,
                         torch.optim.AdamW(model.parameters(), fused=True, **hyper)))
    if not variants:
        raise ValueError("train loop: no variants to run")

    clock = time.perf_counter

    def iterate(model, opt, out: list | None) -> None:
        start = clock()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        mid = clock()
        opt.step()
        end = clock()
        if out is not None:
            out.append((end - start, mid - start, end - mid))

    block = _visit_length(iterations, 10)
    rounds = -(-iterations // block)
    began_all = clock()
    rows: list[dict] = []
    condition_info: list[dict] = []
    gc_was_enabled = gc.isenabled()
    try:
        for condition in conditions:
            info: dict = {"condition": condition, "load_average_before": os.getloadavg()[0],
                          "threading_status_before": threading_snapshot()}
            spin = _spinners_for(condition, spinners)
            samples: list[list[tuple[float, float, float]]] = [[] for _ in variants]
            done = 0
            try:
                if spin is not None:
                    spin.start()
                for name, t, _, model, opt in variants:
                    if t is not None:
                        adamcore.set_num_threads(t)
                    for _ in range(warmup):
                        iterate(model, opt, None)
                gc.collect()
                gc.disable()
                began = clock()
                for r in range(rounds):
                    if r and clock() - began > budget_seconds:
                        for _ in range(rounds - r):
                            on_round()
                        break
                    k = min(block, iterations - r * block)
                    order = list(range(len(variants)))
                    order = order[r % len(order):] + order[:r % len(order)]
                    for i in order:
                        name, t, _, model, opt = variants[i]
                        if t is not None:
                            adamcore.set_num_threads(t)
                        for _ in range(k):
                            iterate(model, opt, samples[i])
                    done += 1
                    on_round()
                if gc_was_enabled:
                    gc.enable()
            finally:
                if spin is not None:
                    spin.stop()
                    info["spinners"] = spin.report()
            info["load_average_after"] = os.getloadavg()[0]
            info["threading_status_after"] = threading_snapshot()
            condition_info.append(info)
            for (name, t, api, _, _), s in zip(variants, samples):
                whole = [a for a, _, _ in s]
                fwd_bwd = [b for _, b, _ in s]
                step = [c for _, _, c in s]
                rows.append({"condition": condition, "implementation": name,
                             "adamcore_threads": t, "api": api, "rounds": done,
                             "step": latency_stats(step), "iteration": latency_stats(whole),
                             "forward_backward": latency_stats(fwd_bwd),
                             "step_samples_seconds": step, "iteration_samples_seconds": whole})
    finally:
        if gc_was_enabled:
            gc.enable()
        adamcore.set_num_threads(saved[0])
        torch.set_num_threads(saved[1])

    reference = variants[-1][3] if include_torch_fused else variants[0][3]
    drift = {}
    with torch.no_grad():
        for name, t, _, model, _ in variants:
            label = name if t is None else f"{name} {t}t"
            drift[label] = max(float((a - b).abs().max()) for a, b in
                               zip(model.parameters(), reference.parameters()))
    changed = any(not torch.equal(a, b) for a, b in zip(variants[0][3].parameters(),
                                                        base.parameters()))
    for r in rows:
        ref = next((q for q in rows if q["condition"] == r["condition"]
                    and q["implementation"] == "torch-fused"), None)
        r["step_median_over_torch_fused"] = (r["step"]["median_seconds"]
                                             / ref["step"]["median_seconds"] if ref else None)
        r["iteration_median_over_torch_fused"] = (
            r["iteration"]["median_seconds"] / ref["iteration"]["median_seconds"]
            if ref else None)
    shape = "-".join(str(d) for d in dims)
    return {"model": f"MLP {shape}" + (" (GELU, LayerNorm after each hidden layer)"
                                       if len(dims) > 2 else "") + ", MSE loss",
            "parameters": int(params), "tensors": int(tensors), "batch": int(batch),
            "cpu": cpu_identity(), "usable_cpus": machine_cpus(),
            "elapsed_seconds": clock() - began_all,
            "torch_threads": torch_threads_used, "iterations": iterations,
            "warmup_iterations": warmup, "hyperparameters": {**hyper, "betas": list(hyper["betas"])},
            "method": "each variant trains its own copy of the same model on one fixed batch; "
                      "variants take turns in rounds (rotated order); 'step' is perf_counter "
                      "around opt.step(), 'iteration' is zero_grad + forward + backward + step; "
                      "Python's garbage collector off while timing",
            "openmp_runtimes": openmp_runtime_paths(),
            "conditions": condition_info, "rows": rows,
            "param_max_abs_diff_vs_" + ("torch_fused" if include_torch_fused else "first"): drift,
            "params_changed": changed}


def format_train_loop(result: dict) -> str:
    lines = [f"Training loop: {result['model']}, {result['parameters']:,} parameters in "
             f"{result['tensors']} tensors, batch {result['batch']}, torch threads "
             f"{result['torch_threads']}; times in us; {_cpu_text(result)}; "
             f"{result['elapsed_seconds']:.1f} s"]
    lines += _condition_lines(result)
    header = (f"{'condition':<10} {'optimizer':<31} {'ac thr':>6} {'step med':>9} "
              f"{'step p90':>9} {'iter med':>9} {'iter p90':>9} {'/fused':>7} {'iters':>6}")
    lines += [header, "-" * len(header)]
    previous = None
    for r in result["rows"]:
        if previous is not None and r["condition"] != previous:
            lines.append("")
        previous = r["condition"]
        ratio = r["step_median_over_torch_fused"]
        lines.append(f"{r['condition']:<10} {r['api']:<31} "
                     f"{'-' if r['adamcore_threads'] is None else r['adamcore_threads']:>6} "
                     f"{_us(r['step']['median_seconds']):>9} {_us(r['step']['p90_seconds']):>9} "
                     f"{_us(r['iteration']['median_seconds']):>9} "
                     f"{_us(r['iteration']['p90_seconds']):>9} "
                     f"{'' if ratio is None else f'{ratio:.2f}':>7} {r['step']['count']:>6}")
    lines.append("ac thr: adamcore's threads (torch's thread count is fixed for the whole run); "
                 "/fused: step median / torch fused's step median, same condition")
    lines += _busy_machine_notes(result)
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def _size(text: str) -> int:
    """'4096', '4K', '16M' or '2^20'."""
    t = text.strip().upper()
    try:
        if t.startswith("2^"):
            value = 1 << int(t[2:])
        elif t.endswith("K"):
            value = int(t[:-1]) << 10
        elif t.endswith("M"):
            value = int(t[:-1]) << 20
        else:
            value = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4096, 64K, 16M or 2^20, "
                                         f"got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="benchmark adamcore against NumPy, torch and DeepSpeed",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a short run (under a minute): fewer sizes, Adam only, a GPT-2 "
                             "subset, 200 medium tensors, fewer repeats; contended: 300 "
                             "steps at 64K; train-loop: 40 iterations")
    parser.add_argument("--sizes", type=_size, nargs="+", metavar="N",
                        help="single-tensor sizes (e.g. 4K 64K 1M 16M)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, metavar="OPT",
                        help=f"optimizers to run, from {', '.join(OPTIMIZERS)}")
    parser.add_argument("--threads", type=positive_int, nargs="+", metavar="T",
                        help="thread counts (default: 1 2)")
    parser.add_argument("--cases", nargs="+", choices=ALL_KINDS, metavar="CASE",
                        help=f"case kinds to run, from {', '.join(ALL_KINDS)} (default: all). "
                             f"contended: Adam single steps at 64K and 1M with 1 and 2 "
                             f"threads, idle and beside busy processes it starts itself; "
                             f"train-loop: an MLP's forward, backward and AdamW step "
                             f"(needs torch), idle and contended")
    parser.add_argument("--peers", nargs="+", choices=PEERS, metavar="PEER",
                        help=f"peers to run, from {', '.join(PEERS)} (default: every one "
                             f"installed)")
    parser.add_argument("--isas", nargs="+", metavar="ISA",
                        help="run adamcore once per listed ISA, interleaved with the rest "
                             "(the first is the reference for speed-ups); default: the "
                             "active ISA only")
    parser.add_argument("--repeats", type=positive_int,
                        help="timed rounds per case (default: 5 quick, 11 full)")
    parser.add_argument("--batch-ms", type=float,
                        help="target duration of one timed batch in ms (default: 1 quick, 10)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="stop starting rounds for a (case, optimizer, threads) group "
                             "after this long; contended: per (condition, size), train-loop: "
                             "per condition (default: 3 quick, 120)")
    parser.add_argument("--contended-sizes", type=_size, nargs="+", metavar="N",
                        help="sizes for the contended case (default: 64K 1M)")
    parser.add_argument("--steps", type=positive_int, metavar="N",
                        help="contended case: single steps per variant at 64K, fewer at larger "
                             "sizes (200 of 1000 at 1M) (default: 1000; 300 quick)")
    parser.add_argument("--iterations", type=positive_int, metavar="N",
                        help="train-loop case: timed iterations per variant and condition "
                             "(default: 200; 40 quick)")
    parser.add_argument("--train-batch", type=positive_int, metavar="N",
                        help=f"train-loop case: batch size (default: {TRAIN_BATCH})")
    parser.add_argument("--train-dims", type=positive_int, nargs="+", metavar="D",
                        help="train-loop case: the MLP's layer widths, input to output "
                             f"(default: {' '.join(map(str, TRAIN_DIMS))})")
    parser.add_argument("--train-torch-threads", type=positive_int, metavar="N",
                        help="train-loop case: torch's intra-op threads (default: torch's "
                             "own default)")
    parser.add_argument("--spinners", type=positive_int, metavar="N",
                        help="busy processes for the contended conditions (default: one per "
                             "usable CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="directory for bench.json and bench.png (default: ./bench-results)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--crossover", action="store_true",
                        help="instead: adamcore 1 vs 2 threads at 4K..1M (threshold forced "
                             "to 0), to place the parallel threshold")
    _bench_engine.add_arguments(parser)
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    if args.engine:
        return _bench_engine.run(args)
    quick = args.quick
    repeats = args.repeats or (5 if quick else 11)
    batch_seconds = (args.batch_ms if args.batch_ms is not None else (1 if quick else 10)) / 1e3
    if batch_seconds <= 0:
        raise SystemExit("--batch-ms must be > 0")
    budget = args.budget if args.budget is not None else (3.0 if quick else 120.0)
    if not budget > 0:
        raise SystemExit("--budget must be > 0")
    if args.train_dims is not None and len(args.train_dims) < 2:
        raise SystemExit("--train-dims: give at least an input and an output width")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.crossover:
        return _run_crossover(args, repeats, batch_seconds)

    sizes = args.sizes or (QUICK_SIZES if quick else FULL_SIZES)
    optimizers = args.optimizers or (("adam",) if quick else OPTIMIZERS)
    threads_list = list(dict.fromkeys(args.threads or (1, 2)))
    kinds = args.cases or ALL_KINDS
    special = [k for k in kinds if k in SPECIAL_KINDS]
    kinds = [k for k in kinds if k in CASE_KINDS]
    wanted = args.peers if args.peers is not None else PEERS
    installed = available_implementations(wanted)
    missing = [p for p in wanted if p not in installed]
    if args.peers is not None and missing:
        raise SystemExit(f"--peers: not installed here: {', '.join(missing)}")
    if args.isas:
        unknown = [i for i in args.isas if i not in adamcore.available_isas()]
        if unknown:
            raise SystemExit(f"--isas: not supported on this CPU: {', '.join(unknown)} "
                             f"(available: {', '.join(adamcore.available_isas())})")
        ours = [f"adamcore[{isa}]" for isa in dict.fromkeys(args.isas)]
    else:
        ours = ["adamcore"]
    implementations = ours + [p for p in PEERS if p in wanted and p in installed]

    machine = machine_info()  # before the run: its load average is the one that matters
    cases = build_cases(kinds, sizes, quick)
    groups = [(c, o) for c in cases for o in optimizers]
    contended_sizes = args.contended_sizes or CONTENDED_SIZES
    steps_at_64k = args.steps or (300 if quick else 1000)
    iterations = args.iterations or (40 if quick else 200)
    contended_impls = [i for i in CONTENDED_IMPLEMENTATIONS if i in implementations]
    run_train = "train-loop" in special and torch_available()
    total = len(groups) * len(threads_list) * repeats
    if "contended" in special:
        total += contended_rounds(contended_sizes, steps_at_64k)
    if run_train:
        total += train_rounds(iterations)
    progress = make_progress(total, not args.no_progress)
    measurements: list[Measurement] = []
    checks = []
    contended: dict | None = None
    train_loop: dict | None = None
    started = time.perf_counter()
    saved_threads, saved_isa = adamcore.get_num_threads(), adamcore.get_isa()
    with ThreadPoolExecutor(max_workers=max(threads_list)) as pool:
        try:
            for case, optimizer in groups:
                progress.set_description(f"{case.name[:24]} {optimizer}")
                found, check = measure_case(case, optimizer, threads_list, implementations,
                                            repeats, batch_seconds, pool,
                                            on_repeat=lambda: progress.update(1),
                                            budget_seconds=budget)
                measurements += found
                checks.append({"case": case.name, "optimizer": optimizer, "first_step": check})
            set_all_threads(saved_threads)
            if "contended" in special:
                progress.set_description("contended")
                contended = measure_contended(
                    contended_sizes, threads_list, contended_impls, steps_at_64k,
                    spinners=args.spinners, budget_seconds=budget,
                    on_round=lambda: progress.update(1))
            if run_train:
                progress.set_description("train-loop")
                train_loop = measure_train_loop(
                    iterations, batch=args.train_batch or TRAIN_BATCH, spinners=args.spinners,
                    torch_threads=args.train_torch_threads,
                    dims=tuple(args.train_dims or TRAIN_DIMS), warmup=1 if quick else 2,
                    include_torch_fused="torch-fused" in implementations,
                    budget_seconds=budget, on_round=lambda: progress.update(1))
        finally:
            progress.close()
            set_all_threads(saved_threads)
            adamcore.set_isa(saved_isa)
    elapsed = time.perf_counter() - started

    rows = summarize(measurements)
    notes = [f"{c.name}: {c.note}" for c in cases if c.note]
    if rows:
        print(format_table(rows))
        print()
        print("time/step: median of %d rounds, implementations interleaved; GB/s: bytes a "
              "step must move (Adam/AdamW 28, AMSGrad 36, AdaGrad 20 per element) / time; "
              "%%bw: of the in-place stream (y += x, 12 B/element, same size and threads, "
              "same run; NumPy on 1 thread, torch add_ on more); "
              "adamcore x: this row's time / adamcore's. NumPy runs on one thread." % repeats)
    if contended is not None:
        print()
        print(format_contended(contended))
        short = [r for r in contended["rows"] if r["count"] < r["steps_wanted"]]
        for r in short[:1]:
            print(f"note: contended: --budget reached; some variants took fewer steps than "
                  f"wanted (e.g. {r['condition']} {format_count(r['elements'])}: "
                  f"{r['count']} of {r['steps_wanted']})")
    if "train-loop" in special:
        print()
        if train_loop is not None:
            print(format_train_loop(train_loop))
            cut = [r for r in train_loop["rows"] if r["step"]["count"] < iterations]
            if cut:
                print(f"note: train-loop: --budget reached; {cut[0]['condition']}: "
                      f"{cut[0]['step']['count']} of {iterations} iterations")
        else:
            notes.append("train-loop: skipped (torch is not installed)")
    for note in notes:
        print("note: " + note)
    cut = sorted({(r["case"], r["optimizer"], r["threads"], r["rounds"]) for r in rows
                  if r["rounds"] < repeats})
    for case, optimizer, threads, rounds in cut:
        print(f"note: {case}, {optimizer}, {threads} thread(s): {rounds} of {repeats} rounds "
              f"(--budget reached)")
    print(f"load average (1 min) at the start: {machine['load_average_1_5_15min'][0]:.1f} "
          f"on {machine['logical_cpus']} logical CPUs")
    bad = [(c["case"], c["optimizer"], name, v)
           for c in checks for name, v in c["first_step"].items()
           if not first_step_agrees(v, c["optimizer"])]
    for case, optimizer, name, v in bad:
        print(f"warning: {name} on {case} ({optimizer}) after one step: {v}")
    print(f"finished in {elapsed:.1f} s")

    result = {"machine": machine, "settings": {
        "quick": quick, "repeats": repeats, "batch_seconds": batch_seconds,
        "budget_seconds": budget,
        "threads": list(threads_list), "optimizers": list(optimizers),
        "cases": list(kinds) + special, "implementations": implementations,
        "hyperparameters": HYPER,
        "bandwidth_probe": "y += x over the case's element count, 12 bytes per element: "
                           "numpy.add on one thread; torch add_ on more (NumPy in Python "
                           "threads without torch); each row's 'api' says which",
        "special_cases": special, "contended_sizes": list(contended_sizes),
        "steps_at_64k": steps_at_64k, "train_iterations": iterations,
        "spinners": args.spinners},
        "notes": notes, "results": rows, "first_step_checks": checks,
        "contended": contended,
        "train_loop": (train_loop if train_loop is not None or "train-loop" not in special
                       else {"skipped": "torch is not installed"}),
        "elapsed_seconds": elapsed, "load_average_at_end": list(os.getloadavg())}
    json_path = args.out / "bench.json"
    json_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = args.out / "bench.png"
        if plot(rows, png):
            print(f"wrote {png}")
    return 1 if bad else 0


def _run_crossover(args: argparse.Namespace, repeats: int, batch_seconds: float) -> int:
    sizes = args.sizes or tuple(1 << k for k in range(12, 21))
    progress = make_progress(len(sizes) * repeats, not args.no_progress)
    try:
        rows = measure_thread_crossover(sizes, repeats, batch_seconds,
                                        on_repeat=lambda: progress.update(1))
    finally:
        progress.close()
    print(f"{'elements':>10} {'1 thread':>11} {'2 threads':>11} {'2t speed-up':>11}")
    for r in rows:
        print(f"{format_count(r['elements']):>10} {format_time(r['one_thread_seconds']):>11} "
              f"{format_time(r['two_threads_seconds']):>11} {r['speedup_two_threads']:>10.2f}x")
    crossover = next((r["elements"] for i, r in enumerate(rows)
                      if all(s["speedup_two_threads"] > 1.0 for s in rows[i:])), None)
    print("two threads win from:", format_count(crossover) if crossover else "never (in range)")
    path = args.out / "crossover.json"
    path.write_text(json.dumps({"machine": machine_info(), "repeats": repeats, "rows": rows,
                                "two_threads_win_from": crossover}, indent=1))
    print(f"wrote {path}")
    return 0
