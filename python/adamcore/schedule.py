"""Learning-rate schedules: callables from the step number to a learning rate.

Any callable ``lr(step) -> float`` can be given as a parameter group's ``lr`` to the
optimizers in :mod:`adamcore.optim`; ``step`` is the number of the step being taken
(1 on the first step, as in the kernels' bias correction). The classes here add what a
bare function cannot: validation, a readable ``repr`` and a JSON form, so that an
optimizer using them can be saved to a checkpoint file and loaded back.

With ``adamcore.torch`` use them through ``torch.optim.lr_scheduler.LambdaLR``::

    schedule = WarmupCosine(1e-3, warmup_steps=100, total_steps=1000)
    LambdaLR(optimizer, lambda done: schedule(done + 1) / schedule.peak_lr)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Mapping, Type

__all__ = ["Schedule", "WarmupCosine", "Constant", "schedule_from_dict"]


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class Schedule:
    """Base class of the serialisable schedules: ``schedule(step) -> lr``.

    Subclasses set ``kind`` (the name written to checkpoints), implement ``__call__``
    and ``as_dict``, and accept ``as_dict()``'s keys (minus ``kind``) as constructor
    keywords.
    """

    kind: str = ""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def as_dict(self) -> Dict[str, Any]:
        """The schedule as JSON-ready data; ``schedule_from_dict`` rebuilds it."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.as_dict() == self.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.as_dict().items())))

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.as_dict().items() if k != "kind"}
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


class Constant(Schedule):
    """The same learning rate at every step (a float ``lr`` does this too)."""

    kind = "constant"

    def __init__(self, lr: float) -> None:
        self.lr = _check_rate("lr", lr)

    def __call__(self, step: int) -> float:
        _check_count("step", step, 0)
        return self.lr

    def as_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "lr": self.lr}


class WarmupCosine(Schedule):
    """Linear warmup to ``peak_lr``, then a half-cosine decay to ``final_lr``.

    * steps ``1 .. warmup_steps``: ``peak_lr * step / warmup_steps`` (never 0, so the
      first step already moves the parameters);
    * steps ``warmup_steps .. total_steps``: ``final_lr + (peak_lr - final_lr) *
      (1 + cos(pi * progress)) / 2`` with ``progress`` going from 0 to 1;
    * after ``total_steps``: ``final_lr``.

    Step 0 (before any step) gives 0.
    """

    kind = "warmup_cosine"

    def __init__(self, peak_lr: float, *, warmup_steps: int, total_steps: int,
                 final_lr: float = 0.0) -> None:
        self.peak_lr = _check_rate("peak_lr", peak_lr)
        self.final_lr = _check_rate("final_lr", final_lr)
        self.warmup_steps = _check_count("warmup_steps", warmup_steps, 0)
        self.total_steps = _check_count("total_steps", total_steps, 1)
        if self.total_steps < self.warmup_steps:
            raise ValueError(f"total_steps ({self.total_steps}) must be >= warmup_steps "
                             f"({self.warmup_steps})")

    def __call__(self, step: int) -> float:
        step = _check_count("step", step, 0)
        if step == 0:
            return 0.0
        if step <= self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if step >= self.total_steps or decay_steps == 0:
            return self.final_lr
        progress = (step - self.warmup_steps) / decay_steps
        return self.final_lr + (self.peak_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def as_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "final_lr": self.final_lr}


_KINDS: Dict[str, Type[Schedule]] = {cls.kind: cls for cls in (Constant, WarmupCosine)}


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from ``Schedule.as_dict()`` output (raises ``ValueError`` if unknown)."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError(f"a schedule is described by a mapping with a 'kind' key, got {data!r}")
    cls = _KINDS.get(data["kind"])
    if cls is None:
        raise ValueError(f"unknown schedule kind {data['kind']!r}; known: {sorted(_KINDS)}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    try:
        return cls(**fields)
    except TypeError as err:
        raise ValueError(f"bad fields for schedule {data['kind']!r}: {err}") from None

