"""The total gradient norm and gradient clipping, reproducible everywhere.

``grad_norm(grads)`` and ``clip_grad_norm(grads, max_norm)`` take a NumPy array or a
list of arrays (float32, float64, ``ml_dtypes.bfloat16`` or float16, mixed freely). The
norm has the same bits on every ISA (scalar, AVX2, AVX-512, NEON), for every thread
count and for any split of the grads into calls or groups, in any order (``GradNorm``
accumulates across calls). How: docs/numerics.md, "The gradient norm".
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from . import _core
from ._core import GradNorm

__all__ = ["GradNorm", "clip_coefficient", "clip_grad_norm", "grad_norm", "scale_grads"]

Grads = Union[np.ndarray, Sequence[np.ndarray]]


def grad_norm(grads: Grads, norm_type: float = 2.0) -> float:
    """The total ``norm_type``-norm of ``grads``, as if concatenated into one vector.

    ``norm_type``: 2 (default), 1, ``inf`` (largest ``|g|``) or any finite p > 0.
    Returns a Python float (the norm in double, rounded once): NaN if any element is
    NaN, ``inf`` if any is infinite; 0.0 for no grads. Reads the grads only.
    """
    return _core.grad_norm(grads, norm_type)


def clip_grad_norm(
    grads: Grads,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale ``grads`` in place so that their total norm is at most ``max_norm``.

    Like ``torch.nn.utils.clip_grad_norm_`` (which takes parameters; this takes the
    gradient arrays): the coefficient is ``min(max_norm / (total_norm + 1e-6), 1)`` in
    torch's arithmetic for the grads' dtype (float32: ``fl(fl(1 / fl(fl(n) + fl(1e-6)))
    * fl(max_norm))``, with ``n`` our norm rounded to float32; bfloat16/float16: each
    step rounded to that dtype; float64 in double; mixed dtypes: torch's promotion), and
    every element becomes ``g * coef`` as torch's ``_foreach_mul_`` computes it. When the
    coefficient is 1 nothing is written (``g * 1 == g``).

    Returns the total norm (a Python float, in double; ``torch`` returns it as a
    tensor of the grads' dtype). With ``error_if_nonfinite=True`` a NaN or infinite
    norm raises ``RuntimeError`` and nothing is written. Every argument is checked
    before anything is written (``TypeError``/``ValueError`` naming it).
    """
    return _core.clip_grad_norm(grads, max_norm, norm_type, error_if_nonfinite)


def clip_coefficient(total_norm: float, max_norm: float, dtype: str = "float32") -> float:
    """torch's clip coefficient for a total norm of ``dtype``, exactly as torch computes it.

    ``dtype``: 'float32', 'float64', 'bfloat16' or 'float16' (the result is a value of
    that dtype, returned as a float).
    """
    return _core.clip_coefficient(total_norm, max_norm, dtype)


def scale_grads(grads: Grads, coef: float) -> None:
    """Multiply ``grads`` in place by ``coef`` as torch's ``_foreach_mul_(grads, c)`` does
    with a 0-dim tensor ``c``: float32 and 16-bit grads ``fl32(g * fl32(coef))`` stored
    rounded to nearest even in their dtype, float64 grads ``g * coef`` in double.

    With ``clip_coefficient`` this is torch's ``clip_grads_with_norm_`` for a norm
    computed elsewhere. The grads are checked as clip_grad_norm checks them.
    """
    _core.scale_grads(grads, coef)
