"""`python -m adamcore explain` names the right cause on the four validation pairs."""

import os

import numpy as np
import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from adamcore import __main__ as cli  # noqa: E402
from adamcore import _peers, explain, golden  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")

STEPS, SIZE = 30, 1003


def families(labels):
    return {label.partition("@")[0] for label in labels}


def test_torch_fused_vs_foreach_is_the_square_root():
    result = explain.run_pair("torch-fused", "torch-foreach", "adamw", STEPS, SIZE)
    assert result.step_index is not None
    assert result.reproduces_b == ["torch-foreach+torch.sqrt"]
    assert "torch-fused" in result.reproduces_a
    assert "MKL" in result.format()


def test_torch_fused_vs_forloop_adam():
    result = explain.run_pair("torch-fused", "torch-forloop", "adam", STEPS, SIZE)
    assert result.reproduces_b == ["torch-foreach+torch.sqrt"]


def test_torch_vs_deepspeed():
    pytest.importorskip("deepspeed")
    result = explain.run_pair("torch-fused", "deepspeed", "adam", STEPS, SIZE)
    assert result.step_index == 0           # they part on the first step
    assert families(result.reproduces_b) == {"deepspeed"}
    assert result.per_key["exp_avg_sq"][1] > 0


def test_torch_vs_optax():
    pytest.importorskip("optax")
    result = explain.run_pair("torch-fused", "optax", "adam", STEPS, SIZE)
    assert result.reproduces_b == ["optax"]
    assert "optax" not in result.reproduces_a


def test_torch_fused_tail_vs_adamcore():
    """adamcore computes torch's vector body everywhere; torch's own scalar tail parts from
    it in the last n % W elements, and explain says so."""
    width = _peers.torch_vector_width()
    result = explain.run_pair("adamcore", "torch-fused", "adam", STEPS, SIZE)
    assert result.step_index is not None
    assert result.element >= SIZE - SIZE % width
    assert f"torch-fused@{width}" in result.reproduces_b
    assert "torch-fused" in result.reproduces_a and "torch-fused" not in result.reproduces_b
    assert "scalar tail" in result.format()


def test_identical_trajectories():
    result = explain.run_pair("adamcore", "emulate:torch-fused", "adagrad", 5, 40)
    assert result.step_index is None and "identical" in result.format()


def test_golden_sets(tmp_path):
    """Two golden sets of the same case: one holds torch-fused's values, the other the
    DeepSpeed convention's: explain reads both and names DeepSpeed."""
    from adamcore import conventions, oracle
    problem, _, _ = explain.generated_problem("adam", 6, 21, seed=4)
    cases = []
    for name, conv in (("a", "torch-fused"), ("b", "deepspeed")):
        state = {k: v.copy() for k, v in problem.initial.items()}
        expected = {k: [] for k in state}
        for t, g in enumerate(problem.grads, 1):
            state = conventions.adam_step(conv, state, g, step=t, lr=problem.lrs[t - 1],
                                          tail_width=8 if conv == "deepspeed" else None,
                                          **{k: problem.hyper[k] for k in
                                             ("beta1", "beta2", "eps", "weight_decay")})
            for k in state:
                expected[k].append(state[k])
        hyper = dict(problem.hyper, maximize=False, bias_correction=True)
        case = oracle.Case(name="case", optimizer="adam", hyper=hyper, steps=problem.steps,
                           lrs=problem.lrs, initial=dict(problem.initial),
                           grads=problem.grads, expected={k: np.stack(v) for k, v in expected.items()})
        golden.write_set(str(tmp_path / name), [case], description=f"{conv} test set",
                         generator={"by": "tests/test_explain.py"})
        cases.append(case)
    code = cli.main(["explain", str(tmp_path / "a"), str(tmp_path / "b")])
    assert code == 0
    loaded_a = explain.golden_problems(str(tmp_path / "a"))
    loaded_b = explain.golden_problems(str(tmp_path / "b"))
    result = explain.explain(loaded_a[0][0], loaded_a[0][1], loaded_b[0][1])
    assert families(result.reproduces_b) == {"deepspeed"}


def test_cli_prints_the_report(capsys):
    assert cli.main(["explain", "--impl", "adamcore", "--vs", "emulate:keras", "--optimizer",
                     "adamw", "--steps", "3", "--size", "17"]) == 0
    out = capsys.readouterr().out
    assert "explained: B follows keras" in out


@pytest.mark.parametrize("argv, message", [
    (["--impl", "adamcore"], "--vs"),
    (["--impl", "adamcore", "--vs", "nonesuch"], "impl"),
    (["--impl", "adamcore", "--vs", "adamcore", "--optimizer", "lion"], "optimizer"),
    (["only-one-dir"], "two golden"),
])
def test_bad_arguments(argv, message, capsys):
    assert cli.main(["explain"] + argv) == 2
    assert message in capsys.readouterr().out
