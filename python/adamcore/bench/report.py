"""Reporting: the tables (ordinary cases, contended, train-loop), the plot, and the
machine the run was on."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import List, Sequence

import numpy as np

import adamcore

from .cases import BYTES_PER_ELEMENT, CONTENDED_TARGETS, FLOAT32_STEP, LAYOUTS, OPTIMIZERS, \
    STREAM_BYTES_PER_ELEMENT, format_count
from .runners import STREAM
from .timing import Measurement


# ---------------------------------------------------------------- reporting


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def summarize(measurements: list[Measurement]) -> list[dict]:
    """One row per measurement with medians, GB/s, % of the same group's stream and
    adamcore's speed-up over it (the first adamcore row of each group is the reference)."""
    groups: dict[tuple, dict[str, Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.case, m.optimizer, m.threads), {})[m.implementation] = m
    rows = []
    for (case, optimizer, threads), by_name in groups.items():
        stream = by_name.get(STREAM)
        stream_gbps = stream.bytes_per_step / stream.median / 1e9 if stream else None
        reference = next((n for n in by_name if n.startswith("adamcore")), None)
        ours = by_name.get(reference)
        for name, m in by_name.items():
            gbps = m.bytes_per_step / m.median / 1e9
            rows.append({
                "case": case, "kind": m.kind, "optimizer": optimizer, "threads": threads,
                "implementation": name, "api": m.api, "elements": m.elements,
                "tensors": m.tensors, "bytes_per_step": m.bytes_per_step,
                "steps_per_batch": m.steps_per_batch,
                "seconds_per_step": m.seconds_per_step,
                "median_seconds": m.median, "rounds": len(m.seconds_per_step), "gbps": gbps,
                "fraction_of_stream": gbps / stream_gbps if stream_gbps else None,
                "adamcore_speedup": (m.median / ours.median
                                     if ours and name not in (reference, STREAM) else None),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'case':<34} {'opt':<8} {'thr':>3} {'implementation':<16} "
              f"{'time/step':>11} {'GB/s':>7} {'%bw':>5} {'adamcore x':>10}")
    lines = [header, "-" * len(header)]
    previous = None
    for r in rows:
        key = (r["case"], r["optimizer"], r["threads"])
        if previous is not None and key != previous:
            lines.append("")
        previous = key
        bw = "" if r["fraction_of_stream"] is None else f"{100 * r['fraction_of_stream']:.0f}"
        speed = "" if r["adamcore_speedup"] is None else f"{r['adamcore_speedup']:.2f}x"
        lines.append(f"{r['case'][:34]:<34} {r['optimizer']:<8} {r['threads']:>3} "
                     f"{r['implementation']:<16} {format_time(r['median_seconds']):>11} "
                     f"{r['gbps']:>7.1f} {bw:>5} {speed:>10}")
    return "\n".join(lines)


