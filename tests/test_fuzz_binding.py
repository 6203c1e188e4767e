"""Adversarial fuzzing of the native binding with Hypothesis.

Random mixes of dtypes (float32, float64, float16, bfloat16, int32, big-endian float32,
in and out of the layouts this build takes: one dtype per call, or float32 with a 16-bit
``param_copy``; probed at import), shapes, 0-size arrays, views (strided, reversed,
Fortran order, offset slices, misaligned bytes), read-only arrays, aliased and
overlapping buffers (and disjoint views of one buffer, which are fine), lists, tuples
and their subclasses (one with a lying ``__len__``), mismatched list lengths, and
objects in numeric positions whose ``__float__``/``__index__`` return a value, return
NaN, raise, or run an adamcore step themselves (re-entrancy, on arrays of their own or
on the outer call's), over ``adam_step``, ``adamw_step``, ``adagrad_step``,
``AdamGroup`` and ``AdagradGroup``; with and without ``check_only=True``.

Every call must either step correctly or raise TypeError/ValueError (or the exception a
caller's own ``__float__``/``__index__`` raised) with every byte of every buffer as it was.
"Correctly" means: bit for bit what the same call gives on clean, contiguous copies with
plain Python numbers, after whatever re-entrant steps ran during argument parsing.
A model of the documented rules (``_Model``) says which calls must succeed and which must
raise, so a binding that rejected everything would fail too.

A binding bug this fuzzer finds goes into ``KNOWN_BUGS`` with a strict-xfail test of its
own; its inputs are then left out of the random mix until the fix makes that test XPASS.
The four it found so far (prev_lr converted by pybind11: RuntimeError, True taken; an int
beyond a double: OverflowError; an exception from step's __index__ replaced by
ValueError; numpy.bool_ taken as a number) were fixed in 7ebf840 and are regression tests
at the end of this file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

import adamcore

# Names of open binding bugs whose inputs the strategies leave out (see the docstring):
# "prev_lr_conversion", "huge_int_overflow", "step_index_exception_masked",
# "numpy_bool_as_number". None is open.
KNOWN_BUGS: set = set()

EXPECTED_ERRORS = (TypeError, ValueError)


try:
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # an optional extra
    _bfloat16 = None
_CANDIDATES = [np.dtype(np.float64), np.dtype(np.float16)] + (
    [np.dtype(_bfloat16)] if _bfloat16 is not None else [])


def _accepted(dtype, **extra) -> bool:
    """Whether adam_step takes four buffers of ``dtype`` (and ``extra`` keywords)."""
    try:
        adamcore.adam_step(*[np.zeros(4, dtype) for _ in range(4)], step=1, check_only=True,
                           **extra)
    except (TypeError, ValueError):
        return False
    return True


# The layouts this build of the extension takes (adam_step's docstring): one dtype for
# every buffer, float32 or any of OTHER_DTYPES; or float32 with a param_copy of a
# COPY_DTYPES dtype. Probed, so the model also fits a build without them.
OTHER_DTYPES = {d for d in _CANDIDATES if _accepted(d)}
COPY_DTYPES = {d for d in _CANDIDATES
               if d.itemsize == 2 and _accepted(np.float32, param_copy=np.zeros(4, d))}
# float32 params and state with 16-bit grads (master weights), optionally with a
# param_copy of the grads' dtype.
GRAD_DTYPES = set()
for _d in _CANDIDATES:
    try:
        adamcore.adam_step(np.zeros(4, np.float32), np.zeros(4, _d), np.zeros(4, np.float32),
                           np.zeros(4, np.float32), step=1, check_only=True)
        GRAD_DTYPES.add(np.dtype(_d))
    except (TypeError, ValueError):
        pass
CALL_DTYPES = ["float32"] * 4 + sorted(d.name for d in OTHER_DTYPES)
SIZES = [0, 1, 3, 5, 16, 17, 33]


class Boom(Exception):
    """A caller's own exception, raised from __float__/__index__: it must propagate."""


class ListSub(list):
    pass


class TupleSub(tuple):
    pass


class LyingList(list):
    """A list whose __len__ lies (the binding must use the real number of items)."""

    def __init__(self, items, claimed):
        super().__init__(items)
        self.claimed = claimed

    def __len__(self):
        return self.claimed


class Inner:
    """A step run from inside argument parsing; counts the ones that completed."""

    def __init__(self, call: Callable[[], Any]):
        self.call = call
        self.done = 0

    def __call__(self):
        self.call()
        self.done += 1


class _NumberLike:
    """Returns ``value`` from its one conversion method, or raises ``raises``, after
    running ``inner`` (a re-entrant step)."""

    def __init__(self, value, raises=None, inner: Optional[Inner] = None):
        self.value, self.raises, self.inner = value, raises, inner

    def _convert(self, method: str):
        if self.inner is not None:
            self.inner()
        if self.raises is not None:
            raise self.raises(f"raised by {method}")
        return self.value

    def __repr__(self):
        return (f"{type(self).__name__}({self.value!r}, raises={self.raises}, "
                f"inner={self.inner is not None})")


class FloatLike(_NumberLike):
    """Has __float__ only."""

    def __float__(self):
        return float(self._convert("__float__"))


class IndexLike(_NumberLike):
    """Has __index__ only (an integer-like step number)."""

    def __index__(self):
        return self._convert("__index__")


# ---------------------------------------------------------------- buffers

@dataclass
class Item:
    """One buffer argument: the object passed, and where its bytes live."""

    obj: Any
    kind: str
    backing: Optional[np.ndarray] = None  # the uint8 array holding its bytes
    offset: int = 0                       # byte offset of obj's first element in backing


