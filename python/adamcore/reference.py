"""A float64 reference of adamcore's optimizers, in NumPy.

The same formulas as the kernels (docs/numerics.md) evaluated in float64 with
float64 state: the "true" trajectory that float32 results are measured against.
The functions mirror the native ones: same arguments, in-place updates of float64
arrays, ``None`` returned. They are slow and meant for checking, not training.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["adam_step", "adamw_step", "adagrad_step", "adam_scalars"]


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


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, amsgrad=False, max_exp_avg_sq=None,
              maximize=False, bias_correction=True, decoupled=False) -> None:
    """Adam (L2 decay added to the gradient; ``decoupled=True`` gives AdamW) in float64."""
    p = _f64("param", param)
    g = np.asarray(grad, dtype=np.float64)
    m = _f64("exp_avg", exp_avg)
    v = _f64("exp_avg_sq", exp_avg_sq)
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
    v_hat = v
    if amsgrad:
        vm = _f64("max_exp_avg_sq", max_exp_avg_sq)
        np.fmax(vm, v, out=vm)
        vm[np.isnan(v)] = np.nan  # NaN propagates, as in the kernels
        v_hat = vm
    step_size, bc2_sqrt = adam_scalars(step, lr, beta1, beta2, bias_correction)
    den = np.sqrt(v_hat) / bc2_sqrt + eps
    p -= step_size * m / den


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
               eps=1e-8, weight_decay=1e-2, amsgrad=False, max_exp_avg_sq=None,
               maximize=False, bias_correction=True) -> None:
    """AdamW (decoupled weight decay) in float64."""
    adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
              eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
              max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
              bias_correction=bias_correction, decoupled=True)


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False) -> None:
    """AdaGrad in float64."""
    p = _f64("param", param)
    g = np.asarray(grad, dtype=np.float64)
    s = _f64("state_sum", state_sum)
    if maximize:
        g = -g
    if weight_decay != 0.0:
        g = g + weight_decay * p
    s += g * g
    clr = lr / (1.0 + (step - 1) * lr_decay)
    p -= clr * g / (np.sqrt(s) + eps)
