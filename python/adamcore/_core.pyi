"""Type stubs for adamcore's native module."""

from typing import Literal, Sequence, Union

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]
# float32, float64, float16 or ml_dtypes.bfloat16, in one of the accepted layouts
FloatArray = npt.NDArray[np.generic]
Buffer = Union[FloatArray, Sequence[FloatArray]]
IsaName = Literal["scalar", "avx2", "avx512", "neon"]
#: Whose arithmetic a step reproduces (docs/numerics.md, "Conventions in the kernel").
ConventionName = Literal["torch-fused", "deepspeed", "optax", "keras"]
RoundingName = Literal["nearest", "stochastic"]
NormType = Union[float, int, Literal["inf"]]


__version__: str

class GammaStats:
    """Reddi et al.'s Γ for one step, reduced over every coordinate of the call."""

    @property
    def defined(self) -> bool: ...
    @property
    def count(self) -> int: ...
    @property
    def negative(self) -> int: ...
    @property
    def undefined(self) -> int: ...
    @property
    def gamma_min(self) -> float: ...
    @property
    def lr_min(self) -> float: ...
    @property
    def lr_max(self) -> float: ...
    @property
    def fraction_negative(self) -> float: ...
    def as_dict(self) -> dict[str, Union[bool, int, float]]: ...

# What a step returns: None; its GammaStats with diagnostics=True; the total norm of the
# grads with max_grad_norm= (NaN when found_inf skipped the step); both, with both.
StepResult = Union[GammaStats, float, tuple[GammaStats, float], None]

def adam_step(param: Buffer, grad: Buffer, exp_avg: Buffer, exp_avg_sq: Buffer, *, step: int,
              lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, amsgrad: bool = False,
              max_exp_avg_sq: Buffer | None = None, maximize: bool = False,
              bias_correction: bool = True, diagnostics: bool = False,
              prev_lr: float | None = None, check_only: bool = False,
              param_copy: Buffer | None = None, grad_scale: float | None = None,
              found_inf: float | bool | None = None, rounding: RoundingName = "nearest",
              seed: int = 0, clip_coef: float | None = None,
              max_grad_norm: float | None = None, norm_type: NormType = 2.0,
              error_if_nonfinite: bool = False,
              convention: ConventionName = "torch-fused",
              tail_width: int = 0, eps_root: float = 0.0,
              nesterov: bool = False) -> StepResult: ...
def adamw_step(param: Buffer, grad: Buffer, exp_avg: Buffer, exp_avg_sq: Buffer, *, step: int,
               lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 1e-2, amsgrad: bool = False,
               max_exp_avg_sq: Buffer | None = None, maximize: bool = False,
               bias_correction: bool = True, diagnostics: bool = False,
               prev_lr: float | None = None, check_only: bool = False,
               param_copy: Buffer | None = None, grad_scale: float | None = None,
               found_inf: float | bool | None = None, rounding: RoundingName = "nearest",
               seed: int = 0, clip_coef: float | None = None,
               max_grad_norm: float | None = None, norm_type: NormType = 2.0,
               error_if_nonfinite: bool = False,
               convention: ConventionName = "torch-fused",
               tail_width: int = 0, eps_root: float = 0.0,
               nesterov: bool = False) -> StepResult: ...
def adagrad_step(param: Buffer, grad: Buffer, state_sum: Buffer, *, step: int, lr: float = 1e-2,
                 lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
                 maximize: bool = False, diagnostics: bool = False,
                 prev_lr: float | None = None, check_only: bool = False,
                 param_copy: Buffer | None = None, grad_scale: float | None = None,
                 found_inf: float | bool | None = None, rounding: RoundingName = "nearest",
                 seed: int = 0, clip_coef: float | None = None,
                 max_grad_norm: float | None = None, norm_type: NormType = 2.0,
                 error_if_nonfinite: bool = False,
                 convention: ConventionName = "torch-fused",
                 tail_width: int = 0) -> StepResult: ...
def sgd_step(param: Buffer, grad: Buffer, momentum_buffer: Buffer | None = None, *,
             lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
             weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
             first_step: bool = False, grad_scale: float | None = None,
             found_inf: float | bool | None = None, check_only: bool = False,
             tail_width: int = 0) -> None: ...