class Pool:
    """Allocates every buffer of a call from a few uint8 backings, so aliasing, overlap
    and disjoint views of one allocation are all possible, and every byte is checked."""

    def __init__(self, seed: int, dtype="float32"):
        self.rng = np.random.default_rng(seed)
        self.dt = np.dtype(dtype)  # the dtype of this call's well-formed buffers
        self.backings: List[np.ndarray] = []
        self.items: List[Item] = []
        self.shared = self._backing(4096)
        self.cursor = 0

    def _backing(self, nbytes: int) -> np.ndarray:
        raw = np.empty(nbytes + 64, dtype=np.uint8)
        values = (np.abs(self.rng.standard_normal(raw.size // 4)) * 0.5 + 0.01).astype(
            np.float32)
        raw[: values.size * 4] = values.view(np.uint8)
        self.backings.append(raw)
        return raw

    def _take(self, nbytes: int, align: int = 8):
        """A fresh, disjoint region of the shared backing (or a new backing)."""
        start = -(-self.cursor // align) * align
        if start + nbytes + 8 > self.shared.size:
            raw = self._backing(nbytes + 8)
            return raw, 0
        self.cursor = start + nbytes
        return self.shared, start

    def _fill(self, arr: np.ndarray) -> np.ndarray:
        """Moderate values of the array's own dtype (the backing's bytes are float32's)."""
        if (arr.dtype.kind == "f" or arr.dtype.name == "bfloat16") and arr.size:
            arr[...] = (np.abs(self.rng.standard_normal(arr.shape)) * 0.5 + 0.01)
        return arr

    def snapshot(self) -> List[bytes]:
        return [b.tobytes() for b in self.backings]

    def make(self, size: int, kind: str) -> Item:
        dt = self.dt
        w = dt.itemsize
        if kind in ("good", "offset", "2d", "0d", "readonly", "disjoint", "size+1"):
            n = size + 1 if kind == "size+1" else size
            if kind == "0d" and n != 1:
                kind, n = "good", size
            raw, off = self._take(w * n, align=64 if kind == "good" else w)
            if kind == "offset":  # a contiguous view that starts at an odd element
                raw, off = self._take(w * (n + 3), align=w)
                off += w * int(self.rng.integers(1, 4))
            arr = self._fill(raw[off: off + w * n].view(dt))
            if kind == "2d" and n >= 4 and n % 2 == 0:
                arr = arr.reshape(2, n // 2)
            elif kind == "0d":
                arr = arr.reshape(())
            if kind == "readonly":
                arr.flags.writeable = False
            item = Item(arr, kind, raw, off)
        elif kind in ("float32", "float64", "float16", "int32", "bigendian"):
            other = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "int32": "<i4",
                     "bigendian": ">f4"}[kind]
            if np.dtype(other) == dt:  # not a different dtype for this call
                return self.make(size, "good")
            width = np.dtype(other).itemsize
            raw, off = self._take(width * size, align=8)
            item = Item(self._fill(raw[off: off + width * size].view(other)), kind, raw, off)
        elif kind in ("strided", "reversed", "fortran"):
            if size < 2 or (kind == "fortran" and (size < 4 or size % 2)):
                return self.make(size, "good")  # no non-contiguous view of this size
            raw, off = self._take(2 * w * size, align=w)
            base = self._fill(raw[off: off + 2 * w * size].view(dt))
            if kind == "strided":
                arr = base[::2]
            elif kind == "reversed":
                arr = base[:size][::-1]
            else:
                arr = base[:size].reshape(size // 2, 2).T
            item = Item(arr, kind, raw, off)
        elif kind == "misaligned":
            raw, off = self._take(w * size + w, align=w)
            shift = int(self.rng.integers(1, w))
            arr = self._fill(raw[off + shift: off + shift + w * size].view(dt))
            item = Item(arr, kind, raw, off + shift)
        elif kind == "list":
            item = Item([0.5] * size, kind)
        elif kind == "none":
            item = Item(None, kind)
        elif kind == "float":
            item = Item(0.5, kind)
        else:
            raise AssertionError(kind)
        self.items.append(item)
        return item

    def alias(self, size: int, kind: str) -> Item:
        """Memory another buffer of this call already uses (or a plain one if none fits)."""
        dt, w = self.dt, self.dt.itemsize
        candidates = [i for i in self.items if i.backing is not None
                      and isinstance(i.obj, np.ndarray) and i.obj.dtype == dt
                      and i.obj.flags.c_contiguous and i.obj.size == size and size > 0]
        if not candidates:
            return self.make(size, "good")
        other = candidates[int(self.rng.integers(len(candidates)))]
        if kind == "same":
            item = Item(other.obj, "same", other.backing, other.offset)
        else:  # overlap: a view shifted by whole elements, still inside the backing
            shift = w * int(self.rng.integers(1, size + 1)) * (1 if self.rng.random() < 0.5
                                                               else -1)
            start = other.offset + shift
            if start < 0 or start + w * size > other.backing.size:
                start = other.offset + w if other.offset + w * (size + 1) <= \
                    other.backing.size else other.offset
            arr = other.backing[start: start + w * size].view(dt)
            item = Item(arr, "overlap", other.backing, start)
        self.items.append(item)
        return item


# Kinds a valid call may use, and defects (read-only is a defect only where written).
GOOD_KINDS = ["good", "offset", "2d", "0d", "disjoint"]
BAD_KINDS = ["readonly", "size+1", "float32", "float64", "float16", "int32", "bigendian",
             "strided", "reversed", "fortran", "misaligned", "list", "none", "float", "same",
             "overlap"]


class Chaos:
    """How often a call's parts are defective: drawn once per call, so that calls with no
    defect, one defect and many defects are all common (shrinks towards no defect)."""

    def __init__(self, data):
        self.data = data
        self.percent = data.draw(st.sampled_from([0, 0, 3, 8, 20, 50]), label="defect rate %")

    def bad(self, what: str) -> bool:
        if not self.percent:
            return False
        return self.data.draw(st.integers(0, 99), label=f"{what} defective?") < self.percent


def draw_item(data, pool: Pool, size: int, chaos: Chaos, written: bool) -> Item:
    if chaos.bad("buffer"):
        kind = data.draw(st.sampled_from(BAD_KINDS), label="buffer defect")
    else:
        kinds = GOOD_KINDS + ([] if written else ["readonly"])
        kind = data.draw(st.sampled_from(kinds), label="buffer kind")
    if kind in ("same", "overlap"):
        return pool.alias(size, kind)
    return pool.make(size, kind)


CONTAINERS = ["list", "tuple", "list_sub", "tuple_sub", "lying"]


def container(data, kind: str, items: List[Any]):
    if kind == "list":
        return list(items)
    if kind == "tuple":
        return tuple(items)
    if kind == "list_sub":
        return ListSub(items)
    if kind == "tuple_sub":
        return TupleSub(items)
    claimed = data.draw(st.sampled_from([0, len(items) + 1, len(items) + 1000, 2 ** 31]),
                        label="claimed length")
    return LyingList(items, claimed)


def real_len(obj) -> int:
    return list.__len__(obj) if isinstance(obj, list) else tuple.__len__(obj)


def real_items(obj) -> list:
    return [list.__getitem__(obj, i) if isinstance(obj, list) else tuple.__getitem__(obj, i)
            for i in range(real_len(obj))]


# ---------------------------------------------------------------- the model of the rules

class Verdict:
    """What the documented rules say about a call: 'ok', 'raise' or 'either'."""

    def __init__(self):
        self.errors: List[str] = []
        self.ambiguous: List[str] = []
        self.own_exception = False  # a caller's __float__/__index__ raises

    def bad(self, why: str):
        self.errors.append(why)

    @property
    def outcome(self) -> str:
        if self.errors or self.own_exception:
            return "raise"
        return "either" if self.ambiguous else "ok"


def check_array(v: Verdict, obj, label: str, written: bool) -> Optional[np.ndarray]:
    if not isinstance(obj, np.ndarray):
        v.bad(f"{label} is not an array")
        return None
    if obj.dtype != np.dtype(np.float32) and obj.dtype not in OTHER_DTYPES | COPY_DTYPES:
        v.bad(f"{label} dtype {obj.dtype}")
        return None
    if not obj.flags.c_contiguous:
        v.bad(f"{label} not C-contiguous")
        return None
    if obj.ctypes.data % obj.dtype.itemsize:
        if obj.size:
            v.bad(f"{label} misaligned")
            return None
        v.ambiguous.append(f"{label}: empty and misaligned")
    if written and not obj.flags.writeable:
        v.bad(f"{label} read-only")
        return None
    return obj


def check_disjoint(v: Verdict, arrays: List[tuple], outside: List[tuple] = ()):
    spans = [(a.ctypes.data, a.ctypes.data + a.nbytes, label) for label, a in arrays
             if a is not None and a.size]
    spans.sort()
    for (b0, e0, l0), (b1, e1, l1) in zip(spans, spans[1:]):
        if b1 < e0:
            v.bad(f"{l0} and {l1} overlap")
    held = [(a.ctypes.data, a.ctypes.data + a.nbytes, label) for label, a in outside
            if a is not None and a.size]
    for label, a in arrays:
        if a is None or not a.size:
            continue
        for b0, e0, l0 in held:
            if a.ctypes.data < e0 and b0 < a.ctypes.data + a.nbytes:
                v.bad(f"{label} and {l0} overlap")


# The accepted (param, grad, state, param_copy) dtypes, as adam_step's docstring states
# them (None: no copy), restricted to the dtypes this build takes (probed above).
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_BF16 = np.dtype(_bfloat16) if _bfloat16 is not None else None
ACCEPTED = {(d, d, d, None) for d in OTHER_DTYPES | {_F32}}
ACCEPTED |= {(_F32, h, _F32, c) for h in GRAD_DTYPES for c in (None, h)}
ACCEPTED |= {(_F32, _F32, _F32, c) for c in COPY_DTYPES}
ACCEPTED |= {(h, h, _F32, None) for h in GRAD_DTYPES}
if _BF16 in GRAD_DTYPES:
    ACCEPTED |= {(_F32, g, _BF16, c) for g in (_F32, _BF16) for c in (None, _BF16)}


def _role(label: str) -> str:
    if label.startswith("param_cop"):
        return "copy"
    if label.startswith("param"):
        return "param"
    return "grad" if label.startswith("grad") else "state"


def check_layout(v: Verdict, arrays: List[tuple], grads_dtype=None):
    """One layout per call, from ACCEPTED. ``grads_dtype``: a group's step, whose grads
    must be that dtype."""
    roles = {"param": set(), "grad": set(), "state": set(), "copy": set()}
    for label, a in arrays:
        roles[_role(label)].add(a.dtype)
    if any(len(dtypes) > 1 for dtypes in roles.values()):
        v.bad(f"layout: mixed dtypes in one role {roles}")
    elif roles["param"]:
        param = next(iter(roles["param"]))
        grad = next(iter(roles["grad"]), param)
        state = next(iter(roles["state"]), param)
        copy = next(iter(roles["copy"]), None)
        # (A group's held buffers are checked before its grads are known, as the
        # param's dtype.)
        if (param, grad, state, copy) not in ACCEPTED:
            v.bad(f"layout: {param}, {grad}, {state}, copy {copy}")
    if grads_dtype is not None and arrays and arrays[0][1].dtype != grads_dtype:
        v.bad(f"grads dtype {arrays[0][1].dtype}, the group holds {grads_dtype}")


HYPER_RULES = {  # name: (low, high, high inclusive)
    "lr": (0.0, math.inf, False), "eps": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False), "lr_decay": (0.0, math.inf, False),
    "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False), "prev_lr": (0.0, math.inf, False),
}


def number_value(v: Verdict, name: str, x) -> Optional[float]:
    """The float the binding must see for a numeric argument (None: it must raise)."""
    if isinstance(x, (FloatLike, IndexLike)):
        if x.raises is not None:
            v.own_exception = True
            return None
        x = x.value
        if isinstance(x, bool):  # (never generated)
            raise AssertionError
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer,
                                                             np.floating)):
        v.bad(f"{name}={x!r} is not a real number")
        return None
    try:
        value = float(x)
    except OverflowError:
        v.bad(f"{name}={x!r} does not fit a double")
        return None
    low, high, _ = HYPER_RULES[name]
    if not (math.isfinite(value) and low <= value < high):
        v.bad(f"{name}={value!r} out of range")
        return None
    return value


def step_value(v: Verdict, x) -> Optional[int]:
    if isinstance(x, IndexLike):
        if x.raises is not None:
            v.own_exception = True
            return None
        x = x.value
    if isinstance(x, (bool, float, np.floating)) or not isinstance(x, (int, np.integer)):
        v.bad(f"step={x!r} is not an integer")
        return None
    value = int(x)
    if not 1 <= value < 2 ** 63:
        v.bad(f"step={value} out of range")
        return None
    return value


def flag_value(v: Verdict, name: str, x) -> Optional[bool]:
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    v.bad(f"{name}={x!r} is not a bool")
    return None


# ---------------------------------------------------------------- drawing arguments

def draw_number(data, name: str, inner: Optional[Inner], chaos: Chaos):
    """A value for a float hyperparameter: a number or an object with __float__ (which
    may re-enter), or with the call's defect rate an invalid one (out of range, NaN, not a
    number, a __float__ returning NaN or raising)."""
    good = {"lr": [1e-3, 0.01, 0.0, 1], "eps": [1e-8, 0.0, 1e-3],
            "weight_decay": [0.0, 0.01, 0.2], "lr_decay": [0.0, 0.01], "beta1": [0.9, 0.0, 0.3],
            "beta2": [0.999, 0.0, 0.9], "prev_lr": [1e-3, 0.02]}[name]
    if chaos.bad(name):
        choices = ["bad_range", "nan", "inf", "bool", "str", "none", "complex",
                   "float_like_nan", "raises"]
        if "huge_int_overflow" not in KNOWN_BUGS:
            choices.append("huge_int")
        if "numpy_bool_as_number" not in KNOWN_BUGS:
            choices.append("np_bool")
    else:
        choices = ["good", "good", "np32", "np64", "npint", "float_like", "reenter"]
    how = data.draw(st.sampled_from(choices), label=f"{name} kind")
    value = data.draw(st.sampled_from(good), label=name)
    if how == "good":
        return value
    if how == "np32":
        return np.float32(value)
    if how == "np64":
        return np.float64(value)
    if how == "npint":
        return np.int64(1 if name in ("lr", "prev_lr") else 0)
    if how == "bad_range":
        return {"beta1": 1.0, "beta2": 1.5}.get(name, -0.5)
    if how == "nan":
        return math.nan
    if how == "inf":
        return math.inf
    if how == "bool":
        return True
    if how == "np_bool":
        return np.True_
    if how == "str":
        return "0.1"
    if how == "none":
        return None
    if how == "complex":
        return 1j
    if how == "huge_int":
        return 10 ** 400
    if how == "float_like":
        return FloatLike(value)
    if how == "float_like_nan":
        return FloatLike(math.nan)
    if how == "raises":
        return FloatLike(value, raises=data.draw(st.sampled_from([Boom, TypeError, ValueError]),
                                                 label="raises"))
    if inner is None:
        return FloatLike(value)
    return FloatLike(value, inner=inner)


def draw_step(data, inner: Optional[Inner], chaos: Chaos):
    if chaos.bad("step"):
        choices = ["zero", "negative", "huge", "bool", "float", "np_float", "str"]
        if "step_index_exception_masked" not in KNOWN_BUGS:
            choices.append("index_raises")
    else:
        choices = ["int", "int", "np_int", "index_like", "reenter"]
    how = data.draw(st.sampled_from(choices), label="step kind")
    t = data.draw(st.integers(1, 10 ** 6), label="step")
    return {"int": t, "np_int": np.int64(t), "zero": 0, "negative": -t, "huge": 2 ** 70,
            "bool": True, "float": float(t), "np_float": np.float32(t), "str": str(t),
            "index_like": IndexLike(t),
            "index_raises": IndexLike(t, raises=Boom),
            "reenter": IndexLike(t, inner=inner) if inner else IndexLike(t)}[how]


def draw_flag(data, name: str, chaos: Chaos):
    choices = (["int", "none", "str"] if chaos.bad(name)
               else ["true", "false", "np_true", "np_false"])
    how = data.draw(st.sampled_from(choices), label=f"{name} kind")
    return {"true": True, "false": False, "np_true": np.True_, "np_false": np.False_,
            "int": 1, "none": None, "str": "yes"}[how]


def draw_prev_lr(data, inner, chaos: Chaos):
    if "prev_lr_conversion" in KNOWN_BUGS:
        choices = ["nan", "negative"] if chaos.bad("prev_lr") else ["none", "good",
                                                                     "float_like"]
        how = data.draw(st.sampled_from(choices), label="prev_lr kind")
        return {"none": None, "good": 0.002, "nan": math.nan, "negative": -1.0,
                "float_like": FloatLike(0.004)}[how]
    return draw_number(data, "prev_lr", inner, chaos)


# ---------------------------------------------------------------- AMP, rounding, clipping

# The keywords of a step beyond the optimizer's own (adam_step's docstring), each with
# values the binding must take and, at the call's defect rate, values it must refuse.
OPTION_VALUES = {
    "grad_scale": ([None, 1.0, 0.5, 2.0 ** 16, np.float32(1024.0)],
                   [0.0, -1.0, math.nan, math.inf, 1e39, 1e-50, "2", True]),
    "found_inf": ([None, False, True, np.True_, np.False_, 0.0, 1.0, math.nan],
                  ["yes", [1.0]]),
    "rounding": ([None, "nearest", "stochastic"], ["up", 1, b"nearest"]),
    "seed": ([None, 0, 7, 2 ** 64 - 1, np.uint64(5)], [-1, 2 ** 64, 1.5, "3", True]),
    "clip_coef": ([None, 1.0, 0.5, 0.0, np.float32(0.25)], [-0.5, math.nan, math.inf, "1"]),
    "max_grad_norm": ([None, None, 1.0, 0.1, 0.0, math.inf], [-1.0, math.nan, "1"]),
    "norm_type": ([2.0, 1.0, 3, math.inf], [0.0, -1.0, math.nan, None]),
    "error_if_nonfinite": ([False, True, np.True_], [None, 1]),
}


def draw_options(data, chaos: Chaos) -> Dict[str, Any]:
    """Some of the AMP / rounding / clipping keywords (most calls give none)."""
    options: Dict[str, Any] = {}
    if data.draw(st.integers(0, 2), label="step options") != 0:
        return options
    for name, (good, bad) in OPTION_VALUES.items():
        if not data.draw(st.booleans(), label=f"give {name}"):
            continue
        pool = bad if chaos.bad(name) else good
        options[name] = data.draw(st.sampled_from(pool), label=name)
    return options


def _real(x) -> Optional[float]:
    """x as the binding's real-number conversion sees it (None: a TypeError)."""
    if isinstance(x, (bool, np.bool_, str, bytes, list)) or x is None:
        return None
    return float(x)


def options_value(v: Verdict, options: Dict[str, Any]) -> Dict[str, Any]:
    """The plain values the binding must see for ``options`` (bad ones: v.bad)."""
    plain: Dict[str, Any] = {}
    if "grad_scale" in options and options["grad_scale"] is not None:
        x = _real(options["grad_scale"])
        as_float = np.float32(x) if x is not None and abs(x) < 1e39 else np.float32(np.inf)
        if x is None or not (np.isfinite(as_float) and as_float > 0):
            v.bad(f"grad_scale={options['grad_scale']!r}")
        else:
            plain["grad_scale"] = x
    if "found_inf" in options and options["found_inf"] is not None:
        x = options["found_inf"]
        if isinstance(x, (bool, np.bool_)):
            plain["found_inf"] = bool(x)
        elif _real(x) is None:
            v.bad(f"found_inf={x!r}")
        else:
            plain["found_inf"] = _real(x) != 0.0  # (NaN: skipped, as torch's found_inf)
    if "rounding" in options and options["rounding"] is not None:
        if options["rounding"] not in ("nearest", "stochastic"):
            v.bad(f"rounding={options['rounding']!r}")
        else:
            plain["rounding"] = options["rounding"]
    if "seed" in options and options["seed"] is not None:
        x = options["seed"]
        if isinstance(x, (bool, np.bool_, float, str)) or not 0 <= int(x) < 2 ** 64:
            v.bad(f"seed={x!r}")
        else:
            plain["seed"] = int(x)
    if "clip_coef" in options and options["clip_coef"] is not None:
        x = _real(options["clip_coef"])
        if x is None or not (math.isfinite(x) and x >= 0):
            v.bad(f"clip_coef={options['clip_coef']!r}")
        else:
            plain["clip_coef"] = x
    if "norm_type" in options:
        x = _real(options["norm_type"])
        if x is None or not x > 0:
            v.bad(f"norm_type={options['norm_type']!r}")
        else:
            plain["norm_type"] = x
    if "error_if_nonfinite" in options:
        flag = flag_value(v, "error_if_nonfinite", options["error_if_nonfinite"])
        if flag is not None:
            plain["error_if_nonfinite"] = flag
    if "max_grad_norm" in options and options["max_grad_norm"] is not None:
        x = _real(options["max_grad_norm"])
        if x is None or math.isnan(x) or x < 0:
            v.bad(f"max_grad_norm={options['max_grad_norm']!r}")
        else:
            plain["max_grad_norm"] = x
            if plain.get("clip_coef", 1.0) != 1.0:
                v.bad("max_grad_norm with clip_coef")
            if "grad_scale" in plain:
                v.bad("max_grad_norm with grad_scale")
    return plain


def result_summary(r):
    """A call's return value, comparable with ==: None, the Γ statistics, the fused
    clipping's norm (NaN as a string), or a tuple of both."""
    if r is None:
        return None
    if isinstance(r, tuple):
        return tuple(result_summary(x) for x in r)
    if isinstance(r, float):
        return "nan" if math.isnan(r) else r
    return stats_dict(r)


# ---------------------------------------------------------------- running and checking

ADAM_BUFFERS = ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
ADAGRAD_BUFFERS = ["param", "grad", "state_sum"]
WRITTEN = {"param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "state_sum", "params",
           "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_sums", "param_copy",
           "param_copies"}
KEYWORD_BUFFERS = {"max_exp_avg_sq", "param_copy"}


def copy_dtype(data, pool: Pool, chaos: Chaos):
    """The dtype of a param_copy: a 16-bit one, or (a defect) the call's own."""
    if chaos.bad("param_copy dtype") or not COPY_DTYPES:
        return pool.dt
    return data.draw(st.sampled_from(sorted(COPY_DTYPES, key=str)), label="param_copy dtype")


def clean_copy(obj):
    """A contiguous, aligned, writeable copy of the same dtype."""
    return np.array(obj, copy=True).reshape(-1)


def stats_dict(r):
    if r is None:
        return None
    return {k: ("nan" if isinstance(x, float) and math.isnan(x) else x)
            for k, x in r.as_dict().items()}


def expected_backings(pool: Pool, before: List[bytes], results: Dict[int, np.ndarray]):
    """The backings' bytes with each written item's region replaced by its expected value.
    ``results`` maps id(Item) to the expected float32 content of that item."""
    want = [bytearray(b) for b in before]
    index = {id(b): i for i, b in enumerate(pool.backings)}
    for item in pool.items:
        if id(item) in results:
            content = results[id(item)].tobytes()
            region = want[index[id(item.backing)]]
            region[item.offset: item.offset + len(content)] = content
    return [bytes(b) for b in want]


def assert_backings(pool: Pool, want: List[bytes], what: str):
    for i, (b, w) in enumerate(zip(pool.backings, want)):
        got = b.tobytes()
        if got != w:
            diff = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(w, np.uint8))
            first = int(diff[0])
            owners = [f"{it.kind} item at byte {it.offset}" for it in pool.items
                      if it.backing is b and isinstance(it.obj, np.ndarray)
                      and it.offset <= first < it.offset + it.obj.nbytes]
            word = first - first % 4
            raise AssertionError(
                f"{what}: backing {i}: {diff.size} bytes differ from the expected ones, "
                f"first at byte {first} ({', '.join(owners) or 'no buffer of the call'}): "
                f"{np.frombuffer(got[word:word + 4], np.float32)[0]!r} instead of "
                f"{np.frombuffer(w[word:word + 4], np.float32)[0]!r}")


