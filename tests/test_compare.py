"""Comparisons (run_agent.py --agent a,b --seeds N): the files, the leaderboard's figures, refusals, resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from netcomp.jsonl import append_jsonl
from runner.compare import (
    RunResult,
    best_so_far,
    best_students,
    leaderboard,
    reach_threshold,
    run_result,
    shared_env_settings,
)
from runner.recorder import read_records
from runner.rundir import ConfigError
from tests.conftest import TINY, cli

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
BUDGET = 4
AGENTS = ("random", "n2n")


def _comparison(out, tiny_config, *extra):
    return ["--env", "removal-resnet20-synthetic", "--agent", ",".join(AGENTS), "--seeds", "2", "--budget", BUDGET,
            "--fidelity", "smoke", "--config", tiny_config, "--out", out, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 2-agent x 2-seed comparison, made once."""
    root = tmp_path_factory.mktemp("cmp")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"run": {"threads": 1, "export": False, "dataset_kwargs": dict(TINY)}}))
    out = root / "cmp"
    assert cli(*_comparison(out, str(config))) == 0
    return out, str(config)


def test_a_comparison_writes_every_run_the_leaderboard_and_the_plots(finished):
    out, _ = finished
    for name in ("compare.yaml", "leaderboard.md", "leaderboard.csv", "best_so_far.png", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    teachers = set()
    for agent in AGENTS:
        for seed in (0, 1):
            run = out / f"{agent}-s{seed}"
            records = read_records(run / "evaluations.jsonl")
            assert [r["index"] for r in records] == list(range(BUDGET))
            config = yaml.safe_load((run / "config.yaml").read_text())
            shared_run = (config["run"]["seed"], config["run"]["budget"], config["run"]["fidelity"])
            assert shared_run == (seed, BUDGET, "smoke")
            assert config["run"]["dataset_kwargs"] == dict(TINY)
            shared = json.loads((run / "shared_final.json").read_text())
            best = max((r for r in records if r["valid"]), key=lambda r: r["reward"])
            assert shared["index"] == best["index"] and 0.0 <= shared["test_accuracy"] <= 1.0
            assert list((run / "tb").iterdir()), "TensorBoard events per run"
            teachers.add(records[0]["replay"]["teacher"]["sha256"])
    assert len(teachers) == 1, "every run scored against the same teacher"
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert sorted(r["agent"] for r in rows) == sorted(AGENTS)
    assert all(int(r["seeds"]) == 2 and int(r["evaluations"]) == 2 * BUDGET for r in rows)
    means = [float(r["best_reward_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)
    for row in rows:  # the csv's mean is the mean of the runs' best rewards
        bests = [max(r["reward"] for r in read_records(out / f"{row['agent']}-s{s}" / "evaluations.jsonl"))
                 for s in (0, 1)]
        assert float(row["best_reward_mean"]) == pytest.approx(np.mean(bests))
        assert float(row["best_reward_std"]) == pytest.approx(np.std(bests, ddof=1))
    table = (out / "leaderboard.md").read_text()
    assert all(f"| {a} | 2 |" in table for a in AGENTS)
    lines = best_students(out, yaml.safe_load((out / "compare.yaml").read_text()))
    assert [line.split()[0] for line in lines] == list(AGENTS) and all("test accuracy" in line for line in lines)


def _fake_run(folder, rewards, seconds, cached=(), final=None):
    folder.mkdir(parents=True)
    for i, (reward, sec) in enumerate(zip(rewards, seconds)):
        append_jsonl(folder / "evaluations.jsonl", {
            "index": i, "reward": reward, "valid": True, "accuracy": reward / 2, "compression": 0.5, "macs": 100 + i,
            "eval_seconds": sec, "cached": i in cached})
    if final is not None:
        (folder / "summary.json").write_text(json.dumps({"shared_final": {"valid": True, "test_accuracy": final},
                                                     "eval_seconds": sum(seconds), "charged_seconds": 100.0}))


def test_mean_std_and_time_to_95_percent_match_a_hand_computation(tmp_path):
    # run A: best so far 0.2, 0.5, 0.5, 0.96, 1.0 -> threshold 0.95 reached at evaluation 4; seconds 1+2+(cached)+4
    _fake_run(tmp_path / "a", [0.2, 0.5, 0.1, 0.96, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0], cached={2}, final=0.8)
    # run B: best -2.0 (negative rewards): threshold -2.1, reached at evaluation 2 (-2.05)
    _fake_run(tmp_path / "b", [-3.0, -2.05, -2.0], [1.5, 1.5, 1.5], final=0.6)
    a, b = run_result("x", 0, tmp_path / "a"), run_result("x", 1, tmp_path / "b")
    assert reach_threshold(1.0) == pytest.approx(0.95) and reach_threshold(-2.0) == pytest.approx(-2.1)
    assert (a.best_reward, a.evals_to_reach, a.seconds_to_reach, a.macs, a.final_test) == (1.0, 4, 7.0, 104, 0.8)
    assert (b.best_reward, b.evals_to_reach, b.seconds_to_reach, b.final_test) == (-2.0, 2, 3.0, 0.6)
    assert (a.train_seconds, b.train_seconds) == (115.0, 104.5)  # the records' seconds plus the charged ones
    assert best_so_far([{"reward": 1, "eval_seconds": 2}, {"reward": 0, "eval_seconds": 3, "cached": True}]) == (
        [1, 1], [2.0, 2.0])
    other = RunResult("y", 0, 3, 0.5, 0.25, 0.5, 100, 1, 1.0, None)
    rows = leaderboard([a, b, other])
    assert [r["agent"] for r in rows] == ["y", "x"]  # sorted by mean best reward: 0.5 > -0.5
    x = rows[1]
    assert x["seeds"] == 2 and x["best_reward_mean"] == pytest.approx(-0.5)
    assert x["best_reward_std"] == pytest.approx(np.std([1.0, -2.0], ddof=1))
    assert x["evals_to_reach_mean"] == pytest.approx(3.0) and x["seconds_to_reach_mean"] == pytest.approx(5.0)
    assert x["final_test_mean"] == pytest.approx(0.7) and x["final_test_std"] == pytest.approx(np.std([.8, .6], ddof=1))
    assert rows[0]["final_test_mean"] is None and rows[0]["final_test_n"] == 0 and rows[0]["best_reward_std"] == 0.0


def test_agents_that_cannot_act_on_the_env_are_refused_before_anything_trains(tmp_path, tiny_config, capsys):
    out = tmp_path / "cmp"
    code = cli("--env", "removal-resnet20-synthetic", "--agent", "random,legr,tas", "--seeds", "2", "--budget", 3,
               "--fidelity", "smoke", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and "legr" in err and "tas" in err and "ranking-affine" in err and "channel-ratio" in err
    assert not out.exists() or not any(p.is_dir() for p in out.iterdir()), "nothing ran"


def test_agents_asking_for_different_env_options_cannot_share_an_env():
    bases = {"tas": {"run": {"env_kwargs": {"granularity": "conv"}}}, "random": {"run": {}}}
    assert shared_env_settings(bases)["env_kwargs"] == {"granularity": "conv"}  # every agent gets TAS's options
    bases["other"] = {"run": {"env_kwargs": {"granularity": "stage"}}}
    with pytest.raises(ConfigError, match="different envs"):
        shared_env_settings(bases)


def test_a_killed_comparison_resumes_without_rerunning_finished_runs_or_evaluations(finished, tmp_path):
    reference, config = finished
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "run_agent.py"), *map(str, _comparison(out, config))]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "n2n-s0" / "evaluations.jsonl"  # the third of four runs, part-way
    deadline = time.time() + 600
    while len(read_records(target)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "random-s1" / "summary.json").exists() and not (out / "n2n-s0" / "summary.json").exists()
    finished_before = {p: p.read_bytes() for run in ("random-s0", "random-s1")
                       for p in (out / run / "evaluations.jsonl", out / run / "summary.json")}
    assert cli("--resume", out) == 0
    for path, content in finished_before.items():
        assert path.read_bytes() == content, "a finished run was not re-run"
    keys = ("index", "action", "arch_key", "reward", "valid")
    for run in ("random-s0", "random-s1", "n2n-s0", "n2n-s1"):
        got = [{k: r.get(k) for k in keys} for r in read_records(out / run / "evaluations.jsonl")]
        want = [{k: r.get(k) for k in keys} for r in read_records(reference / run / "evaluations.jsonl")]
        assert got == want, run  # each evaluation once, as the uninterrupted comparison recorded it
    rows = [list(csv.DictReader((d / "leaderboard.csv").open())) for d in (out, reference)]
    assert [(r["agent"], r["best_reward_mean"], r["evals_to_reach_mean"]) for r in rows[0]] == [
        (r["agent"], r["best_reward_mean"], r["evals_to_reach_mean"]) for r in rows[1]]


def test_a_resume_cannot_change_what_the_comparison_is(finished, capsys):
    out, _ = finished
    assert cli("--resume", out, "--budget", 9) == 2
    assert "compare.yaml" in capsys.readouterr().err


def test_the_leaderboard_hypervolume_is_each_runs_front_hypervolume_averaged(tmp_path):
    """Hand-made records: the column is the mean over seeds of netcomp.pareto.front_hypervolume, and agrees
    with a hand computation of one run's front."""
    from runner.compare import leaderboard, run_result

    def rec(i, acc, macs, valid=True):
        return {"index": i, "reward": acc, "valid": valid, "accuracy": acc, "macs": macs, "teacher_macs": 100,
                "compression": 0.5, "cached": False, "eval_seconds": 1.0}

    runs = {0: [rec(0, 0.5, 50), rec(1, 0.8, 80), rec(2, 0.4, 60)],          # front (0.5, 50), (0.8, 80)
            1: [rec(0, 0.9, 100, valid=False), rec(1, 0.6, 25)]}               # front (0.6, 25)
    for seed, records in runs.items():
        folder = tmp_path / f"a-s{seed}"
        folder.mkdir()
        (folder / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = [run_result("a", seed, tmp_path / f"a-s{seed}") for seed in runs]
    # seed 0: 0.5 x (1 - 0.5) + (0.8 - 0.5) x (1 - 0.8) = 0.31; seed 1: 0.6 x 0.75 = 0.45
    assert [r.hypervolume for r in results] == pytest.approx([0.31, 0.45])
    row = leaderboard(results)[0]
    assert row["hypervolume_mean"] == pytest.approx(0.38) and row["hypervolume_n"] == 2


def test_one_agent_twice_under_two_labels_with_its_own_settings(tmp_path, capsys):
    from runner.registry import get_agent  # noqa: F401 (the registry resolves the label's agent)
    from tests.conftest import TINY, cli

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                              "dataset_kwargs": dict(TINY)}}))
    (tmp_path / "b1.yaml").write_text(yaml.safe_dump({"batch": 1}))
    out = tmp_path / "cmp"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "random,random@b1", "--seeds", 1, "--budget", 2,
               "--config", config, "--agent-config", f"random@b1={tmp_path / 'b1.yaml'}", "--out", out) == 0
    saved = {label: yaml.safe_load((out / f"{label}-s0" / "config.yaml").read_text())
             for label in ("random", "random@b1")}
    assert saved["random"]["agent"] == saved["random@b1"]["agent"] == "random"
    assert saved["random@b1"]["agent_config"]["batch"] == 1 and saved["random"]["agent_config"].get("batch") != 1
    board = (out / "leaderboard.md").read_text()
    assert "| random |" in board and "| random@b1 |" in board
    assert cli("--resume", out) == 0  # the saved settings match: resumes as finished
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "random", "--agent-config",
               f"random={tmp_path / 'b1.yaml'}", "--out", tmp_path / "one") == 2
