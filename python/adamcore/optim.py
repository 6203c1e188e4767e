"""Optimizer objects over NumPy arrays: ``Adam``, ``AdamW``, ``AMSGrad``, ``Adagrad``.

They follow ``torch.optim``'s conventions so that code and checkpoints move between
the two: parameters are given as a list of arrays or of parameter-group dicts with
per-group hyperparameters (``lr``, ``betas=(beta1, beta2)``, ``eps``,
``weight_decay``, ``amsgrad``, ``maximize``; AdaGrad: ``lr_decay``,
``initial_accumulator_value``), ``param_groups`` can be edited between steps, and
``state_dict()`` has torch's layout (``state`` keyed by parameter index, holding
``step`` and ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq`` or ``sum``).

Unlike torch there is no autograd: ``step(grads)`` takes the gradients, one array (or
``None`` for "no gradient this step") per parameter in the order of the groups, and
updates every parameter of a group in place through one native call.

A group's ``lr`` may also be a callable ``lr(step) -> float`` (see
:mod:`adamcore.schedule`), evaluated at the number of the step being taken.

``save(path)`` / ``load(path)`` write and read a NumPy ``.npz`` checkpoint: written
atomically, verified on load, and applied only when every check passed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .schedule import Schedule, schedule_from_dict

__all__ = [
    "Optimizer",
    "Adam",
    "AdamW",
    "AMSGrad",
    "Adagrad",
    "CheckpointError",
    "FORMAT_VERSION",
]

#: Version of the checkpoint layout written by ``Optimizer.save``; ``load`` reads
#: this version and older ones.
FORMAT_VERSION = 1
_FORMAT_NAME = "adamcore.optimizer"

# Present once the extension provides groups that validate and hold their buffers once.
_ADAM_GROUP = getattr(_core, "AdamGroup", None)
_ADAGRAD_GROUP = getattr(_core, "AdagradGroup", None)

_F32 = np.dtype(np.float32)

PathLike = Union[str, "os.PathLike[str]"]
LearningRate = Union[float, Callable[[int], float]]


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: unreadable, corrupted, from a newer adamcore, or
    not matching the optimizer's parameters. The optimizer is left unchanged."""


# ----------------------------------------------------------------------------- checks


def _real(where: str, name: str, value: Any, *, below_one: bool = False) -> float:
    """A finite, non-negative float (``below_one``: also < 1), or a clear error."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}") from None
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(f"{where}: {name} must be finite and >= 0, got {value!r}")
    if below_one and not number < 1.0:
        raise ValueError(f"{where}: {name} must be in [0, 1), got {value!r}")
    return number


def _flag(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _learning_rate(where: str, value: Any) -> LearningRate:
    if callable(value) and not isinstance(value, numbers.Real):
        return value
    return _real(where, "lr", value)


def _check_array(name: str, array: Any) -> np.ndarray:
    """A parameter must be updatable in place: float32, C-contiguous, writeable."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(array).__name__}")
    if array.dtype != _F32:
        raise TypeError(f"{name} must have dtype float32, got {array.dtype} "
                        "(adamcore never converts: the update is in place)")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (adamcore never copies: the update is in place)")
    if not array.flags.writeable:
        raise ValueError(f"{name} is read-only; it must be writeable to be updated in place")
    return array


def _check_disjoint(arrays: Sequence[Tuple[str, np.ndarray]]) -> None:
    """Raise if two parameters share memory (the second would see the first's update)."""
    spans = []
    for name, a in arrays:
        if a.size:
            start = a.__array_interface__["data"][0]
            spans.append((start, start + a.nbytes, name))
    spans.sort()
    for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"{n0} and {n1} share memory; each parameter must appear once")


