"""Datasets as uint8 tensors with fixed splits, and a batch loader that works on the training device.

Why this shape: compression episodes train and evaluate many small networks, so per-image Python work
(PIL transforms, DataLoader workers) would dominate. Instead every dataset is held as one ``uint8`` tensor
``(N, C, H, W)`` per split, moved once to the device where training runs, and :class:`DeviceLoader` builds
whole batches there: index with a permutation, random-crop and flip the batch at once, normalise.

Splits (deterministic, no randomness):

- ``train``: the official training set minus its last ``val_size`` examples;
- ``val``: the last ``val_size`` examples of the official training set (ESNAC's convention: the last 5,000
  CIFAR training images). Rewards are measured here;
- ``test``: the official test set, for final reports only.

Real datasets are read by torchvision's dataset classes, so the real file formats are parsed by torchvision.
With ``download=True`` torchvision downloads (and checksums) the files; without it a local folder is read
and only the presence of the files is checked, so users' own copies and small test files load too.
Fashion-MNIST can also come from the Debian package ``dataset-fashion-mnist``
(:data:`FASHION_MNIST_SYSTEM_DIR`). Gzipped MNIST and Fashion-MNIST IDX files (in ``raw/`` or that folder) are
read where they lie, in memory: nothing is unpacked beside them, so a carried or read-only folder stays as it
is. ``synthetic`` is a small generated set that needs no files at all.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "synthetic", "imagefolder")

#: Where Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

#: Default number of validation examples carved from the end of a real training set.
DEFAULT_VAL_SIZE = 5000

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# name -> (num_classes, channels, image_size, mean, std, augment) for the real datasets.
_REAL_INFO: dict[str, tuple[int, int, int, tuple[float, ...], tuple[float, ...], bool]] = {
    "cifar10": (10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": (100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "mnist": (10, 1, 28, (0.1307,), (0.3081,), False),
    "fashionmnist": (10, 1, 28, (0.2860,), (0.3530,), False),
    "svhn": (10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
}

_SYNTHETIC_DEFAULTS: dict[str, int] = {
    "num_classes": 10,
    "channels": 3,
    "image_size": 32,
    "train_size": 2000,
    "val_size": 500,
    "test_size": 500,
}


def dataset_shape(name: str) -> tuple[int, int, int]:
    """(channels, image size, classes) of a dataset without loading it (synthetic: its defaults)."""
    key = _canonical_name(name)
    if key == "synthetic":
        d = _SYNTHETIC_DEFAULTS
        return d["channels"], d["image_size"], d["num_classes"]
    if key == "imagefolder":
        from netcomp.errors import UserError

        raise UserError("an image folder's shape (channels, size, classes) is known only once it is read: "
                        "load_dataset('imagefolder', root=DIR)")
    classes, channels, size, *_ = _REAL_INFO[key]
    return channels, size, classes


# ---------------------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a dataset: ``x`` uint8 images ``(N, C, H, W)`` and ``y`` int64 labels ``(N,)``.

    Kept as raw uint8 (4x smaller than float) so a whole dataset fits on the training device; the
    :class:`DeviceLoader` converts and normalises batch by batch.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ValueError(f"Split.x must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"Split.y must be (N,) with N = {self.x.shape[0]}, got shape {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """The same split with both tensors on ``device`` (no copy if already there)."""
        return Split(self.x.to(device), self.y.to(device))

    def take(self, n: int) -> Split:
        """The first ``n`` examples (all of them if ``n >= len(self)``), e.g. for smoke or fast runs."""
        if n < 0:
            raise ValueError(f"take(n) needs n >= 0, got {n}")
        return Split(self.x[:n], self.y[:n])


@dataclass
class Dataset:
    """A dataset with its fixed train/val/test splits and the constants needed to feed it to a network.

    ``mean``/``std`` are per-channel, in [0, 1] pixel units (the loader divides by 255 first). ``augment``
    says whether training batches get random crop (pad 4) + horizontal flip by default.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with every split on ``device``."""
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def shrink(self, train: int | None = None, val: int | None = None, test: int | None = None) -> Dataset:
        """First-n subsets of the splits (``None`` keeps a split whole); for fast runs and smoke tests."""
        return replace(
            self,
            train=self.train if train is None else self.train.take(train),
            val=self.val if val is None else self.val.take(val),
            test=self.test if test is None else self.test.take(test),
        )


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def data_root() -> str:
    """Default data folder: ``$NETCOMP_DATA`` if set, else ``$NETCOMP_HOME/data`` (so moving the home moves
    downloads too), else ``~/.cache/netcomp/data`` (not created here)."""
    env = os.environ.get("NETCOMP_DATA")
    if env:
        return os.path.expanduser(env)
    home = os.environ.get("NETCOMP_HOME")
    if home:
        return os.path.join(os.path.expanduser(home), "data")
    return os.path.join(os.path.expanduser("~"), ".cache", "netcomp", "data")


def _canonical_name(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
    return key


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    seed: int = 0,
    **synthetic_kwargs: int,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) with its fixed train/val/test splits, on the CPU.

    ``root`` defaults to :func:`data_root`. With ``download=True`` torchvision downloads missing files into
    ``root``; otherwise the files must already be there (or, for Fashion-MNIST, in
    :data:`FASHION_MNIST_SYSTEM_DIR`) and :class:`FileNotFoundError` says where it looked and how to get them.

    ``val_size`` is the number of examples taken from the END of the official training set as the
    validation split (default 5000, capped so that train keeps at least one example; for ``synthetic`` the
    default is 500). ``seed`` and ``synthetic_kwargs`` (``num_classes``, ``channels``, ``image_size``,
    ``train_size``, ``test_size``) only affect ``synthetic``; real splits involve no randomness.
    ``imagefolder`` reads your own class folders under ``root`` (:func:`netcomp.imagefolder.load_image_folder`,
    whose options ``image_size``, ``channels``, ``mean``, ``std``, ``val_fraction``, ``test_fraction``,
    ``augment`` and ``seed`` it takes).
    """
    key = _canonical_name(name)
    if key == "imagefolder":
        from netcomp.imagefolder import load_image_folder

        if val_size is not None:
            raise TypeError("imagefolder takes val_fraction (or a val/ folder), not val_size")
        return load_image_folder(root, seed=seed, **synthetic_kwargs)
    if key == "synthetic":
        if val_size is not None:
            synthetic_kwargs = {**synthetic_kwargs, "val_size": val_size}
        return make_synthetic(seed=seed, **synthetic_kwargs)
    if synthetic_kwargs:
        raise TypeError(f"unexpected arguments for dataset {key!r}: {sorted(synthetic_kwargs)}")

    root_str = os.fspath(root) if root is not None else data_root()
    (x_train, y_train), (x_test, y_test) = _load_real(key, root_str, download)

    n = len(y_train)
    if val_size is None:
        val_size = min(DEFAULT_VAL_SIZE, max(n - 1, 0))
    elif not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {key!r} ({n} training examples), got {val_size}")
    cut = n - val_size
    num_classes, channels, image_size, mean, std, augment = _REAL_INFO[key]
    return Dataset(
        name=key,
        num_classes=num_classes,
        channels=channels,
        image_size=image_size,
        mean=mean,
        std=std,
        augment=augment,
        train=Split(x_train[:cut], y_train[:cut]),
        val=Split(x_train[cut:], y_train[cut:]),
        test=Split(x_test, y_test),
    )


