"""Nothing lost, nothing wrong in silence: kills at every write point, torn files, locks, strict configs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from netcomp.jsonl import read_jsonl
from netcomp.surgery import load_student
from runner.recorder import read_records
from runner.rundir import locked
from tests.conftest import TINY, cli

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 6


run = cli


def _cmd(out, space, agent, config, budget=BUDGET):
    return [sys.executable, str(ROOT / "run_agent.py"), "--env", f"{space}-resnet20-synthetic", "--agent", agent,
            "--budget", str(budget), "--config", config, "--seed", "3", "--out", str(out)]


def _kill_when(cmd, ready, timeout=300):
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; the process is gone when this returns."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _resume(out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--resume", str(out), *extra], cwd=ROOT,
                          capture_output=True, text=True)


def _same(a, b):
    keys = ("index", "action", "arch_key", "reward", "valid", "params")
    return [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs, one per (space, agent), computed once."""
    root = tmp_path_factory.mktemp("refs")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                              "dataset_kwargs": dict(TINY)}}))
    cache = {}

    def get(space, agent):
        if (space, agent) not in cache:
            out = root / f"{space}-{agent}"
            subprocess.run(_cmd(out, space, agent, str(config)), check=True, cwd=ROOT, capture_output=True)
            cache[space, agent] = read_records(out / "evaluations.jsonl")
        return cache[space, agent]
    return get


CASES = [("removal", "random"), ("removal", "ppo"), ("removal", "n2n"), ("channel-ratio", "random"),
         ("channel-ratio", "ppo")]


@pytest.mark.parametrize("space,agent", CASES)
def test_kill_after_a_record_line_then_a_torn_tail_resumes_to_the_uninterrupted_record(
        space, agent, references, tiny_config, tmp_path):
    out = tmp_path / "run"
    _kill_when(_cmd(out, space, agent, tiny_config),
               lambda: len(read_jsonl(out / "evaluations.jsonl", repair=False)) >= 3)
    before = read_records(out / "evaluations.jsonl")
    assert 3 <= len(before) < BUDGET, "the run must be killed in the middle"
    with open(out / "evaluations.jsonl", "ab") as f:  # a kill in the middle of an append
        f.write(b'{"index": 99, "act')
    with open(out / "cache.jsonl", "ab") as f:
        f.write(b'{"cache_key": "x", "res')
    done = _resume(out)
    assert done.returncode == 0, done.stderr
    assert "torn" in done.stderr.lower()                                     # the repair is reported
    after = read_records(out / "evaluations.jsonl")
    assert [r["index"] for r in after] == list(range(BUDGET))               # exactly the budget
    assert _same(after, references(space, agent))                            # as if never killed
    keys = [r["arch_key"] for r in after if not r["cached"] and r["valid"]]
    assert len(keys) == len(set(keys))                                       # no student trained twice
    assert (out / "summary.json").exists() and (out / "best_student.pt").exists()


def test_kill_during_teacher_training_resumes(tmp_path):
    config = tmp_path / "slow.yaml"  # a teacher that takes a few seconds to train
    config.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "dataset_kwargs": {
        "image_size": 32, "train_size": 2048, "val_size": 64, "test_size": 64},
        "env_kwargs": {"home": str(tmp_path / "home")}}}))
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_agent.py"), "--env", "removal-resnet56-synthetic", "--agent", "random",
           "--budget", "2", "--config", str(config), "--out", str(out)]
    _kill_when(cmd, lambda: (out / "config.yaml").exists())
    assert (out / "config.yaml").exists() and not read_records(out / "evaluations.jsonl")
    done = _resume(out)
    assert done.returncode == 0, done.stderr
    assert len(read_records(out / "evaluations.jsonl")) == 2


def test_a_finished_run_resumes_as_finished_and_a_larger_budget_extends_it(tiny_config, tmp_path):
    out = tmp_path / "ppo"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "ppo", "--budget", 3, "--config", tiny_config,
               "--out", out) == 0
    done = _resume(out)
    assert done.returncode == 0 and "already finished" in done.stdout
    (out / "summary.json").unlink()          # as if killed while writing the final files
    (out / "best_student.pt").unlink()
    assert _resume(out).returncode == 0
    assert (out / "summary.json").exists() and (out / "best_student.pt").exists()
    assert len(read_records(out / "evaluations.jsonl")) == 3
    extended = _resume(out, "--budget", "5")
    assert extended.returncode == 0, extended.stderr
    assert [r["index"] for r in read_records(out / "evaluations.jsonl")] == [0, 1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["evaluations"] == 5
    smaller = _resume(out, "--budget", "2")
    assert smaller.returncode == 2 and "can only grow" in smaller.stderr


def test_a_second_run_on_a_locked_directory_is_refused_with_the_owners_pid(tiny_config, tmp_path, capsys):
    out = tmp_path / "busy"
    with locked(out):
        code = run("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 2,
                   "--config", tiny_config, "--out", out)
        assert code == 2 and f"pid {os.getpid()}" in capsys.readouterr().err
    assert not (out / "evaluations.jsonl").exists()


def test_unknown_config_keys_presets_and_conflicting_resume_flags_are_errors(tiny_config, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"run": {"fidelty": "paper"}}))
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--config", typo, "--out",
               tmp_path / "a") == 2
    assert "unknown key(s) ['fidelty']" in capsys.readouterr().err and not (tmp_path / "a").exists()
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"budgett": 3}))
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--config", top, "--out",
               tmp_path / "b") == 2
    assert "['budgett']" in capsys.readouterr().err
    settings = tmp_path / "settings.yaml"  # agent settings under `agent:` (the name) instead of agent_config
    settings.write_text(yaml.safe_dump({"agent": {"kernels": 2}}))
    assert run("--env", "edit-resnet20-synthetic", "--agent", "esnac", "--config", settings, "--out",
               tmp_path / "s") == 2
    assert "agent_config" in capsys.readouterr().err
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--preset", "fast", "--out",
               tmp_path / "c") == 2
    assert "agent 'random' has no presets" in capsys.readouterr().err
    out = tmp_path / "r"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 2, "--config", tiny_config,
               "--out", out) == 0
    for flags in (["--env", "removal-resnet56-synthetic"], ["--agent", "ppo"], ["--fidelity", "fast"],
                  ["--seed", "9"]):
        assert run("--resume", out, *flags) == 2
        assert "cannot resume" in capsys.readouterr().err
    assert run("--resume", out, "--seed", "0", "--env", "netcomp/removal-resnet20-synthetic-v0") == 0  # same values


