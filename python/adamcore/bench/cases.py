"""The benchmark's cases: optimizers, hyperparameters, sizes, the tensors every
implementation steps, and the initial state they start from."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


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


QUICK_SIZES = (1 << 12, 1 << 16, 1 << 20, 1 << 24)
FULL_SIZES = tuple(1 << k for k in range(12, 27, 2))  # 4K ... 64M
CASE_KINDS = ("sizes", "gpt2", "small-tensors", "medium-tensors", "subnormal", "layouts")
# Cases with their own measurement (single steps under load; a torch training loop).
SPECIAL_KINDS = ("contended", "train-loop")
ALL_KINDS = CASE_KINDS + SPECIAL_KINDS


# ---------------------------------------------------------------- layouts (issue 9)
@dataclasses.dataclass(frozen=True)
class Layout:
    """The dtypes of one precision layout's buffers, the bytes its step moves per element,
    and what adamcore is timed against on it."""

    name: str
    param: str
    grad: str
    state: str                   # exp_avg and exp_avg_sq
    param_copy: str | None       # the 16-bit copy of the updated params, if written
    peers: tuple[str, ...]       # beside adamcore; FLOAT32_STEP: adamcore's float32 step
    bytes_per_element: int
    description: str


# adamcore's float32 step on the same values (16-bit ones widened, exactly): the
# reference for the layouts whose peer is "the float32 step".
FLOAT32_STEP = "adamcore-f32"

LAYOUTS = {layout.name: layout for layout in (
    Layout("all-bf16", "bfloat16", "bfloat16", "bfloat16", None, ("torch-fused",), 14,
           "bf16 params, grads, exp_avg, exp_avg_sq (torch fused's bf16 layout)"),
    Layout("f32-master+bf16-copy", "float32", "bfloat16", "float32", "bfloat16",
           (FLOAT32_STEP,), 28,
           "float32 master params and state, bf16 grads, bf16 param_copy written in the pass"),
    Layout("bf16-params+f32-state", "bfloat16", "bfloat16", "float32", None, ("deepspeed",),
           22, "bf16 params and grads, float32 state (DeepSpeed's fp32_optimizer_states)"),
    Layout("f32-params+bf16-state", "float32", "float32", "bfloat16", None, (FLOAT32_STEP,),
           20, "float32 params and grads, bf16 exp_avg and exp_avg_sq"),
)}
LAYOUT_OPTIMIZERS = ("adam", "adamw")
LAYOUT_QUICK_SIZES = (1 << 20, 1 << 24)
LAYOUT_FULL_SIZES = (1 << 16, 1 << 20, 1 << 24, 1 << 26)  # 64K ... 64M


def numpy_dtype(name: str) -> np.dtype:
    """float32, or bfloat16 from ml_dtypes (an optional dependency: the layout cases
    need it)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


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
    layout: str | None = None    # a key of LAYOUTS; None: every buffer float32

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


def build_cases(kinds: Sequence[str], sizes: Sequence[int], quick: bool,
                layout_sizes: Sequence[int] | None = None,
                layouts: Sequence[str] | None = None) -> list[Case]:
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
        elif kind == "layouts":
            chosen = LAYOUT_QUICK_SIZES if quick else LAYOUT_FULL_SIZES
            for name in (layouts or LAYOUTS):
                cases += [Case(f"{name} N={format_count(n)}", kind, [int(n)],
                               layout=name)
                          for n in (layout_sizes or chosen)]
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
    param_copy: list[np.ndarray] | None = None  # a layout's 16-bit copy of the params

    def writable(self) -> list[np.ndarray]:
        arrays = list(self.params)
        for name in self.states:
            arrays += self.states[name]
        return arrays + list(self.param_copy or [])


@dataclasses.dataclass
class InitialState:
    params: list[np.ndarray]
    grads: list[np.ndarray]
    states: dict[str, list[np.ndarray]] | None  # None: every state starts at zero
    layout: Layout | None = None  # None: every buffer float32
    grads_float32: list[np.ndarray] | None = None  # a layout's grads widened, exactly

    def fresh_buffers(self, optimizer: str, float32: bool = False) -> Buffers:
        """Buffers in the case's layout, or (``float32``) all float32 with the same
        values: the layout's 16-bit params and grads widened exactly."""
        if self.layout is None or float32:
            params = [p.astype(np.float32) for p in self.params]
            grads = self.grads if self.layout is None else self._widened_grads()
            state_dtype = np.dtype(np.float32)
        else:
            params = [p.copy() for p in self.params]
            grads = self.grads
            state_dtype = numpy_dtype(self.layout.state)
        states = {}
        for name in STATE_NAMES[optimizer]:
            if self.states is not None:
                states[name] = [s.copy() for s in self.states[name]]
            else:
                states[name] = [np.zeros(p.shape, state_dtype) for p in self.params]
        copy = None
        if self.layout is not None and self.layout.param_copy and not float32:
            copy = [np.zeros(p.shape, numpy_dtype(self.layout.param_copy))
                    for p in self.params]
        return Buffers(params, grads, states, copy)

    def _widened_grads(self) -> list[np.ndarray]:
        if self.grads_float32 is None:
            self.grads_float32 = [g.astype(np.float32) for g in self.grads]
        return self.grads_float32


def make_initial_state(case: Case, optimizer: str, seed: int = 0) -> InitialState:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n, dtype=np.float32) * np.float32(0.02) for n in case.sizes]
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2) for n in case.sizes]
    if case.layout is not None:
        layout = LAYOUTS[case.layout]
        param_dtype, grad_dtype = numpy_dtype(layout.param), numpy_dtype(layout.grad)
        return InitialState([p.astype(param_dtype) for p in params],
                            [g.astype(grad_dtype) for g in grads], None, layout)
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


def format_count(n: int) -> str:
    for shift, suffix in ((20, "M"), (10, "K")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


# ---------------------------------------------------------------- contended case
# Issue 8: a step beside busy processes. Each variant (implementation, thread count)
# takes many single steps, each timed on its own; the variants take turns in rounds.
CONDITIONS = ("idle", "contended")
CONTENDED_SIZES = (1 << 16, 1 << 20)
CONTENDED_IMPLEMENTATIONS = ("adamcore", "torch-fused")
# Targets for adamcore's 2-thread step, as ratios to the 1-thread median of the same
# condition and size in the same run (issue 8).
CONTENDED_TARGETS = {"median": 1.5, "p99": 3.0}


# ---------------------------------------------------------------- training-loop case
TRAIN_DIMS = (256, 1024, 640, 256)  # 1,086,592 parameters in 10 tensors
TRAIN_BATCH = 32
