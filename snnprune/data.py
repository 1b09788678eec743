"""Datasets and data loaders for the snnprune experiments.

Five image-classification datasets are known (:data:`DATASETS`):

``digits`` (default)
    scikit-learn's bundled 8x8 handwritten digits (1797 real images, shipped with scikit-learn,
    so it works offline). Images ``[1, 8, 8]`` in ``[0, 1]`` (pixel counts 0..16 divided by 16);
    a fixed, seeded, stratified train/test split (default 80 % / 20 %).
``mnist``, ``fashion-mnist``
    torchvision's ``MNIST`` / ``FashionMNIST``; images ``[1, 28, 28]`` in ``[0, 1]``
    (``ToTensor()``), official 60k / 10k split.
``cifar10``, ``cifar100``
    torchvision's ``CIFAR10`` / ``CIFAR100``; images ``[3, 32, 32]`` normalised per channel with
    the standard CIFAR mean / std (:data:`CIFAR10_MEAN` ...), so values lie roughly in
    ``[-2, 2.2]``, *not* in ``[0, 1]`` (rate encoding needs ``[0, 1]``; use direct encoding).
    The train split is augmented with ``RandomCrop(32, padding=4)`` and
    ``RandomHorizontalFlip()``; the test split is not augmented.

Every dataset yields ``(x, y)`` with ``x`` a ``float32`` tensor ``[C, H, W]`` and ``y`` the class
index (an ``int64`` scalar tensor for ``digits``, a Python ``int`` for the torchvision datasets;
the default collate turns both into an ``int64`` tensor ``[B]``).

The torchvision datasets are read from ``root``, by default ``$SNNPRUNE_DATA`` or
``~/.cache/snnprune/data``. Nothing is downloaded unless ``download=True`` is passed; missing files
raise :class:`DatasetNotFoundError`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "DEFAULT_DATASET",
    "DatasetInfo",
    "DatasetNotFoundError",
    "default_root",
    "info",
    "load",
    "loaders",
]

DEFAULT_DATASET = "digits"
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
SPLITS: tuple[str, ...] = ("train", "test")

#: Per-channel mean / standard deviation of the CIFAR-10 training images (values in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: Per-channel mean / standard deviation of the CIFAR-100 training images (values in [0, 1]).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

_ENV_ROOT = "SNNPRUNE_DATA"
_DEFAULT_ROOT = "~/.cache/snnprune/data"


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not under ``root`` and ``download=False`` was passed."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset, available without loading any data.

    Attributes:
        name: canonical dataset name (one of :data:`DATASETS`).
        input_shape: shape of one image without the batch axis, ``(C, H, W)``.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10),
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), 100),
}


def _canonical(name: str) -> str:
    """Return the canonical dataset name (case-insensitive, ``_`` accepted for ``-``)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _INFO:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return key


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")


def info(name: str = DEFAULT_DATASET) -> DatasetInfo:
    """Input shape and number of classes of dataset ``name``, without loading any data.

    Raises:
        ValueError: ``name`` is not one of :data:`DATASETS`.
    """
    return _INFO[_canonical(name)]


def default_root() -> Path:
    """The default data folder: ``$SNNPRUNE_DATA`` if set, else ``~/.cache/snnprune/data``."""
    return Path(os.path.expanduser(os.environ.get(_ENV_ROOT, _DEFAULT_ROOT)))


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    return default_root() if root is None else Path(os.path.expanduser(os.fspath(root)))


# ----------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (``float32 [N, 1, 8, 8]`` in [0, 1], ``int64 [N]``); read-only arrays."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    targets = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


def _load_digits(split: str, seed: int, test_fraction: float) -> TensorDataset:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, targets = _digits_arrays()
    train_idx, test_idx = train_test_split(
        np.arange(len(targets)),
        test_size=test_fraction,
        random_state=seed,
        stratify=targets,
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    x = torch.from_numpy(images[idx].copy())
    y = torch.from_numpy(targets[idx].copy())
    return TensorDataset(x, y)


# ------------------------------------------------------------------------------------ torchvision


def _vision_class(name: str) -> tuple[type, str]:
    """The torchvision dataset class of ``name`` and the folder (under root) it reads."""
    from torchvision import datasets

    if name == "mnist":
        return datasets.MNIST, os.path.join("MNIST", "raw")
    if name == "fashion-mnist":
        return datasets.FashionMNIST, os.path.join("FashionMNIST", "raw")
    if name == "cifar10":
        return datasets.CIFAR10, datasets.CIFAR10.base_folder
    return datasets.CIFAR100, datasets.CIFAR100.base_folder


def _vision_transform(name: str, split: str) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms

    if name in ("mnist", "fashion-mnist"):
        return transforms.ToTensor()
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    steps = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if split == "train":
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *steps]
    return transforms.Compose(steps)


