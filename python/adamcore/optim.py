"""Optimizer objects over NumPy arrays: ``Adam``, ``AdamW``, ``AMSGrad``, ``Adagrad``.

They follow ``torch.optim``'s conventions so that code and checkpoints move between
the two: parameters are given as a list of arrays or of parameter-group dicts with
per-group hyperparameters (``lr``, ``betas=(beta1, beta2)``, ``eps``,
``weight_decay``, ``amsgrad``, ``maximize``; AdaGrad: ``lr_decay``,
``initial_accumulator_value``), and ``state_dict()`` has torch's layout (``state``
keyed by parameter index, holding ``step`` and ``exp_avg``/``exp_avg_sq``/
``max_exp_avg_sq`` or ``sum``).

As in torch, ``param_groups`` and ``state`` are the user's to change between steps: a
replaced array, a cleared state or an edited step count takes effect at the next step.

Unlike torch there is no autograd: ``step(grads)`` takes the gradients, one array (or
``None`` for "no gradient this step") per parameter in the order of the groups, and
updates every parameter of a group in place through one native call per step count.

A group's ``lr`` may also be a callable ``lr(step) -> float`` (see
:mod:`adamcore.schedule`), evaluated at the number of the step being taken.

``save(path)`` / ``load(path)`` write and read a NumPy ``.npz`` checkpoint (see
:mod:`adamcore.checkpoint`): written atomically, verified on load, and applied only
when every check passed.
"""

from __future__ import annotations

import os
import math
import weakref
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _engine, checkpoint
from ._engine import (ADAGRAD, ADAGRAD_FAMILY, ADAM, ADAM_FAMILY, ADAMW_WEIGHT_DECAY, DEFAULT_CONVENTION,
                      Engine, Family, TrackedState, TrackedStates)
from .checkpoint import FORMAT_VERSION, CheckpointError

__all__ = [
    "Optimizer",
    "SGD",
    "Lion",
    "Adam",
    "AdamW",
    "AMSGrad",
    "Adagrad",
    "CheckpointError",
    "FORMAT_VERSION",
]

PathLike = Union[str, "os.PathLike[str]"]
LearningRate = Union[float, Callable[[int], float]]


_SHAPE = attrgetter("shape")
_FIRST_ONLY = (0,)  # the offsets of a single group
_NDIM = attrgetter("ndim")


def _shape_check(shapes: List[Tuple[int, ...]]) -> Callable[[List[Any]], bool]:
    """``check(grads)``: whether each gradient has its parameter's shape, as far as the
    extension does not check it. The extension checks sizes, so for a parameter of at
    most one dimension the gradient's ndim settles its shape (an int read, where a
    shape is a new tuple): used when that is the case for most parameters."""
    wide = [k for k, shape in enumerate(shapes) if len(shape) > 1]
    if 2 * len(wide) > len(shapes):
        return lambda grads: list(map(_SHAPE, grads)) == shapes
    ndims = list(map(len, shapes))
    wide_shapes = [shapes[k] for k in wide]

    def check(grads: List[Any]) -> bool:
        return list(map(_NDIM, grads)) == ndims and (
            not wide or list(map(_SHAPE, map(grads.__getitem__, wide))) == wide_shapes)
    return check



def _param_group_list(params: Any) -> List[Mapping[str, Any]]:
    """The constructor's ``params`` (arrays, or param-group dicts) as a list of groups."""
    if isinstance(params, np.ndarray):
        raise TypeError("params must be a list of arrays or of param-group dicts, "
                        "got a single array (wrap it in a list)")
    groups = [params] if isinstance(params, Mapping) else list(params)
    if not groups:
        raise ValueError("the optimizer got an empty parameter list")
    if not isinstance(groups[0], Mapping):
        groups = [{"params": groups}]
    return groups

