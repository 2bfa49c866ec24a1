"""``run_agent.py --list``: its static catalogue matches the real envs and agents, names them all, and needs no
torch (so it answers at once; benchmarks/cli_speed.py times it)."""

import subprocess
import sys
from pathlib import Path

import pytest

import envs
from netcomp.data import DATASETS
from netcomp.zoo import ARCHS
from runner import catalog
from runner.registry import AGENTS, get_agent
from tests.conftest import cli

ROOT = Path(__file__).resolve().parent.parent


def test_the_catalogue_lists_the_real_spaces_archs_and_datasets_in_order():
    assert list(catalog.SPACES) == list(envs.SPACES)
    assert tuple(ARCHS) == catalog.ARCHS
    assert tuple(DATASETS) == catalog.DATASETS


def test_the_catalogue_lists_every_registered_agent_as_its_class_declares_it():
    assert list(catalog.AGENTS) == list(AGENTS), "runner/catalog.py AGENTS must follow runner/registry.py AGENTS"
    for name, info in catalog.AGENTS.items():
        cls = get_agent(name)
        assert (info.kind, tuple(info.spaces), tuple(info.modes)) == (cls.kind, tuple(cls.spaces), tuple(cls.modes)), \
            f"runner/catalog.py's entry of {name!r} differs from {cls.__qualname__}"
        assert info.summary.strip()


def test_list_names_every_agent_space_arch_and_dataset(capsys):
    assert cli("--list") == 0
    out = capsys.readouterr().out
    words = set(out.replace(",", " ").replace(";", " ").split())
    missing = [n for n in (*AGENTS, *envs.SPACES, *ARCHS, *DATASETS) if n not in words]
    assert not missing, f"--list does not name {missing}"


@pytest.mark.parametrize("flag", ["--list", "--help"])
def test_list_and_help_do_not_import_torch(flag):
    probe = (f"import sys, run_agent\ntry:\n    run_agent.main([{flag!r}])\nexcept SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("Agents (--agent NAME" if flag == "--list" else "usage: ") in done.stdout
