"""Tests of netcomp.teachers: training, saving, loading and caching teachers.

What must hold for the rest of the project to trust a teacher: it actually learns (on generated data and on
a subset of real Fashion-MNIST), its file keeps the weights and honest metadata and loads with
``torch.load(weights_only=True)``, the cache trains once and then only loads, ``$NETCOMP_HOME`` moves the
cache, and bad recipes are refused before any training starts. Everything runs on the CPU; the default
(non-expensive) tests take well under two minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from netcomp import teachers
from netcomp.data import FASHION_MNIST_SYSTEM_DIR, Dataset, DeviceLoader, load_dataset
from netcomp.distill import TrainConfig, evaluate
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import build_module
from netcomp.teachers import (
    CacheNotWritableError,
    Teacher,
    arch_for,
    check_teacher_fits,
    get_teacher,
    load_recipe,
    load_teacher,
    load_yaml,
    netcomp_home,
    partial_path,
    save_teacher,
    teacher_path,
    train_teacher,
)

#: A short Adam recipe that takes LeNet-5 on 16x16 synthetic images well above chance in a few seconds.
SYNTHETIC_RECIPE: dict[str, Any] = {
    "loss": "ce", "epochs": 5, "batch_size": 64, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0,
    "eval_every_epoch": False,
}

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_SYSTEM_DIR),
    reason=f"{FASHION_MNIST_SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)",
)


# ---------------------------------------------------------------------------------------------- helpers
def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a model's state dict (so later training cannot change it)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts have the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def val_logits(model: nn.Module, ds: Dataset) -> torch.Tensor:
    """Eval-mode logits on the whole validation split, normalised exactly as training normalises it."""
    loader = DeviceLoader(ds.val, 512, ds.mean, ds.std)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in loader])


def forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any teacher training in netcomp.teachers fail loudly (to prove a code path only loads)."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a teacher was trained where it should have been loaded from the cache")

    monkeypatch.setattr(teachers, "train_teacher", boom)
    monkeypatch.setattr(teachers, "train_model", boom)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def syn() -> Dataset:
    """Small 16x16 synthetic set: 1500 training, 300 validation and 300 test images, 10 classes."""
    return load_dataset("synthetic", image_size=16, train_size=1500, val_size=300, test_size=300, seed=0)


@pytest.fixture(scope="module")
def syn_teacher(syn: Dataset) -> Teacher:
    """A LeNet-5 teacher trained on ``syn`` with :data:`SYNTHETIC_RECIPE` (a few seconds on the CPU)."""
    return train_teacher("lenet5", syn, recipe=SYNTHETIC_RECIPE, seed=2, progress=False)


@pytest.fixture(scope="module")
def tiny_ds() -> Dataset:
    """A very small synthetic set for cache tests, trained with the 20-step "smoke" recipe."""
    return load_dataset("synthetic", image_size=16, train_size=256, val_size=64, test_size=64, seed=1)


# ---------------------------------------------------------------------------------------------- learning
def test_teacher_learns_synthetic_above_chance(syn: Dataset, syn_teacher: Teacher) -> None:
    chance = 1.0 / syn.num_classes
    assert syn_teacher.val_accuracy > 0.3 > chance, syn_teacher.meta
    assert syn_teacher.meta["test_accuracy"] > 0.3, syn_teacher.meta
    # The recorded accuracies are the returned model's, measured again here.
    assert not syn_teacher.model.training
    assert evaluate(syn_teacher.model, syn.val, syn)[0] == pytest.approx(syn_teacher.val_accuracy)
    assert evaluate(syn_teacher.model, syn.test, syn)[0] == pytest.approx(syn_teacher.meta["test_accuracy"])
    # An untrained LeNet-5 of the same shape is far below it, so the accuracy comes from training.
    torch.manual_seed(123)
    untrained = build_module(arch_for("lenet5", syn))
    assert evaluate(untrained, syn.val, syn)[0] < syn_teacher.val_accuracy - 0.15


@needs_fashion_mnist
def test_teacher_learns_fashionmnist_subset(tmp_path_factory: pytest.TempPathFactory) -> None:
    fm = load_dataset("fashionmnist", root=tmp_path_factory.mktemp("data"))
    ds = fm.shrink(train=3000, val=1000, test=1000)
    teacher = train_teacher("lenet5", ds, recipe="fast", seed=0, progress=False)
    assert teacher.val_accuracy > 0.6, teacher.meta
    assert teacher.meta["test_accuracy"] > 0.6, teacher.meta
    meta = teacher.meta
    assert meta["dataset"] == "fashionmnist"
    assert (meta["in_channels"], meta["image_size"], meta["num_classes"]) == (fm.channels, fm.image_size, 10)
    assert meta["split"] == {"train": 3000, "val": 1000, "test": 1000}
    assert meta["recipe"] == "fast"
    assert meta["recipe_config"] == TrainConfig.from_dict(load_yaml("teachers.yaml")["fast"]).to_dict()


@pytest.mark.expensive
def test_resnet20_teacher_learns_synthetic_with_fast_recipe(syn: Dataset) -> None:
    """ResNet-20 (BatchNorm, residuals) with the named "fast" recipe: a minute or more on two CPU cores."""
    teacher = train_teacher("resnet20", syn, recipe="fast", seed=0, progress=False)
    assert teacher.val_accuracy > 0.3, teacher.meta
    assert evaluate(teacher.model, syn.val, syn)[0] == pytest.approx(teacher.val_accuracy)


@pytest.mark.expensive
@needs_fashion_mnist
def test_fast_recipe_on_full_fashionmnist(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The quickstart teacher: LeNet-5, "fast" recipe, all 55,000 training images (minutes on a CPU)."""
    ds = load_dataset("fashionmnist", root=tmp_path_factory.mktemp("data"))
    teacher = train_teacher("lenet5", ds, recipe="fast", seed=0, progress=False)
    assert teacher.val_accuracy > 0.85, teacher.meta
    assert teacher.meta["test_accuracy"] > 0.85, teacher.meta


