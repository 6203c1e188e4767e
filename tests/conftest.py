"""Shared fixtures: run kernel tests once per ISA, and report measured figures."""

from __future__ import annotations

import pytest

import adamcore

_MEASURED: list[str] = []


@pytest.fixture(params=adamcore.available_isas())
def isa(request):
    """Each test using this runs once per ISA this CPU supports, with that ISA active."""
    with adamcore.use_isa(request.param):
        yield request.param


@pytest.fixture
def report():
    """report(line): a measured figure, printed in the run's summary."""
    return _MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("measured figures")
        for line in _MEASURED:
            terminalreporter.write_line(line)
