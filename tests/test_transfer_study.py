"""benchmarks/transfer_study.py: a source run per seed, both arms on the larger teacher, the arm's figures from
the records, and a resumed study that re-runs nothing."""

import json

import numpy as np
import pytest
import yaml

from benchmarks import transfer_study
from benchmarks.transfer_study import agent_result, reach, run_dir
from tests.conftest import TINY


def _records(*rewards, seconds=1.0):
    return [{"index": i, "reward": r, "eval_seconds": seconds} for i, r in enumerate(rewards)]


def test_reach_is_the_first_evaluation_whose_best_so_far_is_at_the_threshold():
    assert reach(_records(0.1, 0.5, 0.3, 0.7), 0.5) == (2, 2.0)
    assert reach(_records(0.1, 0.2), 0.5) == (None, None)


@pytest.fixture
def tiny_extra(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"run": {"dataset_kwargs": dict(TINY)}}))
    return path


def test_a_ppo_study_transfers_each_seeds_source_policy_and_a_rerun_trains_nothing(tmp_path, tiny_extra, capsys):
    out = tmp_path / "study"
    argv = ["--out", str(out), "--source", "resnet20", "--target", "resnet32", "--dataset", "synthetic",
            "--agents", "ppo", "--seeds", "2", "--fidelity", "smoke", "--source-budget", "8",
            "--target-budget", "3", "--config", str(tiny_extra)]
    transfer_study.main(argv)
    for seed in (0, 1):
        transferred = json.loads((run_dir(out, "ppo", "transferred", seed) / "summary.json").read_text())
        assert transferred["notes"]["transferred_from"] == str(run_dir(out, "ppo", "source", seed) / "policy.pt")
        assert transferred["notes"]["transferred_provenance"]["teacher"] == "resnet20"
        scratch = json.loads((run_dir(out, "ppo", "scratch", seed) / "summary.json").read_text())
        assert "transferred_from" not in scratch["notes"] and scratch["evaluations"] == transferred["evaluations"] == 3
    result = agent_result(out, "ppo", 2)
    for arm in ("transferred", "scratch"):   # each arm's final best is its runs' best reward
        bests = [max(r["reward"] for r in json_lines(run_dir(out, "ppo", arm, s))) for s in (0, 1)]
        assert np.allclose(result["finals"][arm], bests)
    assert result["threshold"] == pytest.approx(np.mean(result["finals"]["scratch"]))
    assert result["source_evaluations"] == [8, 8]
    table = (out / "transfer.md").read_text()
    assert table.count("\n| ppo |") == 1 and (out / "ppo_best_so_far.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("evaluations.jsonl")}
    capsys.readouterr()
    transfer_study.main(argv)                                  # finished: every run is skipped
    assert {p: p.stat().st_mtime_ns for p in out.rglob("evaluations.jsonl")} == stamps
    assert "run_agent.py" not in capsys.readouterr().out


def json_lines(directory):
    return [json.loads(line) for line in (directory / "evaluations.jsonl").read_text().splitlines()]
