"""Tests of netcomp.distill: the shared KD / fine-tuning trainer.

Everything runs on the CPU with tiny ``nn.Sequential`` CNNs on the synthetic dataset (cut down with
``train_max``), so the whole file takes well under a minute on two cores.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcomp.data import Dataset, DeviceLoader, load_dataset
from netcomp.distill import (
    TrainConfig,
    TrainResult,
    distill_loss,
    evaluate,
    lr_multiplier,
    teacher_logits_needed,
    train_model,
    train_students,
)


# ---------------------------------------------------------------------------------------------- helpers
def make_cnn(seed: int, width: int = 8, num_classes: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """A small conv net (with BatchNorm, so train/eval mode matters), initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes),
    )


class NanAfter(nn.Module):
    """Identity for the first ``ok_calls`` training-mode forwards, then multiplies by NaN."""

    def __init__(self, ok_calls: int) -> None:
        super().__init__()
        self.ok_calls = ok_calls
        self.train_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_calls += 1
            if self.train_calls > self.ok_calls:
                return x * float("nan")
        return x


def logits_on(model: nn.Module, ds: Dataset, n: int = 500) -> torch.Tensor:
    """Eval-mode logits of ``model`` on the first ``n`` validation images (normalised as in training)."""
    loader = DeviceLoader(ds.val.take(n), 1000, ds.mean, ds.std)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x) for x, _ in loader])
    model.train(was)
    return out


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return load_dataset("synthetic", seed=0)


@pytest.fixture(scope="module")
def trained_teacher(ds: Dataset) -> tuple[nn.Module, TrainResult]:
    """A teacher trained with plain cross-entropy (3 one-cycle epochs on the full synthetic train split)."""
    teacher = make_cnn(0, width=16)
    cfg = TrainConfig(loss="ce", epochs=3, batch_size=32, lr=1e-2, schedule="onecycle")
    result = train_model(teacher, ds, cfg, seed=0)
    return teacher, result


