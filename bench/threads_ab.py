#!/usr/bin/env python3
"""A/B of adamcore's threading: the installed build, idle and beside busy processes.

Runs, for whichever adamcore build is installed now, the measurements of issue 8 that
``python -m adamcore bench --cases contended train-loop`` makes (same functions):

- Adam single steps at 64K and 1M with 1 and 2 threads (torch fused beside it when
  torch is installed), idle and beside busy processes this script starts and stops;
  median, p90, p99, max, and the target ratios (2-thread median / 1-thread median
  <= 1.5x, 2-thread p99 / 1-thread median <= 3x);
- a training loop (an MLP of ~1.1M parameters: forward, backward, AdamW step) with
  adamcore.torch.AdamW on 1 and 2 adamcore threads against torch.optim.AdamW(fused=True),
  idle and contended (needs torch).

It prints markdown tables and writes everything to a JSON file. For an A/B, run it once
per build and compare the two files::

    python bench/threads_ab.py --label openmp --json ab-openmp.json
    # ... rebuild/reinstall the other design ...
    python bench/threads_ab.py --label pool --json ab-pool.json
    python bench/threads_ab.py --compare ab-openmp.json ab-pool.json

The two runs are minutes apart, so for a fair A/B run them back to back on the same,
otherwise quiet machine (each file records the load average), and prefer ratios measured
within one run (the target ratios, adamcore / torch fused) over raw times across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import adamcore
from adamcore import bench


# ---------------------------------------------------------------- the build
def build_identity() -> dict:
    """What is installed: the extension's path, size, hash and mtime, runtime_info(),
    and the source tree's commit (if this script sits in a git checkout)."""
    so = Path(adamcore._core.__file__)
    digest = hashlib.sha256(so.read_bytes()).hexdigest()[:16]
    ident = {"extension": str(so), "extension_sha256_16": digest,
             "extension_mtime": time.strftime("%Y-%m-%d %H:%M:%S",
                                              time.localtime(so.stat().st_mtime)),
             "runtime_info": adamcore.runtime_info()}
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "cpp"],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            ident["source_commit"] = head.stdout.strip() + ("+cpp-changes"
                                                            if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ident


# ---------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    steps = args.steps or (300 if quick else 1000)
    iterations = args.iterations or (40 if quick else 200)
    budget = args.budget if args.budget is not None else (5.0 if quick else 120.0)
    impls = ["adamcore"] + (["torch-fused"] if bench.torch_available() and not args.no_torch
                            else [])
    if "torch-fused" in impls:
        import torch  # noqa: F401  (loaded before any step: one OpenMP runtime, as in bench)
    train = not args.no_train and bench.torch_available()
    total = bench.contended_rounds(args.sizes, steps) + (bench.train_rounds(iterations)
                                                        if train else 0)
    machine = bench.machine_info()
    progress = bench.make_progress(total, not args.no_progress)
    started = time.perf_counter()
    try:
        progress.set_description("contended")
        contended = bench.measure_contended(args.sizes, (1, 2), impls, steps,
                                            spinners=args.spinners, budget_seconds=budget,
                                            on_round=lambda: progress.update(1))
        train_loop = None
        if train:
            progress.set_description("train-loop")
            train_loop = bench.measure_train_loop(iterations, batch=args.batch,
                                                  dims=tuple(args.dims),
                                                  torch_threads=args.torch_threads,
                                                  spinners=args.spinners,
                                                  budget_seconds=budget,
                                                  warmup=1 if quick else 2,
                                                  on_round=lambda: progress.update(1))
    finally:
        progress.close()
    return {"label": args.label, "build": build_identity(), "machine": machine,
            "settings": {"quick": quick, "steps_at_64k": steps, "iterations": iterations,
                         "budget_seconds": budget, "sizes": list(args.sizes),
                         "spinners": args.spinners, "batch": args.batch,
                         "dims": list(args.dims), "torch_threads": args.torch_threads},
            "contended": contended, "train_loop": train_loop,
            "elapsed_seconds": time.perf_counter() - started,
            "load_average_at_end": list(os.getloadavg())}


# ---------------------------------------------------------------- markdown
def _us(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    us = seconds * 1e6
    return f"{us:,.1f}" if us < 100 else f"{us:,.0f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _describe(result: dict) -> str:
    m, b = result["machine"], result["build"]
    cpu = f"{m['cpu']} (family {m.get('cpu_family')}, model {m.get('cpu_model')})"
    info = b["runtime_info"]
    lines = [f"**{result['label']}**: extension {b['extension_sha256_16']} built "
             f"{b['extension_mtime']}" + (f", source {b['source_commit']}"
                                          if "source_commit" in b else "")
             + f"; ISA {info['isa']}, {info['threads']} threads, parallel threshold "
             f"{info['parallel_threshold']}; {cpu}, {m['usable_cpus']} usable CPUs; "
             f"torch {m.get('torch', 'not installed')}."]
    for part in ("contended", "train_loop"):
        res = result.get(part)
        if not res:
            continue
        for info in res["conditions"]:
            text = (f"{part} / {info['condition']}: load average "
                    f"{info['load_average_before']:.1f} before")
            spin = info.get("spinners")
            if spin:
                shares = spin.get("cpu_share_each") or []
                text += f"; {spin['count']} busy processes" + (
                    f", each got {', '.join(f'{s:.0%}' for s in shares)} of a CPU"
                    if shares else "")
            stalls = bench.stall_delta(info)
            if stalls is not None:
                text += f"; adamcore counted {stalls} stalls"
            lines.append(f"- {text}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = [_describe(result), ""]
    c = result["contended"]
    out += ["Adam single steps (µs):", "",
            "| condition | size | implementation | threads | median | p90 | p99 | max | steps |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in c["rows"]:
        out.append(f"| {r['condition']} | {bench.format_count(r['elements'])} | "
                   f"{r['implementation']} | {r['threads']} | {_us(r['median_seconds'])} | "
                   f"{_us(r['p90_seconds'])} | {_us(r['p99_seconds'])} | "
                   f"{_us(r['max_seconds'])} | {r['count']} |")
    t = bench.CONTENDED_TARGETS
    out += ["", f"Ratios to the 1-thread median, same condition and size (targets for "
                f"adamcore contended: median ≤ {t['median']}×, p99 ≤ {t['p99']}×):", "",
            "| condition | size | implementation | 2t median ÷ 1t median | 2t p99 ÷ 1t median | "
            "2t p99 ÷ 1t p99 | targets |", "|---|---|---|---|---|---|---|"]
    for q in c["ratios"]:
        verdict = ""
        if q["median_target_met"] is not None:
            verdict = (f"median {'met' if q['median_target_met'] else '**missed**'}, "
                       f"p99 {'met' if q['p99_target_met'] else '**missed**'}")
        out.append(f"| {q['condition']} | {bench.format_count(q['elements'])} | "
                   f"{q['implementation']} | {_x(q['median_over_one_thread_median'])} | "
                   f"{_x(q['p99_over_one_thread_median'])} | "
                   f"{_x(q.get('p99_over_one_thread_p99'))} | {verdict} |")
    tl = result.get("train_loop")
    if tl:
        out += ["", f"Training loop ({tl['model']}, {tl['parameters']:,} parameters, batch "
                    f"{tl['batch']}, torch threads {tl['torch_threads']}; µs):", "",
                "| condition | optimizer | adamcore threads | step median | step p90 | "
                "iteration median | iteration p90 | step ÷ torch fused | iterations |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in tl["rows"]:
            out.append(f"| {r['condition']} | {r['api']} | "
                       f"{'—' if r['adamcore_threads'] is None else r['adamcore_threads']} | "
                       f"{_us(r['step']['median_seconds'])} | {_us(r['step']['p90_seconds'])} | "
                       f"{_us(r['iteration']['median_seconds'])} | "
                       f"{_us(r['iteration']['p90_seconds'])} | "
                       f"{_x(r['step_median_over_torch_fused'])} | {r['step']['count']} |")
    elif tl is None:
        out += ["", "Training loop: not run (torch not installed, or --no-train)."]
    return "\n".join(out)


def compare(a: dict, b: dict) -> str:
    """Side by side: every row both runs have, B's time ÷ A's."""
    la, lb = a["label"], b["label"]
    out = [_describe(a), "", _describe(b), "",
           f"Adam single steps (µs), {la} against {lb}:", "",
           f"| condition | size | implementation | threads | {la} median | {lb} median | "
           f"{lb} ÷ {la} | {la} p99 | {lb} p99 | {lb} ÷ {la} |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    rows_b = {(r["condition"], r["elements"], r["implementation"], r["threads"]): r
              for r in b["contended"]["rows"]}
    for ra in a["contended"]["rows"]:
        rb = rows_b.get((ra["condition"], ra["elements"], ra["implementation"], ra["threads"]))
        if rb is None:
            continue
        out.append(f"| {ra['condition']} | {bench.format_count(ra['elements'])} | "
                   f"{ra['implementation']} | {ra['threads']} | {_us(ra['median_seconds'])} | "
                   f"{_us(rb['median_seconds'])} | "
                   f"{_x(rb['median_seconds'] / ra['median_seconds'])} | "
                   f"{_us(ra['p99_seconds'])} | {_us(rb['p99_seconds'])} | "
                   f"{_x(rb['p99_seconds'] / ra['p99_seconds'])} |")
    out += ["", "Target ratios (each within its own run):", "",
            f"| condition | size | implementation | {la} 2t÷1t median | {lb} 2t÷1t median | "
            f"{la} 2t p99÷1t median | {lb} 2t p99÷1t median |", "|---|---|---|---|---|---|---|"]
    ratios_b = {(q["condition"], q["elements"], q["implementation"], q["threads"]): q
                for q in b["contended"]["ratios"]}
    for qa in a["contended"]["ratios"]:
        qb = ratios_b.get((qa["condition"], qa["elements"], qa["implementation"],
                           qa["threads"]))
        if qb is None:
            continue
        out.append(f"| {qa['condition']} | {bench.format_count(qa['elements'])} | "
                   f"{qa['implementation']} | {_x(qa['median_over_one_thread_median'])} | "
                   f"{_x(qb['median_over_one_thread_median'])} | "
                   f"{_x(qa['p99_over_one_thread_median'])} | "
                   f"{_x(qb['p99_over_one_thread_median'])} |")
    ta, tb = a.get("train_loop"), b.get("train_loop")
    if ta and tb:
        out += ["", f"Training loop (µs; step ÷ torch fused within each run):", "",
                f"| condition | optimizer | adamcore threads | {la} step median | "
                f"{lb} step median | {la} iteration median | {lb} iteration median | "
                f"{la} step ÷ fused | {lb} step ÷ fused |",
                "|---|---|---|---|---|---|---|---|---|"]
        tb_rows = {(r["condition"], r["api"], r["adamcore_threads"]): r for r in tb["rows"]}
        for ra in ta["rows"]:
            rb = tb_rows.get((ra["condition"], ra["api"], ra["adamcore_threads"]))
            if rb is None:
                continue
            out.append(f"| {ra['condition']} | {ra['api']} | "
                       f"{'—' if ra['adamcore_threads'] is None else ra['adamcore_threads']} | "
                       f"{_us(ra['step']['median_seconds'])} | "
                       f"{_us(rb['step']['median_seconds'])} | "
                       f"{_us(ra['iteration']['median_seconds'])} | "
                       f"{_us(rb['iteration']['median_seconds'])} | "
                       f"{_x(ra['step_median_over_torch_fused'])} | "
                       f"{_x(rb['step_median_over_torch_fused'])} |")
    return "\n".join(out)


# ---------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"),
                        help="print two earlier runs side by side instead of measuring")
    parser.add_argument("--label", default="installed", help="name of this build in tables")
    parser.add_argument("--json", type=Path, help="write the whole result here")
    parser.add_argument("--quick", action="store_true",
                        help="300 steps at 64K (60 at 1M), 40 training iterations, 5 s budget "
                             "per size and condition (default 1000/200/200, 120 s)")
    parser.add_argument("--steps", type=int, help="single steps per variant at 64K")
    parser.add_argument("--iterations", type=int,
                        help="training iterations per variant and condition")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(bench.CONTENDED_SIZES),
                        metavar="N", help="elements per step (default: 65536 1048576)")
    parser.add_argument("--dims", type=int, nargs="+", default=list(bench.TRAIN_DIMS),
                        metavar="D", help="the MLP's layer widths (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=bench.TRAIN_BATCH,
                        help=f"training batch (default {bench.TRAIN_BATCH})")
    parser.add_argument("--torch-threads", type=int,
                        help="torch's intra-op threads in the training loop (default: torch's)")
    parser.add_argument("--spinners", type=int,
                        help="busy processes when contended (default: one per usable CPU)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="no new round after this long per size and condition")
    parser.add_argument("--no-train", action="store_true", help="skip the training loop")
    parser.add_argument("--no-torch", action="store_true",
                        help="no torch fused beside adamcore in the single-step case")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        print(compare(a, b))
        return 0
    for name in ("steps", "iterations", "spinners", "batch", "torch_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if len(args.dims) < 2 or min(args.dims) < 1 or min(args.sizes) < 1:
        parser.error("--dims needs two or more widths >= 1 and --sizes sizes >= 1")
    result = run(args)
    print(markdown(result))
    print(f"\n(finished in {result['elapsed_seconds']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
