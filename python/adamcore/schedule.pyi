"""Type stubs for adamcore.schedule: learning-rate schedules (step -> lr)."""

from typing import Any, Dict, Mapping

class Schedule:
    kind: str
    def __call__(self, step: int) -> float: ...
    def as_dict(self) -> Dict[str, Any]: ...

class Constant(Schedule):
    lr: float
    def __init__(self, lr: float) -> None: ...

class WarmupCosine(Schedule):
    peak_lr: float
    final_lr: float
    warmup_steps: int
    total_steps: int
    def __init__(self, peak_lr: float, *, warmup_steps: int, total_steps: int,
                 final_lr: float = 0.0) -> None: ...

def schedule_from_dict(data: Mapping[str, Any]) -> Schedule: ...
