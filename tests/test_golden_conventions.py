"""The committed per-convention golden sets (tests/data/golden/conventions/<convention>/):
the emulation's bits, which the real peers reproduce under `golden check --impl <peer>`."""

import os
import re

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from adamcore import __main__ as cli  # noqa: E402
from adamcore import _peers, golden, oracle  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "data", "golden", "conventions")
pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


def set_dir(convention):
    return os.path.join(HERE, convention)


def test_sets_are_small_and_name_their_convention():
    total = 0
    for convention, width, optimizers in golden.CONVENTION_SETS:
        cases = oracle.load(set_dir(convention))
        assert [c.name for c in cases] == [f"{convention}_{o}" for o in optimizers]
        assert all(c.convention == convention and c.tail_width == width for c in cases)
        total += sum(os.path.getsize(os.path.join(set_dir(convention), f))
                     for f in os.listdir(set_dir(convention)))
    assert total < 200_000


@pytest.mark.parametrize("convention, width, optimizers", golden.CONVENTION_SETS)
def test_committed_bits_are_the_emulations(convention, width, optimizers):
    fresh = golden.build_convention_cases(convention, width, optimizers)
    for case, committed in zip(fresh, oracle.load(set_dir(convention))):
        for key in case.keys:
            assert np.array_equal(case.expected[key].view(np.uint32),
                                  committed.expected[key].view(np.uint32)), (case.name, key)


def test_old_manifests_default_to_torch_fused():
    default_set = os.path.join(os.path.dirname(__file__), "data", "golden", "layouts")
    if not os.path.isdir(default_set):
        pytest.skip("no layouts set")
    assert {c.convention for c in oracle.load(default_set)} == {"torch-fused"}


@pytest.mark.parametrize("impl, module", [("torch-fused", "torch"), ("deepspeed", "deepspeed"),
                                          ("optax", "optax"), ("keras", "keras")])
def test_each_peer_reports_zero_ulp_on_its_convention(impl, module, capsys):
    pytest.importorskip(module)
    if impl == "torch-fused" and _peers.torch_vector_width() != 8:
        pytest.skip("the committed torch-fused set emulates an 8-wide (AVX2) tail")
    if impl == "deepspeed" and _peers.deepspeed_vector_width() != 8:
        pytest.skip("the committed deepspeed set emulates an 8-wide (AVX2) tail")
    assert cli.main(["golden", "check", set_dir(impl), "--impl", impl]) == 0
    out = capsys.readouterr().out
    assert "max 0 ulp" in out and "PASS" in out


def test_emulations_report_zero_ulp_on_their_own_sets(capsys):
    for convention, _, _ in golden.CONVENTION_SETS:
        assert cli.main(["golden", "check", set_dir(convention), "--impl",
                         f"emulate:{convention}"]) == 0


def test_torch_foreach_mismatch_is_explained_by_its_sqrt(capsys):
    """torch's foreach path differs from its convention's set only through MKL's sqrt
    (measured: at most 2 ulp on these 12 steps); the check says so."""
    pytest.importorskip("torch")
    code = cli.main(["golden", "check", set_dir("torch-foreach"), "--impl", "torch-foreach",
                     "--tolerance", "0"])
    out = capsys.readouterr().out
    if code == 0:
        pytest.skip("this torch build's sqrt is correctly rounded here")
    assert "which convention would explain it" in out
    assert "explained: B follows torch-foreach+torch.sqrt" in out
    assert cli.main(["golden", "check", set_dir("torch-foreach"), "--impl", "torch-foreach",
                     "--tolerance", "2", "--no-explain"]) == 0


def test_adamcore_against_the_tail_set_names_the_tail(capsys):
    assert cli.main(["golden", "check", set_dir("torch-fused"), "--impl", "adamcore"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"explained: B follows torch-fused[ ;]", out)
    assert "A follows torch-fused@8" in out
