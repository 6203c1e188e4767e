"""Type stubs for adamcore.torch: torch.optim optimizers running adamcore's kernels.

Defaults are torch.optim's, kept in one place: adamcore._engine (ADAM, ADAGRAD)."""

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch

from ._core import ConventionName

class Adam(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: Union[float, torch.Tensor] = ...,
                 betas: Tuple[float, float] = ..., eps: float = ...,
                 weight_decay: float = ..., amsgrad: bool = ..., *,
                 foreach: Optional[bool] = None, maximize: bool = ..., capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True,
                 decoupled_weight_decay: bool = ..., convention: ConventionName = ...,
                 tail_width: int = ..., eps_root: float = ..., nesterov: bool = ...) -> None: ...
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any: ...  # type: ignore[override]

class AdamW(Adam):
    def __init__(self, params: Iterable[Any], lr: Union[float, torch.Tensor] = ...,
                 betas: Tuple[float, float] = ..., eps: float = ...,
                 weight_decay: float = ..., amsgrad: bool = ..., *, maximize: bool = ...,
                 foreach: Optional[bool] = None, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True,
                 convention: ConventionName = ..., tail_width: int = ...,
                 eps_root: float = ..., nesterov: bool = ...) -> None: ...

class Adagrad(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: Union[float, torch.Tensor] = ...,
                 lr_decay: float = ..., weight_decay: float = ...,
                 initial_accumulator_value: float = ..., eps: float = ...,
                 foreach: Optional[bool] = None, *, maximize: bool = ...,
                 differentiable: bool = False, fused: Optional[bool] = True,
                 convention: ConventionName = ..., tail_width: int = ...) -> None: ...
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any: ...  # type: ignore[override]

def torch_tail_width() -> int: ...
def to_torch_state_dict(state_dict: Mapping[str, Any], **group_options: Any) -> Dict[str, Any]: ...
