"""The operating-point protocol: the env's target, the accuracy reward under it, random search's feasible draws,
the protocol fine-tune, and runner/protocol.py's table, curve, missed rows and resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

import envs  # noqa: F401 (registers the ids)
from agents.base import Budget, make_config
from agents.random_search import RandomAgent, RandomConfig
from netcomp.arch import arch_from_dict
from netcomp.evaluator import check_target, load_fidelity
from netcomp.metrics import count_macs
from netcomp.surgery import build_module
from runner.recorder import Recorder, read_records
from tests.conftest import TINY, cli

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
CHANNEL_RATIO = "netcomp/channel-ratio-resnet20-synthetic-v0"
AGENTS = ("random", "uniform")
TARGETS = (0.5, 0.001)  # 0.001 of the teacher's MACs: no agent reaches it (the missed rows)


def _env(tiny, env_id=CHANNEL_RATIO, **kwargs):
    return gym.make(env_id, disable_env_checker=True, **tiny, **kwargs)


# ---------------------------------------------------------------------------- the env's target
def test_a_discrete_actions_feasibility_is_told_by_building_its_student_once(tiny, monkeypatch):
    """ESNAC checks 1,000 candidates per kernel against the target, drawn from the block space's 512 actions."""
    base = _env(tiny, "netcomp/removal-resnet20-synthetic-v0", granularity="block", target={"macs": 0.5}).unwrapped
    actions = [np.zeros(9, np.int8), np.ones(9, np.int8), np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], np.int8)]
    truth = [base.evaluator.target_problem(base.student_for(a)) is None for a in actions]
    assert truth[:2] == [True, False]                       # every block removed is within 0.5 MACs, the teacher is not
    built = []
    student_for = base.student_for
    monkeypatch.setattr(base, "student_for", lambda a: built.append(a) or student_for(a))
    first = [base.within_target(a) for a in actions]
    again = [base.within_target(a.astype(np.int64)) for a in actions]  # the same actions, another dtype
    assert first == again == truth and len(built) == len(actions)      # each student built once
    box = _env(tiny, target={"macs": 0.5}).unwrapped                    # continuous: nothing is remembered
    box.within_target(np.ones(box.action_space.shape))
    assert not box._within_target


def test_a_target_makes_over_target_students_invalid_before_training_and_pays_accuracy(tiny):
    env = _env(tiny, target={"macs": 0.5})
    base = env.unwrapped
    assert base.reward_name == "accuracy" and base.penalty == -1.0
    env.reset(seed=0)
    keep_all, smallest = np.ones(base.action_space.shape), -np.ones(base.action_space.shape)
    over, under = base.evaluate_many([keep_all, smallest])
    assert not over["valid"] and over["invalid_reason"].startswith("over target")
    assert over["eval_seconds"] == 0.0 and over["reward"] == base.penalty
    assert under["valid"] and under["macs"] <= 0.5 * under["teacher_macs"]
    assert under["reward"] == under["accuracy"] > base.penalty
    assert base.evaluator.trainings == 1                                       # the over-target one trained nothing
    submitted = base.score_student(base.arch)                                   # a white-box submission too
    assert submitted["invalid_reason"].startswith("over target") and submitted["eval_seconds"] == 0.0
    assert _env(tiny, target={"params": 0.25}, reward="n2n").unwrapped.reward_name == "n2n"  # an explicit reward stays
    assert _env(tiny).unwrapped.reward_name == "amc-flops"                      # no target: the space's default
    recorded = Recorder(env, Budget(2))
    assert recorded.replay_spec()["env_kwargs"]["target"] == {"macs": 0.5}      # records replay under the target


@pytest.mark.parametrize("bad, named", [({"flops": 0.5}, "flops"), ({"macs": 1.5}, "1.5"), ({"macs": 0}, "macs=0"),
                                        ({"params": "0.5"}, "'0.5'"), ({"macs": True}, "True"), (0.5, "0.5"),
                                        ({}, "{}")])
def test_a_bad_target_is_a_value_error_naming_it(bad, named):
    with pytest.raises(ValueError, match=f"target.*{named}" if named != "{}" else "target {}"):
        check_target(bad)


def test_ranking_affine_prunes_to_the_targets_macs(tiny):
    env = _env(tiny, "netcomp/ranking-affine-resnet20-synthetic-v0", target={"macs": 0.25})
    assert env.unwrapped.flops_target == 0.25 and env.unwrapped.reward_name == "accuracy"