def test_same_seed_gives_identical_teacher(tiny_ds: Dataset) -> None:
    a = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=3, progress=False)
    b = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=3, progress=False)
    c = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=4, progress=False)
    assert same_state(state_of(a.model), state_of(b.model))
    assert not same_state(state_of(a.model), state_of(c.model))


# ---------------------------------------------------------------------------------------------- save / load
def test_metadata_describes_the_teacher(syn: Dataset, syn_teacher: Teacher) -> None:
    meta = syn_teacher.meta
    assert meta["arch"] == "lenet5" and meta["dataset"] == syn.name
    assert (meta["in_channels"], meta["image_size"], meta["num_classes"]) == (
        syn.channels, syn.image_size, syn.num_classes)
    assert meta["split"] == {"train": len(syn.train), "val": len(syn.val), "test": len(syn.test)}
    assert meta["recipe"] == "custom"
    assert meta["recipe_config"] == TrainConfig.from_dict(SYNTHETIC_RECIPE).to_dict()
    assert meta["seed"] == 2
    assert meta["data_fingerprint"] == teachers.data_fingerprint(syn)
    arch = arch_for("lenet5", syn)
    assert syn_teacher.arch == arch
    # Parameter count from the IR agrees with the real module; MACs come from the same IR.
    assert meta["params"] == count_params(arch) == sum(p.numel() for p in syn_teacher.model.parameters())
    assert meta["macs"] == count_macs(arch) > 0


