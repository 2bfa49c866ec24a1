"""ESNAC: the GP on learned embeddings, EI, the LOO objective and stopping rule, K proposals, resume, transfer."""

import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from agents.base import Budget
from baselines.esnac import (
    DescriptorMemo,
    EmbeddingGP,
    ESNACAgent,
    ESNACConfig,
    expected_improvement,
    fit_embedding,
    with_validation_trained,
)
from envs.edit import EditEnv
from envs.removal import RemovalEnv
from netcomp.distill import evaluate
from netcomp.jsonl import read_jsonl
from runner.recorder import Recorder, read_records
from tests.conftest import TINY, cli
from tests.test_run_integrity import ROOT, _kill_when, _resume, _same

SMALL = {"kernels": 2, "candidates": 6, "hidden_size": 8, "num_layers": 1, "max_fit_steps": 4, "top_k": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


class FirstRow(nn.Module):
    """A fixed 'embedding': the first row's first two numbers, normalised (so the GP is computable by hand)."""

    def forward(self, x):
        return F.normalize(x[:, 0, :2], dim=-1)


def _points(angles):
    return torch.tensor([[[math.cos(a), math.sin(a)]] for a in angles], dtype=torch.float32)


def _hand_gp(train, y, test, alpha, beta):
    def k(a, b):
        return np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * alpha))
    kinv = np.linalg.inv(k(train, train) + beta * np.eye(len(train)))
    ks = k(test, train)
    mean = ks @ kinv @ y
    var = 1.0 - np.einsum("ij,jk,ik->i", ks, kinv, ks) + beta
    return mean, np.sqrt(var)


def test_the_gp_posterior_and_expected_improvement_equal_the_hand_computed_ones():
    alpha, beta = 0.5, 0.05
    xs, ys = _points([0.0, 0.7, 2.0]), torch.tensor([0.2, 0.5, -0.3])
    gp = EmbeddingGP(xs, ys, FirstRow(), alpha, beta)
    test = _points([0.3, 1.0, 3.0])
    mean, std = gp.predict(test)
    h_mean, h_std = _hand_gp(xs[:, 0].numpy().astype(np.float64), ys.numpy().astype(np.float64),
                             test[:, 0].numpy().astype(np.float64), alpha, beta)
    assert np.allclose(mean.numpy(), h_mean, atol=1e-4) and np.allclose(std.numpy(), h_std, atol=1e-4)
    best = 0.5
    ei = expected_improvement(mean, std, best).numpy()
    z = (h_mean - best) / h_std
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    assert np.allclose(ei, (h_mean - best) * cdf + h_std * pdf, atol=1e-4)
    assert (ei >= 0).all()


def test_the_loo_objective_equals_refitting_without_each_point():
    alpha, beta = 0.3, 0.05
    angles = [0.0, 0.4, 1.1, 2.0, 2.5]
    xs, ys = _points(angles), torch.tensor([0.1, 0.4, -0.2, 0.3, 0.0])
    loo = float(EmbeddingGP(xs, ys, FirstRow(), alpha, beta).loo_loglik())
    direct = []
    for i in range(len(angles)):
        rest = [j for j in range(len(angles)) if j != i]
        gp = EmbeddingGP(xs[rest], ys[rest], FirstRow(), alpha, beta)
        mean, std = gp.predict(xs[i:i + 1])
        direct.append(-0.5 * math.log(2 * math.pi) - math.log(float(std)) - (float(ys[i]) - float(mean))**2
                      / (2 * float(std) ** 2))
    assert loo == pytest.approx(np.mean(direct), abs=1e-4)


