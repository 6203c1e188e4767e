"""Epsilon placement and the effective learning rate of a rarely-updated coordinate."""

import numpy as np
import pytest

from adamcore import __main__ as cli
from adamcore import epsilon


@pytest.fixture(scope="module")
def traces():
    return {t.label: t for t in epsilon.traces(steps=600, period=200, grad=1e-6)}


def test_eps_placement_orders_the_effective_learning_rate(traces):
    by_conv = {label.split(" ")[0] + (" root" if "eps_root" in label else ""): t
               for label, t in traces.items()}
    torch_eta = by_conv["torch"].eta[-1]
    keras_eta = by_conv["Keras"].eta[-1]
    root_eta = by_conv["optax root"].eta[-1]
    # eps_root inside the sqrt caps eta at lr*sqrt(1-b2^t)... far below eps outside it;
    # Keras's eps-hat (1e-7, not scaled by sqrt(1-b2^t)) sits between.
    assert root_eta * 100 < keras_eta < torch_eta
    # Same math, different roundings: torch, optax (eps outside) and DeepSpeed agree to 1e-5.
    np.testing.assert_allclose(by_conv["optax"].eta, by_conv["torch"].eta, rtol=1e-5)
    np.testing.assert_allclose(by_conv["DeepSpeed"].eta, by_conv["torch"].eta, rtol=1e-5)


def test_gamma_goes_negative_while_v_decays(traces):
    for t in traces.values():
        assert t.gamma.shape == (t.eta.size - 1,)
        # Between rare gradients v decays and the effective learning rate grows: Gamma < 0.
        assert t.gamma_negative_steps > 0
    torch_trace = next(t for label, t in traces.items() if label.startswith("torch"))
    assert torch_trace.gamma_negative_steps > 500


def test_command_writes_the_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "eps.png"
    assert cli.main(["epsilon", "--steps", "50", "--period", "20", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert "eps_root" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        epsilon.rare_coordinate_trace("torch-fused", steps=1)
    assert cli.main(["epsilon", "--steps", "1"]) == 2
