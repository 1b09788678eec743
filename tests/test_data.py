"""Tests of snnprune.data: the bundled digits split, the torchvision datasets read from small files
written here in each dataset's real on-disk format, and the data loaders. No network is used."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets as tv_datasets

from snnprune import data

N_DIGITS = 1797


# ------------------------------------------------------------------------------------ file writers


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 file as published by LeCun: big-endian magic 2051, count, rows, cols, uint8 pixels."""
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">iiii", 2051, n, rows, cols) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1 file: big-endian magic 2049, count, uint8 labels."""
    path.write_bytes(struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def write_mnist(
    root: Path, folder: str = "MNIST", n_train: int = 20, n_test: int = 10, seed: int = 0
):
    """Write ``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed)."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[split] = (images, labels)
    return out


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, hundred: bool = False, seed: int = 0):
    """Write CIFAR python-pickle batches under ``root`` and point torchvision's md5 lists at them.

    Images are stored as the real files store them: ``data`` uint8 ``[N, 3072]`` with the 1024 red,
    then 1024 green, then 1024 blue values of each image in row-major order.
    Returns ``{split: (images [N, 3, 32, 32] uint8, labels [N])}``.
    """
    rng = np.random.default_rng(seed)
    cls = tv_datasets.CIFAR100 if hundred else tv_datasets.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    num_classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"

    def batch(n: int) -> tuple[dict, np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n)
        entry = {"data": images.reshape(n, 3072), label_key: [int(v) for v in labels]}
        if hundred:
            entry["coarse_labels"] = [int(v) // 5 for v in labels]
        return entry, images, labels

    train_names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    test_names = ["test"] if hundred else ["test_batch"]
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    lists: dict[str, list] = {"train": [], "test": []}
    for split, names, n in (("train", train_names, 4), ("test", test_names, 6)):
        for name in names:
            entry, images, labels = batch(n)
            _pickle(folder / name, entry)
            lists[split].append([name, _md5(folder / name)])
            out[split][0].append(images)
            out[split][1].append(labels)

    meta_name = "meta" if hundred else "batches.meta"
    meta_key = "fine_label_names" if hundred else "label_names"
    _pickle(folder / meta_name, {meta_key: [f"class{i}" for i in range(num_classes)]})
    monkeypatch.setattr(cls, "train_list", lists["train"])
    monkeypatch.setattr(cls, "test_list", lists["test"])
    monkeypatch.setattr(
        cls, "meta", {"filename": meta_name, "key": meta_key, "md5": _md5(folder / meta_name)}
    )
    return {s: (np.concatenate(im), np.concatenate(lb)) for s, (im, lb) in out.items()}


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any torchvision dataset tries to download."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.download() was called")

    for cls in (tv_datasets.MNIST, tv_datasets.CIFAR10):  # FashionMNIST / CIFAR100 inherit
        monkeypatch.setattr(cls, "download", refuse)


# ------------------------------------------------------------------------------------ registry


def test_datasets_lists_the_five_names_with_digits_default():
    assert data.DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
    assert data.DEFAULT_DATASET == "digits"


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("digits", (1, 8, 8), 10),
        ("mnist", (1, 28, 28), 10),
        ("fashion-mnist", (1, 28, 28), 10),
        ("cifar10", (3, 32, 32), 10),
        ("cifar100", (3, 32, 32), 100),
    ],
)
def test_info_gives_shape_and_classes_without_loading(name, shape, classes):
    meta = data.info(name)
    assert meta == data.DatasetInfo(name, shape, classes)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.num_classes = 3  # type: ignore[misc]


def test_info_of_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown dataset") as err:
        data.info("imagenet")
    for name in data.DATASETS:
        assert name in str(err.value)


def test_load_of_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="digits, mnist, fashion-mnist, cifar10, cifar100"):
        data.load("svhn")


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_load_rejects_bad_split(name, tmp_path):
    with pytest.raises(ValueError, match="split"):
        data.load(name, "validation", root=tmp_path)


def test_dataset_not_found_error_is_a_file_not_found_error():
    assert issubclass(data.DatasetNotFoundError, FileNotFoundError)


# ------------------------------------------------------------------------------------ digits


def test_digits_split_sizes_add_up_with_20_percent_test():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert len(train) + len(test) == N_DIGITS
    assert abs(len(test) - 0.2 * N_DIGITS) <= 1


def test_digits_test_fraction_changes_split_size():
    test = data.load("digits", "test", test_fraction=0.5)
    assert abs(len(test) - 0.5 * N_DIGITS) <= 1


def test_digits_rejects_test_fraction_outside_unit_interval():
    with pytest.raises(ValueError, match="test_fraction"):
        data.load("digits", test_fraction=1.0)