class _ArrayFrontend(_engine.Frontend):
    """The engine's view of an ``Optimizer``: parameters are the arrays themselves, state
    is keyed by the parameter's index across all groups, steps are ints in the state."""

    callable_lr = True

    def __init__(self, optimizer: "Optimizer") -> None:
        self._optimizer = weakref.ref(optimizer)  # no cycle: the optimizer owns the engine
        #: Index of each group's first parameter, set by Optimizer.step.
        self.offsets: Sequence[int] = ()
        self._getters: Dict[Tuple[int, int], Callable[[Any], Any]] = {}

    def states(self, g: int, params: Sequence[Any]) -> Sequence[Optional[Dict[str, Any]]]:
        start, count = self.offsets[g], len(params)
        state = self._optimizer().state
        if count > 1:  # one C call for the whole group when every parameter has state
            getter = self._getters.get((start, count))
            if getter is None:
                getter = self._getters[start, count] = itemgetter(*range(start, start + count))
            try:
                return getter(state)
            except KeyError:
                pass
        return list(map(state.get, range(start, start + count)))

    def put_state(self, g: int, k: int, param: Any, state: Dict[str, Any]) -> None:
        self._optimizer().state[self.offsets[g] + k] = state

    def state_source(self, g: int) -> Any:
        state = self._optimizer().state
        return (state, self.offsets[g]) if type(state) is TrackedStates else None

    def same_source(self, g: int, source: Any) -> bool:
        # The same counting mapping, and the group's parameters at the same indices in it.
        return self._optimizer().state is source[0] and self.offsets[g] == source[1]

    def array(self, name: str, obj: Any) -> Any:
        return obj  # the extension checks it is an array it can update in place

    def grad_check(self, shapes: List[Any]) -> Callable[[List[Any]], bool]:
        # Shapes are the one thing Python checks; None has no shape (nor ndim), so a
        # passed check also means every gradient is there.
        return _shape_check(shapes)

    def grad_arrays(self, g: int, plan: _engine.Plan, grads: List[Any]) -> List[Any]:
        try:
            if plan.grad_check(grads):
                return grads
        except AttributeError:  # None, or not an array: named below or by the extension
            pass
        for k, grad in zip(plan.members, grads):
            param = plan.params[k]
            if isinstance(grad, np.ndarray) and grad.shape != param.shape:
                raise ValueError(f"{self.grad_name(g, k)} has shape {grad.shape} but parameter "
                                 f"{self.param_name(g, k)} has shape {param.shape}")
        return grads

    def new_state_dict(self) -> Dict[str, Any]:
        return TrackedState()

    def write_steps(self, counters: List[Any], key: Any, count: int) -> None:
        # Our own writes, not the user's edits: past TrackedState's counting (dict.update
        # with one shared dict is the cheapest such write).
        entry = {key: count}
        if len(counters) > 4:
            any(map(dict.update, counters, repeat(entry)))  # update returns None: runs them all
        else:  # cheaper than setting up the map for a few
            for counter in counters:
                dict.update(counter, entry)

    @property
    def master_weights(self) -> bool:  # type: ignore[override]
        return self._optimizer().master_weights

    def new_buffer(self, param: Any, fill: float) -> Any:
        dtype = np.float32 if self.master_weights else param.dtype
        return np.zeros(param.shape, dtype) if fill == 0 else np.full(param.shape, fill, dtype)

    def new_master(self, param: Any) -> Any:
        return param.astype(np.float32)  # exact: a 16-bit value widens without rounding

    def new_step(self) -> Any:
        return 0

    def step_counter(self, name: str, value: Any, state: Dict[str, Any]) -> Tuple[int, Any, Any, Any]:
        return _engine.step_count(name, value), None, state, "step"

    def grad_name(self, g: int, k: int) -> str:
        return f"grads[{self.offsets[g] + k}]"

    def state_name(self, g: int, k: int, entry: str) -> str:
        return f"state[{self.offsets[g] + k}]['{entry}']"




