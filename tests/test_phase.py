"""The beta1 x beta2 phase diagram: Adam fails for small beta2 and recovers above a threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamcore
from adamcore import phase
from adamcore.__main__ import main


def test_reddi_small_beta2_goes_to_worst_point_large_beta2_to_optimum():
    assert phase.reddi_cell(0.9, 0.9) > 0.95
    assert phase.reddi_cell(0.9, 0.99) > 0.95
    assert phase.reddi_cell(0.9, 0.999) < -0.2


def _zhang_f(x: float, first: bool, n: int) -> float:
    """f_0 or f_i (i > 0) of Zhang et al.'s example, written out piece by piece."""
    if first:
        return n * x if x >= -1 else n / 2 * (x + 2) ** 2 - 3 * n / 2
    return -x if x >= -1 else -0.5 * (x + 2) ** 2 + 1.5


def test_zhang_gradient_is_the_derivative_of_the_stated_functions():
    n = 10
    xs = np.array([-5.0, -2.5, -2.0, -1.5, -1.01, -0.99, 0.0, 3.0], dtype=np.float32)
    for first in (True, False):
        grad = phase.zhang_gradient(xs, np.full(xs.size, first), n)
        h = 1e-3
        numeric = [(_zhang_f(float(x) + h, first, n) - _zhang_f(float(x) - h, first, n)) / (2 * h)
                   for x in xs]
        assert grad == pytest.approx(numeric, rel=1e-3, abs=1e-3)
    # The sum f = sum_i f_i is smooth with its minimum at -2.
    total = lambda x: _zhang_f(x, True, n) + (n - 1) * _zhang_f(x, False, n)  # noqa: E731
    assert min(np.linspace(-4, 2, 601), key=total) == pytest.approx(-2.0)


def test_zhang_diverges_for_small_beta2_and_converges_for_large():
    diverged = phase.zhang_cell(0.0, 0.9, seeds=4)
    converged = phase.zhang_cell(0.0, 0.99, seeds=4)
    assert np.median(diverged) > 5.0
    assert np.all(np.abs(converged + 2.0) < 1e-2)


def test_zhang_cell_matches_a_float64_reference_loop():
    steps, n, seeds = 300, 10, 3
    got = phase.zhang_cell(0.9, 0.95, steps=steps, n=n, seeds=seeds, alpha=1.0, seed=5)
    first = phase._first_function_mask(steps, n, seeds, 5)
    # Random reshuffling: f_0 once in every epoch of n steps, for every seed.
    assert np.all(first.reshape(-1, n, seeds).sum(axis=1) == 1)
    p, m, v = np.zeros(seeds), np.zeros(seeds), np.zeros(seeds)
    for t in range(1, steps + 1):
        h = np.where(p >= -1, 1.0, p + 2.0)
        g = np.where(first[t - 1], float(n), -1.0) * h
        adamcore.reference.adam_step(p, g, m, v, step=t, lr=1.0 / math.sqrt(t), beta1=0.9,
                                     beta2=0.95, eps=1e-8)
    assert got == pytest.approx(p, abs=1e-3)


def test_run_grid_and_threshold():
    res = phase.run_grid("zhang", beta1=[0.0, 0.9], beta2=[0.9, 0.98, 0.995],
                         seeds=4)
    assert res.values.shape == (2, 3)
    assert res.converged[:, -1].all()
    assert not res.converged[0, 0]
    thresholds = res.threshold()
    assert thresholds[0] in (0.98, 0.995)
    # The threshold is the start of the converged run up to the largest beta2.
    for row, thr in zip(res.converged, thresholds):
        j = res.beta2.index(thr)
        assert row[j:].all() and (j == 0 or not row[j - 1])


@pytest.mark.parametrize("call, word", [
    (lambda: phase.reddi_cell(1.0, 0.9), "beta1"),
    (lambda: phase.reddi_cell(0.9, -0.1), "beta2"),
    (lambda: phase.reddi_cell(0.9, 0.9, steps=50), "steps"),
    (lambda: phase.reddi_cell(0.9, 0.9, starts=[2.0]), "starts"),
    (lambda: phase.zhang_cell(0.9, 0.9, n=1), "n must"),
    (lambda: phase.run_grid("rosenbrock"), "problem"),
    (lambda: phase.run_grid("reddi", beta1=[]), "empty"),
])
def test_invalid_arguments_name_themselves(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_command_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "phase.png"
    code = main(["phase", "--beta1", "0,0.9", "--beta2", "0.9,0.999", "--steps", "2020",
                 "--seeds", "2", "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "reddi" in out and "zhang" in out and "converges from" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert png.stat().st_size < 300_000


def test_command_line_reports_bad_arguments(capsys):
    assert main(["phase", "--problem", "reddi", "--beta1", "1.5", "--beta2", "0.9",
                 "--steps", "202"]) == 2
    assert "beta1 must be in [0, 1)" in capsys.readouterr().out
