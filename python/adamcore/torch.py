"""``torch.optim`` optimizers whose step runs adamcore's kernels: ``Adam``, ``AdamW``, ``Adagrad``.

They are ``torch.optim.Optimizer`` subclasses with torch's constructor arguments,
parameter-group keys and state layout, so they work with
``torch.optim.lr_scheduler``, ``torch.distributed.optim.ZeroRedundancyOptimizer`` and
``state_dict()``/``load_state_dict()`` in both directions with ``torch.optim``. Each
step updates a group's CPU float32 tensors in place through one native call, sharing
memory with the tensors (no copies). Their results are bit-identical to
``torch.optim.AdamW(fused=True)`` and friends on every element torch's vector body
computes (and within 1 ulp per step in torch's scalar tail, see docs/usage.md).

Parameters and gradients must be dense, contiguous float32 tensors on the CPU; other
devices, dtypes, sparse or strided tensors raise a clear error. ``foreach`` and
``fused`` are accepted and kept in the parameter groups, but adamcore always runs its
own kernel. ``fused`` defaults to True: torch takes a group's settings from a loaded
state dict, so a ``torch.optim`` optimizer that loads this one's state continues with
the fused arithmetic it was produced with, bit for bit. ``capturable=True`` and
``differentiable=True`` are not supported.

This module imports torch; ``import adamcore`` alone never does.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .optim import (_ADAGRAD_GROUP, _ADAM_GROUP, _adagrad_call, _adagrad_hyper, _adam_call,
                    _adam_hyper, _flag, _real)

__all__ = ["Adam", "AdamW", "Adagrad", "to_torch_state_dict"]


def _check_tensor(name: str, tensor: torch.Tensor) -> None:
    """Raise unless ``tensor`` can be handed to the kernels as a NumPy view."""
    if tensor.layout != torch.strided:
        raise TypeError(f"{name} is a sparse tensor ({tensor.layout}); adamcore.torch supports "
                        "dense tensors only")
    if tensor.device.type != "cpu":
        raise TypeError(f"{name} is on device {tensor.device}; adamcore.torch runs on the CPU only "
                        "(move the model with .cpu() or use torch.optim there)")
    if tensor.dtype != torch.float32:
        raise TypeError(f"{name} has dtype {tensor.dtype}; adamcore.torch supports torch.float32 only")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} is not contiguous; adamcore updates tensors in place without "
                         "copying, so they must be contiguous")


def _view(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy array sharing ``tensor``'s memory (writes go to the tensor)."""
    return tensor.detach().numpy()


def _owned_buffer(state: Dict[str, Any], key: str) -> np.ndarray:
    """View of a state buffer, made contiguous first if a load left it strided."""
    tensor = state[key]
    if not tensor.is_contiguous():
        state[key] = tensor = tensor.contiguous()
    return _view(tensor)


class _Plan:
    """A group's whole-group step, gathered once: NumPy views of its parameters, state
    buffers and step counters (all sharing the tensors' memory), the common step count
    and the native group object. Reused while the tensors stay where they were."""

    __slots__ = ("key", "params", "addresses", "arrays", "steps", "step", "native")

    def __init__(self, key: Tuple[Any, ...], params: List[torch.Tensor], arrays: List[List[np.ndarray]],
                 steps: List[np.ndarray], step: int) -> None:
        self.key, self.params, self.arrays, self.steps, self.step = key, list(params), arrays, steps, step
        self.addresses = [p.data_ptr() for p in params]
        self.native: Any = None

    def fits(self, key: Tuple[Any, ...], params: List[torch.Tensor]) -> bool:
        return (key == self.key and len(params) == len(self.params)
                and all(a is b for a, b in zip(params, self.params))
                and [p.data_ptr() for p in params] == self.addresses)