def test_save_load_round_trip(tmp_path: Path, syn: Dataset, syn_teacher: Teacher) -> None:
    path = tmp_path / "sub" / "teacher.pt"
    save_teacher(syn_teacher, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher.pt"]  # no temporary file left

    blob = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and values only
    assert set(blob) == {"state_dict", "meta"}
    assert blob["meta"] == syn_teacher.meta
    assert same_state(blob["state_dict"], state_of(syn_teacher.model))

    loaded = load_teacher(path)
    assert loaded.meta == syn_teacher.meta
    assert loaded.arch == syn_teacher.arch
    assert not loaded.model.training
    assert same_state(state_of(loaded.model), state_of(syn_teacher.model))
    assert torch.equal(val_logits(loaded.model, syn), val_logits(syn_teacher.model, syn))
    assert evaluate(loaded.model, syn.val, syn)[0] == pytest.approx(syn_teacher.val_accuracy)


def test_load_rejects_other_format(tmp_path: Path, syn_teacher: Teacher) -> None:
    path = tmp_path / "teacher.pt"
    save_teacher(syn_teacher, path)
    blob = torch.load(path, weights_only=True)
    blob["meta"]["format"] = teachers.FORMAT_VERSION + 1
    torch.save(blob, path)
    with pytest.raises(ValueError, match="format"):
        load_teacher(path)


# ---------------------------------------------------------------------------------------------- cache
def test_get_teacher_trains_once_then_loads(tmp_path: Path, tiny_ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_train = teachers.train_teacher

    def counting_train(*args: Any, **kwargs: Any) -> Teacher:
        calls.append(args[0])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(teachers, "train_teacher", counting_train)
    first = get_teacher("lenet5", tiny_ds, recipe="smoke", seed=5, home=tmp_path, progress=False)
    path = teacher_path("lenet5", tiny_ds, "smoke", 5, tmp_path)
    assert calls == ["lenet5"] and path.is_file()
    assert (first.meta["seed"], first.meta["recipe"]) == (5, "smoke")
    assert path.parent == tmp_path / "teachers"
    mtime = path.stat().st_mtime_ns

    forbid_training(monkeypatch)
    second = get_teacher("lenet5", tiny_ds, recipe="smoke", seed=5, home=tmp_path, progress=False)
    assert path.stat().st_mtime_ns == mtime
    assert second.meta == first.meta
    assert same_state(state_of(second.model), state_of(first.model))
    assert torch.equal(val_logits(second.model, tiny_ds), val_logits(first.model, tiny_ds))

    # Another seed is another teacher: not in the cache, and train_if_missing=False refuses to train it.
    with pytest.raises(FileNotFoundError, match="train_if_missing"):
        get_teacher("lenet5", tiny_ds, recipe="smoke", seed=6, home=tmp_path, train_if_missing=False, progress=False)


def test_teacher_path_separates_what_differs(tmp_path: Path, tiny_ds: Dataset) -> None:
    base = teacher_path("lenet5", tiny_ds, "smoke", 0, tmp_path)
    variants = [
        teacher_path("resnet20", tiny_ds, "smoke", 0, tmp_path),
        teacher_path("lenet5", tiny_ds, "fast", 0, tmp_path),
        teacher_path("lenet5", tiny_ds, "smoke", 1, tmp_path),
        teacher_path("lenet5", tiny_ds.shrink(train=128), "smoke", 0, tmp_path),
        teacher_path("lenet5", tiny_ds.shrink(val=32), "smoke", 0, tmp_path),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert all(p.parent == tmp_path / "teachers" for p in [base, *variants])


def test_netcomp_home_env_var(tmp_path: Path, tiny_ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETCOMP_HOME", raising=False)
    assert netcomp_home() == Path.home() / ".cache" / "netcomp"

    home = tmp_path / "home"
    monkeypatch.setenv("NETCOMP_HOME", str(home))
    assert netcomp_home() == home
    assert teacher_path("lenet5", tiny_ds, "smoke", 0) == teacher_path("lenet5", tiny_ds, "smoke", 0, home)
    get_teacher("lenet5", tiny_ds, recipe="smoke", seed=0, progress=False)  # no home: the env var decides
    assert teacher_path("lenet5", tiny_ds, "smoke", 0, home).is_file()


# ---------------------------------------------------------------------------------------------- recipes
def test_named_recipes_are_valid_ce_configs() -> None:
    recipes = load_yaml("teachers.yaml")
    assert {"default", "esnac", "fast", "smoke"} <= set(recipes)
    for name in recipes:
        got_name, config = load_recipe(name)
        assert got_name == name and config.loss == "ce"


def test_unknown_recipe_raises_listing_recipes(tmp_path: Path, tiny_ds: Dataset,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teachers, "train_model", lambda *a, **k: pytest.fail("trained with an unknown recipe"))
    with pytest.raises(ValueError) as err:
        teachers.load_recipe("no-such-recipe")
    message = str(err.value)
    assert "no-such-recipe" in message
    assert all(name in message for name in load_yaml("teachers.yaml"))
    with pytest.raises(ValueError, match="no-such-recipe"):
        get_teacher("lenet5", tiny_ds, recipe="no-such-recipe", home=tmp_path, progress=False)
    assert not (tmp_path / "teachers").exists() or not any((tmp_path / "teachers").iterdir())


@pytest.mark.parametrize("loss", ["mse", "kd", "ce+mse"])
def test_recipe_with_non_ce_loss_is_rejected(tiny_ds: Dataset, loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rejected before any training: train_model would fail the test if it were reached.
    monkeypatch.setattr(teachers, "train_model", lambda *a, **k: pytest.fail("trained with a non-ce recipe"))
    with pytest.raises(ValueError, match=re.escape(f"'{loss}'") + ".*'ce'"):
        train_teacher("lenet5", tiny_ds, recipe={"loss": loss}, progress=False)


def test_unknown_recipe_key_is_rejected(tiny_ds: Dataset) -> None:
    with pytest.raises(ValueError, match="epochz"):
        train_teacher("lenet5", tiny_ds, recipe={"loss": "ce", "epochz": 3}, progress=False)


def test_cache_name_tells_apart_image_sizes_and_data_and_rejects_dict_recipes(tmp_path):
    from netcomp.data import load_dataset
    from netcomp.teachers import teacher_path

    sizes = {"train_size": 64, "val_size": 16, "test_size": 16}
    small = load_dataset("synthetic", image_size=16, **sizes)
    large = load_dataset("synthetic", image_size=32, **sizes)
    other = load_dataset("synthetic", image_size=16, seed=1, **sizes)
    paths = {teacher_path("lenet5", d, "fast", 0, tmp_path) for d in (small, large, other)}
    assert len(paths) == 3
    assert teacher_path("lenet5", small, "fast", 0, tmp_path) == teacher_path(
        "lenet5", load_dataset("synthetic", image_size=16, **sizes), "fast", 0, tmp_path)
    with pytest.raises(TypeError, match="recipe name"):
        teacher_path("lenet5", small, {"loss": "ce"}, 0, tmp_path)


def test_cache_name_follows_the_recipe_content(tmp_path, monkeypatch):
    from netcomp import teachers
    from netcomp.data import load_dataset

    data = load_dataset("synthetic", image_size=16, train_size=64, val_size=16, test_size=16)
    before = teachers.teacher_path("lenet5", data, "fast", 0, tmp_path)
    recipes = teachers.load_yaml("teachers.yaml")
    recipes["fast"] = {**recipes["fast"], "epochs": 7}
    monkeypatch.setattr(teachers, "load_yaml", lambda name: recipes)
    assert teachers.teacher_path("lenet5", data, "fast", 0, tmp_path) != before


# ---------------------------------------------------------------------------------------------- fit to the env
def test_teacher_file_for_other_classes_and_size_is_rejected_by_the_env(tmp_path: Path) -> None:
    from envs.removal import RemovalEnv

    other = load_dataset("synthetic", image_size=16, num_classes=20, train_size=128, val_size=32, test_size=32)
    path = tmp_path / "other.pt"
    save_teacher(train_teacher("lenet5", other, recipe="smoke", progress=False), path)
    env_data = {"train_size": 128, "test_size": 32}  # synthetic defaults: 10 classes, 32x32 images
    with pytest.raises(ValueError) as err:
        RemovalEnv(arch="lenet5", dataset="synthetic", teacher=str(path), dataset_kwargs=env_data)
    message = str(err.value)
    assert str(path) in message
    assert re.search(r"num_classes is 20 in the teacher but 10 for the env", message), message
    assert re.search(r"image_size is 16 in the teacher but 32 for the env", message), message
    # the same teacher handed over in memory is refused as well
    with pytest.raises(ValueError, match="num_classes is 20"):
        RemovalEnv(arch="lenet5", dataset="synthetic", teacher=load_teacher(path), dataset_kwargs=env_data)


def test_check_teacher_fits_compares_name_shape_and_data_fingerprint(tmp_path: Path, tiny_ds: Dataset) -> None:
    teacher = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=0, progress=False)
    path = tmp_path / "t.pt"
    save_teacher(teacher, path)
    loaded = load_teacher(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_teacher_fits(loaded, "lenet5", tiny_ds)  # the data it was trained on: silent
    with pytest.raises(ValueError, match=re.escape(f"teacher file {path}") + ".*arch is 'lenet5'.*'resnet20'"):
        check_teacher_fits(loaded, "resnet20", tiny_ds)
    # same shapes and sizes, other images (another generator seed): only the fingerprint tells
    same_shape = load_dataset("synthetic", image_size=16, train_size=256, val_size=64, test_size=64, seed=7)
    fp = teachers.data_fingerprint(same_shape)
    with pytest.raises(ValueError, match=f"data_fingerprint is '{loaded.meta['data_fingerprint']}'.*'{fp}'"):
        check_teacher_fits(loaded, "lenet5", same_shape)
    with pytest.raises(ValueError, match="dataset is 'synthetic' in the teacher but 'cifar10' for the env"):
        check_teacher_fits(loaded, "lenet5", dataclasses.replace(tiny_ds, name="cifar10"))
    # an old file without a recorded fingerprint is accepted, with a warning naming it
    blob = torch.load(path, weights_only=True)
    del blob["meta"]["data_fingerprint"]
    old = tmp_path / "old.pt"
    torch.save(blob, old)
    with pytest.warns(UserWarning, match=re.escape(str(old)) + ".*no data fingerprint"):
        check_teacher_fits(load_teacher(old), "lenet5", same_shape)


def test_env_cache_tells_apart_datasets_of_equal_size(tmp_path: Path) -> None:
    from envs.base import _cached_teacher

    sizes = {"train_size": 128, "val_size": 32, "test_size": 32}
    small = load_dataset("synthetic", image_size=16, **sizes)
    large = load_dataset("synthetic", image_size=32, **sizes)
    a = _cached_teacher("lenet5", small, "smoke", 0, str(tmp_path))
    b = _cached_teacher("lenet5", large, "smoke", 0, str(tmp_path))
    assert (a.arch.image_size, b.arch.image_size) == (16, 32)


# ---------------------------------------------------------------------------------------------- foreign files
def _write_text(path: Path) -> None:
    path.write_text("hello, I am a text file\n" * 20)


def _write_random(path: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def _write_state_dict(path: Path) -> None:
    torch.save(nn.Linear(3, 2).state_dict(), path)


def _write_tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


def _write_partial_dict(path: Path) -> None:
    torch.save({"state_dict": {}, "meta": {"arch": "lenet5"}}, path)


@pytest.mark.parametrize("write", [_write_text, _write_random, _write_state_dict, _write_tensor, _write_partial_dict])
def test_load_teacher_rejects_files_that_are_not_teachers(tmp_path: Path, write: Any) -> None:
    path = tmp_path / "not-a-teacher.pt"
    write(path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a netcomp teacher checkpoint: ")):
        load_teacher(path)


def test_load_teacher_rejects_weights_of_another_architecture(tmp_path: Path, syn_teacher: Teacher) -> None:
    path = tmp_path / "t.pt"
    blob = {"state_dict": state_of(syn_teacher.model), "meta": {**syn_teacher.meta, "arch": "resnet20"}}
    torch.save(blob, path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a netcomp teacher checkpoint: ") + ".*resnet20"):
        load_teacher(path)


def test_load_teacher_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "teacher.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_teacher(path)


def test_env_with_a_text_file_as_teacher_says_it_is_not_a_checkpoint(tmp_path: Path) -> None:
    from envs.removal import RemovalEnv

    path = tmp_path / "notes.txt"
    _write_text(path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a netcomp teacher checkpoint")):
        RemovalEnv(arch="lenet5", dataset="synthetic", teacher=str(path),
                   dataset_kwargs={"train_size": 64, "test_size": 16})


# ---------------------------------------------------------------------------------------------- resumable training
#: Three short epochs (4 batches of 64 on ``tiny_ds``) with every piece of state a resume must carry:
#: SGD momentum buffers, a one-cycle schedule, augmentation and per-epoch evaluation.
RESUME_RECIPES: dict[str, dict[str, Any]] = {
    "resume-sgd": {"loss": "ce", "epochs": 3, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                   "nesterov": True, "schedule": "onecycle", "augment": True, "eval_every_epoch": True},
    "resume-adam": {"loss": "ce", "epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": 3e-3,
                    "schedule": "cosine", "keep_best": True},
}


class Killed(Exception):
    """Stands for a kill of the process right after a partial checkpoint was written."""


@pytest.mark.parametrize("recipe", sorted(RESUME_RECIPES))
def test_killed_teacher_training_resumes_to_the_same_weights(tmp_path: Path, tiny_ds: Dataset, recipe: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    recipes = {**load_yaml("teachers.yaml"), **RESUME_RECIPES}
    monkeypatch.setattr(teachers, "load_yaml", lambda name: recipes)
    real_save, real_train = teachers._atomic_save, teachers.train_model
    written: list[int] = []  # epochs whose partial checkpoint was written
    resumed: list[int | None] = []  # the epoch each train_model call resumed after (None: from scratch)
    kill_after: list[int] = []

    def recording_save(obj: Any, path: Path) -> None:
        real_save(obj, path)
        if Path(path).name.endswith(".partial"):
            written.append(obj["state"]["epoch"])
            if written[-1] in kill_after:
                raise Killed

    def recording_train(*args: Any, **kwargs: Any) -> Any:
        resumed.append(kwargs["resume"]["epoch"] if kwargs.get("resume") is not None else None)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(teachers, "_atomic_save", recording_save)
    monkeypatch.setattr(teachers, "train_model", recording_train)

    whole = get_teacher("lenet5", tiny_ds, recipe=recipe, seed=4, home=tmp_path / "whole", progress=False)
    assert (written, resumed) == ([1, 2, 3], [None])
    assert not partial_path(teacher_path("lenet5", tiny_ds, recipe, 4, tmp_path / "whole")).exists()

    written.clear(), resumed.clear()
    kill_after.append(1)
    home = tmp_path / "killed"
    path = teacher_path("lenet5", tiny_ds, recipe, 4, home)
    with pytest.raises(Killed):
        get_teacher("lenet5", tiny_ds, recipe=recipe, seed=4, home=home, progress=False)
    assert written == [1] and partial_path(path).is_file() and not path.exists()
    assert [p.name for p in path.parent.iterdir()] == [partial_path(path).name]  # no temporary file left

    written.clear(), resumed.clear()
    kill_after.clear()
    again = get_teacher("lenet5", tiny_ds, recipe=recipe, seed=4, home=home, progress=False)
    assert resumed == [1] and written == [2, 3]  # epoch 1 was not trained again
    assert path.is_file() and not partial_path(path).exists()
    assert same_state(state_of(again.model), state_of(whole.model))  # bit-identical on the CPU
    drop = {"train_seconds"}
    assert {k: v for k, v in again.meta.items() if k not in drop} == {
        k: v for k, v in whole.meta.items() if k not in drop}
    assert same_state(state_of(load_teacher(path).model), state_of(whole.model))


def test_unreadable_partial_checkpoint_is_ignored_with_a_warning(tmp_path: Path, tiny_ds: Dataset) -> None:
    path = teacher_path("lenet5", tiny_ds, "smoke", 0, tmp_path)
    path.parent.mkdir(parents=True)
    partial_path(path).write_text("garbage")
    with pytest.warns(UserWarning, match=re.escape(str(partial_path(path)))):
        teacher = get_teacher("lenet5", tiny_ds, recipe="smoke", seed=0, home=tmp_path, progress=False)
    reference = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=0, progress=False)
    assert same_state(state_of(teacher.model), state_of(reference.model))
    assert path.is_file() and not partial_path(path).exists()


def test_partial_checkpoint_is_not_loaded_as_a_teacher(tmp_path: Path, tiny_ds: Dataset) -> None:
    partial = tmp_path / "t.pt.partial"

    def stop(state: dict[str, Any]) -> None:
        torch.save({"kind": teachers.PARTIAL_KIND, "format": teachers.PARTIAL_FORMAT, "state": state}, partial)
        raise Killed

    with pytest.raises(Killed):
        teachers.train_model(build_module(arch_for("lenet5", tiny_ds)), tiny_ds, load_recipe("smoke")[1],
                             on_epoch_end=stop)
    with pytest.raises(ValueError, match=re.escape(f"{partial} is not a netcomp teacher checkpoint: ") + ".*partial"):
        load_teacher(partial)


# ---------------------------------------------------------------------------------------------- unwritable cache
def test_unwritable_cache_fails_before_training(tmp_path: Path, tiny_ds: Dataset,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder under a regular file can never be created, even by root (chmod would not stop root).
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    home = blocker / "sub"
    forbid_training(monkeypatch)
    with pytest.raises(CacheNotWritableError) as err:
        get_teacher("lenet5", tiny_ds, recipe="smoke", home=home, progress=False)
    message = str(err.value)
    assert str(home / "teachers") in message and "NETCOMP_HOME" in message and "home=" in message
    assert isinstance(err.value, OSError)

    monkeypatch.setenv("NETCOMP_HOME", str(home))  # the same through the environment variable
    with pytest.raises(CacheNotWritableError, match=re.escape(str(home / "teachers"))):
        get_teacher("lenet5", tiny_ds, recipe="smoke", progress=False)


def test_teacher_file_is_fsynced_before_it_is_renamed_into_place(tmp_path: Path, syn_teacher: Teacher,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    path = tmp_path / "t.pt"
    save_teacher(syn_teacher, path)
    assert events[:2] == ["fsync", "replace"]
    assert same_state(state_of(load_teacher(path).model), state_of(syn_teacher.model))
