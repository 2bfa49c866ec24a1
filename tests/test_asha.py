"""The multi-fidelity agent (asha): a rung ladder over the KD budget in the evaluator, each rung cached and
charged its own seconds, Optuna's successive-halving rule hand-checked on the records, lower rungs kept out of
a run's best, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agents.base import Budget, make_config
from envs.channel_ratio import ChannelRatioEnv
from netcomp.distill import planned_steps
from netcomp.evaluator import load_fidelity
from runner.compare import best_so_far
from runner.recorder import Recorder, RunLog, best, full_fidelity, read_records
from runner.registry import get_agent
from runner.validate import replay_info
from tests.conftest import TINY, cli

#: The smoke recipe made 16 SGD steps long (256 tiny images in batches of 16): rungs of 1, 4 and 16 steps.
RUNGS = {"name": "rungs", "teacher_recipe": "smoke",
         "train": {"loss": "kd", "epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                   "train_max": 256, "eval_max": 64, "bn_recalibrate": 1, "eval_every_epoch": False}}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    made = ChannelRatioEnv(arch="resnet20", dataset="synthetic", fidelity=RUNGS, dataset_kwargs=dict(TINY))
    made.reset(seed=0)
    return made


def _agent(env, budget=16, seed=0, run_dir=None, **overrides):
    log = RunLog(Budget(budget), None if run_dir is None else Path(run_dir) / "evaluations.jsonl")
    cls = get_agent("asha")
    return cls(Recorder(env, log), make_config(cls.Config, {"batch": 4, "startup_trials": 4, **overrides}),
               seed=seed, run_dir=run_dir)


def test_a_fidelity_cut_to_a_rung_trains_that_many_steps_under_its_own_cache_key(env):
    fidelity = load_fidelity(RUNGS)
    rung = fidelity.at_steps(4)
    assert rung.name == "rungs@4" and rung.train.max_steps == 4 and rung.key() != fidelity.key()
    assert planned_steps(fidelity.train, 256) == env.unwrapped.evaluator.full_steps == 16
    assert planned_steps(fidelity.train, 8) == 1 and planned_steps(rung.train, 10_000) == 4
    action = env.action_space.sample()
    cut, full = env.unwrapped.evaluate_many([action], steps=4)[0], env.unwrapped.evaluate_many([action])[0]
    results = env.unwrapped.last_results
    assert env.unwrapped.evaluate_many([action], steps=4)[0]["accuracy"] == cut["accuracy"]  # cached apart
    assert env.unwrapped.last_results[0].cached and results[0].extra["steps"] == 16
    assert cut["eval_seconds"] > 0 and cut["eval_seconds"] != full["eval_seconds"]
    with pytest.raises(ValueError, match="whole number of steps"):
        fidelity.at_steps(0)


def test_the_ladder_climbs_by_the_reduction_factor_to_the_fidelity_itself(env):
    assert _agent(env).rungs == [1, 4, None]
    assert _agent(env, min_steps=2, reduction_factor=3).rungs == [2, 6, None]
    assert _agent(env, min_steps=16).rungs == [None]  # no lower rung: plain TPE
    with pytest.raises(ValueError, match="study_storage"):
        make_config(get_agent("asha").Config, {"study_storage": "x.log"})
    with pytest.raises(ValueError, match="objective"):
        make_config(get_agent("asha").Config, {"objective": "pareto"})


def _promotions(records, eta=4):
    """Optuna's successive-halving rule recomputed by hand from the records: a student scored at a rung goes on
    when valid and at least the ``max(1, n // eta)``-th best of the n scores at that rung so far."""
    seen: dict[int, list[float]] = {}
    decided = []
    for r in records:
        if r.get("rung") is None:
            continue
        scores = seen.setdefault(r["rung"], [])
        scores.append(r["reward"])
        k = max(1, len(scores) // eta)
        decided.append((r["rung"], r["arch_key"], r["valid"] and r["reward"] >= sorted(scores)[-k]))
    return decided


def test_students_climb_only_when_the_pruner_promotes_them_and_the_top_rung_is_the_envs_reward(env, tmp_path):
    agent = _agent(env, budget=24, run_dir=tmp_path)
    agent.run()
    records = agent.env.records
    assert agent.budget.used == 24 and [r["index"] for r in records] == list(range(24))
    rungs = [r.get("rung") for r in records]
    assert set(rungs) == {1, 4, None} and rungs[:4] == [1] * 4  # a batch of 4 starts at the first rung
    promoted = {(rung, key) for rung, key, up in _promotions(records) if up}
    for r in records:  # every later-rung score is of a student promoted from the rung below
        below = {None: 4, 4: 1}.get(r.get("rung"))
        if below is not None:
            assert (below, r["arch_key"]) in promoted
    assert sum(1 for _, _, up in _promotions(records) if not up) > 0  # some were stopped early
    top = [r for r in records if full_fidelity(r)]
    fresh = env.unwrapped.evaluate_many([r["action"] for r in top])  # the env's own reward, from its cache
    assert [i["reward"] for i in fresh] == [r["reward"] for r in top]
    assert agent.notes["asha"]["rung_steps"] == [1, 4, 16]
    assert agent.notes["asha"]["scored_per_rung"] == [rungs.count(1), rungs.count(4), rungs.count(None)]
    trials = agent.study.trials
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED", "RUNNING"}
    assert sum(t.state.name == "COMPLETE" for t in trials) == len(top)


def test_a_lower_rung_never_counts_as_the_runs_best_but_its_seconds_do():
    base = {"valid": True, "accuracy": 0.5, "space": "channel-ratio", "cached": False}
    records = [{**base, "index": 0, "reward": 0.9, "rung": 1, "eval_seconds": 2.0},
               {**base, "index": 1, "reward": 0.4, "eval_seconds": 3.0}]
    assert best(records)["index"] == 1 and best(records, valid_only=True)["index"] == 1
    assert best(records[:1]) is None
    curve, seconds = best_so_far(records)
    assert curve == [float("-inf"), 0.4] and seconds == [2.0, 5.0]


def _config(tmp_path):
    path = tmp_path / "asha.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": RUNGS, "dataset_kwargs": dict(TINY), "threads": 1,
                                            "export": False, "save_best": False},
                                    "agent_config": {"batch": 4, "startup_trials": 4}}))
    return str(path)


