"""A NumPy emulation of adamcore's float32 recipe, 16-bit stores and stochastic rounding.

Written from docs/numerics.md alone ("Buffer dtypes", "AMP", "Stochastic rounding"),
sharing no code with the C++ kernels, so that the kernels' bits can be checked against an
independent implementation of the documented recipe (and golden vectors made without
them). Everything is vectorised NumPy: float32 arithmetic for the element operations
(NumPy's float32 add, subtract, multiply, divide and sqrt are the correctly rounded IEEE
operations), uint32/uint64 integer arithmetic for the conversions and the hash.

- :func:`fma32` is a float32 fused multiply-add, exact: the product of two float32
  values is exact in float64, the sum is taken in float64 with *round to odd* (its
  rounding error recovered exactly by TwoSum), and rounding that to float32 is then
  correctly rounded (float64 has more than 24 + 2 bits).
- :func:`to_bf16_bits` / :func:`to_f16_bits` are the documented round-to-nearest-even
  conversions; :func:`stochastic_bits` and :func:`round_stochastic` the documented hash
  (SplitMix64 for the keys -- its increment included, see :data:`GAMMA` -- and two
  multiply-xorshift rounds per element) and stochastic rounding for bfloat16 and float16.
- :func:`adam_step`, :func:`adamw_step`, :func:`adagrad_step` take the functional API's
  arguments (single arrays or lists, the list position being the tensor's stream) for
  every layout whose arithmetic is float32 -- all float32, all bfloat16 or all float16,
  and the mixed layouts with float32 state or params -- with ``param_copy``,
  ``grad_scale``, ``found_inf``, ``rounding`` and ``seed``, and update the arrays in
  place. float64 layouts (double arithmetic, whose fused multiply-adds have no wider
  type to be emulated in) raise :class:`NotImplementedError`.

bfloat16 arrays are ``ml_dtypes.bfloat16`` (any 2-byte dtype whose name is "bfloat16").
Slow compared with the kernels; meant for checking.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import List, Optional

import numpy as np

__all__ = [
    "BUFFERS", "mix64", "call_key", "buffer_key", "stochastic_bits", "fma32",
    "widen", "to_bf16_bits", "to_f16_bits", "round_stochastic", "store",
    "adam_step", "adamw_step", "adagrad_step",
]

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
# The buffer numbers of the hash, in the order docs/numerics.md lists the 16-bit stores.
BUFFERS = {"param": 0, "exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 3, "state_sum": 4,
           "param_copy": 5}
_HASH_MUL1 = np.uint32(0x7FEB352D)
_HASH_MUL2 = np.uint32(0x846CA68B)
F32 = np.float32


# ---------------------------------------------------------------- the hash

# The kernels' mix64 adds SplitMix64's increment (the golden gamma) before the finaliser,
# i.e. it is one SplitMix64 output from state z. docs/numerics.md calls it "SplitMix64's
# finaliser", which reads as the finaliser alone; the kernels' bits are the ones
# emulated here (GAMMA = 0 would give the finaliser alone).
GAMMA = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    """SplitMix64's output for state ``z``: ``z + GAMMA``, then its finaliser (64-bit)."""
    z = (z + GAMMA) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def call_key(seed: int, step: int) -> int:
    """The call's key: ``mix64(seed ^ mix64(step))``."""
    return mix64((seed & M64) ^ mix64(step))


def buffer_key(key: int, stream: int, buffer: int, hi: int = 0) -> int:
    """``key32`` of one buffer of one tensor, for element indices whose upper 32 bits are
    ``hi``: the low 32 bits of ``mix64(key ^ mix64(stream ^ mix64(hi*6 + buffer)))``."""
    return mix64(key ^ mix64((stream & M64) ^ mix64(hi * 6 + buffer))) & M32