def _step_count(where: str, value: Any) -> int:
    """A step count from an int, a NumPy scalar or a torch 0-d tensor."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: step must be a number, got {type(value).__name__}") from None
    if not (number >= 0 and number.is_integer()):
        raise ValueError(f"{where}: step must be a whole number >= 0, got {value!r}")
    return int(number)


def _state_array(where: str, value: Any, param: np.ndarray) -> np.ndarray:
    """A private float32 copy of a loaded state buffer, shaped like its parameter.

    Accepts NumPy arrays and anything exposing ``__array__`` (torch CPU tensors)."""
    try:
        array = np.asarray(value)
    except Exception as err:  # a tensor on another device, say
        raise TypeError(f"{where} cannot be read as an array: {err}") from None
    if array.dtype != _F32:
        raise TypeError(f"{where} has dtype {array.dtype}; the parameter is float32")
    if array.shape != param.shape:
        raise ValueError(f"{where} has shape {tuple(array.shape)} but its parameter has shape "
                         f"{tuple(param.shape)}")
    return np.array(array, dtype=_F32, order="C", copy=True)


# ------------------------------------------------------------------------- base class


class _Plan:
    """A group's whole-group step, gathered once and reused while nothing changes: its
    state dicts, parameter shapes, common step count, buffer lists and native group."""

    __slots__ = ("key", "states", "shapes", "step", "buffers", "native")

    def __init__(self, key: Tuple[Any, ...], states: List[Dict[str, Any]], shapes: List[Tuple[int, ...]],
                 step: int, buffers: List[List[np.ndarray]]) -> None:
        self.key, self.states, self.shapes, self.step, self.buffers = key, states, shapes, step, buffers
        self.native: Any = None


class Optimizer:
    """Base of adamcore's NumPy optimizers: parameter groups, per-parameter state in
    ``torch.optim``'s layout, and checkpoint files.

    Subclasses define the hyperparameters (``_check_group``), the state of a
    parameter (``_new_state``, ``_buffer_names``) and the native call (``_run``).
    """

    #: Names of the arrays every parameter's state holds.
    _buffer_names: Tuple[str, ...] = ()
    #: Optional arrays (present only under some hyperparameters).
    _optional_buffers: Tuple[str, ...] = ()
    #: Checkpoints of one family load into each other (Adam <-> AdamW <-> AMSGrad).
    _family: str = ""

    def __init__(self, params: Iterable[Any], defaults: Mapping[str, Any]) -> None:
        self.defaults: Dict[str, Any] = dict(defaults)
        self.param_groups: List[Dict[str, Any]] = []
        #: Per-parameter state keyed by the parameter's index across all groups.
        self.state: Dict[int, Dict[str, Any]] = {}
        self._last_lr: Dict[int, float] = {}
        self._plans: Dict[int, _Plan] = {}
        self._checked: Dict[int, List[Any]] = {}
        self._generation = 0
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays or of param-group dicts, "
                            "got a single array (wrap it in a list)")
        if isinstance(params, Mapping):
            params = [params]
        groups = list(params)
        if not groups:
            raise ValueError("the optimizer got an empty parameter list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- groups ---------------------------------------------------------------------

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Append a group: a dict with ``params`` (arrays) and optional hyperparameters;
        missing hyperparameters take the optimizer's defaults."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a param group needs a 'params' entry")
        index = len(self.param_groups)
        where = f"param_groups[{index}]"
        params = param_group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        named = [(f"{where}['params'][{k}]", _check_array(f"{where}['params'][{k}]", p))
                 for k, p in enumerate(params)]
        existing = [(f"param_groups[{g}]['params'][{k}]", p)
                    for g, group in enumerate(self.param_groups)
                    for k, p in enumerate(group["params"])]
        _check_disjoint(existing + named)
        group = {key: value for key, value in param_group.items() if key != "params"}
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group["params"] = params
        self._check_group(where, group)
        offset = self._num_params()
        self.param_groups.append(group)
        for k, p in enumerate(params):
            fresh = self._new_state(p, group)
            if fresh:
                self.state[offset + k] = fresh
        self._generation += 1

    def _num_params(self) -> int:
        return sum(len(group["params"]) for group in self.param_groups)

    def _offsets(self) -> List[int]:
        offsets, total = [], 0
        for group in self.param_groups:
            offsets.append(total)
            total += len(group["params"])
        return offsets

    # -- stepping -------------------------------------------------------------------

    def step(self, grads: Sequence[Optional[np.ndarray]], *,
             diagnostics: bool = False) -> Optional[List[Any]]:
        """Update every parameter in place from ``grads``.

        ``grads`` holds one float32 array per parameter, in the order of the groups
        (``None`` skips that parameter this step, like a tensor without ``.grad``).
        Every gradient and hyperparameter is checked before any parameter changes.

        With ``diagnostics=True`` returns one ``adamcore.GammaStats`` per group (``None``
        for a group with nothing to update or whose parameters are at different step
        counts), reporting Reddi et al.'s Γ for this step.
        """
        if isinstance(grads, np.ndarray):
            raise TypeError("grads must be a sequence with one array per parameter, got a single "
                            "array (wrap it in a list)")
        grads = list(grads)
        total = self._num_params()
        if len(grads) != total:
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {total} parameters")
        for g, group in enumerate(self.param_groups):
            # Hyperparameters may be edited between steps; check them again only then.
            settings = [value for key, value in group.items() if key != "params"]
            if settings != self._checked.get(g):
                self._check_group(f"param_groups[{g}]", group)
                self._checked[g] = [value for key, value in group.items() if key != "params"]
        if len(self.param_groups) > 1:
            # One native call validates its own arguments before writing anything; with
            # several groups, check every gradient first so that a bad one changes nothing.
            self._check_grads(grads, 0, len(grads))
        results = []
        offset = 0
        for g, group in enumerate(self.param_groups):
            count = len(group["params"])
            results.append(self._step_group(g, group, offset, grads[offset:offset + count], diagnostics))
            offset += count
        return results if diagnostics else None

    def _check_grads(self, grads: List[Any], offset: int, count: int) -> None:
        """Raise a clear error for the first gradient that cannot be used."""
        flat = 0
        for g, group in enumerate(self.param_groups):
            for k, param in enumerate(group["params"]):
                if offset <= flat < offset + count and grads[flat - offset] is not None:
                    grad, name = grads[flat - offset], f"grads[{flat}]"
                    if not isinstance(grad, np.ndarray) or grad.dtype != _F32:
                        raise TypeError(f"{name} must be a float32 numpy.ndarray, got "
                                        f"{getattr(grad, 'dtype', type(grad).__name__)}")
                    if not grad.flags.c_contiguous:
                        raise ValueError(f"{name} must be C-contiguous")
                    if grad.shape != param.shape:
                        raise ValueError(f"{name} has shape {grad.shape} but parameter "
                                         f"param_groups[{g}]['params'][{k}] has shape {param.shape}")
                flat += 1

    def _step_group(self, g: int, group: Dict[str, Any], offset: int,
                    grads: List[Optional[np.ndarray]], diagnostics: bool) -> Any:
        params = group["params"]
        try:
            shapes = [grad.shape for grad in grads]
        except AttributeError:  # a None (skipped parameter) or not an array
            shapes = None
        if shapes is not None:
            plan = self._plans.get(g)
            if plan is None or plan.key != self._plan_key(group):
                plan = self._make_plan(g, group, offset)
            if plan is not None:
                if shapes != plan.shapes:
                    self._check_grads(grads, offset, len(grads))
                step = plan.step + 1
                lr, prev_lr = self._lr_at(g, group, step)
                stats = self._run(group, params, grads, plan.buffers, plan, step=step, lr=lr,
                                  prev_lr=prev_lr, diagnostics=diagnostics)
                plan.step = step
                for state in plan.states:
                    state["step"] = step
                self._last_lr[g] = lr
                return stats
        return self._step_some(g, group, offset, grads, diagnostics)

    def _plan_key(self, group: Mapping[str, Any]) -> Tuple[Any, ...]:
        return (self._generation, self._buffers_used(group), tuple(map(id, group["params"])))

    def _ensure_state(self, index: int, param: np.ndarray, group: Mapping[str, Any]) -> Dict[str, Any]:
        state = self.state.get(index)
        if not state:
            self.state[index] = state = self._new_state(param, group, lazy=False)
            self._generation += 1
        if self._complete_state(state, param, group):
            self._generation += 1
        return state

    def _make_plan(self, g: int, group: Mapping[str, Any], offset: int) -> Optional["_Plan"]:
        """Gather what a whole-group step needs, or None if the group's parameters are
        at different step counts."""
        params = group["params"]
        states = [self._ensure_state(offset + k, p, group) for k, p in enumerate(params)]
        steps = {state["step"] for state in states}
        if len(steps) != 1:
            self._plans.pop(g, None)
            return None
        names = self._buffers_used(group)
        plan = _Plan(self._plan_key(group), states, [p.shape for p in params], steps.pop(),
                     [[state[name] for state in states] for name in names])
        self._plans[g] = plan
        return plan

    def _step_some(self, g: int, group: Dict[str, Any], offset: int,
                   grads: List[Optional[np.ndarray]], diagnostics: bool) -> Any:
        """The general case: some gradients missing, or parameters at different steps."""
        self._check_grads(grads, offset, len(grads))
        params = group["params"]
        active = [k for k, grad in enumerate(grads) if grad is not None]
        if not active:
            return None
        for k in active:
            self._ensure_state(offset + k, params[k], group)
        self._plans.pop(g, None)
        # One native call per distinct step count.
        by_step: Dict[int, List[int]] = {}
        for k in active:
            by_step.setdefault(self.state[offset + k]["step"], []).append(k)
        names = self._buffers_used(group)
        stats = None
        lr = 0.0
        for done, members in by_step.items():
            step = done + 1
            lr, prev_lr = self._lr_at(g, group, step)
            states = [self.state[offset + k] for k in members]
            stats = self._run(group, [params[k] for k in members], [grads[k] for k in members],
                              [[state[name] for state in states] for name in names], None,
                              step=step, lr=lr, prev_lr=prev_lr, diagnostics=diagnostics)
            for state in states:
                state["step"] = step
        self._last_lr[g] = lr
        return stats if len(by_step) == 1 else None

    def _lr_at(self, g: int, group: Mapping[str, Any], step: int) -> Tuple[float, Optional[float]]:
        """The learning rate of ``step`` and of the step before (for Γ)."""
        lr = group["lr"]
        if callable(lr):
            value = _real(f"param_groups[{g}]", f"lr({step})", lr(step))
            prev = _real(f"param_groups[{g}]", f"lr({step - 1})", lr(step - 1)) if step > 1 else None
            return value, prev
        return lr, self._last_lr.get(g)

    # -- subclass hooks -------------------------------------------------------------

    def _check_group(self, where: str, group: Dict[str, Any]) -> None:
        raise NotImplementedError

    def _new_state(self, param: np.ndarray, group: Mapping[str, Any], lazy: bool = True) -> Dict[str, Any]:
        """A parameter's initial state; ``{}`` when it is created at the first step."""
        raise NotImplementedError

    def _complete_state(self, state: Dict[str, Any], param: np.ndarray, group: Mapping[str, Any]) -> bool:
        """Add buffers a hyperparameter change now needs; True if any was added."""
        return False

    def _buffers_used(self, group: Mapping[str, Any]) -> Tuple[str, ...]:
        """Names of the state arrays the kernel takes under this group's settings."""
        return self._buffer_names

    def _run(self, group: Mapping[str, Any], params: List[np.ndarray], grads: List[np.ndarray],
             buffers: List[List[np.ndarray]], plan: Optional["_Plan"], *, step: int, lr: float,
             prev_lr: Optional[float], diagnostics: bool) -> Any:
        """One native call; ``plan`` (a whole group) may hold a reusable native group."""
        raise NotImplementedError

    # -- state dicts ----------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """``{'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}``.

        The layout of ``torch.optim``'s state dicts. Arrays are the live buffers, not
        copies (as in torch): copy them if the optimizer keeps stepping."""
        groups = []
        for group, offset in zip(self.param_groups, self._offsets()):
            saved = {key: value for key, value in group.items() if key != "params"}
            saved["params"] = list(range(offset, offset + len(group["params"])))
            groups.append(saved)
        return {"state": {index: dict(state) for index, state in sorted(self.state.items()) if state},
                "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace hyperparameters and state with those of ``state_dict``.

        Accepts this class's ``state_dict()`` and ``torch.optim``'s (tensors are read
        through ``__array__``; torch itself is not imported). Groups and parameters are
        matched by position. Everything is checked first: on any error the optimizer is
        left exactly as it was."""
        if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("a state dict is a mapping with 'state' and 'param_groups'")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(saved_groups)} param groups but the "
                             f"optimizer has {len(self.param_groups)}")
        index_of: Dict[int, Tuple[int, np.ndarray]] = {}
        new_groups = []
        for g, (group, saved, offset) in enumerate(zip(self.param_groups, saved_groups, self._offsets())):
            where = f"param_groups[{g}]"
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"{where} of the state dict is not a dict with 'params'")
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise ValueError(f"{where} of the state dict has {len(ids)} parameters but the "
                                 f"optimizer's has {len(group['params'])}")
            for k, saved_id in enumerate(ids):
                index_of[_step_count(f"{where}['params'][{k}]", saved_id)] = (offset + k, group["params"][k])
            fresh = {key: value for key, value in saved.items() if key != "params"}
            for key, value in self.defaults.items():
                fresh.setdefault(key, value)
            fresh["params"] = group["params"]
            self._check_group(where, fresh)
            new_groups.append(fresh)
        new_state: Dict[int, Dict[str, Any]] = {}
        for saved_id, saved_state in dict(state_dict["state"]).items():
            key = _step_count("state key", saved_id)
            if key not in index_of:
                raise ValueError(f"the state dict has state for parameter {saved_id!r}, which none of "
                                 "its param groups lists")
            index, param = index_of[key]
            new_state[index] = self._loaded_state(f"state[{saved_id!r}]", saved_state, param)
        # Parameters without saved state start afresh (AdaGrad creates its state eagerly).
        for g, (group, offset) in enumerate(zip(new_groups, self._offsets())):
            for k, p in enumerate(group["params"]):
                if offset + k not in new_state:
                    fresh_state = self._new_state(p, group)
                    if fresh_state:
                        new_state[offset + k] = fresh_state
        for group, fresh in zip(self.param_groups, new_groups):
            group.clear()
            group.update(fresh)
        self.state = new_state
        self._last_lr = {}
        self._plans = {}
        self._checked = {}
        self._generation += 1

    def _loaded_state(self, where: str, saved: Any, param: np.ndarray) -> Dict[str, Any]:
        if not isinstance(saved, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(saved).__name__}")
        allowed = {"step", *self._buffer_names, *self._optional_buffers}
        unknown = sorted(set(saved) - allowed)
        if unknown:
            raise ValueError(f"{where} has entries {unknown} that {type(self).__name__} does not "
                             f"use (expected {sorted(allowed)}); is it another optimizer's state?")
        missing = [name for name in ("step", *self._buffer_names) if name not in saved]
        if missing:
            raise ValueError(f"{where} lacks {missing}; is it another optimizer's state?")
        state: Dict[str, Any] = {"step": _step_count(where, saved["step"])}
        for name in (*self._buffer_names, *self._optional_buffers):
            if name in saved:
                state[name] = _state_array(f"{where}['{name}']", saved[name], param)
        return state

    # -- checkpoint files -----------------------------------------------------------

    def save(self, path: PathLike) -> None:
        """Write the state to ``path`` (a ``.npz`` file) atomically.

        The file is written under a temporary name in the same directory, flushed to
        disk and renamed over ``path``: a crash leaves the previous checkpoint intact.
        A callable ``lr`` must be an ``adamcore.schedule.Schedule`` to be saved."""
        path = os.fspath(path)
        state = self.state_dict()
        groups = []
        for g, group in enumerate(state["param_groups"]):
            groups.append({key: _to_json(f"param_groups[{g}]['{key}']", value)
                           for key, value in group.items()})
        arrays: Dict[str, np.ndarray] = {}
        steps: Dict[str, int] = {}
        for index, entry in state["state"].items():
            steps[str(index)] = int(entry["step"])
            for name, value in entry.items():
                if name != "step":
                    arrays[f"{index}.{name}"] = value
        meta = {"format": _FORMAT_NAME, "version": FORMAT_VERSION, "optimizer": type(self).__name__,
                "family": self._family, "param_groups": groups, "steps": steps}
        meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
        members = dict(arrays)
        members["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
        members["digest"] = np.frombuffer(_digest(meta_bytes, arrays).encode("ascii"), dtype=np.uint8)
        _write_atomically(path, members)

    def load(self, path: PathLike) -> None:
        """Load a checkpoint written by ``save``.

        Raises ``CheckpointError`` (a ``ValueError``) for a truncated or corrupted file,
        one written by a newer adamcore, one of another optimizer family, or state that
        does not match the parameters; the optimizer is then left exactly as it was."""
        path = os.fspath(path)
        meta, arrays = _read_checkpoint(path)
        if meta.get("family") != self._family:
            raise CheckpointError(f"{path} holds {meta.get('optimizer')} state, which "
                                  f"{type(self).__name__} cannot use")
        try:
            groups = []
            for group in meta["param_groups"]:
                groups.append({key: _from_json(value) for key, value in group.items()})
            state: Dict[int, Dict[str, Any]] = {}
            for index, step in meta["steps"].items():
                state[int(index)] = {"step": step}
            for name, array in arrays.items():
                index, _, buffer = name.partition(".")
                state[int(index)][buffer] = array
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{path} has an inconsistent layout: {err!r}") from None
        try:
            self.load_state_dict({"state": state, "param_groups": groups})
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path} does not match this optimizer: {err}") from err

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {g}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]!r}")
            lines.append(f"    params: {len(group['params'])} arrays, "
                         f"{sum(p.size for p in group['params'])} elements")
        lines.append(")")
        return "\n".join(lines)


