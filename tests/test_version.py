"""One version everywhere: CMakeLists.txt's project(VERSION) is the only place it is
written; the wheel's metadata (pyproject.toml reads it with scikit-build-core's regex
provider), the extension's __version__ and runtime_info() must all say the same."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import adamcore
from adamcore import _core

ROOT = Path(__file__).resolve().parent.parent


def _distribution_version() -> str:
    try:
        return importlib.metadata.version("adamcore")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("adamcore is imported without being installed: no package metadata")


def test_module_version_is_the_package_metadata():
    version = _distribution_version()
    assert adamcore.__version__ == version
    assert _core.__version__ == version
    assert adamcore.runtime_info()["version"] == version


def test_package_metadata_is_cmakes_project_version():
    cmake = ROOT / "CMakeLists.txt"
    if not cmake.is_file():
        pytest.skip("not run from a source tree")
    # The same pattern pyproject.toml gives scikit-build-core.
    match = re.search(r"project\(adamcore\s+VERSION\s+(?P<value>[0-9]+(?:\.[0-9]+)*)",
                      cmake.read_text(encoding="utf-8"))
    assert match, "CMakeLists.txt has no project(adamcore VERSION x.y.z)"
    assert _distribution_version() == match.group("value"), (
        "the installed adamcore was built from another version of CMakeLists.txt: reinstall")
