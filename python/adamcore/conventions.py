"""Exact NumPy emulations of each peer's float32 Adam/AdamW/AMSGrad and AdaGrad arithmetic.

A *convention* is one peer's recipe, rounding by rounding. Each step function takes a
state dict and a gradient and returns a new state dict (the caller's arrays are never
written). All arithmetic is float32; ``fl`` below means "rounded to float32" and ``fma``
a fused multiply-add rounded once.

Conventions (docs/conventions.md has the formulas and the measured exceptions):

``torch-fused``    adamcore's canonical recipe = torch ``fused=True`` vector body. With
                   ``tail_width=W`` the last ``n % W`` elements follow torch's scalar tail
                   (DeepSpeed's ``tail_width`` likewise selects its scalar tail).
``torch-foreach``  torch's for-loop and ``foreach=True`` paths (separate multiply and add).
``deepspeed``      DeepSpeedCPUAdam / DeepSpeedCPUAdagrad 0.19.8 (float32 host scalars,
                   beta^t by repeated multiplication, reciprocal of sqrt(bc2), its fmas).
``optax``          optax 0.2.8 under ``jax.jit`` on CPU (XLA contracts ``a*b + c``).
``keras``          Keras 3 with the jax backend, eager ``apply_gradients``.
``reddi``          Reddi, Kale & Kumar (2018) AMSGrad: no bias correction, alpha/sqrt(t).

State keys: Adam family ``param, exp_avg, exp_avg_sq`` (+ ``max_exp_avg_sq`` with
amsgrad); AdaGrad ``param, state_sum``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Dict, Optional

import numpy as np

from adamcore import _sr_emulation
from adamcore._sr_emulation import fma32

F32 = np.float32
State = Dict[str, np.ndarray]

ADAM_CONVENTIONS = ("torch-fused", "torch-foreach", "deepspeed", "optax", "keras", "reddi")
ADAGRAD_CONVENTIONS = ("torch-fused", "torch-foreach", "deepspeed", "optax", "keras")
# Peers whose last n % width elements take a scalar path with other roundings.
TAIL_CONVENTIONS = ("torch-fused", "deepspeed")


def _fl(x: float) -> np.float32:
    with np.errstate(over="ignore"):
        return F32(x)


def _r(x) -> np.ndarray:
    """Round an intermediate result to float32."""
    return np.asarray(x).astype(F32)


def _torch_maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _sr_emulation._maximum(a, b)


def float32_power(base: float, t: int) -> np.float32:
    """fl(fl(base)^t), correctly rounded (what XLA's pow gives in all but ~1 case in 2000)."""
    return _fl(float(Fraction(float(_fl(base))) ** t))


def _copy(state: State) -> State:
    return {k: np.array(v, dtype=F32, copy=True) for k, v in state.items()}


def _check(state: State, grad: np.ndarray, keys) -> np.ndarray:
    for k in keys:
        if k not in state:
            raise KeyError(f"state: missing {k!r}")
        if np.asarray(state[k]).dtype != F32:
            raise TypeError(f"state[{k!r}]: conventions are float32 only")
    grad = np.asarray(grad)
    if grad.dtype != F32:
        raise TypeError("grad: conventions are float32 only")
    if grad.shape != np.shape(state["param"]):
        raise ValueError("grad: shape differs from state['param']")
    return grad


def _check_tail(convention: str, tail_width) -> None:
    if tail_width is None:
        return
    if convention not in TAIL_CONVENTIONS:
        raise ValueError(f"tail_width: only {' and '.join(TAIL_CONVENTIONS)} have a scalar tail")
    if isinstance(tail_width, bool) or int(tail_width) != tail_width or tail_width < 1:
        raise ValueError(f"tail_width: must be a positive integer, got {tail_width!r}")


def _sqrt_hook(convention: str, sqrt):
    if sqrt is None:
        return np.sqrt
    if convention != "torch-foreach":
        raise ValueError("sqrt: only torch-foreach's square root is not correctly rounded")
    if not callable(sqrt):
        raise TypeError("sqrt: must be a callable on a float32 array")
    return sqrt


# ---------------------------------------------------------------- Adam family

def _amsgrad_max(out: State, s: State, v, h: dict, maximum) -> np.ndarray:
    """With amsgrad: store maximum(max_exp_avg_sq, v) in ``out`` and return it; else v."""
    if not h["amsgrad"]:
        return v
    out["max_exp_avg_sq"] = maximum(s["max_exp_avg_sq"], v)
    return out["max_exp_avg_sq"]


def _adam_torch_fused(s: State, g, t: int, h: dict) -> State:
    """fl/fma as docs/numerics.md; with tail_width the scalar tail's v = fma(v, B2, fl(fl(C2*g)*g))."""
    out = _copy(s)
    amsgrad = h["amsgrad"]
    _sr_emulation.adam_step(out["param"], np.array(g), out["exp_avg"], out["exp_avg_sq"],
                            step=t, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                            weight_decay=h["weight_decay"], amsgrad=amsgrad,
                            max_exp_avg_sq=out.get("max_exp_avg_sq"), maximize=h["maximize"],
                            bias_correction=h["bias_correction"], decoupled=h["decoupled"])
    return _with_tail(out, _adam_torch_tail, s, g, t, h)


def _with_tail(out: State, tail_fn, s: State, g, t: int, h: dict) -> State:
    """Replace the last ``n % tail_width`` elements of ``out`` by ``tail_fn``'s results."""
    width = h.get("tail_width")
    n = g.size
    if width and n % width:
        tail = slice(n - n % width, n)
        part = {k: v.reshape(-1)[tail] for k, v in s.items()}
        done = tail_fn(part, g.reshape(-1)[tail], t, h)
        for k in out:
            out[k].reshape(-1)[tail] = done[k]
    return out


def _adam_torch_tail(s: State, g, t: int, h: dict) -> State:
    """torch fused's scalar tail (float32, constants scalar_t(x), compiler-contracted)."""
    lr, b1, b2 = h["lr"], h["beta1"], h["beta2"]
    bc1 = 1.0 - math.pow(b1, t) if h["bias_correction"] else 1.0
    bc2 = 1.0 - math.pow(b2, t) if h["bias_correction"] else 1.0
    W, B2, C2 = _fl(1.0 - b1), _fl(b2), _fl(1.0 - b2)
    D, E, S = _fl(math.sqrt(bc2)), _fl(h["eps"]), _fl(lr / bc1)
    p, m, v = s["param"].copy(), s["exp_avg"].copy(), s["exp_avg_sq"].copy()
    with np.errstate(all="ignore"):
        if h["maximize"]:
            g = -g
        if h["weight_decay"]:
            if h["decoupled"]:
                p = _r(p * _fl(_sr_emulation._fma64(-lr, h["weight_decay"], 1.0)))
            else:
                g = fma32(p, _fl(h["weight_decay"]), g)
        d = _r(g - m)
        m = fma32(W, d, m) if abs(W) < 0.5 else fma32(-d, _r(F32(1) - W), g)
        v = fma32(v, B2, _r(_r(C2 * g) * g))
        out = {"exp_avg": m, "exp_avg_sq": v}
        vh = v
        if h["amsgrad"]:
            vmax = s["max_exp_avg_sq"]
            vmax = np.where(vmax < v, v, vmax).astype(F32)   # std::max keeps vmax on NaN v
            out["max_exp_avg_sq"] = vmax
            vh = vmax
        den = _r(_r(np.sqrt(vh) / D) + E)
        out["param"] = _r(p - _r(_r(S * m) / den))
    return out


def _adam_torch_foreach(s: State, g, t: int, h: dict) -> State:
    """torch.optim.Adam(foreach=True) / for-loop (the fused body's ops except where noted):
    g = fma(p, L, g) (Adam) | p = fl(p * fl(1 - lr*wd)), the product rounded in double (AdamW);
    m = lerp(m, g, W) ; v = fma(fl(C2*g), g, fl(v*B2)) (mul_ then addcmul_) ;
    vmax = maximum(vmax, v) ; den = fl(fl(SQRT(vh) / fl(bc2**0.5)) + E) ; p = fl(p + fl(fl(S*m) / den)).
    SQRT is torch.sqrt on a CPU tensor: MKL's vsSqrt, not correctly rounded (1 ulp on ~16% of
    inputs, measured). It is emulated as np.sqrt unless ``sqrt`` supplies the peer's."""
    lr, b1, b2, wd = h["lr"], h["beta1"], h["beta2"], h["weight_decay"]
    bc1 = 1.0 - b1 ** t if h["bias_correction"] else 1.0
    bc2 = 1.0 - b2 ** t if h["bias_correction"] else 1.0
    W, B2, C2, E = _fl(1.0 - b1), _fl(b2), _fl(1.0 - b2), _fl(h["eps"])
    D, S = _fl(bc2 ** 0.5), _fl(-(lr / bc1))
    p, m, v = s["param"], s["exp_avg"], s["exp_avg_sq"]
    with np.errstate(all="ignore"):
        if h["maximize"]:
            g = -g
        if wd:
            if h["decoupled"]:
                p = _r(p * _fl(1.0 - lr * wd))
            else:
                g = fma32(p, _fl(wd), g)
        d = _r(g - m)
        m = fma32(W, d, m) if W < 0.5 else fma32(_r(W - F32(1)), d, g)
        v = fma32(_r(C2 * g), g, _r(v * B2))
        out = {"exp_avg": m, "exp_avg_sq": v}
        vh = _amsgrad_max(out, s, v, h, _torch_maximum)
        den = _r(_r(_r(h["sqrt"](vh)) / D) + E)
        out["param"] = _r(p + _r(_r(S * m) / den))
    return out


def _deepspeed_powers(b1: np.float32, b2: np.float32, t: int):
    """beta^t as DeepSpeed forms it: float32 products, one per step, starting from 1."""
    p1 = p2 = F32(1.0)
    for _ in range(t):
        p1, p2 = F32(p1 * b1), F32(p2 * b2)
    return p1, p2


def _adam_deepspeed(s: State, g, t: int, h: dict) -> State:
    """DeepSpeedCPUAdam: host scalars in float32: bc1 = fl(1 - b1^t), R = fl(1 / fl(sqrt(fl(1 - b2^t)))),
    S = fl(fl(-lr) / bc1), Wd = fl(fl(-lr) * wd); element (its SIMD body):
    g = fma(p, wd, g) (Adam) ; m = fma(g, fl(1-b1), fl(m*b1)) ; v = fma(fl(g*g), fl(1-b2), fl(v*b2)) ;
    den = fma(fl(sqrt(v)), R, eps) ; u = fl(m / den) ; p = fma(p, Wd, p) (AdamW) ; p = fma(u, S, p).
    Its scalar tail (the last n % tail_width elements; the compiler contracted the other product):
    m = fma(m, b1, fl(g*fl(1-b1))) ; v = fma(v, b2, fl(fl(g*g)*fl(1-b2)))."""
    if h["amsgrad"] or h["maximize"]:
        raise ValueError("deepspeed: DeepSpeedCPUAdam has no amsgrad or maximize")
    out = _adam_deepspeed_part(s, g, t, h, tail=False)
    return _with_tail(out, lambda *a: _adam_deepspeed_part(*a, tail=True), s, g, t, h)


def _adam_deepspeed_part(s: State, g, t: int, h: dict, tail: bool) -> State:
    b1, b2, lr, wd, eps = (_fl(h[k]) for k in ("beta1", "beta2", "lr", "weight_decay", "eps"))
    one = F32(1.0)
    if h["bias_correction"]:
        p1, p2 = _deepspeed_powers(b1, b2, t)
        bc1, R = F32(one - p1), F32(one / np.sqrt(F32(one - p2)))
    else:
        bc1, R = one, one
    S, Wd = F32(F32(-lr) / bc1), F32(F32(-lr) * wd)
    p, m, v = s["param"], s["exp_avg"], s["exp_avg_sq"]
    with np.errstate(all="ignore"):
        if wd > 0 and not h["decoupled"]:
            g = fma32(p, wd, g)
        if tail:
            m = fma32(m, b1, _r(g * F32(one - b1)))
            v = fma32(v, b2, _r(_r(g * g) * F32(one - b2)))
        else:
            m = fma32(g, F32(one - b1), _r(m * b1))
            v = fma32(_r(g * g), F32(one - b2), _r(v * b2))
        u = _r(m / fma32(np.sqrt(v), R, eps))
        if wd > 0 and h["decoupled"]:
            p = fma32(p, Wd, p)
        p = fma32(u, S, p)
    return {"param": p, "exp_avg": m, "exp_avg_sq": v}


def _adam_optax(s: State, g, t: int, h: dict) -> State:
    """optax.adam/adamw/amsgrad under jax.jit (XLA CPU contracts a*b + c into an fma, and
    rewrites a division by a scalar as a multiplication by its float32 reciprocal):
    m = fma(fl(1-b1), g, fl(b1*m)) ; v = fma(fl(1-b2), fl(g*g), fl(b2*v)) ;
    R_i = fl(1 / fl(1 - fl(b_i^t))) ; mh = fl(m * R1) (nesterov: fma(b1, fl(m * R1'), fl(fl(1-b1)*fl(g*R1))),
    R1' at t+1) ; x = fma(v, R2, eps_root) (amsgrad: vmax = max(vmax, fl(v * R2)),
    x = fl(vmax + eps_root)) ; u = fl(mh / fl(fl(sqrt(x)) + eps)) ; AdamW: u = fma(wd, p, u) ;
    p = fma(fl(-lr), u, p)."""
    if h["maximize"] or not h["bias_correction"]:
        raise ValueError("optax: no maximize and bias correction is always on")
    b1, b2 = h["beta1"], h["beta2"]
    W, C2 = _fl(1.0 - b1), _fl(1.0 - b2)
    one = F32(1.0)
    R1 = F32(one / F32(one - float32_power(b1, t)))
    R2 = F32(one / F32(one - float32_power(b2, t)))
    p, m, v = s["param"], s["exp_avg"], s["exp_avg_sq"]
    with np.errstate(all="ignore"):
        if h["weight_decay"] and not h["decoupled"]:
            raise ValueError("optax: weight decay is decoupled (adamw) only")
        m = fma32(W, g, _r(_fl(b1) * m))
        v = fma32(C2, _r(g * g), _r(_fl(b2) * v))
        if h["nesterov"]:
            R1_next = F32(one / F32(one - float32_power(b1, t + 1)))
            mh = fma32(_fl(b1), _r(m * R1_next), _r(W * _r(g * R1)))
        else:
            mh = _r(m * R1)
        out = {"exp_avg": m, "exp_avg_sq": v}
        if h["amsgrad"]:   # optax maxes the bias-corrected v
            shifted = _r(_amsgrad_max(out, s, _r(v * R2), h, np.maximum) + _fl(h["eps_root"]))
        else:              # XLA contracts v * R2 + eps_root
            shifted = fma32(v, R2, _fl(h["eps_root"]))
        u = _r(mh / _r(np.sqrt(shifted) + _fl(h["eps"])))
        if h["weight_decay"]:
            u = fma32(_fl(h["weight_decay"]), p, u)
        out["param"] = fma32(_fl(-h["lr"]), u, p)
    return out


def _adam_keras(s: State, g, t: int, h: dict) -> State:
    """Keras 3 Adam/AdamW (jax backend, eager: one rounding per op, no fma):
    AdamW first: p = fl(p - fl(fl(p*wd)*lr)) ; bp_i = fl(b_i^t) ;
    alpha = fl(fl(lr * fl(sqrt(fl(1 - bp2)))) / fl(1 - bp1)) ;
    m = fl(m + fl(fl(g - m) * fl(1-b1))) ; v = fl(v + fl(fl(fl(g*g) - v) * fl(1-b2))) ;
    amsgrad: vmax = max(vmax, v), v -> vmax ; p = fl(p - fl(fl(m*alpha) / fl(fl(sqrt(v)) + eps)))."""
    if h["maximize"] or not h["bias_correction"]:
        raise ValueError("keras: no maximize and bias correction is always on")
    lr, one = _fl(h["lr"]), F32(1.0)
    bp1, bp2 = float32_power(h["beta1"], t), float32_power(h["beta2"], t)
    alpha = F32(F32(lr * np.sqrt(F32(one - bp2))) / F32(one - bp1))
    p, m, v = s["param"], s["exp_avg"], s["exp_avg_sq"]
    with np.errstate(all="ignore"):
        if h["weight_decay"]:
            if not h["decoupled"]:
                raise ValueError("keras: weight decay is decoupled (AdamW) only")
            p = _r(p - _r(_r(p * _fl(h["weight_decay"])) * lr))
        m = _r(m + _r(_r(g - m) * _fl(1.0 - h["beta1"])))
        v = _r(v + _r(_r(_r(g * g) - v) * _fl(1.0 - h["beta2"])))
        out = {"exp_avg": m, "exp_avg_sq": v}
        vh = _amsgrad_max(out, s, v, h, np.maximum)
        out["param"] = _r(p - _r(_r(m * alpha) / _r(np.sqrt(vh) + _fl(h["eps"]))))
    return out


def _adam_reddi(s: State, g, t: int, h: dict) -> State:
    """Reddi et al. (2018), Algorithm 2 (AMSGrad; amsgrad=False gives their Adam form), float32:
    m = fl(fl(b1*m) + fl(fl(1-b1)*g)) ; v = fl(fl(b2*v) + fl(fl(1-b2)*fl(g*g))) ; vh = max(vh, v) ;
    alpha_t = fl(lr / sqrt(t)) ; p = fl(p - fl(fl(alpha_t*m) / fl(fl(sqrt(vh)) + eps))).
    No bias correction; the paper has no eps (pass eps=0 for its exact form)."""
    a_t = _fl(h["lr"] / math.sqrt(t))
    b1, b2 = _fl(h["beta1"]), _fl(h["beta2"])
    p, m, v = s["param"], s["exp_avg"], s["exp_avg_sq"]
    with np.errstate(all="ignore"):
        m = _r(_r(b1 * m) + _r(_fl(1.0 - h["beta1"]) * g))
        v = _r(_r(b2 * v) + _r(_fl(1.0 - h["beta2"]) * _r(g * g)))
        out = {"exp_avg": m, "exp_avg_sq": v}
        vh = _amsgrad_max(out, s, v, h, np.maximum)
        out["param"] = _r(p - _r(_r(a_t * m) / _r(np.sqrt(vh) + _fl(h["eps"]))))
    return out


_ADAM: Dict[str, Callable[[State, np.ndarray, int, dict], State]] = {
    "torch-fused": _adam_torch_fused, "torch-foreach": _adam_torch_foreach,
    "deepspeed": _adam_deepspeed, "optax": _adam_optax, "keras": _adam_keras,
    "reddi": _adam_reddi,
}


def adam_step(convention: str, state: State, grad: np.ndarray, *, step: int, lr: float = 1e-3,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, decoupled: bool = False, amsgrad: bool = False,
              maximize: bool = False, bias_correction: bool = True, eps_root: float = 0.0,
              nesterov: bool = False, tail_width: Optional[int] = None,
              sqrt: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> State:
    """One Adam (``decoupled``: AdamW) step under ``convention``; returns the new state.

    ``step`` is the step number after incrementing (1 first). ``eps_root`` and ``nesterov``
    are optax's; ``tail_width`` is torch-fused's or DeepSpeed's vector width (their scalar
    tails take the last ``n % tail_width`` elements; None: no tail); ``sqrt``
    replaces torch-foreach's square root (np.sqrt) with the peer's own, e.g. torch.sqrt."""
    if convention not in _ADAM:
        raise ValueError(f"convention: {convention!r} is not one of {', '.join(_ADAM)}")
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"step: must be an integer >= 1, got {step!r}")
    keys = ("param", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
    g = _check(state, grad, keys)
    if (eps_root or nesterov) and convention != "optax":
        raise ValueError("eps_root/nesterov: only the optax convention has them")
    _check_tail(convention, tail_width)
    h = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
             decoupled=decoupled, amsgrad=amsgrad, maximize=maximize,
             bias_correction=bias_correction, eps_root=eps_root, nesterov=nesterov,
             tail_width=tail_width, sqrt=_sqrt_hook(convention, sqrt))
    new = _ADAM[convention]({k: np.asarray(state[k]) for k in keys}, g, int(step), h)
    return {k: np.asarray(new[k], dtype=F32).reshape(np.shape(state["param"])) for k in keys}


def init_adam_state(param: np.ndarray, amsgrad: bool = False) -> State:
    param = np.array(param, dtype=F32, copy=True)
    state = {"param": param, "exp_avg": np.zeros_like(param), "exp_avg_sq": np.zeros_like(param)}
    if amsgrad:
        state["max_exp_avg_sq"] = np.zeros_like(param)
    return state


# ---------------------------------------------------------------- AdaGrad

def _adagrad_torch_fused(s: State, g, t: int, h: dict) -> State:
    """docs/numerics.md: g = fma(p, L, g) ; s = fma(g, g, s) ; p = fl(p + fl(fl(N*g) / fl(fl(sqrt(s)) + E)))."""
    out = _copy(s)
    _sr_emulation.adagrad_step(out["param"], np.array(g), out["state_sum"], step=t, lr=h["lr"],
                               lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                               eps=h["eps"], maximize=h["maximize"])
    return out


def _adagrad_torch_foreach(s: State, g, t: int, h: dict) -> State:
    """torch.optim.Adagrad(foreach=True) / for-loop: g = fma(p, L, g) ; s = fma(g, g, s) (addcmul_) ;
    std = fl(fl(SQRT(s)) + E) ; p = fl(p + fl(fl(N*g) / std)), N = fl(-lr / (1 + (t-1)*lr_decay)).
    SQRT as in the Adam form: MKL's, emulated as np.sqrt unless ``sqrt`` is given."""
    clr = h["lr"] / (1 + (t - 1) * h["lr_decay"])
    p, ss = s["param"], s["state_sum"]
    with np.errstate(all="ignore"):
        if h["maximize"]:
            g = -g
        if h["weight_decay"]:
            g = fma32(p, _fl(h["weight_decay"]), g)
        ss = fma32(g, g, ss)
        std = _r(_r(h["sqrt"](ss)) + _fl(h["eps"]))
        p = _r(p + _r(_r(_fl(-clr) * g) / std))
    return {"param": p, "state_sum": ss}


def _adagrad_deepspeed(s: State, g, t: int, h: dict) -> State:
    """DeepSpeedCPUAdagrad: g = fma(p, wd, g) ; s = fma(g, g, s) ; u = fl(g / fl(fl(sqrt(s)) + eps)) ;
    p = fma(u, fl(-lr), p) ; scalar tail (last n % tail_width): p = fl(p + fl(u * fl(-lr))).
    No lr_decay; the peer also overwrites the caller's grad with fl(u * -lr) in its tail."""
    if h["lr_decay"] or h["maximize"]:
        raise ValueError("deepspeed: DeepSpeedCPUAdagrad has no lr_decay or maximize")
    out = _adagrad_deepspeed_part(s, g, t, h, tail=False)
    return _with_tail(out, lambda *a: _adagrad_deepspeed_part(*a, tail=True), s, g, t, h)


def _adagrad_deepspeed_part(s: State, g, t: int, h: dict, tail: bool) -> State:
    p, ss = s["param"], s["state_sum"]
    wd = _fl(h["weight_decay"])
    with np.errstate(all="ignore"):
        if wd > 0:
            g = fma32(p, wd, g)
        ss = fma32(g, g, ss)
        u = _r(g / _r(np.sqrt(ss) + _fl(h["eps"])))
        p = _r(p + _r(u * _fl(-h["lr"]))) if tail else fma32(u, _fl(-h["lr"]), p)
    return {"param": p, "state_sum": ss}


def _adagrad_optax(s: State, g, t: int, h: dict) -> State:
    """optax.adagrad under jax.jit: s = fma(g, g, s) ; u = rsqrt(fl(s + eps)) * g (0 where s == 0) ;
    p = fma(fl(-lr), u, p). XLA's rsqrt is not correctly rounded (measured: up to 2 ulp); it is
    emulated here as fl(1/sqrt(x)) in double, so this convention is exact only where they agree."""
    p, ss = s["param"], s["state_sum"]
    with np.errstate(all="ignore"):
        ss = fma32(g, g, ss)
        inv = _r(1.0 / np.sqrt(_r(ss + _fl(h["eps"])).astype(np.float64)))
        u = np.where(ss > 0, _r(inv * g), F32(0)).astype(F32)
        p = fma32(_fl(-h["lr"]), u, p)
    return {"param": p, "state_sum": ss}


def _adagrad_keras(s: State, g, t: int, h: dict) -> State:
    """Keras 3 Adagrad (jax backend, eager): s = fl(s + fl(g*g)) ;
    p = fl(p - fl(fl(lr*g) / fl(sqrt(fl(s + eps)))))."""
    p, ss = s["param"], s["state_sum"]
    with np.errstate(all="ignore"):
        ss = _r(ss + _r(g * g))
        p = _r(p - _r(_r(_fl(h["lr"]) * g) / _r(np.sqrt(_r(ss + _fl(h["eps"]))))))
    return {"param": p, "state_sum": ss}


_ADAGRAD = {"torch-fused": _adagrad_torch_fused, "torch-foreach": _adagrad_torch_foreach,
            "deepspeed": _adagrad_deepspeed, "optax": _adagrad_optax, "keras": _adagrad_keras}

# Each peer's default initial accumulator (torch and DeepSpeed 0; optax and Keras 0.1).
ADAGRAD_INITIAL = {"torch-fused": 0.0, "torch-foreach": 0.0, "deepspeed": 0.0, "optax": 0.1,
                   "keras": 0.1}


def adagrad_step(convention: str, state: State, grad: np.ndarray, *, step: int,
                 lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 eps: float = 1e-10, maximize: bool = False, tail_width: Optional[int] = None,
                 sqrt: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> State:
    """One AdaGrad step under ``convention``; returns the new state ``{param, state_sum}``.
    ``sqrt`` as in :func:`adam_step` (torch-foreach only)."""
    if convention not in _ADAGRAD:
        raise ValueError(f"convention: {convention!r} is not one of {', '.join(_ADAGRAD)}")
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"step: must be an integer >= 1, got {step!r}")
    keys = ("param", "state_sum")
    g = _check(state, grad, keys)
    if convention in ("optax", "keras") and (lr_decay or weight_decay or maximize):
        raise ValueError(f"{convention}: AdaGrad has no lr_decay, weight_decay or maximize")
    _check_tail(convention, tail_width)
    h = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize,
             tail_width=tail_width, sqrt=_sqrt_hook(convention, sqrt))
    new = _ADAGRAD[convention]({k: np.asarray(state[k]) for k in keys}, g, int(step), h)
    return {k: np.asarray(new[k], dtype=F32).reshape(np.shape(state["param"])) for k in keys}


def init_adagrad_state(param: np.ndarray, initial_accumulator_value: float = 0.0) -> State:
    param = np.array(param, dtype=F32, copy=True)
    return {"param": param, "state_sum": np.full_like(param, _fl(initial_accumulator_value))}
