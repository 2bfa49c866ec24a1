"""run_agent.py end to end on tiny synthetic data: agents, run directory, resume after SIGKILL, errors."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

import run_agent
from netcomp.cpu_numerics import cpu_numerics
from netcomp.surgery import load_student
from runner.recorder import read_records
from tests.conftest import TINY, cli

ROOT = Path(__file__).resolve().parent.parent


run = cli


@pytest.mark.parametrize("agent", ["random", "ppo", "a2c"])
def test_agents_run_end_to_end_and_fill_the_run_directory(agent, tiny_config, tmp_path, monkeypatch):
    out, system_temp = tmp_path / agent, tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    assert run("--env", "removal-resnet20-synthetic", "--agent", agent, "--budget", 4, "--config", tiny_config,
               "--out", out) == 0
    records = read_records(out / "evaluations.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert {"action", "arch_key", "params", "macs", "accuracy", "reward", "valid", "eval_seconds"} <= set(records[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 4 and summary["best"]["reward"] == max(r["reward"] for r in records)
    made_with = summary["provenance"]  # what the scores depend on
    assert made_with["cpu_numerics"] == cpu_numerics() and made_with["torch"] == torch.__version__
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["run"]["budget"] == 4 and config["run"]["fidelity"] == "smoke" and config["agent"] == agent
    assert (out / "reward.png").exists() and (out / "accuracy_vs_params.png").exists()
    assert any((out / "tb").iterdir())
    if any(r["valid"] for r in records):
        model, _, meta = load_student(out / "best_student.pt")
        out_shape = model(torch.randn(2, 3, TINY["image_size"], TINY["image_size"])).shape
        assert out_shape == (2, 10) and meta["params"] == sum(p.numel() for p in model.parameters())
    # no folder per run left in the system's temp directory (SB3's logger made one at each learn(); torch's
    # inductor cache, made once per user and reused, is not a run's)
    assert not list(system_temp.glob("SB3-*"))


@pytest.mark.parametrize("agent", ["random", "ppo"])
@pytest.mark.parametrize("space", ["removal", "shrinkage", "channel-ratio", "ranking-affine"])
def test_every_space_runs_end_to_end_and_keeps_its_best_student(space, agent, tiny_config, tmp_path):
    out = tmp_path / f"{space}-{agent}"
    assert run("--env", f"{space}-resnet20-synthetic", "--agent", agent, "--budget", 3, "--config", tiny_config,
               "--out", out) == 0
    records = read_records(out / "evaluations.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == len(records) == 3
    best = max((r for r in records if r["valid"]), key=lambda r: r["reward"])
    model, arch, meta = load_student(out / "best_student.pt")
    assert meta["index"] == best["index"] == summary["best_student"]["index"]
    assert meta["params"] == best["params"] == sum(p.numel() for p in model.parameters())
    assert model(torch.randn(2, 3, TINY["image_size"], TINY["image_size"])).shape == (2, 10)


def test_sb3_agents_default_to_sequential_mode(tiny_config, tmp_path):
    run("--env", "shrinkage-resnet20-synthetic", "--agent", "ppo", "--budget", 2, "--config", tiny_config,
        "--out", tmp_path / "p")
    config = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())
    records = read_records(tmp_path / "p" / "evaluations.jsonl")
    assert config["mode"] == "sequential" and isinstance(records[0]["action"], list)


def test_config_layers_flags_over_files(tiny_config, tmp_path):
    args = run_agent.parse_args(["--env", "removal-lenet5-synthetic", "--agent", "random", "--config", tiny_config,
                                 "--budget", "7", "--seed", "3"])
    config = run_agent.resolve_config(args)
    assert config["run"]["budget"] == 7 and config["run"]["seed"] == 3          # flags
    assert config["run"]["fidelity"] == "smoke"                                  # --config
    assert config["run"]["download"] is False                                    # defaults


def test_mismatched_agent_and_space_is_a_clear_error(tiny_config, tmp_path, capsys):
    cases = [
        (["--env", "channel-ratio-resnet20-synthetic", "--agent", "n2n"], "does not support the 'channel-ratio' space"),
        (["--env", "removal-resnet20-synthetic", "--agent", "random", "--mode", "sequential"],
         "does not support mode 'sequential'"),
        (["--env", "removal-resnet20-synthetic", "--agent", "dqn"], "unknown agent 'dqn'"),
    ]
    for i, (argv, message) in enumerate(cases):
        out = tmp_path / str(i)
        assert run(*argv, "--config", tiny_config, "--out", out) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err  # one line
        assert not out.exists()                                                        # and nothing left


def test_list_prints_envs_and_agents(capsys):
    assert run("--list") == 0
    out = capsys.readouterr().out
    assert "removal" in out and "ranking-affine" in out and "n2n" in out and "ppo" in out


def _cli(out, budget, tiny_config):
    cmd = [sys.executable, str(ROOT / "run_agent.py"), "--env", "removal-resnet20-synthetic", "--agent", "random",
           "--budget", str(budget), "--config", tiny_config, "--seed", "5"]
    return cmd + (["--out", str(out)] if out else [])


def test_resume_after_sigkill_loses_nothing_and_ends_at_the_budget(tiny_config, tmp_path):
    env = dict(os.environ)
    budget = 8
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference, budget, tiny_config), check=True, env=env, capture_output=True, cwd=ROOT)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, budget, tiny_config), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(read_records(killed / "evaluations.jsonl")) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_records(killed / "evaluations.jsonl")
    assert 3 <= len(before) < budget, "the run must be killed in the middle"

    resume = [sys.executable, str(ROOT / "run_agent.py"), "--resume", str(killed)]
    subprocess.run(resume, check=True, env=env, capture_output=True, cwd=ROOT)
    after = read_records(killed / "evaluations.jsonl")
    assert [r["index"] for r in after] == list(range(budget))                 # nothing lost, nothing doubled
    assert after[: len(before)] == before                                      # finished ones kept as written
    expected = read_records(reference / "evaluations.jsonl")
    assert [r["action"] for r in after] == [r["action"] for r in expected]     # same search as without the kill
    keys = [r["arch_key"] for r in after if not r["cached"]]
    assert len(keys) == len(set(keys))                                         # no student trained twice
    assert json.loads((killed / "summary.json").read_text())["resumed"] is True


def test_n2n_runs_both_stages_through_the_cli_and_transfers_to_a_deeper_teacher(tiny_config, tmp_path):
    small = tmp_path / "r20"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "n2n", "--budget", 6, "--config", tiny_config,
               "--out", small) == 0
    records = read_records(small / "evaluations.jsonl")
    assert [r["space"] for r in records] == ["removal"] * 3 + ["shrinkage"] * 3     # stage 1, then stage 2
    summary = json.loads((small / "summary.json").read_text())
    assert summary["best_student"]["test_accuracy"] is not None                    # the final fine-tune
    assert (small / "policy.pt").exists() and (small / "best_student.pt").exists()

    big = tmp_path / "r56"
    assert run("--env", "removal-resnet56-synthetic", "--agent", "n2n", "--budget", 2, "--config", tiny_config,
               "--load-policy", small / "policy.pt", "--out", big) == 0
    summary = json.loads((big / "summary.json").read_text())
    assert summary["notes"]["transferred_from"] == str(small / "policy.pt")
    assert len(read_records(big / "evaluations.jsonl")) == 2


def test_help_answers_without_importing_torch():
    """--help is the front door: it must not wait for torch (seconds) to import."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "run_agent.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--env" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "gymnasium" not in imported


