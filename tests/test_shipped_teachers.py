"""The teachers shipped in teachers/: checksummed, described by their metadata, used by default, reproducible.

The quickstart and the benchmarks stand on these files, so a test checks each one against its manifest
(SHA-256, metadata) and, where Debian's Fashion-MNIST is installed, re-measures its test accuracy.
"""

from __future__ import annotations

import json
import os

import pytest

from netcomp.data import FASHION_MNIST_SYSTEM_DIR, load_dataset
from netcomp.distill import evaluate
from netcomp.teachers import (
    SHIPPED_DIR,
    file_sha256,
    load_teacher,
    read_manifest,
    ship_teacher,
    shipped_teacher,
    train_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion_mnist = pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_SYSTEM_DIR),
                                         reason=f"{FASHION_MNIST_SYSTEM_DIR} missing")
#: the shipped teachers and the recipe each was trained with (configs/teachers.yaml)
SHIPPED = {"resnet20-fashionmnist.pt": "ship", "lenet5-fashionmnist.pt": "ship",
           "lenet5caffe-fashionmnist.pt": "gpu-fast"}


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", image_size=16, train_size=256, val_size=64, test_size=64, seed=1)


def test_every_shipped_teacher_matches_its_manifest_and_loads_weights_only():
    manifest = read_manifest()
    assert set(SHIPPED) <= set(manifest)
    for name in SHIPPED:
        entry, path = manifest[name], SHIPPED_DIR / name
        assert file_sha256(path) == entry["sha256"]
        teacher = load_teacher(path)  # torch.load(weights_only=True) inside
        for key in ("arch", "dataset", "recipe", "seed", "data_fingerprint", "test_accuracy", "val_accuracy"):
            assert teacher.meta[key] == entry[key], key
        assert entry["recipe"] == SHIPPED[name] and entry["dataset"] == "fashionmnist"
    assert manifest["resnet20-fashionmnist.pt"]["test_accuracy"] >= 0.92


@needs_fashion_mnist
def test_the_shipped_teachers_test_accuracy_is_what_the_manifest_says():
    data = load_dataset("fashionmnist")
    for name in SHIPPED:
        teacher = shipped_teacher(name.split("-")[0], data)
        assert teacher is not None and teacher.path == SHIPPED_DIR / name
        accuracy, _ = evaluate(teacher.model, data.test, data)
        assert accuracy == pytest.approx(read_manifest()[name]["test_accuracy"], abs=1e-9)
    resnet = shipped_teacher("resnet20", data)
    assert evaluate(resnet.model, data.test, data)[0] >= 0.92


@needs_fashion_mnist
def test_a_fashion_mnist_env_uses_the_shipped_teacher_by_default_and_a_file_or_the_recipe_on_request(monkeypatch):
    import gymnasium as gym

    import envs
    import envs.base

    env = gym.make("netcomp/removal-lenet5-fashionmnist-v0", fidelity="smoke", disable_env_checker=True)
    assert env.unwrapped.teacher.path == SHIPPED_DIR / "lenet5-fashionmnist.pt"
    env = gym.make("netcomp/removal-lenet5-fashionmnist-v0", fidelity="smoke", disable_env_checker=True,
                   teacher=str(SHIPPED_DIR / "lenet5-fashionmnist.pt"))
    assert env.unwrapped.teacher.meta["recipe"] == "ship"
    asked = []

    def recipe_teacher(arch, dataset, recipe, seed, home, device):  # the env's device: a GPU trains its teacher
        asked.append((arch, recipe, seed, str(device)))
        return envs.base._shipped(arch, dataset)  # stands in for a trained one: only the call is checked

    monkeypatch.setattr(envs.base, "_cached_teacher", recipe_teacher)
    gym.make("netcomp/removal-lenet5-fashionmnist-v0", fidelity="smoke", disable_env_checker=True, teacher="recipe")
    gym.make("netcomp/removal-lenet5-fashionmnist-v0", fidelity="smoke", disable_env_checker=True, teacher_seed=1)
    here = envs.base.default_device()
    assert asked == [("lenet5", "smoke", 0, here), ("lenet5", "smoke", 1, here)]  # another seed: not the shipped one
    assert envs  # registered the ids


def test_ship_writes_the_file_and_its_checksum_and_a_changed_byte_is_refused(tmp_path, tiny):
    teacher = train_teacher("lenet5", tiny, recipe="smoke", seed=0, progress=False)
    path = ship_teacher(teacher, tmp_path)
    entry = read_manifest(tmp_path)[path.name]
    assert entry["sha256"] == file_sha256(path) and entry["test_accuracy"] == teacher.meta["test_accuracy"]
    loaded = shipped_teacher("lenet5", tiny, folder=tmp_path)
    assert loaded is not None and loaded.meta == teacher.meta
    other = load_dataset("synthetic", image_size=16, train_size=256, val_size=64, test_size=64, seed=2)
    assert shipped_teacher("lenet5", other, folder=tmp_path) is None  # trained on other data: not this one's
    assert shipped_teacher("resnet20", tiny, folder=tmp_path) is None
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="SHA-256"):
        shipped_teacher("lenet5", tiny, folder=tmp_path)


def test_the_train_teacher_command_ships_a_teacher(tmp_path):
    from netcomp.__main__ import main

    code = main(["train-teacher", "lenet5", "--dataset", "synthetic", "--recipe", "smoke", "--threads", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["lenet5-synthetic.pt"]
    assert entry["recipe"] == "smoke" and entry["sha256"] == file_sha256(tmp_path / "lenet5-synthetic.pt")
    assert not list(tmp_path.glob("*.partial")), "the per-epoch checkpoint is removed once the teacher is shipped"
