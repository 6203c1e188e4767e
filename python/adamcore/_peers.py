"""Run a real peer (or adamcore, or an emulated convention) over a generated case.

A trajectory is a list of float32 state dicts, one per step (the state after that step),
with the conventions' keys. Peers are optional: each runner imports its peer lazily and
raises ImportError when it is not installed.
"""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from adamcore import conventions

F32 = np.float32
State = Dict[str, np.ndarray]

# Implementation names: real peers, adamcore itself, and "emulate:<convention>".
PEERS = ("adamcore", "torch-fused", "torch-foreach", "torch-forloop", "deepspeed", "optax",
         "keras")
OPTIMIZERS = ("adam", "adamw", "amsgrad", "adagrad")

# The convention each real peer follows (torch fused's tail needs its vector width).
PEER_CONVENTION = {"adamcore": "torch-fused", "torch-fused": "torch-fused",
                   "torch-foreach": "torch-foreach", "torch-forloop": "torch-foreach",
                   "deepspeed": "deepspeed", "optax": "optax", "keras": "keras"}


def make_case(size: int, steps: int, seed: int = 0, scale: float = 1.0):
    """A parameter vector and one gradient per step, float32, from ``seed``."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size).astype(F32)
    grads = [(rng.standard_normal(size) * scale).astype(F32) for _ in range(steps)]
    return param, grads


def default_hyper(optimizer: str, impl: str = "") -> dict:
    if optimizer == "adagrad":
        return {"lr": 1e-2, "eps": 1e-10}
    return {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
            "weight_decay": 1e-2 if optimizer == "adamw" else 0.0}


def torch_vector_width() -> int:
    """Float32 lanes of torch's fused CPU kernel on this machine (its tail is n % width)."""
    import torch
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def deepspeed_vector_width() -> int:
    """Float32 lanes of DeepSpeed's CPU ops. DeepSpeed (a peer, not adamcore) JIT-builds them
    for the host CPU, so they use its widest vectors (AVX-512: 16, else 8)."""
    return torch_vector_width()


def torch_sqrt(x: np.ndarray) -> np.ndarray:
    """torch.sqrt on a CPU tensor (MKL's vsSqrt on x86): the torch-foreach peer's square root."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(x, dtype=F32)).sqrt().numpy()


def _adam_kw(optimizer: str, hyper: dict) -> dict:
    return dict(lr=hyper["lr"], beta1=hyper["beta1"], beta2=hyper["beta2"], eps=hyper["eps"],
                weight_decay=hyper.get("weight_decay", 0.0), decoupled=optimizer == "adamw",
                amsgrad=optimizer == "amsgrad")


def emulate(convention: str, optimizer: str, param, grads, hyper: dict,
            tail_width=None, initial_accumulator_value=None, sqrt=None) -> List[State]:
    """The trajectory of one convention's emulation (``sqrt``: see conventions.adam_step)."""
    out = []
    if optimizer == "adagrad":
        init = conventions.ADAGRAD_INITIAL.get(convention, 0.0)
        if initial_accumulator_value is not None:
            init = initial_accumulator_value
        state = conventions.init_adagrad_state(param, init)
        for t, g in enumerate(grads, 1):
            state = conventions.adagrad_step(convention, state, g, step=t, lr=hyper["lr"],
                                             eps=hyper["eps"], tail_width=tail_width, sqrt=sqrt)
            out.append(state)
        return out
    state = conventions.init_adam_state(param, amsgrad=optimizer == "amsgrad")
    for t, g in enumerate(grads, 1):
        state = conventions.adam_step(convention, state, g, step=t, tail_width=tail_width,
                                      sqrt=sqrt, **_adam_kw(optimizer, hyper))
        out.append(state)
    return out


def _adamcore(optimizer, param, grads, hyper):
    import adamcore
    if optimizer == "adagrad":
        p, s = param.copy(), np.zeros_like(param)
        out = []
        for t, g in enumerate(grads, 1):
            adamcore.adagrad_step(p, g.copy(), s, step=t, lr=hyper["lr"], eps=hyper["eps"])
            out.append({"param": p.copy(), "state_sum": s.copy()})
        return out
    kw = _adam_kw(optimizer, hyper)
    decoupled = kw.pop("decoupled")
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    vmax = np.zeros_like(param) if kw["amsgrad"] else None
    fn = adamcore.adamw_step if decoupled else adamcore.adam_step
    out = []
    for t, g in enumerate(grads, 1):
        fn(p, g.copy(), m, v, step=t, max_exp_avg_sq=vmax, **kw)
        st = {"param": p.copy(), "exp_avg": m.copy(), "exp_avg_sq": v.copy()}
        if vmax is not None:
            st["max_exp_avg_sq"] = vmax.copy()
        out.append(st)
    return out


