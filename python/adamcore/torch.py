"""``torch.optim`` optimizers whose step runs adamcore's kernels: ``Adam``, ``AdamW``, ``Adagrad``.

They are ``torch.optim.Optimizer`` subclasses with torch's constructor arguments,
parameter-group keys and state layout, so they work with
``torch.optim.lr_scheduler``, ``torch.distributed.optim.ZeroRedundancyOptimizer`` and
``state_dict()``/``load_state_dict()`` in both directions with ``torch.optim``. Each
step updates a group's CPU float32 tensors in place through one native call per step
count, sharing memory with the tensors (no copies). Their results are bit-identical to
``torch.optim.AdamW(fused=True)`` and friends on every element torch's vector body
computes (and within 1 ulp per step in torch's scalar tail, see docs/usage.md).

As in torch, the state is read at every step: a replaced buffer, a cleared state, an
edited ``step`` tensor, a new ``.grad`` or a parameter whose storage was replaced
(``p.data = x``) takes effect at the next step.

Parameters may be float32, float64, bfloat16 or float16 tensors on the CPU (state in
the parameter's dtype, gradients of the same dtype, as torch's fused optimizer keeps
them), in any memory layout whose elements fill one dense block (contiguous,
channels_last, transposed: the kernels run over that block in memory order, with no
copy); a gradient and each state buffer must be laid out like its parameter.
Overlapping or gapped tensors (expanded, sliced with a step), other devices and dtypes
and sparse tensors raise a clear error naming the tensor, and nothing is written.
Parameters on the meta device are accepted at construction (their state is created at
their first step on the CPU, AdaGrad's too), so a model built on meta and materialised
in place (``to_empty()`` under ``torch.__future__.set_swap_module_params_on_conversion(True)``)
trains with an optimizer made before. ``foreach`` and
``fused`` are accepted and kept in the parameter groups, but adamcore always runs its
own kernel. ``fused`` defaults to True: torch takes a group's settings from a loaded
state dict, so a ``torch.optim`` optimizer that loads this one's state continues with
the fused arithmetic it was produced with, bit for bit. ``capturable=True`` and
``differentiable=True`` are not supported.

This module imports torch; ``import adamcore`` alone never does.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from operator import attrgetter, is_
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _engine
from ._engine import (ADAGRAD, ADAGRAD_FAMILY, ADAM, ADAM_FAMILY, ADAMW_WEIGHT_DECAY, DEFAULT_CONVENTION,
                      Engine, Family)

__all__ = ["Adam", "AdamW", "Adagrad", "SGD", "Lion", "to_torch_state_dict", "torch_tail_width"]

_GRAD = attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_NUMPY = torch.Tensor.numpy
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
#: dtypes whose tensors ``Tensor.numpy()`` views directly (bfloat16 goes through ml_dtypes).
_NUMPY_DTYPES = frozenset((torch.float32, torch.float64, torch.float16))
#: dtypes the kernels take (the extension names its own list when refusing another).
_KERNEL_DTYPES = _NUMPY_DTYPES | {torch.bfloat16}
_BF16: List[Any] = []  # np.dtype(ml_dtypes.bfloat16), once imported


def _bfloat16(name: str) -> Any:
    """NumPy's dtype for bfloat16 (the optional ml_dtypes package's), or a clear error."""
    if not _BF16:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(f"{name} is a bfloat16 tensor: adamcore hands it to its kernels as an "
                            "ml_dtypes.bfloat16 array (a view, no copy); install the optional "
                            "ml-dtypes package (pip install ml-dtypes)") from None
        _BF16.append(np.dtype(ml_dtypes.bfloat16))
    return _BF16[0]


def _is_dense(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether a tensor's elements fill one block of memory, each once (torch's
    "non-overlapping and dense", in any order of the dimensions): sorted by stride, each
    dimension longer than 1 must step over exactly the dimensions before it."""
    expected = 1
    for size, stride in sorted((pair for pair in zip(shape, strides) if pair[0] != 1),
                               key=lambda pair: pair[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(a: "torch.Tensor", b: "torch.Tensor") -> bool:
    """Whether element i of ``a`` and of ``b`` sit at the same offset in their blocks (same
    shape, same strides wherever a dimension is longer than 1)."""
    return a.shape == b.shape and all(x == y for n, x, y in zip(a.shape, a.stride(), b.stride()) if n != 1)


def _layout_error(name: str, obj: "torch.Tensor", param_name: str, param: "torch.Tensor") -> ValueError:
    return ValueError(f"{name} has strides {tuple(obj.stride())} but {param_name} has strides "
                      f"{tuple(param.stride())} (shape {tuple(param.shape)}): adamcore updates the "
                      "memory of a parameter element by element, so its gradient and state must be "
                      "laid out like it (torch's autograd and zeros_like(p) do so); adamcore never "
                      "copies to fix a layout")


class _TrackedStates(_engine._EditCounting, defaultdict):  # type: ignore[misc]
    """torch.optim's ``optimizer.state`` (a ``defaultdict(dict)`` keyed by parameter)
    that counts its edits like the NumPy front-end's: while nothing counted an edit, a
    step takes the state dicts it last saw instead of looking each up (hashing a tensor
    runs Python code). The state dicts themselves are torch's plain dicts, read at every
    step."""

    __slots__ = ()


def _tracked(state: Any) -> Any:
    return state if type(state) is _TrackedStates else _TrackedStates(dict, state)


def _unusable(name: str, obj: Any, err: Optional[Exception] = None) -> TypeError:
    """Why ``obj`` cannot be handed to the kernels as a NumPy view of its memory."""
    if not isinstance(obj, torch.Tensor):
        return TypeError(f"{name} must be a torch.Tensor, got {type(obj).__name__}")
    if obj.layout != torch.strided:
        return TypeError(f"{name} is a sparse tensor ({obj.layout}); adamcore.torch supports "
                         "dense tensors only")
    if obj.device.type != "cpu":
        return TypeError(f"{name} is on device {obj.device}; adamcore.torch runs on the CPU only "
                         "(move the model with .cpu() or use torch.optim there)")
    return TypeError(f"{name} (dtype {obj.dtype}) has no NumPy view to hand to the kernels: {err}")


def _counter(step: Any) -> memoryview:
    """Where a step count is read and written (``counter[()]``): a memoryview of the
    step tensor's memory. It reads and writes plain floats with less code than a NumPy
    scalar, which matters with cold caches (after a backward pass: about 25 us against
    60 us to read one count, measured on Zen 3)."""
    return memoryview(step.detach().numpy())


def _grad_key(grad: Any) -> Tuple[Any, ...]:
    """What a NumPy view of a contiguous gradient depends on: where its memory is, its
    shape and dtype, and that it is still contiguous."""
    return grad.data_ptr(), grad.shape, grad.dtype, _IS_CONTIGUOUS(grad)


class _GradViews:
    """A plan's gradient views, for engines that hand over the same gradient tensors at
    every step (DeepSpeed's ZeRO optimizers: one flat gradient per partition, filled in
    place). Views are kept only once the same tensors came twice in a row, which weak
    references tell without keeping them alive: a training loop whose gradients are new
    at every step (zero_grad's set_to_none) never has last step's kept, and after a few
    steps of new gradients, or once kept views missed, the plan stops looking. While
    kept, the views hold their tensors, so the same objects are the same tensors, and a
    view is used only while its tensor's ``_grad_key`` is unchanged (``p.grad.data = x``
    moves it)."""

    __slots__ = ("plain", "seen", "misses", "grads", "keys", "arrays")

    #: Steps with gradients other than the last step's after which a plan stops looking.
    PATIENCE = 3

    def __init__(self, plain: bool) -> None:
        # Whether the plan's active parameters are all contiguous tensors that
        # Tensor.numpy() views; then gradients take the short way.
        self.plain = plain
        self.seen: Optional[List[Any]] = None   # weak references to the last step's gradients
        self.misses = 0
        self.grads: Optional[List[Any]] = None  # kept: the gradients, their keys, their views
        self.keys: List[Tuple[Any, ...]] = []
        self.arrays: List[Any] = []

    def kept(self, grads: List[Any]) -> Optional[List[Any]]:
        """The kept views of ``grads``, if they are the kept tensors, unchanged."""
        if self.grads is None:
            return None
        if all(map(is_, grads, self.grads)) and list(map(_grad_key, grads)) == self.keys:
            return self.arrays
        self.grads, self.arrays, self.misses = None, [], self.PATIENCE
        return None

    def note(self, grads: List[Any], arrays: List[Any]) -> None:
        """After views were made afresh: keep them if these gradients came last step too."""
        if self.misses >= self.PATIENCE:
            return
        seen = self.seen
        if seen is not None and len(seen) == len(grads) and all(
                ref() is grad for ref, grad in zip(seen, grads)):
            self.grads, self.keys, self.arrays, self.seen = list(grads), list(map(_grad_key, grads)), arrays, None
            return
        self.misses += seen is not None
        self.seen = list(map(weakref.ref, grads)) if self.misses < self.PATIENCE else None


class _TensorFrontend(_engine.Frontend):
    """The engine's view of an adamcore.torch optimizer: tensors are handed over as
    NumPy views of their memory; ``step`` is a float32 tensor updated in place."""

    movable = True  # p.data = x gives a tensor new memory under the same identity
    step_is_object = True

    def __init__(self, optimizer: "_KernelOptimizer") -> None:
        self._optimizer = weakref.ref(optimizer)  # no cycle: the optimizer owns the engine

    def pointers(self, objects: Sequence[Any]) -> List[int]:
        return list(map(_DATA_PTR, objects))

    def states(self, g: int, params: Sequence[Any]) -> List[Optional[Dict[str, Any]]]:
        return list(map(self._optimizer().state.get, params))

    def put_state(self, g: int, k: int, param: Any, state: Dict[str, Any]) -> None:
        self._optimizer().state[param] = state

    def state_source(self, g: int) -> Any:
        state = self._optimizer().state
        return state if type(state) is _TrackedStates else None

    def same_source(self, g: int, source: Any) -> bool:
        return self._optimizer().state is source

    def array(self, name: str, obj: Any) -> Any:
        """A NumPy view of ``obj``'s memory: the tensor itself when contiguous, else (any
        other dense layout) its block of memory as a flat array in memory order;
        bfloat16 as an ml_dtypes.bfloat16 array. Never a copy."""
        if not isinstance(obj, torch.Tensor) or obj.layout != torch.strided or obj.device.type != "cpu":
            raise _unusable(name, obj)
        t = obj.detach()
        if not t.is_contiguous():
            if not _is_dense(t.shape, t.stride()):
                raise ValueError(
                    f"{name} (shape {tuple(t.shape)}, strides {tuple(t.stride())}) overlaps itself or "
                    "leaves gaps in memory: adamcore updates a tensor in place only when its elements "
                    "fill one dense block, in any order (contiguous, channels_last, transposed); it "
                    "never copies (an expanded or stepped view would need one)")
            t = t.as_strided((t.numel(),), (1,), t.storage_offset())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
            bf16 = _bfloat16(name)
            return t.numpy().view(bf16)
        try:
            return t.numpy()
        except (TypeError, RuntimeError) as err:
            raise _unusable(name, obj, err) from None

    def grad_arrays(self, g: int, plan: _engine.Plan, grads: List[Any]) -> List[Any]:
        # torch checks a gradient's shape and dtype when it is assigned; the rest is the
        # extension's, except the layout: a gradient must be laid out like its parameter.
        views = plan.frontend_data
        if views is None:
            params = [plan.params[k] for k in plan.members]
            views = plan.frontend_data = _GradViews(all(
                isinstance(p, torch.Tensor) and p.dtype in _NUMPY_DTYPES and p.is_contiguous()
                for p in params))
        if views.plain:
            # Contiguous parameters: a gradient is laid out like its parameter exactly
            # when it is contiguous, which the extension checks.
            try:
                arrays = views.kept(grads)
                if arrays is None:
                    arrays = list(map(_NUMPY, grads))
                    views.note(grads, arrays)
                return arrays
            except (TypeError, RuntimeError, AttributeError):  # not a tensor, needs detaching, no NumPy view
                pass
        arrays = []
        for k, grad in zip(plan.members, grads):
            name = self.grad_name(g, k)
            array = self.array(name, grad)
            param = plan.params[k]
            if not _same_layout(grad, param):
                raise _layout_error(name, grad, self.param_name(g, k), param)
            arrays.append(array)
        return arrays

    def call_key(self, param: Any) -> Any:
        return param.dtype  # as torch fused: one kernel call per dtype of a group

    def new_buffer(self, param: Any, fill: float) -> Any:
        # As torch: the parameter's dtype and layout (preserve_format keeps a dense
        # tensor's strides), so element i of the state sits where element i of the param does.
        if fill == 0:
            return torch.zeros_like(param, memory_format=torch.preserve_format)
        return torch.full_like(param, fill, memory_format=torch.preserve_format)

    def new_step(self) -> Any:
        # torch's fused optimizers keep 'step' as a float32 tensor; so do we, for interchange.
        return torch.tensor(0.0, dtype=torch.float32)

    def step_counter(self, name: str, value: Any, state: Dict[str, Any]) -> Tuple[int, Any, Any, Any]:
        count = _engine.step_count(name, value)
        if (isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.dim() == 0
                and value.device.type == "cpu" and value.layout == torch.strided):
            return count, None, _counter(value), ()
        # Another form (a number from an old state dict, say) becomes torch's fused form.
        replacement = torch.tensor(float(count), dtype=torch.float32)
        return count, replacement, _counter(replacement), ()

    def grad_name(self, g: int, k: int) -> str:
        return f"param_groups[{g}]['params'][{k}].grad"

    def state_name(self, g: int, k: int, entry: str) -> str:
        return f"state[param_groups[{g}]['params'][{k}]]['{entry}']"


class _TensorEngine(Engine):
    """The group engine, plus the one check a NumPy view cannot carry: each state buffer
    is laid out like its parameter (the kernels pair elements by position in memory)."""

    def _build(self, g: int, group: Dict[str, Any], params: List[Any], active: List[bool],
               names: Tuple[str, ...]) -> _engine.Plan:
        plan = super()._build(g, group, params, active, names)  # writes nothing
        frontend = self.frontend
        for position, k in enumerate(plan.members):
            param = params[k]
            for name in names:
                buffer = plan.entries[name][position]
                if not _same_layout(buffer, param):
                    raise _layout_error(frontend.state_name(g, k, name), buffer,
                                        frontend.param_name(g, k), param)
        return plan


def _check_meta(name: str, param: "torch.Tensor") -> None:
    """A parameter on the meta device has no memory to check yet (its first step checks
    it on the CPU); its dtype can be checked now."""
    if param.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"{name} must have dtype float32, float64, bfloat16 or float16, got "
                        f"{str(param.dtype).replace('torch.', '')}")


def _check_params(names: List[str], arrays: List[Any]) -> None:
    """The extension's checks of parameters updated in place, one dtype at a time (a
    call's buffers share one dtype; groups, and torch groups too, may mix them), and no
    two parameters of different dtypes sharing memory."""
    by_dtype: Dict[Any, List[int]] = {}
    for i, array in enumerate(arrays):
        by_dtype.setdefault(array.dtype, []).append(i)
    for members in by_dtype.values():
        _engine.check_params([names[i] for i in members], [arrays[i] for i in members])
    if len(by_dtype) > 1:
        spans = sorted((a.__array_interface__["data"][0], a.nbytes, i) for i, a in enumerate(arrays) if a.nbytes)
        for (start, size, i), (next_start, _, j) in zip(spans, spans[1:]):
            if next_start < start + size:
                raise ValueError(f"{names[j]} overlaps {names[i]} in memory: parameters are updated "
                                 "in place and may not share memory")


def _amp_options(optimizer: Any) -> Optional[Dict[str, Any]]:
    """The scale and inf flag torch.amp.GradScaler set on the optimizer for this step
    (None when it did not)."""
    grad_scale = getattr(optimizer, "grad_scale", None)
    found_inf = getattr(optimizer, "found_inf", None)
    if grad_scale is None and found_inf is None:
        return None
    return {"grad_scale": None if grad_scale is None else float(grad_scale),
            "found_inf": None if found_inf is None else float(found_inf)}


class _KernelOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer whose step is adamcore's group engine."""

    #: torch.amp.GradScaler then hands the step its scale and inf flag (self.grad_scale,
    #: self.found_inf) instead of unscaling the grads in a pass of its own: the step
    #: unscales in its pass and skips on found_inf, as torch's fused optimizers do.
    _step_supports_amp_scaling = True

    _family: Family = ADAM_FAMILY
    _frontend_class = _TensorFrontend
    #: Group keys torch's own class fills in when loading an older state dict.
    _group_fallbacks: Dict[str, Any] = {}

    def __init__(self, params: Any, defaults: Dict[str, Any]) -> None:
        self._attach_engine()
        self._check_torch_settings("defaults", defaults)
        self._engine.check_settings("defaults", defaults)
        super().__init__(params, defaults)
        self.state = _tracked(self.state)

    def _attach_engine(self) -> None:
        self._engine = _TensorEngine(self._family, self._frontend_class(self))

    def _check_torch_settings(self, where: str, group: Mapping[str, Any]) -> None:
        if group.get("capturable"):
            raise ValueError(f"{type(self).__name__} does not support capturable=True (CUDA graphs)")
        if group.get("differentiable"):
            raise ValueError(f"{type(self).__name__} does not support differentiable=True")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group (torch's semantics) after checking its settings and parameters;
        AdaGrad's state is created here, as torch does at construction."""
        super().add_param_group(param_group)
        g = len(self.param_groups) - 1
        group = self.param_groups[g]
        try:
            self._check_torch_settings(f"param_groups[{g}]", group)
            self._engine.check_settings(g, group)
            frontend = self._engine.frontend
            names, arrays = [], []
            for i, gr in enumerate(self.param_groups):
                for k, p in enumerate(gr["params"]):
                    name = frontend.param_name(i, k)
                    if isinstance(p, torch.Tensor) and p.device.type == "meta":
                        _check_meta(name, p)
                    else:
                        names.append(name)
                        arrays.append(frontend.array(name, p))
            _check_params(names, arrays)
        except BaseException:
            self.param_groups.pop()  # a group that fails its checks is not added
            raise
        if self._family.eager:
            for k, param in enumerate(group["params"]):
                if param.device.type != "meta":  # else at its first step, on the CPU
                    self.state[param].update(self._engine.new_state(g, k, param, group))

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Called by load_state_dict and unpickling: the groups and state are new.
        super().__setstate__(state)
        self.state = _tracked(self.state)
        for group in self.param_groups:
            for key, value in self._group_fallbacks.items():
                group.setdefault(key, value)
        self._attach_engine()

    # No torch.no_grad() here, unlike torch's optimizers: the step records nothing for
    # autograd whatever the grad mode (buffers are written through NumPy views of
    # detached tensors; new state comes from factory functions, which never require
    # grad), and switching the mode costs every step about 4 us, and about 85 us when
    # the step runs with cold caches, as it does in a training loop (measured on Zen 3).
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One optimizer step over every parameter that has a ``.grad``.

        ``closure`` (optional) re-evaluates the model and returns the loss, as in
        torch.optim. Every group is checked before any parameter changes."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [list(map(_GRAD, group["params"])) for group in self.param_groups]
        self._engine.step(self.param_groups, grads, False, _amp_options(self))
        return loss


class Adam(_KernelOptimizer):
    """``torch.optim.Adam`` running adamcore's kernel (same arguments and state).

    ``amsgrad``, ``maximize``, L2 ``weight_decay`` and ``decoupled_weight_decay`` behave
    as in torch; results equal ``torch.optim.Adam(fused=True)``'s. ``convention`` selects
    another peer's arithmetic; ``eps_root`` and ``nesterov`` are optax's (refused under
    other conventions)."""

    _group_fallbacks = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                        "differentiable": False, "decoupled_weight_decay": False, "fused": None,
                        "convention": DEFAULT_CONVENTION, "tail_width": 0, "eps_root": 0.0,
                        "nesterov": False}

    def __init__(self, params: Iterable[Any], lr: float = ADAM.lr, betas: Tuple[float, float] = ADAM.betas,
                 eps: float = ADAM.eps, weight_decay: float = ADAM.weight_decay,
                 amsgrad: bool = ADAM.amsgrad, *, foreach: Optional[bool] = None,
                 maximize: bool = ADAM.maximize, capturable: bool = False, differentiable: bool = False,
                 fused: Optional[bool] = True,
                 decoupled_weight_decay: bool = ADAM.decoupled_weight_decay,
                 convention: str = DEFAULT_CONVENTION, tail_width: int = 0,
                 eps_root: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                                      capturable=capturable, differentiable=differentiable,
                                      fused=fused, decoupled_weight_decay=decoupled_weight_decay,
                                      convention=convention, tail_width=tail_width,
                                      eps_root=eps_root, nesterov=nesterov))


