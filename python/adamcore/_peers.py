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
    """Float32 lanes of DeepSpeed's CPU ops, built with -march=native (AVX-512: 16, else 8)."""
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