def fast(**kw: object) -> TrainConfig:
    """A small-budget config: 512 training images in batches of 64 (8 steps per epoch)."""
    base = {"train_max": 512, "batch_size": 64, "epochs": 1.0, "lr": 3e-3}
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- learning
def test_ce_training_learns_above_chance(ds: Dataset, trained_teacher: tuple[nn.Module, TrainResult]) -> None:
    teacher, result = trained_teacher
    chance = 1.0 / ds.num_classes
    assert result.valid and result.invalid_reason is None
    assert result.accuracy > chance + 0.2, result.history
    assert result.steps == 3 * (len(ds.train) // 32)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(h["val_accuracy"] is not None and math.isfinite(h["train_loss"]) for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # The reported numbers are the final model's validation accuracy and CE (keep_best is off).
    acc, loss = evaluate(teacher, ds.val, ds)
    assert acc == pytest.approx(result.accuracy) and loss == pytest.approx(result.loss)
    assert acc > evaluate(make_cnn(0, width=16), ds.val, ds)[0] + 0.15


def test_mse_distillation_moves_student_toward_teacher(ds: Dataset,
                                                       trained_teacher: tuple[nn.Module, TrainResult]) -> None:
    teacher, _ = trained_teacher
    student = make_cnn(1, width=8)
    target = logits_on(teacher, ds)

    def mse_and_agreement() -> tuple[float, float]:
        logits = logits_on(student, ds)
        agree = (logits.argmax(1) == target.argmax(1)).float().mean().item()
        return F.mse_loss(logits, target).item(), agree

    mse_before, agree_before = mse_and_agreement()
    result = train_model(student, ds, TrainConfig(loss="mse", epochs=3, batch_size=32, lr=1e-2),
                         teacher=teacher, seed=0)
    mse_after, agree_after = mse_and_agreement()
    assert result.valid
    assert mse_after < 0.3 * mse_before, (mse_before, mse_after)
    # Matching the logits also makes the student predict what the teacher predicts.
    assert agree_after > agree_before + 0.3, (agree_before, agree_after)


# ---------------------------------------------------------------------------------------------- losses
def _hand_log_softmax(z: torch.Tensor) -> torch.Tensor:
    return z - torch.log(torch.exp(z).sum(dim=1, keepdim=True))


def test_distill_losses_match_hand_formulas() -> None:
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    t = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (6,), generator=gen)
    lam, temp = 0.7, 3.0
    n = s.shape[0]

    log_ps = _hand_log_softmax(s / temp)
    log_pt = _hand_log_softmax(t / temp)
    kl = (torch.exp(log_pt) * (log_pt - log_ps)).sum() / n
    ce = -_hand_log_softmax(s)[torch.arange(n), y].mean()
    mse = ((s - t) ** 2).mean()

    cfg = TrainConfig(loss="kd", kd_lambda=lam, temperature=temp)
    got = distill_loss(s.float(), t.float(), y, cfg)
    assert got.dim() == 0
    assert got.item() == pytest.approx((lam * temp**2 * kl + (1 - lam) * ce).item(), rel=1e-5)

    got = distill_loss(s.float(), t.float(), y, TrainConfig(loss="mse"))
    assert got.item() == pytest.approx(mse.item(), rel=1e-5)
    got = distill_loss(s.float(), t.float(), y, TrainConfig(loss="ce+mse", kd_lambda=0.25))
    assert got.item() == pytest.approx((ce + 0.25 * mse).item(), rel=1e-5)
    # CE needs no teacher; label smoothing mixes in the mean over all classes of -log p.
    assert distill_loss(s.float(), None, y, TrainConfig(loss="ce")).item() == pytest.approx(ce.item(), rel=1e-5)
    eps = 0.2
    smooth = (1 - eps) * ce - eps * _hand_log_softmax(s).mean()
    got = distill_loss(s.float(), None, y, TrainConfig(loss="ce", label_smoothing=eps))
    assert got.item() == pytest.approx(smooth.item(), rel=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        distill_loss(s.float(), None, y, TrainConfig(loss="kd"))


def test_teacher_logits_needed() -> None:
    assert [teacher_logits_needed(TrainConfig(loss=k)) for k in ("mse", "kd", "ce+mse", "ce")] == [
        True, True, True, False]


# ---------------------------------------------------------------------------------------------- sharing
def test_teacher_runs_once_per_batch_shared_by_three_students(ds: Dataset) -> None:
    teacher = make_cnn(10)
    teacher.train()  # the trainer must switch it to eval for its forwards and restore it afterwards
    teacher_calls: list[tuple[bool, torch.Tensor]] = []
    teacher.register_forward_hook(lambda m, inp, out: teacher_calls.append((m.training, inp[0].clone())))
    students = [make_cnn(11 + i) for i in range(3)]
    seen: list[list[torch.Tensor]] = [[] for _ in students]
    for i, st in enumerate(students):
        st.register_forward_pre_hook(
            lambda m, inp, i=i: seen[i].append(inp[0].clone()) if m.training else None)

    cfg = fast(loss="kd", train_max=256, epochs=1.5)  # 4 batches per epoch -> 6 steps
    results = train_students(students, ds, cfg, teacher=teacher, seed=0)

    assert [r.steps for r in results] == [6, 6, 6]
    assert len(teacher_calls) == 6  # once per batch, never for evaluation
    assert not any(training for training, _ in teacher_calls)
    assert teacher.training
    for i in range(3):
        assert len(seen[i]) == 6
        for k in range(6):  # every student got exactly the teacher's batch
            assert torch.equal(seen[i][k], teacher_calls[k][1])
    assert not torch.equal(seen[0][0], seen[0][1])


def test_ce_runs_no_teacher_and_teacher_losses_require_one(ds: Dataset) -> None:
    teacher = make_cnn(10)
    calls = []
    teacher.register_forward_hook(lambda m, inp, out: calls.append(1))
    result = train_model(make_cnn(12), ds, fast(loss="ce", max_steps=3), teacher=teacher)
    assert result.valid and result.steps == 3 and calls == []
    for loss in ("mse", "kd", "ce+mse"):
        with pytest.raises(ValueError, match="teacher"):
            train_model(make_cnn(12), ds, fast(loss=loss, max_steps=1))


# ---------------------------------------------------------------------------------------------- robustness
def test_diverging_student_is_dropped_and_others_continue(ds: Dataset) -> None:
    bad_tail = NanAfter(ok_calls=3)
    bad = nn.Sequential(make_cnn(20), bad_tail)
    good = make_cnn(21)
    bad_result, good_result = train_students([bad, good], ds, fast(loss="ce"), seed=0)

    assert not bad_result.valid
    assert bad_result.invalid_reason == "loss diverged (nan) at step 4"
    assert bad_result.accuracy == 0.0 and bad_result.steps == 4
    assert bad_tail.train_calls == 4  # dropped right away: no further training forwards
    assert good_result.valid and good_result.invalid_reason is None
    assert good_result.steps == 8 and math.isfinite(good_result.loss)
    assert all(torch.isfinite(p).all() for p in good.parameters())
    assert evaluate(good, ds.val, ds)[0] == pytest.approx(good_result.accuracy)


def test_huge_learning_rate_marks_invalid_without_raising(ds: Dataset) -> None:
    result = train_model(make_cnn(22), ds, fast(loss="ce", optimizer="sgd", lr=1e30, momentum=0.0))
    assert not result.valid
    assert result.invalid_reason is not None and result.invalid_reason.startswith("loss diverged (")
    assert result.accuracy == 0.0 and 1 <= result.steps < 8


# ---------------------------------------------------------------------------------------------- seeding
def test_same_seed_gives_bit_identical_results(ds: Dataset) -> None:
    cfg = fast(loss="ce", train_max=256, epochs=2, augment=True)

    def run(seed: int, scramble: int) -> tuple[TrainResult, dict[str, torch.Tensor], torch.Tensor]:
        model = make_cnn(30, dropout=0.3)  # dropout draws from torch's global generator
        batches: list[torch.Tensor] = []
        model.register_forward_pre_hook(lambda m, inp: batches.append(inp[0]) if m.training else None)
        torch.manual_seed(scramble)  # the trainer must seed torch itself, whatever the caller's state
        result = train_model(model, ds, cfg, seed=seed)
        return result, params_of(model), torch.stack(batches)

    (r1, w1, b1), (r2, w2, b2) = run(5, scramble=1), run(5, scramble=2)
    assert torch.equal(b1, b2) and same_state(w1, w2)
    assert r1.history == r2.history and r1.accuracy == r2.accuracy and r1.loss == r2.loss
    # The seed drives the batch stream (order, augmentation) and the result.
    r3, w3, b3 = run(6, scramble=1)
    assert not torch.equal(b1[0], b3[0]) and not same_state(w1, w3)
    assert r1.history != r3.history


# ---------------------------------------------------------------------------------------------- keep_best
def test_keep_best_restores_best_epoch(ds: Dataset) -> None:
    # Epoch 1 trains normally; the "step" schedule then multiplies the lr by 1000 (Adam lr 3), which wrecks
    # the model in epoch 2, so the best epoch is 1.
    cfg = fast(loss="ce", train_max=None, epochs=2, schedule="step", step_epochs=1, gamma=1000.0)
    best_model = make_cnn(40, width=16)
    best = train_model(best_model, ds, TrainConfig(**{**cfg.to_dict(), "keep_best": True}), seed=0)
    last_model = make_cnn(40, width=16)
    last = train_model(last_model, ds, cfg, seed=0)
    ref_model = make_cnn(40, width=16)
    ref = train_model(ref_model, ds, TrainConfig(**{**cfg.to_dict(), "epochs": 1}), seed=0)

    accs = [h["val_accuracy"] for h in best.history]
    assert len(accs) == 2 and accs[1] < accs[0], accs  # the construction holds
    assert best.valid and best.best_epoch == 1
    assert best.accuracy == max(accs) and best.loss == best.history[0]["val_loss"]
    # The restored weights are exactly those at the end of epoch 1.
    assert same_state(params_of(best_model), params_of(ref_model))
    assert ref.accuracy == best.accuracy
    assert evaluate(best_model, ds.val, ds)[0] == pytest.approx(best.accuracy)
    # Without keep_best the (worse) last epoch is reported and kept.
    assert last.history == best.history
    assert last.accuracy == accs[-1] < best.accuracy
    assert evaluate(last_model, ds.val, ds)[0] == pytest.approx(last.accuracy)


# ---------------------------------------------------------------------------------------------- budget
def test_max_steps_caps_steps(ds: Dataset) -> None:
    model = make_cnn(50)
    forwards = []
    model.register_forward_pre_hook(lambda m, inp: forwards.append(1) if m.training else None)
    result = train_model(model, ds, fast(loss="ce", epochs=5, max_steps=3))
    assert result.steps == 3 and len(forwards) == 3
    assert [h["epoch"] for h in result.history] == [1]
    # max_steps above the epoch budget changes nothing.
    assert train_model(make_cnn(50), ds, fast(loss="ce", max_steps=100)).steps == 8


@pytest.mark.parametrize(("epochs", "train_max", "steps", "epoch_ids"), [
    (0.5, 512, 4, [1]),  # 8 steps per epoch
    (1.25, 512, 10, [1, 2]),
    (0.01, 512, 1, [1]),  # at least one step
    (0.28, 1600, 7, [1]),  # 0.28 * 25 is 7.000000000000001 in floating point: still 7 steps
])
def test_fractional_epochs(ds: Dataset, epochs: float, train_max: int, steps: int, epoch_ids: list[int]) -> None:
    result = train_model(make_cnn(51), ds, fast(loss="ce", epochs=epochs, train_max=train_max))
    assert result.steps == steps
    assert [h["epoch"] for h in result.history] == epoch_ids
    assert result.history[-1]["val_accuracy"] == result.accuracy


def test_eval_every_epoch_off_evaluates_only_at_the_end(ds: Dataset) -> None:
    result = train_model(make_cnn(52), ds, fast(loss="ce", epochs=3, train_max=128, eval_every_epoch=False))
    assert [h["val_accuracy"] is None for h in result.history] == [True, True, False]
    assert result.accuracy == result.history[-1]["val_accuracy"]


# ---------------------------------------------------------------------------------------------- schedules
def test_lr_multiplier_schedules() -> None:
    total, spe = 100, 10
    cos = [lr_multiplier(TrainConfig(schedule="cosine"), s, total, spe) for s in range(total)]
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and 0 < cos[-1] < 0.01
    assert all(a > b for a, b in zip(cos, cos[1:]))

    step_cfg = TrainConfig(schedule="step", step_epochs=2, gamma=0.1)
    assert [lr_multiplier(step_cfg, s, total, spe) for s in (0, 19, 20, 39, 40)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01])

    one = [lr_multiplier(TrainConfig(schedule="onecycle"), s, total, spe) for s in range(total)]
    peak = one.index(max(one))
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0) and peak == 30
    assert all(a < b for a, b in zip(one[:peak], one[1:peak + 1]))
    assert all(a > b for a, b in zip(one[peak:], one[peak + 1:])) and one[-1] < 1e-4

    assert lr_multiplier(TrainConfig(), 7, total, spe) == 1.0
    assert lr_multiplier(TrainConfig(schedule="onecycle"), 0, 1, 1) > 0  # one-step runs are fine


