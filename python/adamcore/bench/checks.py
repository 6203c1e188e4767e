"""Before timing: one step of every implementation from the same state, compared with
adamcore's."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from adamcore.oracle import ulp_distance

from .cases import HYPER, InitialState
from .runners import Runner


# ---------------------------------------------------------------- checks
def max_ulp_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> int:
    """Largest distance in ulps between matching elements, of float32 (of bfloat16 for
    bfloat16 arrays: see oracle.ulp_distance) (NaN anywhere: -1)."""
    worst = 0
    for x, y in zip(a, b):
        if x.size == 0:
            continue
        if np.isnan(x).any() or np.isnan(y).any():
            return -1
        worst = max(worst, int(ulp_distance(x, y).max()))
    return worst


def first_step_check(runners: dict[str, Runner], initial: InitialState) -> dict[str, dict]:
    """One step of every runner from the same state; compare parameters with adamcore's."""
    for runner in runners.values():
        runner.run(1)
    reference = next(iter(runners.values())).buffers.params  # adamcore's, listed first
    report = {}
    for name, runner in runners.items():
        changed = any(not np.array_equal(p, q) for p, q in zip(runner.buffers.params,
                                                               initial.params))
        abs_diff = max((float(np.abs(_float32(p) - _float32(q)).max())
                        for p, q in zip(runner.buffers.params, reference) if p.size),
                       default=0.0)
        # ulps say "bitwise" (0) or "a rounding apart"; near cancellation (p - update
        # close to 0) a one-ulp difference in the update is many ulps of the result, so
        # the absolute difference is given too.
        report[name] = {"param_max_ulp_vs_adamcore": max_ulp_difference(runner.buffers.params,
                                                                        reference),
                        "param_max_abs_diff_vs_adamcore": abs_diff,
                        "params_changed": changed}
    return report


def _float32(a: np.ndarray) -> np.ndarray:
    """16-bit params widened (exactly) so their difference is taken in float32."""
    return a if a.dtype == np.float32 else a.astype(np.float32)


def first_step_agrees(check: dict, optimizer: str) -> bool:
    """Whether one step of a peer did the same update as adamcore's: it changed the
    parameters, no NaN appeared, and no parameter is further from adamcore's than 1% of
    the learning rate (a first step moves each by about lr; roundings stay far below)."""
    return (check["params_changed"] and check["param_max_ulp_vs_adamcore"] >= 0
            and check["param_max_abs_diff_vs_adamcore"] <= 0.01 * HYPER[optimizer]["lr"])