# ------------------------------------------------------------------- checkpoint format


def _to_json(where: str, value: Any) -> Any:
    if isinstance(value, Schedule):
        return {"__schedule__": value.as_dict()}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json(where, item) for item in value]
    if callable(value):
        raise TypeError(f"{where} is a callable adamcore cannot save; use an adamcore.schedule.Schedule "
                        "(or set a float) before saving")
    raise TypeError(f"{where} = {value!r} ({type(value).__name__}) cannot be saved in a checkpoint")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__schedule__"}:
        return schedule_from_dict(value["__schedule__"])
    return value


def _digest(meta_bytes: bytes, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the metadata and every array's name, dtype, shape and bytes."""
    h = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode("utf-8"))
        h.update(array.tobytes())
    return h.hexdigest()


def _write_atomically(path: str, members: Mapping[str, np.ndarray]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **members)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; keep the mode an existing checkpoint had.
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable where the platform allows opening a directory.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _read_checkpoint(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    with open(path, "rb") as handle:
        blob = handle.read()
    try:
        loaded = np.load(io.BytesIO(blob), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with loaded:
            # Reading every member in full makes zipfile check each one's CRC.
            members = {name: loaded[name] for name in loaded.files}
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable adamcore checkpoint (truncated or "
                              f"corrupted?): {err}") from None
    meta_raw = members.pop("meta", None)
    digest_raw = members.pop("digest", None)
    if meta_raw is None or digest_raw is None:
        raise CheckpointError(f"{path} is an .npz file but not an adamcore checkpoint (no metadata)")
    meta_bytes = meta_raw.tobytes()
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path} has corrupted metadata: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise CheckpointError(f"{path} is not an adamcore optimizer checkpoint")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer adamcore (checkpoint format version "
                              f"{version}; this adamcore reads versions up to {FORMAT_VERSION}): "
                              "upgrade adamcore to load it")
    if digest_raw.tobytes().decode("ascii", "replace") != _digest(meta_bytes, members):
        raise CheckpointError(f"{path} is corrupted: its content does not match its SHA-256 digest")
    return meta, members


# ------------------------------------------------------------------------ Adam family


class Adam(Optimizer):
    """Adam (Kingma & Ba) over float32 NumPy arrays, bit-identical to
    ``torch.optim.Adam(fused=True)``.

    ``weight_decay`` is an L2 penalty added to the gradient, unless
    ``decoupled_weight_decay=True`` (then this is AdamW). ``amsgrad=True`` uses the
    running maximum of ``exp_avg_sq`` (Reddi et al.). ``maximize=True`` ascends.
    ``lr`` may be a float or a callable ``lr(step)``.

    >>> opt = Adam([w, b], lr=1e-3)          # doctest: +SKIP
    >>> opt.step([grad_w, grad_b])           # doctest: +SKIP
    """

    _buffer_names = ("exp_avg", "exp_avg_sq")
    _optional_buffers = ("max_exp_avg_sq",)
    _family = "adam"

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "amsgrad": amsgrad, "maximize": maximize,
                                  "decoupled_weight_decay": decoupled_weight_decay})

    def _check_group(self, where: str, group: Dict[str, Any]) -> None:
        group["lr"] = _learning_rate(where, group["lr"])
        betas = group["betas"]
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}") from None
        group["betas"] = (_real(where, "beta1 (betas[0])", beta1, below_one=True),
                          _real(where, "beta2 (betas[1])", beta2, below_one=True))
        group["eps"] = _real(where, "eps", group["eps"])
        group["weight_decay"] = _real(where, "weight_decay", group["weight_decay"])
        for name in ("amsgrad", "maximize", "decoupled_weight_decay"):
            group[name] = _flag(where, name, group.get(name, False))

    def _new_state(self, param: np.ndarray, group: Mapping[str, Any], lazy: bool = True) -> Dict[str, Any]:
        if lazy:
            return {}  # created at the parameter's first step, as torch does
        state = {"step": 0, "exp_avg": np.zeros_like(param), "exp_avg_sq": np.zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = np.zeros_like(param)
        return state

    def _complete_state(self, state: Dict[str, Any], param: np.ndarray, group: Mapping[str, Any]) -> bool:
        # amsgrad switched on after some steps: the running maximum starts from zero.
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(param)
            return True
        return False

    def _buffers_used(self, group: Mapping[str, Any]) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _run(self, group, params, grads, buffers, plan, *, step, lr, prev_lr, diagnostics):
        maxima = buffers[2] if group["amsgrad"] else None
        if plan is not None and _ADAM_GROUP is not None:
            if plan.native is None:
                plan.native = _ADAM_GROUP(params, buffers[0], buffers[1], maxima)
            return plan.native.step(grads, decoupled=group["decoupled_weight_decay"],
                                    **_adam_hyper(group, step, lr, prev_lr, diagnostics))
        return _adam_call(group, params, grads, buffers[0], buffers[1], maxima, step=step, lr=lr,
                          prev_lr=prev_lr, diagnostics=diagnostics)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, bit-identical to
    ``torch.optim.AdamW(fused=True)``. Each step first shrinks the parameters by
    ``1 - lr * weight_decay`` and then applies the Adam update."""

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)


class AMSGrad(Adam):
    """AMSGrad (Reddi, Kale & Kumar): Adam whose denominator uses the running maximum
    of ``exp_avg_sq``, so the effective learning rate never grows. Equivalent to
    ``Adam(..., amsgrad=True)``; ``decoupled_weight_decay=True`` gives AdamW-AMSGrad."""

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, True, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay)


# --------------------------------------------------------------------------- AdaGrad


class Adagrad(Optimizer):
    """AdaGrad (Duchi, Hazan & Singer) over float32 NumPy arrays, bit-identical to
    ``torch.optim.Adagrad(fused=True)``.

    The step size at step ``t`` is ``lr / (1 + (t - 1) * lr_decay)``; ``weight_decay``
    is an L2 penalty added to the gradient; the accumulator ``sum`` starts at
    ``initial_accumulator_value`` (created at construction, as torch does)."""

    _buffer_names = ("sum",)
    _family = "adagrad"

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False) -> None:
        super().__init__(params, {"lr": lr, "lr_decay": lr_decay, "eps": eps,
                                  "weight_decay": weight_decay,
                                  "initial_accumulator_value": initial_accumulator_value,
                                  "maximize": maximize})

    def _check_group(self, where: str, group: Dict[str, Any]) -> None:
        group["lr"] = _learning_rate(where, group["lr"])
        for name in ("lr_decay", "eps", "weight_decay", "initial_accumulator_value"):
            group[name] = _real(where, name, group[name])
        group["maximize"] = _flag(where, "maximize", group.get("maximize", False))

    def _new_state(self, param: np.ndarray, group: Mapping[str, Any], lazy: bool = True) -> Dict[str, Any]:
        return {"step": 0, "sum": np.full_like(param, group["initial_accumulator_value"])}

    def _run(self, group, params, grads, buffers, plan, *, step, lr, prev_lr, diagnostics):
        if plan is not None and _ADAGRAD_GROUP is not None:
            if plan.native is None:
                plan.native = _ADAGRAD_GROUP(params, buffers[0])
            return plan.native.step(grads, **_adagrad_hyper(group, step, lr, prev_lr, diagnostics))
        return _adagrad_call(group, params, grads, buffers[0], step=step, lr=lr, prev_lr=prev_lr,
                             diagnostics=diagnostics)


# ------------------------------------------------------------ one call for one group


def _adam_hyper(group: Mapping[str, Any], step: int, lr: float, prev_lr: Optional[float],
                diagnostics: bool) -> Dict[str, Any]:
    beta1, beta2 = group["betas"]
    return dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], maximize=group["maximize"],
                diagnostics=diagnostics, prev_lr=prev_lr)


def _adagrad_hyper(group: Mapping[str, Any], step: int, lr: float, prev_lr: Optional[float],
                   diagnostics: bool) -> Dict[str, Any]:
    return dict(step=step, lr=lr, lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=group["maximize"], diagnostics=diagnostics,
                prev_lr=prev_lr)


def _adam_call(group: Mapping[str, Any], params: List[np.ndarray], grads: List[np.ndarray],
                    exp_avgs: List[np.ndarray], exp_avg_sqs: List[np.ndarray],
                    max_exp_avg_sqs: Optional[List[np.ndarray]], *, step: int, lr: float,
                    prev_lr: Optional[float] = None, diagnostics: bool = False) -> Any:
    """One native Adam/AdamW call over the arrays of a group, with the hyperparameters of
    a torch-style group dict (``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
    ``maximize``, ``decoupled_weight_decay``). Used by the classes here and by
    ``adamcore.torch``."""
    kernel = _core.adamw_step if group.get("decoupled_weight_decay", False) else _core.adam_step
    return kernel(params, grads, exp_avgs, exp_avg_sqs, amsgrad=bool(group["amsgrad"]),
                  max_exp_avg_sq=max_exp_avg_sqs if group["amsgrad"] else None,
                  **_adam_hyper(group, step, lr, prev_lr, diagnostics))


def _adagrad_call(group: Mapping[str, Any], params: List[np.ndarray], grads: List[np.ndarray],
                       state_sums: List[np.ndarray], *, step: int, lr: float,
                       prev_lr: Optional[float] = None, diagnostics: bool = False) -> Any:
    """One native AdaGrad call over the arrays of a group, with the hyperparameters of a
    torch-style group dict (``lr_decay``, ``eps``, ``weight_decay``, ``maximize``)."""
    return _core.adagrad_step(params, grads, state_sums,
                              **_adagrad_hyper(group, step, lr, prev_lr, diagnostics))