def test_schedule_is_applied_per_step(ds: Dataset) -> None:
    # gamma ~ 0 from epoch 2 on: the parameters (not the BN statistics) must stop moving after epoch 1.
    def run(gamma: float, epochs: float) -> dict[str, torch.Tensor]:
        model = make_cnn(60)
        train_model(model, ds, fast(loss="ce", train_max=256, epochs=epochs, schedule="step",
                                    step_epochs=1, gamma=gamma), seed=0)
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    after1, frozen2, moving2 = run(1e-12, 1), run(1e-12, 2), run(1.0, 2)
    assert max((after1[k] - frozen2[k]).abs().max().item() for k in after1) < 1e-6
    assert max((after1[k] - moving2[k]).abs().max().item() for k in after1) > 1e-3


# ---------------------------------------------------------------------------------------------- evaluate
def test_evaluate_matches_manual_and_restores_mode(ds: Dataset) -> None:
    model = make_cnn(70)
    model.train()
    train_model(model, ds, fast(loss="ce", max_steps=4))  # BN statistics now differ between modes
    assert model.training
    for n in (500, 37):
        logits = logits_on(model, ds, n)
        labels = ds.val.y[:n]
        acc, loss = evaluate(model, ds.val, ds, batch_size=64, max_items=None if n == 500 else n)
        assert acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())
        assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert model.training
    model.eval()
    evaluate(model, ds.val, ds)
    assert not model.training


