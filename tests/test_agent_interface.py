"""The agent interface: batched evaluations, white-box submissions, seconds budgets (agents/base.py)."""

import numpy as np
import pytest
import torch

from agents.base import Agent, Budget, BudgetExhausted, check_budget_units
from envs.channel_ratio import ChannelRatioEnv
from envs.removal import RemovalEnv
from netcomp.surgery import build_module, set_widths
from runner.recorder import Recorder, RunLog, read_records


class _Probe(Agent):
    """A minimal agent: no run loop of its own, the tests drive it."""

    name = "probe"
    spaces = ("removal", "channel-ratio")
    Config = dict

    def run(self) -> None:  # pragma: no cover - not used
        pass


def _agent(env, budget, path=None):
    log = RunLog(budget, path)
    return _Probe(Recorder(env, log), {}, seed=0), log


def test_evaluate_many_gives_the_scores_of_single_episodes_and_records_each(tiny, tmp_path):
    env = RemovalEnv(arch="resnet20", **tiny)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [(rng.random(len(env.layers)) < 0.7).astype(np.int64) for _ in range(3)]
    agent, log = _agent(env, Budget(5), tmp_path / "evaluations.jsonl")
    batched = agent.evaluate_many(actions)
    fresh = RemovalEnv(arch="resnet20", **tiny)  # a new evaluator: nothing cached
    fresh.reset(seed=0)
    for (reward, info), action in zip(batched, actions):
        _, alone, _, _, alone_info = fresh.step(action)
        fresh.reset()
        assert reward == alone and info["accuracy"] == alone_info["accuracy"]
    assert agent.budget.used == 3 and [r["index"] for r in read_records(tmp_path / "evaluations.jsonl")] == [0, 1, 2]
    assert [r["action"] for r in log.records] == [a.tolist() for a in actions]
    with pytest.raises(BudgetExhausted, match="asked for 3 evaluations with 2 left"):
        agent.evaluate_many(actions)
    assert agent.budget.used == 3  # nothing was spent on a refused batch


def test_a_submitted_student_is_scored_counted_and_recorded_like_an_episode(tiny, tmp_path):
    env = ChannelRatioEnv(arch="resnet20", **tiny)
    env.reset(seed=0)
    agent, log = _agent(env, Budget(3), tmp_path / "evaluations.jsonl")
    student = set_widths(env.arch, {"layer3.0.conv1": 20})
    reward, info = agent.submit(student)
    episode = env.evaluator.evaluate(student, seed=env.train_seed)
    assert info["valid"] and info["submitted"] and info["accuracy"] == episode.accuracy
    assert reward == pytest.approx(-(1 - info["accuracy"]) * np.log(info["macs"]))  # amc-flops, as an episode
    torch.manual_seed(0)
    weights = build_module(student).state_dict()
    reward2, info2 = agent.submit(student, weights, train=False)
    assert info2["valid"] and not info2["trained"]
    records = read_records(tmp_path / "evaluations.jsonl")
    assert [r["index"] for r in records] == [0, 1] and records[1]["weights"] == "submitted/1.pt"
    saved = torch.load(tmp_path / "submitted" / "1.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in weights.items())
    assert records[0]["student"]["nodes"][0]["op"] == "input"  # the architecture travels with the record
    bad = agent.submit(env.arch)[1]  # the teacher itself: not smaller, an invalid episode
    assert not bad["valid"] and bad["reward"] == env.penalty
    with pytest.raises(BudgetExhausted):
        agent.submit(student)


def test_a_seconds_budget_counts_training_and_charged_seconds(tiny):
    env = RemovalEnv(arch="resnet20", **tiny)
    env.reset(seed=0)
    agent, _ = _agent(env, Budget(seconds=1e-9))
    assert not agent.budget.exhausted and agent.budget.left == 1
    agent.evaluate(np.ones(len(env.layers), np.int64) * (np.arange(len(env.layers)) % 2))
    assert agent.budget.eval_seconds > 0 and agent.budget.exhausted
    budget = Budget(evaluations=10, seconds=5.0)
    budget.charge(4.0)
    assert not budget.exhausted and budget.train_seconds == 4.0
    budget.charge(1.5)
    assert budget.exhausted
    with pytest.raises(ValueError, match="charged seconds"):
        budget.charge(-1.0)
    with pytest.raises(ValueError, match="evaluations or seconds"):
        Budget()


def test_an_agent_that_counts_evaluations_refuses_a_seconds_only_budget():
    from baselines.n2n import N2NAgent

    with pytest.raises(ValueError, match="n2n.*needs a budget in evaluations"):
        check_budget_units(N2NAgent, Budget(seconds=60))
    check_budget_units(N2NAgent, Budget(10, seconds=60))
    check_budget_units(_Probe, Budget(seconds=60))


def test_a_seconds_only_budget_ends_when_evaluations_stop_costing_anything(tiny):
    """An agent that only asks for students that cost no training (cache hits, invalid ones) under a seconds-only
    budget would never spend it: the budget stalls after FREE_LIMIT such evaluations in a row."""
    import gymnasium as gym
    import numpy as np

    import envs  # noqa: F401
    from agents.base import FREE_LIMIT, Budget
    from runner.recorder import Recorder

    env = Recorder(gym.make("netcomp/removal-resnet20-synthetic-v0", **tiny), Budget(None, 1e9))
    env.reset(seed=0)
    teacher_action = np.ones(env.action_space.n, dtype=np.int8)  # the teacher itself: invalid, trains nothing
    asked = 0
    while not env.budget.exhausted:
        env.evaluate_many([teacher_action] * 50)
        asked += 50
    assert env.budget.stalled and asked == FREE_LIMIT and env.budget.train_seconds == 0
    budget = Budget(None, 10.0)
    budget.note_spent(0.0)
    budget.note_spent(0.5)  # any spending resets the streak
    assert budget.free_streak == 0
