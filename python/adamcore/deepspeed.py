"""DeepSpeed's CPU optimizers running adamcore's kernels: ``DeepSpeedCPUAdam`` and
``DeepSpeedCPUAdagrad``, with DeepSpeed 0.19.8's constructors, parameter-group keys,
state layout and behaviour, so that code building DeepSpeed's CPU optimizer by hand
switches with one import::

    from adamcore.deepspeed import DeepSpeedCPUAdam   # was: from deepspeed.ops.adam import ...

DeepSpeed need not be installed (torch must be: these are ``torch.optim.Optimizer``
subclasses built on ``adamcore.torch``'s machinery).

What is DeepSpeed's: the arguments and defaults (``adamw_mode=True``,
``bias_correction=True``, ``fp32_optimizer_states=True``), ``amsgrad=True`` refused by
``DeepSpeedCPUAdam`` with DeepSpeed's ``RuntimeError`` (and ignored by
``DeepSpeedCPUAdagrad``, as there), the group keys (``lr``, ``betas``, ``eps``,
``weight_decay``, ``bias_correction``, ``amsgrad``), the state (``step`` a Python int,
``exp_avg``/``exp_avg_sq`` created at a parameter's first step; AdaGrad's sum is called
``exp_avg_sq``), float32 state for 16-bit parameters unless
``fp32_optimizer_states=False``, float32/bfloat16/float16 parameters only (DeepSpeed's
op has no float64), ``optimizer_id``/``opt_id``.

What is not: the bits. adamcore computes torch's fused arithmetic (divisions, β^t and
1 - β in double, rounded once); DeepSpeed multiplies by reciprocals and builds β^t by
repeated float32 multiplication. A float32 step equals ``torch.optim.AdamW(fused=True)``
(``adamw_mode=True``) or ``torch.optim.Adam(fused=True)`` bit for bit, which DeepSpeed's
does not; docs/usage.md has the measured distance to DeepSpeed's own. Also: strided
dense parameters are updated in place (DeepSpeed updates a contiguous copy of a
non-contiguous parameter and drops it), a gradient or state laid out unlike its
parameter raises instead of pairing the wrong elements, sparse gradients raise
(DeepSpeed's AdaGrad has a sparse path), and ``step_subgroup``/``rollback_subgroup``
(SuperOffload) are not provided.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from . import _engine
from . import torch as _act

__all__ = ["DeepSpeedCPUAdam", "DeepSpeedCPUAdagrad"]

#: The parameter dtypes DeepSpeed's cpu_adam/cpu_adagrad ops take.
_DEEPSPEED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _betas(where: str, group: Dict[str, Any]) -> Tuple[Any, Any]:
    betas = group["betas"]
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}") from None
    return beta1, beta2


class _AdamFamily(_engine.Family):
    """DeepSpeed's Adam: one optimizer-wide mode (adamw_mode), bias_correction per group,
    no AMSGrad."""

    name = "adam"
    required = ("exp_avg", "exp_avg_sq")

    def __init__(self, adamw_mode: bool) -> None:
        self.adamw_mode = adamw_mode

    def options(self, where: str, group: Dict[str, Any]) -> Dict[str, Any]:
        beta1, beta2 = _betas(where, group)
        # DeepSpeed's op takes its flags through pybind11's bool conversion (1 is True).
        return {"beta1": beta1, "beta2": beta2, "eps": group["eps"], "weight_decay": group["weight_decay"],
                "decoupled": bool(self.adamw_mode), "bias_correction": bool(group["bias_correction"])}

    def check_settings(self, where: str, group: Dict[str, Any], lr: Any) -> None:
        _engine._native(where, None, None, _engine._EMPTY_ADAM.step, [], step=1, lr=lr, check_only=True,
                        **self.options(where, group))

    def native(self, columns: List[List[Any]], copies: Optional[List[Any]] = None) -> Any:
        return _engine._core.AdamGroup(columns[0], columns[1], columns[2], None, copies)


class _AdagradFamily(_engine.Family):
    """DeepSpeed's AdaGrad: torch's without lr_decay, its sum named exp_avg_sq."""

    name = "adagrad"
    required = ("exp_avg_sq",)

    def options(self, where: str, group: Dict[str, Any]) -> Dict[str, Any]:
        return {"lr_decay": 0.0, "weight_decay": group["weight_decay"], "eps": group["eps"]}

    def check_settings(self, where: str, group: Dict[str, Any], lr: Any) -> None:
        _engine._native(where, None, None, _engine._EMPTY_ADAGRAD.step, [], step=1, lr=lr,
                        check_only=True, **self.options(where, group))

    def native(self, columns: List[List[Any]], copies: Optional[List[Any]] = None) -> Any:
        return _engine._core.AdagradGroup(columns[0], columns[1], copies)


class _Frontend(_act._TensorFrontend):
    """adamcore.torch's tensor front-end with DeepSpeed's state: ``step`` a Python int in
    the state dict, moments in float32 unless ``fp32_optimizer_states=False``."""

    step_is_object = False

    def new_step(self) -> Any:
        return 0

    def step_counter(self, name: str, value: Any, state: Dict[str, Any]) -> Tuple[int, Any, Any, Any]:
        count = _engine.step_count(name, value)
        # Another form (torch's float32 tensor, from its state dict) becomes DeepSpeed's int.
        return count, None if type(value) is int else count, state, "step"

    def new_buffer(self, param: Any, fill: float) -> Any:
        dtype = torch.float32 if self._optimizer().fp32_optimizer_states else param.dtype
        return torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)


class _DeepSpeedOptimizer(_act._KernelOptimizer):
    _frontend_class = _Frontend
    _label = ""
    #: As DeepSpeed's: torch.amp.GradScaler unscales the gradients itself, then steps.
    _step_supports_amp_scaling = False

    def _check_torch_settings(self, where: str, group: Dict[str, Any]) -> None:
        pass  # DeepSpeed's groups have no capturable/differentiable keys

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        g = len(self.param_groups) - 1
        for k, p in enumerate(self.param_groups[g]["params"]):
            if p.dtype not in _DEEPSPEED_DTYPES:
                self.param_groups.pop()  # a group that fails its checks is not added
                raise TypeError(f"{self._engine.frontend.param_name(g, k)} has dtype "
                                f"{str(p.dtype).replace('torch.', '')}: {self._label} takes float32, "
                                "bfloat16 and float16 parameters, as DeepSpeed's op does (adamcore.torch "
                                "takes float64 too)")


class DeepSpeedCPUAdam(_DeepSpeedOptimizer):
    """``deepspeed.ops.adam.DeepSpeedCPUAdam`` running adamcore's kernel.

    ``adamw_mode=True`` (the default) is AdamW, decoupled weight decay; False is Adam
    with L2 weight decay. ``bias_correction`` (per group) False gives step size ``lr``
    and no ``sqrt(1 - beta2^t)``. ``amsgrad=True`` raises ``RuntimeError``, as
    DeepSpeed's. ``fp32_optimizer_states`` (default True) keeps ``exp_avg`` and
    ``exp_avg_sq`` in float32 whatever the parameters' dtype; False keeps them in the
    parameter's dtype. Results are ``torch.optim.AdamW/Adam(fused=True)``'s bits."""

    optimizer_id = 0
    _label = "DeepSpeedCPUAdam"
    _group_fallbacks = {"amsgrad": False, "bias_correction": True}

    def __init__(self, model_params: Iterable[Any], lr: float = 1e-3, bias_correction: bool = True,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, adamw_mode: bool = True, fp32_optimizer_states: bool = True) -> None:
        self.adam_w_mode = adamw_mode
        self.fp32_optimizer_states = fp32_optimizer_states
        default_args = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                            bias_correction=bias_correction, amsgrad=amsgrad)
        super().__init__(model_params, default_args)
        self.opt_id = DeepSpeedCPUAdam.optimizer_id
        DeepSpeedCPUAdam.optimizer_id = DeepSpeedCPUAdam.optimizer_id + 1

    def _attach_engine(self) -> None:
        self._family = _AdamFamily(getattr(self, "adam_w_mode", True))
        super()._attach_engine()

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        if param_group.get("amsgrad", self.defaults["amsgrad"]):
            raise RuntimeError("DeepSpeedCPUAdam does not support the AMSGrad variant.")
        super().add_param_group(param_group)


class DeepSpeedCPUAdagrad(_DeepSpeedOptimizer):
    """``deepspeed.ops.adagrad.DeepSpeedCPUAdagrad`` running adamcore's kernel: torch's
    AdaGrad without lr_decay, its accumulator in ``state['exp_avg_sq']`` (created at a
    parameter's first step, zero), float32 unless ``fp32_optimizer_states=False``.
    ``amsgrad`` is accepted and ignored, as DeepSpeed does. Results are
    ``torch.optim.Adagrad(fused=True)``'s bits."""

    optimizer_id = 0
    _family = _AdagradFamily()
    _label = "DeepSpeedCPUAdagrad"
    _group_fallbacks = {"amsgrad": False}

    def __init__(self, model_params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-10,
                 weight_decay: float = 0, amsgrad: bool = False, fp32_optimizer_states: bool = True) -> None:
        self.fp32_optimizer_states = fp32_optimizer_states
        default_args = dict(lr=lr, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(model_params, default_args)
        self.opt_id = DeepSpeedCPUAdagrad.optimizer_id
        DeepSpeedCPUAdagrad.optimizer_id = DeepSpeedCPUAdagrad.optimizer_id + 1