def test_digits_items_have_image_shape_dtype_and_label():
    ds = data.load("digits")
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert torch.as_tensor(y).dtype == torch.int64 and 0 <= int(y) < 10


def test_digits_values_are_sixteenths_in_unit_interval():
    x = torch.cat([data.load("digits", s).tensors[0] for s in ("train", "test")])
    assert x.shape == (N_DIGITS, 1, 8, 8)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, (x * 16).round())


def test_digits_split_is_deterministic_for_a_seed():
    a, b = data.load("digits", "test", seed=0), data.load("digits", "test", seed=0)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])


def test_digits_split_differs_for_another_seed():
    a, b = data.load("digits", "test", seed=0), data.load("digits", "test", seed=1)
    assert not torch.equal(a.tensors[0], b.tensors[0])


def test_digits_split_is_stratified():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    train_counts = torch.bincount(train.tensors[1], minlength=10)
    test_counts = torch.bincount(test.tensors[1], minlength=10)
    assert (test_counts > 0).all()
    total = train_counts + test_counts
    # stratified: each class's test share equals the overall share up to rounding
    assert (test_counts.float() - 0.2 * total.float()).abs().max() <= 1.0


def test_digits_train_and_test_are_disjoint_and_cover_all_images():
    from sklearn.datasets import load_digits

    def rows(ds) -> set[bytes]:
        x, y = ds.tensors
        flat = torch.cat([x.reshape(len(x), -1), y[:, None].float()], dim=1)
        return {r.numpy().tobytes() for r in flat}

    train, test = rows(data.load("digits", "train")), rows(data.load("digits", "test"))
    assert not train & test
    ref = load_digits()
    full = np.concatenate([ref.data / 16.0, ref.target[:, None]], axis=1).astype(np.float32)
    assert train | test == {r.tobytes() for r in full}


def test_digits_loaded_tensors_are_independent_copies():
    a = data.load("digits", "test")
    a.tensors[0].fill_(5.0)
    assert float(data.load("digits", "test").tensors[0].max()) == 1.0


# ------------------------------------------------------------------------------------ MNIST family


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_family_reads_idx_files_exactly(tmp_path, no_download, name, folder, split):
    written = write_mnist(tmp_path, folder)
    images, labels = written[split]
    ds = data.load(name, split, root=tmp_path)
    assert len(ds) == len(labels)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x[0], torch.from_numpy(images[i]).float().div(255))
        assert int(y) == int(labels[i])
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    assert float(xs.min()) >= 0.0 and float(xs.max()) <= 1.0


def test_mnist_root_defaults_to_snnprune_data_env(tmp_path, no_download, monkeypatch):
    written = write_mnist(tmp_path)
    monkeypatch.setenv("SNNPRUNE_DATA", str(tmp_path))
    ds = data.load("mnist", "test")
    assert len(ds) == len(written["test"][1])