def _torch_optimizer_trajectory(opt, p, grads, names) -> List[State]:
    """Step a torch.optim-style optimizer over one parameter; ``names`` maps state keys to
    the optimizer's state entries (None: the parameter itself)."""
    import torch
    out = []
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        st = opt.state[p]
        out.append({k: (p.detach() if n is None else st[n]).numpy().copy()
                    for k, n in names.items()})
    return out


def _torch(optimizer, param, grads, hyper, mode):
    import torch
    p = torch.nn.Parameter(torch.from_numpy(param.copy()))
    flags = {"fused": mode == "fused", "foreach": mode == "foreach"}
    if optimizer == "adagrad":
        opt = torch.optim.Adagrad([p], lr=hyper["lr"], eps=hyper["eps"], **flags)
        names = {"param": None, "state_sum": "sum"}
    else:
        cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
        opt = cls([p], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
                  weight_decay=hyper.get("weight_decay", 0.0), amsgrad=optimizer == "amsgrad",
                  **flags)
        names = {"param": None, "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
        if optimizer == "amsgrad":
            names["max_exp_avg_sq"] = "max_exp_avg_sq"
    return _torch_optimizer_trajectory(opt, p, grads, names)


def _deepspeed(optimizer, param, grads, hyper):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    p = torch.nn.Parameter(torch.from_numpy(param.copy()))
    if optimizer == "adagrad":
        from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
        opt = DeepSpeedCPUAdagrad([p], lr=hyper["lr"], eps=hyper["eps"])
        names = {"param": None, "state_sum": "exp_avg_sq"}
    else:
        if optimizer == "amsgrad":
            raise ValueError("deepspeed: DeepSpeedCPUAdam has no amsgrad")
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        opt = DeepSpeedCPUAdam([p], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]),
                               eps=hyper["eps"], weight_decay=hyper.get("weight_decay", 0.0),
                               adamw_mode=optimizer == "adamw")
        names = {"param": None, "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
    return _torch_optimizer_trajectory(opt, p, grads, names)


def _optax(optimizer, param, grads, hyper):
    import jax
    import jax.numpy as jnp
    import optax
    if optimizer == "adagrad":
        tx = optax.adagrad(hyper["lr"], eps=hyper["eps"])
    elif optimizer == "adamw":
        tx = optax.adamw(hyper["lr"], b1=hyper["beta1"], b2=hyper["beta2"], eps=hyper["eps"],
                         weight_decay=hyper["weight_decay"])
    elif optimizer == "amsgrad":
        tx = optax.amsgrad(hyper["lr"], b1=hyper["beta1"], b2=hyper["beta2"], eps=hyper["eps"])
    else:
        tx = optax.adam(hyper["lr"], b1=hyper["beta1"], b2=hyper["beta2"], eps=hyper["eps"])

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = jnp.asarray(param)
    s = tx.init(p)
    out = []
    for g in grads:
        p, s = step(p, s, jnp.asarray(g))
        inner = s[0]
        st = {"param": np.asarray(p).copy()}
        if optimizer == "adagrad":
            st["state_sum"] = np.asarray(inner.sum_of_squares).copy()
        else:
            st["exp_avg"] = np.asarray(inner.mu).copy()
            st["exp_avg_sq"] = np.asarray(inner.nu).copy()
            if optimizer == "amsgrad":
                st["max_exp_avg_sq"] = np.asarray(inner.nu_max).copy()
        out.append(st)
    return out


def _keras(optimizer, param, grads, hyper):
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        raise ImportError("keras: the keras convention is the jax backend's (KERAS_BACKEND=jax)")
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    var = keras.Variable(param.copy(), dtype="float32")
    if optimizer == "adagrad":
        opt = keras.optimizers.Adagrad(learning_rate=hyper["lr"], epsilon=hyper["eps"])
    elif optimizer == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=hyper["lr"], beta_1=hyper["beta1"],
                                     beta_2=hyper["beta2"], epsilon=hyper["eps"],
                                     weight_decay=hyper["weight_decay"])
    else:
        opt = keras.optimizers.Adam(learning_rate=hyper["lr"], beta_1=hyper["beta1"],
                                    beta_2=hyper["beta2"], epsilon=hyper["eps"],
                                    amsgrad=optimizer == "amsgrad")
    opt.build([var])
    out = []
    for g in grads:
        opt.apply_gradients([(g.copy(), var)])
        st = {"param": np.asarray(var.value).copy()}
        if optimizer == "adagrad":
            st["state_sum"] = np.asarray(opt._accumulators[0].value).copy()
        else:
            st["exp_avg"] = np.asarray(opt._momentums[0].value).copy()
            st["exp_avg_sq"] = np.asarray(opt._velocities[0].value).copy()
            if optimizer == "amsgrad":
                st["max_exp_avg_sq"] = np.asarray(opt._velocity_hats[0].value).copy()
        out.append(st)
    return out


