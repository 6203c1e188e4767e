"""adamcore: fast, exact CPU kernels for Adam, AdamW, AMSGrad and AdaGrad.

The functional API updates contiguous float32 NumPy arrays in place::

    adamcore.adam_step(param, grad, exp_avg, exp_avg_sq, step=1, lr=1e-3)

Every ISA (scalar, AVX2, AVX-512, NEON) and every thread count gives the same bits,
and those bits are torch's fused CPU kernel's (docs/numerics.md).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from . import _core, reference
from ._core import (
    AdagradGroup,
    AdamGroup,
    GammaStats,
    adagrad_step,
    adam_step,
    adamw_step,
    available_isas,
    best_isa,
    compiled_isas,
    get_isa,
    get_num_threads,
    get_parallel_threshold,
    lion_step,
    set_isa,
    set_num_threads,
    set_parallel_threshold,
    sgd_step,
)
from .clip import GradNorm, clip_coefficient, clip_grad_norm, grad_norm, scale_grads

if TYPE_CHECKING:  # served lazily at run time (see _LAZY)
    from .optim import AMSGrad, Adagrad, Adam, AdamW
    from .optim import SGD, Lion

__version__: str = _core.__version__

from . import _ranks  # noqa: E402  (several ranks on one host share its cores)
_ranks.apply(set_num_threads, get_num_threads)

__all__ = [
    "AdagradGroup",
    "AdamGroup",
    "GammaStats",
    "GradNorm",
    "adagrad_step",
    "adam_step",
    "adamw_step",
    "available_isas",
    "best_isa",
    "clip_coefficient",
    "clip_grad_norm",
    "compiled_isas",
    "get_isa",
    "get_num_threads",
    "get_parallel_threshold",
    "grad_norm",
    "lion_step",
    "runtime_info",
    "scale_grads",
    "set_isa",
    "set_num_threads",
    "set_parallel_threshold",
    "sgd_step",
    "reference",
    "use_isa",
    "__version__",
]

# Names served by submodules that import more (or later) than the kernels need.
_LAZY = {
    "Adam": "adamcore.optim",
    "AdamW": "adamcore.optim",
    "AMSGrad": "adamcore.optim",
    "Adagrad": "adamcore.optim",
    "SGD": "adamcore.optim",
    "Lion": "adamcore.optim",
    "oracle": "adamcore.oracle",
    "reddi": "adamcore.reddi",
    "phase": "adamcore.phase",
    "golden": "adamcore.golden",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adamcore' has no attribute {name!r}")
    import importlib

    mod = importlib.import_module(module)
    return mod if module.endswith("." + name) else getattr(mod, name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[str]:
    """Run the enclosed steps with the kernels of ISA ``name``, then restore the previous one.

    The ISA is process-wide: other threads stepping meanwhile use it too.
    """
    previous = get_isa()
    set_isa(name)
    try:
        yield name
    finally:
        set_isa(previous)


def runtime_info() -> dict:
    """What was compiled, what this CPU supports, and what is in use.

    Keys: ``isa`` (active), ``best`` (what dispatch picked), ``compiled``, ``supported``,
    ``threads``, ``openmp``, ``parallel_threshold`` (elements below which a step stays
    on the calling thread), ``forked_child`` (this process was forked after threads
    ran: every step runs on the calling thread), ``stalls`` (threaded steps whose
    caller waited for a helper the OS had not scheduled), ``solo_steps_left`` (steps
    that will still run on the calling thread alone after the last stall) and
    ``version``.
    """
    status = _core.threading_status()
    return {
        "isa": get_isa(),
        "best": best_isa(),
        "compiled": compiled_isas(),
        "supported": available_isas(),
        "threads": get_num_threads(),
        "openmp": _core.built_with_openmp(),
        "parallel_threshold": get_parallel_threshold(),
        "forked_child": status["forked_child"],
        "stalls": status["stalls"],
        "solo_steps_left": status["solo_steps_left"],
        "version": __version__,
    }