def test_the_fit_stops_by_esnacs_moving_average_rule():
    xs, ys = torch.randn(4, 3, 2), torch.tensor([0.1, 0.2, 0.3, 0.0])

    class Learnable(FirstRow):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return F.normalize(self.w * x[:, 0, :2], dim=-1)

    gp = EmbeddingGP(xs, ys, Learnable(), 0.01, 0.05)
    fit = fit_embedding(gp, ESNACConfig(lr=0.0, weight_decay=0.0))  # a constant ll: only the average moves
    ll = fit["loglik"]
    # ma_j = ll (1 - 0.5^(j+1)); stop at the first j > 5 with |ll| 0.5^(j+1) < 1e-3 (no step at that j)
    expected = next(j for j in range(6, 100) if abs(ll) * 0.5 ** (j + 1) < 1e-3)
    assert fit["steps"] == expected
    one = EmbeddingGP(xs[:1], ys[:1], Learnable(), 0.01, 0.05)
    assert fit_embedding(one, ESNACConfig())["steps"] == 0            # fewer than 2 points: no fit


def _agent(tiny, budget, **cfg):
    env = Recorder(EditEnv("resnet20", device="cpu", **tiny), Budget(budget))
    env.reset(seed=0)
    return ESNACAgent(env, ESNACConfig(**{**SMALL, **cfg}), seed=0)


def test_each_step_asks_k_proposals_at_once_and_the_last_step_what_is_left(tiny):
    agent = _agent(tiny, 5, kernels=2)
    sizes = []
    ask = agent.evaluate_many
    agent.evaluate_many = lambda actions: sizes.append(len(actions)) or ask(actions)
    agent.run()
    assert sizes == [2, 2, 1] and len(agent.env.records) == 5
    assert len(agent.fits) == 5 and agent.fits[0]["points"] == 1      # step 1: the teacher alone
    assert all(f["steps"] > 0 for f in agent.fits if f["points"] >= 2)
    assert agent.final_embedding is not None and agent.notes["final_embedding_fit"]["points"] == 6


def test_the_proposal_is_the_candidate_with_the_highest_expected_improvement(tiny, monkeypatch):
    agent = _agent(tiny, 4, candidates=5)
    seen = {}
    predict = EmbeddingGP.predict

    def spy(self, x, chunk=256):
        mean, std = predict(self, x, chunk)
        seen["x"], seen["ei"] = x, expected_improvement(mean, std, 0.0)
        return mean, std
    monkeypatch.setattr(EmbeddingGP, "predict", spy)
    action = agent.propose()
    chosen = agent.action_descriptor(action)
    assert np.array_equal(chosen, seen["x"][int(torch.argmax(seen["ei"]))].numpy())


def _block_agent(tiny, budget, fresh, monkeypatch):
    """ESNAC on the 9-block removal space whose candidates are 3 fixed actions and whose GP always favours the
    first (every block removed): a finite space where the kernels of one step agree."""
    env = Recorder(RemovalEnv("resnet20", granularity="block", device="cpu", **tiny), Budget(budget))
    env.reset(seed=0)
    actions = [np.zeros(9, np.int8), np.eye(9, dtype=np.int8)[0], np.eye(9, dtype=np.int8)[1]]
    draws = iter(actions * 1000)
    monkeypatch.setattr(env.unwrapped, "sample_action", lambda rng=None: next(draws))

    def favour_the_first(self, x, chunk=256):
        mean = -x.flatten(1).abs().sum(1) * 1e-3     # fewer kept rows: higher mean; the empty student first
        return mean, torch.full_like(mean, 0.1)
    monkeypatch.setattr(EmbeddingGP, "predict", favour_the_first)
    return ESNACAgent(env, ESNACConfig(**{**SMALL, "kernels": 3, "candidates": 3, "fresh_candidates": fresh}),
                      seed=0)


def test_kernels_propose_students_not_yet_evaluated_nor_taken_in_the_step(tiny, monkeypatch):
    agent = _block_agent(tiny, 4, True, monkeypatch)
    agent.run()
    first_step = [tuple(r["action"]) for r in agent.env.records[:3]]
    assert len(set(first_step)) == 3                       # three kernels, three students
    assert tuple(agent.env.records[3]["action"]) in first_step  # nothing new left: the best candidate again
    reference = _block_agent(tiny, 3, False, monkeypatch)
    reference.run()
    assert {tuple(r["action"]) for r in reference.env.records} == {(0,) * 9}   # the reference's rule repeats