class AdamW(Adam):
    """``torch.optim.AdamW`` running adamcore's kernel: decoupled weight decay (default
    0.01); results equal ``torch.optim.AdamW(fused=True)``'s."""

    _group_fallbacks = dict(Adam._group_fallbacks, decoupled_weight_decay=True)

    def __init__(self, params: Iterable[Any], lr: float = ADAM.lr, betas: Tuple[float, float] = ADAM.betas,
                 eps: float = ADAM.eps, weight_decay: float = ADAMW_WEIGHT_DECAY,
                 amsgrad: bool = ADAM.amsgrad, *, maximize: bool = ADAM.maximize,
                 foreach: Optional[bool] = None, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = True,
                 convention: str = DEFAULT_CONVENTION, tail_width: int = 0,
                 eps_root: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, convention=convention,
                         tail_width=tail_width, eps_root=eps_root, nesterov=nesterov)


class Adagrad(_KernelOptimizer):
    """``torch.optim.Adagrad`` running adamcore's kernel (same arguments and state; the
    ``sum`` accumulators are created at construction, as torch does); results equal
    ``torch.optim.Adagrad(fused=True)``'s."""

    _family = ADAGRAD_FAMILY
    _group_fallbacks = {"foreach": None, "maximize": False, "differentiable": False, "fused": None,
                        "convention": DEFAULT_CONVENTION, "tail_width": 0}

    def __init__(self, params: Iterable[Any], lr: float = ADAGRAD.lr, lr_decay: float = ADAGRAD.lr_decay,
                 weight_decay: float = ADAGRAD.weight_decay,
                 initial_accumulator_value: float = ADAGRAD.initial_accumulator_value,
                 eps: float = ADAGRAD.eps, foreach: Optional[bool] = None, *,
                 maximize: bool = ADAGRAD.maximize, differentiable: bool = False,
                 fused: Optional[bool] = True, convention: str = DEFAULT_CONVENTION,
                 tail_width: int = 0) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused,
                                      convention=convention, tail_width=tail_width))


