"""Time adamcore.grad_norm / clip_grad_norm against torch.nn.utils.clip_grad_norm_.

    python bench/clip_norm.py [--sizes 1M 16M] [--repeat 30]

float32 grads in 8 tensors; medians of --repeat calls, 1 and 2 threads, in one run. The
clip calls keep the coefficient just below 1, so every call reads and writes every
gradient (torch does the same work whatever the coefficient). "read" is the fastest
plain read of the same bytes measured here (NumPy's vectorised max), so norm/read says
how close the norm is to a memory read of the grads.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np

import adamcore


def median_time(fn, repeat, setup=None):
    """Median of `repeat` timed calls of fn(), each after an untimed setup()."""
    times = []
    for _ in range(repeat + 1):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def parse_size(s: str) -> int:
    s = s.upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
    return int(s.rstrip("KM")) * mult


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1M", "16M"])
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    cpu = [l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name")]
    print(f"CPU: {cpu[0] if cpu else '?'}; adamcore ISA {adamcore.get_isa()}; "
          f"torch {torch.__version__ if torch else 'absent'}")
    print(f"{'elements':>9} {'thr':>3} {'read':>9} {'norm':>9} {'clip':>9} "
          f"{'torch clip':>10} {'torch/clip':>10} {'norm/read':>9}")
    rng = np.random.default_rng(0)
    for size_text in args.sizes:
        n = parse_size(size_text)
        saved = [rng.standard_normal(n // 8).astype(np.float32) for _ in range(8)]
        grads = [g.copy() for g in saved]
        norm = adamcore.grad_norm(grads)

        def restore():
            for g, s in zip(grads, saved):
                np.copyto(g, s)
        for threads in (1, 2):
            adamcore.set_num_threads(threads)
            read = median_time(lambda: [g.max() for g in grads], args.repeat)
            t_norm = median_time(lambda: adamcore.grad_norm(grads), args.repeat)
            t_clip = median_time(lambda: adamcore.clip_grad_norm(grads, norm * 0.5), args.repeat,
                                 restore)
            t_torch = float("nan")
            if torch is not None:
                torch.set_num_threads(threads)
                params = []
                for g in saved:
                    p = torch.zeros(g.size, requires_grad=True)
                    p.grad = torch.from_numpy(g.copy())
                    params.append(p)

                def restore_torch():
                    for p, s in zip(params, saved):
                        p.grad.copy_(torch.from_numpy(s))

                t_torch = median_time(
                    lambda: torch.nn.utils.clip_grad_norm_(params, norm * 0.5), args.repeat,
                    restore_torch)
            print(f"{size_text:>9} {threads:>3} {read * 1e6:>7.0f}us {t_norm * 1e6:>7.0f}us "
                  f"{t_clip * 1e6:>7.0f}us {t_torch * 1e6:>8.0f}us {t_torch / t_clip:>9.2f}x "
                  f"{t_norm / read:>8.2f}x  ({4 * n / t_norm / 1e9:.1f} GB/s norm read)")


if __name__ == "__main__":
    main()