def _load_vision(name: str, split: str, root: Path, download: bool) -> Dataset:
    cls, folder = _vision_class(name)
    try:
        return cls(
            root=str(root),
            train=split == "train",
            transform=_vision_transform(name, split),
            download=download,
        )
    except RuntimeError as err:
        # torchvision signals missing (or, for CIFAR, checksum-failing) files with RuntimeError.
        if download or "not found" not in str(err).lower():
            raise
        raise DatasetNotFoundError(
            f"dataset {name!r} not found (or incomplete) in {root / folder}: "
            f"pass download=True (or --download), or point root / ${_ENV_ROOT} "
            f"at a folder that holds it"
        ) from err


# ------------------------------------------------------------------------------------ public API


def load(
    name: str = DEFAULT_DATASET,
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load one split of a dataset.

    Args:
        name: one of :data:`DATASETS` (case-insensitive).
        split: ``"train"`` or ``"test"``.
        root: data folder of the torchvision datasets; default ``$SNNPRUNE_DATA`` or
            ``~/.cache/snnprune/data`` (``~`` is expanded). Unused by ``digits``.
        download: let torchvision download missing files (needs network). Unused by ``digits``.
        seed: random state of the stratified ``digits`` train/test split (the torchvision datasets
            have fixed official splits and ignore it).
        test_fraction: fraction of ``digits`` images in the test split (default 0.2: 360 of 1797).

    Returns:
        A dataset of ``(x, y)``: ``x`` a ``float32`` tensor ``[C, H, W]`` (see :func:`info`) in
        ``[0, 1]`` (CIFAR: normalised per channel, roughly ``[-2, 2.2]``), ``y`` the class index.
        For ``digits`` it is a :class:`~torch.utils.data.TensorDataset` whose ``tensors`` are
        ``(x [N, 1, 8, 8], y [N] int64)``.

    Raises:
        ValueError: unknown ``name`` or ``split``, or ``test_fraction`` not in (0, 1).
        DatasetNotFoundError: the files are missing under ``root`` and ``download`` is False.
    """
    key = _canonical(name)
    _check_split(split)
    if key == "digits":
        return _load_digits(split, seed, test_fraction)
    return _load_vision(key, split, _resolve_root(root), download)


def loaders(
    name: str = DEFAULT_DATASET,
    *,
    batch_size: int = 64,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    distributed: bool = False,
    split_seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train and test data loaders of dataset ``name``.

    Batches are ``(x [B, C, H, W] float32, y [B] int64)``, ranges as in :func:`load`.

    Without ``distributed`` the train loader is shuffled with a ``torch.Generator`` seeded with
    ``seed``, so the batch order is reproducible (one fresh permutation per epoch, the same
    sequence of permutations for the same seed); the test loader is not shuffled.

    With ``distributed=True`` (``torch.distributed`` must be initialised) each rank reads its share
    through :class:`~torch.utils.data.DistributedSampler`: ``shuffle=True, seed=seed`` for train and
    ``shuffle=False`` for test. The caller must call ``train_loader.sampler.set_epoch(epoch)`` at
    the start of every epoch, otherwise every epoch uses the same order. The test sampler pads the
    split to a multiple of the world size by repeating a few samples.

    Args:
        name, root, download: as in :func:`load`.
        batch_size: batch size of both loaders (per rank when distributed).
        seed: seed of the train shuffling.
        num_workers: worker processes per loader (0: load in the main process).
        distributed: use distributed samplers (see above).
        split_seed: seed of the ``digits`` train/test split, kept separate from ``seed`` so that
            runs with different training seeds are evaluated on the same test images.

    Raises:
        RuntimeError: ``distributed=True`` but ``torch.distributed`` is not initialised.
    """
    train_set = load(name, "train", root=root, download=download, seed=split_seed)
    test_set = load(name, "test", root=root, download=download, seed=split_seed)
    common = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
    }
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "loaders(distributed=True) needs an initialised torch.distributed process group"
            )
        train_sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
        test_sampler = DistributedSampler(test_set, shuffle=False)
        return (
            DataLoader(train_set, sampler=train_sampler, **common),
            DataLoader(test_set, sampler=test_sampler, **common),
        )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return (
        DataLoader(train_set, shuffle=True, generator=generator, **common),
        DataLoader(test_set, shuffle=False, **common),
    )
