"""Reddi et al.'s counterexample on adamcore's kernels: Adam to +1, AMSGrad to -1, and Γ."""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamcore
from adamcore import reddi
from adamcore.__main__ import main


def _finite_min(a):
    a = a[~np.isnan(a)]
    return a.min()


@pytest.fixture(scope="module")
def synthetic_paper():
    # 1000 periods of the 101-step cycle.
    return {alg: reddi.run("synthetic", algorithm=alg, schedule="paper", steps=101_000)
            for alg in ("adam", "amsgrad")}


def test_synthetic_adam_goes_to_the_worst_point(synthetic_paper):
    adam = synthetic_paper["adam"]
    assert adam.final_x[0] == 1.0
    assert adam.x[-101:].mean() > 0.99
    # Average regret stays away from 0: Adam pays ~2 * 10 per period at x = +1.
    assert adam.avg_regret[-1, 0] > 0.15


def test_synthetic_amsgrad_goes_to_the_optimum(synthetic_paper):
    ams = synthetic_paper["amsgrad"]
    assert ams.x[-101:].mean() < -0.95
    assert ams.avg_regret[-1, 0] < 0.5 * synthetic_paper["adam"].avg_regret[-1, 0]
    # And the regret keeps shrinking, as a no-regret method's must.
    assert ams.avg_regret[-1, 0] < ams.avg_regret[ams.steps // 2, 0]


def test_gamma_negative_for_adam_never_for_paper_amsgrad(synthetic_paper):
    adam, ams = synthetic_paper["adam"], synthetic_paper["amsgrad"]
    # Adam's v decays after every large gradient: all but the large-gradient steps.
    assert adam.steps_with_negative_gamma > 0.95 * adam.steps
    assert _finite_min(adam.gamma_min) < 0
    assert ams.steps_with_negative_gamma == 0
    assert _finite_min(ams.gamma_min) >= 0
    assert math.isnan(ams.gamma_min[0])  # Γ is not defined at step 1


def test_theorem1_construction():
    adam = reddi.run("theorem1", algorithm="adam", steps=30_000)
    ams = reddi.run("theorem1", algorithm="amsgrad", steps=30_000)
    assert adam.beta1 == 0.0 and adam.beta2 == pytest.approx(1 / (1 + 3.0 ** 2))
    assert adam.final_x[0] > 0.99
    assert ams.final_x[0] < -0.99
    # With beta1 = 0 Adam's Γ is negative on the two small-gradient steps of each triple.
    assert adam.steps_with_negative_gamma == pytest.approx(2 * 30_000 / 3, abs=2)
    assert ams.steps_with_negative_gamma == 0


def test_paper_run_matches_a_float64_reference_loop():
    steps, alpha, x1 = 3_000, 0.5, 0.0
    res = reddi.run("synthetic", algorithm="amsgrad", steps=steps, alpha=alpha, x1=x1)
    p = np.array([x1])
    m, v, vmax = np.zeros(1), np.zeros(1), np.zeros(1)
    xs = [x1]
    for t in range(1, steps + 1):
        g = np.array([1010.0 if t % 101 == 1 else -10.0])
        adamcore.reference.adam_step(p, g, m, v, step=t, lr=alpha / math.sqrt(t), beta1=0.9,
                                     beta2=0.99, eps=0.0, amsgrad=True, max_exp_avg_sq=vmax,
                                     bias_correction=False)
        np.clip(p, -1.0, 1.0, out=p)
        xs.append(p[0])
    assert np.max(np.abs(res.x[:, 0] - np.array(xs))) < 1e-4


def test_average_regret_definition():
    res = reddi.run("stochastic", algorithm="adam", steps=700, coords=3, seed=4)
    grads = reddi.gradients(reddi.get_problem("stochastic"), 700, 3, seed=4).astype(float)
    for t in (1, 101, 700):
        for c in range(3):
            g, x = grads[:t, c], res.x[:t, c].astype(float)
            best = min(g.sum() * -1.0, g.sum() * 1.0)
            assert res.avg_regret[t - 1, c] == pytest.approx(((g * x).sum() - best) / t)
    # Each copy draws its own gradients.
    assert not np.array_equal(grads[:, 0], grads[:, 1])


def test_default_schedule_torch_style_amsgrad_has_early_negative_gamma():
    # Bias correction divides the running max by sqrt(1 - beta2^t), which grows: while it
    # does, the torch-style AMSGrad's effective learning rate can rise. Afterwards never.
    ams = reddi.run("synthetic", algorithm="amsgrad", schedule="default", steps=20_200)
    negative_steps = np.flatnonzero(ams.gamma_negative) + 1
    assert negative_steps.size > 0
    assert negative_steps.max() < 2_000
    adam = reddi.run("synthetic", algorithm="adam", schedule="default", steps=20_200)
    assert adam.x[-101:].mean() > 0.9
    assert adam.steps_with_negative_gamma > 0.95 * adam.steps


def test_stochastic_adam_drifts_to_the_worst_point():
    adam = reddi.run("stochastic", algorithm="adam", steps=50_000, coords=4)
    ams = reddi.run("stochastic", algorithm="amsgrad", steps=50_000, coords=4)
    assert adam.final_x.min() > 0.9
    assert ams.final_x.mean() < adam.final_x.mean() - 0.5
    assert ams.steps_with_negative_gamma == 0


@pytest.mark.parametrize("kwargs, word", [
    (dict(problem="nope"), "problem"),
    (dict(algorithm="sgd"), "algorithm"),
    (dict(schedule="fast"), "schedule"),
    (dict(x1=2.0), "x1"),
    (dict(alpha=0.0), "alpha"),
    (dict(lr=-1.0, schedule="default"), "lr"),
    (dict(steps=0), "steps"),
    (dict(problem="theorem1", c=1.5), "c must"),
])
def test_invalid_arguments_name_themselves(kwargs, word):
    with pytest.raises(ValueError, match=word):
        reddi.run(**{"steps": 10, **kwargs})


def test_command_line_prints_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code = main(["reddi", "--problem", "theorem1", "--steps", "3000",
                 "--plot-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "theorem1" in out and "amsgrad" in out
    png = tmp_path / "reddi_theorem1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 300_000


def test_command_line_reports_bad_arguments(capsys):
    assert main(["reddi", "--problem", "synthetic", "--x1", "3", "--steps", "10"]) == 2
    assert "x1 must lie in the feasible set" in capsys.readouterr().out
