"""Type stubs for adamcore.torch: torch.optim optimizers running adamcore's kernels."""

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch

class Adam(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: Union[float, torch.Tensor] = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *,
                 foreach: Optional[bool] = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True,
                 decoupled_weight_decay: bool = False) -> None: ...
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any: ...  # type: ignore[override]

class AdamW(Adam):
    def __init__(self, params: Iterable[Any], lr: Union[float, torch.Tensor] = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: Optional[bool] = None, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True) -> None: ...

class Adagrad(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: Union[float, torch.Tensor] = 1e-2,
                 lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 foreach: Optional[bool] = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True) -> None: ...
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any: ...  # type: ignore[override]

def to_torch_state_dict(state_dict: Mapping[str, Any], **group_options: Any) -> Dict[str, Any]: ...