class _KernelOptimizer(torch.optim.Optimizer):
    """Shared step logic: validate every group, then one native call per group."""

    #: Group keys torch's own class fills in when loading an older state dict.
    _group_fallbacks: Dict[str, Any] = {}

    def __init__(self, params: Any, defaults: Dict[str, Any]) -> None:
        if defaults.get("capturable"):
            raise ValueError(f"{type(self).__name__} does not support capturable=True (CUDA graphs)")
        if defaults.get("differentiable"):
            raise ValueError(f"{type(self).__name__} does not support differentiable=True")
        self._plans: Dict[int, _Plan] = {}
        self._generation = 0
        super().__init__(params, defaults)
        for g, group in enumerate(self.param_groups):
            for k, param in enumerate(group["params"]):
                _check_tensor(f"param_groups[{g}]['params'][{k}]", param)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group (torch's semantics) after checking its hyperparameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(f"param_groups[{len(self.param_groups) - 1}]", group)
        self._generation = getattr(self, "_generation", 0) + 1

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Called by load_state_dict and unpickling: the state tensors are new.
        super().__setstate__(state)
        self._plans = {}
        self._generation = getattr(self, "_generation", 0) + 1
        for group in self.param_groups:
            for key, value in self._group_fallbacks.items():
                group.setdefault(key, value)
            for param in group["params"]:
                entry = self.state.get(param)
                if entry and not torch.is_tensor(entry["step"]):
                    entry["step"] = torch.tensor(float(entry["step"]), dtype=torch.float32)

    def _check_group(self, where: str, group: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def _buffer_names(self, group: Mapping[str, Any]) -> Tuple[str, ...]:
        """The state buffers the kernel takes under this group's settings."""
        raise NotImplementedError

    def _call(self, group: Mapping[str, Any], params: List[np.ndarray], grads: List[np.ndarray],
              buffers: List[List[np.ndarray]], step: int, lr: float, plan: Optional[_Plan]) -> None:
        """One native call over NumPy views."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One optimizer step over every parameter that has a ``.grad``.

        ``closure`` (optional) re-evaluates the model and returns the loss, as in
        torch.optim. Every group is checked before any parameter changes."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for g, group in enumerate(self.param_groups):
            where = f"param_groups[{g}]"
            self._check_group(where, group)
            params = group["params"]
            grads = [p.grad for p in params]
            plan = self._plans.get(g)
            key = (self._generation, self._buffer_names(group))
            if plan is not None and all(grad is not None for grad in grads) and plan.fits(key, params):
                for k, grad in enumerate(grads):
                    _check_tensor(f"{where}['params'][{k}].grad", grad)
                work.append((g, group, plan, grads))
                continue
            active = []
            for k, param in enumerate(params):
                if param.grad is None:
                    continue
                _check_tensor(f"{where}['params'][{k}]", param)
                _check_tensor(f"{where}['params'][{k}].grad", param.grad)
                active.append(param)
            work.append((g, group, None, active))
        # Everything checked: from here on nothing raises for a bad argument.
        for g, group, plan, items in work:
            lr = float(group["lr"])
            if plan is not None:
                step = plan.step + 1
                self._call(group, plan.arrays[0], [_view(grad) for grad in items], plan.arrays[1:],
                           step, lr, plan)
                plan.step = step
                for counter in plan.steps:
                    counter[()] = step
            else:
                self._step_some(g, group, items, lr)
        return loss

    def _step_some(self, g: int, group: Dict[str, Any], active: List[torch.Tensor], lr: float) -> None:
        """The general case (first step, missing gradients, changed tensors): one call
        per distinct step count; then prepare a plan for the next steps."""
        names = self._buffer_names(group)
        by_step: Dict[int, List[torch.Tensor]] = {}
        for param in active:
            state = self.state[param]
            if len(state) == 0:
                state.update(self._init_state(param, group))
            for name in names:
                if name not in state:  # amsgrad switched on later: the maximum starts from zero
                    state[name] = torch.zeros_like(param, memory_format=torch.contiguous_format)
            by_step.setdefault(int(state["step"]), []).append(param)
        for done, members in by_step.items():
            states = [self.state[p] for p in members]
            self._call(group, [_view(p) for p in members], [_view(p.grad) for p in members],
                       [[_owned_buffer(s, name) for s in states] for name in names], done + 1, lr, None)
            for state in states:
                state["step"] += 1
        self._plans.pop(g, None)
        params = group["params"]
        if len(by_step) == 1 and len(active) == len(params):
            states = [self.state[p] for p in params]
            steps = [_view(s["step"]) if s["step"].dtype == torch.float32 and s["step"].dim() == 0 else None
                     for s in states]
            if all(view is not None for view in steps):
                arrays = [[_view(p) for p in params]] + [[_owned_buffer(s, name) for s in states]
                                                         for name in names]
                self._plans[g] = _Plan((self._generation, names), params, arrays, steps,
                                       next(iter(by_step)) + 1)


class Adam(_KernelOptimizer):
    """``torch.optim.Adam`` running adamcore's kernel (same arguments and state).

    ``amsgrad``, ``maximize``, L2 ``weight_decay`` and ``decoupled_weight_decay`` behave
    as in torch; results equal ``torch.optim.Adam(fused=True)``'s."""

    _group_fallbacks = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                        "differentiable": False, "decoupled_weight_decay": False, "fused": None}

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 foreach: Optional[bool] = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True,
                 decoupled_weight_decay: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        self._check_group("defaults", defaults)
        super().__init__(params, defaults)

    def _check_group(self, where: str, group: Mapping[str, Any]) -> None:
        _real(where, "lr", group["lr"])
        try:
            beta1, beta2 = group["betas"]
        except (TypeError, ValueError):
            raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {group['betas']!r}") from None
        _real(where, "beta1 (betas[0])", beta1, below_one=True)
        _real(where, "beta2 (betas[1])", beta2, below_one=True)
        _real(where, "eps", group["eps"])
        _real(where, "weight_decay", group["weight_decay"])
        for name in ("amsgrad", "maximize", "decoupled_weight_decay"):
            _flag(where, name, group[name])

    def _init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> Dict[str, Any]:
        # torch's fused Adam keeps 'step' as a float32 tensor; so do we, for interchange.
        state = {"step": torch.tensor(0.0, dtype=torch.float32),
                 "exp_avg": torch.zeros_like(param, memory_format=torch.contiguous_format),
                 "exp_avg_sq": torch.zeros_like(param, memory_format=torch.contiguous_format)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
        return state

    def _buffer_names(self, group: Mapping[str, Any]) -> Tuple[str, ...]:
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _call(self, group, params, grads, buffers, step, lr, plan):
        maxima = buffers[2] if group["amsgrad"] else None
        if plan is not None and _ADAM_GROUP is not None:
            if plan.native is None:
                plan.native = _ADAM_GROUP(params, buffers[0], buffers[1], maxima)
            plan.native.step(grads, decoupled=group["decoupled_weight_decay"],
                             **_adam_hyper(group, step, lr, None, False))
        else:
            _adam_call(group, params, grads, buffers[0], buffers[1], maxima, step=step, lr=lr)


class AdamW(Adam):
    """``torch.optim.AdamW`` running adamcore's kernel: decoupled weight decay (default
    0.01); results equal ``torch.optim.AdamW(fused=True)``'s."""

    _group_fallbacks = dict(Adam._group_fallbacks, decoupled_weight_decay=True)

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: Optional[bool] = None, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True)


class Adagrad(_KernelOptimizer):
    """``torch.optim.Adagrad`` running adamcore's kernel (same arguments and state; the
    ``sum`` accumulators are created at construction, as torch does); results equal
    ``torch.optim.Adagrad(fused=True)``'s."""

    _group_fallbacks = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 foreach: Optional[bool] = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True) -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        self._check_group("defaults", defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param].update(self._init_state(param, group))

    def _check_group(self, where: str, group: Mapping[str, Any]) -> None:
        for name in ("lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value"):
            _real(where, name, group[name])
        _flag(where, "maximize", group["maximize"])

    def _init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> Dict[str, Any]:
        return {"step": torch.tensor(0.0, dtype=torch.float32),
                "sum": torch.full_like(param, float(group["initial_accumulator_value"]),
                                       memory_format=torch.contiguous_format)}

    def _buffer_names(self, group: Mapping[str, Any]) -> Tuple[str, ...]:
        return ("sum",)

    def _call(self, group, params, grads, buffers, step, lr, plan):
        if plan is not None and _ADAGRAD_GROUP is not None:
            if plan.native is None:
                plan.native = _ADAGRAD_GROUP(params, buffers[0])
            plan.native.step(grads, **_adagrad_hyper(group, step, lr, None, False))
        else:
            _adagrad_call(group, params, grads, buffers[0], step=step, lr=lr)


