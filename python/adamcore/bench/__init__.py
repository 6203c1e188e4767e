"""``python -m adamcore bench``: adamcore against its peers, side by side in one process.

Every implementation updates its own copy of the same buffers (the gradients are
shared, read-only). For each (case, optimizer, thread count) the implementations and an
in-place memory stream are timed in round-robin order, rotated every repeat, so slow
drifts of a shared machine hit all of them alike; the table reports medians.

Peers: a careful NumPy implementation (in-place ufuncs, preallocated scratch, always
present), ``torch.optim`` for-loop (default), ``foreach=True`` and ``fused=True`` when
torch is installed, and DeepSpeed's ``DeepSpeedCPUAdam``/``DeepSpeedCPUAdagrad`` when
DeepSpeed is installed (its C++ op is compiled on first use, which takes a minute).

Before timing, every implementation takes one step from identical state and its
parameters are compared with adamcore's (maximum difference in float32 ulps): a peer
that computes something else, or nothing, shows up in the JSON and as a warning
under the table (and the exit code is 1).

Two cases measure threads under load (issue 8) and run by default:

- ``contended``: Adam single steps at 64K and 1M (``--contended-sizes``) for adamcore
  and torch fused with 1 and 2 threads, each step timed alone (``--steps`` at 64K,
  1/5 as many at 1M), variants taking turns in rounds, first on the machine as it is
  ("idle"), then beside busy processes the harness starts and always stops
  (``--spinners``, one per usable CPU by default; see ``adamcore._contention``).
  Median, p90, p99 and max per variant, and the targets' ratios: 2-thread median and
  p99 over the 1-thread median of the same condition and size (<= 1.5x and <= 3x).
- ``train-loop`` (needs torch): an MLP of ~1.1M parameters, forward + backward + AdamW
  step, ``adamcore.torch.AdamW`` on 1 and 2 adamcore threads against
  ``torch.optim.AdamW(fused=True)``, idle and contended; the step alone and the whole
  iteration.
"""

# The harness is split by concern: ``cases`` (what is stepped), ``runners`` (adamcore and
# each peer, with their quirks), ``checks`` (the first-step comparison), ``timing``,
# ``report`` (tables, plot, machine), ``contended`` and ``train_loop`` (the two cases
# under load) and ``cli``. Every public name is importable from ``adamcore.bench``.
from .cases import (ALL_KINDS, BYTES_PER_ELEMENT, CASE_KINDS, CONDITIONS,
                    CONTENDED_IMPLEMENTATIONS, CONTENDED_SIZES, CONTENDED_TARGETS,
                    FLOAT32_STEP, FULL_SIZES, HYPER, LAYOUT_FULL_SIZES, LAYOUT_OPTIMIZERS,
                    LAYOUT_QUICK_SIZES, LAYOUTS, OPTIMIZERS, QUICK_SIZES, SPECIAL_KINDS,
                    STATE_NAMES, STREAM_BYTES_PER_ELEMENT, TRAIN_BATCH, TRAIN_DIMS, Buffers,
                    Case, InitialState, Layout, build_cases, format_count, gpt2_small_sizes,
                    make_initial_state, numpy_dtype)
from .runners import (IMPLEMENTATIONS, PEERS, STREAM, AdamcoreRunner, DeepSpeedRunner,
                      NumpyRunner, Runner, StreamRunner, TorchRunner,
                      available_implementations, case_implementations, make_runner,
                      openmp_runtime_paths, set_all_threads, supports)
from .checks import first_step_agrees, first_step_check, max_ulp_difference
from .timing import (Measurement, latency_stats, make_progress, measure_case,
                     measure_thread_crossover)
from .report import (cpu_identity, format_contended, format_layout_legend, format_table,
                     format_time, format_train_loop, machine_cpus, machine_info, plot,
                     stall_delta, summarize)
from .contended import (contended_ratios, contended_rounds, contended_steps,
                        measure_contended, threading_snapshot)
from .train_loop import build_mlp, measure_train_loop, torch_available, train_rounds
from .cli import add_parser, run_cli