def _h(x: np.ndarray) -> np.ndarray:
    """Two multiply-xorshift rounds on uint32 lanes (wrapping arithmetic)."""
    x = x ^ (x >> np.uint32(16))
    x = x * _HASH_MUL1
    x = x ^ (x >> np.uint32(15))
    x = x * _HASH_MUL2
    return x ^ (x >> np.uint32(16))


def stochastic_bits(seed: int, step: int, stream: int, buffer: int, n: int,
                    start: int = 0) -> np.ndarray:
    """The 32 random bits ``r`` of elements ``start .. start+n-1`` of one buffer."""
    key = call_key(seed, step)
    index = np.arange(start, start + n, dtype=np.uint64)
    lo = (index & np.uint64(M32)).astype(np.uint32)
    hi = (index >> np.uint64(32)).astype(np.uint64)
    out = np.empty(n, dtype=np.uint32)
    for h in np.unique(hi):
        where = hi == h
        k32 = np.uint32(buffer_key(key, stream, buffer, int(h)))
        with np.errstate(over="ignore"):
            out[where] = _h(lo[where] + k32)
    return out


# ---------------------------------------------------------------- float32 arithmetic

def fma32(a, b, c) -> np.ndarray:
    """a*b + c for float32 arrays, rounded once to float32 (exact emulation)."""
    a64 = np.asarray(a, dtype=F32).astype(np.float64)
    b64 = np.asarray(b, dtype=F32).astype(np.float64)
    c64 = np.asarray(c, dtype=F32).astype(np.float64)
    with np.errstate(all="ignore"):
        p = a64 * b64                       # exact: 48 significant bits at most
        s = p + c64
        bb = s - p                          # TwoSum: s + e == p + c exactly
        e = (p - (s - bb)) + (c64 - bb)
        inexact = np.isfinite(e) & (e != 0)
        even = (s.view(np.uint64) & np.uint64(1)) == 0
        fix = inexact & even                # round to odd: step towards the exact value
        if np.any(fix):
            s = np.where(fix, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
        return s.astype(F32)


def _maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torch's maximum on x86: a > b ? a : b, NaN when either is NaN."""
    out = np.where(a > b, a, b)
    return np.where(np.isnan(a) | np.isnan(b), F32(np.nan), out).astype(F32)


# ---------------------------------------------------------------- conversions

def _kind(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "float32"
    if dtype == np.float64:
        return "float64"
    if dtype == np.float16:
        return "float16"
    if dtype.itemsize == 2 and dtype.name == "bfloat16":
        return "bfloat16"
    raise TypeError(f"dtype {dtype} is not float32, float64, bfloat16 or float16")


def widen(a: np.ndarray) -> np.ndarray:
    """A buffer's values as float32, exactly (bfloat16: its bits become the top half)."""
    kind = _kind(a.dtype)
    if kind == "bfloat16":
        return (np.ascontiguousarray(a).view(np.uint16).astype(np.uint32)
                << np.uint32(16)).view(F32)
    if kind == "float16":
        return np.asarray(a).astype(F32)
    if kind == "float32":
        return np.array(a, dtype=F32)
    raise NotImplementedError("float64 buffers: the emulation covers float32 arithmetic only")


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (NaN: a quiet NaN, same sign)."""
    bits = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
            >> np.uint32(16)
    nan = (bits >> np.uint32(16)) | np.uint32(0x40)
    return np.where(np.isnan(x), nan, rounded).astype(np.uint16)


def to_f16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 bits, IEEE round to nearest even (NumPy's conversion)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(x, dtype=F32).astype(np.float16).view(np.uint16)


def round_stochastic(x: np.ndarray, kind: str, r: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded stochastically to a value of ``kind`` ("bfloat16" or
    "float16") with random bits ``r``; returned as float32 (exactly representable)."""
    x = np.ascontiguousarray(x, dtype=F32)
    bits = x.view(np.uint32)
    nan = np.isnan(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "bfloat16":
            kept = ((bits + (r >> np.uint32(16))) & np.uint32(0xFFFF0000)).view(F32)
            return np.where(nan, x, kept)
        if kind != "float16":
            raise ValueError(f"kind must be 'bfloat16' or 'float16', got {kind!r}")
        r13 = r >> np.uint32(19)
        magnitude = np.abs(x)
        normal = ((bits + r13) & np.uint32(0xFFFFE000)).view(F32)
        units = np.trunc(magnitude * F32(2.0 ** 24) + r13.astype(F32) * F32(2.0 ** -13))
        sub = ((units * F32(2.0 ** -24)).view(np.uint32)
               | (bits & np.uint32(0x80000000))).view(F32)
        rounded = np.where(magnitude < F32(2.0 ** -14), sub, normal)
        return np.where(nan, x, rounded)


def store(out: np.ndarray, x: np.ndarray, *, rounding: str = "nearest",
          r: Optional[np.ndarray] = None) -> None:
    """Store float32 ``x`` into ``out`` (its dtype): float32 as is, 16-bit rounded to
    nearest even, or stochastically with the random bits ``r``."""
    kind = _kind(out.dtype)
    x = np.asarray(x, dtype=F32)
    if kind == "float32":
        out[...] = x
        return
    if kind == "float64":
        raise NotImplementedError("float64 buffers are not emulated")
    if rounding == "stochastic":
        x = round_stochastic(x, kind, r)
    bits = to_bf16_bits(x) if kind == "bfloat16" else to_f16_bits(x)
    out.view(np.uint16)[...] = bits


# ---------------------------------------------------------------- host constants

def _fl(x: float) -> np.float32:
    with np.errstate(over="ignore"):
        return F32(x)


def _fma64(a: float, b: float, c: float) -> float:
    """a*b + c rounded once to double (exactly, via rationals; finite inputs)."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def _r16(x: np.float32, kind: str) -> np.float32:
    a = np.array([x], dtype=F32)
    bits = to_bf16_bits(a) if kind == "bfloat16" else to_f16_bits(a)
    if kind == "bfloat16":
        return (bits.astype(np.uint32) << np.uint32(16)).view(F32)[0]
    return bits.view(np.float16).astype(F32)[0]


# ---------------------------------------------------------------- the steps

def _as_list(x) -> Optional[List[np.ndarray]]:
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _check_rounding(rounding: str, seed) -> int:
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return int(seed or 0)


class _Stores:
    """Stores of one tensor of one call: stochastic bits drawn per buffer when asked."""

    def __init__(self, rounding: str, seed: int, step: int, stream: int):
        self.rounding, self.seed, self.step, self.stream = rounding, seed, step, stream

    def __call__(self, name: str, out: np.ndarray, x: np.ndarray) -> None:
        r = None
        if self.rounding == "stochastic" and _kind(out.dtype) in ("bfloat16", "float16"):
            r = stochastic_bits(self.seed, self.step, self.stream, BUFFERS[name], out.size)
        store(out, x, rounding=self.rounding, r=r)


def _unscale(grad: np.ndarray, grad_scale) -> np.ndarray:
    """The gradient as float32, divided by grad_scale (quotient written back rounded)."""
    g = widen(grad)
    if grad_scale is None:
        return g
    with np.errstate(all="ignore"):
        g = (g / F32(grad_scale)).astype(F32)
    store(grad, g)  # the written-back grads round to nearest even, always
    return g


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, amsgrad=False, max_exp_avg_sq=None,
              maximize=False, bias_correction=True, param_copy=None, grad_scale=None,
              found_inf=False, rounding="nearest", seed=0, decoupled=False) -> None:
    """Adam (``decoupled=True``: AdamW) as docs/numerics.md specifies it, in place."""
    seed = _check_rounding(rounding, seed)
    params, grads = _as_list(param), _as_list(grad)
    ms, vs = _as_list(exp_avg), _as_list(exp_avg_sq)
    vmaxs = _as_list(max_exp_avg_sq) if amsgrad else None
    copies = _as_list(param_copy)
    if found_inf:
        return
    if bias_correction:
        bc1 = 1.0 - math.pow(beta1, step)
        bc2 = 1.0 - math.pow(beta2, step)
        S, D = _fl(-(lr / bc1)), _fl(math.sqrt(bc2))
    else:
        S, D = _fl(-lr), F32(1.0)
    W = _fl(1.0 - beta1)
    W1 = F32(W - F32(1.0))
    B2, C2, E, L = _fl(beta2), _fl(1.0 - beta2), _fl(eps), _fl(weight_decay)
    K = _fl(_fma64(-lr, weight_decay, 1.0))
    for i, (p16, g16, m16, v16) in enumerate(zip(params, grads, ms, vs)):
        stores = _Stores(rounding, seed, step, i)
        with np.errstate(all="ignore"):
            g = _unscale(g16, grad_scale)
            if maximize:
                g = -g
            p, m, v = widen(p16), widen(m16), widen(v16)
            if weight_decay != 0.0:
                if decoupled:
                    p = (p * K).astype(F32)
                else:
                    g = fma32(p, L, g)
            diff = (g - m).astype(F32)
            m = fma32(W, diff, m) if W < 0.5 else fma32(W1, diff, g)
            v = fma32((C2 * g).astype(F32), g, (v * B2).astype(F32))
            vh = v
            if amsgrad:
                vmax = _maximum(widen(vmaxs[i]), v)
                vh = vmax
            den = ((np.sqrt(vh) / D).astype(F32) + E).astype(F32)
            p = (p + ((S * m).astype(F32) / den).astype(F32)).astype(F32)
        stores("param", p16, p)
        stores("exp_avg", m16, m)
        stores("exp_avg_sq", v16, v)
        if amsgrad:
            stores("max_exp_avg_sq", vmaxs[i], vmax)
        if copies is not None:
            stores("param_copy", copies[i], p)


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
               eps=1e-8, weight_decay=1e-2, **kw) -> None:
    """AdamW: :func:`adam_step` with decoupled weight decay."""
    adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
              eps=eps, weight_decay=weight_decay, decoupled=True, **kw)


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False, param_copy=None, grad_scale=None,
                 found_inf=False, rounding="nearest", seed=0) -> None:
    """AdaGrad as docs/numerics.md specifies it, in place."""
    seed = _check_rounding(rounding, seed)
    params, grads, sums = _as_list(param), _as_list(grad), _as_list(state_sum)
    copies = _as_list(param_copy)
    if found_inf:
        return
    clr = lr / _fma64(float(step - 1), lr_decay, 1.0)
    for i, (p16, g16, s16) in enumerate(zip(params, grads, sums)):
        kinds = {_kind(p16.dtype), _kind(g16.dtype), _kind(s16.dtype)}
        N, L, E = -_fl(clr), _fl(weight_decay), _fl(eps)
        if len(kinds) == 1 and kinds <= {"bfloat16", "float16"} and copies is None:
            kind = kinds.pop()  # torch's 16-bit body rounds its constants to the dtype
            N, L, E = -_r16(_fl(clr), kind), _r16(L, kind), _r16(E, kind)
        stores = _Stores(rounding, seed, step, i)
        with np.errstate(all="ignore"):
            g = _unscale(g16, grad_scale)
            if maximize:
                g = -g
            p, s = widen(p16), widen(s16)
            if weight_decay != 0.0:
                g = fma32(p, L, g)
            s = fma32(g, g, s)
            std = (np.sqrt(s) + E).astype(F32)
            p = (p + ((N * g).astype(F32) / std).astype(F32)).astype(F32)
        stores("param", p16, p)
        stores("state_sum", s16, s)
        if copies is not None:
            stores("param_copy", copies[i], p)