# ---------------------------------------------------------------------------- random search
def _random_run(env, budget, **config):
    recorder = Recorder(env, budget)
    agent = RandomAgent(recorder, make_config(RandomConfig, config), seed=0)
    agent.run()
    return recorder.records, agent.notes


def test_random_search_samples_only_feasible_students_under_a_target(tiny):
    env = _env(tiny, target={"macs": 0.25})
    env.reset(seed=0)
    base = env.unwrapped
    base.action_space.seed(0)
    assert not all(base.within_target(base.sample_action()) for _ in range(20))  # the plain sampler goes over
    records, _ = _random_run(env, Budget(6))
    assert len(records) == 6 and all(r["valid"] and r["macs"] <= 0.25 * r["teacher_macs"] for r in records)
    impossible = _env(tiny, target={"macs": 0.001})
    impossible.reset(seed=0)
    records, _ = _random_run(impossible, Budget(3), tries=2)       # cannot tell a feasible one: falls back
    assert len(records) == 3
    assert all(r["invalid_reason"].startswith("over target") and r["eval_seconds"] == 0.0 for r in records)
    assert impossible.unwrapped.evaluator.trainings == 0
    records, notes = _random_run(impossible, Budget(seconds=5.0), tries=2)  # seconds nothing would ever spend
    assert len(records) == 1 and "no student at or below the target" in notes["stopped"]


def test_esnac_proposes_only_feasible_candidates_under_a_target(tiny):
    from baselines.esnac import ESNACAgent, ESNACConfig

    env = Recorder(_env(tiny, "netcomp/edit-resnet20-synthetic-v0", target={"macs": 0.1}), Budget(4))
    env.reset(seed=0)
    base = env.unwrapped
    assert not all(base.within_target(base.sample_action(np.random.default_rng(0))) for _ in range(10))
    agent = ESNACAgent(env, ESNACConfig(candidates=10), seed=0)
    assert all(base.within_target(agent.propose()) for _ in range(3))


# ---------------------------------------------------------------------------- the protocol fine-tune
def test_the_protocol_recipe_is_parsed_like_final_and_fine_tunes_from_inherited_submitted_or_fresh_weights(tiny):
    assert load_fidelity("smoke").protocol_recipe().name == "kd-smoke"
    assert load_fidelity("rank").protocol_recipe() == load_fidelity("fast").protocol_recipe()  # one named recipe
    assert load_fidelity({"train": {}}).protocol_recipe().name == "custom-final"              # none: the final one
    with pytest.raises(ValueError, match="bogus"):
        load_fidelity({"train": {}, "protocol": {"epochs": 1, "bogus": 2}})
    with pytest.raises(ValueError, match="protocol inherit 'copy'"):
        load_fidelity({"train": {}, "protocol": {"inherit": "copy"}})
    base = _env(tiny, target={"macs": 0.5}).unwrapped
    student = base.student_for(-np.ones(base.action_space.shape))
    weights = build_module(student).state_dict()
    reports = {start: base.evaluator.train_protocol(student, weights if start == "submitted" else None, seed=0,
                                                    scratch=start == "scratch")[1]
               for start in ("inherited (indices)", "submitted", "scratch")}
    for start, report in reports.items():
        assert report["start"] == start and report["protocol"]["name"] == "kd-smoke" and report["valid"]
        assert report["macs"] == count_macs(student) and report["teacher_macs"] == base.evaluator.teacher_macs
        assert 0.0 <= report["test_accuracy"] <= 1.0 and report["test_images"] == TINY["test_size"]
    assert base.evaluator.trainings == 0                                    # fine-tunes are not search evaluations


# ---------------------------------------------------------------------------- runner/protocol.py
def _protocol_args(out, config):
    return ["--env", "ranking-affine-resnet20-synthetic", "--agent", ",".join(AGENTS), "--seeds", "2",
            "--targets", ",".join(map(str, TARGETS)), "--budget", "3", "--config", config, "--out", str(out)]