def torch_tail_width() -> int:
    """torch's ``Vec<float>::size()`` for the CPU capability it picked: 16 with AVX-512,
    else 8. Its fused Adam/AdamW/Adagrad run each tensor's last ``numel % width``
    elements through a scalar loop; pass this as ``tail_width`` (with
    ``convention="torch-fused"``) to reproduce those elements too."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if capability.upper().startswith("AVX512") else 8


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


# ---------------------------------------------------------------- SGD and Lion
def _view(name: str, tensor: "torch.Tensor") -> Any:
    """A NumPy view of a CPU tensor's memory (as the Adam drop-ins take it), never a copy."""
    return _TensorFrontend.array(None, name, tensor)  # type: ignore[arg-type]


class _ElementwiseOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer over CPU tensors whose step is one adamcore call per group
    (and per kind of state: SGD's parameters without a momentum buffer yet take a first
    step of their own)."""

    _step_supports_amp_scaling = True  # see _KernelOptimizer

    def _check_flags(self, where: str, group: Mapping[str, Any]) -> None:
        if group.get("differentiable"):
            raise ValueError(f"{type(self).__name__} does not support differentiable=True ({where})")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            self._check_flags(f"param_groups[{len(self.param_groups) - 1}]", self.param_groups[-1])
        except BaseException:
            self.param_groups.pop()
            raise

    def _arrays(self, g: int, group: Mapping[str, Any]) -> Tuple[List[Any], List[Any], List[Any]]:
        params, arrays, grads = [], [], []
        for k, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError(f"param_groups[{g}]['params'][{k}] has a sparse grad; "
                                 f"{type(self).__name__} takes dense grads only")
            params.append(p)
            arrays.append(_view(f"param_groups[{g}]['params'][{k}]", p))
            grads.append(_view(f"param_groups[{g}]['params'][{k}].grad", p.grad))
        return params, arrays, grads

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step over every parameter with a ``.grad``; ``closure`` as in torch.optim.
        Every group's calls are checked before any runs, and new state is stored only
        after they all ran: a step that raises leaves everything as it was."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        amp = _amp_options(self) or {}
        calls: List[Tuple[Any, tuple, Dict[str, Any]]] = []
        new_state: List[Tuple[Any, str, Any]] = []
        for g, group in enumerate(self.param_groups):
            params, arrays, grads = self._arrays(g, group)
            if params:
                self._group_calls(group, params, arrays, grads, amp, calls, new_state)
        _engine.run_checked(calls)
        for param, key, value in new_state:
            self.state[param][key] = value
        return loss


class SGD(_ElementwiseOptimizer):
    """``torch.optim.SGD`` with adamcore's kernel: bit-identical to ``SGD(fused=True)`` on
    the elements torch's vector body computes (docs/numerics.md, "SGD"), and with
    ``tail_width=torch_tail_width()`` on its scalar tail too; state ``momentum_buffer``
    as torch keeps it, AMP through torch.amp.GradScaler."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: Optional[bool] = None,
                 differentiable: bool = False, fused: Optional[bool] = True,
                 tail_width: int = 0) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused, tail_width=tail_width)
        self._check_flags("defaults", defaults)
        super().__init__(params, defaults)

    def _group_calls(self, group, params, arrays, grads, amp, calls, new_state) -> None:
        from . import sgd_step

        hyper = dict(lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                     weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                     maximize=group["maximize"], tail_width=group.get("tail_width", 0), **amp)
        if group["momentum"] == 0:
            calls.append((sgd_step, (arrays, grads), hyper))
            return
        # Parameters with a buffer continue it; the others start one (torch's first step).
        running: Tuple[List[Any], List[Any], List[Any]] = ([], [], [])
        starting: Tuple[List[Any], List[Any], List[Any]] = ([], [], [])
        for k, p in enumerate(params):
            buf = self.state[p].get("momentum_buffer") if p in self.state else None
            if buf is None:
                buf = torch.empty_like(p, memory_format=torch.preserve_format)
                starting[0].append(arrays[k]), starting[1].append(grads[k])
                starting[2].append(_view("momentum_buffer", buf))
                # With found_inf torch still creates the buffers (left empty); keep them
                # out of the state instead, so the next step starts them again.
                if not amp.get("found_inf"):
                    new_state.append((p, "momentum_buffer", buf))
            else:
                running[0].append(arrays[k]), running[1].append(grads[k])
                running[2].append(_view(f"state of {tuple(p.shape)} momentum_buffer", buf))
        if running[0]:
            calls.append((sgd_step, running, hyper))
        if starting[0]:
            calls.append((sgd_step, starting, dict(hyper, first_step=True)))