def run(impl: str, optimizer: str, param, grads, hyper: dict) -> List[State]:
    """The trajectory of ``impl``: a peer name, "adamcore", or "emulate:<convention>[@W]"."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if impl.startswith("emulate:"):
        name, _, width = impl[len("emulate:"):].partition("@")
        return emulate(name, optimizer, param, grads, hyper,
                       tail_width=int(width) if width else None)
    if impl == "adamcore":
        return _adamcore(optimizer, param, grads, hyper)
    if impl.startswith("torch-"):
        mode = impl[len("torch-"):]
        if mode not in ("fused", "foreach", "forloop"):
            raise ValueError(f"impl: unknown torch path {impl!r}")
        return _torch(optimizer, param, grads, hyper, mode)
    runners = {"deepspeed": _deepspeed, "optax": _optax, "keras": _keras}
    if impl not in runners:
        raise ValueError(f"impl: {impl!r} is not one of {', '.join(PEERS)} or emulate:<convention>")
    return runners[impl](optimizer, param, grads, hyper)


# ---------------------------------------------------------------- oracle step functions

def _unsupported(message: str):
    from .oracle import Unsupported
    return Unsupported(message)


def _adam_flags(case):
    """The conventions' keyword arguments of an oracle case (Adam family)."""
    h = case.hyper
    return dict(beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                weight_decay=h["weight_decay"], decoupled=case.optimizer == "adamw",
                amsgrad=bool(h.get("amsgrad", False)), maximize=bool(h.get("maximize", False)),
                bias_correction=bool(h.get("bias_correction", True)))


def _check_float32(case, peer: str) -> None:
    lay = case.layout
    if any(lay[k] != "float32" for k in ("param", "grad", "state")) or lay.get("param_copy") \
            or case.has_options:
        raise _unsupported(f"{peer}: float32 buffers without AMP options only")


def oracle_step_fn(name: str):
    """An :mod:`adamcore.oracle` step function (in place) for a peer or an emulation."""
    if name.startswith("emulate:"):
        convention, _, width = name[len("emulate:"):].partition("@")
        known = conventions.ADAM_CONVENTIONS
        if convention not in known:
            raise ValueError(f"unknown convention {convention!r}; choose from {', '.join(known)}")
        return _emulation_step_fn(convention, int(width) if width else None)
    makers = {"optax": _optax_step_fn, "keras": _keras_step_fn, "deepspeed": _deepspeed_step_fn}
    return makers[name]()


def _emulation_step_fn(convention: str, width):
    def step_fn(case, state, grad, step, lr):
        _check_float32(case, convention)
        tail = width if width is not None else (
            case.tail_width if case.convention == convention else None)
        try:
            if case.optimizer == "adagrad":
                h = case.hyper
                new = conventions.adagrad_step(convention, state, grad, step=step, lr=lr,
                                               lr_decay=h["lr_decay"], eps=h["eps"],
                                               weight_decay=h["weight_decay"],
                                               maximize=h["maximize"], tail_width=tail)
            else:
                new = conventions.adam_step(convention, state, grad, step=step, lr=lr,
                                            tail_width=tail, **_adam_flags(case))
        except ValueError as err:
            raise _unsupported(str(err)) from None
        for k, v in new.items():
            state[k][...] = v
    step_fn.__name__ = f"emulate:{convention}"
    return step_fn