_TensorPair = tuple[torch.Tensor, torch.Tensor]


def _load_real(key: str, root: str, download: bool) -> tuple[_TensorPair, _TensorPair]:
    """Read the official train and test sets of a real dataset as (uint8 NCHW, int64) tensor pairs."""
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, root, download)
    if key in ("mnist", "fashionmnist"):
        return _load_mnist_like(key, root, download)
    return _load_svhn(root, download)


def _missing(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not os.path.isfile(p)]


def _not_found(
    key: str, looked: Sequence[str], layout: str, extra: str = "", cause: str = ""
) -> FileNotFoundError:
    """The error for a dataset that is not on disk: where we looked and how to get it."""
    lines = [f"dataset {key!r} not found."]
    if cause:
        lines.append(f"Download failed: {cause}")
    lines.append("Looked in:")
    lines += [f"  - {p}" for p in looked]
    lines.append("To get it:")
    lines.append(
        "  - on a machine with internet access, add --download to the command (Python: load_dataset(...,"
        " download=True)); torchvision downloads into the data root, or"
    )
    lines.append(f"  - put the files in this layout under the data root: {layout}")
    if extra:
        lines.append(f"  - {extra}")
    lines.append("The data root is --data-root DIR (Python: root=...), else $NETCOMP_DATA, else "
                 "$NETCOMP_HOME/data, else ~/.cache/netcomp/data.")
    return FileNotFoundError("\n".join(lines))


