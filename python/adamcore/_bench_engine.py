"""``python -m adamcore bench --engine deepspeed``: the optimizer measured inside DeepSpeed.

Two ranks on this host (DeepSpeed's CPU accelerator, gloo) train an MLP under ZeRO
stage 2 with ``offload_optimizer: cpu`` and a bf16 model (ZeRO-Offload's usual setup:
float32 master weights and Adam state on the CPU, one flat partition per rank). Each
model size runs with ``deepspeed.ops.adam.DeepSpeedCPUAdam`` and with
``adamcore.torch.AdamW`` as the optimizer, alternating, for several rounds. Per
training step each rank times the forward pass, the backward pass (which includes
ZeRO-2's gradient reduce-scatter), ``engine.step()`` as a whole and, inside it, the
optimizer's own ``step()``; the rest of ``engine.step()`` is DeepSpeed's (gradient
copy and norm, the bf16 copy of the new weights, the all-gather). Reported: medians
over the timed steps of rank 0, the spread between rounds, and the optimizer's share
of the whole step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from adamcore._cli import positive_int

DEFAULT_WIDTHS = (512, 1024, 2048)
QUICK_WIDTHS = (512, 1024)
DEPTH = 4  # hidden Linear(width, width) layers
MICRO_BATCH = 4
OPTIMIZERS = ("DeepSpeedCPUAdam", "adamcore.torch.AdamW")
# Per step: forward, backward (with ZeRO-2's gradient reduce-scatter), engine.step() as
# a whole and, inside it, the client optimizer's step() and ZeRO's own timers: gradient
# preparation (copy into the float32 partition, unscale/clip), the optimizer phase (the
# client's step plus the copy of the new weights into the bf16 partition) and the
# all-gather of the updated bf16 weights.
ZERO_TIMERS = {"optimizer_gradients": "zero_gradients", "optimizer_step": "zero_step",
               "optimizer_allgather": "zero_allgather"}
PHASES = ("forward", "backward", "engine_step", "client_step", *ZERO_TIMERS.values(), "iteration")
HYPER = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bench --engine`` (added to the bench subcommand)."""
    parser.add_argument("--engine", choices=("deepspeed",),
                        help="instead: measure the optimizer inside a training engine "
                             "(deepspeed: ZeRO-2 offload, 2 ranks, DeepSpeedCPUAdam vs "
                             "adamcore.torch.AdamW)")
    parser.add_argument("--engine-widths", type=positive_int, nargs="+", metavar="W",
                        help=f"--engine: MLP widths, {DEPTH} Linear(W, W) layers each "
                             f"(default: {' '.join(map(str, DEFAULT_WIDTHS))}; quick: "
                             f"{' '.join(map(str, QUICK_WIDTHS))})")
    parser.add_argument("--engine-steps", type=positive_int, metavar="N",
                        help="--engine: timed steps per round (default: 20; quick: 8)")
    parser.add_argument("--engine-rounds", type=positive_int, metavar="N",
                        help="--engine: rounds, alternating the optimizers (default: 3; quick: 2)")


# ---------------------------------------------------------------- the ranks


def _model(width: int):
    import torch

    torch.manual_seed(0)
    layers: List[Any] = []
    for _ in range(DEPTH):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers[:-1])


def _config() -> Dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "bf16": {"enabled": True},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


class _ZeroTimers:
    """Stands in for the timers DeepSpeed gives its ZeRO optimizer (those of
    ``wall_clock_breakdown``, without the engine's per-step logging): adds each timed
    interval to ``pending[phase]``."""

    class _Timer:
        def __init__(self, pending: Dict[str, float], phase: str) -> None:
            self.pending, self.phase, self.t0 = pending, phase, 0.0

        def start(self) -> None:
            self.t0 = time.perf_counter()

        def stop(self, *args: Any, **kwargs: Any) -> None:
            self.pending[self.phase] = self.pending.get(self.phase, 0.0) + time.perf_counter() - self.t0

    def __init__(self, pending: Dict[str, float]) -> None:
        self.pending = pending
        self.timers: Dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        if name not in self.timers:
            self.timers[name] = self._Timer(self.pending, ZERO_TIMERS.get(name, name))
        return self.timers[name]

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


def _time_client_step(optimizer, pending: Dict[str, float]) -> None:
    """Time every call of the client optimizer's ``step`` (DeepSpeed calls it once per
    step and group here)."""
    step = optimizer.step

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            pending["client_step"] = pending.get("client_step", 0.0) + time.perf_counter() - start

    optimizer.step = timed


def _measure(width: int, which: str, steps: int, warmup: int) -> Dict[str, Any]:
    import deepspeed
    import torch

    model = _model(width)
    if which == "DeepSpeedCPUAdam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(model.parameters(), adamw_mode=True, **HYPER)
    else:
        import adamcore.torch as act

        optimizer = act.AdamW(model.parameters(), **HYPER)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=_config())
    times: Dict[str, List[float]] = {phase: [] for phase in PHASES}
    pending: Dict[str, float] = {}
    _time_client_step(optimizer, pending)
    engine.optimizer.timers = _ZeroTimers(pending)
    partition = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    generator = torch.Generator().manual_seed(engine.global_rank)
    for i in range(warmup + steps):
        x = torch.randn(MICRO_BATCH, width, generator=generator).to(torch.bfloat16)
        pending.clear()
        t0 = time.perf_counter()
        loss = engine(x).float().square().mean()
        t1 = time.perf_counter()
        engine.backward(loss)
        t2 = time.perf_counter()
        engine.step()
        t3 = time.perf_counter()
        if i < warmup:
            continue
        for phase in ("client_step", *ZERO_TIMERS.values()):
            times[phase].append(pending.get(phase, 0.0))
        times["forward"].append(t1 - t0)
        times["backward"].append(t2 - t1)
        times["engine_step"].append(t3 - t2)
        times["iteration"].append(t3 - t0)
    engine.destroy()
    return {"times": times, "partition": partition,
            "params": sum(p.numel() for p in _model(width).parameters())}