def _cells(out):
    return {(t, a, s): out / f"t{t:g}" / f"{a}-s{s}" for t in TARGETS for a in AGENTS for s in (0, 1)}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A 2-agent x 2-seed x 2-target protocol, SIGKILLed after its first two cells and resumed in-process;
    (directory, the finished cells' files before the resume)."""
    root = tmp_path_factory.mktemp("protocol")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                              "dataset_kwargs": dict(TINY)}}))
    out = root / "p"
    cmd = [sys.executable, str(ROOT / "run_agent.py"), *_protocol_args(out, str(config))]
    log = root / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        first_two = [out / "t0.5" / f"random-s{s}" / "protocol.json" for s in (0, 1)]
        deadline = time.time() + 300
        while not all(p.exists() for p in first_two) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert all(p.exists() for p in first_two), f"the protocol did not finish its first cells: {log.read_text()[-3000:]}"
    assert not (out / "protocol.md").exists(), "the protocol finished before it was killed"
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in first_two for p in
                (p, p.parent / "summary.json", p.parent / "evaluations.jsonl")}
    assert cli("--resume", str(out)) == 0
    return out, finished, str(config)


def test_a_killed_protocol_resumes_without_rerunning_finished_cells(resumed):
    out, finished, _ = resumed
    for path, (mtime, content) in finished.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content, f"{path} was redone"
    for run in _cells(out).values():
        assert (run / "summary.json").exists() and (run / "protocol.json").exists()


def test_a_protocol_writes_one_row_per_target_agent_and_weights(resumed):
    out, _, _ = resumed
    for name in ("protocol.yaml", "protocol.md", "protocol.csv", "curve.png", "t0.5/compare.yaml"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "lock").exists()                                  # a finished protocol holds no lock
    rows = list(csv.DictReader((out / "protocol.csv").open()))
    assert sorted((float(r["target"]), r["agent"], r["weights"]) for r in rows) == sorted(
        (t, a, w) for t in TARGETS for a in AGENTS for w in ("inherited", "scratch"))
    for row in rows:
        assert row["metric"] == "macs" and row["seeds"] == "2"
        if float(row["target"]) == 0.5:
            assert row["missed"] == "0" and row["test_accuracy_n"] == "2" and row["recipe"] == "kd-smoke"
            assert float(row["macs_fraction_mean"]) <= 0.5 and float(row["speedup_mean"]) >= 2.0
            assert float(row["compression_ratio_mean"]) > 1.0 and row["search_seconds_n"] == "2"
        else:  # nobody reaches 0.001: missed, never dropped; its search cost is still reported
            assert row["missed"] == "2" and row["test_accuracy_n"] == "0" and row["search_seconds_n"] == "2"
    table = (out / "protocol.md").read_text()
    assert "| macs 0.001 | uniform | 0/2 | 2/2 | missed |" in table and "random (scratch)" in table


def test_every_student_in_the_table_is_at_or_below_its_target_by_the_engines_counter(resumed):
    out, _, _ = resumed
    for (target, _, _), run in _cells(out).items():
        cell = json.loads((run / "protocol.json").read_text())
        if target == 0.001:
            assert "missed" in cell and "reports" not in cell
            continue
        record = read_records(run / "evaluations.jsonl")[cell["index"]]
        student = arch_from_dict(record["student"]) if record.get("student") else None
        for report in cell["reports"].values():
            assert report["macs"] <= target * report["teacher_macs"]
            assert report["macs"] == record["macs"] and (student is None or count_macs(student) == report["macs"])
        assert cell["reports"]["scratch"]["start"] == "scratch"


def test_a_protocol_refuses_changes_on_resume_and_bad_targets(resumed, tmp_path, capsys):
    out, _, config = resumed
    assert cli("--resume", str(out), "--targets", "0.5") == 2
    assert "cannot change the protocol" in capsys.readouterr().err
    assert cli(*_protocol_args(out, config)) == 2
    assert "already holds a protocol" in capsys.readouterr().err
    bad = _protocol_args(tmp_path / "p", config)
    bad[bad.index("--targets") + 1] = "0.5,2"
    assert cli(*bad) == 2 and "'2' is not a fraction" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_student_another_run_chose_with_the_same_seed_is_not_fine_tuned_again(resumed, tmp_path, monkeypatch):
    import shutil

    from netcomp.evaluator import Evaluator
    from runner.protocol import finetune_cell, finetune_seed, known_finetunes, reuse_note

    out, _, _ = resumed
    original = out / "t0.5" / "random-s0"
    kept = json.loads((original / "protocol.json").read_text())
    copy = tmp_path / "t0.5" / "random-s0"                  # the same run under another protocol directory
    shutil.copytree(original, copy)
    (copy / "protocol.json").unlink()
    config = yaml.safe_load((copy / "config.yaml").read_text())
    trained = []
    real = Evaluator.train_protocol
    monkeypatch.setattr(Evaluator, "train_protocol", lambda self, *a, **k: trained.append(k) or real(self, *a, **k))
    known = known_finetunes(out)
    assert set(known) >= set(kept["finetune_keys"].values())
    cell = finetune_cell(copy, config, "macs", 0.5, True, {}, known)
    assert trained == []                                    # both fine-tunes were the known ones
    for start, report in cell["reports"].items():
        assert report == {**kept["reports"][start], "reused": True}
    assert " 0 fine-tunes were trained; 2 more were the same computation" in reuse_note(tmp_path)
    assert reuse_note(out) == ""                            # the original protocol trained each of its own
    # another run seed is another fine-tune seed, another computation: trained, and not the reused one
    config["run"]["seed"] += 1
    again = finetune_cell(copy, config, "macs", 0.5, True, {}, known)
    assert len(trained) == 2 and not any(r.get("reused") for r in again["reports"].values())
    assert {k["seed"] for k in trained} == {finetune_seed(config)}


