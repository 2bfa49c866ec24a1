"""LeGR: tournament, ageing, mutation, annealing, the identity and uniform baselines, multi-target pruning,
tau-hat = 0 and LeGR's fine-tune schedule, batched asks, resume after SIGKILL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

import baselines.legr as legr
from agents.base import Budget, make_config
from baselines.legr import (
    DeployConfig,
    L2GlobalAgent,
    LegrAgent,
    LegrConfig,
    UniformAgent,
    anneal_step,
    mutate,
    random_genome,
    tournament,
)
from envs.ranking_affine import RankingAffineEnv, legr_quota
from netcomp.distill import TrainConfig, evaluate, lr_multiplier, train_students
from netcomp.metrics import count_macs
from netcomp.surgery import build_module
from runner.recorder import Recorder, RunLog, read_records
from tests.conftest import TINY, cli
from tests.test_run_integrity import _cmd, _kill_when, _resume, _same

#: A small evolution: a first generation of 4, then children in batches of 2, a 2-step fine-tune.
SMALL = {"population": 4, "sample": 2, "candidates": 10, "batch": 2, "final_epochs": 1.0, "final_max_steps": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    """One tiny ranking-affine env (ResNet-20, 21 conv genes) shared by the tests that only build students."""
    return RankingAffineEnv(arch="resnet20", dataset="synthetic", fidelity="smoke", dataset_kwargs=dict(TINY),
                            device="cpu")


def agent_on(env, cls=LegrAgent, budget=10, seed=0, **overrides):
    log = RunLog(Budget(budget))
    wrapped = Recorder(env, log)
    wrapped.reset(seed=0)
    config = make_config(cls.Config, {**(SMALL if cls is LegrAgent else {}), **overrides})
    return cls(wrapped, config, seed=seed), log


# ---------------------------------------------------------------------------------------------- pieces
def test_tournament_draws_with_replacement_and_picks_the_fittest_drawn():
    rewards = [-3.0, -1.0, -2.0]
    for seed in range(20):
        drawn = np.random.default_rng(seed).integers(0, 3, size=5)
        parent = tournament(rewards, 5, np.random.default_rng(seed))
        assert parent == drawn[np.argmax([rewards[k] for k in drawn])]
    # with replacement: a sample larger than the population works, and a sample of one is uniform
    picks = [tournament(rewards, 1, np.random.default_rng(s)) for s in range(300)]
    assert set(picks) == {0, 1, 2}
    assert tournament(rewards, 64, np.random.default_rng(0)) == 1


def test_mutation_touches_a_tenth_of_the_layers_with_replacement_and_the_noise_scales():
    n, rng = 50, np.random.default_rng(0)
    parent = np.zeros(2 * n)
    deltas_a, deltas_b = [], []
    for _ in range(400):
        child, layers = mutate(parent, 0.4, 0.1, rng)
        assert len(layers) == 5                                   # floor(0.1 * 50) draws
        changed = set(np.flatnonzero(child[:n])) | set(np.flatnonzero(child[n:]))
        assert changed == set(layers.tolist())                   # only the drawn layers move
        for layer in set(layers.tolist()):
            if (layers == layer).sum() == 1:
                deltas_a.append(child[layer])
                deltas_b.append(child[n + layer])
    # alpha: log alpha += N(0, step) with alpha = exp(2a); kappa += N(0, std) with kappa = 3 b std
    assert np.std(deltas_a) == pytest.approx(0.4 / 2, rel=0.1)
    assert np.std(deltas_b) == pytest.approx(1 / 3, rel=0.1)
    repeats = [len(mutate(parent, 1.0, 0.1, np.random.default_rng(s))[1]) -
               len(set(mutate(parent, 1.0, 0.1, np.random.default_rng(s))[1].tolist())) for s in range(200)]
    assert max(repeats) >= 1                                      # a layer can be drawn twice
    assert np.all(np.abs(mutate(np.ones(2 * n), 5.0, 1.0, rng)[0]) <= 1.0)  # clipped to the env's box


def test_annealing_is_linear_from_one_to_the_end_value_and_the_children_use_it(env, monkeypatch):
    assert anneal_step(0, 400) == 1.0 and anneal_step(400, 400) == pytest.approx(0.2)
    assert anneal_step(64, 400) == pytest.approx(1 - 64 / (1.25 * 400))  # the reference's 1 - i / (1.25 G)
    seen, sizes = [], []
    real_mutate = legr.mutate
    monkeypatch.setattr(legr, "mutate", lambda a, step, *x, **k: (seen.append(step), real_mutate(a, step, *x, **k))[1])
    agent, _ = agent_on(env)
    real_many = agent.evaluate_many
    agent.evaluate_many = lambda actions: (sizes.append(len(actions)), real_many(actions))[1]
    agent.config.finetune = False
    agent.run()
    assert sizes == [4, 2, 2, 2]        # the first generation as one batch, then steady-state batches
    assert seen == pytest.approx([anneal_step(i, 10) for i in range(4, 10)])


def test_ageing_removes_the_oldest_member_not_the_worst(env):
    agent, _ = agent_on(env)
    for i, reward in enumerate([-1.0, -5.0, -2.0, -3.0, -4.0, -0.5]):
        agent.tell(np.full(2 * len(env.genes), i / 10), reward, i)
    assert [m["index"] for m in agent.population] == [2, 3, 4, 5]   # 0 (not the worst, 1) left first
    assert agent.best["index"] == 5 and agent.best["reward"] == -0.5
    agent.tell(np.zeros(2 * len(env.genes)), -9.0, 6)
    assert [m["index"] for m in agent.population] == [3, 4, 5, 6] and agent.best["index"] == 5


def test_random_genomes_follow_legrs_draws():
    g = random_genome(20000, np.random.default_rng(0))
    a, b = g[:20000], g[20000:]
    assert np.median(np.abs(2 * a)) == pytest.approx(0.6745, rel=0.05)  # log alpha ~ N(0, 1)
    assert np.median(np.abs(3 * b)) == pytest.approx(0.6745, rel=0.05)  # kappa / std ~ N(0, 1)


# ---------------------------------------------------------------------------------------------- baselines
def test_the_identity_candidate_is_the_l2_global_student(env):
    agent, log = agent_on(env, budget=4)
    agent.config.finetune = False
    agent.run()
    l2, l2_log = agent_on(env, L2GlobalAgent, budget=3, finetune=False)
    l2.run()
    assert len(l2_log.records) == 1                                  # one evaluation
    assert log.records[0]["arch_key"] == l2_log.records[0]["arch_key"]
    assert log.records[0]["action"] == [0.0] * (2 * len(env.genes))
    assert len({r["arch_key"] for r in log.records}) == 4           # the others are random maps
    assert [m["index"] for m in agent.population] == [1, 2, 3, 0]  # the identity is the youngest member


def test_uniform_keeps_one_ratio_everywhere_at_the_largest_ratio_that_meets_the_target(env):
    plan, r = env.uniform_plan(0.5)
    limit = 0.5 * env.evaluator.teacher_macs
    assert plan.macs <= limit and plan.met_target
    for i, gid in enumerate(env.gids):
        n = int(env.cost.full[i])
        assert plan.widths[gid] == n - legr_quota(n, r)
    bigger = {gid: int(env.cost.full[i]) - legr_quota(int(env.cost.full[i]), r + 1e-3)
              for i, gid in enumerate(env.gids)}
    assert env.cost.macs(bigger) > limit or bigger == plan.widths
    agent, log = agent_on(env, UniformAgent, budget=2, finetune=False)
    agent.run()
    assert len(log.records) == 1 and log.records[0]["macs"] == plan.macs and agent.notes["ratio"] == r


# ---------------------------------------------------------------------------------------------- deployment
def test_one_ranking_gives_every_target_within_one_filter(env):
    n = len(env.genes)
    alpha, kappa = env.affine(list(zip(*np.split(random_genome(n, np.random.default_rng(3)), 2))))
    plans = [env.prune_plan(alpha, kappa, flops_target=t) for t in (0.8, 0.6, 0.4, 0.3)]
    for t, plan in zip((0.8, 0.6, 0.4, 0.3), plans):
        limit = t * env.evaluator.teacher_macs
        assert plan.macs <= limit and count_macs(env.plan_student(plan)) == plan.macs
        gid, _ = plan.pruned[-1]                                     # put back the last filter pruned:
        widths = dict(plan.widths)
        widths[gid] += 1
        assert env.cost.macs(widths) > limit                        # the target is missed again
    for bigger, smaller in zip(plans, plans[1:]):                   # one ranking: each plan extends the last
        assert smaller.pruned[:len(bigger.pruned)] == bigger.pruned


def test_deployment_fine_tunes_every_target_and_reports_the_test_split(env, tmp_path):
    agent, _ = agent_on(env, budget=4, targets=[0.5, 0.7])
    agent.run_dir = tmp_path
    agent.run()
    reports = agent.notes["targets"]
    assert [r["flops_target"] for r in reports] == [0.5, 0.7]
    assert all(r["macs_ratio"] <= r["flops_target"] and r["met_target"] for r in reports)
    assert reports[0]["macs_ratio"] < reports[1]["macs_ratio"]
    assert agent.notes["final"]["test_images"] == TINY["test_size"] and (tmp_path / "best_student.pt").exists()
    train = agent.notes["final"]["final_train"]
    assert (train["optimizer"], train["nesterov"], train["schedule"], train["gamma"], train["loss"]) == (
        "sgd", True, "multistep", 0.2, "ce")


def test_legrs_fine_tune_schedule_and_tau_hat_zero(env):
    config = DeployConfig(final_epochs=10).train_config()
    mult = [lr_multiplier(config, s, 100, 10) for s in range(100)]
    assert mult[29] == 1.0 and mult[30] == pytest.approx(0.2) and mult[59] == pytest.approx(0.2)
    assert mult[60] == pytest.approx(0.04) and mult[80] == pytest.approx(0.008) and mult[99] == mult[80]
    data = env.evaluator.dataset
    torch.manual_seed(0)
    model = build_module(env.arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tau0 = TrainConfig(loss="ce", optimizer="sgd", lr=0.01, max_steps=0, eval_every_epoch=False)
    result = train_students([model], data, tau0)[0]
    assert result.steps == 0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    acc, loss = evaluate(model, data.val, data)
    assert result.valid and result.loss == pytest.approx(loss) and result.accuracy == pytest.approx(acc)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="sample"):
        LegrConfig(sample=0)
    with pytest.raises(ValueError, match="targets"):
        LegrConfig(targets=[1.5])
    with pytest.raises(ValueError, match="mutate_fraction"):
        LegrConfig(mutate_fraction=0)
    assert math.isclose(LegrConfig(final_lr="1e-3").final_lr, 1e-3)


# ---------------------------------------------------------------------------------------------- the run
def test_kill_and_resume_repeats_no_evaluation(tmp_path):
    config = tmp_path / "legr.yaml"
    config.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                              "dataset_kwargs": dict(TINY)},
                                      "agent_config": SMALL}))
    ref = tmp_path / "ref"  # the uninterrupted run, in this process (the same seeded run as a subprocess)
    assert cli(*_cmd(ref, "ranking-affine", "legr", str(config), budget=10)[2:]) == 0
    out = tmp_path / "run"
    _kill_when(_cmd(out, "ranking-affine", "legr", str(config), budget=10),
               lambda: len(read_records(out / "evaluations.jsonl")) >= 6)
    before = read_records(out / "evaluations.jsonl")
    assert 6 <= len(before) < 10, "the run must be killed in the middle"
    resumed = _resume(out)
    assert resumed.returncode == 0, resumed.stderr
    after, reference = read_records(out / "evaluations.jsonl"), read_records(ref / "evaluations.jsonl")
    assert [r["index"] for r in after] == list(range(10)) and _same(after, reference)
    keys = [r["arch_key"] for r in after if not r["cached"]]
    assert len(keys) == len(set(keys))                                # no student trained twice
    meta = torch.load(out / "best_student.pt", weights_only=True)["meta"]  # LeGR's deployment saved it
    assert meta["agent"] == "legr" and "flops_target" in meta and "finetune" in meta



def test_random_channels_keep_the_uniform_widths_with_other_channels_drawn_from_the_seed(env):
    from baselines.legr import RandomChannelsAgent

    plan, _ = env.uniform_plan(0.5)
    def keeps(student):
        return [n.keep for n in student.nodes if n.op == "conv"]

    students = {}
    for seed in (0, 0, 1):
        agent, log = agent_on(env, RandomChannelsAgent, budget=2, seed=seed, finetune=False)
        agent.run()
        assert len(log.records) == 1 and log.records[0]["macs"] == plan.macs  # the uniform widths, at the target
        students.setdefault(seed, []).append(keeps(agent.deployed(0.5)[0]))
    kept = agent.deployed(0.5)[0]
    assert keeps(kept) != keeps(env.plan_student(plan))  # not the largest-norm filters
    assert students[0][0] == students[0][1] != students[1][0]  # reproducible from the seed, another for another
    for node in kept.nodes:
        if node.op == "conv" and node.keep is not None:
            assert len(node.keep) == len(set(node.keep)) and list(node.keep) == sorted(node.keep)
