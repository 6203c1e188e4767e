"""The implementations the benchmark times, each stepping its own buffers: adamcore,
NumPy, torch.optim (for-loop, foreach, fused) and DeepSpeed, with their quirks (how
each is handed the state, DeepSpeed's quiet import and its CPU probe), the bandwidth
probe, and the thread settings every one of them is given."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

import adamcore

from .cases import FLOAT32_STEP, HYPER, LAYOUTS, OPTIMIZERS, Buffers, Case


PEERS = ("numpy", "torch-default", "torch-foreach", "torch-fused", "deepspeed")
IMPLEMENTATIONS = ("adamcore",) + PEERS
STREAM = "stream"  # the bandwidth probe's row name


# ---------------------------------------------------------------- implementations
class Runner:
    """Steps one implementation's buffers; ``run(k)`` takes k consecutive steps."""

    name = ""
    api = ""

    def __init__(self, optimizer: str, buffers: Buffers):
        self.optimizer = optimizer
        self.buffers = buffers
        self.hyper = HYPER[optimizer]

    def run(self, steps: int) -> None:
        raise NotImplementedError


class AdamcoreRunner(Runner):
    """adamcore with the kernels of ``isa`` (default: the active ones when created).
    The ISA is process-wide, so each batch selects its own first."""

    def __init__(self, optimizer: str, buffers: Buffers, isa: str | None = None):
        super().__init__(optimizer, buffers)
        self.name = "adamcore" if isa is None else f"adamcore[{isa}]"
        self.isa = isa or adamcore.get_isa()
        self._step = 0
        self._call = self._bind()

    def _bind(self) -> Callable[..., object]:
        b, h, opt = self.buffers, self.hyper, self.optimizer
        single = len(b.params) == 1

        def arg(arrays: list[np.ndarray]):
            # One tensor: the plain array form a user calls; several: one native call.
            return arrays[0] if single else arrays

        core = adamcore._core
        if opt == "adagrad":
            group_cls = getattr(core, "AdagradGroup", None)
            kwargs = dict(lr=h["lr"], lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                          eps=h["eps"])
            if group_cls is not None and not single:
                self.api = "AdagradGroup.step"
                group = group_cls(b.params, b.states["state_sum"])
                return functools.partial(group.step, b.grads, **kwargs)
            self.api = "adagrad_step" + ("" if single else " (lists)")
            return functools.partial(adamcore.adagrad_step, arg(b.params), arg(b.grads),
                                     arg(b.states["state_sum"]), **kwargs)

        amsgrad = opt == "amsgrad"
        decoupled = opt == "adamw"
        kwargs = dict(lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                      weight_decay=h["weight_decay"])
        group_cls = getattr(core, "AdamGroup", None)
        if group_cls is not None and not single and b.param_copy is None:
            self.api = "AdamGroup.step"
            group = group_cls(b.params, b.states["exp_avg"], b.states["exp_avg_sq"],
                              b.states["max_exp_avg_sq"] if amsgrad else None)
            return functools.partial(group.step, b.grads, decoupled=decoupled, **kwargs)
        fn = adamcore.adamw_step if decoupled else adamcore.adam_step
        self.api = fn.__name__ + ("" if single else " (lists)")
        if amsgrad:
            kwargs.update(amsgrad=True, max_exp_avg_sq=arg(b.states["max_exp_avg_sq"]))
        if b.param_copy is not None:
            kwargs.update(param_copy=arg(b.param_copy))
        if _dtype_names(b) != "float32":
            self.api += f" ({_dtype_names(b)})"
        return functools.partial(fn, arg(b.params), arg(b.grads), arg(b.states["exp_avg"]),
                                 arg(b.states["exp_avg_sq"]), **kwargs)

    def run(self, steps: int) -> None:
        adamcore.set_isa(self.isa)
        call = self._call
        first = self._step + 1
        for t in range(first, first + steps):
            call(step=t)
        self._step += steps


