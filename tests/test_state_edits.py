"""Optimizer state is the user's to change, between any two steps.

torch.optim reads its state dict at every step: a replaced buffer, a cleared state, an
edited step count, a new gradient tensor, a parameter whose storage was replaced, a
changed group setting or a loaded state dict all take effect at the next step. Both
adamcore front-ends must do the same, with torch.optim's fused optimizer's bits: every
case below makes the same edit to adamcore's optimizer and to torch's (or, for the
NumPy classes, to a torch twin) and compares parameters and state bit for bit. Tensor
sizes are multiples of 16, so torch's scalar tail does not enter.

The second half checks that a step is checked completely before anything is written,
with one set of rules for both front-ends.
"""

from __future__ import annotations

import collections
import copy

import numpy as np
import pytest

import adamcore
import adamcore._engine as _engine
from _util import assert_same_bits, f32

torch = pytest.importorskip("torch")
import adamcore.torch as act  # noqa: E402  (after the skip: this module needs torch)

SHAPES = [(16, 8), (48,), (4, 16)]
STEPS = 7


def _initial(seed=0):
    rng = np.random.default_rng(seed)
    return [f32(rng.standard_normal(s)) for s in SHAPES]


def _gradients(seed=1, steps=STEPS):
    rng = np.random.default_rng(seed)
    return [[f32(rng.standard_normal(s) * np.exp(rng.uniform(-2, 1))) for s in SHAPES]
            for _ in range(steps)]