def _worker(out: str, plan: Dict[str, Any]) -> None:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, cores // local))  # torch, like adamcore, divides the cores
    import deepspeed

    import adamcore

    # The CPU accelerator JIT-builds a shared-memory all-reduce op when its communication
    # backend starts; it serves only inference_all_reduce, not ZeRO's collectives (gloo).
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    results: Dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                               "adamcore_threads": adamcore.get_num_threads(),
                               "deepspeed": deepspeed.__version__, "torch": torch.__version__,
                               "runs": []}
    for round_ in range(plan["rounds"]):
        for width in plan["widths"]:
            order = OPTIMIZERS if round_ % 2 == 0 else OPTIMIZERS[::-1]
            for which in order:
                run = _measure(width, which, plan["steps"], plan["warmup"])
                results["runs"].append(dict(run, round=round_, width=width, optimizer=which))
    Path(out).write_text(json.dumps(results))


# ---------------------------------------------------------------- the launcher


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(plan: Dict[str, Any], out_dir: Path, world_size: int = 2) -> List[Dict[str, Any]]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world_size),
               LOCAL_WORLD_SIZE=str(world_size), GLOO_SOCKET_IFNAME="lo")
    outs = [out_dir / f"engine-rank{r}.json" for r in range(world_size)]
    logs = [out_dir / f"engine-rank{r}.log" for r in range(world_size)]
    procs = []
    for r in range(world_size):
        with open(logs[r], "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "adamcore._bench_engine", str(outs[r]), json.dumps(plan)],
                env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for r, code in enumerate(codes):
        if code != 0:
            tail = logs[r].read_text()[-4000:]
            raise SystemExit(f"bench --engine: rank {r} failed (exit {code}); its log, "
                             f"{logs[r]}, ends:\n{tail}")
    return [json.loads(out.read_text()) for out in outs]


def _summary(rank_result: Dict[str, Any], widths, rounds) -> List[Dict[str, Any]]:
    rows = []
    for width in widths:
        for which in OPTIMIZERS:
            runs = [r for r in rank_result["runs"] if r["width"] == width and r["optimizer"] == which]
            row: Dict[str, Any] = {"width": width, "optimizer": which, "params": runs[0]["params"],
                                   "partition": runs[0]["partition"]}
            for phase in PHASES:
                every = [t for r in runs for t in r["times"][phase]]
                per_round = [statistics.median(r["times"][phase]) for r in runs]
                row[phase] = statistics.median(every)
                row[phase + "_rounds"] = per_round
            row["share"] = row["client_step"] / row["iteration"]
            rows.append(row)
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _table(rows: List[Dict[str, Any]]) -> str:
    head = ("| model (params) | per-rank partition | optimizer | optimizer.step() ms "
            "(rounds) | engine.step() ms: grads / optimizer + bf16 copy / all-gather / rest "
            "| forward ms | backward ms | whole step ms | optimizer share |")
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        inside = [row[phase] for phase in ZERO_TIMERS.values()]
        parts = " / ".join(_ms(t) for t in inside + [row["engine_step"] - sum(inside)])
        rounds = "–".join(_ms(t) for t in (min(row["client_step_rounds"]), max(row["client_step_rounds"])))
        lines.append(
            f"| {row['params'] / 1e6:.1f}M | {row['partition'] / 1e6:.2f}M | {row['optimizer']} "
            f"| {_ms(row['client_step'])} ({rounds}) | {_ms(row['engine_step'])}: {parts} "
            f"| {_ms(row['forward'])} | {_ms(row['backward'])} | {_ms(row['iteration'])} "
            f"| {row['share'] * 100:.0f}% |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise SystemExit("bench --engine deepspeed needs DeepSpeed (pip install deepspeed)")
    from .bench import cpu_identity

    quick = args.quick
    plan = {"widths": list(args.engine_widths or (QUICK_WIDTHS if quick else DEFAULT_WIDTHS)),
            "steps": args.engine_steps or (8 if quick else 20),
            "rounds": args.engine_rounds or (2 if quick else 3), "warmup": 3}
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_identity()
    load_before = os.getloadavg()
    started = time.time()
    ranks = _launch(plan, args.out)
    rows = _summary(ranks[0], plan["widths"], plan["rounds"])
    result = {"cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
              "seconds": time.time() - started, "plan": plan,
              **{k: ranks[0][k] for k in ("torch_threads", "adamcore_threads", "deepspeed", "torch")},
              "rows": rows, "ranks": ranks}
    (args.out / "engine.json").write_text(json.dumps(result, indent=1))
    print(f"DeepSpeed {result['deepspeed']} ZeRO-2 offload, bf16 model, 2 ranks on "
          f"{cpu['cpu']} (family {cpu['cpu_family']}, model {cpu['cpu_model']}), "
          f"{result['usable_cpus']} usable CPUs; per rank: torch {result['torch_threads']} "
          f"thread(s), adamcore {result['adamcore_threads']}; load average before/after "
          f"{load_before[0]:.1f}/{result['load_average_after'][0]:.1f}")
    print(f"MLP of {DEPTH} Linear(W, W) layers, micro-batch {MICRO_BATCH}; medians of "
          f"{plan['rounds']} x {plan['steps']} steps on rank 0 (optimizer: range of the "
          f"rounds' medians)")
    print(_table(rows))
    print(f"(written to {args.out / 'engine.json'})")
    return 0


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(sys.argv[2]))