class NumpyRunner(Runner):
    """The same update in float32 NumPy, written for speed: in-place ufuncs and two
    preallocated scratch buffers, no temporaries per step."""

    name = "numpy"
    api = "in-place ufuncs"

    def __init__(self, optimizer: str, buffers: Buffers):
        super().__init__(optimizer, buffers)
        self._step = 0
        largest = max(p.size for p in buffers.params)
        self._scratch = (np.empty(largest, np.float32), np.empty(largest, np.float32))
        f32 = np.float32
        h = self.hyper
        self._lr, self._eps, self._wd = h["lr"], f32(h["eps"]), f32(h["weight_decay"])

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self._step += 1
            if self.optimizer == "adagrad":
                self._adagrad(self._step)
            else:
                self._adam(self._step)

    def _adam(self, t: int) -> None:
        h, f32 = self.hyper, np.float32
        b1, b2 = h["beta1"], h["beta2"]
        step_size = f32(self._lr / (1.0 - b1 ** t))
        bc2_sqrt = f32(math.sqrt(1.0 - b2 ** t))
        one_minus_b1, one_minus_b2, beta2 = f32(1.0 - b1), f32(1.0 - b2), f32(b2)
        decoupled = self.optimizer == "adamw"
        decay = f32(1.0 - self._lr * h["weight_decay"])
        amsgrad = self.optimizer == "amsgrad"
        s = self.buffers.states
        vmaxes = s["max_exp_avg_sq"] if amsgrad else s["exp_avg_sq"]
        for p, g, m, v, vmax in zip(self.buffers.params, self.buffers.grads, s["exp_avg"],
                                    s["exp_avg_sq"], vmaxes):
            t1, t2 = self._scratch[0][:p.size], self._scratch[1][:p.size]
            if self._wd and decoupled:
                p *= decay
            elif self._wd:
                np.multiply(p, self._wd, out=t2)
                t2 += g
                g = t2
            np.subtract(g, m, out=t1)          # m += (1 - beta1) (g - m)
            t1 *= one_minus_b1
            m += t1
            v *= beta2                          # v = beta2 v + (1 - beta2) g^2
            np.multiply(g, g, out=t1)
            t1 *= one_minus_b2
            v += t1
            if amsgrad:
                np.maximum(vmax, v, out=vmax)
            np.sqrt(vmax, out=t1)               # den = sqrt(v) / sqrt(bc2) + eps
            t1 /= bc2_sqrt
            t1 += self._eps
            np.divide(m, t1, out=t1)            # p -= step_size m / den
            t1 *= -step_size
            p += t1

    def _adagrad(self, t: int) -> None:
        clr = np.float32(self._lr / (1.0 + (t - 1) * self.hyper["lr_decay"]))
        for p, g, ssum in zip(self.buffers.params, self.buffers.grads,
                              self.buffers.states["state_sum"]):
            t1, t2 = self._scratch[0][:p.size], self._scratch[1][:p.size]
            if self._wd:
                np.multiply(p, self._wd, out=t2)
                t2 += g
                g = t2
            np.multiply(g, g, out=t1)           # sum += g^2
            ssum += t1
            np.sqrt(ssum, out=t1)               # p -= clr g / (sqrt(sum) + eps)
            t1 += self._eps
            np.divide(g, t1, out=t1)
            t1 *= -clr
            p += t1


def _dtype_names(buffers: Buffers) -> str:
    """'float32' when every buffer is; else each buffer's dtype, e.g. 'param bfloat16,
    grad bfloat16, state float32'."""
    state = next(iter(buffers.states.values()))[0]
    parts = [("param", buffers.params[0]), ("grad", buffers.grads[0]), ("state", state)]
    if buffers.param_copy is not None:
        parts.append(("param_copy", buffers.param_copy[0]))
    if all(a.dtype == np.float32 for _, a in parts):
        return "float32"
    return ", ".join(f"{name} {a.dtype.name}" for name, a in parts)


def _as_tensor(torch, array: np.ndarray):
    """A tensor sharing the array's memory; bfloat16 (ml_dtypes), which torch.from_numpy
    does not take, through its bits."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _torch_state_tensors(torch, buffers: Buffers, index: int) -> dict[str, object]:
    return {name: _as_tensor(torch, arrays[index]) for name, arrays in buffers.states.items()}


class TorchRunner(Runner):
    """torch.optim over tensors that share memory with this runner's NumPy buffers."""

    VARIANTS = {"torch-default": {}, "torch-foreach": {"foreach": True},
                "torch-fused": {"fused": True}}

    def __init__(self, variant: str, optimizer: str, buffers: Buffers):
        super().__init__(optimizer, buffers)
        import torch

        self.name = variant
        flags = self.VARIANTS[variant]
        self.api = "torch.optim." + {"adamw": "AdamW", "adagrad": "Adagrad"}.get(optimizer, "Adam")
        self.api += "(" + ", ".join(f"{k}=True" for k in flags) + ")"
        if _dtype_names(buffers) != "float32":
            self.api += f" ({_dtype_names(buffers)})"
        params = [_as_tensor(torch, p) for p in buffers.params]
        for p, g in zip(params, buffers.grads):
            p.grad = _as_tensor(torch, g)
        h = self.hyper
        if optimizer == "adagrad":
            self.opt = torch.optim.Adagrad(params, lr=h["lr"], lr_decay=h["lr_decay"],
                                           eps=h["eps"], weight_decay=h["weight_decay"], **flags)
        else:
            cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
            self.opt = cls(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                           weight_decay=h["weight_decay"], amsgrad=optimizer == "amsgrad",
                           **flags)
        # Hand torch our state arrays (zero-copy) so every implementation starts from the
        # same state and the subnormal case can restore it between batches.
        torch_names = {"state_sum": "sum"}
        for i, p in enumerate(params):
            state = {torch_names.get(k, k): v
                     for k, v in _torch_state_tensors(torch, buffers, i).items()}
            state["step"] = torch.zeros((), dtype=torch.float32)
            self.opt.state[p] = state

    def run(self, steps: int) -> None:
        step = self.opt.step
        for _ in range(steps):
            step()