def test_default_root_expands_home(tmp_path, monkeypatch):
    monkeypatch.delenv("SNNPRUNE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_root() == tmp_path / ".cache" / "snnprune" / "data"


@pytest.mark.parametrize(
    "name, folder",
    [
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
    ],
)
def test_missing_files_raise_dataset_not_found_naming_folder(tmp_path, no_download, name, folder):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load(name, "train", root=tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert name in message
    assert str(tmp_path / folder) in message
    assert "download=True" in message and "SNNPRUNE_DATA" in message


def test_missing_files_under_env_root_name_that_folder(tmp_path, no_download, monkeypatch):
    monkeypatch.setenv("SNNPRUNE_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(data.DatasetNotFoundError, match="elsewhere"):
        data.load("mnist")


def test_mnist_with_only_train_files_is_not_found(tmp_path, no_download):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(data.DatasetNotFoundError):
        data.load("mnist", "train", root=tmp_path)


# ------------------------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize(
    "name, hundred, mean, std",
    [
        ("cifar10", False, data.CIFAR10_MEAN, data.CIFAR10_STD),
        ("cifar100", True, data.CIFAR100_MEAN, data.CIFAR100_STD),
    ],
)
def test_cifar_test_split_is_normalised_pixels(
    tmp_path, no_download, monkeypatch, name, hundred, mean, std
):
    written = write_cifar(tmp_path, monkeypatch, hundred=hundred)
    images, labels = written["test"]
    ds = data.load(name, "test", root=tmp_path)
    assert len(ds) == len(labels)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        expected = (torch.from_numpy(images[i]).float() / 255 - m) / s
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
        assert int(y) == int(labels[i])
        # un-normalising gives back the exact uint8 pixels
        assert torch.equal(
            (x * s + m).mul(255).round().to(torch.uint8), torch.from_numpy(images[i])
        )


@pytest.mark.parametrize("name, hundred", [("cifar10", False), ("cifar100", True)])
def test_cifar_train_split_reads_all_batches_and_augments(
    tmp_path, no_download, monkeypatch, name, hundred
):
    written = write_cifar(tmp_path, monkeypatch, hundred=hundred)
    images, labels = written["train"]
    ds = data.load(name, "train", root=tmp_path)
    assert len(ds) == len(labels) == (4 if hundred else 20)
    # the raw store torchvision keeps (HWC uint8) matches what was written
    assert np.array_equal(ds.data, images.transpose(0, 2, 3, 1))
    assert [int(t) for t in ds.targets] == [int(v) for v in labels]

    mean, std = (
        (data.CIFAR100_MEAN, data.CIFAR100_STD)
        if hundred
        else (data.CIFAR10_MEAN, data.CIFAR10_STD)
    )
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    torch.manual_seed(0)
    draws = [ds[0][0] for _ in range(20)]
    for x in draws:
        assert x.shape == (3, 32, 32)
        pixels = (x * s + m).mul(255).round().to(torch.uint8)
        # every pixel is zero padding or one of the image's own values (crop + flip only)
        own = set(torch.from_numpy(images[0]).unique().tolist()) | {0}
        assert set(pixels.unique().tolist()) <= own
    assert any(not torch.equal(draws[0], x) for x in draws[1:]), "train split is not augmented"


def test_cifar_with_corrupted_file_is_not_found(tmp_path, no_download, monkeypatch):
    write_cifar(tmp_path, monkeypatch)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", "test", root=tmp_path)


# ------------------------------------------------------------------------------------ loaders


def _epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_loaders_give_batches_of_images_and_int64_labels():
    train, test = data.loaders("digits", batch_size=32)
    x, y = next(iter(train))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert len(train.dataset) + len(test.dataset) == N_DIGITS


def test_loaders_test_loader_is_not_shuffled():
    _, test = data.loaders("digits", batch_size=50)
    x, y = _epoch(test)
    ref = data.load("digits", "test")
    assert torch.equal(x, ref.tensors[0]) and torch.equal(y, ref.tensors[1])


def test_loaders_train_shuffle_is_reproducible_for_a_seed():
    a, _ = data.loaders("digits", seed=3)
    b, _ = data.loaders("digits", seed=3)
    epoch_a1, epoch_b1 = _epoch(a), _epoch(b)
    assert torch.equal(epoch_a1[0], epoch_b1[0]) and torch.equal(epoch_a1[1], epoch_b1[1])
    epoch_a2, epoch_b2 = _epoch(a), _epoch(b)
    assert torch.equal(epoch_a2[0], epoch_b2[0])
    assert not torch.equal(epoch_a1[0], epoch_a2[0])  # a new permutation each epoch


def test_loaders_train_shuffle_differs_for_another_seed():
    a, test_a = data.loaders("digits", seed=0)
    b, test_b = data.loaders("digits", seed=1)
    x_a, x_b = _epoch(a)[0], _epoch(b)[0]
    assert not torch.equal(x_a, x_b)
    # same images, only the order differs; the test split does not depend on the seed
    assert torch.equal(x_a.reshape(len(x_a), -1).sum(0), x_b.reshape(len(x_b), -1).sum(0))
    assert torch.equal(_epoch(test_a)[0], _epoch(test_b)[0])


def test_loaders_split_seed_changes_the_digits_split():
    _, test_a = data.loaders("digits", split_seed=0)
    _, test_b = data.loaders("digits", split_seed=1)
    assert not torch.equal(_epoch(test_a)[0], _epoch(test_b)[0])


def test_loaders_read_torchvision_datasets(tmp_path, no_download):
    write_mnist(tmp_path, n_train=20, n_test=10)
    train, test = data.loaders("mnist", batch_size=8, root=tmp_path)
    x, y = next(iter(train))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.int64
    assert len(_epoch(test)[1]) == 10


def test_loaders_distributed_needs_initialised_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="torch.distributed"):
        data.loaders("digits", distributed=True)


def test_loaders_distributed_use_distributed_samplers(tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        train, test = data.loaders("digits", batch_size=64, seed=5, distributed=True)
        assert isinstance(train.sampler, DistributedSampler) and train.sampler.shuffle
        assert train.sampler.seed == 5
        assert isinstance(test.sampler, DistributedSampler) and not test.sampler.shuffle
        train.sampler.set_epoch(0)
        first = _epoch(train)[1]
        train.sampler.set_epoch(0)
        assert torch.equal(first, _epoch(train)[1])
        assert torch.equal(_epoch(test)[1], data.load("digits", "test").tensors[1])
    finally:
        dist.destroy_process_group()
