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


@pytest.fixture(scope="module")
def torch_on_one_thread():
    """torch's fused step parallelises even 1,024 elements; on a busy 2-core machine its
    thread team's waits made each step milliseconds. One thread changes no bit. (Modules
    comparing with torch use it: pytestmark = pytest.mark.usefixtures(...).)"""
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def split_threads():
    """Let even ~1000-element steps split across threads (a low parallel threshold); the
    test sets the thread count. Both settings are restored after."""
    threshold, threads = adamcore.get_parallel_threshold(), adamcore.get_num_threads()
    adamcore.set_parallel_threshold(64)
    yield
    adamcore.set_parallel_threshold(threshold)
    adamcore.set_num_threads(threads)


@pytest.fixture
def two_threads_split():
    """2 threads, and a parallel threshold low enough that even a golden case's few dozen
    elements are split between them (parts start at multiples of 64 elements)."""
    threads, threshold = adamcore.get_num_threads(), adamcore.get_parallel_threshold()
    adamcore.set_num_threads(2)
    adamcore.set_parallel_threshold(1)
    try:
        yield
    finally:
        adamcore.set_num_threads(threads)
        adamcore.set_parallel_threshold(threshold)


@pytest.fixture
def report():
    """report(line): a measured figure, printed in the run's summary."""
    return _MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("measured figures")
        for line in _MEASURED:
            terminalreporter.write_line(line)


@pytest.fixture(params=adamcore.compiled_isas())
def compiled_isa(request):
    """Each test using this runs once per ISA compiled into the build, with that ISA active.

    An ISA that is compiled but that this CPU cannot run is skipped with the reason, so
    ``-ra`` lists what was *not* exercised here instead of dropping it silently.
    """
    name = request.param
    if name not in adamcore.available_isas():
        pytest.skip(f"{name} compiled but this CPU lacks it (available here: "
                    f"{', '.join(adamcore.available_isas())}); not exercised on this machine")
    with adamcore.use_isa(name):
        yield name


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """When a Hypothesis test fails, its pytest plugin imports libcst to suggest a patch,
    and libcst's import warns (DeprecationWarning from mypy_extensions): under this suite's
    ``filterwarnings = error`` that turned the failure report into an INTERNALERROR.
    Import it first, on failures only, with that warning silenced."""
    if call.excinfo is not None and hasattr(item.obj, "hypothesis"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import hypothesis.extra._patching  # noqa: F401
            except ImportError:
                pass
    yield