def to_torch_state_dict(state_dict: Mapping[str, Any], **group_options: Any) -> Dict[str, Any]:
    """Convert a state dict of ``adamcore.Adam``/``AdamW``/``AMSGrad``/``Adagrad`` (NumPy
    arrays) into one ``torch.optim`` (or this module's classes) can load.

    Arrays are copied into new tensors (the NumPy optimizer's live buffers are not
    shared), steps become float32 tensors as torch keeps them. torch takes its groups'
    settings from the state dict: groups without a ``fused`` entry get ``fused=True``
    (adamcore's arithmetic is torch's fused kernel's, so torch continues bit for bit),
    and ``group_options`` are set in every group (``fused=None`` picks torch's default
    implementation). A callable ``lr`` has no torch equivalent and raises
    ``TypeError``: set a float first."""
    groups = []
    for g, group in enumerate(state_dict["param_groups"]):
        if callable(group.get("lr")):
            raise TypeError(f"param_groups[{g}]['lr'] is a callable; torch.optim needs a float "
                            "(use torch.optim.lr_scheduler for schedules)")
        converted = dict(group, **group_options, params=list(group["params"]))
        converted.setdefault("fused", True)  # the arithmetic the state was produced with
        groups.append(converted)
    state = {}
    for index, entry in state_dict["state"].items():
        converted = {}
        for key, value in entry.items():
            if key == "step":
                converted[key] = torch.tensor(float(value), dtype=torch.float32)
            else:
                converted[key] = torch.tensor(np.asarray(value))
        state[index] = converted
    return {"state": state, "param_groups": groups}