def test_a_discrete_actions_representation_is_remembered_exactly(tiny, monkeypatch):
    env = Recorder(RemovalEnv("resnet20", granularity="block", device="cpu", **tiny), Budget(2))
    env.reset(seed=0)
    agent = ESNACAgent(env, ESNACConfig(**SMALL), seed=0)
    actions = [np.zeros(9, np.int8), np.eye(9, dtype=np.int8)[3], np.ones(9, np.int8)]
    first = [agent.action_descriptor(a) for a in actions]
    built = []
    monkeypatch.setattr(env.unwrapped, "student_for", lambda a: built.append(a))
    again = [agent.action_descriptor(a.astype(np.int64)) for a in actions]   # the same actions, another dtype
    assert not built                                                          # no student built the second time
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(first, again))
    assert first[0].any() and not np.array_equal(first[0], first[1])
    box = DescriptorMemo(gym.spaces.Box(0.0, 1.0, (3,)))                       # continuous: nothing repeats
    box.put(box.key(np.zeros(3)), first[0])
    assert box.get(box.key(np.zeros(3))) is None and not box.entries


@pytest.mark.parametrize("space", ["removal", "shrinkage"])
def test_the_agent_runs_on_the_removal_and_shrinkage_spaces(space, tiny_config, tmp_path):
    config = tmp_path / "c.yaml"
    base = yaml.safe_load(Path(tiny_config).read_text())
    config.write_text(yaml.safe_dump({**base, "agent_config": SMALL}))
    out = tmp_path / "run"
    assert cli("--env", f"{space}-resnet20-synthetic", "--agent", "esnac", "--budget", 3, "--config", config,
               "--out", out) == 0
    assert len(read_records(out / "evaluations.jsonl")) == 3


def test_full_training_keeps_the_best_of_the_top_k_by_the_chosen_split(tiny):
    for split in ("val", "test"):
        agent = _agent(tiny, 4, top_k=3, select_on=split, final_epochs=1)
        agent.run()
        final = agent.notes["final"]
        assert len(final["candidates"]) == 3 and final["select_on"] == split
        best = max(final["candidates"], key=lambda c: c[f"f_{split}"])
        assert final["index"] == best["index"]
        c = final["compression"]
        assert final["f_test"] == pytest.approx(c * (2 - c) * final["test_accuracy"] / final["teacher_test_accuracy"])


def _config(tmp_path, **agent):
    path = tmp_path / "esnac.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                            "dataset_kwargs": dict(TINY)},
                                    "agent_config": {**SMALL, **agent}}))
    return str(path)


def _cmd(out, config, env="edit-resnet20-synthetic", budget=6, extra=()):
    return [sys.executable, str(ROOT / "run_agent.py"), "--env", env, "--agent", "esnac", "--budget", str(budget),
            "--config", config, "--seed", "3", "--out", str(out), *extra]


def test_a_killed_search_resumes_to_the_uninterrupted_record(tmp_path):
    config = _config(tmp_path)
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, config), check=True, cwd=ROOT, capture_output=True)
    out = tmp_path / "run"
    _kill_when(_cmd(out, config), lambda: len(read_jsonl(out / "evaluations.jsonl", repair=False)) >= 3)
    before = read_records(out / "evaluations.jsonl")
    assert 3 <= len(before) < 6, "the run must be killed in the middle"
    done = _resume(out)
    assert done.returncode == 0, done.stderr
    after = read_records(out / "evaluations.jsonl")
    assert [r["index"] for r in after] == list(range(6))
    assert _same(after, read_records(ref / "evaluations.jsonl"))       # the same proposals, nothing repeated
    trained = [r["arch_key"] for r in after if not r["cached"] and r["valid"]]
    assert len(trained) == len(set(trained))


