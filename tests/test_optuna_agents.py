"""The Optuna agents (tpe, cmaes, gp, nsga2): every declared space, seeded asks, batched ask/tell, exact resume
after SIGKILL and after an extension, shared journal studies, the Pareto front and its hypervolume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from agents.base import Budget, make_config
from agents.optuna_agents import (
    INDEX_ATTR,
    RUN_ATTR,
    CmaEsConfig,
    NSGA2Config,
    OptunaAgent,
    OptunaConfig,
    ParetoConfig,
    encoding_for,
    open_storage,
)
from envs.channel_ratio import ChannelRatioEnv
from envs.edit import EditEnv
from envs.ranking_affine import RankingAffineEnv
from envs.removal import RemovalEnv
from envs.shrinkage import ShrinkageEnv
from netcomp.pareto import front_csv, front_hypervolume, hypervolume, pareto_front
from runner.recorder import Recorder, RunLog, read_records
from runner.registry import AGENTS, get_agent
from tests.conftest import TINY, cli

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("tpe", "cmaes", "gp", "nsga2")
ENVS = {"removal": RemovalEnv, "shrinkage": ShrinkageEnv, "channel-ratio": ChannelRatioEnv,
        "ranking-affine": RankingAffineEnv, "edit": EditEnv}
#: Few random trials, so a budget of 4-6 reaches the samplers' models.
SMALL = {"batch": 2, "startup_trials": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def _needs(name: str) -> None:
    if name == "cmaes":
        pytest.importorskip("cmaes", reason="Optuna's CmaEsSampler needs the cmaes package")


@pytest.fixture(scope="module")
def envs():
    """One tiny env per space, made once (their evaluation caches make repeated students free)."""
    made = {}

    def get(space):
        if space not in made:
            made[space] = ENVS[space](arch="resnet20", dataset="synthetic", fidelity="smoke",
                                      dataset_kwargs=dict(TINY))
            made[space].reset(seed=0)
        return made[space]
    return get


def _agent(env, name, budget=4, seed=0, run_dir=None, **overrides):
    cls = get_agent(name)
    log = RunLog(Budget(budget), None if run_dir is None else Path(run_dir) / "evaluations.jsonl")
    config = make_config(cls.Config, {**SMALL, "population": 4, **overrides})
    return cls(Recorder(env, log), config, seed=seed, run_dir=run_dir)


def _actions(agent):
    return [r["action"] for r in agent.env.records]


# ---------------------------------------------------------------------------------------- registry, config
def test_the_agents_are_registered_with_every_one_shot_space():
    for name in NAMES:
        cls = get_agent(name)
        assert issubclass(cls, OptunaAgent) and cls.name == name and AGENTS[name].endswith(cls.__name__)
        assert set(cls.spaces) == set(ENVS) and cls.modes == ("oneshot",) and cls.kind == "blackbox"
    assert get_agent("nsga2").Config().objective == "pareto" and get_agent("gp").Config().objective == "pareto"
    assert get_agent("tpe").Config().objective == "reward" and NSGA2Config().batch == 10


@pytest.mark.parametrize("overrides,message", [
    ({"batch": 0}, "OptunaConfig.batch=0 is invalid: expected an integer >= 1"), ({"batch": 2.5}, "batch"),
    ({"objective": "accuracy"}, r"OptunaConfig.objective='accuracy' is invalid: expected one of reward, pareto"),
    ({"size_metric": "flops"}, "size_metric.*expected one of macs, params"),
    ({"discrete": "onehot"}, "discrete.*expected one of int, categorical"),
    ({"edit_skips": "yes"}, "edit_skips.*expected true or false"),
    ({"startup_trials": 0}, "startup_trials=0 is invalid: expected an integer >= 1 \\(or null\\)"),
    ({"population": 1}, "population=1 is invalid: expected an integer >= 2"), ({"study_storage": ""}, "study_storage"),
    ({"study_name": ""}, "study_name"),
])
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        OptunaConfig(**overrides)


def test_cmaes_refuses_two_objectives_and_unknown_keys_are_errors():
    with pytest.raises(ValueError, match="CmaEsConfig.objective='pareto' is invalid: expected one of reward"):
        CmaEsConfig(objective="pareto")
    with pytest.raises(ValueError, match="CmaEsConfig.population=3 is invalid: expected an integer >= 4"):
        CmaEsConfig(population=3)
    with pytest.raises(ValueError, match="unknown OptunaConfig keys.*n_trials"):
        make_config(OptunaConfig, {"n_trials": 3})
    assert ParetoConfig(size_metric="params").size_metric == "params"


# ---------------------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("space", list(ENVS))
def test_every_space_is_encoded_and_decodes_into_the_action_space(envs, space):
    env = envs(space)
    enc = encoding_for(env, OptunaConfig())
    rng = np.random.default_rng(0)
    for _ in range(3):
        params = {n: _draw(d, rng) for n, d in enc.distributions.items()}
        assert env.action_space.contains(enc.decode(params))
    kinds = {type(d).__name__ for d in enc.distributions.values()}
    if space in ("channel-ratio", "ranking-affine"):
        assert len(enc.distributions) == env.action_space.shape[0] and kinds == {"FloatDistribution"}
    elif space in ("removal", "shrinkage"):
        high = 1 if space == "removal" else len(env.lookup) - 1
        assert len(enc.distributions) == env.action_space.shape[0]
        assert {(d.low, d.high) for d in enc.distributions.values()} == {(0, high)}
        cat = encoding_for(env, OptunaConfig(discrete="categorical")).distributions
        assert {d.choices for d in cat.values()} == {tuple(range(high + 1))}
    else:  # edit: removal bits and width ratios; the skips only with edit_skips
        assert len(enc.distributions) == len(env.removable) + len(env.width_classes)
        skips = encoding_for(env, OptunaConfig(edit_skips=True)).distributions
        assert len(skips) == env.action_space.shape[0]


def _draw(dist, rng):
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return float(rng.uniform(dist.low, dist.high))
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(rng.integers(dist.low, dist.high + 1))
    return dist.choices[int(rng.integers(len(dist.choices)))]


def test_the_edit_encoding_names_its_edits(envs):
    env = envs("edit")
    enc = encoding_for(env, OptunaConfig())
    params = {n: 0 for n in enc.distributions}
    params.update({"remove00": 1, "remove03": 1, "ratio0": 0.25, "ratio2": 1.0})
    removed, ratios, skips = env.split_action(enc.decode(params))
    assert removed == [env.removable[0], env.removable[3]] and skips == []
    assert ratios == pytest.approx([0.25, 0.0, 1.0])


# ---------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("space", list(ENVS))
@pytest.mark.parametrize("name", NAMES)
def test_each_agent_runs_on_each_space_and_tells_every_evaluation(envs, name, space, tmp_path):
    _needs(name)
    agent = _agent(envs(space), name, budget=4, run_dir=tmp_path)
    agent.run()
    records, trials = agent.env.records, agent.study.trials
    assert agent.budget.used == 4 and [r["index"] for r in records] == [0, 1, 2, 3] and agent.batches == [2, 2]
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert [list(t.values) for t in trials] == [agent.values(r) for r in records]
    assert [agent.encoding.decode(t.params).tolist() for t in trials] == _actions(agent)
    assert len(agent.study.directions) == (2 if agent.config.objective == "pareto" else 1)
    assert all(agent.env.action_space.contains(np.asarray(a, agent.env.action_space.dtype)) for a in _actions(agent))
    front = list(csv.DictReader((tmp_path / "pareto_front.csv").open()))
    assert [int(row["index"]) for row in front] == [r["index"] for r in pareto_front(records, "macs")]
    assert agent.notes["pareto"]["hypervolume"] == pytest.approx(front_hypervolume(records, "macs"))


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_asks_the_same_students_and_another_seed_does_not(envs, name):
    _needs(name)
    env, budget = envs("channel-ratio"), 4 if name == "gp" else 6  # GP's asks cost seconds each
    runs = {}
    for label, seed in (("a", 5), ("b", 5), ("c", 6)):
        agent = _agent(env, name, budget=budget, seed=seed)
        agent.run()
        runs[label] = _actions(agent)
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
    assert len({tuple(a) for a in runs["a"]}) == budget  # the model-based asks differ from each other


def test_a_batch_is_asked_before_it_is_told(envs):
    """TPE's constant liar sees the batch's first trial as running; told one by one, the asks differ."""
    env = envs("channel-ratio")
    batched, single = _agent(env, "tpe", budget=6), _agent(env, "tpe", budget=6, batch=1)
    batched.run()
    single.run()
    assert batched.batches == [2, 2, 2] and single.batches == [1] * 6
    assert _actions(batched)[:2] == _actions(single)[:2]  # the random start does not depend on it
    assert _actions(batched)[2:] != _actions(single)[2:]


def test_a_seconds_budget_is_spent_one_trial_at_a_time(envs):
    env = envs("shrinkage")
    agent = get_agent("tpe")(Recorder(env, RunLog(Budget(seconds=1e-9))), OptunaConfig(batch=4), seed=0)
    agent.run()  # a student another test scored is cached (free): it does not end the budget
    assert set(agent.batches) == {1} and agent.budget.exhausted and agent.budget.eval_seconds > 0


def test_an_invalid_student_is_told_the_worst_point_and_never_enters_the_front(envs):
    agent = _agent(envs("removal"), "nsga2", size_metric="params")
    info = {"valid": False, "accuracy": 0.9, "params": 10, "macs": 20, "teacher_params": 1000,
            "teacher_macs": 2000, "reward": -1.0}
    assert agent.values(info) == [0.0, 1000.0]
    assert agent.values({**info, "valid": True}) == [0.9, 10.0]
    assert _agent(envs("removal"), "tpe").values(info) == [-1.0]
    assert pareto_front([{**info, "index": 0}], "params") == []


def test_nsga2_breeds_generations_on_accuracy_and_size_and_its_front_is_optunas(envs):
    agent = _agent(envs("removal"), "nsga2", budget=8, batch=4, population=4, seed=1)
    agent.run()
    assert agent.study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert [t.system_attrs.get("NSGAIISampler:generation") for t in agent.study.trials] == [0] * 4 + [1] * 4
    ours = {(r["accuracy"], r["macs"]) for r in pareto_front(agent.env.records, "macs")}
    assert all(r["valid"] for r in agent.env.records) and ours == {tuple(t.values) for t in agent.study.best_trials}


# ---------------------------------------------------------------------------------------- the front
RECORDS = [  # (index, valid, accuracy, macs): hand-checked below
    (0, True, 0.50, 200), (1, True, 0.60, 400), (2, True, 0.40, 500), (3, True, 0.80, 600),
    (4, False, 0.95, 100), (5, True, 0.60, 400), (6, True, 0.55, 450), (7, True, 0.80, 650),
    (8, True, None, 50), (9, True, 0.30, 150),
]


def _records():
    return [{"index": i, "valid": v, "accuracy": a, "macs": m, "params": 10 * m, "teacher_macs": 1000,
             "teacher_params": 10000, "arch_key": f"k{i}"} for i, v, a, m in RECORDS]


def test_the_front_is_the_hand_checked_non_dominated_set():
    # 2 (0.40 at 500) is dominated by 1, 6 (0.55 at 450) by 1, 7 (0.80 at 650) by 3; 5 repeats 1 (first kept);
    # 4 is invalid and 8 has no accuracy; 9 (0.30 at 150) is the smallest valid student
    front = pareto_front(_records(), "macs")
    assert [r["index"] for r in front] == [9, 0, 1, 3]
    assert [r["index"] for r in pareto_front(_records(), "params")] == [9, 0, 1, 3]
    rows = list(csv.reader(front_csv(front).splitlines()))
    assert rows[0] == ["index", "accuracy", "macs", "params", "arch_key"]
    assert rows[1] == ["9", "0.3", "150", "1500", "k9"] and len(rows) == 5
    with pytest.raises(ValueError, match="unknown size_key 'flops'"):
        pareto_front(_records(), "flops")


def test_hypervolume_against_a_hand_computation():
    # the front's staircase up to the reference size 1000 (accuracy 0):
    # (200-150)*0.30 + (400-200)*0.50 + (600-400)*0.60 + (1000-600)*0.80 = 15 + 100 + 120 + 320 = 555
    points = [(r["accuracy"], r["macs"]) for r in _records() if r["valid"] and r["accuracy"] is not None]
    assert hypervolume(points, 1000) == pytest.approx(555.0)
    assert hypervolume(points, 1000, relative=True) == pytest.approx(0.555)
    assert front_hypervolume(_records(), "macs") == pytest.approx(0.555)
    assert front_hypervolume(_records(), "params", relative=False) == pytest.approx(5550.0)
    assert hypervolume([(0.5, 100)], 100) == 0.0 and hypervolume([], 10) == 0.0  # at the reference: nothing
    assert hypervolume([(0.5, 2.0), (0.4, 4.0)], 10, ref_accuracy=0.2) == pytest.approx(8 * 0.3)
    with pytest.raises(ValueError, match="ref_size"):
        hypervolume(points, 0)


# ---------------------------------------------------------------------------------------- resume
def _tiny_config(tmp_path, agent_config):
    path = tmp_path / "optuna.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "dataset_kwargs": dict(TINY), "save_best": False},
                                    "agent_config": agent_config}))
    return str(path)


def _cmd(out, config, budget, agent="tpe", seed=3):
    # one torch thread, as this process trains (conftest): subprocesses then score students identically
    return ["--env", "channel-ratio-resnet20-synthetic", "--agent", agent, "--budget", str(budget), "--config",
            config, "--seed", str(seed), "--threads", "1", "--out", str(out)]


def _same(a, b):
    keys = ("index", "action", "arch_key", "reward", "valid", "accuracy", "macs")
    return [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]


def test_an_extended_run_rebuilds_its_study_from_the_records_and_continues_as_one_long_run(tmp_path):
    config = _tiny_config(tmp_path, SMALL)
    assert cli(*_cmd(tmp_path / "ref", config, 8)) == 0
    out = tmp_path / "run"
    assert cli(*_cmd(out, config, 4)) == 0
    first = read_records(out / "evaluations.jsonl")
    assert cli("--resume", out, "--budget", 8) == 0
    after, reference = read_records(out / "evaluations.jsonl"), read_records(tmp_path / "ref" / "evaluations.jsonl")
    assert _same(after, reference) and after[:4] == first
    assert [r["cached"] for r in after[4:]] == [r["cached"] for r in reference[4:]]  # nothing asked again
    assert (out / "pareto_front.csv").read_text() == (tmp_path / "ref" / "pareto_front.csv").read_text()
    notes = json.loads((out / "summary.json").read_text())["notes"]["pareto"]
    assert notes["size_metric"] == "macs" and notes["hypervolume"] == pytest.approx(front_hypervolume(after, "macs"))


def test_a_changed_study_is_refused_on_resume(tmp_path, monkeypatch):
    config = _tiny_config(tmp_path, SMALL)
    out = tmp_path / "run"
    assert cli(*_cmd(out, config, 4)) == 0
    from optuna.samplers import TPESampler

    monkeypatch.setattr("agents.optuna_agents.TPEAgent.make_sampler", lambda self: TPESampler(seed=99))
    assert cli("--resume", out, "--budget", 6) == 2  # a ReplayMismatch, one line on stderr


def test_a_killed_run_resumes_to_the_uninterrupted_record_and_trains_nothing_twice(tmp_path):
    config = _tiny_config(tmp_path, SMALL)
    ref = tmp_path / "ref"  # the uninterrupted run, in this process
    assert cli(*_cmd(ref, config, 10)) == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_agent.py"), *_cmd(out, config, 10)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(read_records(out / "evaluations.jsonl")) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_records(out / "evaluations.jsonl")
    assert 5 <= len(before) < 10, "the run must be killed in the middle"
    saved = torch.load(out / "checkpoint.pt", weights_only=True)  # saved after every batch
    assert saved["evaluations"] >= 4 and sum(saved["agent"]["batches"]) == saved["evaluations"]
    resumed = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--resume", str(out)], cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    after, reference = read_records(out / "evaluations.jsonl"), read_records(ref / "evaluations.jsonl")
    assert [r["index"] for r in after] == list(range(10)) and _same(after, reference)
    trained = [r["arch_key"] for r in after if not r["cached"]]
    assert len(trained) == len(set(trained))  # no student trained twice
    assert (out / "pareto_front.csv").read_text() == (ref / "pareto_front.csv").read_text()


# ---------------------------------------------------------------------------------------- shared studies
def test_two_processes_share_one_journal_study_and_lose_no_evaluation(tmp_path):
    journal = tmp_path / "study.journal"
    config = _tiny_config(tmp_path, {**SMALL, "study_name": "shared"})
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_agent.py"), *_cmd(out, config, 4, seed=seed),
                               "--study-storage", str(journal)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for seed, out in enumerate(outs)]
    for proc in procs:
        assert proc.wait(timeout=180) == 0, proc.stderr.read()
    study = optuna.load_study(study_name="shared", storage=open_storage(str(journal)))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    env = ChannelRatioEnv(arch="resnet20", dataset="synthetic", fidelity="smoke", dataset_kwargs=dict(TINY))
    enc = encoding_for(env, OptunaConfig())
    for out in outs:
        records = read_records(out / "evaluations.jsonl")
        mine = sorted((t for t in trials if t.user_attrs[RUN_ATTR] == str(out.resolve())),
                      key=lambda t: t.user_attrs[INDEX_ATTR])
        assert [t.user_attrs[INDEX_ATTR] for t in mine] == [r["index"] for r in records] == [0, 1, 2, 3]
        assert [enc.decode(t.params).tolist() for t in mine] == [r["action"] for r in records]
        assert [t.values[0] for t in mine] == [r["reward"] for r in records]


def test_a_shared_run_killed_mid_batch_scores_and_tells_its_running_trials_on_resume(envs, tmp_path):
    env, storage = envs("shrinkage"), str(tmp_path / "study.journal")
    agent = _agent(env, "tpe", budget=4, run_dir=tmp_path, study_storage=storage)

    checkpoints, evaluate = [], agent.evaluate_many

    def evaluate_until_killed(actions):
        if checkpoints:  # the second batch is asked (its trials are running) but the process dies
            raise KeyboardInterrupt
        return evaluate(actions)

    agent.evaluate_many = evaluate_until_killed
    agent.on_checkpoint = lambda: checkpoints.append(agent.state())
    with pytest.raises(KeyboardInterrupt):
        agent.run()
    running = [t for t in agent.study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.user_attrs[INDEX_ATTR] for t in running] == [2, 3]
    log = RunLog(Budget(4, used=2), records=list(agent.env.records))  # the checkpoint: 2 evaluations
    resumed = get_agent("tpe")(Recorder(env, log), agent.config, seed=0, run_dir=tmp_path)
    resumed.load_state(checkpoints[-1])
    resumed.run()
    assert [r["action"] for r in log.records[2:]] == [resumed.encoding.decode(t.params).tolist() for t in running]
    states = [t.state for t in resumed.study.get_trials(deepcopy=False)]
    assert len(states) == 4 and set(states) == {optuna.trial.TrialState.COMPLETE}


def test_a_shared_study_of_another_objective_is_refused(envs, tmp_path):
    storage = str(tmp_path / "study.journal")
    _agent(envs("shrinkage"), "tpe", budget=2, study_storage=storage).run()
    with pytest.raises(ValueError, match=r"optimises \['maximize'\].*'pareto' needs \['maximize', 'minimize'\]"):
        _agent(envs("shrinkage"), "nsga2", budget=2, study_storage=storage).run()


def test_an_rdb_url_is_a_shared_storage_too(envs, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    agent = _agent(envs("shrinkage"), "tpe", budget=2, run_dir=tmp_path, study_storage=url, study_name="s")
    agent.run()
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.user_attrs[INDEX_ATTR] for t in trials] == [0, 1] and [t.values[0] for t in trials] == [
        r["reward"] for r in agent.env.records]
