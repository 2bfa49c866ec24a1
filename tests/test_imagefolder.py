"""Your own images: class folders of PNGs (written here) load as tensors with fixed splits, options and a
fingerprint, and bad folders are user errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from netcomp.data import load_dataset
from netcomp.errors import UserError
from netcomp.teachers import data_fingerprint


def write_folder(root: Path, counts: dict[str, int], classes=("ant", "bee", "cat"), seed: int = 0) -> None:
    """PNG class folders under ``root/<split>/<class>/``: ``counts[split]`` images per class, each class a
    different brightness, sizes that vary (so resizing and cropping are exercised)."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (18 + i % 3, 24, 3)) + 90 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{split}{i}.png")


def test_class_folders_load_as_uint8_tensors_with_every_split(tmp_path):
    write_folder(tmp_path, {"train": 6, "val": 2, "test": 3})
    ds = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert (ds.name, ds.num_classes, ds.channels, ds.image_size) == ("imagefolder", 3, 3, 16)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 9)
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape == (18, 3, 16, 16)
    assert sorted(ds.test.y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.train.y[:6].unique().numel() > 1          # shuffled: a first-n subset holds several classes
    for label in range(3):  # class c is brighter by 90 per channel: labels follow the sorted folder names
        mean = ds.train.x[ds.train.y == label].float().mean()
        assert 90 * label + 20 < mean < 90 * label + 40
    pixels = ds.train.x.double() / 255
    assert np.allclose(ds.mean, pixels.mean(dim=(0, 2, 3)).tolist())  # normalisation from the training images


def test_missing_val_and_test_are_carved_from_train_with_a_fixed_seed(tmp_path):
    write_folder(tmp_path, {"train": 10})
    a = load_dataset("imagefolder", root=tmp_path, image_size=8)
    b = load_dataset("imagefolder", root=tmp_path, image_size=8)
    c = load_dataset("imagefolder", root=tmp_path, image_size=8, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (24, 3, 3)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.val.x, c.val.x)
    assert data_fingerprint(a) == data_fingerprint(b) != data_fingerprint(c)
    d = load_dataset("imagefolder", root=tmp_path, image_size=8, val_fraction=0.2, test_fraction=0.3)
    assert (len(d.train), len(d.val), len(d.test)) == (15, 6, 9)


def test_options_size_channels_normalisation_and_augment(tmp_path):
    write_folder(tmp_path, {"train": 4, "test": 1}, classes=("a", "b"))
    ds = load_dataset("imagefolder", root=tmp_path, image_size=12, channels=1, mean="0.5", std=[0.25],
                      augment=False)
    assert ds.train.x.shape[1:] == (1, 12, 12) and ds.mean == (0.5,) and ds.std == (0.25,) and not ds.augment
    rgb = load_dataset("imagefolder", root=tmp_path, image_size=12, mean="0.485,0.456,0.406", std=0.2)
    assert rgb.mean == (0.485, 0.456, 0.406) and rgb.std == (0.2, 0.2, 0.2) and rgb.augment


def test_the_fingerprint_changes_with_the_images(tmp_path):
    write_folder(tmp_path, {"train": 4, "test": 1}, classes=("a", "b"))
    before = data_fingerprint(load_dataset("imagefolder", root=tmp_path, image_size=8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a" / "train0.png")
    assert data_fingerprint(load_dataset("imagefolder", root=tmp_path, image_size=8)) != before


@pytest.mark.parametrize("break_it, pattern", [
    (lambda root: None, "needs its folder: --data-root DIR"),
    (lambda root: (root / "train").mkdir(parents=True), "is not an image folder"),
    (lambda root: write_folder(root, {"train": 3}, classes=("only",)), "at least 2"),
    (lambda root: (write_folder(root, {"train": 3, "val": 1}, classes=("a", "b")),
                   write_folder(root, {"val": 1}, classes=("zebra",))), r"classes \['zebra'\]"),
    (lambda root: (write_folder(root, {"train": 3}, classes=("a", "b")),
                   (root / "train" / "a" / "broken.png").write_text("no image")), "not an image PIL can read"),
    (lambda root: write_folder(root, {"train": 1}, classes=("a", "b")), "too few to carve"),
])
def test_bad_folders_are_user_errors(tmp_path, break_it, pattern):
    root = tmp_path / "data"
    break_it(root)
    with pytest.raises(UserError, match=pattern):
        load_dataset("imagefolder", root=root if root.exists() else None, image_size=8)


def test_bad_options_are_user_errors(tmp_path):
    write_folder(tmp_path, {"train": 4}, classes=("a", "b"))
    for kwargs, pattern in (({"image_size": 2}, "image_size"), ({"channels": 2}, "channels"), ({"std": "1,0,1"}, "std"),
                            ({"mean": "x"}, "mean"), ({"val_fraction": 1.5}, "val_fraction")):
        with pytest.raises(UserError, match=pattern):
            load_dataset("imagefolder", root=tmp_path, **kwargs)
