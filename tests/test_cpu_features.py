"""CPU-feature detection against /proc/cpuinfo, and every compiled ISA exercised or reported.

cpp/src/cpu_features.cpp reads CPUID and XCR0; Linux lists a feature in /proc/cpuinfo only
when the CPU has it and the kernel saves its registers, so the two must agree on what this
machine can run. An ISA compiled into the build that this CPU cannot run is reported as a
skip with the reason (visible with ``-ra``), never dropped from the parametrisation.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import adamcore
from _util import assert_same_bits, cpuinfo, expected_isas_from_cpuinfo, f32

INFO = cpuinfo()
MACHINE = platform.machine().lower()


def test_compiled_isas_are_those_of_the_architecture():
    compiled = adamcore.compiled_isas()
    # A build that leaves ISAs out on purpose (ADAMCORE_X86_ISAS: CI's sanitizer tree on a
    # CPU without AVX-512) names what it compiled; every other build has them all.
    expected = os.environ.get("ADAMCORE_EXPECT_ISAS")
    if expected is not None:
        assert compiled == expected.split(",")
    elif MACHINE in ("x86_64", "amd64"):
        assert compiled == ["scalar", "avx2", "avx512"]
    elif MACHINE in ("aarch64", "arm64"):
        assert compiled == ["scalar", "neon"]
    else:
        assert compiled == ["scalar"]
    assert adamcore.available_isas()[0] == "scalar"
    assert set(adamcore.available_isas()) <= set(compiled)


@pytest.mark.skipif(INFO is None, reason="no readable /proc/cpuinfo on this system")
def test_detection_agrees_with_proc_cpuinfo():
    supported, best = expected_isas_from_cpuinfo(INFO, adamcore.compiled_isas())
    where = (f"{INFO.get('vendor_id', '?')} family {INFO.get('cpu family', '?')} "
             f"model {INFO.get('model', '?')} ({INFO.get('model name', '?')})")
    assert adamcore.available_isas() == supported, where
    assert adamcore.best_isa() == best, where
    assert adamcore.runtime_info()["best"] == best


def test_a_fresh_process_uses_the_best_isa():
    env = {k: v for k, v in os.environ.items() if k != "ADAMCORE_ISA"}
    result = subprocess.run([sys.executable, "-c",
                             "import adamcore; print(adamcore.get_isa(), adamcore.best_isa())"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    active, best = result.stdout.split()
    assert active == best == adamcore.best_isa()


@pytest.mark.parametrize("name", adamcore.compiled_isas())
def test_every_compiled_isa_is_exercised_or_reported(name):
    if name not in adamcore.available_isas():
        with pytest.raises(ValueError, match="not supported by this CPU"):
            adamcore.set_isa(name)
        pytest.skip(f"{name} compiled but this CPU lacks it (available here: "
                    f"{', '.join(adamcore.available_isas())}); its kernels were not run")

    def run():
        rng = np.random.default_rng(31)
        n = 1000  # a vector body and a tail for every vector width
        p, g = f32(rng.standard_normal(n)), f32(rng.standard_normal(n))
        m, v, vmax = f32(rng.standard_normal(n) * 0.1), f32(rng.random(n)), f32(rng.random(n))
        before = p.copy()
        adamcore.adamw_step(p, g, m, v, step=3, lr=0.01, amsgrad=True, max_exp_avg_sq=vmax)
        assert np.all(p != before)  # decoupled decay alone moves every nonzero parameter
        return p, m, v, vmax

    with adamcore.use_isa("scalar"):
        want = run()
    with adamcore.use_isa(name):
        assert adamcore.get_isa() == name
        got = run()
    for a, b, key in zip(got, want, ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")):
        assert_same_bits(a, b, f"{name} {key}")


INTEL_SKX = {"vendor_id": "GenuineIntel", "cpu family": "6",
             "flags": {"fpu", "sse2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vl",
                       "avx512bw", "avx512dq", "avx512cd"}}


@pytest.mark.parametrize("info, compiled, supported, best", [
    (INTEL_SKX, ["scalar", "avx2", "avx512"], ["scalar", "avx2", "avx512"], "avx512"),
    # Zen 4 (family 19h) has AVX-512 but dispatch prefers AVX2 there.
    ({**INTEL_SKX, "vendor_id": "AuthenticAMD", "cpu family": "25"},
     ["scalar", "avx2", "avx512"], ["scalar", "avx2", "avx512"], "avx2"),
    # Zen 3: family 19h without AVX-512 (this project's CI machine).
    ({"vendor_id": "AuthenticAMD", "cpu family": "25",
      "flags": {"avx", "avx2", "fma", "f16c"}},
     ["scalar", "avx2", "avx512"], ["scalar", "avx2"], "avx2"),
    # AVX-512 without VL, or AVX2 without FMA or F16C, does not count.
    ({**INTEL_SKX, "flags": INTEL_SKX["flags"] - {"avx512vl"}},
     ["scalar", "avx2", "avx512"], ["scalar", "avx2"], "avx2"),
    ({"vendor_id": "GenuineIntel", "cpu family": "6", "flags": {"avx", "avx2", "f16c"}},
     ["scalar", "avx2", "avx512"], ["scalar"], "scalar"),
    ({**INTEL_SKX, "flags": INTEL_SKX["flags"] - {"f16c"}},
     ["scalar", "avx2", "avx512"], ["scalar"], "scalar"),
    ({"Features": {"fp", "asimd"}}, ["scalar", "neon"], ["scalar", "neon"], "neon"),
    (INTEL_SKX, ["scalar"], ["scalar"], "scalar"),
])
def test_the_expected_rule(info, compiled, supported, best):
    """The restated rule that test_detection_agrees_with_proc_cpuinfo applies."""
    assert expected_isas_from_cpuinfo(info, compiled) == (supported, best)