class Lion(_ElementwiseOptimizer):
    """Lion (Chen et al. 2023) over CPU tensors: ``convention="paper"`` (default) or
    ``"deepspeed"`` (DeepSpeedCPULion's arithmetic), state ``exp_avg`` as DeepSpeed keeps
    it (created at the first step, zero)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-4,
                 betas: Tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 maximize: bool = False, convention: str = "paper") -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not (0.0 <= betas[0] <= 1.0 and 0.0 <= betas[1] <= 1.0):
            raise ValueError(f"Invalid betas: {betas}")
        if convention not in ("paper", "deepspeed"):
            raise ValueError(f"convention must be 'paper' or 'deepspeed', got {convention!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      maximize=maximize, convention=convention))

    def _group_calls(self, group, params, arrays, grads, amp, calls, new_state) -> None:
        from . import lion_step

        exp_avgs = []
        for p in params:
            exp_avg = self.state[p].get("exp_avg") if p in self.state else None
            if exp_avg is None:
                exp_avg = torch.zeros_like(p, memory_format=torch.preserve_format)
                new_state.append((p, "exp_avg", exp_avg))
            exp_avgs.append(_view(f"state of {tuple(p.shape)} exp_avg", exp_avg))
        calls.append((lion_step, (arrays, grads, exp_avgs),
                      dict(lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                           weight_decay=group["weight_decay"], maximize=group["maximize"],
                           convention=group["convention"], **amp)))