def test_a_missing_dataset_names_the_flags_and_leaves_nothing_behind(tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--env", "removal-resnet20-cifar10", "--agent",
                           "random", "--budget", "1", "--data-root", str(empty)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--download" in done.stderr and "--data-root" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodata"]  # no runs/ folder left


def test_a_ppo_sequential_policy_transfers_to_a_deeper_teacher_and_a_mismatch_is_refused(tiny_config, tmp_path,
                                                                                       capsys):
    small = tmp_path / "r20"
    assert run("--env", "removal-resnet20-synthetic", "--agent", "ppo", "--budget", 2, "--config", tiny_config,
               "--out", small) == 0
    saved = torch.load(small / "policy.pt", weights_only=True)["meta"]["provenance"]
    assert saved["teacher"] == "resnet20" and saved["space"] == "removal" and saved["mode"] == "sequential"
    capsys.readouterr()
    big = tmp_path / "r32"
    assert run("--env", "removal-resnet32-synthetic", "--agent", "ppo", "--budget", 2, "--config", tiny_config,
               "--load-policy", small / "policy.pt", "--out", big) == 0
    printed = capsys.readouterr().out
    assert "trained by ppo on resnet20 / synthetic, space removal (sequential)" in printed
    notes = json.loads((big / "summary.json").read_text())["notes"]
    assert notes["transferred_from"] == str(small / "policy.pt") and notes["transferred_provenance"] == saved
    wrong = run("--env", "removal-resnet32-synthetic", "--agent", "ppo", "--mode", "oneshot", "--budget", 2,
                "--config", tiny_config, "--load-policy", small / "policy.pt", "--out", tmp_path / "x")
    assert wrong == 2 and "trained on mode 'sequential'" in capsys.readouterr().err
