"""Type stubs for adamcore.optim: optimizer classes over float32 NumPy arrays."""

import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._core import GammaStats

Float32Array = npt.NDArray[np.float32]
LearningRate = Union[float, Callable[[int], float]]
PathLike = Union[str, os.PathLike[str]]
ParamsArg = Union[Iterable[Float32Array], Iterable[Mapping[str, Any]]]

FORMAT_VERSION: int

class CheckpointError(ValueError): ...

class Optimizer:
    defaults: Dict[str, Any]
    param_groups: List[Dict[str, Any]]
    state: Dict[int, Dict[str, Any]]
    def __init__(self, params: ParamsArg, defaults: Mapping[str, Any]) -> None: ...
    def add_param_group(self, param_group: Mapping[str, Any]) -> None: ...
    def step(self, grads: Sequence[Optional[Float32Array]], *,
             diagnostics: bool = False) -> Optional[List[Optional[GammaStats]]]: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None: ...
    def save(self, path: PathLike) -> None: ...
    def load(self, path: PathLike) -> None: ...

class Adam(Optimizer):
    def __init__(self, params: ParamsArg, lr: LearningRate = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False) -> None: ...

class AdamW(Adam):
    def __init__(self, params: ParamsArg, lr: LearningRate = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None: ...

class AMSGrad(Adam):
    def __init__(self, params: ParamsArg, lr: LearningRate = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False) -> None: ...

class Adagrad(Optimizer):
    def __init__(self, params: ParamsArg, lr: LearningRate = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False) -> None: ...