def lion_step(param: Buffer, grad: Buffer, exp_avg: Buffer, *, lr: float = 1e-4,
              beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0,
              maximize: bool = False, convention: str = "paper",
              grad_scale: float | None = None, found_inf: float | bool | None = None,
              check_only: bool = False) -> None: ...

class AdamGroup:
    """A parameter group's Adam state, validated once and held."""

    def __init__(self, params: Sequence[FloatArray], exp_avgs: Sequence[FloatArray],
                 exp_avg_sqs: Sequence[FloatArray],
                 max_exp_avg_sqs: Sequence[FloatArray] | None = None,
                 param_copies: Sequence[FloatArray] | None = None) -> None: ...
    def step(self, grads: Sequence[FloatArray], *, step: int, lr: float = 1e-3,
             beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
             weight_decay: float = 0.0, decoupled: bool = False, maximize: bool = False,
             bias_correction: bool = True, diagnostics: bool = False,
             prev_lr: float | None = None, check_only: bool = False,
             grad_scale: float | None = None,
             found_inf: float | bool | None = None, rounding: RoundingName = "nearest",
             seed: int = 0, clip_coef: float | None = None,
             max_grad_norm: float | None = None, norm_type: NormType = 2.0,
             error_if_nonfinite: bool = False,
             convention: ConventionName = "torch-fused", tail_width: int = 0,
             eps_root: float = 0.0, nesterov: bool = False) -> StepResult: ...
    @property
    def count(self) -> int: ...
    @property
    def numel(self) -> int: ...
    @property
    def amsgrad(self) -> bool: ...
    def __len__(self) -> int: ...

class AdagradGroup:
    """A parameter group's AdaGrad state, validated once and held."""

    def __init__(self, params: Sequence[FloatArray], state_sums: Sequence[FloatArray],
                 param_copies: Sequence[FloatArray] | None = None) -> None: ...
    def step(self, grads: Sequence[FloatArray], *, step: int, lr: float = 1e-2,
             lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
             maximize: bool = False, diagnostics: bool = False,
             prev_lr: float | None = None, check_only: bool = False,
             grad_scale: float | None = None,
             found_inf: float | bool | None = None, rounding: RoundingName = "nearest",
             seed: int = 0, clip_coef: float | None = None,
             max_grad_norm: float | None = None, norm_type: NormType = 2.0,
             error_if_nonfinite: bool = False,
             convention: ConventionName = "torch-fused", tail_width: int = 0) -> StepResult: ...
    @property
    def count(self) -> int: ...
    @property
    def numel(self) -> int: ...
    def __len__(self) -> int: ...

def get_isa() -> IsaName: ...
def set_isa(name: str) -> None: ...
def available_isas() -> list[IsaName]: ...
def compiled_isas() -> list[IsaName]: ...
def best_isa() -> IsaName: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def get_parallel_threshold() -> int: ...
def set_parallel_threshold(elements: int) -> None: ...
def built_with_openmp() -> bool: ...
def threading_status() -> dict[str, Union[bool, int]]: ...

# The gradient norm and clipping (docs/numerics.md, "The gradient norm").

def grad_norm(grads: Buffer, norm_type: NormType = 2.0) -> float: ...
def clip_grad_norm(grads: Buffer, max_norm: float, norm_type: NormType = 2.0,
                   error_if_nonfinite: bool = False) -> float: ...
def clip_coefficient(total_norm: float, max_norm: float,
                     dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32") -> float: ...
def scale_grads(grads: Buffer, coef: float) -> None: ...

class GradNorm:
    """An exact, order-free accumulator of a total gradient norm across calls."""

    def __init__(self, norm_type: NormType = 2.0) -> None: ...
    def add(self, grads: Buffer) -> None: ...
    def merge(self, other: GradNorm) -> None: ...
    def norm(self) -> float: ...
    def total(self) -> float: ...
    def reset(self) -> None: ...
    def copy(self) -> GradNorm: ...
    @property
    def norm_type(self) -> float: ...
    @property
    def elements(self) -> int: ...
