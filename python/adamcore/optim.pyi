"""Type stubs for adamcore.optim: optimizer classes over float32 NumPy arrays.

Defaults are torch.optim's, kept in one place: adamcore._engine (ADAM, ADAGRAD)."""

import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._core import ConventionName, GammaStats
from .checkpoint import FORMAT_VERSION as FORMAT_VERSION
from .checkpoint import CheckpointError as CheckpointError

Float32Array = npt.NDArray[np.float32]
LearningRate = Union[float, Callable[[int], float]]
PathLike = Union[str, os.PathLike[str]]
ParamsArg = Union[Iterable[Float32Array], Iterable[Mapping[str, Any]]]

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
    def __init__(self, params: ParamsArg, lr: LearningRate = ...,
                 betas: Tuple[float, float] = ..., eps: float = ...,
                 weight_decay: float = ..., amsgrad: bool = ..., *, maximize: bool = ...,
                 decoupled_weight_decay: bool = ..., convention: ConventionName = ...,
                 tail_width: int = ..., eps_root: float = ..., nesterov: bool = ...) -> None: ...

class AdamW(Adam):
    def __init__(self, params: ParamsArg, lr: LearningRate = ...,
                 betas: Tuple[float, float] = ..., eps: float = ...,
                 weight_decay: float = ..., amsgrad: bool = ..., *,
                 maximize: bool = ..., convention: ConventionName = ...,
                 tail_width: int = ..., eps_root: float = ..., nesterov: bool = ...) -> None: ...

class AMSGrad(Adam):
    def __init__(self, params: ParamsArg, lr: LearningRate = ...,
                 betas: Tuple[float, float] = ..., eps: float = ...,
                 weight_decay: float = ..., *, maximize: bool = ...,
                 decoupled_weight_decay: bool = ..., convention: ConventionName = ...,
                 tail_width: int = ..., eps_root: float = ..., nesterov: bool = ...) -> None: ...

class Adagrad(Optimizer):
    def __init__(self, params: ParamsArg, lr: LearningRate = ..., lr_decay: float = ...,
                 weight_decay: float = ..., initial_accumulator_value: float = ...,
                 eps: float = ..., *, maximize: bool = ..., convention: ConventionName = ...,
                 tail_width: int = ...) -> None: ...
