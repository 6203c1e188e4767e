"""The group step behind both optimizer front-ends: ``adamcore.Optimizer`` over NumPy
arrays (optim.py) and ``adamcore.torch`` over tensors (torch.py).

A front-end says where its parameters, gradients and state live (a ``Frontend``); the
engine does the rest, the same way for both:

* The state is read afresh at every step, as torch.optim does: a replaced buffer, a
  cleared state, an edited step count, a new gradient, a parameter whose memory moved
  or a changed group setting is used as it is now. What a step gathers is cached under
  a key that covers every object it cached (identity, the data pointer where memory can
  move under the same object, the step counts and the settings that select buffers),
  so an unchanged step costs a few list comparisons. State mappings and dicts that
  count their edits (``_EditCounting``: the NumPy front-end's state and state dicts,
  adamcore.torch's state mapping) let a step skip what no counted edit can have
  changed; anything else (a plain dict of the user's) is read at every step.
* Validation is done once and in one place. The native extension checks every buffer
  and hyperparameter (``check_only=True`` runs exactly the checks of a real call);
  Python checks only what the extension cannot know: group structure, shapes against
  the parameters, how a front-end stores its state. When a step takes more than one
  native call (several groups, or parameters at different step counts), every call is
  checked before the first one writes.
* One native call per distinct step count in a group.
"""

from __future__ import annotations

import math
import re
from itertools import compress, repeat
from operator import getitem, is_, is_not
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _core

# ------------------------------------------------------------ defaults (the one source)


class AdamDefaults(NamedTuple):
    """torch.optim.Adam's defaults, used by adamcore.Adam and adamcore.torch.Adam."""

    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False
    decoupled_weight_decay: bool = False


class AdagradDefaults(NamedTuple):
    """torch.optim.Adagrad's defaults, used by adamcore.Adagrad and adamcore.torch.Adagrad."""

    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10
    maximize: bool = False


ADAM = AdamDefaults()
ADAGRAD = AdagradDefaults()
#: AdamW's weight decay (torch.optim.AdamW's default); everything else as ADAM.
ADAMW_WEIGHT_DECAY = 1e-2
#: The convention optimizers use unless told otherwise (torch fused's arithmetic).
DEFAULT_CONVENTION = "torch-fused"

# ------------------------------------------------------------------------- error names

# The extension names an argument by its position in its own call ("grads[3]" is the
# fourth gradient of that call); users know it by the front-end's name for it.
_CALL_COLUMNS = {"params": "param", "grads": "grad", "exp_avgs": "exp_avg",
                 "exp_avg_sqs": "exp_avg_sq", "max_exp_avg_sqs": "max_exp_avg_sq",
                 "state_sums": "sum"}
_POSITION = re.compile(r"\b(" + "|".join(_CALL_COLUMNS) + r")\[(\d+)\]")
_HYPERPARAMETER = re.compile(r"(lr|prev_lr|beta1|beta2|eps|weight_decay|lr_decay|amsgrad|"
                             r"maximize|decoupled)\b")
# Hyperparameters the extension names differently from a param group's keys.
_GROUP_KEYS = {"beta1": "beta1 (betas[0])", "beta2": "beta2 (betas[1])",
               "decoupled": "decoupled_weight_decay"}

Label = Callable[[str, int], str]  # (entry, position in the call) -> the user's name


def _renamed(err: Exception, where: str, label: Optional[Label],
             hyper_names: Optional[Dict[str, str]] = None) -> Exception:
    """``err`` from the extension, with its argument names replaced by the caller's:
    buffers by ``label`` and hyperparameters prefixed with the group ``where``. Other
    errors (raised by a user's ``__float__``, say) are returned as they are."""
    if type(err) not in (TypeError, ValueError):
        return err
    message = str(err)
    if label is not None:
        message = _POSITION.sub(lambda m: label(_CALL_COLUMNS[m.group(1)], int(m.group(2))), message)
    match = _HYPERPARAMETER.match(message)
    if match:
        name = match.group(1)
        shown = (hyper_names or {}).get(name) or _GROUP_KEYS.get(name, name)
        message = f"{where}: {shown}{message[match.end():]}"
    return type(err)(message)