def _tensors(arrays):
    return [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.from_numpy(g.copy())


# case: (adamcore.torch class, torch.optim class, options for both)
TORCH_CASES = {
    "AdamW": (act.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "Adam-amsgrad": (act.Adam, torch.optim.Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.01}),
    "Adagrad": (act.Adagrad, torch.optim.Adagrad, {"lr": 5e-2, "lr_decay": 0.05, "weight_decay": 0.01,
                                                   "initial_accumulator_value": 0.1}),
}


def _torch_twins(case, groups=None):
    """(adamcore.torch optimizer, its params), (torch fused optimizer, its params)."""
    ours_cls, torch_cls, options = TORCH_CASES[case]
    initial = _initial()
    pairs = []
    for make in (lambda ps: ours_cls(ps, **options), lambda ps: torch_cls(ps, fused=True, **options)):
        params = _tensors(initial)
        spec = params if groups is None else [dict(g, params=[params[k] for k in g["params"]]) for g in groups]
        pairs.append((make(spec), params))
    return pairs


def _assert_torch_same(ours, ref, what):
    (opt, params), (ref_opt, ref_params) = ours, ref
    for k, (a, b) in enumerate(zip(params, ref_params)):
        assert_same_bits(a.detach().numpy(), b.detach().numpy(), f"{what}: parameter {k}")
    mine, theirs = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert sorted(mine) == sorted(theirs), f"{what}: parameters with state"
    for index in theirs:
        assert sorted(mine[index]) == sorted(theirs[index]), f"{what}: state entries of {index}"
        assert float(mine[index]["step"]) == float(theirs[index]["step"]), f"{what}: step of {index}"
        for name, value in theirs[index].items():
            if name != "step":
                assert_same_bits(mine[index][name].numpy(), value.numpy(), f"{what}: {name} of {index}")


def _run_torch(case, edits, grads=None, groups=None):
    """Step both twins; before step t apply edits[t](optimizer, params) to each."""
    ours, ref = _torch_twins(case, groups)
    for t, step_grads in enumerate(grads or _gradients()):
        for opt, params in (ours, ref):
            if t in edits:
                edits[t](opt, params)
            _set_grads(params, step_grads)
            opt.step()
        _assert_torch_same(ours, ref, f"{case}, after step {t + 1}")
    return ours, ref


# ------------------------------------------------------------- adamcore.torch vs torch


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_replaced_state_buffer_is_used(case):
    buffer = "sum" if case == "Adagrad" else "exp_avg_sq"

    def replace(opt, params):
        opt.state[params[1]][buffer] = torch.full_like(params[1], 0.25)

    _run_torch(case, {3: replace})


@pytest.mark.parametrize("case", ["AdamW", "Adam-amsgrad"])
def test_torch_cleared_state_starts_afresh(case):
    (opt, _), _ = _run_torch(case, {4: lambda opt, params: opt.state.clear()})
    saved = opt.state_dict()["state"]
    assert sorted(saved) == [0, 1, 2] and all(float(s["step"]) == STEPS - 4 for s in saved.values())


def test_torch_adagrad_cleared_state_restarts_from_its_initial_state():
    """torch's Adagrad creates its state at construction only (a cleared state makes it
    raise KeyError); adamcore's starts the parameter afresh, as a new optimizer would."""
    ours_cls, _, options = TORCH_CASES["Adagrad"]
    grads = _gradients()
    params, fresh_params = _tensors(_initial()), _tensors(_initial())
    opt, fresh = ours_cls(params, **options), ours_cls(fresh_params, **options)
    for g in grads[:3]:
        _set_grads(params, g)
        opt.step()
    opt.state.clear()
    with torch.no_grad():
        for p, q in zip(params, fresh_params):
            q.copy_(p)
    for g in grads[3:]:
        for ps, o in ((params, opt), (fresh_params, fresh)):
            _set_grads(ps, g)
            o.step()
    _assert_torch_same((opt, params), (fresh, fresh_params), "cleared AdaGrad vs fresh")


@pytest.mark.parametrize("how", ["assign", "del", "pop", "update", "setdefault", "new mapping"])
def test_torch_edits_of_the_state_mapping_itself_are_honoured(how):
    """adamcore.torch's optimizer.state counts its own edits (a step that sees none takes
    the state dicts it last saw instead of looking them up): each way of putting a state
    dict in or taking one out, or a whole new mapping, takes effect at the next step."""
    def edit(opt, params):
        p = params[1]
        fresh = dict(opt.state[p], exp_avg=torch.full_like(p, 0.25), step=torch.tensor(3.0))
        if how == "assign":
            opt.state[p] = fresh
        elif how == "update":
            opt.state.update({p: fresh})
        elif how == "new mapping":
            state = collections.defaultdict(dict, opt.state)
            state[p] = fresh
            opt.state = state
        else:
            if how == "del":
                del opt.state[p]
            else:
                opt.state.pop(p)
            if how == "setdefault":
                opt.state.setdefault(p, fresh)

    _run_torch("AdamW", {3: edit, 5: edit})


@pytest.mark.parametrize("edit", ["reassigned", "zeroed in place", "set in place"])
@pytest.mark.parametrize("case", ["AdamW", "Adagrad"])
def test_torch_step_count_edits_are_honoured(case, edit):
    def change(opt, params):
        state = opt.state[params[0]]
        if edit == "reassigned":
            state["step"] = torch.tensor(1.0)
        elif edit == "zeroed in place":
            state["step"].zero_()
        else:
            state["step"].fill_(40.0)

    _run_torch(case, {3: change})


def test_torch_new_gradient_tensor_and_reused_gradients():
    """Gradients kept from step to step (zero_grad(set_to_none=False)), then one replaced."""
    ours, ref = _torch_twins("AdamW")
    for t, step_grads in enumerate(_gradients()):
        for opt, params in (ours, ref):
            for p, g in zip(params, step_grads):
                if p.grad is None or t == 4:
                    p.grad = torch.from_numpy(g.copy())
                else:
                    p.grad.copy_(torch.from_numpy(g))
            opt.step()
        _assert_torch_same(ours, ref, f"after step {t + 1}")


def test_torch_same_gradient_tensors_with_memory_replaced_or_reshaped():
    """The same gradient tensors at every step (as DeepSpeed hands them over), so their
    views are kept: an in-place copy, memory replaced under the same tensor
    (``p.grad.data = x``) and a gradient whose layout changed under the same tensor are
    all seen (the last refused, as adamcore refuses such layouts, not misread)."""
    ours, ref = _torch_twins("AdamW")
    for t, step_grads in enumerate(_gradients(steps=9)):
        for opt, params in (ours, ref):
            for k, (p, g) in enumerate(zip(params, step_grads)):
                if p.grad is None:
                    p.grad = torch.from_numpy(g.copy())
                elif (t, k) in ((4, 1), (6, 0)):
                    p.grad.data = torch.from_numpy(g.copy())
                elif (t, k) == (7, 0):  # the same values, in a transposed layout
                    p.grad.data = torch.from_numpy(np.ascontiguousarray(g.T)).t()
                else:
                    p.grad.copy_(torch.from_numpy(g))
            if t == 7:
                if isinstance(opt, act.AdamW):  # refused, as any such layout is, not misread
                    before = params[0].detach().clone()
                    with pytest.raises(ValueError, match="must be C-contiguous"):
                        opt.step()
                    assert torch.equal(params[0].detach(), before)
                params[0].grad = params[0].grad.contiguous()
            opt.step()
        _assert_torch_same(ours, ref, f"after step {t + 1}")


def test_torch_new_gradients_at_every_step_are_not_kept_alive():
    """A loop whose gradients are new at every step (zero_grad's set_to_none) must not
    find last step's gradients still alive once it dropped them."""
    import gc
    import weakref

    params = _tensors(_initial())
    opt = act.AdamW(params, lr=1e-2)
    for grads in _gradients():
        _set_grads(params, grads)
        opt.step()
        dropped = [weakref.ref(p.grad) for p in params]
        opt.zero_grad(set_to_none=True)
        gc.collect()
        assert all(r() is None for r in dropped), "a dropped gradient is still alive"


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_parameter_storage_replaced(case):
    replacement = [f32(np.linspace(-1, 1, np.prod(s)).reshape(s)) for s in SHAPES]

    def move(opt, params):
        with torch.no_grad():
            params[2].data = torch.from_numpy(replacement[2].copy())  # new storage, same Parameter

    _run_torch(case, {3: move})


def test_torch_amsgrad_switched_on_off_and_on_again():
    def amsgrad(on):
        def edit(opt, params):
            opt.param_groups[0]["amsgrad"] = on
            if on and isinstance(opt, torch.optim.Adam) and not isinstance(opt, act.Adam):
                for p in params:  # torch needs the buffer; adamcore creates it (zeros, as here)
                    opt.state[p].setdefault("max_exp_avg_sq", torch.zeros_like(p))
        return edit

    _run_torch("AdamW", {2: amsgrad(True), 4: amsgrad(False), 5: amsgrad(True)})


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_hyperparameters_edited(case):
    def edit(opt, params):
        group = opt.param_groups[0]
        group.update(lr=3e-3, eps=1e-6, weight_decay=0.2, maximize=True)
        if case != "Adagrad":
            group["betas"] = (0.5, 0.9)
        else:
            group["lr_decay"] = 0.5

    _run_torch(case, {3: edit})


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_state_dict_loaded_between_steps(case):
    saved = {}

    def save(opt, params):
        saved[id(opt)] = copy.deepcopy(opt.state_dict())

    def load(opt, params):
        opt.load_state_dict(saved[id(opt)])

    _run_torch(case, {2: save, 5: load})


def test_torch_parameters_gain_and_lose_gradients():
    grads = _gradients()
    for t, k in ((1, 0), (2, 0), (2, 2), (4, 1), (5, 0), (5, 1), (5, 2)):
        grads[t][k] = None
    _run_torch("Adam-amsgrad", {}, grads)
    _run_torch("Adagrad", {}, grads)


def test_torch_edits_in_one_of_two_groups():
    groups = [{"params": [0, 2]}, {"params": [1], "lr": 3e-3}]

    def edit(opt, params):
        opt.state[params[1]]["exp_avg"] = torch.full_like(params[1], -0.5)
        opt.param_groups[1]["weight_decay"] = 0.0

    _run_torch("AdamW", {3: edit, 5: lambda opt, params: opt.state.pop(params[2])}, groups=groups)


def _one_group_at_a_time(opt):
    """Step each group alone, as DeepSpeed's ZeRO optimizer steps its client optimizer
    (``_optimizer_step``: ``param_groups`` replaced by a one-group list, then restored)."""
    groups = opt.param_groups
    try:
        for group in groups:
            opt.param_groups = [group]
            opt.step()
    finally:
        opt.param_groups = groups


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_groups_stepped_one_at_a_time_keep_their_plans(case, monkeypatch):
    """Each group in turn at index 0 of a one-group list: the bits are torch fused's,
    and after the first step no group's step is gathered afresh (a group's plan belongs
    to the group, not to its index in the list of the moment)."""
    builds = []
    build = _engine.Engine._build
    monkeypatch.setattr(_engine.Engine, "_build", lambda self, *a: builds.append(a[0]) or build(self, *a))
    groups = [{"params": [0, 2]}, {"params": [1], "lr": 3e-3, "weight_decay": 0.0}]
    ours, ref = _torch_twins(case, groups)
    for t, step_grads in enumerate(_gradients()):
        for opt, params in (ours, ref):
            if t == 4:  # an edit in the second group is still seen
                opt.state[params[1]]["exp_avg" if case != "Adagrad" else "sum"].fill_(0.5)
            _set_grads(params, step_grads)
            _one_group_at_a_time(opt)
        _assert_torch_same(ours, ref, f"{case}, after step {t + 1}")
        if t == 0:
            assert len(builds) == 2, builds
    assert len(builds) == 2, f"plans gathered afresh after the first step: {len(builds) - 2}"


# ------------------------------------------------------ adamcore.Optimizer vs torch


# case: (adamcore class, torch.optim class, options for both, options only torch takes)
NUMPY_CASES = {
    "AdamW": (adamcore.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "AMSGrad": (adamcore.AMSGrad, torch.optim.Adam, {"lr": 1e-2}),
    "Adagrad": (adamcore.Adagrad, torch.optim.Adagrad, {"lr": 5e-2, "lr_decay": 0.05,
                                                        "initial_accumulator_value": 0.1}),
}


class _NumpyRun:
    """adamcore's NumPy optimizer and a torch fused twin, fed the same gradients."""

    def __init__(self, case, groups=None):
        cls, torch_cls, options = NUMPY_CASES[case]
        initial = _initial()
        self.params = [a.copy() for a in initial]
        self.tensors = _tensors(initial)
        torch_options = dict(options, amsgrad=True) if case == "AMSGrad" else options

        def spec(items):
            return items if groups is None else [dict(g, params=[items[k] for k in g["params"]]) for g in groups]

        self.opt = cls(spec(self.params), **options)
        self.ref = torch_cls(spec(self.tensors), fused=True, **torch_options)
        # The NumPy optimizer numbers parameters across groups in order.
        order = list(range(len(initial))) if groups is None else [k for g in groups for k in g["params"]]
        self.index = {k: i for i, k in enumerate(order)}

    def step(self, grads):
        order = sorted(self.index, key=self.index.get)
        self.opt.step([grads[k] for k in order])
        _set_grads(self.tensors, grads)
        self.ref.step()

    def state(self, k):
        """(NumPy optimizer's state, torch's state) of parameter k."""
        return self.opt.state.get(self.index[k]), self.ref.state[self.tensors[k]]

    def assert_same(self, what):
        for k, (a, t) in enumerate(zip(self.params, self.tensors)):
            assert_same_bits(a, t.detach().numpy(), f"{what}: parameter {k}")
            mine, theirs = self.state(k)
            assert sorted(mine) == sorted(theirs), f"{what}: state entries of {k}"
            assert mine["step"] == float(theirs["step"]), f"{what}: step of {k}"
            for name, value in theirs.items():
                if name != "step":
                    assert_same_bits(mine[name], value.numpy(), f"{what}: {name} of {k}")


def _run_numpy(case, edits, grads=None, groups=None):
    run = _NumpyRun(case, groups)
    for t, step_grads in enumerate(grads or _gradients()):
        if t in edits:
            edits[t](run)
        run.step(step_grads)
        run.assert_same(f"{case}, after step {t + 1}")
    return run


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_numpy_replaced_state_array_is_used(case):
    buffer = "sum" if case == "Adagrad" else "exp_avg"

    def replace(run):
        mine, theirs = run.state(1)
        mine[buffer] = np.full(SHAPES[1], 0.25, np.float32)
        theirs[buffer] = torch.full(SHAPES[1], 0.25)

    _run_numpy(case, {3: replace})


@pytest.mark.parametrize("case", ["AdamW", "AMSGrad"])
def test_numpy_cleared_state_starts_afresh_and_is_saved(case, tmp_path):
    def clear(run):
        run.opt.state.clear()
        run.ref.state.clear()

    run = _run_numpy(case, {4: clear})
    saved = run.opt.state_dict()["state"]
    assert sorted(saved) == [0, 1, 2] and all(s["step"] == STEPS - 4 for s in saved.values())
    run.opt.save(tmp_path / "opt.npz")
    twin = type(run.opt)([p.copy() for p in run.params])
    twin.load(tmp_path / "opt.npz")
    assert all(twin.state[k]["step"] == STEPS - 4 for k in range(3))


def test_numpy_state_dicts_of_the_users_own_are_read_at_every_step():
    """The optimizer's own state dicts count their edits; a plain dict put in their place
    (or a whole new state mapping) cannot, so it is read entry by entry at every step."""
    def adopt(run):
        run.opt.state[1] = dict(run.opt.state[1])  # same arrays, in the user's own dict
        run.opt.state = dict(run.opt.state)

    def edit(run):
        mine, theirs = run.state(1)
        mine["exp_avg"] = np.full(SHAPES[1], -0.5, np.float32)
        theirs["exp_avg"] = torch.full(SHAPES[1], -0.5)
        mine["step"] = 2
        theirs["step"] = torch.tensor(2.0)

    run = _run_numpy("AdamW", {2: adopt, 4: edit})
    assert type(run.opt.state[1]) is dict


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_numpy_step_count_edit_is_honoured(case):
    def edit(run):
        mine, theirs = run.state(0)
        mine["step"] = 1
        theirs["step"] = torch.tensor(1.0)

    _run_numpy(case, {3: edit})


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_numpy_parameter_array_replaced_in_its_group(case):
    replacement = f32(np.linspace(-1, 1, 48))

    def move(run):
        run.params[1] = replacement.copy()
        run.opt.param_groups[0]["params"][1] = run.params[1]
        with torch.no_grad():
            run.tensors[1].data = torch.from_numpy(replacement.copy())

    _run_numpy(case, {3: move})


def test_numpy_amsgrad_switched_on_off_and_on_again():
    def amsgrad(on):
        def edit(run):
            run.opt.param_groups[0]["amsgrad"] = on
            run.ref.param_groups[0]["amsgrad"] = on
            for t in run.tensors:
                run.ref.state[t].setdefault("max_exp_avg_sq", torch.zeros_like(t))
        return edit

    _run_numpy("AdamW", {2: amsgrad(True), 4: amsgrad(False), 5: amsgrad(True)})


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_numpy_state_dict_loaded_between_steps(case):
    saved = {}

    def save(run):
        saved["mine"] = copy.deepcopy(run.opt.state_dict())
        saved["theirs"] = copy.deepcopy(run.ref.state_dict())

    def load(run):
        run.opt.load_state_dict(saved["mine"])
        run.ref.load_state_dict(saved["theirs"])

    _run_numpy(case, {2: save, 5: load})


def test_numpy_parameters_gain_and_lose_gradients_in_two_groups():
    grads = _gradients()
    for t, k in ((1, 0), (2, 0), (2, 2), (4, 1), (5, 0), (5, 1), (5, 2)):
        grads[t][k] = None

    def edit(run):
        run.opt.param_groups[1]["lr"] = 1e-3
        run.ref.param_groups[1]["lr"] = 1e-3

    _run_numpy("AMSGrad", {3: edit}, grads, groups=[{"params": [0, 2]}, {"params": [1], "lr": 3e-3}])


@pytest.mark.parametrize("how", ["assign", "del", "pop", "update", "ior", "setdefault"])
@pytest.mark.parametrize("case", ["AdamW", "AMSGrad"])
def test_numpy_edits_of_the_state_mapping_itself_are_honoured(case, how):
    """optimizer.state counts its own edits (a step that sees no counted edit anywhere
    does not look at the state dicts): each way of putting a state dict in or taking
    one out takes effect at the next step."""
    def edit(run):
        i, t = run.index[1], run.tensors[1]
        mine, theirs = run.state(1)
        fresh_mine = dict(mine, exp_avg=np.full(SHAPES[1], 0.25, np.float32), step=3)
        fresh_theirs = dict(theirs, exp_avg=torch.full(SHAPES[1], 0.25), step=torch.tensor(3.0))
        if how == "assign":
            run.opt.state[i] = fresh_mine
        elif how == "update":
            run.opt.state.update({i: fresh_mine})
        elif how == "ior":
            run.opt.state |= {i: fresh_mine}
        else:
            if how == "del":
                del run.opt.state[i]
            else:
                run.opt.state.pop(i)
            if how == "setdefault":
                run.opt.state.setdefault(i, fresh_mine)
        if how in ("del", "pop"):
            del run.ref.state[t]
        else:
            run.ref.state[t] = fresh_theirs

    _run_numpy(case, {3: edit, 5: edit})


def _cached_and_rebuilt(monkeypatch, run):
    """``run()`` -> arrays, once as it is and once with every step gathering its state
    and native groups afresh: the caching must not change a bit."""
    cached = run()
    with monkeypatch.context() as patch:
        patch.setattr(adamcore._engine.Plan, "matches", lambda *args, **kwargs: False)
        rebuilt = run()
    assert len(cached) == len(rebuilt)
    for k, (a, b) in enumerate(zip(cached, rebuilt)):
        assert_same_bits(a, b, f"array {k}")


def _arrays_and_state(opt, params):
    out = [np.copy(p) for p in params]
    for index in sorted(opt.state):
        for name, value in sorted(opt.state[index].items()):
            out.append(np.array([value], np.float32) if name == "step" else np.copy(value))
    return out


def test_numpy_group_whose_indices_moved_reads_the_state_at_its_new_indices(monkeypatch):
    """A parameter appended to the first group moves the second group's parameters to
    new indices in optimizer.state (which is keyed by index, and was not edited)."""
    def run():
        params = [f32(np.linspace(-1, 1, 32) * (k + 1)) for k in range(3)]
        opt = adamcore.AdamW([{"params": [params[0]]}, {"params": [params[2]], "lr": 3e-3}], lr=1e-2)
        for t, grads in enumerate(_gradients(steps=6, seed=3)):
            if t == 3:
                opt.param_groups[0]["params"].append(params[1])
            g = [f32(x.reshape(-1)[:32]) for x in grads]
            opt.step([g[0], g[1], g[2]] if t >= 3 else [g[0], g[2]])
        return _arrays_and_state(opt, params)

    _cached_and_rebuilt(monkeypatch, run)


def test_numpy_state_edited_by_a_schedule_during_a_step_is_read_at_the_next(monkeypatch):
    """An edit made while a step runs (here by a callable lr) happened after the step
    gathered its state; the next step must still see it."""
    def run():
        params = _initial()
        opt = adamcore.AdamW(params, lr=1e-2)

        def lr(step):
            if step == 3:
                opt.state[1]["exp_avg"] = np.full(SHAPES[1], 0.5, np.float32)
            return 1e-2

        opt.param_groups[0]["lr"] = lr
        for grads in _gradients():
            opt.step(grads)
        return _arrays_and_state(opt, params)

    _cached_and_rebuilt(monkeypatch, run)


# ------------------------------------------------------------- checked before written


def _snapshot(opt, params):
    arrays = [np.copy(p) for p in params]
    state = {k: {n: np.copy(v) for n, v in s.items()} for k, s in opt.state.items()}
    return arrays, state


def _assert_unchanged(opt, params, snapshot):
    arrays, state = snapshot
    for k, (p, before) in enumerate(zip(params, arrays)):
        assert_same_bits(p, before, f"parameter {k} was written")
    assert sorted(opt.state) == sorted(state)
    for k, entries in state.items():
        assert sorted(opt.state[k]) == sorted(entries)
        for name, value in entries.items():
            if name == "step":
                assert opt.state[k][name] == value, f"step of {k} changed"
            else:
                assert opt.state[k][name].tobytes() == value.tobytes(), f"{name} of {k} was written"


def test_bad_schedule_value_in_a_later_group_writes_nothing():
    params = _initial()
    opt = adamcore.Adam([{"params": params[:2]}, {"params": params[2:], "lr": lambda t: -1.0 if t == 3 else 1e-3}])
    grads = _gradients()
    opt.step(grads[0])
    opt.step(grads[1])
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: lr\(3\) must be finite and >= 0"):
        opt.step(grads[2])
    _assert_unchanged(opt, params, before)


def test_group_split_by_step_count_is_checked_before_the_first_call():
    """Parameters at different step counts take one native call each; a bad value for
    the second call must stop the first one too."""
    params = _initial()
    opt = adamcore.AdamW(params, lr=lambda t: -1.0 if t == 2 else 1e-3)
    grads = _gradients()
    opt.step([grads[0][0], None, grads[0][2]])  # parameter 1 falls one step behind
    opt.param_groups[0]["lr"] = lambda t: -1.0 if t == 1 else 1e-3
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr\(1\) must be finite and >= 0"):
        opt.step(grads[1])  # steps 2 (parameters 0, 2) and 1 (parameter 1)
    _assert_unchanged(opt, params, before)


def test_torch_bad_setting_in_a_later_group_writes_nothing():
    (opt, params), _ = _torch_twins("AdamW", groups=[{"params": [0, 1]}, {"params": [2]}])
    _set_grads(params, _gradients()[0])
    opt.param_groups[1]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: beta2 \(betas\[1\]\) must be in \[0, 1\)"):
        opt.step()
    assert not opt.state[params[0]] and all(
        torch.equal(p.detach(), torch.from_numpy(a)) for p, a in zip(params, _initial()))


@pytest.mark.parametrize("grads_of", [lambda g, h: [g, g, h], lambda g, h: [g, g, None]],
                         ids=["all-gradients", "one-skipped"])
def test_one_gradient_array_may_serve_two_parameters(grads_of):
    """Gradients are only read: sharing one is allowed, whichever path the step takes."""
    params = [f32(np.full(48, 0.5)), f32(np.full(48, -0.5)), f32(np.zeros(48))]
    mirror = [p.copy() for p in params]
    opt = adamcore.AdamW(params, lr=1e-2)
    g, h = f32(np.linspace(-1, 1, 48)), f32(np.ones(48))
    grads = grads_of(g, h)
    opt.step(grads)
    for k, grad in enumerate(grads):
        if grad is not None:
            adamcore.adamw_step(mirror[k], grad.copy(), np.zeros(48, np.float32), np.zeros(48, np.float32),
                                step=1, lr=1e-2)
    for k, (a, b) in enumerate(zip(params, mirror)):
        assert_same_bits(a, b, f"parameter {k}")


def test_replaced_state_array_is_checked_by_the_extension():
    params = _initial()
    opt = adamcore.AdamW(params)
    grads = _gradients()
    opt.step(grads[0])
    opt.state[2]["exp_avg"] = np.zeros(SHAPES[2], np.float64)
    before = _snapshot(opt, params)
    with pytest.raises(TypeError, match=r"state\[2\]\['exp_avg'\] must have dtype float32, got float64"):
        opt.step(grads[1])
    _assert_unchanged(opt, params, before)
    opt.state[2]["exp_avg"] = opt.state[2]["exp_avg_sq"]  # one array for two buffers
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"state\[2\]\['exp_avg(_sq)?'\] and state\[2\]\['exp_avg(_sq)?'\] "
                                         "are the same memory"):
        opt.step(grads[1])
    _assert_unchanged(opt, params, before)


def test_torch_replaced_state_tensor_is_checked_by_the_extension():
    (opt, params), _ = _torch_twins("AdamW")
    _set_grads(params, _gradients()[0])
    opt.step()
    opt.state[params[1]]["exp_avg_sq"] = torch.zeros(SHAPES[1], dtype=torch.float64)
    with pytest.raises(TypeError, match=r"state\[param_groups\[0\]\['params'\]\[1\]\]\['exp_avg_sq'\] "
                                        r"must have dtype float32, got float64"):
        opt.step()
    assert all(float(opt.state[p]["step"]) == 1 for p in params)


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_flags_are_bools_in_both_front_ends(value):
    """One rule, the extension's: flags are bool or numpy.bool_."""
    params = _initial()
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        adamcore.Adam(params, amsgrad=value)
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        act.Adam(_tensors(params), amsgrad=value)
    opt = adamcore.Adam(params, amsgrad=np.True_)
    opt.step(_gradients()[0])
    opt.param_groups[0]["maximize"] = value
    before = _snapshot(opt, params)
    with pytest.raises(TypeError, match=r"param_groups\[0\]: maximize must be a bool"):
        opt.step(_gradients()[1])
    _assert_unchanged(opt, params, before)
