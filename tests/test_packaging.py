"""The packaging stays true: pyproject.toml lists exactly the project's importable top-level packages."""

import json
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


def test_a_non_editable_install_runs_a_smoke_comparison_from_another_directory(tmp_path):
    """``pip install .`` (not editable) puts the packages, configs/ and teachers/ (package data) and the
    ``run_agent`` console script in a fresh virtualenv; a comparison then runs from a folder outside the
    checkout. The virtualenv sees this machine's packages (torch is not installed twice)."""
    import shutil
    import subprocess
    import sys

    import yaml

    from tests.conftest import TINY

    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "runs", "*.egg-info", "build", ".cache",
                                                                "__pycache__", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "."],
                         cwd=source, capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    shutil.rmtree(source)  # the install must not need the checkout
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "tiny.yaml").write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                                            "dataset_kwargs": dict(TINY)}}))
    done = subprocess.run([str(venv / "bin" / "run_agent"), "--env", "removal-resnet20-synthetic", "--agent",
                           "random,n2n", "--seeds", "1", "--budget", "2", "--preset", "quick", "--config", "tiny.yaml",
                           "--out", "runs/smoke"], cwd=work, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "runs" / "smoke" / "leaderboard.md").exists() and "| n2n |" in done.stdout
    # the shipped tables are package data: the installed netcomp finds and reads one (fidelity="table" envs)
    info = subprocess.run([str(venv / "bin" / "python"), "-m", "netcomp", "table-info",
                           "channel-ratio-lenet5-fashionmnist", "--json"], cwd=work, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert info.returncode == 0, info.stderr[-2000:]
    assert "site-packages" in json.loads(info.stdout)["path"] and json.loads(info.stdout)["build"]["rows"] == 4096