def test_the_embedding_transfers_to_a_larger_teacher_without_fitting(tmp_path):
    config = _config(tmp_path)
    small = tmp_path / "small"
    subprocess.run(_cmd(small, config, budget=4), check=True, cwd=ROOT, capture_output=True)
    saved = torch.load(small / "policy.pt", weights_only=True)
    assert saved["meta"]["max_layers"] == 384 and saved["meta"]["hidden_size"] == SMALL["hidden_size"]
    big = tmp_path / "big"
    done = subprocess.run(_cmd(big, config, "edit-resnet32-synthetic", 4, ("--load-policy", str(small / "policy.pt"))),
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((big / "summary.json").read_text())
    assert summary["notes"]["transferred_from"] == str(small / "policy.pt")
    assert "trained by esnac on resnet20 / synthetic, space edit" in done.stdout      # its provenance, printed
    assert summary["notes"]["transferred_provenance"] == saved["meta"]["provenance"]
    assert saved["meta"]["provenance"]["teacher"] == "resnet20" and saved["meta"]["provenance"]["episodes"] == 4
    again = torch.load(big / "policy.pt", weights_only=True)   # transferred, never refitted: the same weights
    assert all(torch.equal(again["embedding"][k], v) for k, v in saved["embedding"].items())
    wrong = _config(tmp_path, hidden_size=16)
    done = subprocess.run(_cmd(tmp_path / "bad", wrong, budget=2, extra=("--load-policy", str(small / "policy.pt"))),
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "hidden_size" in done.stderr


def _smoke_with(**train):
    """The smoke fidelity as a mapping, with some of its KD run's settings replaced."""
    smoke = yaml.safe_load((ROOT / "configs" / "fidelity.yaml").read_text())["smoke"]
    return {**smoke, "train": {**smoke["train"], **train}}


def test_the_validation_f_divides_by_the_teachers_accuracy_on_the_same_images(tiny):
    # the search scores the teacher on 40 validation images, the full training the student on 64
    tiny = {**tiny, "fidelity": _smoke_with(eval_max=40)}
    agent = _agent(tiny, 4, top_k=2, final_epochs=1)
    agent.run()
    final, ev = agent.notes["final"], agent.env.unwrapped.evaluator
    images = final["final_train"]["eval_max"]
    assert images == 64 != ev.fidelity.train.eval_max
    teacher_val = evaluate(ev.teacher_model, ev.dataset.val, ev.dataset, max_items=images)[0]
    c = final["compression"]
    assert final["f_val"] == pytest.approx(c * (2 - c) * final["val_accuracy"] / teacher_val)
    assert final["final_recipe"] == "heldout"


def test_the_reference_full_training_uses_every_training_image_and_keeps_the_best_test_epoch(tiny):
    with pytest.raises(ValueError, match="select_on"):
        ESNACConfig(final_recipe="reference")                   # it trains on the validation images
    agent = _agent(tiny, 4, top_k=2, final_epochs=2, final_recipe="reference", select_on="test")
    data = with_validation_trained(agent.env.unwrapped.evaluator.dataset)
    ds = agent.env.unwrapped.evaluator.dataset
    assert len(data.train) == len(ds.train) + len(ds.val) and data.val is ds.test
    agent.run()
    final = agent.notes["final"]
    assert final["final_recipe"] == "reference" and final["final_train"]["keep_best"]
    assert final["val_accuracy"] is None and final["f_val"] is None
    c = final["compression"]
    assert final["f_test"] == pytest.approx(c * (2 - c) * final["test_accuracy"] / final["teacher_test_accuracy"])


def test_invalid_students_are_gp_observations_unless_left_out(tiny):
    for keep in (True, False):
        agent = _agent(tiny, 3, gp_invalid=keep)
        base = agent.env.unwrapped                              # the untouched teacher: invalid (not smaller)
        agent.env.evaluate_many([base.make_action(), base.make_action(removed=["layer1.0.bn1"])])
        assert [r["valid"] for r in agent.env.records] == [False, True]
        xs, ys = agent.history()
        assert ys == ([0.0, base.penalty, agent.env.records[1]["reward"]] if keep
                      else [0.0, agent.env.records[1]["reward"]])
