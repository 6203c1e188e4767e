"""``python -m adamcore bench``'s options and its run: the ordinary cases, then the
contended and train-loop cases, the table, the JSON and the plot."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import adamcore
from adamcore import _bench_engine
from adamcore._cli import positive_int

from .cases import ALL_KINDS, CASE_KINDS, CONTENDED_IMPLEMENTATIONS, CONTENDED_SIZES, \
    FLOAT32_STEP, HYPER, LAYOUT_OPTIMIZERS, LAYOUTS, OPTIMIZERS, QUICK_SIZES, FULL_SIZES, \
    SPECIAL_KINDS, TRAIN_BATCH, TRAIN_DIMS, build_cases, format_count
from .checks import first_step_agrees
from .contended import contended_rounds, measure_contended
from .report import format_contended, format_layout_legend, format_table, format_time, \
    format_train_loop, machine_info, plot, summarize
from .runners import PEERS, available_implementations, set_all_threads
from .timing import Measurement, make_progress, measure_case, measure_thread_crossover
from .train_loop import measure_train_loop, train_rounds


# ---------------------------------------------------------------- command line
def _package():
    """``adamcore.bench``: its docstring is the command's description, and names looked
    up through it at run time can be replaced there (tests replace ``torch_available``)."""
    return sys.modules[__package__]


def _size(text: str) -> int:
    """'4096', '4K', '16M' or '2^20'."""
    t = text.strip().upper()
    try:
        if t.startswith("2^"):
            value = 1 << int(t[2:])
        elif t.endswith("K"):
            value = int(t[:-1]) << 10
        elif t.endswith("M"):
            value = int(t[:-1]) << 20
        else:
            value = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4096, 64K, 16M or 2^20, "
                                         f"got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="benchmark adamcore against NumPy, torch and DeepSpeed",
        description=_package().__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a short run (under a minute): fewer sizes, Adam only, a GPT-2 "
                             "subset, 200 medium tensors, fewer repeats; contended: 300 "
                             "steps at 64K; train-loop: 40 iterations; layouts: 1M and 16M")
    parser.add_argument("--sizes", type=_size, nargs="+", metavar="N",
                        help="single-tensor sizes (e.g. 4K 64K 1M 16M), the layouts' too "
                             "(default for layouts: 64K 1M 16M 64M; 1M 16M quick)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, metavar="OPT",
                        help=f"optimizers to run, from {', '.join(OPTIMIZERS)}")
    parser.add_argument("--threads", type=positive_int, nargs="+", metavar="T",
                        help="thread counts (default: 1 2)")
    parser.add_argument("--cases", nargs="+", choices=ALL_KINDS, metavar="CASE",
                        help=f"case kinds to run, from {', '.join(ALL_KINDS)} (default: all). "
                             f"contended: Adam single steps at 64K and 1M with 1 and 2 "
                             f"threads, idle and beside busy processes it starts itself; "
                             f"train-loop: an MLP's forward, backward and AdamW step "
                             f"(needs torch), idle and contended; layouts: Adam/AdamW with "
                             f"16-bit buffers (needs ml_dtypes), each against its reference")
    parser.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), metavar="LAYOUT",
                        help=f"layouts for the layouts case, from {', '.join(LAYOUTS)} "
                             f"(default: all)")
    parser.add_argument("--peers", nargs="+", choices=PEERS, metavar="PEER",
                        help=f"peers to run, from {', '.join(PEERS)} (default: every one "
                             f"installed)")
    parser.add_argument("--isas", nargs="+", metavar="ISA",
                        help="run adamcore once per listed ISA, interleaved with the rest "
                             "(the first is the reference for speed-ups); default: the "
                             "active ISA only")
    parser.add_argument("--repeats", type=positive_int,
                        help="timed rounds per case (default: 5 quick, 11 full)")
    parser.add_argument("--batch-ms", type=float,
                        help="target duration of one timed batch in ms (default: 1 quick, 10)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="stop starting rounds for a (case, optimizer, threads) group "
                             "after this long; contended: per (condition, size), train-loop: "
                             "per condition (default: 3 quick, 120)")
    parser.add_argument("--contended-sizes", type=_size, nargs="+", metavar="N",
                        help="sizes for the contended case (default: 64K 1M)")
    parser.add_argument("--steps", type=positive_int, metavar="N",
                        help="contended case: single steps per variant at 64K, fewer at larger "
                             "sizes (200 of 1000 at 1M) (default: 1000; 300 quick)")
    parser.add_argument("--iterations", type=positive_int, metavar="N",
                        help="train-loop case: timed iterations per variant and condition "
                             "(default: 200; 40 quick)")
    parser.add_argument("--train-batch", type=positive_int, metavar="N",
                        help=f"train-loop case: batch size (default: {TRAIN_BATCH})")
    parser.add_argument("--train-dims", type=positive_int, nargs="+", metavar="D",
                        help="train-loop case: the MLP's layer widths, input to output "
                             f"(default: {' '.join(map(str, TRAIN_DIMS))})")
    parser.add_argument("--train-torch-threads", type=positive_int, metavar="N",
                        help="train-loop case: torch's intra-op threads (default: torch's "
                             "own default)")
    parser.add_argument("--spinners", type=positive_int, metavar="N",
                        help="busy processes for the contended conditions (default: one per "
                             "usable CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="directory for bench.json and bench.png (default: ./bench-results)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--crossover", action="store_true",
                        help="instead: adamcore 1 vs 2 threads at 4K..1M (threshold forced "
                             "to 0), to place the parallel threshold")
    _bench_engine.add_arguments(parser)
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    if args.engine:
        return _bench_engine.run(args)
    quick = args.quick
    repeats = args.repeats or (5 if quick else 11)
    batch_seconds = (args.batch_ms if args.batch_ms is not None else (1 if quick else 10)) / 1e3
    if batch_seconds <= 0:
        raise SystemExit("--batch-ms must be > 0")
    budget = args.budget if args.budget is not None else (3.0 if quick else 120.0)
    if not budget > 0:
        raise SystemExit("--budget must be > 0")
    if args.train_dims is not None and len(args.train_dims) < 2:
        raise SystemExit("--train-dims: give at least an input and an output width")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.crossover:
        return _run_crossover(args, repeats, batch_seconds)

    sizes = args.sizes or (QUICK_SIZES if quick else FULL_SIZES)
    optimizers = args.optimizers or (("adam",) if quick else OPTIMIZERS)
    threads_list = list(dict.fromkeys(args.threads or (1, 2)))
    kinds = args.cases or ALL_KINDS
    special = [k for k in kinds if k in SPECIAL_KINDS]
    kinds = [k for k in kinds if k in CASE_KINDS]
    wanted = args.peers if args.peers is not None else PEERS
    installed = available_implementations(wanted)
    missing = [p for p in wanted if p not in installed]
    if args.peers is not None and missing:
        raise SystemExit(f"--peers: not installed here: {', '.join(missing)}")
    if args.isas:
        unknown = [i for i in args.isas if i not in adamcore.available_isas()]
        if unknown:
            raise SystemExit(f"--isas: not supported on this CPU: {', '.join(unknown)} "
                             f"(available: {', '.join(adamcore.available_isas())})")
        ours = [f"adamcore[{isa}]" for isa in dict.fromkeys(args.isas)]
    else:
        ours = ["adamcore"]
    implementations = ours + [p for p in PEERS if p in wanted and p in installed]

    machine = machine_info()  # before the run: its load average is the one that matters
    layout_notes = []
    if "layouts" in kinds and not _have_ml_dtypes():
        kinds = [k for k in kinds if k != "layouts"]
        layout_notes.append("layouts: skipped (ml_dtypes is not installed)")
    cases = build_cases(kinds, sizes, quick, layout_sizes=args.sizes, layouts=args.layouts)
    # The layouts are Adam's and AdamW's (DeepSpeed's included).
    groups = [(c, o) for c in cases for o in optimizers
              if c.layout is None or o in LAYOUT_OPTIMIZERS]
    if "layouts" in kinds and not any(c.layout for c, _ in groups):
        layout_notes.append(f"layouts: skipped (they run for "
                            f"{' and '.join(LAYOUT_OPTIMIZERS)} only)")
    contended_sizes = args.contended_sizes or CONTENDED_SIZES
    steps_at_64k = args.steps or (300 if quick else 1000)
    iterations = args.iterations or (40 if quick else 200)
    contended_impls = [i for i in CONTENDED_IMPLEMENTATIONS if i in implementations]
    run_train = "train-loop" in special and _package().torch_available()
    total = len(groups) * len(threads_list) * repeats
    if "contended" in special:
        total += contended_rounds(contended_sizes, steps_at_64k)
    if run_train:
        total += train_rounds(iterations)
    progress = make_progress(total, not args.no_progress)
    measurements: list[Measurement] = []
    checks = []
    contended: dict | None = None
    train_loop: dict | None = None
    started = time.perf_counter()
    saved_threads, saved_isa = adamcore.get_num_threads(), adamcore.get_isa()
    with ThreadPoolExecutor(max_workers=max(threads_list)) as pool:
        try:
            for case, optimizer in groups:
                progress.set_description(f"{case.name[:24]} {optimizer}")
                found, check = measure_case(case, optimizer, threads_list, implementations,
                                            repeats, batch_seconds, pool,
                                            on_repeat=lambda: progress.update(1),
                                            budget_seconds=budget)
                measurements += found
                checks.append({"case": case.name, "optimizer": optimizer, "first_step": check})
            set_all_threads(saved_threads)
            if "contended" in special:
                progress.set_description("contended")
                contended = measure_contended(
                    contended_sizes, threads_list, contended_impls, steps_at_64k,
                    spinners=args.spinners, budget_seconds=budget,
                    on_round=lambda: progress.update(1))
            if run_train:
                progress.set_description("train-loop")
                train_loop = measure_train_loop(
                    iterations, batch=args.train_batch or TRAIN_BATCH, spinners=args.spinners,
                    torch_threads=args.train_torch_threads,
                    dims=tuple(args.train_dims or TRAIN_DIMS), warmup=1 if quick else 2,
                    include_torch_fused="torch-fused" in implementations,
                    budget_seconds=budget, on_round=lambda: progress.update(1))
        finally:
            progress.close()
            set_all_threads(saved_threads)
            adamcore.set_isa(saved_isa)
    elapsed = time.perf_counter() - started

    rows = summarize(measurements)
    notes = [f"{c.name}: {c.note}" for c in cases if c.note] + layout_notes
    if rows:
        print(format_table(rows))
        print()
        print("time/step: median of %d rounds, implementations interleaved; GB/s: bytes a "
              "step must move (Adam/AdamW 28, AMSGrad 36, AdaGrad 20 per element) / time; "
              "%%bw: of the in-place stream (y += x, 12 B/element, same size and threads, "
              "same run; NumPy on 1 thread, torch add_ on more); "
              "adamcore x: this row's time / adamcore's. NumPy runs on one thread." % repeats)
        ran = list(dict.fromkeys(r["case"].split(" N=")[0] for r in rows
                                 if r["kind"] == "layouts"))
        if ran:
            print(format_layout_legend(ran))
    if contended is not None:
        print()
        print(format_contended(contended))
        short = [r for r in contended["rows"] if r["count"] < r["steps_wanted"]]
        for r in short[:1]:
            print(f"note: contended: --budget reached; some variants took fewer steps than "
                  f"wanted (e.g. {r['condition']} {format_count(r['elements'])}: "
                  f"{r['count']} of {r['steps_wanted']})")
    if "train-loop" in special:
        print()
        if train_loop is not None:
            print(format_train_loop(train_loop))
            cut = [r for r in train_loop["rows"] if r["step"]["count"] < iterations]
            if cut:
                print(f"note: train-loop: --budget reached; {cut[0]['condition']}: "
                      f"{cut[0]['step']['count']} of {iterations} iterations")
        else:
            notes.append("train-loop: skipped (torch is not installed)")
    for note in notes:
        print("note: " + note)
    cut = sorted({(r["case"], r["optimizer"], r["threads"], r["rounds"]) for r in rows
                  if r["rounds"] < repeats})
    for case, optimizer, threads, rounds in cut:
        print(f"note: {case}, {optimizer}, {threads} thread(s): {rounds} of {repeats} rounds "
              f"(--budget reached)")
    print(f"load average (1 min) at the start: {machine['load_average_1_5_15min'][0]:.1f} "
          f"on {machine['logical_cpus']} logical CPUs")
    bad = [(c["case"], c["optimizer"], name, v)
           for c in checks for name, v in c["first_step"].items()
           if not first_step_agrees(v, c["optimizer"])]
    for case, optimizer, name, v in bad:
        print(f"warning: {name} on {case} ({optimizer}) after one step: {v}")
    print(f"finished in {elapsed:.1f} s")

    result = {"machine": machine, "settings": {
        "quick": quick, "repeats": repeats, "batch_seconds": batch_seconds,
        "budget_seconds": budget,
        "threads": list(threads_list), "optimizers": list(optimizers),
        "cases": list(kinds) + special, "implementations": implementations,
        "hyperparameters": HYPER,
        "bandwidth_probe": "y += x over the case's element count, 12 bytes per element: "
                           "numpy.add on one thread; torch add_ on more (NumPy in Python "
                           "threads without torch); each row's 'api' says which",
        "special_cases": special, "contended_sizes": list(contended_sizes),
        "steps_at_64k": steps_at_64k, "train_iterations": iterations,
        "spinners": args.spinners,
        **({"layouts": {name: dataclasses.asdict(layout) for name, layout in LAYOUTS.items()},
            "layout_reference": FLOAT32_STEP} if "layouts" in kinds else {})},
        "notes": notes, "results": rows, "first_step_checks": checks,
        "contended": contended,
        "train_loop": (train_loop if train_loop is not None or "train-loop" not in special
                       else {"skipped": "torch is not installed"}),
        "elapsed_seconds": elapsed, "load_average_at_end": list(os.getloadavg())}
    json_path = args.out / "bench.json"
    json_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = args.out / "bench.png"
        if plot(rows, png):
            print(f"wrote {png}")
    return 1 if bad else 0


def _have_ml_dtypes() -> bool:
    return importlib.util.find_spec("ml_dtypes") is not None


def _run_crossover(args: argparse.Namespace, repeats: int, batch_seconds: float) -> int:
    sizes = args.sizes or tuple(1 << k for k in range(12, 21))
    progress = make_progress(len(sizes) * repeats, not args.no_progress)
    try:
        rows = measure_thread_crossover(sizes, repeats, batch_seconds,
                                        on_repeat=lambda: progress.update(1))
    finally:
        progress.close()
    print(f"{'elements':>10} {'1 thread':>11} {'2 threads':>11} {'2t speed-up':>11}")
    for r in rows:
        print(f"{format_count(r['elements']):>10} {format_time(r['one_thread_seconds']):>11} "
              f"{format_time(r['two_threads_seconds']):>11} {r['speedup_two_threads']:>10.2f}x")
    crossover = next((r["elements"] for i, r in enumerate(rows)
                      if all(s["speedup_two_threads"] > 1.0 for s in rows[i:])), None)
    print("two threads win from:", format_count(crossover) if crossover else "never (in range)")
    path = args.out / "crossover.json"
    path.write_text(json.dumps({"machine": machine_info(), "repeats": repeats, "rows": rows,
                                "two_threads_win_from": crossover}, indent=1))
    print(f"wrote {path}")
    return 0
