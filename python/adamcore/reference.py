"""A float64 reference of adamcore's optimizers, in NumPy.

The same formulas as the kernels (docs/numerics.md) evaluated in float64 with
float64 state: the "true" trajectory that float32 results are measured against.
The functions mirror the native ones: same arguments, in-place updates of float64
arrays, ``None`` returned. They are slow and meant for checking, not training.

Other layouts (docs/numerics.md, "Buffer dtypes"): ``layout=`` names the dtype each
buffer is *stored* in (``{"param": ..., "grad": ..., "state": ..., "param_copy": ...}``,
each "float32", "float64", "bfloat16" or "float16"). The arrays stay float64; the step
is computed in float64 on their (already representable) values, and then every buffer
stored in a 16-bit dtype is rounded once to that dtype -- the documented recipe, with
float64 in place of float32 arithmetic. ``param_copy`` (a float64 array) receives the new
params rounded to the copy's dtype. ``grad_scale`` divides the gradient (by the float32
value of the scale) and writes the quotient back, rounded to a 16-bit grad dtype;
``found_inf`` writes nothing. ``rounding="stochastic"`` rounds the 16-bit stores with the
documented hash of ``seed`` and ``step`` (stream 0, as for a single array), applied to
the float64 value rounded to float32 first. Buffers stored in float32 keep their
float64 values, as in the all-float32 reference. AdaGrad in a same-dtype 16-bit layout
rounds ``lr / (1 + (step-1) lr_decay)``, ``weight_decay`` and ``eps`` to the dtype first,
as the kernels (and torch) do (float16's default eps becomes 0). So the reference is never bitwise: it
is compared with a stated tolerance (tests/test_golden_layouts.py states it for the
16-bit layouts, in ulps of the stored dtype).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

__all__ = ["adam_step", "adamw_step", "adagrad_step", "adam_scalars", "round_stored", "sgd_step",
           "lion_step"]


def _f64(name: str, a: np.ndarray) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float64:
        raise TypeError(f"{name} must be a float64 numpy.ndarray for the reference")
    return a


def adam_scalars(step: int, lr: float, beta1: float, beta2: float,
                 bias_correction: bool = True) -> tuple[float, float]:
    """(step_size, sqrt(bc2)) for step ``step`` (1-based), in double like the kernels' host code."""
    if not bias_correction:
        return lr, 1.0
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    return lr / bc1, math.sqrt(bc2)


_BUFFER_DTYPE = {"param": "param", "exp_avg": "state", "exp_avg_sq": "state",
                 "max_exp_avg_sq": "state", "state_sum": "state", "param_copy": "param_copy",
                 "grad": "grad"}


def round_stored(values: np.ndarray, dtype: Optional[str], *, rounding: str = "nearest",
                 seed: int = 0, step: int = 1, buffer: str = "param") -> np.ndarray:
    """``values`` (float64) rounded once to the 16-bit ``dtype`` ("bfloat16" or "float16")
    and returned as float64; other dtypes (float32, float64, None) return them unchanged.

    Round to nearest even goes through float32 (the kernels' arithmetic) then to the
    16-bit dtype; stochastic rounding applies the documented rounding and hash
    (:mod:`adamcore._sr_emulation`, stream 0) to the float32 value."""
    if dtype not in ("bfloat16", "float16"):
        return values
    from . import _sr_emulation as sr

    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.asarray(values, dtype=np.float64).astype(np.float32)
    if rounding == "stochastic":
        r = sr.stochastic_bits(seed, step, 0, sr.BUFFERS[buffer], x32.size)
        x32 = sr.round_stochastic(x32.ravel(), dtype, r).reshape(x32.shape)
    bits = sr.to_bf16_bits(x32) if dtype == "bfloat16" else sr.to_f16_bits(x32)
    if dtype == "bfloat16":
        out = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        out = bits.view(np.float16).astype(np.float32)
    return out.astype(np.float64)


class _Layout:
    """Rounds each buffer to its stored dtype after a reference step."""

    def __init__(self, layout: Optional[Dict[str, Optional[str]]], rounding: str, seed,
                 step: int):
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        self.layout = dict(layout or {})
        self.rounding, self.seed, self.step = rounding, int(seed or 0), step

    def same_16bit(self) -> Optional[str]:
        """The dtype of a same-dtype 16-bit layout (params, grads, state; no copy)."""
        lay = self.layout
        dtype = lay.get("param")
        if dtype in ("bfloat16", "float16") and lay.get("grad") == lay.get("state") == dtype \
                and not lay.get("param_copy"):
            return dtype
        return None

    def store(self, name: str, a: np.ndarray) -> None:
        dtype = self.layout.get(_BUFFER_DTYPE[name])
        rounding = "nearest" if name == "grad" else self.rounding
        a[...] = round_stored(a, dtype, rounding=rounding, seed=self.seed, step=self.step,
                              buffer="param" if name == "grad" else name)