def test_split_eval_max_and_cpu_bf16_channels_last(ds: Dataset) -> None:
    cfg = fast(loss="kd", max_steps=2, eval_max=50, amp="bf16", channels_last="on")
    model = make_cnn(80)
    result = train_model(model, ds, cfg, teacher=make_cnn(81), split="test", progress=True)
    assert result.valid and result.steps == 2 and math.isfinite(result.loss)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    acc, loss = evaluate(model, ds.test, ds, max_items=50, amp="bf16")
    assert result.accuracy == pytest.approx(acc) and result.loss == pytest.approx(loss)
    with pytest.raises(ValueError, match="split"):
        train_model(make_cnn(80), ds, cfg, teacher=make_cnn(81), split="train")


# ---------------------------------------------------------------------------------------------- config
def test_from_dict_round_trip_and_yaml_strings() -> None:
    cfg = TrainConfig(epochs=2.5, loss="kd", optimizer="sgd", nesterov=True, schedule="cosine", keep_best=True)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # PyYAML reads "1e-3" as a string; numeric strings are accepted, integral floats become ints.
    loaded = TrainConfig.from_dict({"lr": "1e-3", "batch_size": 64.0, "max_steps": 10})
    assert loaded.lr == 1e-3 and loaded.batch_size == 64 and isinstance(loaded.batch_size, int)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="lrr") as info:
        TrainConfig.from_dict({"epochs": 1, "lrr": 0.1})
    assert "'lr'" in str(info.value) and "'epochs'" in str(info.value)  # lists the valid keys


