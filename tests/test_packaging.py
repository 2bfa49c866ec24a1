"""The packaging stays true: pyproject.toml lists exactly the project's importable top-level packages."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
#: Folders with an __init__.py that are run from a checkout, not installed.
NOT_INSTALLED = {"tests", "benchmarks"}


def test_pyproject_lists_every_package_and_only_existing_ones():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_INSTALLED
    assert listed == present