def _native(where: str, label: Optional[Label], hyper_names: Optional[Dict[str, str]],
            function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call into the extension; its TypeError/ValueError come back in the caller's names."""
    try:
        return function(*args, **kwargs)
    except (TypeError, ValueError) as err:
        _reraise(err, where, label, hyper_names)


def _reraise(err: Exception, where: str, label: Optional[Label],
             hyper_names: Optional[Dict[str, str]]) -> None:
    renamed = _renamed(err, where, label, hyper_names)
    if renamed is err:
        raise err
    raise renamed from None


def real_number(where: str, name: str, value: Any) -> float:
    """A finite, non-negative float or a clear error: for settings the extension never
    sees (AdaGrad's initial_accumulator_value fills new state in Python)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}") from None
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(f"{where}: {name} must be finite and >= 0, got {value!r}")
    return number


def step_count(where: str, value: Any) -> int:
    """A state's step count (an int, a NumPy scalar, a 0-d tensor) as an int."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where} must be a number, got {type(value).__name__}") from None
    if not (number >= 0 and number.is_integer()):
        raise ValueError(f"{where} must be a whole number >= 0, got {value!r}")
    return int(number)


def check_params(names: Sequence[str], arrays: Sequence[Any]) -> None:
    """Raise unless the extension accepts ``arrays`` as parameters updated in place:
    its own checks (type, dtype, contiguity, alignment, writeable, no shared memory),
    run with scratch state buffers of each parameter's dtype that are never touched (so
    never paged in)."""
    scratch = [np.empty(a.size, a.dtype) if isinstance(a, np.ndarray) and not a.dtype.hasobject
               else np.empty(0, np.float32) for a in arrays]
    _native("", lambda entry, j: names[j], None, _core.AdagradGroup, list(arrays), scratch)


def run_checked(calls: Sequence[Tuple[Callable[..., Any], tuple, Dict[str, Any]]]) -> None:
    """Run native step calls ``(function, args, kwargs)``, all or none: with more than
    one, each is first run with ``check_only=True`` (every check, nothing written), so a
    bad later call cannot leave the earlier ones applied. (One call checks everything
    itself before it writes.)"""
    if len(calls) > 1:
        for function, args, kwargs in calls:
            function(*args, check_only=True, **kwargs)
    for function, args, kwargs in calls:
        function(*args, **kwargs)


def _is_true(flag: Any) -> bool:
    # Only to shape a checking call: the extension rejects anything but a bool first.
    return flag is True or flag is np.True_


# ------------------------------------------------------------------------- algorithms


class Family:
    """What differs between the Adam and AdaGrad families."""

    #: Name recorded in checkpoints: state moves between optimizers of one family.
    name = ""
    #: State entries besides ``step`` that every state holds.
    required: Tuple[str, ...] = ()
    #: State entries some settings add.
    optional: Tuple[str, ...] = ()
    #: True when state exists from construction (AdaGrad), not from the first step.
    eager = False

    def buffers(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        """The state buffers a step takes under ``group``'s settings (already checked)."""
        return self.required

    def fill(self, where: str, group: Dict[str, Any], name: str) -> float:
        """The value a new state buffer starts at."""
        return 0.0

    def options(self, where: str, group: Dict[str, Any]) -> Dict[str, Any]:
        """Keyword arguments of the native step, except step, lr and prev_lr."""
        raise NotImplementedError

    def check_settings(self, where: str, group: Dict[str, Any], lr: Any) -> None:
        """Raise for any setting of ``group`` the extension or Python rejects."""
        raise NotImplementedError

    def native(self, columns: List[List[np.ndarray]], copies: Optional[List[Any]] = None) -> Any:
        """The extension's group object over the parameters and buffers (in order of
        ``buffers``) and optional param copies; its constructor checks every array."""
        raise NotImplementedError


def convention_options(group: Dict[str, Any]) -> Dict[str, Any]:
    """The group's convention and tail_width (absent, as in older state dicts: torch-fused
    without the tail recipe); the extension checks both."""
    return {"convention": group.get("convention", DEFAULT_CONVENTION),
            "tail_width": group.get("tail_width", 0)}


class _AdamFamily(Family):
    name = "adam"
    required = ("exp_avg", "exp_avg_sq")
    optional = ("max_exp_avg_sq",)

    def buffers(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        return self.required + self.optional if group["amsgrad"] else self.required

    def options(self, where: str, group: Dict[str, Any]) -> Dict[str, Any]:
        betas = group["betas"]
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}") from None
        # eps_root and nesterov (optax's; absent in older state dicts) are checked against
        # the convention by the extension.
        return {"beta1": beta1, "beta2": beta2, "eps": group["eps"],
                "weight_decay": group["weight_decay"], "decoupled": group["decoupled_weight_decay"],
                "maximize": group["maximize"], "eps_root": group.get("eps_root", 0.0),
                "nesterov": group.get("nesterov", False), **convention_options(group)}

    def check_settings(self, where: str, group: Dict[str, Any], lr: Any) -> None:
        options = self.options(where, group)
        _native(where, None, None, _EMPTY_ADAM.step, [], step=1, lr=lr, check_only=True, **options)
        # amsgrad picks buffers rather than arithmetic; adam_step checks the flag itself.
        amsgrad = group["amsgrad"]
        _native(where, None, None, _core.adam_step, [], [], [], [], step=1, amsgrad=amsgrad,
                max_exp_avg_sq=[] if _is_true(amsgrad) else None, check_only=True)

    def native(self, columns: List[List[np.ndarray]], copies: Optional[List[Any]] = None) -> Any:
        return _core.AdamGroup(columns[0], columns[1], columns[2],
                               columns[3] if len(columns) > 3 else None, copies)


class _AdagradFamily(Family):
    name = "adagrad"
    required = ("sum",)
    eager = True

    def fill(self, where: str, group: Dict[str, Any], name: str) -> float:
        return real_number(where, "initial_accumulator_value", group["initial_accumulator_value"])

    def options(self, where: str, group: Dict[str, Any]) -> Dict[str, Any]:
        return {"lr_decay": group["lr_decay"], "weight_decay": group["weight_decay"],
                "eps": group["eps"], "maximize": group["maximize"], **convention_options(group)}

    def check_settings(self, where: str, group: Dict[str, Any], lr: Any) -> None:
        _native(where, None, None, _EMPTY_ADAGRAD.step, [], step=1, lr=lr, check_only=True,
                **self.options(where, group))
        self.fill(where, group, "sum")

    def native(self, columns: List[List[np.ndarray]], copies: Optional[List[Any]] = None) -> Any:
        return _core.AdagradGroup(columns[0], columns[1], copies)


#: The state entry of a parameter's float32 master copy (optimizers with master_weights).
MASTER = "master_param"

ADAM_FAMILY: Family = _AdamFamily()
ADAGRAD_FAMILY: Family = _AdagradFamily()
# Empty groups: the extension's hyperparameter checks without any buffer.
_EMPTY_ADAM = _core.AdamGroup([], [], [])
_EMPTY_ADAGRAD = _core.AdagradGroup([], [])


# ------------------------------------------------------------------------ state dicts


class _EditCounting(dict):
    """A dict that counts every edit made through the dict interface in ``edits`` (one
    count shared by every such dict), so that a step can tell at once that nothing was
    replaced, added or removed since it last looked. The engine's own step-count writes
    go through ``dict.update`` called on the dict itself, which is not counted."""

    __slots__ = ()
    edits = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        _EditCounting.edits += 1
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        _EditCounting.edits += 1
        dict.__delitem__(self, key)

    def __ior__(self, other: Any) -> "_EditCounting":
        _EditCounting.edits += 1
        return dict.__ior__(self, other)

    def clear(self) -> None:
        _EditCounting.edits += 1
        dict.clear(self)

    def pop(self, *args: Any) -> Any:
        _EditCounting.edits += 1
        return dict.pop(self, *args)

    def popitem(self) -> Tuple[Any, Any]:
        _EditCounting.edits += 1
        return dict.popitem(self)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        _EditCounting.edits += 1
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        _EditCounting.edits += 1
        dict.update(self, *args, **kwargs)


class TrackedState(_EditCounting):
    """A parameter's state dict (NumPy front-end) that counts its edits."""

    __slots__ = ()


class TrackedStates(_EditCounting):
    """The NumPy front-end's ``optimizer.state`` (index -> state dict), counting its edits
    in the same count: while the count stands, every parameter still has the state dict
    a step last saw there."""

    __slots__ = ()


# -------------------------------------------------------------------------- front-ends


class Frontend:
    """Where one front-end keeps its parameters, gradients and state.

    The engine calls these with a group's index ``g`` and a parameter's position ``k``
    in that group."""

    #: Whether an object's memory can change while it stays the same object (torch's
    #: ``p.data = x``): the cache then also compares data pointers.
    movable = False
    #: Whether a state's ``step`` is an object updated in place (a tensor) rather than a
    #: value written into the state dict.
    step_is_object = False
    #: Whether a group's ``lr`` may be a callable ``lr(step)``.
    callable_lr = False
    #: Whether 16-bit params keep float32 master copies in their state
    #: (``MASTER``); the step updates the masters and writes the params as their copy.
    master_weights = False

    def pointers(self, objects: Sequence[Any]) -> List[int]:
        """Data pointers (only called when ``movable``)."""
        raise NotImplementedError

    def states(self, g: int, params: Sequence[Any]) -> List[Optional[Dict[str, Any]]]:
        """The current state dict of each parameter of group ``g`` (None: none yet)."""
        raise NotImplementedError

    def put_state(self, g: int, k: int, param: Any, state: Dict[str, Any]) -> None:
        """Store a new state dict for a parameter that had none."""
        raise NotImplementedError

    def state_source(self, g: int) -> Any:
        """Where ``states(g, ...)`` reads, when that counts its edits in
        ``_EditCounting.edits`` so that an unchanged count means the same state dicts;
        None otherwise."""
        return None

    def same_source(self, g: int, source: Any) -> bool:
        """Whether ``states(g, ...)`` still reads from ``source`` (from ``state_source``)."""
        return False

    def array(self, name: str, obj: Any) -> Any:
        """A NumPy view sharing ``obj``'s memory (the extension checks it), or a clear
        error for an object that has no such view."""
        raise NotImplementedError

    def grad_arrays(self, g: int, plan: "Plan", grads: List[Any]) -> List[Any]:
        """Arrays for the gradients of the plan's active parameters, after checking what
        the extension cannot (their shapes, where the front-end does not ensure them)."""
        raise NotImplementedError

    def grad_check(self, shapes: List[Any]) -> Optional[Callable[[List[Any]], bool]]:
        """For the active parameters of a plan (of these shapes): a function
        ``check(grads)`` that is True when ``grads`` can go to the extension as they are
        (every one present and passing what ``grad_arrays`` checks; it may raise
        AttributeError instead of returning False). None: ``grad_arrays`` is always
        called, and gradients are checked for None one by one."""
        return None

    def call_key(self, param: Any) -> Any:
        """Parameters of a group go to one native call per step count and per call key
        (a call's buffers share one dtype layout; torch groups may mix dtypes)."""
        return None

    def new_state_dict(self) -> Dict[str, Any]:
        """An empty state dict for a parameter that has none."""
        return {}

    def write_steps(self, counters: List[Any], key: Any, count: int) -> None:
        """Store the new step count of one call's parameters: ``counter[key] = count``."""
        for counter in counters:
            counter[key] = count

    def new_buffer(self, param: Any, fill: float) -> Any:
        raise NotImplementedError

    def new_master(self, param: Any) -> Any:
        """A float32 copy of ``param`` (only called with ``master_weights``)."""
        raise NotImplementedError

    def new_step(self) -> Any:
        """The step entry of a new state (0)."""
        raise NotImplementedError

    def step_counter(self, name: str, value: Any, state: Dict[str, Any]) -> Tuple[int, Any, Any, Any]:
        """``(count, replacement, container, key)`` for the step entry ``value`` of
        ``state``: its count; a new entry to store instead, or None; and where the new
        count is written after a step (``container[key] = count``)."""
        raise NotImplementedError

    def group_name(self, g: int) -> str:
        return f"param_groups[{g}]"

    def param_name(self, g: int, k: int) -> str:
        return f"param_groups[{g}]['params'][{k}]"

    def grad_name(self, g: int, k: int) -> str:
        raise NotImplementedError

    def state_name(self, g: int, k: int, entry: str) -> str:
        raise NotImplementedError

    def name(self, g: int, k: int, entry: str) -> str:
        """The user's name for ``entry`` ('param', 'grad' or a state entry) of a parameter."""
        if entry == "param":
            return self.param_name(g, k)
        if entry == "grad":
            return self.grad_name(g, k)
        return self.state_name(g, k, entry)


# ------------------------------------------------------------------------ cached plan


class _Settings:
    """A group's settings as last checked, with what they give: while the group holds
    the same keys and the same objects under them, they are not checked again. lr is
    left out of the comparison (``values[lr_at]`` is kept up to date): every step passes
    it to the extension, which checks it, so a schedule that sets it at every step costs
    no check here."""

    __slots__ = ("group", "index", "keys", "values", "lr_at", "options", "where", "names")

    def __init__(self, group: Dict[str, Any], index: int, options: Optional[Dict[str, Any]],
                 where: str, names: Tuple[str, ...]) -> None:
        self.group = group                # the group dict (kept: its id is the record's key)
        self.index = index                # its index in the groups of the step
        self.keys = tuple(group)
        self.values = list(group.values())
        self.lr_at = self.keys.index("lr")
        self.options = options            # the native call's options; None: made at each step
        self.where = where                # the group's name in messages
        self.names = names                # its state buffers

    def same(self, group: Dict[str, Any], index: int) -> bool:
        """Whether ``group`` at ``index`` still has these settings (lr aside)."""
        if not (index == self.index and tuple(group) == self.keys):
            return False
        values = self.values
        values[self.lr_at] = group["lr"]
        return all(map(is_, group.values(), values))


class _Call:
    """One native call: the active parameters of a group that are at one step count."""

    __slots__ = ("positions", "done", "label", "counters", "native")

    def __init__(self, positions: List[int], done: int, label: Label, counters: List[Any]) -> None:
        self.positions = positions  # indices into the plan's active parameters
        self.done = done            # steps these parameters have taken
        self.label = label          # the user's names for the call's arguments
        self.counters = counters    # where their step counts are written
        self.native: Any = None


class Plan:
    """Everything a group's step gathered, valid while its key still matches: the same
    group at the same index, the same parameter objects (and memory), the same parameters
    with gradients, the same state dicts holding the same buffers (and memory), the same
    step counts and buffer names.

    A plan belongs to its group dict, not to an index: an engine that steps one group at
    a time through a one-group list (DeepSpeed's ZeRO optimizers) finds each group's plan
    again."""

    __slots__ = ("group", "index", "names", "params", "active", "all_active", "members", "states",
                 "entries", "watch_states", "watch_keys", "watch_objects", "pointer_objects",
                 "pointers", "counters", "counter_key", "shapes", "grad_check", "calls",
                 "pending", "tracked", "source", "edits", "frontend_data", "quick")

    def __init__(self, group: Dict[str, Any], index: int) -> None:
        self.group = group                       # the group dict (kept: its id is the plan's key)
        self.index = index                       # its index in the groups of the step
        self.names: Tuple[str, ...] = ()
        self.params: List[Any] = []
        self.active: List[bool] = []
        self.all_active = False
        self.members: List[int] = []             # positions of the active parameters
        self.states: List[Dict[str, Any]] = []   # their state dicts
        self.entries: Dict[str, List[Any]] = {}  # state entry -> objects, tracked by identity
        # The same, flat: watch_objects[i] is watch_states[i][watch_keys[i]].
        self.watch_states: List[Dict[str, Any]] = []
        self.watch_keys: List[str] = []
        self.watch_objects: List[Any] = []
        # Front-ends whose objects can move: the params and state entries, and where
        # their memory was.
        self.pointer_objects: List[Any] = []
        self.pointers: List[int] = []
        self.counters: List[Any] = []            # where each step count is written
        self.counter_key: Any = None
        self.shapes: List[Any] = []              # the active parameters' shapes
        self.grad_check: Optional[Callable[[List[Any]], bool]] = None  # Frontend.grad_check
        self.calls: List[_Call] = []
        # (state, new entries, insert as (g, k, param) or None): applied after the step.
        self.pending: List[Tuple[Dict[str, Any], Dict[str, Any], Any]] = []
        # All states are TrackedState and their step counts plain values: while nothing
        # counted an edit (_EditCounting.edits == edits), their entries and step counts still hold.
        self.tracked = False
        # frontend.state_source(): while it is still the source and nothing counted an
        # edit, the states are still the dicts in ``states`` (not even looked up).
        self.source: Any = None
        self.edits = -1
        self.frontend_data: Any = None           # the front-end's own cache for this plan
        # The settings the plan was last stepped with, when its step can take the short
        # way (Engine._quick): one group at index 0, one native call, every parameter active.
        self.quick: Optional[_Settings] = None

    def counts(self) -> List[int]:
        """Each active parameter's step count as this plan last left it."""
        if len(self.calls) == 1:
            return [self.calls[0].done] * len(self.states)
        counts = [0] * len(self.states)
        for call in self.calls:
            for i in call.positions:
                counts[i] = call.done
        return counts

    def fits(self, grads: List[Any]) -> bool:
        """Whether the plan's ``grad_check`` passes ``grads`` (every parameter active),
        so that they go to the extension as they are."""
        if not (self.all_active and self.grad_check is not None):
            return False
        try:
            return self.grad_check(grads)
        except AttributeError:  # None, or not an array: the front-end looks closer
            return False

    def matches(self, frontend: Frontend, g: int, params: List[Any], grads: List[Any],
                names: Tuple[str, ...], fitted: bool = False) -> bool:
        """Whether this plan still describes group ``g``'s step with ``grads``: every
        cached object is still where the plan found it (see the class docstring).
        ``fitted``: the plan's ``grad_check`` passed (so every gradient is present)."""
        if not (g == self.index and names == self.names and len(params) == len(self.params)
                and all(map(is_, params, self.params))):
            return False
        if self.all_active:
            if not (fitted or all(map(is_not, grads, repeat(None)))):
                return False
        elif list(map(is_not, grads, repeat(None))) != self.active:
            return False
        unedited = _EditCounting.edits == self.edits
        if not (unedited and self.source is not None and frontend.same_source(g, self.source)):
            states = frontend.states(g, params)
            if not self.all_active:
                states = list(compress(states, self.active))
            if not all(map(is_, states, self.states)):
                return False
        # The state mapping is as the plan saw it: the same state dicts.
        if self.tracked and unedited:
            return True
        try:
            if not all(map(is_, map(getitem, self.watch_states, self.watch_keys), self.watch_objects)):
                return False
            if frontend.movable and frontend.pointers(self.pointer_objects) != self.pointers:
                return False
            return list(map(getitem, self.counters, repeat(self.counter_key))) == self.counts()
        except (KeyError, TypeError):  # an entry deleted, a state no longer a dict
            return False


# ------------------------------------------------------------------------------ engine


def _stream_seed(seed: Any, group: int, call: int) -> Any:
    """The seed of one native call: the optimizer's ``seed`` for group 0's first call,
    else a distinct value (a group's tensors are streams 0, 1, ... of its calls)."""
    if group == 0 and call == 0 or isinstance(seed, bool) or not isinstance(seed, int):
        return seed  # (the extension rejects what is not a seed)
    return (seed + 0x9E3779B97F4A7C15 * (group * 65536 + call)) % 2**64


class Engine:
    """Steps the parameter groups of one optimizer (see the module docstring)."""

    def __init__(self, family: Family, frontend: Frontend) -> None:
        self.family = family
        self.frontend = frontend
        # Keyed by id(group), each entry holding the group, so that while an entry is
        # kept no other object has that id and a hit is the same group: a group's plan,
        # its settings as last checked, its last lr.
        self._plans: Dict[int, Plan] = {}
        self._checked: Dict[int, _Settings] = {}
        self._last_lr: Dict[int, Tuple[Dict[str, Any], Any]] = {}

    def forget(self) -> None:
        """Drop every cached plan and checked setting (after loading a state, say): the
        next step gathers everything afresh."""
        self._plans.clear()
        self._checked.clear()
        self._last_lr.clear()

    # -- settings -------------------------------------------------------------------

    def check_settings(self, g: Any, group: Dict[str, Any]) -> None:
        """Raise for a setting of ``group`` that cannot be used (``g``: its index, or a
        name such as 'defaults')."""
        where = self.frontend.group_name(g) if isinstance(g, int) else str(g)
        lr = group["lr"]
        if self.frontend.callable_lr and callable(lr):
            lr = 0.0  # checked at each step, on the value it returns
        self.family.check_settings(where, group, lr)

    def _checked_options(self, g: int, group: Dict[str, Any]) -> Tuple[Dict[str, Any], str, Tuple[str, ...]]:
        """Group ``g``'s native call options, name and state buffers, its settings checked
        again when any was replaced since the last step."""
        seen = self._checked.get(id(group))
        if seen is not None and seen.same(group, g):
            if seen.options is not None:
                return seen.options, seen.where, seen.names
            return self.family.options(seen.where, group), seen.where, seen.names
        where = self.frontend.group_name(g)
        self.check_settings(g, group)
        options = self.family.options(where, group)
        # Options hold the settings' own objects, except betas, unpacked: a list may change
        # in place, so its options are made afresh at every step.
        reusable = not isinstance(group.get("betas"), list)
        # The buffers follow amsgrad, a bool (checked): the same object, the same buffers.
        names = self.buffers(group)
        _keep(self._checked, id(group), _Settings(group, g, options if reusable else None, where, names))
        return options, where, names

    def buffers(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        """The state entries a step takes: the family's, after the master copy if any."""
        names = self.family.buffers(group)
        return (MASTER,) + names if self.frontend.master_weights else names

    def new_state(self, g: int, k: int, param: Any, group: Dict[str, Any]) -> Dict[str, Any]:
        """A parameter's state before its first step: step 0 and fresh buffers."""
        state = self.frontend.new_state_dict()
        state["step"] = self.frontend.new_step()
        where = self.frontend.group_name(g)
        for name in self.buffers(group):
            state[name] = (self.frontend.new_master(param) if name == MASTER else
                           self.frontend.new_buffer(param, self.family.fill(where, group, name)))
        return state

    # -- the step -------------------------------------------------------------------

    def step(self, groups: Sequence[Dict[str, Any]], grads: Sequence[List[Any]],
             diagnostics: bool = False, extra: Optional[Dict[str, Any]] = None) -> List[Any]:
        """One step of every group: ``grads[g]`` holds one gradient per parameter of
        group ``g`` (None: not updated this step). Everything is checked before any
        array is written. Returns each group's GammaStats (with ``diagnostics``) or None.

        ``extra``: the native step's grad_scale, found_inf, rounding and seed (each group
        draws its stochastic rounding from its own seed, derived from ``seed``). With a
        true ``found_inf`` every call is checked and nothing is written, step counts
        included (torch's fused optimizers under GradScaler)."""
        if len(groups) == 1 and not extra and diagnostics is False:
            stats = self._quick(groups[0], grads[0])
            if stats is not _MISSED:
                return [stats]
        skip = False
        if extra:
            skip = bool(extra.get("found_inf"))
        if len(groups) == 1 and not skip:
            plan, calls = self._prepare(0, groups[0], grads[0], diagnostics, extra)[1:]
            if len(calls) == 1:  # the common case, without the bookkeeping of several calls
                where, call, call_grads, kwargs, hyper_names = calls[0]
                try:
                    stats = call.native.step(call_grads, **kwargs)
                except (TypeError, ValueError) as err:
                    _reraise(err, where, call.label, hyper_names)
                self._commit(0, plan, calls)
                return [stats]
            work = [(0, plan, calls)]
        else:
            work = [self._prepare(g, group, grads[g], diagnostics, extra)
                    for g, group in enumerate(groups)]
        if skip or sum(len(group_calls) for _, _, group_calls in work) > 1:
            # A single call checks everything itself before writing; several are all
            # checked before the first writes.
            for _, _, group_calls in work:
                for where, call, call_grads, kwargs, hyper_names in group_calls:
                    try:
                        call.native.step(call_grads, check_only=True, **kwargs)
                    except (TypeError, ValueError) as err:
                        _reraise(err, where, call.label, hyper_names)
        results: List[Any] = [None] * len(work)
        if skip:
            return results
        for g, plan, group_calls in work:
            for where, call, call_grads, kwargs, hyper_names in group_calls:
                try:
                    stats = call.native.step(call_grads, **kwargs)
                except (TypeError, ValueError) as err:
                    _reraise(err, where, call.label, hyper_names)
            if len(group_calls) == 1:  # with several calls, Γ of one would describe a part
                results[g] = stats
            self._commit(g, plan, group_calls)
        return results

    def _quick(self, group: Dict[str, Any], grads: List[Any]) -> Any:
        """The step of a lone group whose plan still matches, in one native call with
        nothing around it (no diagnostics, scaler or schedule): what ``_prepare``, the
        call and ``_commit`` do, without their other cases. The checks are the same
        (``_Settings.same``, ``Plan.matches``). ``_MISSED``: the long way must be taken."""
        plan = self._plans.get(id(group))
        settings = plan.quick if plan is not None else None
        if settings is None or not settings.same(group, 0):
            return _MISSED
        params, lr, frontend = group["params"], group["lr"], self.frontend
        if len(grads) != len(params) or frontend.callable_lr and callable(lr):
            return _MISSED
        seen = _EditCounting.edits
        fitted = plan.fits(grads)
        if not plan.matches(frontend, 0, params, grads, settings.names, fitted):
            return _MISSED
        arrays = grads if fitted else frontend.grad_arrays(0, plan, grads)
        call = plan.calls[0]
        try:
            stats = call.native.step(arrays, step=call.done + 1, lr=lr, **settings.options)
        except (TypeError, ValueError) as err:
            _reraise(err, settings.where, call.label, None)
        call.done += 1
        frontend.write_steps(call.counters, plan.counter_key, call.done)
        # Edits counted during the call (a user's __float__, say): look at everything next time.
        plan.edits = seen if _EditCounting.edits == seen else -1
        _keep(self._last_lr, id(group), (group, lr))
        return stats

    def _prepare(self, g: int, group: Dict[str, Any], grads: List[Any], diagnostics: bool,
                 extra: Optional[Dict[str, Any]] = None) -> Tuple[int, Plan, List[Tuple[Any, ...]]]:
        """Everything about group ``g``'s step short of writing: its plan (cached, or
        gathered afresh) and the arguments of each native call."""
        key = id(group)
        options, where, names = self._checked_options(g, group)
        params = group["params"]
        if len(grads) != len(params):
            raise ValueError(f"{where} has {len(params)} parameters but {len(grads)} gradients were given")
        seen = _EditCounting.edits  # before any user code (a callable lr) runs in this step
        plan = self._plans.get(key)
        fitted = plan is not None and plan.fits(grads)
        if plan is None or not plan.matches(self.frontend, g, params, grads, names, fitted):
            self._plans.pop(key, None)
            plan = self._build(g, group, params, list(map(is_not, grads, repeat(None))), names)
            fitted = False
        plan.edits = seen
        if not plan.calls:
            return g, plan, []
        if not plan.all_active:
            grads = list(compress(grads, plan.active))
        arrays = grads if fitted else self.frontend.grad_arrays(g, plan, grads)
        lr = group["lr"]
        if extra:
            options = dict(options, **extra)
            if "seed" in extra:  # each group and call its own stochastic-rounding stream
                options["seed"] = _stream_seed(extra["seed"], g, 0)
        if len(plan.calls) == 1 and not (diagnostics is not False or self.frontend.callable_lr and callable(lr)):
            call = plan.calls[0]
            kwargs = dict(options, step=call.done + 1, lr=lr)
            return g, plan, [(where, call, arrays, kwargs, None)]
        calls: List[Tuple[Any, ...]] = []
        scheduled = self.frontend.callable_lr and callable(lr)
        for call in plan.calls:
            step = call.done + 1
            hyper_names = None
            if scheduled:  # evaluated here: a bad value raises before anything is written
                value = lr(step)
                prev = lr(step - 1) if diagnostics and step > 1 else None
                hyper_names = {"lr": f"lr({step})", "prev_lr": f"lr({step - 1})"}
            else:
                value = lr
                last = self._last_lr.get(key) if diagnostics else None
                prev = last[1] if last is not None else None
            kwargs = dict(options, step=step, lr=value)
            if extra and "seed" in extra:
                kwargs["seed"] = _stream_seed(extra["seed"], g, len(calls))
            if diagnostics is not False:  # the extension checks the flag
                kwargs.update(prev_lr=prev, diagnostics=diagnostics)
            call_grads = arrays if len(plan.calls) == 1 else [arrays[i] for i in call.positions]
            calls.append((where, call, call_grads, kwargs, hyper_names))
        return g, plan, calls

    def _label(self, g: int, members: List[int], positions: List[int]) -> Label:
        """The user's names for the arguments of one native call, by position in it."""
        name = self.frontend.name
        return lambda entry, j: name(g, members[positions[j]], entry)

    def _build(self, g: int, group: Dict[str, Any], params: List[Any], active: List[bool],
               names: Tuple[str, ...]) -> Plan:
        """Gather a group's step from scratch, checking what Python must check. New
        state is prepared here and stored only once the step has run."""
        frontend, family = self.frontend, self.family
        plan = Plan(group, g)
        plan.names, plan.params, plan.active = names, list(params), active
        plan.all_active = all(active)
        plan.members = [k for k, has_grad in enumerate(active) if has_grad]
        tracked = names + ("step",) if frontend.step_is_object else names
        plan.entries = {entry: [] for entry in tracked}
        current = frontend.states(g, params)
        by_count: Dict[Tuple[int, Any], List[int]] = {}  # (count, frontend.call_key) -> positions
        for position, k in enumerate(plan.members):
            param = params[k]
            state = current[k]
            additions: Dict[str, Any] = {}
            insert = None
            if state is None:  # none yet: start as at the first step
                state, insert = frontend.new_state_dict(), (g, k, param)
                additions = self.new_state(g, k, param, group)
            elif not isinstance(state, dict):
                raise TypeError(f"the state of {frontend.param_name(g, k)} must be a dict, got "
                                f"{type(state).__name__}")
            elif not state:  # emptied (state.clear(), or torch's defaultdict): start afresh
                additions = self.new_state(g, k, param, group)
            else:
                self._complete(g, k, param, state, names, group, additions)
            view = dict(state, **additions)
            count, replacement, container, key = frontend.step_counter(
                frontend.state_name(g, k, "step"), view["step"], state)
            if replacement is not None:
                additions["step"] = view["step"] = replacement
            plan.counters.append(container)
            plan.counter_key = key
            plan.states.append(state)
            if additions or insert:
                plan.pending.append((state, additions, insert))
            for entry in tracked:
                plan.entries[entry].append(view[entry])
            plan.shapes.append(param.shape)
            by_count.setdefault((count, frontend.call_key(param)), []).append(position)
        where = frontend.group_name(g)
        for (count, _), positions in by_count.items():
            members = [plan.members[i] for i in positions]
            columns = [[frontend.array(frontend.param_name(g, k), params[k]) for k in members]]
            for name in names:
                columns.append([frontend.array(frontend.state_name(g, k, name), plan.entries[name][i])
                                for k, i in zip(members, positions)])
            copies = None
            if names[:1] == (MASTER,):  # the masters are stepped; the params are their copy
                copies = columns.pop(0)
            call = _Call(positions, count, self._label(g, plan.members, positions),
                         [plan.counters[i] for i in positions])
            call.native = _native(where, call.label, None, family.native, columns, copies)  # checks them all
            plan.calls.append(call)
        for entry, objects in plan.entries.items():
            plan.watch_states += plan.states
            plan.watch_keys += [entry] * len(objects)
            plan.watch_objects += objects
        if frontend.movable:  # every object is known to be a usable array by now
            plan.pointer_objects = list(params) + plan.watch_objects
            plan.pointers = frontend.pointers(plan.pointer_objects)
        plan.tracked = not (frontend.movable or frontend.step_is_object) and all(
            type(state) is TrackedState for state in plan.states)
        plan.source = frontend.state_source(g)
        plan.grad_check = frontend.grad_check(plan.shapes)
        return plan

    def _complete(self, g: int, k: int, param: Any, state: Dict[str, Any], names: Tuple[str, ...],
                  group: Dict[str, Any], additions: Dict[str, Any]) -> None:
        """Check an existing state against what Python must know; a buffer that the
        settings now ask for (amsgrad switched on) starts at its initial value, as in torch."""
        frontend, family = self.frontend, self.family
        missing = [entry for entry in ("step",) + family.required if entry not in state]
        if missing:
            raise ValueError(f"the state of {frontend.param_name(g, k)} lacks {missing}; "
                             "clear it (the parameter starts afresh) or restore the entries")
        where = frontend.group_name(g)
        for name in names:
            if name not in state:
                additions[name] = (frontend.new_master(param) if name == MASTER else
                                   frontend.new_buffer(param, family.fill(where, group, name)))
            else:
                shape = getattr(state[name], "shape", None)
                if shape is not None and tuple(shape) != tuple(param.shape):
                    raise ValueError(f"{frontend.state_name(g, k, name)} has shape {tuple(shape)} but "
                                     f"its parameter has shape {tuple(param.shape)}")

    def _commit(self, g: int, plan: Plan, calls: List[Tuple[Any, ...]]) -> None:
        """After the step ran: store new state, write the step counts, keep the plan."""
        # plan.edits is the count the plan was checked against. Edits counted since then
        # were made while this step ran (by a callable lr, or by new state another group
        # stored): the next step looks at every state again.
        ours = _EditCounting.edits == plan.edits
        if plan.pending:
            for state, additions, insert in plan.pending:
                state.update(additions)
                if insert is not None:
                    self.frontend.put_state(*insert, state)
            plan.pending = []
        if calls:
            for call in plan.calls:
                call.done += 1
                self.frontend.write_steps(call.counters, plan.counter_key, call.done)
            _keep(self._last_lr, id(plan.group), (plan.group, calls[-1][3]["lr"]))
        # The new state that went in is counted too: those edits are ours.
        plan.edits = _EditCounting.edits if ours else -1
        plan.quick = None
        if g == 0 and len(plan.calls) == 1 and plan.all_active:
            settings = self._checked.get(id(plan.group))
            if settings is not None and settings.options is not None:
                plan.quick = settings
        _keep(self._plans, id(plan.group), plan)


_MISSED = object()  # Engine._quick: the short way does not apply

#: How many groups an engine keeps plans and checked settings for: the groups of the
#: step and those of earlier steps (an engine that steps one group at a time shows each
#: group alone), up to a limit, so that groups a caller dropped are let go.
_KEPT_GROUPS = 64


def _keep(store: Dict[int, Any], key: int, value: Any) -> None:
    """``store[key] = value``, first dropping the oldest entry of a full store."""
    if key not in store and len(store) >= _KEPT_GROUPS:
        del store[next(iter(store))]
    store[key] = value