@functools.lru_cache(maxsize=None)
def _deepspeed_classes():
    """DeepSpeed's CPU optimizers, or None. Imported quietly: DeepSpeed logs a warning
    about choosing the CPU accelerator, and compiles its op on first use."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
            from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
            from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception:  # not installed, or its op does not build here
        return None
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    return DeepSpeedCPUAdam, DeepSpeedCPUAdagrad


_CPU_INFO: list[dict] = []  # py-cpuinfo's answer, once asked inside _cpu_info_cached


@contextlib.contextmanager
def _cpu_info_cached():
    """Within the block, py-cpuinfo's ``get_cpu_info`` answers from a cache. Each DeepSpeed
    optimizer's constructor asks it about the CPU, which runs subprocesses for about a
    second; the answer cannot change within this process. The module's own function is
    put back on leaving: nothing else in the process ever sees the cache."""
    try:
        import cpuinfo
    except ImportError:
        cpuinfo = None
    if cpuinfo is None:
        yield
        return
    original = cpuinfo.get_cpu_info

    def cached():
        if not _CPU_INFO:
            _CPU_INFO.append(original())
        return _CPU_INFO[0]

    cpuinfo.get_cpu_info = cached
    try:
        yield
    finally:
        cpuinfo.get_cpu_info = original


class DeepSpeedRunner(Runner):
    name = "deepspeed"

    def __init__(self, optimizer: str, buffers: Buffers):
        super().__init__(optimizer, buffers)
        import torch

        classes = _deepspeed_classes()
        if classes is None:
            raise RuntimeError("DeepSpeed is not importable")
        adam_cls, adagrad_cls = classes
        params = [_as_tensor(torch, p) for p in buffers.params]
        for p, g in zip(params, buffers.grads):
            p.grad = _as_tensor(torch, g)
        h = self.hyper
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                _cpu_info_cached():
            if optimizer == "adagrad":
                self.api = "DeepSpeedCPUAdagrad"
                self.opt = adagrad_cls(params, lr=h["lr"], eps=h["eps"],
                                       weight_decay=h["weight_decay"])
            else:
                self.api = "DeepSpeedCPUAdam(adamw_mode=%s)" % (optimizer == "adamw")
                # 16-bit params with float32 state: DeepSpeed's own mixed layout.
                mixed = {} if buffers.params[0].dtype == np.float32 else {
                    "fp32_optimizer_states": True}
                if mixed:
                    self.api = self.api[:-1] + ", fp32_optimizer_states=True)"
                self.opt = adam_cls(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                                    eps=h["eps"], weight_decay=h["weight_decay"],
                                    adamw_mode=optimizer == "adamw", **mixed)
        ds_names = {"state_sum": "exp_avg_sq"}  # DeepSpeed's AdaGrad calls its sum that
        for i, p in enumerate(params):
            state = {ds_names.get(k, k): v
                     for k, v in _torch_state_tensors(torch, buffers, i).items()}
            state["step"] = 0
            self.opt.state[p] = state

    def run(self, steps: int) -> None:
        step = self.opt.step
        for _ in range(steps):
            step()


def supports(implementation: str, optimizer: str) -> bool:
    return not (implementation == "deepspeed" and optimizer == "amsgrad")


def _deepspeed_works() -> bool:
    """Whether DeepSpeed's CPU op loads here. Its first use compiles it (a minute or
    more), so this is where that time goes, once, before anything is timed."""
    classes = _deepspeed_classes()
    if classes is None:
        return False
    import torch

    param = torch.zeros(16)
    param.grad = torch.ones(16)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                _cpu_info_cached():
            classes[0]([param]).step()
    except Exception as err:  # the op failed to build or load: leave DeepSpeed out
        print(f"note: DeepSpeed is installed but its CPU op does not load ({err}); "
              f"running without it", file=sys.stderr)
        return False
    return True


def available_implementations(candidates: Sequence[str] = PEERS) -> list[str]:
    """adamcore, NumPy and whichever of ``candidates`` can run here."""
    names = ["adamcore", "numpy"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return names
    names += [p for p in TorchRunner.VARIANTS if p in candidates]
    if "deepspeed" in candidates and _deepspeed_works():
        names.append("deepspeed")
    return names


def case_implementations(case: Case, implementations: Sequence[str]) -> list[str]:
    """The implementations timed on ``case``: every one, or on a layout case adamcore (each
    ISA asked for) and those of the layout's peers that are among ``implementations`` (its
    float32 step always)."""
    if case.layout is None:
        return list(implementations)
    ours = [i for i in implementations if i.startswith("adamcore")]
    return ours + [p for p in LAYOUTS[case.layout].peers
                   if p == FLOAT32_STEP or p in implementations]


def make_runner(implementation: str, optimizer: str, buffers: Buffers) -> Runner:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if implementation == "adamcore":
        return AdamcoreRunner(optimizer, buffers)
    if implementation == FLOAT32_STEP:  # a layout's reference: the float32 step
        runner = AdamcoreRunner(optimizer, buffers)
        runner.name = FLOAT32_STEP
        return runner
    if implementation.startswith("adamcore[") and implementation.endswith("]"):
        return AdamcoreRunner(optimizer, buffers, isa=implementation[len("adamcore["):-1])
    if implementation == "numpy":
        return NumpyRunner(optimizer, buffers)
    if implementation in TorchRunner.VARIANTS:
        return TorchRunner(implementation, optimizer, buffers)
    if implementation == "deepspeed":
        return DeepSpeedRunner(optimizer, buffers)
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


class StreamRunner:
    """The bandwidth probe: ``y += x`` over as many float32 as the case has (read x,
    read y, write y: 12 bytes per element). One thread: NumPy. More: torch's ``add_``
    (OpenMP threads, as the peers use) when torch is installed, else NumPy split across
    Python threads (NumPy releases the GIL inside the loop; slower to hand off)."""

    name = STREAM
    _SPLIT_FROM = 1 << 18  # smaller streams are not worth a thread hand-off

    def __init__(self, elements: int, pool: ThreadPoolExecutor | None):
        self.x = np.full(elements, 1e-7, np.float32)
        self.y = np.zeros(elements, np.float32)
        self.pool = pool
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.torch_xy = None
        self.set_threads(1)

    def set_threads(self, threads: int) -> None:
        self.parts, self.torch_xy = [], None
        self.api = "numpy.add(y, x, out=y)"
        n = self.x.size
        if threads < 2:
            return
        try:
            import torch
        except ImportError:
            pass
        else:
            self.torch_xy = (torch.from_numpy(self.x), torch.from_numpy(self.y))
            self.api = f"torch.Tensor.add_ ({threads} threads)"
            return
        if n >= self._SPLIT_FROM and self.pool is not None:
            bounds = [n * k // threads // 64 * 64 for k in range(threads)] + [n]
            self.parts = [(self.x[a:b], self.y[a:b]) for a, b in zip(bounds, bounds[1:])]
            self.api = f"numpy.add(y, x, out=y) in {threads} Python threads"

    def run(self, steps: int) -> None:
        if self.torch_xy is not None:
            x, y = self.torch_xy
            for _ in range(steps):
                y.add_(x)
        elif self.parts:
            for _ in range(steps):
                list(self.pool.map(_add_in_place, self.parts))
        else:
            for _ in range(steps):
                np.add(self.y, self.x, out=self.y)


def _add_in_place(xy: tuple[np.ndarray, np.ndarray]) -> None:
    np.add(xy[1], xy[0], out=xy[1])


# ---------------------------------------------------------------- threads
def openmp_runtime_paths() -> list[str]:
    """Paths of the OpenMP runtimes loaded in this process (torch bundles its own
    libgomp; DeepSpeed's op and adamcore load the system one): one path means one
    shared thread pool."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths
                  if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp")))


def _openmp_runtimes() -> list[ctypes.CDLL]:
    """Every OpenMP runtime loaded in this process, opened with ctypes."""
    libs = []
    for path in openmp_runtime_paths():
        with contextlib.suppress(OSError):
            libs.append(ctypes.CDLL(path))
    return libs


def set_all_threads(n: int) -> None:
    """Give every implementation ``n`` threads: adamcore's setting, torch's intra-op
    pool, and each OpenMP runtime's default (DeepSpeed's op uses that)."""
    adamcore.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(n)
    for lib in _openmp_runtimes():
        with contextlib.suppress(AttributeError):
            lib.omp_set_num_threads(ctypes.c_int(n))