def test_the_fine_tune_seed_is_the_live_envs_train_seed_of_the_run_seed_whatever_the_record_holds(tiny):
    """A live run's records hold the train seed its env drew from the run's seed: the fine-tune uses that one.
    A table's records all hold the table's seed; the fine-tune still follows the run's seed."""
    from runner.protocol import finetune_seed

    env = _env(tiny)
    seeds = set()
    for run_seed in (0, 1, 7):
        env.reset(seed=run_seed)
        assert finetune_seed({"run": {"seed": run_seed}}) == env.unwrapped.train_seed
        seeds.add(env.unwrapped.train_seed)
    assert len(seeds) == 3


def test_fine_tunes_of_one_seed_share_the_teachers_logits_and_give_the_same_numbers_as_without(tiny):
    """The protocol's fine-tunes use the evaluator's exact teacher-logit cache: the second student of a seed runs
    no teacher forward, and its report equals an uncached evaluator's."""
    from netcomp.surgery import keep_channels

    base = _env(tiny).unwrapped
    first, second = (keep_channels(base.arch, {"conv1": list(range(n))}) for n in (8, 12))
    cache = base.evaluator.teacher_logits
    base.evaluator.train_protocol(first, seed=3)
    misses, hits = cache.misses, cache.hits
    report = base.evaluator.train_protocol(second, seed=3)[1]
    assert cache.misses == misses and cache.hits > hits
    uncached = _env(tiny).unwrapped.evaluator.train_protocol(second, seed=3)[1]

    def numbers(r):
        return {k: v for k, v in r.items() if k != "seconds"}          # the wall time differs run to run
    assert numbers(uncached) == numbers(report)


def test_the_teachers_test_accuracy_is_measured_once_per_image_cap(tiny, monkeypatch):
    import netcomp.evaluator as evaluator_module

    ev = _env(tiny).unwrapped.evaluator
    calls = []
    real = evaluator_module.evaluate
    monkeypatch.setattr(evaluator_module, "evaluate",
                        lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    first = ev.teacher_test_accuracy(32)
    assert ev.teacher_test_accuracy(32) == first and len(calls) == 1
    assert first == real(ev.teacher_model, ev.dataset.test, ev.dataset, max_items=32)[0]
    ev.teacher_test_accuracy(None)                           # another cap is another measurement
    assert len(calls) == 2


def test_the_reuse_key_tells_apart_students_of_the_same_widths_that_kept_other_channels(tiny):
    """uniform and uniform-random build students of the same widths from other teacher channels: their
    inherited fine-tunes differ, so their keys do; from scratch the kept channels do not matter."""
    from netcomp.surgery import keep_channels
    from runner.protocol import finetune_key

    base = _env(tiny).unwrapped
    first, second = (keep_channels(base.arch, {"conv1": list(channels)}) for channels in (range(8), range(8, 16)))
    record = {"replay": {"env_id": "netcomp/channel-ratio-resnet20-synthetic-v0", "env_kwargs": {"target": 0.5},
                         "teacher": {"sha256": "a"}}}
    config = {"run": {"threads": 1}}

    def key(student, start="inherited", rec=record, seed=0):
        return finetune_key(rec, base.evaluator, student, seed, start, config)

    assert key(first) != key(second) and key(first, "scratch") == key(second, "scratch")
    other_target = {"replay": {**record["replay"], "env_kwargs": {"target": 0.25}}}
    other_teacher = {"replay": {**record["replay"], "teacher": {"sha256": "b"}}}
    assert key(first, rec=other_target) == key(first)              # the target only decides what is allowed
    assert key(first, rec=other_teacher) != key(first) and key(first, seed=1) != key(first)