def outcome_matches(verdict: Verdict, outcome: str, error: Optional[BaseException]):
    if outcome == "ok":
        assert verdict.outcome in ("ok", "either"), (
            f"the call succeeded but must raise: {verdict.errors}"
            + (" (a __float__/__index__ raised)" if verdict.own_exception else ""))
    else:
        allowed = EXPECTED_ERRORS + ((Boom,) if verdict.own_exception else ())
        if not isinstance(error, allowed):
            raise AssertionError(f"raised {type(error).__name__}: {error}; allowed: "
                                 f"{[e.__name__ for e in allowed]}") from error
        assert verdict.outcome in ("raise", "either"), (
            f"the call raised {type(error).__name__}: {error}, but the rules say it is "
            f"valid")
        misaligned = [e for e in verdict.errors if e.endswith("misaligned")]
        if misaligned and len(verdict.errors) == 1 and not verdict.own_exception:
            name = misaligned[0].split()[0].split("[")[0]
            assert isinstance(error, ValueError) and "aligned" in str(error) and \
                name in str(error), f"misaligned {name}: {type(error).__name__}: {error}"


def call(fn, args, kwargs):
    try:
        return "ok", fn(*args, **kwargs), None
    except BaseException as e:  # noqa: BLE001 - anything else is judged by the caller
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return "raise", None, e


