#!/usr/bin/env python3
"""Per-step cost of the optimizer front-ends' Python side, old code against new, in one run.

Steps ``adamcore.AdamW`` (NumPy) and ``adamcore.torch.AdamW`` over N small float32
parameters (default 64 elements each, so the kernels' own time is small and the Python
around them shows) on one thread, and reports the median time of one ``step`` call.
Every variant runs in this process, interleaved step by step, so a busy machine slows
them all alike:

- ``native``: the bare ``AdamGroup.step`` over the same arrays (the floor);
- ``<rev>``: the front-ends as they were at a git revision (``--rev``, repeatable),
  extracted into a temporary package that uses the working tree's extension;
- ``tree``: the front-ends of the working tree (the installed editable package).

    python bench/group_overhead.py --rev e6bdb84 --rev HEAD
    python bench/group_overhead.py --sizes 1 50 500 --steps 1000 --no-torch
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

import adamcore

ROOT = Path(__file__).resolve().parent.parent
_CORE_SHIM = "import sys\nimport adamcore._core as _core\nsys.modules[__name__] = _core\n"


def package_at(rev: str, where: Path) -> Any:
    """``python/adamcore`` at ``rev`` as an importable package of its own name, whose
    ``_core`` is the working tree's extension (one extension per process)."""
    name = "adamcore_" + "".join(c if c.isalnum() else "_" for c in rev)
    target = where / name
    target.mkdir()
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "python/adamcore/"],
                             check=True, capture_output=True, text=True).stdout.split()
    for path in listing:
        if path.endswith(".py"):
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
                                  check=True, capture_output=True, text=True).stdout
            (target / Path(path).name).write_text(text)
    (target / "_core.py").write_text(_CORE_SHIM)
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))
    return importlib.import_module(name)


def numpy_case(package: Any, arrays: List[np.ndarray], grads: List[np.ndarray]) -> Callable[[], Any]:
    optimizer = importlib.import_module(package.__name__ + ".optim").AdamW(arrays, lr=1e-3)
    return lambda: optimizer.step(grads)


def torch_case(package: Any, arrays: List[np.ndarray], grads: List[np.ndarray]) -> Callable[[], Any]:
    import torch
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    optimizer = importlib.import_module(package.__name__ + ".torch").AdamW(params, lr=1e-3)
    return optimizer.step


def native_case(arrays: List[np.ndarray], grads: List[np.ndarray]) -> Callable[[], Any]:
    params = [a.copy() for a in arrays]
    group = adamcore.AdamGroup(params, [np.zeros_like(a) for a in arrays],
                               [np.zeros_like(a) for a in arrays])
    count = [0]

    def step() -> None:
        count[0] += 1
        group.step(grads, step=count[0], lr=1e-3, weight_decay=1e-2, decoupled=True)
    return step


def measure(cases: Dict[str, Callable[[], Any]], steps: int, warmup: int) -> Dict[str, float]:
    """Median µs per call of each case, the cases interleaved call by call."""
    for _ in range(warmup):
        for run in cases.values():
            run()
    times: Dict[str, List[float]] = {name: [] for name in cases}
    clock = time.perf_counter_ns
    for _ in range(steps):
        for name, run in cases.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: statistics.median(values) / 1e3 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", action="append", default=None,
                        help="git revision of the front-ends to compare with (repeatable; default e6bdb84)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50, 500], help="numbers of parameters")
    parser.add_argument("--numel", type=int, default=64, help="elements per parameter")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--no-torch", action="store_true", help="NumPy front-end only")
    args = parser.parse_args()
    revs = args.rev or ["e6bdb84"]
    adamcore.set_num_threads(1)
    with_torch = not args.no_torch
    if with_torch:
        import torch
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        packages = {rev: package_at(rev, Path(tmp)) for rev in revs}
        packages["tree"] = adamcore
        rng = np.random.default_rng(0)
        print(f"median µs per step, {args.numel} float32 elements per parameter, 1 thread, "
              f"{args.steps} steps interleaved")
        header = ["front-end", "N"] + list(packages) + ["native"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for size in args.sizes:
            arrays = [rng.standard_normal(args.numel).astype(np.float32) for _ in range(size)]
            grads = [rng.standard_normal(args.numel).astype(np.float32) for _ in range(size)]
            kinds = [("numpy", numpy_case)] + ([("torch", torch_case)] if with_torch else [])
            for kind, make in kinds:
                cases = {label: make(package, [a.copy() for a in arrays], grads)
                         for label, package in packages.items()}
                cases["native"] = native_case(arrays, grads)
                result = measure(cases, args.steps, args.warmup)
                print(f"| {kind} | {size} | " + " | ".join(f"{result[label]:.1f}" for label in cases) + " |",
                      flush=True)


if __name__ == "__main__":
    main()