@pytest.mark.parametrize(("key", "value", "hint"), [
    ("loss", "foo", "mse"),
    ("optimizer", "rmsprop", "adam"),
    ("schedule", "linear", "cosine"),
    ("epochs", 0, "> 0"),
    ("epochs", -1.5, "> 0"),
    ("epochs", float("nan"), "> 0"),
    ("batch_size", 0, ">= 1"),
    ("batch_size", 3.5, ">= 1"),
    ("max_steps", -1, ">= 0"),
    ("lr", "fast", "number"),
    ("lr", 0.0, "> 0"),
    ("temperature", 0, "> 0"),
    ("label_smoothing", 1.0, "[0, 1)"),
    ("momentum", 1.0, "[0, 1)"),
    ("amp", "fp16", "bf16"),
    ("channels_last", "yes", "auto"),
    ("keep_best", "yes", "true or false"),
    ("augment", 1, "true or false"),
    ("nesterov", True, "sgd"),
])
def test_from_dict_rejects_bad_values(key: str, value: object, hint: str) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({key: value})
    message = str(info.value)
    assert key in message and repr(value) in message and hint in message


def test_kd_lambda_range_depends_on_loss() -> None:
    with pytest.raises(ValueError, match="kd_lambda"):
        TrainConfig(loss="kd", kd_lambda=1.5)
    assert TrainConfig(loss="ce+mse", kd_lambda=1.5).kd_lambda == 1.5
    with pytest.raises(ValueError, match="kd_lambda"):
        TrainConfig(loss="ce+mse", kd_lambda=-0.1)


