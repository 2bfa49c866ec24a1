"""The N2N agent: REINFORCE pieces, the two-stage pipeline on a shared budget, bug switches, resume, transfer."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from agents.base import Budget, make_config
from baselines.n2n import (
    N2NAgent,
    N2NConfig,
    baseline_value,
    compute_advantages,
    constrained_reward,
    constraint_epsilon,
    misalign_actions,
)
from envs.removal import RemovalEnv
from envs.shrinkage import ShrinkageEnv
from netcomp.arch import arch_from_dict
from netcomp.distill import evaluate
from netcomp.surgery import build_module
from netcomp.teachers import Teacher, load_yaml
from netcomp.zoo import build_arch
from runner.recorder import Recorder, RunLog

#: Small and quick: 3 rollouts per update, a two-step final fine-tune.
QUICK = {"rollouts": 3, "final_epochs": 1.0, "final_batch_size": 64, "final_max_steps": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_agent(tiny, evaluations=12, used=0, run_dir=None, arch="resnet20", seed=0, teacher=None, **overrides):
    """An N2N agent on a Recorder-wrapped removal env whose make_env builds shrinkage envs on the same budget."""
    budget = Budget(evaluations, used=used)
    log = RunLog(budget)  # shared by both stages' envs, as run_agent.py does
    env = Recorder(RemovalEnv(arch=arch, teacher=teacher, **tiny), log)

    def make_env(space, mode="oneshot", **kwargs):
        assert space == "shrinkage"
        return Recorder(ShrinkageEnv(arch=arch, mode=mode, **tiny, **kwargs), log)

    config = N2NConfig(**{**QUICK, **overrides})
    agent = N2NAgent(env, config, seed=seed, run_dir=run_dir, make_env=make_env)
    return agent, budget, log.records


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------------------------------- pure pieces
def test_advantages_per_sample_and_shared_against_hand_computation():
    rewards, history = [0.2, 0.5, -1.0], [0.3, 0.6]
    # reference baseline: (0.3 + 0.6) / (2 + 1) = 0.3
    adv, b = compute_advantages(rewards, history, per_sample=True)
    assert b == pytest.approx(0.3)
    assert adv == pytest.approx([-0.1, 0.2, -1.3])
    adv, b = compute_advantages(rewards, history, per_sample=False)
    assert adv == pytest.approx([-0.4, -0.4, -0.4])  # mean(R) = -0.1, minus 0.3 for every rollout
    assert baseline_value(history, "mean") == pytest.approx(0.45)
    assert baseline_value([], "reference") == 0.0 and baseline_value([], "mean") == 0.0
    assert baseline_value([0.8], "reference") == pytest.approx(0.4)  # the off-by-one: b_1 = Rbar_0 / 2
    with pytest.raises(ValueError, match="baseline"):
        baseline_value(history, "ema")


def test_constraint_schedule_clamped_and_reference():
    assert constraint_epsilon(0) == 1.0
    assert constraint_epsilon(15) == 0.0
    assert constraint_epsilon(7.5) == pytest.approx(0.5**4)
    assert constraint_epsilon(20) == 0.0
    assert constraint_epsilon(20, clamp=False) == pytest.approx((1 / 3) ** 4)  # the reference's rise after 15
    assert constraint_epsilon(30, clamp=False) == 1.0
    assert constrained_reward(0.6, 1.0) == pytest.approx(0.6)
    assert constrained_reward(0.6, 0.0) == -1.0


def test_constraints_shape_the_reward_of_violating_students(tiny):
    info = {"valid": True, "params": 5000, "accuracy": 0.8}
    free, _, _ = make_agent(tiny)
    assert free.shaped_reward(0.5, info, epoch=20) == 0.5  # no constraint: the env's reward
    size, _, _ = make_agent(tiny, size_constraint=1000)
    assert size.shaped_reward(0.5, info, epoch=0) == pytest.approx(0.5)    # eps = 1: soft at first
    assert size.shaped_reward(0.5, info, epoch=15) == pytest.approx(-1.0)  # eps = 0: hard
    assert size.shaped_reward(0.5, info, epoch=20) == pytest.approx(-1.0)
    assert size.shaped_reward(0.5, {**info, "params": 900}, epoch=20) == 0.5
    assert size.shaped_reward(-1.0, {"valid": False}, epoch=0) == -1.0
    buggy, _, _ = make_agent(tiny, acc_constraint=0.9, clamp_constraint_schedule=False)
    eps = (1 - 20 / 15) ** 4
    assert buggy.shaped_reward(0.5, info, epoch=20) == pytest.approx((eps - 1) + eps * 0.5)


def test_misalignment_shifts_actions_past_shortcut_tokens():
    shortcut = np.array([0, 0, 1, 1, 0, 0, 1, 0], bool)
    actions = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    out = misalign_actions(actions, shortcut, neutral=-1)
    # non-shortcut positions 0, 1, 4, 5, 7 take the policy's outputs 0..4; shortcuts get the neutral action
    assert out.tolist() == [10, 11, -1, -1, 12, 13, -1, 14]


def test_config_yaml_repeats_the_defaults_and_rejects_bad_values():
    data = load_yaml("n2n.yaml")
    fast = data.pop("presets")["fast"]["agent"]
    assert make_config(N2NConfig, data) == N2NConfig()
    assert make_config(N2NConfig, {**data, **fast}).final_epochs < N2NConfig().final_epochs
    defaults = N2NConfig()
    assert (defaults.rollouts, defaults.removal_lr, defaults.shrink_lr, defaults.hidden, defaults.lstm_layers) == (
        5, 3e-3, 0.1, 30, 2)
    fixed = {f.name: f.default for f in dataclasses.fields(N2NConfig)}
    assert fixed["shortcut_token_misalignment"] is False and fixed["register_shrink_lstm"] is True
    assert fixed["clamp_constraint_schedule"] is True and fixed["baseline"] == "reference"
    with pytest.raises(ValueError, match="stage2_fraction"):
        N2NConfig(stage2_fraction=1.5)
    with pytest.raises(ValueError, match="unknown"):
        make_config(N2NConfig, {"rollout": 5})


# ---------------------------------------------------------------------------------------------- the agent
def test_agent_rejects_other_spaces(tiny):
    env = Recorder(ShrinkageEnv(arch="resnet20", **tiny), Budget(2))
    with pytest.raises(ValueError, match="removal"):
        N2NAgent(env, N2NConfig())


def test_both_stages_spend_the_budget_exactly_then_finetune_writes_the_student(tiny, tmp_path):
    agent, budget, log = make_agent(tiny, evaluations=12, run_dir=tmp_path)
    removal0, shrink0 = params_of(agent.removal_policy), params_of(agent.shrink_policy)
    agent.run()
    assert budget.used == 12 and budget.exhausted
    assert [r["index"] for r in log] == list(range(12))
    assert [r["space"] for r in log] == ["removal"] * 6 + ["shrinkage"] * 6
    assert [h["stage"] for h in agent.history] == ["removal"] * 2 + ["shrinkage"] * 2
    assert agent.stage == "done"
    # stage 2 starts from the best stage-1 student
    assert agent.best_removal is not None
    assert list(agent.stage2_env.unwrapped.removed) == agent.best_removal["removed"]
    assert max(r["reward"] for r in log[:6]) == pytest.approx(agent.best_removal["reward"])
    # both policies learned
    assert any(not torch.equal(v, params_of(agent.removal_policy)[k]) for k, v in removal0.items())
    assert any(not torch.equal(v, params_of(agent.shrink_policy)[k]) for k, v in shrink0.items())
    # the final fine-tune of the overall best student
    final = agent.notes["final"]
    assert final["valid"] and 0.0 <= final["test_accuracy"] <= 1.0 and 0.0 <= final["teacher_test_accuracy"] <= 1.0
    assert final["params"] == agent.best["params"] and final["compression"] == pytest.approx(agent.best["compression"])
    blob = torch.load(tmp_path / "best_student.pt", weights_only=True)
    assert set(blob) == {"arch", "state_dict", "meta"}
    assert blob["meta"]["test_accuracy"] == final["test_accuracy"]
    model = build_module(arch_from_dict(blob["arch"]))
    model.load_state_dict(blob["state_dict"])
    ev = agent.env.unwrapped.evaluator
    assert evaluate(model, ev.dataset.test, ev.dataset)[0] == pytest.approx(final["test_accuracy"])
    assert (tmp_path / "policy.pt").exists()


def test_removal_only_when_stage2_fraction_is_zero(tiny):
    agent, budget, _ = make_agent(tiny, evaluations=4, stage2_fraction=0.0, finetune=False)
    agent.run()
    assert budget.used == 4 and agent.stage2_env is None and "final" not in agent.notes
    assert [h["rollouts"] for h in agent.history] == [3, 1]  # the last epoch is partial


def test_update_raises_the_log_prob_of_a_rewarded_action(tiny):
    agent, _, _ = make_agent(tiny)
    obs = agent.observation("removal")
    action = agent.sample_actions("removal", obs)
    before = params_of(agent.removal_policy)
    with torch.no_grad():
        logp0 = agent.log_prob("removal", obs, action).item()
    agent.update("removal", obs, [action], np.array([1.0]))
    with torch.no_grad():
        logp1 = agent.log_prob("removal", obs, action).item()
    assert logp1 > logp0
    assert all(not torch.equal(v, params_of(agent.removal_policy)[k]) for k, v in before.items())


def test_first_layer_is_forced_to_keep(tiny):
    agent, _, _ = make_agent(tiny)
    with torch.no_grad():
        agent.removal_policy.head.bias.copy_(torch.tensor([20.0, -20.0]))  # the policy wants to remove everything
    action = agent.sample_actions("removal")
    assert action[0] == 1 and (action[1:] == 0).all()


@pytest.mark.parametrize("register", [True, False])
def test_register_shrink_lstm_switch(tiny, register):
    agent, _, _ = make_agent(tiny, register_shrink_lstm=register)
    obs = agent.observation("shrinkage")
    actions = [agent.sample_actions("shrinkage", obs) for _ in range(2)]
    cells0, head0 = params_of(agent.shrink_policy.cells), params_of(agent.shrink_policy.head)
    agent.update("shrinkage", obs, actions, np.array([1.0, -0.5]))
    cells1, head1 = params_of(agent.shrink_policy.cells), params_of(agent.shrink_policy.head)
    assert any(not torch.equal(head0[k], head1[k]) for k in head0)
    cells_changed = [not torch.equal(cells0[k], cells1[k]) for k in cells0]
    assert all(cells_changed) if register else not any(cells_changed)


def test_mask_fixed_logprob_sums_only_acting_layers(tiny):
    agent, _, _ = make_agent(tiny, mask_fixed_logprob=True)
    obs = agent.observation("removal")
    action = agent.sample_actions("removal", obs)
    with torch.no_grad():
        per_layer = torch.log_softmax(agent.removal_policy.logits(obs), -1).gather(1, action.view(-1, 1))[:, 0]
        masked = agent.log_prob("removal", obs, action)
    env = agent.env.unwrapped
    acting = torch.tensor([n in env.removable for n in env.layers])
    assert masked.item() == pytest.approx(per_layer[acting].sum().item(), abs=1e-5)
    assert not acting.all() and masked.item() != pytest.approx(per_layer.sum().item(), abs=1e-5)


def test_shortcut_misalignment_switch_shifts_the_env_action(tiny):
    fixed, _, _ = make_agent(tiny)
    buggy, _, _ = make_agent(tiny, shortcut_token_misalignment=True)
    env = buggy.env.unwrapped
    shortcut = np.array([env.arch.node(n).role == "shortcut" for n in env.layers])
    assert shortcut.sum() == 4  # resnet20: two projection blocks, conv + bn each
    actions = np.random.default_rng(0).integers(0, 2, len(env.layers))
    assert fixed.env_action("removal", actions).tolist() == actions.tolist()
    shifted = buggy.env_action("removal", actions)
    assert shifted[~shortcut].tolist() == actions[: int((~shortcut).sum())].tolist()
    assert (shifted[shortcut] == 1).all()
    first = int(np.flatnonzero(shortcut)[0])
    assert shifted[:first].tolist() == actions[:first].tolist()  # before the first projection: no drift
    # stage 2: the shrink sequence holds conv/linear only, so the drift is one layer per projection block
    s_env = buggy.stage_env("shrinkage").unwrapped
    s_short = np.array([s_env.parent.node(n).role == "shortcut" for n in s_env.layers])
    s_actions = np.arange(len(s_env.layers)) % 10
    s_shifted = buggy.env_action("shrinkage", s_actions)
    assert s_shifted[~s_short].tolist() == s_actions[: int((~s_short).sum())].tolist()
    assert (s_shifted[s_short] == len(s_env.lookup) - 1).all()


def test_state_round_trip_resumes_with_the_same_actions(tiny):
    a, _, log_a = make_agent(tiny, evaluations=6, rollouts=2, finetune=False)
    states = []
    a.on_checkpoint = lambda: states.append(through_disk(a.state()))
    a.run()
    assert [h["rollouts"] for h in a.history] == [2, 1, 2, 1]  # 3 evaluations per stage, partial last epochs
    # resume after the first removal epoch, and after the first shrinkage epoch (stage 2 env rebuilt)
    for epochs, stage in ((1, "removal"), (3, "shrinkage")):
        state = next(s for s in states if len(s["history"]) == epochs)
        b, budget_b, log_b = make_agent(tiny, evaluations=6, used=state["budget_used"], rollouts=2, seed=123,
                                        finetune=False)
        b.load_state(state)
        assert b.stage == stage
        b.run()
        assert budget_b.used == 6
        later = [r for r in log_a if r["index"] >= state["budget_used"]]
        assert len(later) > 0
        assert [r["action"] for r in log_b] == [r["action"] for r in later]
        assert [r["reward"] for r in log_b] == [r["reward"] for r in later]
        for policy in ("removal_policy", "shrink_policy"):
            want, got = getattr(a, policy).state_dict(), getattr(b, policy).state_dict()
            assert all(torch.equal(v, got[k]) for k, v in want.items())


@pytest.mark.parametrize("per_rollout", [True, False])
def test_one_adam_step_per_rollout_or_one_per_epoch(tiny, per_rollout):
    agent, _, _ = make_agent(tiny, step_per_rollout=per_rollout)
    obs = agent.observation("removal")
    actions = [agent.sample_actions("removal", obs) for _ in range(3)]
    agent.update("removal", obs, actions, np.array([0.5, -0.2, 0.1]))
    steps = {int(st["step"]) for st in agent.removal_opt.state.values()}
    assert steps == ({3} if per_rollout else {1})


def test_removal_policy_transfers_to_a_deeper_teacher(tiny, tmp_path):
    small, _, _ = make_agent(tiny, arch="resnet20")
    small.update("removal", small.observation("removal"), [small.sample_actions("removal")], np.array([1.0]))
    path = tmp_path / "policy.pt"
    small.save_policy(path)
    # an untrained resnet56 teacher: the test is about the policy, not about the teacher's accuracy
    arch = build_arch("resnet56", 3, tiny["dataset_kwargs"]["image_size"], 10)
    big, _, _ = make_agent(tiny, arch="resnet56", seed=7, teacher=Teacher(arch, build_module(arch).eval(), {}))
    big.load_policy(path)
    assert big.notes["transferred_from"] == str(path)
    for k, v in small.removal_policy.state_dict().items():
        assert torch.equal(v, big.removal_policy.state_dict()[k])
    obs = big.observation("removal")
    assert obs.shape[0] == len(big.env.unwrapped.layers) > len(small.env.unwrapped.layers)
    action = big.sample_actions("removal", obs)
    assert action.shape == (obs.shape[0],) and action[0] == 1 and set(action.tolist()) <= {0, 1}
    assert big.env.action_space.contains(big.env_action("removal", action.numpy()).astype(np.int8))
    bad = N2NAgent(big.env, N2NConfig(hidden=8))
    with pytest.raises(ValueError, match="does not fit"):
        bad.load_policy(path)


# ---------------------------------------------------------------------------------------------- issue 7 switches
def _records_without_time(records):
    return [{k: v for k, v in r.items() if k not in ("wall_seconds", "eval_seconds")} for r in records]


def test_an_epochs_children_are_trained_together_with_the_same_scores_as_alone(tiny):
    together, _, rec_together = make_agent(tiny, evaluations=6, finetune=False, stage2_fraction=0.5)
    alone, _, rec_alone = make_agent(tiny, evaluations=6, finetune=False, stage2_fraction=0.5, batch_children=False)
    env = together.env.unwrapped
    before = env.evaluator.trainings
    together.policy_epoch()
    assert env.evaluator.trainings - before == len({r["arch_key"] for r in rec_together if r["valid"]})
    together.run()
    alone.run()
    assert len(rec_together) == len(rec_alone) == 6
    assert _records_without_time(rec_together) == _records_without_time(rec_alone)


def test_reference_policy_input_is_the_raw_five_vector(tiny):
    agent, _, _ = make_agent(tiny, policy_input="reference", finetune=False)
    obs = agent.observation("removal")
    env = agent.env.unwrapped
    assert obs.shape == (len(env.layers), 5) and agent.removal_policy.lstm.input_size == 5
    conv = env.layers.index("layer1.0.conv1")
    assert obs[conv].tolist() == [1.0, 3.0, 1.0, 16.0, 1.0]  # [type conv, kernel, stride, #outputs, padding]
    relu = env.layers.index("layer1.0.relu1")
    assert obs[relu].tolist() == [3.0, 0.0, 0.0, 0.0, 0.0]
    agent.run()  # both stages run on the raw input
    shrink_obs = agent.observation("shrinkage")
    assert shrink_obs.shape[1] == 5 and float(shrink_obs[:, 3].max()) == 64.0
    with pytest.raises(ValueError, match="policy_input"):
        N2NConfig(policy_input="raw")


def test_the_final_finetune_follows_the_run_fidelity_unless_told_not_to(tiny):
    fast = {"final_max_steps": None}  # 1 epoch, uncapped
    agent, _, _ = make_agent(tiny, evaluations=2, stage2_fraction=0.0, **fast)
    agent.run()
    smoke_cap = agent.env.unwrapped.evaluator.fidelity.final["max_steps"]
    assert agent.notes["final"]["finetune"]["max_steps"] is None             # what the config asked for
    assert agent.notes["final"]["final_train"]["max_steps"] == smoke_cap     # what ran: the smoke cap
    free, _, _ = make_agent(tiny, evaluations=2, stage2_fraction=0.0, final_follow_fidelity=False, **fast)
    free.run()
    assert free.notes["final"]["final_train"]["max_steps"] is None