def _optax_step_fn():
    import jax
    import jax.numpy as jnp
    import optax
    compiled = {}

    def transform(case, lr):
        h, flags = case.hyper, None
        if case.optimizer == "adagrad":
            if h["lr_decay"] or h["weight_decay"] or h["maximize"]:
                raise _unsupported("optax.adagrad has no lr_decay, weight_decay or maximize")
            return optax.adagrad(lr, eps=h["eps"])
        flags = _adam_flags(case)
        if flags["maximize"] or not flags["bias_correction"]:
            raise _unsupported("optax: no maximize, and bias correction is always on")
        if flags["weight_decay"] and not flags["decoupled"]:
            raise _unsupported("optax: weight decay is decoupled (adamw) only")
        kw = dict(b1=h["beta1"], b2=h["beta2"], eps=h["eps"])
        if flags["decoupled"]:
            if flags["amsgrad"]:
                raise _unsupported("optax.adamw has no amsgrad")
            return optax.adamw(lr, weight_decay=h["weight_decay"], **kw)
        return (optax.amsgrad if flags["amsgrad"] else optax.adam)(lr, **kw)

    def step_fn(case, state, grad, step, lr):
        _check_float32(case, "optax")
        key = (case.name, case.optimizer, lr)
        if key not in compiled:
            tx = transform(case, lr)

            @jax.jit
            def run(p, s, g):
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s
            compiled[key] = (tx, run)
        tx, run = compiled[key]
        p = jnp.asarray(state["param"])
        s0 = tx.init(p)
        inner = s0[0]
        if case.optimizer == "adagrad":
            inner = inner._replace(sum_of_squares=jnp.asarray(state["state_sum"]))
        else:
            fields = dict(count=jnp.asarray(step - 1, jnp.int32),
                          mu=jnp.asarray(state["exp_avg"]), nu=jnp.asarray(state["exp_avg_sq"]))
            if "max_exp_avg_sq" in state:
                fields["nu_max"] = jnp.asarray(state["max_exp_avg_sq"])
            inner = inner._replace(**fields)
        p, s = run(p, (inner,) + tuple(s0[1:]), jnp.asarray(grad))
        state["param"][...] = np.asarray(p)
        inner = s[0]
        if case.optimizer == "adagrad":
            state["state_sum"][...] = np.asarray(inner.sum_of_squares)
        else:
            state["exp_avg"][...] = np.asarray(inner.mu)
            state["exp_avg_sq"][...] = np.asarray(inner.nu)
            if "max_exp_avg_sq" in state:
                state["max_exp_avg_sq"][...] = np.asarray(inner.nu_max)
    step_fn.__name__ = "optax"
    return step_fn


def _keras_step_fn():
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        raise ValueError("keras: the keras convention is the jax backend's (KERAS_BACKEND=jax)")
    os.environ["KERAS_BACKEND"] = "jax"
    import keras

    def step_fn(case, state, grad, step, lr):
        _check_float32(case, "keras")
        h = case.hyper
        var = keras.Variable(state["param"].copy(), dtype="float32")
        if case.optimizer == "adagrad":
            if h["lr_decay"] or h["weight_decay"] or h["maximize"]:
                raise _unsupported("keras Adagrad has no lr_decay, weight_decay or maximize")
            opt = keras.optimizers.Adagrad(learning_rate=lr, epsilon=h["eps"])
            slots = {"state_sum": "_accumulators"}
        else:
            flags = _adam_flags(case)
            if flags["maximize"] or not flags["bias_correction"] or (
                    flags["weight_decay"] and not flags["decoupled"]):
                raise _unsupported("keras: no maximize or L2 decay; bias correction always on")
            kw = dict(learning_rate=lr, beta_1=h["beta1"], beta_2=h["beta2"], epsilon=h["eps"],
                      amsgrad=flags["amsgrad"])
            opt = (keras.optimizers.AdamW(weight_decay=h["weight_decay"], **kw)
                   if flags["decoupled"] else keras.optimizers.Adam(**kw))
            slots = {"exp_avg": "_momentums", "exp_avg_sq": "_velocities",
                     "max_exp_avg_sq": "_velocity_hats"}
        opt.build([var])
        opt.iterations.assign(step - 1)
        slots = {k: getattr(opt, v)[0] for k, v in slots.items() if k in state}
        for k, slot in slots.items():
            slot.assign(state[k])
        opt.apply_gradients([(grad.copy(), var)])
        state["param"][...] = np.asarray(var.value)
        for k, slot in slots.items():
            state[k][...] = np.asarray(slot.value)
    step_fn.__name__ = "keras"
    return step_fn