def format_layout_legend(names: Sequence[str]) -> str:
    """What the layout rows are: each layout's buffers, its bytes per element and its
    reference (the table's GB/s use the layout's bytes; adamcore-f32's are 28)."""
    lines = [f"layouts: adamcore's functional API on ml_dtypes.bfloat16 arrays; "
             f"{FLOAT32_STEP}: adamcore's float32 step on the same values (28 B/element); "
             f"adamcore x of a peer or of {FLOAT32_STEP}: its time / the layout's"]
    for name in names:
        layout = LAYOUTS[name]
        lines.append(f"  {name}: {layout.description}; {layout.bytes_per_element} B/element; "
                     f"against {', '.join(layout.peers)}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    """Time per step against size (single-tensor cases), log-log, one line per
    implementation, one panel per (optimizer, threads). Returns False if nothing to plot."""
    size_rows = [r for r in rows if r["kind"] == "sizes"]
    panels = sorted({(r["optimizer"], r["threads"]) for r in size_rows},
                    key=lambda k: (OPTIMIZERS.index(k[0]), k[1]))
    if not panels or len({r["elements"] for r in size_rows}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.5 * nrows), squeeze=False)
    for ax, (optimizer, threads) in zip(axes.flat, panels):
        panel = [r for r in size_rows if r["optimizer"] == optimizer and r["threads"] == threads]
        for name in dict.fromkeys(r["implementation"] for r in panel):
            pts = sorted((r["elements"], r["median_seconds"], r["bytes_per_step"]) for r in panel
                         if r["implementation"] == name)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            if name == STREAM:
                # The time a step would take if it moved its bytes at the stream's speed.
                per_elem = BYTES_PER_ELEMENT[optimizer] / STREAM_BYTES_PER_ELEMENT
                ax.plot(xs, [p[1] * per_elem for p in pts], "k--", label="bandwidth bound")
            else:
                ax.plot(xs, [p[1] for p in pts], marker="o", ms=3,
                        lw=2.5 if name.startswith("adamcore") else 1.2, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel("seconds per step (median)")
        ax.set_title(f"{optimizer}, {threads} thread{'s' if threads > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def cpu_identity() -> dict:
    """The first CPU's "model name", family, model and stepping from /proc/cpuinfo
    (family 25 model 1 is AMD Zen 3 "Milan", model 17 Zen 4 "Genoa"); the platform's
    processor string elsewhere."""
    found = {"model name": platform.processor() or platform.machine()}
    wanted = {"model name": str, "cpu family": int, "model": int, "stepping": int}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block only
                key, _, value = line.partition(":")
                key = key.strip()
                if key in wanted:
                    with contextlib.suppress(ValueError):
                        found[key] = wanted[key](value.strip())
    return {"cpu": found["model name"], "cpu_family": found.get("cpu family"),
            "cpu_model": found.get("model"), "cpu_stepping": found.get("stepping")}


def machine_info() -> dict:
    info = {**cpu_identity(), "logical_cpus": os.cpu_count(), "usable_cpus": machine_cpus(),
            "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "adamcore": adamcore.runtime_info(),
            # Other processes on the machine distort timings, threaded ones most.
            "load_average_1_5_15min": list(os.getloadavg())}
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["deepspeed"] = version("deepspeed")
    return info


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}" if seconds < 0.1 else f"{seconds * 1e6:,.0f}"


def _condition_lines(result: dict) -> List[str]:
    """One line per condition: the load before it, its busy processes, the stalls."""
    lines = []
    for info in result["conditions"]:
        spin = info.get("spinners")
        text = f"  {info['condition']}: load average {info['load_average_before']:.1f} before"
        if spin:
            shares = spin.get("cpu_share_each")
            text += (f"; {spin['count']} busy processes"
                     + (f" (each got {', '.join(f'{s:.0%}' for s in shares)} of a CPU)"
                        if shares else ""))
        lines.append(text + _stall_text(info))
    return lines


def format_contended(result: dict) -> str:
    lines = [f"Contended case: {result['optimizer']} step, one step at a time "
             f"(up to {result['steps_at_64k']} single steps per variant at 64K, fewer above); "
             f"times in us; {_cpu_text(result)}; {result['elapsed_seconds']:.1f} s"]
    lines += _condition_lines(result)
    header = (f"{'condition':<10} {'size':>5} {'implementation':<14} {'thr':>3} "
              f"{'median':>9} {'p90':>9} {'p99':>9} {'max':>9} {'steps':>6}")
    lines += [header, "-" * len(header)]
    previous = None
    for r in result["rows"]:
        key = (r["condition"], r["elements"])
        if previous is not None and key != previous:
            lines.append("")
        previous = key
        lines.append(f"{r['condition']:<10} {format_count(r['elements']):>5} "
                     f"{r['implementation']:<14} {r['threads']:>3} {_us(r['median_seconds']):>9} "
                     f"{_us(r['p90_seconds']):>9} {_us(r['p99_seconds']):>9} "
                     f"{_us(r['max_seconds']):>9} {r['count']:>6}")
    lines.append("")
    t = CONTENDED_TARGETS
    lines.append(f"Ratios to the 1-thread median of the same condition and size "
                 f"(targets, adamcore contended 2 threads: median <= {t['median']}x, "
                 f"p99 <= {t['p99']}x)")
    header = (f"{'condition':<10} {'size':>5} {'implementation':<14} {'thr':>3} "
              f"{'median/1t':>10} {'p99/1t':>10} {'p99/1t p99':>10}  targets")
    lines += [header, "-" * len(header)]
    for q in result["ratios"]:
        verdict = ""
        if q["median_target_met"] is not None:
            verdict = (f"median {'met' if q['median_target_met'] else 'MISSED'}, "
                       f"p99 {'met' if q['p99_target_met'] else 'MISSED'}")
        lines.append(f"{q['condition']:<10} {format_count(q['elements']):>5} "
                     f"{q['implementation']:<14} {q['threads']:>3} "
                     f"{q['median_over_one_thread_median']:>9.2f}x "
                     f"{q['p99_over_one_thread_median']:>9.2f}x "
                     f"{q['p99_over_one_thread_p99']:>9.2f}x  {verdict}")
    lines.append("median/1t, p99/1t: over the 1-thread median; p99/1t p99: over the 1-thread "
                 "p99 (no target; the tail one thread has too)")
    lines += _busy_machine_notes(result)
    return "\n".join(lines)


def stall_delta(info: dict) -> int | None:
    """How many stalls the extension counted during one condition (builds that report
    ``threading_status()['stalls']``), else None."""
    before = info.get("threading_status_before") or {}
    after = info.get("threading_status_after") or {}
    if isinstance(before.get("stalls"), int) and isinstance(after.get("stalls"), int):
        return after["stalls"] - before["stalls"]
    return None


def _stall_text(info: dict) -> str:
    delta = stall_delta(info)
    return "" if delta is None else f"; adamcore counted {delta} stalls"


def _cpu_text(result: dict) -> str:
    cpu = result.get("cpu") or {}
    return (f"{cpu.get('cpu')} (family {cpu.get('cpu_family')}, model {cpu.get('cpu_model')}), "
            f"{result.get('usable_cpus')} usable CPUs")


def _busy_machine_notes(result: dict) -> list[str]:
    """Warnings when other processes were running: then 'idle' was not idle."""
    cpus = machine_cpus()
    notes = []
    for info in result["conditions"]:
        if info["condition"] == "idle" and info["load_average_before"] >= 0.5 * cpus:
            notes.append(f"note: the machine was busy during 'idle' (load average "
                         f"{info['load_average_before']:.1f} on {cpus} CPUs): other "
                         f"processes contended with every row")
        shares = (info.get("spinners") or {}).get("cpu_share_each")
        if shares and min(shares) < 0.5:
            notes.append(f"note: the busy processes got only "
                         f"{', '.join(f'{s:.0%}' for s in shares)} of a CPU: other "
                         f"processes competed with them too")
    return notes


def machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def format_train_loop(result: dict) -> str:
    lines = [f"Training loop: {result['model']}, {result['parameters']:,} parameters in "
             f"{result['tensors']} tensors, batch {result['batch']}, torch threads "
             f"{result['torch_threads']}; times in us; {_cpu_text(result)}; "
             f"{result['elapsed_seconds']:.1f} s"]
    lines += _condition_lines(result)
    header = (f"{'condition':<10} {'optimizer':<31} {'ac thr':>6} {'step med':>9} "
              f"{'step p90':>9} {'iter med':>9} {'iter p90':>9} {'/fused':>7} {'iters':>6}")
    lines += [header, "-" * len(header)]
    previous = None
    for r in result["rows"]:
        if previous is not None and r["condition"] != previous:
            lines.append("")
        previous = r["condition"]
        ratio = r["step_median_over_torch_fused"]
        lines.append(f"{r['condition']:<10} {r['api']:<31} "
                     f"{'-' if r['adamcore_threads'] is None else r['adamcore_threads']:>6} "
                     f"{_us(r['step']['median_seconds']):>9} {_us(r['step']['p90_seconds']):>9} "
                     f"{_us(r['iteration']['median_seconds']):>9} "
                     f"{_us(r['iteration']['p90_seconds']):>9} "
                     f"{'' if ratio is None else f'{ratio:.2f}':>7} {r['step']['count']:>6}")
    lines.append("ac thr: adamcore's threads (torch's thread count is fixed for the whole run); "
                 "/fused: step median / torch fused's step median, same condition")
    lines += _busy_machine_notes(result)
    return "\n".join(lines)