class Optimizer:
    """Base of adamcore's NumPy optimizers: parameter groups, per-parameter state in
    ``torch.optim``'s layout, and checkpoint files. Subclasses name their ``_family``
    (the state and native call, see adamcore._engine) and their defaults."""

    _family: Family = ADAM_FAMILY

    def __init__(self, params: Iterable[Any], defaults: Mapping[str, Any], *,
                 rounding: str = "nearest", seed: int = 0, master_weights: bool = False,
                 max_grad_norm: Optional[float] = None, norm_type: float = 2.0) -> None:
        self.defaults: Dict[str, Any] = dict(defaults)
        #: Clipping fused into the step: the total norm of all the step's grads (one read
        #: of them) gives the coefficient torch's clip_grad_norm_ would apply, which the
        #: step multiplies in without writing the grads. None: no clipping.
        if max_grad_norm is not None:
            if isinstance(max_grad_norm, (bool, np.bool_)) or not isinstance(
                    max_grad_norm, (int, float, np.integer, np.floating)):
                raise TypeError(f"max_grad_norm must be a real number, got {type(max_grad_norm).__name__}")
            max_grad_norm = float(max_grad_norm)
            if not max_grad_norm >= 0:
                raise ValueError(f"max_grad_norm must be >= 0 (inf allowed), got {max_grad_norm}")
            from . import clip

            clip.grad_norm([], norm_type)  # raises for a bad norm_type
        self.max_grad_norm = max_grad_norm
        self.norm_type = norm_type
        #: The total grad norm of the last step (with max_grad_norm), as a float.
        self.last_grad_norm: Optional[float] = None
        # How 16-bit params, state and copies are stored (docs/numerics.md); checked by
        # the extension at the first step.
        self.rounding = rounding
        self.seed = seed
        if not isinstance(master_weights, (bool, np.bool_)):
            raise TypeError(f"master_weights must be a bool, got {type(master_weights).__name__}")
        #: 16-bit params keep float32 copies in state['master_param'] (and float32 state);
        #: each step updates the copy and writes the param as its rounding, in one pass.
        self.master_weights = bool(master_weights)
        self.param_groups: List[Dict[str, Any]] = []
        #: Per-parameter state keyed by the parameter's index across all groups.
        self.state: Dict[int, Dict[str, Any]] = TrackedStates()
        self._attach_engine()
        for group in _param_group_list(params):
            self.add_param_group(group)

    @property
    def _step_extra(self) -> Optional[Dict[str, Any]]:
        if self.rounding == "nearest" and self.seed == 0:
            return None
        return {"rounding": self.rounding, "seed": self.seed}

    def _attach_engine(self) -> None:
        self.__dict__.setdefault("master_weights", False)
        self._frontend = _ArrayFrontend(self)
        self._engine = Engine(self._family, self._frontend)

    # The engine caches views and native objects: copies and pickles start without it.
    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        del state["_frontend"], state["_engine"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("rounding", "nearest")  # (pickled before 16-bit rounding)
        self.__dict__.setdefault("seed", 0)
        for name, default in (("max_grad_norm", None), ("norm_type", 2.0), ("last_grad_norm", None)):
            self.__dict__.setdefault(name, default)
        self._attach_engine()

    # -- groups ---------------------------------------------------------------------

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Append a group: a dict with ``params`` (arrays) and optional hyperparameters;
        missing hyperparameters take the optimizer's defaults."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a param group needs a 'params' entry")
        index = len(self.param_groups)
        params = param_group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        group = {key: value for key, value in param_group.items() if key != "params"}
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group["params"] = params
        if self.master_weights:
            for k, p in enumerate(params):
                if getattr(getattr(p, "dtype", None), "name", None) not in ("bfloat16", "float16"):
                    raise TypeError(f"param_groups[{index}]['params'][{k}] must be a bfloat16 or "
                                    f"float16 array with master_weights=True, got "
                                    f"{getattr(p, 'dtype', type(p).__name__)}")
        self._engine.check_settings(index, group)
        groups = self.param_groups + [group]
        _engine.check_params([f"param_groups[{g}]['params'][{k}]" for g, gr in enumerate(groups)
                              for k in range(len(gr["params"]))],
                             [p for gr in groups for p in gr["params"]])
        offset = self._num_params()
        self.param_groups.append(group)
        if self._family.eager:  # AdaGrad: state from construction, as torch does
            for k, p in enumerate(params):
                self.state[offset + k] = self._engine.new_state(index, k, p, group)

    def _num_params(self) -> int:
        return sum(len(group["params"]) for group in self.param_groups)

    def _offsets(self) -> List[int]:
        offsets, total = [], 0
        for group in self.param_groups:
            offsets.append(total)
            total += len(group["params"])
        return offsets

    # -- stepping -------------------------------------------------------------------

    def step(self, grads: Sequence[Optional[np.ndarray]], *, diagnostics: bool = False,
             grad_scale: Optional[float] = None, found_inf: Any = None,
             error_if_nonfinite: bool = False) -> Optional[List[Any]]:
        """Update every parameter in place from ``grads``.

        ``grads`` holds one float32 array per parameter, in the order of the groups
        (``None`` skips that parameter this step, like a tensor without ``.grad``).
        Every gradient, hyperparameter and state array is checked before any array is
        written.

        With ``diagnostics=True`` returns one ``adamcore.GammaStats`` per group (``None``
        for a group with nothing to update or whose parameters are at different step
        counts), reporting Reddi et al.'s Γ for this step.

        AMP, as torch's fused optimizers take it from a GradScaler: ``grad_scale``
        divides every gradient in the pass (the quotients are written back to the
        gradient arrays); a true ``found_inf`` skips the step after every check, writing
        nothing (step counts included).

        With ``max_grad_norm`` (constructor), the grads are clipped in the pass as
        ``clip_grad_norm_`` would clip them (their total norm is in ``last_grad_norm``);
        ``error_if_nonfinite=True`` then raises RuntimeError for a NaN or infinite norm,
        writing nothing.
        """
        if isinstance(grads, np.ndarray):
            raise TypeError("grads must be a sequence with one array per parameter, got a single "
                            "array (wrap it in a list)")
        grads = list(grads)  # ours: the caller's sequence may change while we step
        groups = self.param_groups
        if len(groups) == 1:
            per_group, offsets, total = [grads], _FIRST_ONLY, len(groups[0]["params"])
        else:
            per_group, offsets, total = [], [], 0
            for group in groups:
                count = len(group["params"])
                per_group.append(grads[total:total + count])
                offsets.append(total)
                total += count
        if len(grads) != total:
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {total} parameters")
        self._frontend.offsets = offsets
        extra = self._step_extra
        if grad_scale is not None or found_inf is not None:
            extra = dict(extra or {}, grad_scale=grad_scale, found_inf=found_inf)
        if self.max_grad_norm is not None:
            extra = dict(extra or {}, clip_coef=self._clip_coefficient(grads, grad_scale, found_inf,
                                                                       error_if_nonfinite))
        results = self._engine.step(groups, per_group, diagnostics, extra)
        return results if diagnostics else None

    def _clip_coefficient(self, grads: List[Any], grad_scale: Any, found_inf: Any,
                          error_if_nonfinite: bool) -> float:
        """The coefficient of this step's fused clip (see ``step``), from every grad."""
        from . import clip

        if grad_scale is not None:
            raise ValueError("max_grad_norm with grad_scale: the norm is of unscaled grads; "
                             "unscale them first, or clip separately")
        present = [g for g in grads if g is not None]
        norm = clip.grad_norm(present, self.norm_type)
        self.last_grad_norm = norm
        if not math.isfinite(norm) and error_if_nonfinite is True and not found_inf:
            raise RuntimeError(f"the total norm of order {self.norm_type} of the grads is "
                               f"non-finite ({norm}), so it cannot be clipped; nothing was written")
        names = {getattr(g, "dtype", np.dtype(np.float32)).name for g in present}
        if "float64" in names:
            dtype = "float64"
        elif len(names) == 1:
            dtype = names.pop()
        else:  # torch's promotion: float32 with anything, bfloat16 with float16
            dtype = "float32"
        return clip.clip_coefficient(norm, self.max_grad_norm, dtype)

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
        matched by position; arrays are copied. Everything is checked first: on any error
        the optimizer is left exactly as it was."""
        self._apply_state_dict(state_dict, owned=False)

    def _apply_state_dict(self, state_dict: Mapping[str, Any], *, owned: bool) -> None:
        """``load_state_dict``; ``owned``: the arrays are fresh and private to this call
        (a checkpoint just read), so they are used without a copy."""
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
                index_of[_engine.step_count(f"{where}['params'][{k}]", saved_id)] = (offset + k, group["params"][k])
            fresh = {key: value for key, value in saved.items() if key != "params"}
            for key, value in self.defaults.items():
                fresh.setdefault(key, value)
            fresh["params"] = group["params"]
            self._engine.check_settings(g, fresh)
            new_groups.append(fresh)
        new_state: Dict[int, Dict[str, Any]] = {}
        for saved_id, saved_state in dict(state_dict["state"]).items():
            key = _engine.step_count("state key", saved_id)
            if key not in index_of:
                raise ValueError(f"the state dict has state for parameter {saved_id!r}, which none of "
                                 "its param groups lists")
            index, param = index_of[key]
            new_state[index] = self._loaded_state(f"state[{saved_id!r}]", saved_state, param, owned)
        # Parameters without saved state start afresh (AdaGrad creates its state eagerly).
        if self._family.eager:
            for g, (group, offset) in enumerate(zip(new_groups, self._offsets())):
                for k, p in enumerate(group["params"]):
                    if offset + k not in new_state:
                        new_state[offset + k] = self._engine.new_state(g, k, p, group)
        for group, fresh in zip(self.param_groups, new_groups):
            group.clear()
            group.update(fresh)
        self.state = TrackedStates(new_state)
        self._engine.forget()  # drop the old state's views now rather than at the next step

    def _loaded_state(self, where: str, saved: Any, param: np.ndarray, owned: bool) -> Dict[str, Any]:
        if not isinstance(saved, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(saved).__name__}")
        family = self._family
        names = (*family.required, *family.optional) + ((_engine.MASTER,) if self.master_weights else ())
        allowed = {"step", *names}
        unknown = sorted(set(saved) - allowed)
        if unknown:
            raise ValueError(f"{where} has entries {unknown} that {type(self).__name__} does not "
                             f"use (expected {sorted(allowed)}); is it another optimizer's state?")
        missing = [name for name in ("step", *family.required) if name not in saved]
        if missing:
            raise ValueError(f"{where} lacks {missing}; is it another optimizer's state?")
        state: Dict[str, Any] = TrackedState(step=_engine.step_count(f"{where}['step']", saved["step"]))
        # With master weights the state is float32; a 16-bit state saved without them (a
        # torch fused optimizer's, say) is widened, exactly. The other way is refused.
        dtype = np.dtype(np.float32) if self.master_weights else param.dtype
        for name in names:
            if name in saved:
                state[name] = _state_array(f"{where}['{name}']", saved[name], param, owned, dtype)
        if self.master_weights and _engine.MASTER not in state:
            state[_engine.MASTER] = param.astype(np.float32)
        return state

    # -- checkpoint files -----------------------------------------------------------

    def save(self, path: PathLike) -> None:
        """Write the state to ``path`` (a ``.npz`` file) atomically: see
        :func:`adamcore.checkpoint.save`. A callable ``lr`` must be an
        ``adamcore.schedule.Schedule`` to be saved."""
        checkpoint.save(self, path)

    def load(self, path: PathLike) -> None:
        """Load a checkpoint written by ``save``: see :func:`adamcore.checkpoint.load`.

        Raises ``CheckpointError`` (a ``ValueError``) for a truncated or corrupted file,
        one written by a newer adamcore, one of another optimizer family, or state that
        does not match the parameters; the optimizer is then left exactly as it was."""
        checkpoint.load(self, path)

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


def _state_array(where: str, value: Any, param: np.ndarray, owned: bool,
                 dtype: Optional[np.dtype] = None) -> np.ndarray:
    """A loaded state buffer as a private array of ``dtype`` (default: its parameter's)
    and its parameter's shape: a copy, unless ``owned`` and already usable in place. A
    buffer of the parameter's 16-bit dtype is widened when ``dtype`` is float32.

    Accepts NumPy arrays and anything exposing ``__array__`` (torch CPU tensors)."""
    dtype = param.dtype if dtype is None else dtype
    try:
        array = np.asarray(value)
    except Exception as err:  # a tensor on another device, say
        raise TypeError(f"{where} cannot be read as an array: {err}") from None
    if array.dtype != dtype:
        if not (dtype == np.float32 and array.dtype == param.dtype):
            raise TypeError(f"{where} has dtype {array.dtype}; expected {dtype}")
        array, owned = array.astype(np.float32), True  # exact
    if array.shape != param.shape:
        raise ValueError(f"{where} has shape {tuple(array.shape)} but its parameter has shape "
                         f"{tuple(param.shape)}")
    if owned and array.flags.c_contiguous and array.flags.writeable and array.flags.aligned:
        return array
    return np.array(array, order="C", copy=True)


# ------------------------------------------------------------------------ Adam family


class Adam(Optimizer):
    """Adam (Kingma & Ba) over float32 NumPy arrays, bit-identical to
    ``torch.optim.Adam(fused=True)``.

    ``weight_decay`` is an L2 penalty added to the gradient, unless
    ``decoupled_weight_decay=True`` (then this is AdamW). ``amsgrad=True`` uses the
    running maximum of ``exp_avg_sq`` (Reddi et al.). ``maximize=True`` ascends.
    ``lr`` may be a float or a callable ``lr(step)``. ``convention="optax"`` also takes
    optax's ``eps_root`` (added under the square root) and ``nesterov``; other conventions
    refuse them (ValueError naming the argument).

    >>> opt = Adam([w, b], lr=1e-3)          # doctest: +SKIP
    >>> opt.step([grad_w, grad_b])           # doctest: +SKIP
    """

    _family = ADAM_FAMILY

    def __init__(self, params: Iterable[Any], lr: LearningRate = ADAM.lr,
                 betas: Tuple[float, float] = ADAM.betas, eps: float = ADAM.eps,
                 weight_decay: float = ADAM.weight_decay, amsgrad: bool = ADAM.amsgrad, *,
                 maximize: bool = ADAM.maximize,
                 decoupled_weight_decay: bool = ADAM.decoupled_weight_decay,
                 rounding: str = "nearest", seed: int = 0, master_weights: bool = False,
                 max_grad_norm: Optional[float] = None, norm_type: float = 2.0,
                 convention: str = DEFAULT_CONVENTION, tail_width: int = 0,
                 eps_root: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(ADAM._asdict(), lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      convention=convention, tail_width=tail_width,
                                      eps_root=eps_root, nesterov=nesterov),
                         rounding=rounding, seed=seed, master_weights=master_weights,
                         max_grad_norm=max_grad_norm, norm_type=norm_type)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, bit-identical to
    ``torch.optim.AdamW(fused=True)``. Each step first shrinks the parameters by
    ``1 - lr * weight_decay`` and then applies the Adam update."""

    def __init__(self, params: Iterable[Any], lr: LearningRate = ADAM.lr,
                 betas: Tuple[float, float] = ADAM.betas, eps: float = ADAM.eps,
                 weight_decay: float = ADAMW_WEIGHT_DECAY, amsgrad: bool = ADAM.amsgrad, *,
                 maximize: bool = ADAM.maximize, rounding: str = "nearest", seed: int = 0,
                 master_weights: bool = False,
                 max_grad_norm: Optional[float] = None, norm_type: float = 2.0,
                 convention: str = DEFAULT_CONVENTION, tail_width: int = 0,
                 eps_root: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, rounding=rounding, seed=seed,
                         master_weights=master_weights,
                         max_grad_norm=max_grad_norm, norm_type=norm_type,
                         convention=convention, tail_width=tail_width,
                         eps_root=eps_root, nesterov=nesterov)


class AMSGrad(Adam):
    """AMSGrad (Reddi, Kale & Kumar): Adam whose denominator uses the running maximum
    of ``exp_avg_sq``, so the effective learning rate never grows. Equivalent to
    ``Adam(..., amsgrad=True)``; ``decoupled_weight_decay=True`` gives AdamW-AMSGrad."""

    def __init__(self, params: Iterable[Any], lr: LearningRate = ADAM.lr,
                 betas: Tuple[float, float] = ADAM.betas, eps: float = ADAM.eps,
                 weight_decay: float = ADAM.weight_decay, *, maximize: bool = ADAM.maximize,
                 decoupled_weight_decay: bool = ADAM.decoupled_weight_decay,
                 rounding: str = "nearest", seed: int = 0, master_weights: bool = False,
                 max_grad_norm: Optional[float] = None, norm_type: float = 2.0,
                 convention: str = DEFAULT_CONVENTION, tail_width: int = 0,
                 eps_root: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, True, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay, rounding=rounding, seed=seed,
                         master_weights=master_weights,
                         max_grad_norm=max_grad_norm, norm_type=norm_type,
                         convention=convention, tail_width=tail_width,
                         eps_root=eps_root, nesterov=nesterov)


# --------------------------------------------------------------------------- AdaGrad


class Adagrad(Optimizer):
    """AdaGrad (Duchi, Hazan & Singer) over float32 NumPy arrays, bit-identical to
    ``torch.optim.Adagrad(fused=True)``.

    The step size at step ``t`` is ``lr / (1 + (t - 1) * lr_decay)``; ``weight_decay``
    is an L2 penalty added to the gradient; the accumulator ``sum`` starts at
    ``initial_accumulator_value`` (created at construction, as torch does)."""

    _family = ADAGRAD_FAMILY

    def __init__(self, params: Iterable[Any], lr: LearningRate = ADAGRAD.lr,
                 lr_decay: float = ADAGRAD.lr_decay, weight_decay: float = ADAGRAD.weight_decay,
                 initial_accumulator_value: float = ADAGRAD.initial_accumulator_value,
                 eps: float = ADAGRAD.eps, *, maximize: bool = ADAGRAD.maximize,
                 rounding: str = "nearest", seed: int = 0, master_weights: bool = False,
                 max_grad_norm: Optional[float] = None, norm_type: float = 2.0,
                 convention: str = DEFAULT_CONVENTION, tail_width: int = 0) -> None:
        super().__init__(params, dict(ADAGRAD._asdict(), lr=lr, lr_decay=lr_decay, eps=eps,
                                      weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      maximize=maximize, convention=convention,
                                      tail_width=tail_width), rounding=rounding, seed=seed,
                         master_weights=master_weights,
                         max_grad_norm=max_grad_norm, norm_type=norm_type)


# ---------------------------------------------------------------- SGD and Lion
class _ElementwiseOptimizer:
    """Base of the NumPy SGD and Lion: parameter groups of same-dtype arrays, state keyed
    by the parameter's index across groups with torch.optim's keys, one native call per
    group and step. Simpler than Optimizer: no fused clipping, stochastic rounding or
    master weights (the kernels take the one-dtype layouts only)."""

    _hyper_keys: Tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: Mapping[str, Any]) -> None:
        self.defaults: Dict[str, Any] = dict(defaults)
        self.param_groups: List[Dict[str, Any]] = []
        self.state: Dict[int, Dict[str, Any]] = {}
        for group in _param_group_list(params):
            self.add_param_group(group)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        group = dict(self.defaults, **param_group)
        group["params"] = list(group["params"])
        for k, p in enumerate(group["params"]):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"param_groups[{len(self.param_groups)}]['params'][{k}] must be "
                                f"a numpy.ndarray, got {type(p).__name__}")
        self.param_groups.append(group)

    def _indexed(self) -> List[List[Tuple[int, np.ndarray]]]:
        out, index = [], 0
        for group in self.param_groups:
            out.append([(index + k, p) for k, p in enumerate(group["params"])])
            index += len(group["params"])
        return out

    def step(self, grads: Sequence[Optional[np.ndarray]], *, grad_scale: Optional[float] = None,
             found_inf: Optional[float] = None) -> None:
        """One step; ``grads`` has one array (or None: skipped) per parameter, in order.
        Every group's calls are checked before any runs, and new state is stored only after
        they all ran: a step that raises leaves everything as it was."""
        indexed = self._indexed()
        total = sum(len(pairs) for pairs in indexed)
        if len(grads) != total:
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {total} params")
        calls: List[Tuple[Any, tuple, Dict[str, Any]]] = []
        new_state: List[Tuple[int, str, np.ndarray]] = []
        for group, pairs in zip(self.param_groups, indexed):
            active = [(i, p, grads[i]) for i, p in pairs if grads[i] is not None]
            if active:
                self._group_calls(group, active, dict(grad_scale=grad_scale, found_inf=found_inf),
                                  calls, new_state)
        _engine.run_checked(calls)
        for i, key, value in new_state:
            self.state.setdefault(i, {})[key] = value

    def state_dict(self) -> Dict[str, Any]:
        """torch.optim's layout: ``{'state': {index: {...}}, 'param_groups': [...]}``; the
        arrays are the live buffers."""
        groups = []
        for group, pairs in zip(self.param_groups, self._indexed()):
            saved = {key: value for key, value in group.items() if key != "params"}
            saved["params"] = [i for i, _ in pairs]
            groups.append(saved)
        return {"state": {i: dict(s) for i, s in sorted(self.state.items()) if s},
                "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Hyperparameters and state from ``state_dict`` (this class's or torch.optim's:
        tensors are read through ``__array__``), checked first and copied."""
        saved_groups = list(state_dict["param_groups"])
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the state dict's param groups do not match the optimizer's")
        params = {i: p for pairs in self._indexed() for i, p in pairs}
        order = [i for g in saved_groups for i in g["params"]]
        new_state: Dict[int, Dict[str, Any]] = {}
        for position, saved_index in enumerate(order):
            entry = state_dict["state"].get(saved_index)
            if not entry:
                continue
            param = params[position]
            new_state[position] = {}
            for key, value in entry.items():
                array = np.asarray(value).copy()  # (torch tensors: __array__ takes no copy=)
                if key in self._state_keys and (array.shape != param.shape or array.dtype != param.dtype):
                    raise ValueError(f"state[{saved_index}][{key!r}] has shape {array.shape} and "
                                     f"dtype {array.dtype}, but its param {param.shape} {param.dtype}")
                new_state[position][key] = np.ascontiguousarray(array)
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k in self._hyper_keys})
        self.state = new_state

    _state_keys: Tuple[str, ...] = ()


class SGD(_ElementwiseOptimizer):
    """SGD over NumPy arrays (float32, float64, bfloat16, float16), bit-identical to
    ``torch.optim.SGD(fused=True)`` on the elements torch's vector body computes
    (docs/numerics.md, "SGD"); with ``tail_width=W`` (torch's float32 vector width,
    adamcore.torch.torch_tail_width()) on every element. State ``momentum_buffer`` as
    torch keeps it, created at a parameter's first step with momentum."""

    _hyper_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize",
                   "tail_width")
    _state_keys = ("momentum_buffer",)

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, tail_width: int = 0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, tail_width=tail_width))

    def _group_calls(self, group, active, amp, calls, new_state) -> None:
        from . import sgd_step

        # (groups of state dicts from before tail_width: the body's recipe everywhere)
        hyper = dict(amp, **{key: group.get(key, 0) for key in self._hyper_keys})
        if group["momentum"] == 0:
            calls.append((sgd_step, ([p for _, p, _ in active], [g for _, _, g in active]), hyper))
            return
        for first in (False, True):  # continuing buffers, then new ones (torch's first step)
            chosen = [(i, p, g) for i, p, g in active
                      if ("momentum_buffer" not in self.state.get(i, {})) == first]
            if not chosen:
                continue
            buffers = [np.empty_like(p) if first else self.state[i]["momentum_buffer"]
                       for i, p, _ in chosen]
            calls.append((sgd_step, ([p for _, p, _ in chosen], [g for _, _, g in chosen], buffers),
                          dict(hyper, first_step=first)))
            if first and not amp["found_inf"]:
                new_state.extend((i, "momentum_buffer", buf) for (i, _, _), buf in zip(chosen, buffers))


class Lion(_ElementwiseOptimizer):
    """Lion (Chen et al. 2023) over NumPy arrays: ``convention="paper"`` (default) or
    ``"deepspeed"`` (DeepSpeedCPULion's arithmetic; docs/numerics.md, "Lion"). State
    ``exp_avg``, zero at a parameter's first step."""

    _hyper_keys = ("lr", "betas", "weight_decay", "maximize", "convention")
    _state_keys = ("exp_avg",)

    def __init__(self, params: Iterable[Any], lr: float = 1e-4,
                 betas: Tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 maximize: bool = False, convention: str = "paper") -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      maximize=maximize, convention=convention))

    def _group_calls(self, group, active, amp, calls, new_state) -> None:
        from . import lion_step

        exp_avgs = []
        for i, p, _ in active:
            exp_avg = self.state.get(i, {}).get("exp_avg")
            if exp_avg is None:
                exp_avg = np.zeros_like(p)
                new_state.append((i, "exp_avg", exp_avg))
            exp_avgs.append(exp_avg)
        calls.append((lion_step, ([p for _, p, _ in active], [g for _, _, g in active], exp_avgs),
                      dict(amp, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                           weight_decay=group["weight_decay"], maximize=group["maximize"],
                           convention=group["convention"])))