def _deepspeed_step_fn():
    """DeepSpeed forms beta^t by multiplying once per step inside its C++ object, so one
    optimizer is kept per case and must be stepped in order (both check modes do)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch
    kept = {}

    def step_fn(case, state, grad, step, lr):
        _check_float32(case, "deepspeed")
        h = case.hyper
        if case.optimizer == "sgd":
            raise _unsupported("DeepSpeed has no CPU SGD")
        if case.optimizer == "lion":
            _deepspeed_lion_step(kept, case, state, grad, step, lr)
            return
        if case.optimizer == "adagrad":
            if h["lr_decay"] or h["maximize"]:
                raise _unsupported("DeepSpeedCPUAdagrad has no lr_decay or maximize")
        else:
            flags = _adam_flags(case)
            if flags["maximize"] or flags["amsgrad"]:
                raise _unsupported("DeepSpeedCPUAdam has no maximize or amsgrad")
        if case.name not in kept or kept[case.name][2] != step - 1:
            p = torch.nn.Parameter(torch.zeros(case.size))
            if case.optimizer == "adagrad":
                from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
                opt = DeepSpeedCPUAdagrad([p], lr=lr, eps=h["eps"], weight_decay=h["weight_decay"])
            else:
                from deepspeed.ops.adam import DeepSpeedCPUAdam
                opt = DeepSpeedCPUAdam([p], lr=lr, betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                                       weight_decay=h["weight_decay"],
                                       bias_correction=flags["bias_correction"],
                                       adamw_mode=flags["decoupled"])
            if step != 1:
                raise _unsupported("deepspeed: its beta^t needs every step from the first")
            kept[case.name] = [p, opt, 0]
        p, opt, _ = kept[case.name]
        opt.param_groups[0]["lr"] = lr
        p.data.copy_(torch.from_numpy(state["param"]))
        p.grad = torch.from_numpy(grad.copy())
        names = ({"state_sum": "exp_avg_sq"} if case.optimizer == "adagrad"
                 else {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"})
        if opt.state[p]:
            for k, n in names.items():
                opt.state[p][n].copy_(torch.from_numpy(state[k]))
        elif step == 1 and any(np.any(state[k]) for k in names):
            raise _unsupported("deepspeed: starts from zero state")
        opt.step()
        kept[case.name][2] = step
        state["param"][...] = p.detach().numpy()
        for k, n in names.items():
            state[k][...] = opt.state[p][n].numpy()
    step_fn.__name__ = "deepspeed"
    return step_fn


def _deepspeed_lion_step(kept, case, state, grad, step, lr):
    """One DeepSpeedCPULion step from the case's state. Lion has no per-step scalars, so
    the case's optimizer (one per case, as DeepSpeed logs each it creates) continues from
    any state it is given."""
    import torch
    from deepspeed.ops.lion import DeepSpeedCPULion

    h = case.hyper
    if h.get("convention") != "deepspeed" or h["maximize"]:
        raise _unsupported("DeepSpeedCPULion: the deepspeed Lion convention, no maximize")
    if case.name not in kept:
        p = torch.nn.Parameter(torch.zeros(case.size))
        kept[case.name] = [p, DeepSpeedCPULion([p], lr=lr, betas=(h["beta1"], h["beta2"]),
                                               weight_decay=h["weight_decay"]), 0]
    p, opt, _ = kept[case.name]
    opt.param_groups[0]["lr"] = lr
    p.data.copy_(torch.from_numpy(state["param"]))
    p.grad = torch.from_numpy(grad.copy())
    opt.state[p] = {"step": step - 1, "exp_avg": torch.from_numpy(state["exp_avg"].copy())}
    opt.step()
    state["param"][...] = p.detach().numpy()
    state["exp_avg"][...] = opt.state[p]["exp_avg"].numpy()