def _unscale(grad, grad_scale, lay: _Layout) -> np.ndarray:
    g = np.asarray(grad, dtype=np.float64)
    if grad_scale is None:
        return g
    g = g / float(np.float32(grad_scale))
    if isinstance(grad, np.ndarray) and grad.dtype == np.float64 and grad.flags.writeable:
        grad[...] = g
        lay.store("grad", grad)
    return g


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, amsgrad=False, max_exp_avg_sq=None,
              maximize=False, bias_correction=True, decoupled=False, layout=None,
              param_copy=None, grad_scale=None, found_inf=False, rounding="nearest",
              seed=0) -> None:
    """Adam (L2 decay added to the gradient; ``decoupled=True`` gives AdamW) in float64."""
    p = _f64("param", param)
    m = _f64("exp_avg", exp_avg)
    v = _f64("exp_avg_sq", exp_avg_sq)
    lay = _Layout(layout, rounding, seed, step)
    if found_inf:
        return
    g = _unscale(grad, grad_scale, lay)
    if maximize:
        g = -g
    if weight_decay != 0.0:
        if decoupled:
            p *= 1.0 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m += (1.0 - beta1) * (g - m)
    v *= beta2
    v += (1.0 - beta2) * g * g
    v_hat = v.copy()
    if amsgrad:
        vm = _f64("max_exp_avg_sq", max_exp_avg_sq)
        np.fmax(vm, v, out=vm)
        vm[np.isnan(v)] = np.nan  # NaN propagates, as in the kernels
        v_hat = vm.copy()
    step_size, bc2_sqrt = adam_scalars(step, lr, beta1, beta2, bias_correction)
    den = np.sqrt(v_hat) / bc2_sqrt + eps
    p -= step_size * m / den
    # Each buffer rounded once to its stored dtype (the update used the unrounded values).
    lay.store("param", p)
    lay.store("exp_avg", m)
    lay.store("exp_avg_sq", v)
    if amsgrad:
        lay.store("max_exp_avg_sq", vm)
    if param_copy is not None:
        _f64("param_copy", param_copy)[...] = p
        lay.store("param_copy", param_copy)


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
               eps=1e-8, weight_decay=1e-2, amsgrad=False, max_exp_avg_sq=None,
               maximize=False, bias_correction=True, **layout_options) -> None:
    """AdamW (decoupled weight decay) in float64."""
    adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
              eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
              max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
              bias_correction=bias_correction, decoupled=True, **layout_options)


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False, layout=None, param_copy=None, grad_scale=None,
                 found_inf=False, rounding="nearest", seed=0) -> None:
    """AdaGrad in float64."""
    p = _f64("param", param)
    s = _f64("state_sum", state_sum)
    lay = _Layout(layout, rounding, seed, step)
    if found_inf:
        return
    g = _unscale(grad, grad_scale, lay)
    if maximize:
        g = -g
    clr = lr / (1.0 + (step - 1) * lr_decay)
    same16 = lay.same_16bit()
    if same16:  # the documented 16-bit rule: AdaGrad's constants rounded to the dtype
        clr, weight_decay, eps = (float(round_stored(np.array([x]), same16)[0])
                                  for x in (clr, weight_decay, eps))
    if weight_decay != 0.0:
        g = g + weight_decay * p
    s += g * g
    p -= clr * g / (np.sqrt(s) + eps)
    lay.store("param", p)
    lay.store("state_sum", s)
    if param_copy is not None:
        _f64("param_copy", param_copy)[...] = p
        lay.store("param_copy", param_copy)


def sgd_step(param, grad, momentum_buffer=None, *, lr=1e-3, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, first_step=False) -> None:
    """SGD in float64 (all-float64 buffers only): docs/numerics.md's recipe, each fused
    multiply-add evaluated as a product and a sum (float64 is the reference, not a bit
    pattern to match)."""
    p = _f64("param", param)
    g = -_f64("grad", grad) if maximize else _f64("grad", grad).copy()
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        m = _f64("momentum_buffer", momentum_buffer)
        m[...] = g if first_step else momentum * m + (1.0 - dampening) * g
        g = g + momentum * m if nesterov else m.copy()
    p -= lr * g


def lion_step(param, grad, exp_avg, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0,
              maximize=False) -> None:
    """Lion (Chen et al. 2023) in float64: c = b1*m + (1-b1)*g; p = p*(1 - lr*wd) - lr*sign(c);
    m = b2*m + (1-b2)*g. sign(0) is 0 and a NaN stays NaN, as in the paper convention."""
    p = _f64("param", param)
    g = -_f64("grad", grad) if maximize else _f64("grad", grad)
    m = _f64("exp_avg", exp_avg)
    c = beta1 * m + (1.0 - beta1) * g
    p *= 1.0 - lr * weight_decay
    p -= lr * np.sign(c)
    m[...] = beta2 * m + (1.0 - beta2) * g