def test_n2n_without_finetune_saves_the_summarys_best_student(tmp_path):
    config = tmp_path / "n2n.yaml"
    config.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                              "dataset_kwargs": dict(TINY)},
                                      "agent_config": {"finetune": False, "rollouts": 2}}))
    out = tmp_path / "n2n"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "n2n", "--budget", 8, "--config", config,
               "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = read_records(out / "evaluations.jsonl")
    best = max((r for r in records if r["valid"]), key=lambda r: r["reward"])
    _, arch, meta = load_student(out / "best_student.pt")
    assert meta["index"] == best["index"] == summary["best"]["index"]
    assert meta["params"] == best["params"]


def test_checkpoints_and_policies_load_without_unpickling_code(tiny_config, tmp_path, capsys):
    out = tmp_path / "ppo"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "ppo", "--budget", 2, "--config", tiny_config,
               "--out", out) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)["agent"]
    assert not any(isinstance(v, bytes) for v in state.values())  # no SB3 zip inside
    torch.load(out / "policy.pt", weights_only=True)
    zip_path = tmp_path / "policy.zip"
    zip_path.write_bytes(b"PK\x03\x04 not really a zip")
    assert run("--env", "removal-resnet20-synthetic", "--agent", "ppo", "--budget", 2, "--config", tiny_config,
               "--load-policy", zip_path, "--out", tmp_path / "z") == 2
    assert "--trust-pickle" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert run("--env", "removal-resnet20-synthetic", "--agent", "ppo", "--budget", 2, "--config", tiny_config,
               "--load-policy", out / "policy.pt", "--out", tmp_path / "t") == 0


def test_a_teacher_file_for_another_dataset_is_refused_at_the_cli(tiny_config, tmp_path, capsys):
    from netcomp.data import load_dataset
    from netcomp.teachers import get_teacher

    other = load_dataset("synthetic", **{**TINY, "image_size": 12, "num_classes": 5})
    teacher = get_teacher("resnet20", other, recipe="smoke", progress=False)
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 2, "--config", tiny_config,
               "--teacher", teacher.path, "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "classes" in err and "image" in err and "Traceback" not in err and not (tmp_path / "x").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 2, "--config", tiny_config,
               "--teacher", notes, "--out", tmp_path / "y") == 2
    assert "is not a netcomp teacher checkpoint" in capsys.readouterr().err


def test_a_resume_that_cannot_replay_the_record_stops_and_says_so(tiny_config, tmp_path, capsys):
    out = tmp_path / "r"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 4, "--config", tiny_config,
               "--out", out) == 0
    lines = (out / "evaluations.jsonl").read_text().splitlines()
    edited = json.loads(lines[2])
    edited["action"], edited["arch_key"] = [1] * len(edited["action"]), "not-this-one"
    lines[2] = json.dumps(edited)
    (out / "evaluations.jsonl").write_text("\n".join(lines) + "\n")
    for name in ("summary.json", "checkpoint.pt"):  # as if killed before the first checkpoint
        (out / name).unlink()
    assert run("--resume", out) == 2
    assert "cannot replay evaluation 2" in capsys.readouterr().err
    assert (out / "evaluations.jsonl").read_text().splitlines()[2] == lines[2]  # the record is left as it was


def test_a_seconds_budget_runs_until_the_training_seconds_are_spent(tiny_config, tmp_path, capsys):
    out = tmp_path / "s"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget-seconds", 0.5,
               "--config", tiny_config, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = read_records(out / "evaluations.jsonl")
    trained = sum(r["eval_seconds"] for r in records if not r["cached"])
    assert summary["budget"] is None and summary["budget_seconds"] == 0.5
    assert trained >= 0.5 and trained - records[-1]["eval_seconds"] < 0.5  # stopped at the first past the limit
    assert run("--env", "removal-resnet20-synthetic", "--agent", "n2n", "--budget-seconds", 5,
               "--config", tiny_config, "--out", tmp_path / "n") == 2
    assert "needs a budget in evaluations" in capsys.readouterr().err


def test_a_finished_n2n_run_is_not_extended_in_silence(tiny_config, tmp_path, capsys):
    out = tmp_path / "n"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "n2n", "--budget", 4, "--config", tiny_config,
               "--out", out) == 0
    assert run("--resume", out, "--budget", 8) == 2
    assert "cannot extend a run" in capsys.readouterr().err
