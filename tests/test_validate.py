"""run_agent.py --validate: a run's top students are rebuilt, retrained without the cache and re-scored exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from agents.base import one_torch_thread
from envs.base import CompressionEnv
from netcomp.evaluator import Evaluator
from runner.recorder import read_records
from runner.validate import validate_run
from tests.conftest import TINY, cli

pytestmark = pytest.mark.usefixtures("one_thread")


def make_run(out: Path, tiny_yaml: Path, *argv) -> Path:
    """A finished run made with the real command line on the tiny synthetic data at the smoke fidelity."""
    with one_torch_thread():
        assert cli(*argv, "--seed", 0, "--config", tiny_yaml, "--out", out) == 0
    return out


def tiny_yaml(folder: Path, agent_config: dict | None = None) -> Path:
    """A --config file: tiny synthetic data, smoke fidelity, and the agent's (cheap) settings."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                            "dataset_kwargs": dict(TINY)},
                                    "agent_config": agent_config or {}}))
    return path


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run to edit (the module's runs are shared by several tests)."""
    shutil.copytree(run, dest)
    return dest


def rewrite_records(run: Path, edit) -> None:
    """Apply ``edit(record)`` to every record and rewrite evaluations.jsonl."""
    records = read_records(run / "evaluations.jsonl")
    for r in records:
        edit(r)
    (run / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    """One random-search run (4 evaluations) shared by the tests that only read or copy it."""
    folder = tmp_path_factory.mktemp("random")
    return make_run(folder / "run", tiny_yaml(folder), "--env", "removal-resnet20-synthetic", "--agent", "random",
                    "--budget", 4)


def test_an_untouched_run_replays_exactly(random_run, capsys):
    assert cli("--validate", random_run, "--top", 3) == 0
    out = capsys.readouterr().out
    assert str(random_run) in out and "tolerance 0" in out and "device cpu" in out and "3/3 agree" in out
    rows = validate_run(random_run, top=3)
    records = read_records(random_run / "evaluations.jsonl")
    best = sorted(records, key=lambda r: (-r["reward"], r["index"]))[:3]
    assert [r["index"] for r in rows] == [r["index"] for r in best]
    assert all(r["agree"] and r["diff"] == 0 and r["replayed"] == r["recorded"] for r in rows)


def test_the_run_cache_is_not_used(random_run, monkeypatch):
    """Every replayed student is trained again (no cache file, no in-memory reuse)."""
    trained = []
    original = Evaluator._train

    def counting(self, students, *args, **kwargs):
        assert self.cache_path is None
        trained.extend(students)
        return original(self, students, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "_train", counting)
    rows = validate_run(random_run, top=2)
    assert len(trained) == 2 and all(r["agree"] for r in rows)


def test_an_edited_reward_disagrees_and_the_others_still_agree(random_run, tmp_path, capsys):
    run = copy_run(random_run, tmp_path / "edited")
    top = max(read_records(run / "evaluations.jsonl"), key=lambda r: (r["reward"], -r["index"]))["index"]
    rewrite_records(run, lambda r: r.update(reward=r["reward"] + 0.01) if r["index"] == top else None)
    assert cli("--validate", run, "--top", 3) == 1
    assert "2/3 agree" in capsys.readouterr().out
    rows = validate_run(run, top=3)
    assert rows[0]["index"] == top and not rows[0]["agree"] and rows[0]["diff"] == pytest.approx(0.01)
    assert all(r["agree"] and r["diff"] == 0 for r in rows[1:])


def test_a_different_teacher_is_reported_and_nothing_trains(random_run, tmp_path, monkeypatch, capsys):
    run = copy_run(random_run, tmp_path / "other-teacher")
    rewrite_records(run, lambda r: r["replay"]["teacher"].update(sha256="0" * 64))

    def no_training(*args, **kwargs):
        raise AssertionError("a student was trained despite the teacher mismatch")

    monkeypatch.setattr(Evaluator, "_train", no_training)
    monkeypatch.setattr(Evaluator, "evaluate_weights", no_training)
    assert cli("--validate", run, "--top", 2) == 1
    out = capsys.readouterr().out
    assert "teacher differs" in out and "0" * 64 in out and "0/2 agree" in out
    rows = validate_run(run, top=2)
    assert len(rows) == 2 and all(not r["agree"] and r["replayed"] is None for r in rows)
    assert all("teacher differs" in r["reason"] for r in rows)


def test_records_without_a_replay_spec_are_not_replayable(random_run, tmp_path):
    run = copy_run(random_run, tmp_path / "old")
    rewrite_records(run, lambda r: r.pop("replay"))
    rows = validate_run(run, top=2)
    assert len(rows) == 2 and all(not r["agree"] and "not replayable" in r["reason"] for r in rows)


def test_a_directory_without_config_is_exit_code_2(random_run, tmp_path, capsys):
    run = copy_run(random_run, tmp_path / "noconfig")
    (run / "config.yaml").unlink()
    assert cli("--validate", run) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert cli("--validate", tmp_path / "nowhere") == 2


def test_a_sequential_run_replays(tmp_path):
    run = make_run(tmp_path / "ppo", tiny_yaml(tmp_path), "--env", "shrinkage-resnet20-synthetic", "--agent", "ppo",
                   "--budget", 3)
    records = read_records(run / "evaluations.jsonl")
    assert yaml.safe_load((run / "config.yaml").read_text())["mode"] == "sequential"
    assert all(isinstance(r["action"], list) and r["replay"]["env_kwargs"]["mode"] == "sequential" for r in records)
    rows = validate_run(run, top=3)
    assert len(rows) == 3 and all(r["agree"] and r["diff"] == 0 for r in rows)


def test_n2n_stage_two_shrinkage_records_replay(tmp_path):
    """N2N's stage 2 scores on a shrinkage env made with removed=[...]: that kwarg is replayed too."""
    config = tiny_yaml(tmp_path, {"rollouts": 2, "finetune": False, "stage2_fraction": 0.5})
    run = make_run(tmp_path / "n2n", config, "--env", "removal-resnet20-synthetic", "--agent", "n2n",
                   "--budget", 4)
    records = read_records(run / "evaluations.jsonl")
    stage2 = [r for r in records if r["space"] == "shrinkage"]
    assert len(stage2) == 2 and all("removed" in r["replay"]["env_kwargs"] for r in stage2)
    rows = validate_run(run, top=4)
    assert {r["space"] for r in rows} == {"removal", "shrinkage"}
    assert all(r["agree"] and r["diff"] == 0 for r in rows), rows


def test_a_submitted_student_replays_from_its_saved_weights(tmp_path, monkeypatch):
    config = tiny_yaml(tmp_path, {"threshold": 0.07, "decays": [1e-3]})
    run = make_run(tmp_path / "hoyer", config, "--env", "channel-ratio-resnet20-synthetic", "--agent", "hoyer")
    records = read_records(run / "evaluations.jsonl")
    assert records and all(r["action"] is None and r["student"] and r["weights"] for r in records)
    seen = []
    original = CompressionEnv.score_student

    def spy(self, student, weights=None, train=True):
        seen.append((weights, train))
        return original(self, student, weights, train=train)

    monkeypatch.setattr(CompressionEnv, "score_student", spy)
    rows = validate_run(run, top=1)
    assert len(rows) == 1 and rows[0]["agree"] and rows[0]["diff"] == 0
    weights, train = seen[0]
    record = next(r for r in records if r["index"] == rows[0]["index"])
    saved = torch.load(run / record["weights"], weights_only=True)
    assert train == record["trained"] and weights.keys() == saved.keys()
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