def test_the_teacher_logit_cache_runs_no_teacher_forward_after_the_first_student_and_changes_nothing(
        ds: Dataset) -> None:
    from netcomp.distill import TeacherLogitCache

    teacher = make_cnn(10)
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, inp, out: calls.append(len(inp[0])))
    cfg = fast(loss="kd", train_max=256, epochs=2.5, augment=True)  # 4 batches per epoch -> 10 steps, 3 epochs
    plain = make_cnn(20)
    reference = train_model(plain, ds, cfg, teacher=teacher, seed=3)
    assert len(calls) == 10
    cache = TeacherLogitCache()
    for attempt in range(2):
        calls.clear()
        student = make_cnn(20)
        result = train_students([student], ds, cfg, teacher=teacher, seed=3, teacher_cache=cache)[0]
        assert len(calls) == (10 if attempt == 0 else 0)  # the second student: no teacher forward at all
        assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in reference.history]
        assert result.accuracy == reference.accuracy and same_state(params_of(student), params_of(plain))
    assert (cache.misses, cache.hits) == (10, 10)
    calls.clear()
    train_students([make_cnn(20)], ds, cfg, teacher=teacher, seed=4, teacher_cache=cache)
    assert len(calls) == 10, "another seed is another batch stream: its logits are computed"
    full = TeacherLogitCache(max_bytes=0)  # keeps nothing, still exact
    student = make_cnn(20)
    train_students([student], ds, cfg, teacher=teacher, seed=3, teacher_cache=full)
    assert full.bytes == 0 and same_state(params_of(student), params_of(plain))


# ---------------------------------------------------------------------------------------------- method hooks
def test_multistep_milestones_in_epochs_step_the_lr_down_there() -> None:
    cfg = TrainConfig(schedule="multistep", milestones=[1, 2.5], gamma=0.1)
    assert [lr_multiplier(cfg, s, 40, 10) for s in (0, 9, 10, 24, 25, 39)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    assert "milestones" not in fast().to_dict()  # an unset value leaves existing settings keys unchanged
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(milestones=[-1])


def test_extra_loss_and_after_backward_hooks_act_on_every_step(ds: Dataset) -> None:
    """An extra loss term changes what is learned; a gradient mask after backward freezes what it masks; a
    non-finite extra term makes the student invalid (the check DeepHoyer's own loop lacked)."""
    plain, pulled = make_cnn(1), make_cnn(1)
    cfg = fast(loss="ce", optimizer="sgd", momentum=0.0, weight_decay=0.0, eval_every_epoch=False)
    train_students([plain], ds, cfg, seed=0)
    calls = []
    train_students([pulled], ds, cfg, seed=0,
                   extra_loss=lambda m: calls.append(1) or 10.0 * m[-1].weight.pow(2).sum())
    assert len(calls) == 8 and pulled[-1].weight.norm() < plain[-1].weight.norm()
    frozen = make_cnn(2)
    first = frozen[0].weight.detach().clone()

    def mask(m: nn.Module) -> None:
        m[0].weight.grad.zero_()

    train_students([frozen], ds, cfg, seed=0, after_backward=mask)
    assert torch.equal(frozen[0].weight, first) and not torch.equal(frozen[-1].weight, make_cnn(2)[-1].weight)
    bad = train_students([make_cnn(3)], ds, cfg, seed=0, extra_loss=lambda m: torch.tensor(float("nan")))[0]
    assert not bad.valid and bad.invalid_reason
