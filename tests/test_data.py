"""Tests for netcomp.data: real file formats (written here into tmp_path), splits, synthetic, DeviceLoader."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from netcomp import data
from netcomp.data import DATASETS, Dataset, DeviceLoader, Split, data_root, load_dataset, make_synthetic

# ---------------------------------------------------------------------------------------------------------
# Writers for the real on-disk formats
# ---------------------------------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


Arrays4 = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _write_cifar10(root: Path, n_per_batch: int, n_test: int) -> Arrays4:
    """Write cifar-10-batches-py with 5 training batches; returns (x_train, y_train, x_test, y_test) NCHW."""
    rng = _rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        y = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "data": x, "labels": y}, f)
        xs.append(x)
        ys += y
    x_test = rng.integers(0, 256, (n_test, 3 * 32 * 32), dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": x_test, "labels": y_test}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    x_train = np.concatenate(xs).reshape(-1, 3, 32, 32)
    return x_train, np.array(ys), x_test.reshape(-1, 3, 32, 32), np.array(y_test)


def _write_cifar100(root: Path, n_train: int, n_test: int) -> Arrays4:
    rng = _rng(2)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = []
    for fname, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = [c // 5 for c in fine]
        with open(folder / fname, "wb") as f:
            pickle.dump({"filenames": [f"{i}.png" for i in range(n)], "fine_labels": fine,
                         "coarse_labels": coarse, "data": x}, f)
        out += [x.reshape(-1, 3, 32, 32), np.array(fine)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return out[0], out[1], out[2], out[3]


def _idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX (big-endian) encoding of a uint8 array."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_mnist_like(raw: Path, n_train: int, n_test: int, gz: bool = False, seed: int = 3) -> Arrays4:
    """Write the four IDX files into ``raw``; returns x_train, y_train, x_test, y_test."""
    rng = _rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        if gz:
            with gzip.open(raw / (name + ".gz"), "wb") as f:
                f.write(_idx_bytes(arr))
        else:
            (raw / name).write_bytes(_idx_bytes(arr))
    xtr, ytr, xte, yte = arrays.values()
    return xtr, ytr, xte, yte


def _assert_splits(ds: Dataset, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray, val_size: int) -> None:
    """Loaded tensors equal what was written; val = last val_size training examples; train + val = all."""
    cut = len(y_train) - val_size
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
    assert len(ds.val) == val_size and len(ds.train) == cut
    assert torch.equal(ds.train.x, torch.from_numpy(x_train[:cut]))
    assert torch.equal(ds.val.x, torch.from_numpy(x_train[cut:]))
    assert torch.equal(ds.train.y, torch.from_numpy(y_train[:cut]).long())
    assert torch.equal(ds.val.y, torch.from_numpy(y_train[cut:]).long())
    assert torch.equal(torch.cat([ds.train.x, ds.val.x]), torch.from_numpy(x_train))
    assert torch.equal(torch.cat([ds.train.y, ds.val.y]), torch.from_numpy(y_train).long())
    assert torch.equal(ds.test.x, torch.from_numpy(x_test))
    assert torch.equal(ds.test.y, torch.from_numpy(y_test).long())


# ---------------------------------------------------------------------------------------------------------
# Real formats
# ---------------------------------------------------------------------------------------------------------


def test_cifar10_python_batches(tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = _write_cifar10(tmp_path, n_per_batch=8, n_test=6)
    ds = load_dataset("cifar10", root=tmp_path, val_size=7)  # files' md5s differ from the official ones
    _assert_splits(ds, x_train, y_train, x_test, y_test, val_size=7)
    assert (ds.name, ds.num_classes, ds.channels, ds.image_size, ds.augment) == ("cifar10", 10, 3, 32, True)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    # Default val_size (5000) is capped so that train keeps an example.
    small = load_dataset("cifar10", root=str(tmp_path))
    assert len(small.train) == 1 and len(small.val) == len(y_train) - 1


def test_cifar100_python_pickles(tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = _write_cifar100(tmp_path, n_train=30, n_test=9)
    ds = load_dataset("cifar100", root=tmp_path, val_size=10)
    _assert_splits(ds, x_train, y_train, x_test, y_test, val_size=10)  # fine labels, not coarse
    assert ds.num_classes == 100 and ds.augment
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)


@pytest.mark.parametrize(
    ("name", "folder", "mean"), [("mnist", "MNIST", 0.1307), ("fashionmnist", "FashionMNIST", 0.2860)]
)
def test_mnist_like_idx_files(tmp_path: Path, name: str, folder: str, mean: float) -> None:
    x_train, y_train, x_test, y_test = _write_mnist_like(tmp_path / folder / "raw", n_train=40, n_test=12)
    ds = load_dataset(name, root=tmp_path, val_size=15)
    _assert_splits(ds, x_train[:, None], y_train, x_test[:, None], y_test, val_size=15)
    assert (ds.num_classes, ds.channels, ds.image_size, ds.augment) == (10, 1, 28, False)
    assert ds.mean == (mean,)


def test_mnist_default_val_size_is_5000(tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = _write_mnist_like(tmp_path / "MNIST" / "raw", n_train=5100, n_test=5)
    ds = load_dataset("mnist", root=tmp_path)
    _assert_splits(ds, x_train[:, None], y_train, x_test[:, None], y_test, val_size=5000)


def test_mnist_gz_files_in_raw_are_read_in_place(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    x_train, y_train, x_test, y_test = _write_mnist_like(raw, n_train=20, n_test=4, gz=True)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    ds = load_dataset("mnist", root=tmp_path, val_size=5)
    _assert_splits(ds, x_train[:, None], y_train, x_test[:, None], y_test, val_size=5)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing unpacked beside the .gz files


def test_a_corrupt_gz_idx_file_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    _write_mnist_like(raw, n_train=20, n_test=4, gz=True)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(4))  # the header says 9 labels, 4 follow
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: 4 data bytes, the header says 9"):
        load_dataset("mnist", root=tmp_path)


def test_svhn_mat_files(tmp_path: Path) -> None:
    sio = pytest.importorskip("scipy.io", reason="scipy is needed to write (and to read) SVHN .mat files")
    rng = _rng(4)
    folder = tmp_path / "svhn"
    folder.mkdir()
    written = []
    for fname, n in (("train_32x32.mat", 25), ("test_32x32.mat", 7)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's (H, W, C, N) layout
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, where 10 means digit 0
        y[0, 0] = 10
        sio.savemat(folder / fname, {"X": x, "y": y})
        labels = np.where(y[:, 0] == 10, 0, y[:, 0]).astype(np.int64)
        written += [np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels]  # -> (N, C, H, W)
    ds = load_dataset("svhn", root=tmp_path, val_size=6)
    _assert_splits(ds, *written, val_size=6)
    assert int(ds.train.y[0]) == 0 and int(ds.train.y.max()) <= 9
    assert (ds.num_classes, ds.channels, ds.augment) == (10, 3, False)
    # The .mat files directly in root are found too.
    for f in folder.iterdir():
        f.rename(tmp_path / f.name)
    assert torch.equal(load_dataset("svhn", root=tmp_path, val_size=6).val.x, ds.val.x)


def _read_gz_idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_SYSTEM_DIR),
                    reason=f"{data.FASHION_MNIST_SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)")
def test_fashionmnist_from_system_dir(tmp_path: Path) -> None:
    ds = load_dataset("fashionmnist", root=tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert ds.train.x.shape[1:] == (1, 28, 28) and ds.num_classes == 10
    assert set(ds.train.y.unique().tolist()) == set(range(10))
    # The system files were read where they lie (nothing written into root) and the pixels are theirs.
    assert list(tmp_path.iterdir()) == []
    labels = _read_gz_idx(os.path.join(data.FASHION_MNIST_SYSTEM_DIR, "train-labels-idx1-ubyte.gz"), 8)
    assert torch.equal(torch.cat([ds.train.y, ds.val.y]), torch.from_numpy(labels.astype(np.int64)))
    images = _read_gz_idx(os.path.join(data.FASHION_MNIST_SYSTEM_DIR, "t10k-images-idx3-ubyte.gz"), 16)
    assert torch.equal(ds.test.x, torch.from_numpy(images.reshape(-1, 1, 28, 28).copy()))


def test_fashionmnist_system_files_load_with_an_unwritable_root(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system"
    x_train, y_train, x_test, y_test = _write_mnist_like(system, n_train=12, n_test=3, gz=True, seed=9)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(system))
    monkeypatch.setenv("NETCOMP_DATA", str(tmp_path / "fallback"))
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file, so nothing can be created below it")
    ds = load_dataset("fashionmnist", root=blocker / "data", val_size=2)
    _assert_splits(ds, x_train[:, None], y_train, x_test[:, None], y_test, val_size=2)
    assert not (tmp_path / "fallback").exists() and sorted(p.name for p in system.iterdir()) == sorted(
        f"{name}.gz" for name in data._IDX_FILES)  # read in place: nothing written anywhere


def test_missing_dataset_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "download=True" in str(err.value)

    with pytest.raises(FileNotFoundError) as err:
        load_dataset("svhn", root=tmp_path)
    assert str(tmp_path / "svhn") in str(err.value) and "train_32x32.mat" in str(err.value)

    nowhere = tmp_path / "no-system-copy"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(nowhere))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashionmnist", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and str(nowhere) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg

    # A partial copy (test batch missing) is also reported as missing.
    _write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError):
        load_dataset("cifar10", root=tmp_path)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(err.value)


def test_bad_arguments(tmp_path: Path) -> None:
    _write_mnist_like(tmp_path / "MNIST" / "raw", n_train=10, n_test=2)
    with pytest.raises(ValueError):
        load_dataset("mnist", root=tmp_path, val_size=10)  # would leave train empty
    with pytest.raises(TypeError):
        load_dataset("mnist", root=tmp_path, image_size=16)  # synthetic-only option
    assert load_dataset("MNIST", root=tmp_path, val_size=0).name == "mnist"


def test_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETCOMP_DATA", str(tmp_path))
    assert data_root() == str(tmp_path)
    monkeypatch.delenv("NETCOMP_DATA")
    monkeypatch.setenv("NETCOMP_HOME", str(tmp_path / "home"))  # the home moves the data too
    assert data_root() == str(tmp_path / "home" / "data")
    monkeypatch.delenv("NETCOMP_HOME")
    assert data_root() == os.path.join(os.path.expanduser("~"), ".cache", "netcomp", "data")


# ---------------------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_constants() -> None:
    ds = load_dataset("synthetic")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (2000, 500, 500)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.shape[1:] == (3, 32, 32)
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert set(split.y.tolist()) == set(range(10))
    assert (ds.num_classes, ds.channels, ds.image_size, ds.augment) == (10, 3, 32, False)
    pixels = ds.train.x.double() / 255
    assert np.allclose(ds.mean, pixels.mean(dim=(0, 2, 3)).numpy())
    assert np.allclose(ds.std, pixels.std(dim=(0, 2, 3)).numpy())

    small = load_dataset("synthetic", val_size=30, num_classes=4, channels=1, image_size=12, train_size=50,
                         test_size=20)
    assert small.train.x.shape == (50, 1, 12, 12) and len(small.val) == 30 and len(small.test) == 20
    assert set(small.train.y.tolist()) == set(range(4)) and small.num_classes == 4


def test_synthetic_reproducible_and_seed_dependent() -> None:
    kw = {"train_size": 300, "val_size": 100, "test_size": 100}
    a, b = make_synthetic(seed=3, **kw), load_dataset("synthetic", seed=3, **kw)
    c = make_synthetic(seed=4, **kw)
    for name in ("train", "val", "test"):
        sa, sb, sc = getattr(a, name), getattr(b, name), getattr(c, name)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
        assert not torch.equal(sa.x, sc.x)
    assert a.mean == b.mean and a.mean != c.mean


def test_synthetic_splits_disjoint() -> None:
    ds = make_synthetic(seed=0)
    rows = [{bytes(img.numpy().tobytes()) for img in split.x} for split in (ds.train, ds.val, ds.test)]
    assert len(rows[0]) == len(ds.train) and len(rows[1]) == len(ds.val) and len(rows[2]) == len(ds.test)
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]


def test_synthetic_is_learnable_by_a_small_cnn() -> None:
    torch.manual_seed(0)
    ds = make_synthetic(seed=1, image_size=16, train_size=1000, val_size=500, test_size=0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = DeviceLoader(ds.train, 50, ds.mean, ds.std, shuffle=True, drop_last=True)
    for _ in range(8):  # 160 steps
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        xv, yv = next(iter(DeviceLoader(ds.val, len(ds.val), ds.mean, ds.std)))
        acc = (net(xv).argmax(1) == yv).float().mean().item()
    assert acc > 0.4, f"val accuracy {acc:.3f} is not well above chance (0.1)"


# ---------------------------------------------------------------------------------------------------------
# Split / Dataset helpers
# ---------------------------------------------------------------------------------------------------------


def test_split_and_dataset_helpers() -> None:
    ds = make_synthetic(train_size=40, val_size=20, test_size=10)
    head = ds.train.take(7)
    assert len(head) == 7 and torch.equal(head.x, ds.train.x[:7]) and torch.equal(head.y, ds.train.y[:7])
    assert len(ds.train.take(1000)) == 40
    small = ds.shrink(train=5, test=3)
    assert (len(small.train), len(small.val), len(small.test)) == (5, 20, 3)
    assert torch.equal(small.test.x, ds.test.x[:3]) and small.mean == ds.mean
    moved = ds.to("cpu")
    assert moved.train.x.device.type == "cpu" and torch.equal(moved.val.y, ds.val.y)
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------------
# DeviceLoader
# ---------------------------------------------------------------------------------------------------------


def _indexed_split(n: int = 37, c: int = 3, h: int = 8, w: int = 8) -> Split:
    """Random images with values 1..255 (so zero padding is recognisable); label i = example index i."""
    gen = torch.Generator().manual_seed(5)
    return Split(torch.randint(1, 256, (n, c, h, w), generator=gen, dtype=torch.uint8), torch.arange(n))


def _epoch(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_loader_normalisation_is_exact() -> None:
    split = _indexed_split()
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    x, y = _epoch(DeviceLoader(split, 10, mean, std))
    expected = split.x.float() / 255
    for ch in range(3):
        expected[:, ch] = (expected[:, ch] - mean[ch]) / std[ch]
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(y, split.y)  # no shuffle: original order


def test_loader_shuffle_covers_split_once_and_is_seeded() -> None:
    split = _indexed_split()
    mean, std = (0.0,) * 3, (1.0,) * 3
    loader = DeviceLoader(split, 8, mean, std, shuffle=True, seed=1)
    epochs = [_epoch(loader) for _ in range(3)]
    for x, y in epochs:
        assert torch.equal(y.sort().values, split.y)  # every example exactly once
        assert torch.equal((x * 255).round().to(torch.uint8), split.x[y])  # images travel with labels
    assert not torch.equal(epochs[0][1], split.y)  # actually shuffled
    assert not torch.equal(epochs[0][1], epochs[1][1])  # a new order each epoch

    again = DeviceLoader(split, 8, mean, std, shuffle=True, seed=1)
    assert all(torch.equal(_epoch(again)[1], e[1]) for e in epochs)  # same seed -> same batches
    other = DeviceLoader(split, 8, mean, std, shuffle=True, seed=2)
    assert not torch.equal(_epoch(other)[1], epochs[0][1])
    jump = DeviceLoader(split, 8, mean, std, shuffle=True, seed=1)
    jump.set_epoch(2)
    assert torch.equal(_epoch(jump)[1], epochs[2][1])  # epoch 2 reproducible on its own


def test_loader_len_and_drop_last() -> None:
    split = _indexed_split(n=10)
    for drop_last, sizes in ((False, [4, 4, 2]), (True, [4, 4])):
        loader = DeviceLoader(split, 4, (0.5,), (0.5,), shuffle=True, drop_last=drop_last)
        assert len(loader) == len(sizes)
        assert [len(yb) for _, yb in loader] == sizes
    assert len(DeviceLoader(split, 5, (0.5,), (0.5,), drop_last=True)) == 2
    assert len(DeviceLoader(split, 20, (0.5,), (0.5,), drop_last=True)) == 0


@pytest.mark.parametrize("pad", [4, 0])
def test_loader_augmentation_gives_true_crops_and_flips(pad: int) -> None:
    split = _indexed_split(n=300)
    # mean 0, std 1: outputs are x / 255, so the uint8 pixels can be recovered exactly.
    loader = DeviceLoader(split, 64, (0.0,) * 3, (1.0,) * 3, shuffle=True, augment=True, crop_padding=pad,
                          seed=3)
    x, y = _epoch(loader)
    out = (x * 255).round().to(torch.uint8)
    src = split.x[y]
    padded = F.pad(src, (pad, pad, pad, pad))
    found = torch.full((len(y),), -1)
    size = 2 * pad + 1
    for dy in range(size):
        for dx in range(size):
            crop = padded[:, :, dy:dy + 8, dx:dx + 8]
            for flip in (0, 1):
                cand = crop.flip(3) if flip else crop
                hit = (cand == out).flatten(1).all(1)
                found[hit] = (dy * size + dx) * 2 + flip
    assert (found >= 0).all(), "some augmented images are not a crop/flip of their source"
    flipped = (found % 2 == 1).float().mean().item()
    assert 0.3 < flipped < 0.7
    offsets = (found // 2).unique()
    assert len(offsets) > 60 if pad else offsets.tolist() == [0]  # 300 draws from 81 offsets hit most of them
    x2, _ = _epoch(loader)
    assert not torch.equal(x, x2)  # new augmentation next epoch


def test_loader_channels_last_and_dtype() -> None:
    split = _indexed_split(n=20)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.2, 0.2)
    base, _ = _epoch(DeviceLoader(split, 6, mean, std))
    cl = list(DeviceLoader(split, 6, mean, std, channels_last=True))
    assert all(xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous() for xb, _ in cl)
    assert torch.equal(torch.cat([xb for xb, _ in cl]), base)
    half, _ = _epoch(DeviceLoader(split, 6, mean, std, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), base, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu() -> None:
    split = _indexed_split(n=50)
    kw = {"batch_size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3, "shuffle": True, "augment": True,
          "seed": 7}
    cpu_x, cpu_y = _epoch(DeviceLoader(split, **kw))
    gpu_x, gpu_y = _epoch(DeviceLoader(split.to("cuda"), **kw))
    assert gpu_x.is_cuda and gpu_y.is_cuda
    assert torch.equal(gpu_y.cpu(), cpu_y)
    torch.testing.assert_close(gpu_x.cpu(), cpu_x)