@dataclass
class Reentry:
    """How re-entrant numbers behave in one call."""

    mode: str                       # "none", "private" or "same"
    inner: Optional[Inner] = None
    private: Dict[str, np.ndarray] = field(default_factory=dict)
    private_before: Dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------- the functional API

# No "explain" phase: it imports code that warns (an error under this suite's filters).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
# Examples per test in the default run (a few seconds); set ADAMCORE_FUZZ_EXAMPLES for a
# longer hunt, e.g. 20000.
EXAMPLES = int(os.environ.get("ADAMCORE_FUZZ_EXAMPLES", "400"))


@settings(max_examples=EXAMPLES, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), seed=st.integers(0, 2 ** 32 - 1))
def test_step_functions_step_correctly_or_raise_cleanly(data, seed):
    op = data.draw(st.sampled_from(["adam", "adamw", "adagrad"]), label="function")
    fn = {"adam": adamcore.adam_step, "adamw": adamcore.adamw_step,
          "adagrad": adamcore.adagrad_step}[op]
    names = (ADAGRAD_BUFFERS if op == "adagrad" else ADAM_BUFFERS) + ["param_copy"]
    pool = Pool(seed, data.draw(st.sampled_from(CALL_DTYPES), label="dtype"))
    main_dtype = pool.dt
    chaos = Chaos(data)
    options = draw_options(data, chaos)
    # With grad_scale the grads are unscaled in place: written, so they must be writable.
    written = WRITTEN | ({"grad"} if options.get("grad_scale") is not None else set())
    form = data.draw(st.sampled_from(["single"] * 3 + CONTAINERS), label="form")
    count = 1 if form == "single" else data.draw(st.integers(0, 3), label="tensors")
    sizes = [data.draw(st.sampled_from(SIZES), label="size") for _ in range(count)]
    amsgrad_buffer = op != "adagrad" and data.draw(st.booleans(), label="max_exp_avg_sq given")
    copy_given = bool(COPY_DTYPES) and data.draw(st.integers(0, 3), label="param_copy") == 0
    buffers: Dict[str, Any] = {}
    items: Dict[str, List[Item]] = {}
    for name in names:
        if name == "max_exp_avg_sq" and not amsgrad_buffer:
            continue
        if name == "param_copy" and not copy_given:
            continue
        pool.dt = copy_dtype(data, pool, chaos) if name == "param_copy" else main_dtype
        its = [draw_item(data, pool, n, chaos, name in written) for n in sizes]
        n_items = count
        if form != "single" and chaos.bad("list length"):
            n_items = max(0, count + data.draw(st.sampled_from([-1, 1]), label="delta"))
            its = its[:n_items] + [pool.make(5, "good") for _ in range(n_items - count)]
        items[name] = its
        if form == "single":
            buffers[name] = its[0].obj
        elif chaos.bad("list"):
            replacement = pool.make(5, "good")  # an array where a list belongs
            items[name] = [replacement]
            buffers[name] = replacement.obj
        else:
            buffers[name] = container(data, form, [i.obj for i in its])
    pool.dt = main_dtype

    # Re-entrant numbers: a step on arrays of their own, or on this call's own buffers.
    mode = data.draw(st.sampled_from(["none", "none", "private", "same"]), label="reentry")
    re = Reentry(mode)
    if mode == "private":
        priv = {k: np.abs(np.random.default_rng(seed + 1).standard_normal(9)).astype(
            np.float32) for k in names[:4]}
        re.private, re.private_before = priv, {k: a.copy() for k, a in priv.items()}
        plist = [priv[k] for k in (["param", "grad", "state_sum"] if op == "adagrad"
                                   else ["param", "grad", "exp_avg", "exp_avg_sq"])]
        re.inner = Inner(lambda: fn(*plist, step=1))
    elif mode == "same":
        vmax = buffers.get("max_exp_avg_sq")
        positional = [buffers[k] for k in names if k not in KEYWORD_BUFFERS and k in buffers]
        kw = {} if op == "adagrad" else {"amsgrad": vmax is not None, "max_exp_avg_sq": vmax}
        if "param_copy" in buffers:
            kw["param_copy"] = buffers["param_copy"]
        re.inner = Inner(lambda: fn(*positional, step=1, **kw))

    kwargs: Dict[str, Any] = {}
    if not chaos.bad("step given"):
        kwargs["step"] = draw_step(data, re.inner, chaos)
    hyper_names = (["lr", "lr_decay", "weight_decay", "eps"] if op == "adagrad"
                   else ["lr", "beta1", "beta2", "eps", "weight_decay"])
    for name in hyper_names:
        if data.draw(st.booleans(), label=f"give {name}"):
            kwargs[name] = draw_number(data, name, re.inner, chaos)
    flag_names = ["maximize", "diagnostics", "check_only"] + (
        [] if op == "adagrad" else ["amsgrad", "bias_correction"])
    for name in flag_names:
        if data.draw(st.booleans(), label=f"give {name}"):
            kwargs[name] = draw_flag(data, name, chaos)
    if op != "adagrad" and "amsgrad" not in kwargs and amsgrad_buffer and \
            not chaos.bad("amsgrad"):
        kwargs["amsgrad"] = True
    if data.draw(st.booleans(), label="give prev_lr"):
        kwargs["prev_lr"] = draw_prev_lr(data, re.inner, chaos)
    if op != "adagrad" and "max_exp_avg_sq" in buffers:
        kwargs["max_exp_avg_sq"] = buffers["max_exp_avg_sq"]
    if "param_copy" in buffers:
        kwargs["param_copy"] = buffers["param_copy"]
    kwargs.update(options)
    extra = (data.draw(st.sampled_from(["unknown_kw", "positional", "duplicate"]),
                       label="extra") if chaos.bad("extra argument") else "none")
    args = [buffers[k] for k in names if k not in KEYWORD_BUFFERS]
    if extra == "unknown_kw":
        kwargs["betas"] = (0.9, 0.99)
    elif extra == "positional":
        args.append(1)
    elif extra == "duplicate":
        kwargs["grad"] = args[1]

    # The model's verdict (computed before the call: __float__ is not run here).
    v = Verdict()
    hyper = {}
    if "step" not in kwargs:
        v.bad("step missing")
    else:
        hyper["step"] = step_value(v, kwargs["step"])
    for name in hyper_names:
        if name in kwargs:
            hyper[name] = number_value(v, name, kwargs[name])
    flags = {}
    for name in flag_names:
        if name in kwargs:
            flags[name] = flag_value(v, name, kwargs[name])
    if kwargs.get("prev_lr") is not None:
        number_value(v, "prev_lr", kwargs["prev_lr"])
    plain_options = options_value(v, options)
    if extra != "none":
        v.bad(f"extra argument ({extra})")
    if op != "adagrad" and flags.get("amsgrad", False) is not None:
        if bool(flags.get("amsgrad", False)) != (buffers.get("max_exp_avg_sq") is not None):
            v.bad("amsgrad and max_exp_avg_sq disagree")
    # A keyword buffer passed as None is absent.
    present = [k for k in names
               if k in buffers and not (k in KEYWORD_BUFFERS and buffers[k] is None)]
    checked = []
    if not isinstance(buffers["param"], (list, tuple)):  # one array per argument
        for k in present:
            obj = buffers[k]
            if k != "param" and isinstance(obj, (list, tuple)):
                v.bad(f"{k} is a list but param is not")
                continue
            checked.append((k, check_array(v, obj, k, k in written)))
    else:
        lengths = set()
        for k in present:
            if not isinstance(buffers[k], (list, tuple)):
                v.bad(f"{k} is not a list")
            else:
                lengths.add(real_len(buffers[k]))
        if len(lengths) > 1:
            v.bad("list lengths differ")
        else:
            for k in present:
                if isinstance(buffers[k], (list, tuple)):
                    for t, obj in enumerate(real_items(buffers[k])):
                        checked.append((f"{k}[{t}]", check_array(v, obj, f"{k}[{t}]",
                                                                 k in written)))
    arrays = [(label, a) for label, a in checked if a is not None]
    # sizes: every buffer of tensor t as large as param[t] (among the buffers that are
    # arrays at all, so that the list of defects is complete)
    sizes_of = {(label.split("[")[1] if "[" in label else ""): a.size
                for label, a in arrays if label.split("[")[0] == "param"}
    for label, a in arrays:
        t = label.split("[")[1] if "[" in label else ""
        if t in sizes_of and a.size != sizes_of[t]:
            v.bad(f"{label} has {a.size} elements")
    if len(checked) == len(arrays):
        check_disjoint(v, arrays)
        check_layout(v, arrays)

    note(f"{op}{' list form ' + form if form != 'single' else ''} sizes={sizes} "
         f"kinds={ {k: [i.kind for i in its] for k, its in items.items()} } reentry={mode} "
         f"kwargs={kwargs} extra={extra} verdict={v.outcome} {v.errors} {v.ambiguous}")

    before = pool.snapshot()
    pre = {id(i): clean_copy(i.obj) for its in items.values() for i in its
           if isinstance(i.obj, np.ndarray)}
    outcome, result, error = call(fn, args, kwargs)
    note(f"outcome {outcome}: {type(error).__name__ if error else result!r} {error or ''}")
    event(f"model: {v.errors[0].split()[0] if v.errors else v.outcome}")
    event(f"{outcome}: {main_dtype}" + (" with param_copy" if copy_given else ""))
    event(f"{outcome} with " + (", ".join(sorted(plain_options)) or "no step options"))
    event(f"{outcome}" + (f" {type(error).__name__}" if error else "")
          + (f", re-entrant steps ran" if re.inner is not None and re.inner.done else ""))
    outcome_matches(v, outcome, error)

    # What the buffers must hold now: the re-entrant steps that ran, then this call's.
    inner_done = re.inner.done if (re.inner is not None and mode == "same") else 0
    results: Dict[int, np.ndarray] = {}
    result_want = None
    if inner_done or (outcome == "ok" and not flags.get("check_only")):
        n_tensors = len(items["param"])  # what the call really got
        tensors = [{k: items[k][t] for k in present} for t in range(n_tensors)]
        clean = [{k: pre[id(it)] for k, it in tensor.items()} for tensor in tensors]

        def clean_call(**kw):
            lists = {k: [c[k] for c in clean] for k in present}
            vm = lists.get("max_exp_avg_sq")
            if "param_copy" in lists:
                kw["param_copy"] = lists["param_copy"]
            if op == "adagrad":
                return fn(lists["param"], lists["grad"], lists["state_sum"], **kw)
            return fn(lists["param"], lists["grad"], lists["exp_avg"], lists["exp_avg_sq"],
                      max_exp_avg_sq=vm, amsgrad=vm is not None, **kw)

        for _ in range(inner_done):
            clean_call(step=1)
        if outcome == "ok" and not flags.get("check_only"):
            plain_kw = {k: hyper[k] for k in hyper_names + ["step"] if k in kwargs}
            for k in ("maximize", "bias_correction", "diagnostics"):
                if k in flags:
                    plain_kw[k] = flags[k]
            if kwargs.get("prev_lr") is not None:
                p = kwargs["prev_lr"]
                plain_kw["prev_lr"] = float(p.value if isinstance(p, FloatLike) else p)
            result_want = result_summary(clean_call(**plain_kw, **plain_options))
        for tensor, c in zip(tensors, clean):
            for k, it in tensor.items():
                if k in written:
                    results[id(it)] = c[k]
    assert_backings(pool, expected_backings(pool, before, results),
                    f"after {outcome} ({error!r})")
    if outcome == "ok":
        assert result_summary(result) == result_want  # (None with check_only)
    if mode == "private":
        done = re.inner.done
        want = {k: a.copy() for k, a in re.private_before.items()}
        wl = [want[k] for k in (["param", "grad", "state_sum"] if op == "adagrad"
                                else ["param", "grad", "exp_avg", "exp_avg_sq"])]
        for _ in range(done):
            fn(*wl, step=1)
        for k in want:
            assert re.private[k].tobytes() == want[k].tobytes(), (
                f"the re-entrant step's own {k} is not {done} clean step(s) of it")