def _cmd(out, config, budget):
    return ["--env", "channel-ratio-resnet20-synthetic", "--agent", "asha", "--budget", str(budget), "--config",
            config, "--seed", "2", "--threads", "1", "--out", str(out)]


def _same(a, b):
    keys = ("index", "action", "arch_key", "reward", "valid", "rung")
    return [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]


def test_a_killed_or_extended_run_replays_its_rungs_and_ends_as_the_uninterrupted_run(tmp_path):
    config = _config(tmp_path)
    assert cli(*_cmd(tmp_path / "ref", config, 20)) == 0
    reference = read_records(tmp_path / "ref" / "evaluations.jsonl")
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["best"]["index"] == best(reference)["index"] and "rung" not in summary["best"]
    # extended: 10 evaluations, then --resume with 20
    assert cli(*_cmd(tmp_path / "ext", config, 10)) == 0
    assert cli("--resume", tmp_path / "ext", "--budget", 20) == 0
    assert _same(read_records(tmp_path / "ext" / "evaluations.jsonl"), reference)
    # killed after 13 evaluations: the record cut there, no summary, the cache as a kill leaves it
    out = tmp_path / "killed"
    assert cli(*_cmd(out, config, 20)) == 0
    lines = (out / "evaluations.jsonl").read_text().splitlines(keepends=True)
    (out / "evaluations.jsonl").write_text("".join(lines[:13]))
    (out / "summary.json").unlink()
    assert cli("--resume", out) == 0
    after = read_records(out / "evaluations.jsonl")
    assert _same(after, reference) and all(r["cached"] for r in after[13:])  # nothing trained twice


def test_a_rung_record_replays_at_its_rung(env, tmp_path):
    agent = _agent(env, budget=4, seed=1)
    agent.run()
    record = agent.env.records[0]
    assert record["rung"] == 1
    info = replay_info(env, record, tmp_path)
    assert info["reward"] == record["reward"] and info["accuracy"] == record["accuracy"]


def test_a_table_env_is_refused_with_the_reason():
    import gymnasium as gym

    table = gym.make("netcomp/channel-ratio-lenet5-fashionmnist-v0", fidelity="table")
    with pytest.raises(ValueError, match="a table holds one\\s+fidelity"):
        _agent(table)
