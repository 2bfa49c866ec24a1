"""Reward formulas by name, and the evaluator's validity checks, cache keys, shared training and splits."""

import math

import pytest

from netcomp.data import load_dataset
from netcomp.distill import evaluate
from netcomp.evaluator import Evaluator, load_fidelity
from netcomp.rewards import compute_reward, n2n_reward
from netcomp.surgery import remove_layers, set_widths
from netcomp.teachers import get_teacher
from tests.conftest import TINY

INFO = {"valid": True, "accuracy": 0.8, "teacher_accuracy": 0.9, "compression": 0.75, "macs": 1_000_000,
        "loss": 0.7, "budget_met": True}


def test_reward_formulas():
    assert n2n_reward(0.5, 0.9, 0.9) == pytest.approx(0.75)
    assert compute_reward("n2n", INFO, -1.0) == pytest.approx(0.75 * 1.25 * 0.8 / 0.9)
    assert compute_reward("amc-flops", INFO, -20.0) == pytest.approx(-0.2 * math.log(1_000_000))
    assert compute_reward("amc-acc", INFO, -1.0) == pytest.approx(0.8)
    assert compute_reward("amc-acc", {**INFO, "budget_met": False}, -1.0) == -1.0
    assert compute_reward("legr", INFO, -30.0) == pytest.approx(-0.7)
    assert compute_reward("n2n", {**INFO, "valid": False}, penalty=-2.0) == -2.0
    with pytest.raises(ValueError, match="unknown reward 'x'.*n2n, amc-acc, amc-flops, legr"):
        compute_reward("x", INFO, -1.0)
    with pytest.raises(ValueError, match="teacher_accuracy"):
        n2n_reward(0.5, 0.5, 0.0)


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("synthetic", **TINY)
    teacher = get_teacher("resnet20", data, recipe="smoke", progress=False)
    return data, teacher


def test_evaluator_scores_caches_and_reports_invalid_students(setup):
    data, teacher = setup
    ev = Evaluator(teacher, data, load_fidelity("smoke"))
    a = set_widths(teacher.arch, {"conv1": 8})
    b = set_widths(teacher.arch, {"layer3.0.conv1": 20})
    results = ev.evaluate_many([a, b, a, teacher.arch])
    assert ev.trainings == 2                                   # a twice in one batch: trained once
    assert results[2].cached and results[2].accuracy == results[0].accuracy
    assert not results[3].valid and "not fewer" in results[3].invalid_reason
    assert ev.evaluate(b).cached and ev.trainings == 2
    assert ev.evaluate(b, seed=1).cached is False               # the seed is part of the key
    broken = remove_layers(set_widths(teacher.arch, {"layer1.0.conv1": 4}), ["layer1.0.conv2", "layer1.0.bn2"])
    bad = ev.evaluate(broken)
    assert not bad.valid and "add" in bad.invalid_reason


def test_reward_split_switch_measures_on_the_test_split(setup):
    data, teacher = setup
    fidelity = load_fidelity("smoke")
    ev = Evaluator(teacher, data, fidelity, split="test")
    expected, _ = evaluate(teacher.model, data.test, data, max_items=fidelity.train.eval_max)
    assert ev.teacher_accuracy == expected
    with pytest.raises(ValueError, match="unknown reward split"):
        Evaluator(teacher, data, fidelity, split="train")


def test_fidelity_presets_and_errors():
    assert load_fidelity("paper", "removal").train.lr == 5e-4                  # N2N
    assert load_fidelity("paper", "ranking-affine").train.max_steps == 200      # LeGR tau-hat
    assert load_fidelity("esnac").train.keep_best is True
    assert load_fidelity({"train": {"epochs": 2}}).train.epochs == 2
    with pytest.raises(ValueError, match="unknown fidelity 'x'"):
        load_fidelity("x")
    with pytest.raises(ValueError, match="unknown fidelity keys"):
        load_fidelity({"epochs": 2})


def test_train_final_reports_test_accuracy_and_the_student_round_trips(setup, tmp_path):
    import torch

    from netcomp.surgery import load_student, save_student

    data, teacher = setup
    ev = Evaluator(teacher, data, load_fidelity("smoke"), inherit="indices")
    student = set_widths(teacher.arch, {"layer3.0.conv1": 20})
    rng_before = torch.get_rng_state()
    model, report = ev.train_final(student, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)                  # the global RNG is untouched
    assert report["test_accuracy"] == evaluate(model, data.test, data)[0]
    assert report["params"] == sum(p.numel() for p in model.parameters()) < report["teacher_params"]
    save_student(tmp_path / "s.pt", student, model, report)
    loaded, arch, meta = load_student(tmp_path / "s.pt")
    assert arch == student and meta == report
    assert evaluate(loaded, data.test, data)[0] == report["test_accuracy"]


def test_a_fidelitys_final_section_caps_and_never_lengthens():
    from netcomp.distill import TrainConfig

    smoke = load_fidelity("smoke")
    assert smoke.final_config(TrainConfig(epochs=100)).max_steps == smoke.final["max_steps"]
    assert smoke.final_config(TrainConfig(epochs=100, max_steps=1)).max_steps == 1   # shorter stays shorter
    assert smoke.final_config(TrainConfig(epochs=0.5)).epochs == 0.5
    assert load_fidelity("paper", "removal").final_config(TrainConfig(epochs=100)).epochs == 100  # no caps


def test_the_shared_final_training_sets_the_final_section_over_the_kd_run():
    rank = load_fidelity("rank", "removal")
    final = rank.final_config()
    # rank scores with one pass over 2,048 images; its final training is 2 epochs over 8,192 images
    assert (rank.train.epochs, rank.train.train_max) == (1, 2048)
    assert (final.epochs, final.train_max) == (rank.final["epochs"], rank.final["train_max"]) == (2, 8192)
    assert (final.loss, final.lr, final.optimizer) == (rank.train.loss, rank.train.lr, rank.train.optimizer)
    paper = load_fidelity("paper", "removal")
    assert paper.final_config() == paper.train  # no final section: the KD run as it is