def _torchvision_datasets() -> types.ModuleType:
    """Import torchvision lazily: synthetic data and the loader must not need it."""
    from torchvision import datasets

    return datasets


def _cifar_classes(key: str) -> tuple[type, type]:
    """(strict torchvision class, lenient local-folder subclass that only checks that files exist)."""
    tvd = _torchvision_datasets()
    strict = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100

    class LocalCIFAR(strict):  # type: ignore[misc, valid-type]
        # md5 None: torchvision's check_integrity then only checks that the file exists.
        train_list = [[f, None] for f, _ in strict.train_list]
        test_list = [[f, None] for f, _ in strict.test_list]
        meta = {**strict.meta, "md5": None}

    return strict, LocalCIFAR


def _load_cifar(key: str, root: str, download: bool) -> tuple[_TensorPair, _TensorPair]:
    strict, local = _cifar_classes(key)
    folder = os.path.join(root, strict.base_folder)
    files = [f for f, _ in strict.train_list + strict.test_list] + [strict.meta["filename"]]
    paths = [os.path.join(folder, f) for f in files]
    cls = local
    if _missing(paths):
        layout = f"{strict.base_folder}/{{{', '.join(files)}}} (the extracted {strict.filename})"
        if not download:
            raise _not_found(key, [folder], layout)
        try:
            strict(root, train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise _not_found(key, [folder], layout, cause=str(err)) from err
        cls = strict

    def convert(ds: Any) -> _TensorPair:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    return convert(cls(root, train=True)), convert(cls(root, train=False))


def _mnist_class(key: str) -> type:
    tvd = _torchvision_datasets()
    return tvd.MNIST if key == "mnist" else tvd.FashionMNIST


def _mnist_ready(raw_dir: str, processed_dir: str) -> bool:
    """Whether torchvision's MNIST reader will find data: uncompressed raw IDX files or legacy .pt files."""
    raw_ok = not _missing([os.path.join(raw_dir, f) for f in _IDX_FILES])
    legacy_ok = not _missing([os.path.join(processed_dir, f) for f in ("training.pt", "test.pt")])
    return raw_ok or legacy_ok


def _read_idx_gz(path: str) -> np.ndarray:
    """One gzipped IDX file of unsigned bytes as an array of its shape, read in memory: nothing is written.

    IDX: two zero bytes, the type code (0x08: unsigned byte), the number of dimensions, then each dimension as
    a big-endian 32-bit integer, then the data.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not a gzipped IDX file of unsigned bytes")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(raw) < offset:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    if len(raw) - offset != math.prod(dims):
        raise ValueError(f"{path}: {len(raw) - offset} data bytes, the header says {math.prod(dims)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _read_mnist_gz(folder: str) -> tuple[_TensorPair, _TensorPair]:
    """The train and test pairs of the four gzipped IDX files in ``folder``, read where they lie."""

    def pair(prefix: str) -> _TensorPair:
        x = _read_idx_gz(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))
        y = _read_idx_gz(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{folder}: {prefix} images {x.shape} do not match labels {y.shape}")
        return torch.from_numpy(x).unsqueeze(1).contiguous(), torch.from_numpy(y).to(torch.int64)

    return pair("train"), pair("t10k")


def _has_gz(folder: str) -> bool:
    return not _missing([os.path.join(folder, f + ".gz") for f in _IDX_FILES])


def _load_mnist_like(key: str, root: str, download: bool) -> tuple[_TensorPair, _TensorPair]:
    class_name = "MNIST" if key == "mnist" else "FashionMNIST"  # torchvision's folder; imported only if needed
    raw_dir = os.path.join(root, class_name, "raw")
    processed_dir = os.path.join(root, class_name, "processed")
    looked = [raw_dir]

    if not _mnist_ready(raw_dir, processed_dir):
        # Sources that need no network, in order: .gz files already in raw/, then the Debian package.
        sources = [raw_dir]
        if key == "fashionmnist":
            sources.append(FASHION_MNIST_SYSTEM_DIR)
            looked.append(FASHION_MNIST_SYSTEM_DIR)
        src = next((s for s in sources if _has_gz(s)), None)
        if src is not None:
            # Read in place: a carried or read-only folder keeps its four .gz files and nothing else.
            return _read_mnist_gz(src)
        if not download:
            raise _mnist_not_found(key, class_name, looked)
        try:
            _mnist_class(key)(root, train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise _mnist_not_found(key, class_name, looked, cause=str(err)) from err
    cls = _mnist_class(key)

    def convert(ds: Any) -> _TensorPair:
        return ds.data.to(torch.uint8).unsqueeze(1).contiguous(), ds.targets.to(torch.int64)

    return convert(cls(root, train=True)), convert(cls(root, train=False))


def _mnist_not_found(key: str, class_name: str, looked: Sequence[str], cause: str = "") -> FileNotFoundError:
    layout = f"{class_name}/raw/{{{', '.join(_IDX_FILES)}}} (uncompressed IDX files, or the same names + .gz)"
    extra = ""
    if key == "fashionmnist":
        extra = (
            f"on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs {FASHION_MNIST_SYSTEM_DIR})"
        )
    return _not_found(key, looked, layout, extra=extra, cause=cause)


def _svhn_classes() -> tuple[type, type]:
    """(strict torchvision SVHN, lenient local-folder subclass that only checks that files exist)."""
    strict = _torchvision_datasets().SVHN

    class LocalSVHN(strict):  # type: ignore[misc, valid-type]
        split_list = {k: [url, fname, None] for k, (url, fname, _) in strict.split_list.items()}

    return strict, LocalSVHN


def _load_svhn(root: str, download: bool) -> tuple[_TensorPair, _TensorPair]:
    """SVHN .mat files live in ``<root>/svhn/`` (downloads go there) or directly in ``<root>/``."""
    strict, local = _svhn_classes()
    files = [strict.split_list[s][1] for s in ("train", "test")]
    candidates = [os.path.join(root, "svhn"), root]
    folder = next((c for c in candidates if not _missing([os.path.join(c, f) for f in files])), None)
    cls = local
    if folder is None:
        layout = f"svhn/{{{', '.join(files)}}} (the cropped-digits .mat files; directly in root also works)"
        if not download:
            raise _not_found("svhn", candidates, layout)
        folder = candidates[0]
        try:
            for split in ("train", "test"):
                strict(folder, split=split, download=True)
        except (OSError, RuntimeError) as err:
            raise _not_found("svhn", candidates, layout, cause=str(err)) from err
        cls = strict

    def load(split: str) -> _TensorPair:
        ds = cls(folder, split=split)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).to(torch.uint8)  # torchvision gives NCHW
        return x, torch.as_tensor(ds.labels, dtype=torch.int64)

    return load("train"), load("test")


# ---------------------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------------------


def _smooth_noise(n: int, channels: int, grid: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random low-frequency patterns ``(n, C, size, size)``, each with zero mean and unit std."""
    coarse = torch.randn(n, channels, grid, grid, generator=gen)
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    fine = fine - fine.mean(dim=(1, 2, 3), keepdim=True)
    return fine / fine.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _gather_crops(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Per-image crops ``out[i] = x[i, :, top[i]:top[i]+height, left[i]:left[i]+width]``, one indexing op.

    No Python loop over images: row and column index grids are built per image and gathered at once.
    """
    n, c = x.shape[:2]
    rows = (top.view(n, 1) + torch.arange(height, device=x.device)).view(n, 1, height, 1)
    cols = (left.view(n, 1) + torch.arange(width, device=x.device)).view(n, 1, 1, width)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return x[batch, chan, rows, cols]


def make_synthetic(
    seed: int = 0,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 32,
    train_size: int = 2000,
    val_size: int = 500,
    test_size: int = 500,
) -> Dataset:
    """A small, learnable but not trivial image classification set, generated deterministically from ``seed``.

    Each class has a random smooth (low-frequency) prototype pattern; classes share a common component, so
    they are not trivially separable. An image is its class prototype at a random contrast and a random
    shift of up to ``3 * image_size // 16`` pixels, plus a random smooth distractor pattern of its own
    (structured noise that does not average away), a random brightness and pixel noise, clipped to uint8.
    Labels are balanced within each split. Same seed -> identical tensors; a different seed gives different
    prototypes and images. At the defaults a linear classifier gets roughly 80% and a small CNN trained for a
    few hundred steps 60-80% validation accuracy (chance: 10%).
    """
    for arg, value in (("num_classes", num_classes), ("channels", channels), ("image_size", image_size)):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    for arg, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
        if value < 0:
            raise ValueError(f"{arg} must be >= 0, got {value}")

    gen = torch.Generator().manual_seed(int(seed))
    shift = max(1, 3 * image_size // 16)
    big = image_size + 2 * shift
    grid = max(2, 3 * image_size // 16)

    shared = _smooth_noise(1, channels, grid, big, gen)
    own = _smooth_noise(num_classes, channels, grid, big, gen)
    protos = 0.6 * shared + own
    protos = (protos - protos.mean(dim=(1, 2, 3), keepdim=True)) / protos.std(dim=(1, 2, 3), keepdim=True)

    def make(n: int) -> Split:
        if n == 0:
            empty = torch.empty(0, channels, image_size, image_size, dtype=torch.uint8)
            return Split(empty, torch.empty(0, dtype=torch.int64))
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen)
        signal = _gather_crops(protos[labels], offsets[:, 0], offsets[:, 1], image_size, image_size)
        contrast = torch.empty(n, 1, 1, 1).uniform_(0.5, 1.3, generator=gen)
        distract = _smooth_noise(n, channels, grid, image_size, gen)
        distract_amp = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.2, generator=gen)
        brightness = torch.empty(n, 1, 1, 1).uniform_(-25.0, 25.0, generator=gen)
        noise = torch.randn(n, channels, image_size, image_size, generator=gen)
        img = 128.0 + brightness + 32.0 * (contrast * signal + distract_amp * distract) + 24.0 * noise
        return Split(img.round().clamp(0, 255).to(torch.uint8), labels.to(torch.int64))

    # The "official training set" is train + val, val being its last val_size examples (as for real data).
    official = make(train_size + val_size)
    test = make(test_size)
    train = Split(official.x[:train_size], official.y[:train_size])
    val = Split(official.x[train_size:], official.y[train_size:])

    # Normalisation constants from the training images (fallbacks only for degenerate tiny sets).
    pixels = train.x.to(torch.float64) / 255.0
    mean = tuple(float(v) for v in pixels.mean(dim=(0, 2, 3))) if train_size > 0 else (0.5,) * channels
    std = (1.0,) * channels
    if train_size > 1:
        std = tuple(max(float(v), 1e-3) for v in pixels.std(dim=(0, 2, 3)))
    return Dataset(
        name="synthetic",
        num_classes=num_classes,
        channels=channels,
        image_size=image_size,
        mean=mean,
        std=std,
        augment=False,
        train=train,
        val=val,
        test=test,
    )


# ---------------------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch), so neighbouring seeds/epochs give unrelated streams."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(epoch)])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class DeviceLoader:
    """Iterates ``(images, labels)`` batches of one :class:`Split` on the split's device.

    Images come out as ``dtype`` (float32 by default), normalised with ``(x / 255 - mean) / std`` computed in
    float32. With ``augment=True`` each image is randomly cropped back to its size after zero padding by
    ``crop_padding`` pixels (black padding, as torchvision's ``RandomCrop(padding=...)``) and flipped
    horizontally with probability 1/2; all of it is done batched on the device, never per image.

    Randomness (shuffle order, crop offsets, flips) for epoch ``e`` comes from a CPU ``torch.Generator``
    seeded from ``(seed, e)``; the epoch's permutation and offsets are drawn once, moved to the device,
    and sliced per batch. Each ``iter()`` is a new epoch (the counter advances), so epochs differ, and the
    same ``seed`` reproduces the same sequence of batches on any device. :meth:`set_epoch` sets the counter,
    so epoch ``e`` can be reproduced on its own.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        shuffle: bool = False,
        augment: bool = False,
        crop_padding: int = 4,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if split.x.dtype != torch.uint8:
            raise TypeError(f"DeviceLoader expects uint8 images, got {split.x.dtype}")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.crop_padding = int(crop_padding)
        self.drop_last = drop_last
        self.seed = int(seed)
        self.channels_last = channels_last
        self.dtype = dtype
        self.epoch = 0
        device = split.x.device
        channels = split.x.shape[1]
        self.mean = self._per_channel(mean, channels, "mean").to(device)
        self.std = self._per_channel(std, channels, "std").to(device)

    @staticmethod
    def _per_channel(values: Sequence[float] | torch.Tensor, channels: int, what: str) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float32).flatten()
        if t.numel() == 1:
            t = t.expand(channels)
        if t.numel() != channels:
            raise ValueError(f"{what} has {t.numel()} values for {channels} channels")
        return t.reshape(1, channels, 1, 1).clone()

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (its order/augmentation depend only on seed and epoch)."""
        self.epoch = int(epoch)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> ``(x / 255 - mean) / std`` in float32, then cast to ``self.dtype``."""
        out = (x.to(torch.float32) / 255.0 - self.mean) / self.std
        return out.to(self.dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of batches; draws this epoch's permutation and augmentation, then advances the epoch."""
        x, y = self.split.x, self.split.y
        n, device = len(self.split), x.device
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1

        order = torch.randperm(n, generator=gen).to(device) if self.shuffle else None
        pad = self.crop_padding
        offsets = flips = None
        if self.augment:
            offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).to(device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(device)
        height, width = x.shape[2], x.shape[3]

        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                xb, yb = x[lo:hi], y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = x[idx], y[idx]
            if offsets is not None and flips is not None:
                if pad > 0:
                    padded = F.pad(xb, (pad, pad, pad, pad))  # zeros = black, on the uint8 pixels
                    xb = _gather_crops(padded, offsets[lo:hi, 0], offsets[lo:hi, 1], height, width)
                xb = torch.where(flips[lo:hi].view(-1, 1, 1, 1), xb.flip(3), xb)
            out = self.normalize(xb)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
            yield out, yb