# ---------------------------------------------------------------- the group holders

@settings(max_examples=EXAMPLES // 2, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), seed=st.integers(0, 2 ** 32 - 1))
def test_groups_step_correctly_or_raise_cleanly(data, seed):
    adagrad = data.draw(st.booleans(), label="AdagradGroup")
    cls = adamcore.AdagradGroup if adagrad else adamcore.AdamGroup
    pool = Pool(seed, data.draw(st.sampled_from(CALL_DTYPES), label="dtype"))
    main_dtype = pool.dt
    chaos = Chaos(data)
    form = data.draw(st.sampled_from(CONTAINERS), label="form")
    count = data.draw(st.integers(0, 3), label="tensors")
    sizes = [data.draw(st.sampled_from(SIZES), label="size") for _ in range(count)]
    held_names = ["params", "state_sums"] if adagrad else ["params", "exp_avgs", "exp_avg_sqs"]
    amsgrad = not adagrad and data.draw(st.booleans(), label="amsgrad")
    if amsgrad:
        held_names.append("max_exp_avg_sqs")
    if COPY_DTYPES and data.draw(st.integers(0, 3), label="param_copies") == 0:
        held_names.append("param_copies")
    items: Dict[str, List[Item]] = {}
    held: Dict[str, Any] = {}
    for name in held_names:
        pool.dt = copy_dtype(data, pool, chaos) if name == "param_copies" else main_dtype
        its = [draw_item(data, pool, n, chaos, True) for n in sizes]
        if chaos.bad("list length"):
            its = its[:-1] if its else [pool.make(3, "good")]
        items[name] = its
        if chaos.bad("list"):
            items[name] = [pool.make(3, "good")]
            held[name] = items[name][0].obj
        else:
            held[name] = container(data, form, [i.obj for i in its])
    pool.dt = main_dtype

    v = Verdict()
    checked = []
    lengths = set()
    for name in held_names:
        if not isinstance(held[name], (list, tuple)):
            v.bad(f"{name} is not a list")
        else:
            lengths.add(real_len(held[name]))
    if len(lengths) > 1:
        v.bad("list lengths differ")
    if not v.errors:
        for name in held_names:
            for t, obj in enumerate(real_items(held[name])):
                checked.append((f"{name}[{t}]", check_array(v, obj, f"{name}[{t}]", True)))
    arrays = [(label, a) for label, a in checked if a is not None]
    first = dict(arrays)
    for label, a in arrays:  # (complete: every array's size is checked)
        param = first.get("params" + label[label.index("["):])
        if param is not None and a.size != param.size:
            v.bad(f"{label} has {a.size} elements but params has {param.size}")
    if not v.errors and len(arrays) == len(checked):
        check_disjoint(v, arrays)
        check_layout(v, arrays)
    note(f"{cls.__name__}({form}) sizes={sizes} kinds="
         f"{ {k: [i.kind for i in its] for k, its in items.items()} } verdict={v.outcome} "
         f"{v.errors}")
    before = pool.snapshot()
    outcome, group, error = call(cls, [held[n] for n in held_names if n != "param_copies"],
                                 {"param_copies": held["param_copies"]}
                                 if "param_copies" in held else {})
    outcome_matches(v, outcome, error)
    assert_backings(pool, before, "constructing a group")
    if outcome != "ok":
        return
    count = real_len(held["params"])
    assert len(group) == count
    sizes = [a.size for a in real_items(held["params"])]
    param_dtype = real_items(held["params"])[0].dtype if count else None

    # The group's state, as clean copies.
    clean = [{n: clean_copy(items[n][t].obj) for n in held_names} for t in range(count)]
    held_arrays = [(f"{n}[{t}]", items[n][t].obj) for n in held_names for t in range(count)]
    for round_ in range(data.draw(st.integers(1, 2), label="steps")):
        options = draw_options(data, chaos)
        grads_written = options.get("grad_scale") is not None  # unscaled in place
        grad_items = [draw_item(data, pool, n, chaos, grads_written) for n in sizes]
        gform = data.draw(st.sampled_from(CONTAINERS), label="grads form")
        if chaos.bad("grads length"):
            grad_items = grad_items[:-1] if grad_items else [pool.make(3, "good")]
        if chaos.bad("grads list"):
            grad_items = [pool.make(3, "good")]
            grads = grad_items[0].obj
        else:
            grads = container(data, gform, [i.obj for i in grad_items])
        mode = data.draw(st.sampled_from(["none", "none", "private", "same"]), label="reentry")
        re = Reentry(mode)
        if mode == "private":
            other_p = np.ones(7, np.float32)
            other_s = [np.zeros(7, np.float32) for _ in range(1 if adagrad else 2)]
            re.private = {"param": other_p, **{f"s{i}": s for i, s in enumerate(other_s)}}
            re.private_before = {k: a.copy() for k, a in re.private.items()}
            other = cls([other_p], *[[s] for s in other_s])
            other_g = [np.full(7, 0.25, np.float32)]
            re.inner = Inner(lambda: other.step(other_g, step=1))
        elif mode == "same":
            re.inner = Inner(lambda: group.step(grads, step=1))
        kwargs: Dict[str, Any] = {}
        if not chaos.bad("step given"):
            kwargs["step"] = draw_step(data, re.inner, chaos)
        hyper_names = (["lr", "lr_decay", "weight_decay", "eps"] if adagrad
                       else ["lr", "beta1", "beta2", "eps", "weight_decay"])
        for name in hyper_names:
            if data.draw(st.booleans(), label=f"give {name}"):
                kwargs[name] = draw_number(data, name, re.inner, chaos)
        flag_names = ["maximize", "diagnostics", "check_only"] + (
            [] if adagrad else ["decoupled", "bias_correction"])
        for name in flag_names:
            if data.draw(st.booleans(), label=f"give {name}"):
                kwargs[name] = draw_flag(data, name, chaos)
        if data.draw(st.booleans(), label="give prev_lr"):
            kwargs["prev_lr"] = draw_prev_lr(data, re.inner, chaos)
        if not adagrad and chaos.bad("amsgrad keyword"):
            kwargs["amsgrad"] = True  # not a parameter of AdamGroup.step
        kwargs.update(options)

        gv = Verdict()
        hyper = {}
        if "step" not in kwargs:
            gv.bad("step missing")
        else:
            hyper["step"] = step_value(gv, kwargs["step"])
        for name in hyper_names:
            if name in kwargs:
                hyper[name] = number_value(gv, name, kwargs[name])
        flags = {n: flag_value(gv, n, kwargs[n]) for n in flag_names if n in kwargs}
        if kwargs.get("prev_lr") is not None:
            number_value(gv, "prev_lr", kwargs["prev_lr"])
        plain_options = options_value(gv, options)
        if "amsgrad" in kwargs:
            gv.bad("amsgrad is not a parameter of AdamGroup.step")
        if not isinstance(grads, (list, tuple)):
            gv.bad("grads is not a list")
        elif real_len(grads) != count:
            gv.bad("grads has the wrong length")
        else:
            gchecked = [(f"grads[{t}]", check_array(gv, obj, f"grads[{t}]", grads_written))
                        for t, obj in enumerate(real_items(grads))]
            # The group's dtype, or (float32 groups) one 16-bit grads dtype for all
            # tensors, which must be the param_copies' dtype when the group has copies.
            grad_dtypes = {a.dtype for _, a in gchecked if a is not None}
            allowed = {np.dtype(param_dtype)}
            if np.dtype(param_dtype) == np.float32 and len(grad_dtypes) == 1:
                copy_dtypes = {c.dtype for c in held.get("param_copies", [])
                               if isinstance(c, np.ndarray)}
                allowed |= (grad_dtypes & GRAD_DTYPES) if not copy_dtypes else (
                    grad_dtypes & GRAD_DTYPES & copy_dtypes)
            for t, (label, a) in enumerate(gchecked):
                if a is not None and a.size != sizes[t]:
                    gv.bad(f"{label} has {a.size} elements")
                if a is not None and a.dtype not in allowed:
                    gv.bad(f"{label} has dtype {a.dtype}, params {param_dtype}")
            # grads may share memory with each other when they are only read, not when
            # grad_scale writes them, and never with the state the group holds
            if grads_written:
                check_disjoint(gv, [(label, a) for label, a in gchecked if a is not None])
            for label, a in gchecked:
                if a is not None:
                    check_disjoint(gv, [(label, a)], held_arrays)
        note(f"step {round_}: grads {gform} kinds={[i.kind for i in grad_items]} "
             f"reentry={mode} kwargs={kwargs} verdict={gv.outcome} {gv.errors} "
             f"{gv.ambiguous}")
        before = pool.snapshot()
        pre = [clean_copy(i.obj) for i in grad_items if isinstance(i.obj, np.ndarray)]
        outcome, result, error = call(group.step, [grads], kwargs)
        note(f"outcome {outcome}: {type(error).__name__ if error else result!r} {error or ''}")
        event(f"group step {outcome} with "
              + (", ".join(sorted(plain_options)) or "no step options"))
        event(f"group step {outcome}" + (f" {type(error).__name__}" if error else "")
              + (f", re-entrant steps ran" if re.inner is not None and re.inner.done else ""))
        outcome_matches(gv, outcome, error)

        inner_done = re.inner.done if (re.inner is not None and mode == "same") else 0
        clean_grads = pre if inner_done or outcome == "ok" else None

        def clean_call(**kw):
            lists = {n: [c[n] for c in clean] for n in held_names}
            if "param_copies" in lists:
                kw["param_copy"] = lists["param_copies"]
            if adagrad:
                kw.pop("decoupled", None)
                return adamcore.adagrad_step(lists["params"], clean_grads,
                                             lists["state_sums"], **kw)
            fn = adamcore.adamw_step if kw.pop("decoupled", False) else adamcore.adam_step
            kw.setdefault("weight_decay", 0.0)  # AdamGroup.step's default, whatever fn's
            vm = lists.get("max_exp_avg_sqs")
            return fn(lists["params"], clean_grads, lists["exp_avgs"], lists["exp_avg_sqs"],
                      amsgrad=vm is not None, max_exp_avg_sq=vm, **kw)

        for _ in range(inner_done):
            clean_call(step=1)
        result_want = None
        if outcome == "ok" and not flags.get("check_only"):
            plain_kw = {k: hyper[k] for k in hyper_names + ["step"] if k in kwargs}
            for k in ("maximize", "bias_correction", "diagnostics", "decoupled"):
                if k in flags:
                    plain_kw[k] = flags[k]
            if kwargs.get("prev_lr") is not None:
                p = kwargs["prev_lr"]
                plain_kw["prev_lr"] = float(p.value if isinstance(p, FloatLike) else p)
            result_want = result_summary(clean_call(**plain_kw, **plain_options))
        results = {id(items[n][t]): clean[t][n] for n in held_names for t in range(count)}
        if grads_written and clean_grads is not None:
            results.update({id(it): g for it, g in zip(grad_items, clean_grads)})
        assert_backings(pool, expected_backings(pool, before, results),
                        f"step {round_} after {outcome} ({error!r})")
        if outcome == "ok":
            assert result_summary(result) == result_want  # (None with check_only)
        if mode == "private":
            want_p = re.private_before["param"].copy()
            want_s = [re.private_before[f"s{i}"].copy() for i in range(1 if adagrad else 2)]
            want_group = cls([want_p], *[[s] for s in want_s])
            for _ in range(re.inner.done):
                want_group.step([np.full(7, 0.25, np.float32)], step=1)
            assert re.private["param"].tobytes() == want_p.tobytes()
            for i, s in enumerate(want_s):
                assert re.private[f"s{i}"].tobytes() == s.tobytes()


# ---------------------------------------------------------------- targeted cases

def _arrays(n=8):
    rng = np.random.default_rng(n)
    return [np.abs(rng.standard_normal(n)).astype(np.float32) for _ in range(4)]


def test_a_callback_replacing_the_outer_list_items_is_safe():
    """A __float__ that refills the caller's lists while the call parses its arguments,
    dropping the last reference to the arrays that were in them: the call must step one
    consistent set of arrays (the old ones, kept alive, or the new ones), never freed
    memory (the ASan run of this suite would report that)."""
    lists = [[a] for a in _arrays()]
    fresh = [np.full(8, 0.5, np.float32) for _ in range(4)]

    def swap():
        for lst, a in zip(lists, fresh):
            lst[0] = a
    outcome, _, error = call(adamcore.adam_step, lists,
                             {"step": 1, "lr": FloatLike(0.01, inner=Inner(swap))})
    assert outcome == "ok", error
    assert all(lst[0] is a for lst, a in zip(lists, fresh))
    stepped = [np.full(8, 0.5, np.float32) for _ in range(4)]
    adamcore.adam_step(*[[w] for w in stepped], step=1, lr=0.01)
    untouched = [np.full(8, 0.5, np.float32) for _ in range(4)]
    got = [a.tobytes() for a in fresh]
    assert got in ([w.tobytes() for w in stepped], [w.tobytes() for w in untouched])


def test_a_callback_stepping_the_same_group_is_consistent():
    p, g, m, v = _arrays(40)
    group = adamcore.AdamGroup([p], [m], [v])
    clean = [p.copy(), g.copy(), m.copy(), v.copy()]
    inner = Inner(lambda: group.step([g], step=1))
    group.step([g], step=IndexLike(2, inner=inner), lr=FloatLike(0.01, inner=inner))
    assert inner.done == 2
    for t, kw in ((1, {}), (1, {}), (2, {"lr": 0.01})):
        adamcore.adam_step([clean[0]], [clean[1]], [clean[2]], [clean[3]], step=t, **kw)
    assert p.tobytes() == clean[0].tobytes() and m.tobytes() == clean[2].tobytes()


# ---------------------------------------------------------------- bugs it found (fixed)

@pytest.mark.parametrize("prev_lr, match", [("0.1", "prev_lr"), (True, "prev_lr"),
                                            (FloatLike(0.1, raises=TypeError), "__float__")])
def test_prev_lr_is_checked_like_the_other_numbers(prev_lr, match):
    p, g, m, v = _arrays()
    before = [a.tobytes() for a in (p, g, m, v)]
    with pytest.raises(TypeError, match=match):
        adamcore.adam_step(p, g, m, v, step=2, diagnostics=True, prev_lr=prev_lr)
    assert [a.tobytes() for a in (p, g, m, v)] == before


def test_huge_int_hyperparameter_raises_value_error():
    p, g, m, v = _arrays()
    with pytest.raises(ValueError, match="lr"):
        adamcore.adam_step(p, g, m, v, step=1, lr=10 ** 400)


def test_exception_from_step_index_propagates():
    p, g, m, v = _arrays()
    with pytest.raises(Boom):
        adamcore.adam_step(p, g, m, v, step=IndexLike(1, raises=Boom))


def test_numpy_bool_is_not_a_number():
    p, g, m, v = _arrays()
    with pytest.raises(TypeError, match="lr"):
        adamcore.adam_step(p, g, m, v, step=1, lr=np.True_)
