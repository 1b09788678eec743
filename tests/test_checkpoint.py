"""Tests of snnprune.checkpoint: round trips, atomic writes, and one clear error per bad file."""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from pathlib import Path

import helpers_arch
import pytest
import torch
from torch import nn

from snnprune import checkpoint as ckpt
from snnprune.checkpoint import (
    ArchitectureError,
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    ImportPathError,
    NotACheckpointError,
    NotSerializableError,
    UnsupportedVersionError,
    UntrustedPickleError,
)
from snnprune.masks import get_masks, is_dynamic, mask_spec, set_mask
from snnprune.models import build

TINY = "helpers_arch:tiny_snn"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def trained(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Give the model non-default BatchNorm statistics (one train-mode forward), then eval mode."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, *shape) * 3)
    return model.eval()


def outputs(model: nn.Module, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.rand(3, *shape) * 3)


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class MakeDir:
    """A malicious pickle payload: unpickling it creates the directory ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("mlp", {}), ("convnet", {}), ("mlp", {"hidden": (16, 12), "num_steps": 3, "beta": 0.8})],
)
def test_zoo_round_trip(tmp_path: Path, name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = trained(build(name, **kwargs), (1, 8, 8))
    expected = outputs(model, (1, 8, 8))

    path = ckpt.save(model, tmp_path / "model.pt")
    loaded = ckpt.load(path)

    assert path == tmp_path / "model.pt"
    assert loaded.kind == "checkpoint"
    assert loaded.path == path
    assert loaded.arch == "snnprune.models:build"
    assert loaded.arch_kwargs == {"name": name, **kwargs}
    assert type(loaded.model) is type(model)
    assert not loaded.model.training
    assert torch.equal(outputs(loaded.model, (1, 8, 8)), expected)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_masked_round_trip_keeps_masks_kinds_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("mlp", hidden=(32, 16))
    set_mask(model.fcs[0], torch.rand(32, 64) > 0.5)
    set_mask(model.fcs[1], torch.rand(16, 32) > 0.7, dynamic=True)
    set_mask(model.classifier, torch.rand(10, 16) > 0.3)
    with torch.no_grad():  # a dynamic mask keeps the pruned weights' values
        model.fcs[1].weight_orig.add_(1.0)
    trained(model, (1, 8, 8))
    expected = outputs(model, (1, 8, 8))

    loaded = ckpt.load_model(ckpt.save(model, tmp_path / "masked.pt"))

    assert (
        mask_spec(loaded)
        == mask_spec(model)
        == {
            "fcs.0.weight": {"dynamic": False},
            "fcs.1.weight": {"dynamic": True},
            "classifier.weight": {"dynamic": False},
        }
    )
    assert is_dynamic(loaded.fcs[1]) and not is_dynamic(loaded.fcs[0])
    for key, mask in get_masks(model).items():
        assert torch.equal(get_masks(loaded)[key], mask), key
    assert torch.equal(loaded.fcs[1].weight_orig, model.fcs[1].weight_orig)
    # the masked weight is correct even before the first forward
    assert torch.equal(loaded.fcs[0].weight, model.fcs[0].weight_orig * model.fcs[0].weight_mask)
    assert torch.equal(outputs(loaded, (1, 8, 8)), expected)


def test_history_metadata_extra_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("mlp", hidden=(8,))
    rewind = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    history = [
        {"round": 0, "sparsity": 0.0, "accuracy": 0.91, "layers": {"fcs.0": 0.0}},
        {"round": 1, "sparsity": 0.2, "accuracy": 0.9, "note": None, "flags": [True, False]},
    ]
    extra = {"rewind_state": rewind, "optimizer": optimizer.state_dict(), "epoch": 3}

    path = ckpt.save(
        model,
        tmp_path / "m.pt",
        history=history,
        metadata={"seed": 7, "dataset": "digits"},
        extra=extra,
    )
    loaded = ckpt.load(path)

    assert loaded.history == history
    meta = loaded.metadata
    assert meta["seed"] == 7 and meta["dataset"] == "digits"
    assert meta["snnprune_version"] == __import__("snnprune").__version__
    assert meta["torch_version"] == torch.__version__
    assert meta["snntorch_version"]
    created = datetime.datetime.fromisoformat(meta["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(
        minutes=5
    )
    assert loaded.extra["epoch"] == 3
    for key, value in rewind.items():
        assert torch.equal(loaded.extra["rewind_state"][key], value), key
    fresh = torch.optim.Adam(loaded.model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.extra["optimizer"])
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_saved_file_is_a_weights_only_plain_dict(tmp_path: Path) -> None:
    model = build("mlp", hidden=(8,))
    set_mask(model.fcs[0], torch.rand(8, 64) > 0.5, dynamic=True)
    path = ckpt.save(model, tmp_path / "m.pt", history=[{"round": 1}], extra={"t": torch.ones(2)})

    raw = torch.load(path, weights_only=True)

    assert raw["format"] == "snnprune-checkpoint"
    assert raw["version"] == 1
    assert raw["arch"] == "snnprune.models:build"
    assert raw["arch_kwargs"] == {"name": "mlp", "hidden": (8,)}
    assert raw["masks"] == {"fcs.0.weight": {"dynamic": True}}
    assert set(raw) == {
        "format",
        "version",
        "arch",
        "arch_kwargs",
        "state_dict",
        "masks",
        "history",
        "metadata",
        "extra",
    }
    assert {"fcs.0.weight_orig", "fcs.0.weight_mask"} <= set(raw["state_dict"])
    assert all(v.device.type == "cpu" for v in raw["state_dict"].values())


def test_float64_model_keeps_its_dtype(tmp_path: Path) -> None:
    # (snnTorch neurons emit float32 spikes, so compare weights rather than outputs)
    torch.manual_seed(1)
    model = build("mlp", hidden=(8,)).double()
    loaded = ckpt.load_model(ckpt.save(model, tmp_path / "m.pt"))
    assert loaded.fcs[0].weight.dtype == torch.float64
    for key, value in model.state_dict().items():
        own = loaded.state_dict()[key]
        assert own.dtype == value.dtype and torch.equal(own, value), key


# --------------------------------------------------------------------------------------------------
# saving: arguments and atomic writes
# --------------------------------------------------------------------------------------------------


def test_custom_model_needs_arch_and_round_trips_with_it(tmp_path: Path) -> None:
    model = helpers_arch.tiny_snn(hidden=6)
    with pytest.raises(ArchitectureError) as excinfo:
        ckpt.save(model, tmp_path / "tiny.pt")
    assert_one_line_error(excinfo, tmp_path / "tiny.pt", "arch=", "arch_kwargs")
    assert not (tmp_path / "tiny.pt").exists()

    path = ckpt.save(model, tmp_path / "tiny.pt", arch=TINY, arch_kwargs={"hidden": 6})
    loaded = ckpt.load(path)
    assert loaded.arch == TINY and loaded.arch_kwargs == {"hidden": 6}
    x = torch.rand(5, 4)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.mark.parametrize(
    ("arch", "error", "words"),
    [
        ("__main__:make", ArchitectureError, ["__main__", "importable module"]),
        ("helpers_arch:missing", ImportPathError, ["missing"]),
        ("no-colon", ImportPathError, ["package.module:name"]),
    ],
)
def test_save_rejects_unusable_arch(
    tmp_path: Path, arch: str, error: type, words: list[str]
) -> None:
    with pytest.raises(error) as excinfo:
        ckpt.save(helpers_arch.tiny_snn(), tmp_path / "t.pt", arch=arch)
    assert_one_line_error(excinfo, tmp_path / "t.pt", *words)
    assert folder_listing(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            {"arch_kwargs": {"name": "mlp", "act": object()}},
            ["arch_kwargs['act']", "builtins.object"],
        ),
        ({"metadata": {"when": datetime.date(2024, 1, 1)}}, ["metadata['when']", "datetime.date"]),
        ({"metadata": {1: "int key"}}, ["metadata", "key 1"]),
        ({"history": [{"loss": torch.tensor(1.0)}]}, ["history[0]['loss']", "torch.Tensor"]),
        ({"history": {"round": 1}}, ["history must be a list of dicts"]),
        ({"extra": {"fn": len}}, ["extra['fn']", "builtin_function_or_method"]),
        (
            {"extra": {"nested": [{"ok": torch.ones(1)}, {1, 2}]}},
            ["extra['nested'][1]", "builtins.set"],
        ),
    ],
)
def test_save_rejects_values_a_weights_only_load_cannot_read(
    tmp_path: Path, kwargs: dict, words: list[str]
) -> None:
    with pytest.raises(NotSerializableError) as excinfo:
        ckpt.save(build("mlp", hidden=(8,)), tmp_path / "m.pt", **kwargs)
    assert_one_line_error(excinfo, tmp_path / "m.pt", *words)
    assert isinstance(excinfo.value, ValueError)
    assert folder_listing(tmp_path) == []


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("disk exploded"), KeyboardInterrupt(), OSError(28, "No space left on device")],
)
def test_interrupted_save_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    target = tmp_path / "model.pt"
    ckpt.save(build("mlp", hidden=(8,)), target, metadata={"which": "old"})
    before = target.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial checkpoint bytes")
        raise exc

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    expected = CheckpointWriteError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as excinfo:
        ckpt.save(build("mlp", hidden=(8,)), target, metadata={"which": "new"})
    if expected is CheckpointWriteError:
        assert_one_line_error(excinfo, target, "No space left on device", "unchanged")
    monkeypatch.undo()

    assert target.read_bytes() == before
    assert folder_listing(tmp_path) == ["model.pt"]
    assert ckpt.load(target).metadata["which"] == "old"


def test_atomic_save_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "obj.pt"
    ckpt.atomic_save({"a": torch.zeros(2)}, target)
    ckpt.atomic_save({"a": torch.ones(2)}, str(target))
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert folder_listing(tmp_path) == ["obj.pt"]
    if os.name == "posix":  # not mkstemp's private 0o600
        umask = os.umask(0)
        os.umask(umask)
        assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_into_missing_folder(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "m.pt"
    with pytest.raises(CheckpointWriteError) as excinfo:
        ckpt.save(build("mlp", hidden=(8,)), target)
    assert_one_line_error(excinfo, target, "does not exist", "create it")


def test_save_onto_a_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointWriteError) as excinfo:
        ckpt.atomic_save({"a": 1}, tmp_path / "out")
    assert_one_line_error(excinfo, tmp_path / "out", "is a directory")


def test_save_when_the_folder_refuses_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointWriteError) as excinfo:
        ckpt.save(build("mlp", hidden=(8,)), tmp_path / "m.pt")
    assert_one_line_error(
        excinfo, tmp_path / "m.pt", "Permission denied", "cannot write to folder", "permissions"
    )


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root"
)
def test_save_into_unwritable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointWriteError) as excinfo:
            ckpt.save(build("mlp", hidden=(8,)), folder / "m.pt")
        assert_one_line_error(excinfo, folder / "m.pt", "Permission denied", "permissions")
    finally:
        folder.chmod(0o700)
    assert folder_listing(folder) == []


# --------------------------------------------------------------------------------------------------
# loading: plain state_dict files and architectures
# --------------------------------------------------------------------------------------------------


def test_state_dict_file_needs_arch(tmp_path: Path) -> None:
    model = helpers_arch.tiny_snn()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)

    with pytest.raises(ArchitectureError) as excinfo:
        ckpt.load(path)
    assert_one_line_error(excinfo, path, "state_dict", "--arch package.module:factory")

    loaded = ckpt.load(path, arch=TINY)
    assert loaded.kind == "state_dict"
    assert loaded.arch == TINY and loaded.arch_kwargs == {}
    assert loaded.history == [] and loaded.metadata == {} and loaded.extra == {}
    x = torch.rand(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_zoo_state_dict_file_with_arch_kwargs(tmp_path: Path) -> None:
    model = trained(build("convnet", channels=(4,), hidden=0), (1, 8, 8))
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = ckpt.load_model(
        path,
        arch="snnprune.models:build",
        arch_kwargs={"name": "convnet", "channels": [4], "hidden": 0},
    )
    assert torch.equal(outputs(loaded, (1, 8, 8)), outputs(model, (1, 8, 8)))


def test_pruned_state_dict_file_gets_its_masks_back(tmp_path: Path) -> None:
    model = helpers_arch.tiny_snn()
    set_mask(model.fc1, torch.rand(8, 4) > 0.5)
    path = tmp_path / "pruned_weights.pt"
    torch.save(model.state_dict(), path)  # weight_orig / weight_mask keys, no mask spec

    loaded = ckpt.load_model(path, arch=TINY)
    assert mask_spec(loaded) == {"fc1.weight": {"dynamic": False}}
    assert torch.equal(get_masks(loaded)["fc1.weight"], get_masks(model)["fc1.weight"])
    x = torch.rand(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_wrong_arch_kwargs_is_an_architecture_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(helpers_arch.tiny_snn(hidden=8).state_dict(), path)
    with pytest.raises(ArchitectureMismatchError) as excinfo:
        ckpt.load(path, arch=TINY, arch_kwargs={"hidden": 16})
    assert_one_line_error(
        excinfo, path, "size mismatch", "fc1.weight [8, 4] in file vs [16, 4] in model", "--arch"
    )


def test_checkpoint_loaded_with_other_arch_names_missing_and_unexpected_keys(
    tmp_path: Path,
) -> None:
    path = ckpt.save(build("mlp", hidden=(8,)), tmp_path / "mlp.pt")
    with pytest.raises(ArchitectureMismatchError) as excinfo:
        ckpt.load(path, arch_kwargs={"name": "convnet"})
    assert_one_line_error(
        excinfo, path, "missing keys convs.0.weight", "unexpected keys fcs.0.weight", "more)"
    )


def test_masks_naming_absent_layers_are_an_architecture_mismatch(tmp_path: Path) -> None:
    model = build("mlp", hidden=(8, 8))
    set_mask(model.fcs[1], torch.rand(8, 8) > 0.5)
    path = ckpt.save(model, tmp_path / "m.pt")
    with pytest.raises(ArchitectureMismatchError) as excinfo:
        ckpt.load(path, arch_kwargs={"name": "mlp", "hidden": [8]})
    assert_one_line_error(excinfo, path, "masks", "fcs.1.weight")


@pytest.mark.parametrize(
    ("arch", "error", "words"),
    [
        ("helpers_arch.tiny_snn", ImportPathError, ["package.module:name"]),
        ("a:b:c", ImportPathError, ["package.module:name"]),
        ("helpers_arch:", ImportPathError, ["package.module:name"]),
        (
            "no_such_module_xyz:build",
            ImportPathError,
            ["no_such_module_xyz", "ModuleNotFoundError"],
        ),
        ("helpers_arch:nope", ImportPathError, ["has no attribute 'nope'"]),
        ("helpers_arch:NOT_CALLABLE", ImportPathError, ["not a callable"]),
        ("helpers_arch:broken_factory", ArchitectureError, ["broken on purpose", "failed"]),
        ("helpers_arch:not_a_module", ArchitectureError, ["not a torch.nn.Module"]),
    ],
)
def test_bad_arch_on_load(tmp_path: Path, arch: str, error: type, words: list[str]) -> None:
    path = tmp_path / "weights.pt"
    torch.save(helpers_arch.tiny_snn().state_dict(), path)
    with pytest.raises(error) as excinfo:
        ckpt.load(path, arch=arch)
    assert type(excinfo.value) is error
    assert_one_line_error(excinfo, path, *words)


def test_resolve_import_path() -> None:
    assert ckpt.resolve_import_path("snnprune.models:build") is build
    assert ckpt.resolve_import_path("helpers_arch:TinySNN.forward") is helpers_arch.TinySNN.forward
    with pytest.raises(ImportPathError, match="expected 'package.module:name'"):
        ckpt.resolve_import_path("snnprune.models.build")


# --------------------------------------------------------------------------------------------------
# loading: bad files
# --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as excinfo:
        ckpt.load(tmp_path / "nope.pt")
    assert_one_line_error(excinfo, tmp_path / "nope.pt", "no such file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as excinfo:
        ckpt.load(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "is a directory")


def _truncated(path: Path) -> None:
    torch.save({"w": torch.ones(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_bytes(b""), ["empty"]),
        (_truncated, ["truncated, corrupt"]),
        (lambda p: p.write_bytes(b"\xcc\x00\x17" * 300), ["truncated, corrupt"]),
        (lambda p: p.write_text("epoch,accuracy\n1,0.9\n"), ["not a PyTorch file"]),
        (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), ["not a PyTorch file"]),
    ],
    ids=["empty", "truncated", "garbage", "text", "bare-pickle"],
)
def test_unreadable_file_is_corrupt(tmp_path: Path, make, words: list[str]) -> None:
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CorruptCheckpointError) as excinfo:
        ckpt.load(path)
    assert_one_line_error(excinfo, path, *words)


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ([torch.ones(2), torch.zeros(2)], ["a list"]),
        (5, ["an int"]),
        ({}, ["an empty dict"]),
        ({"model": {"w": torch.ones(1)}, "epoch": 3}, ["a dict with keys 'model', 'epoch'"]),
        ({"format": "other", "version": 1}, ["'format'"]),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, obj, words: list[str]) -> None:
    path = tmp_path / "thing.pt"
    torch.save(obj, path)
    with pytest.raises(NotACheckpointError) as excinfo:
        ckpt.load(path, arch=TINY)
    assert_one_line_error(excinfo, path, "not a snnprune checkpoint", *words)


def test_future_version_is_refused(tmp_path: Path) -> None:
    path = ckpt.save(build("mlp", hidden=(8,)), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["version"] = 2
    torch.save(raw, path)
    with pytest.raises(UnsupportedVersionError) as excinfo:
        ckpt.load(path)
    assert_one_line_error(excinfo, path, "version 2", "version 1", "upgrade snnprune")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda raw: raw.pop("state_dict"), ["no 'state_dict'"]),
        (lambda raw: raw.update(version="1"), ["version '1'"]),
        (lambda raw: raw.update(arch_kwargs=[1]), ["'arch_kwargs' is a list"]),
    ],
)
def test_malformed_checkpoint(tmp_path: Path, change, words: list[str]) -> None:
    path = ckpt.save(build("mlp", hidden=(8,)), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)
    with pytest.raises(CorruptCheckpointError) as excinfo:
        ckpt.load(path)
    assert_one_line_error(excinfo, path, "malformed snnprune checkpoint", *words)


# --------------------------------------------------------------------------------------------------
# loading: pickled objects
# --------------------------------------------------------------------------------------------------


def test_pickled_module_is_refused_unless_trusted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    path = tmp_path / "whole.pt"
    torch.save(model, path)

    with pytest.raises(UntrustedPickleError) as excinfo:
        ckpt.load(path)
    assert_one_line_error(
        excinfo,
        path,
        "refused",
        "pickled Python objects",
        "run code",
        "Sequential",
        "trust_pickle=True",
        "--trust-pickle",
    )

    loaded = ckpt.load(path, trust_pickle=True)
    assert loaded.kind == "module" and loaded.arch is None
    assert not loaded.model.training
    x = torch.rand(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_trusted_pickle_holding_a_state_dict_dict(tmp_path: Path) -> None:
    from collections import defaultdict

    model = helpers_arch.tiny_snn()
    path = tmp_path / "odd.pt"
    torch.save(defaultdict(int, model.state_dict()), path)
    with pytest.raises(UntrustedPickleError, match="defaultdict"):
        ckpt.load(path, arch=TINY)
    assert ckpt.load(path, arch=TINY, trust_pickle=True).kind == "state_dict"


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump", "inside-checkpoint"])
def test_malicious_pickle_never_runs_without_trust(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = MakeDir(marker)
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "pickle.dump":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        raw = torch.load(ckpt.save(build("mlp", hidden=(8,)), path), weights_only=True)
        raw["metadata"]["note"] = payload
        torch.save(raw, path)

    for kwargs in ({}, {"arch": TINY}):
        with pytest.raises(UntrustedPickleError) as excinfo:
            ckpt.load(path, **kwargs)
        assert_one_line_error(excinfo, path, "mkdir", "trust_pickle=True")
        assert not marker.exists()

    # control: the file really is malicious; trusting it runs the payload (the load itself may then
    # fail, since the payload's result is not a model)
    with contextlib.suppress(CheckpointError):
        ckpt.load(path, trust_pickle=True)
    assert marker.exists()


def test_errors_share_one_base_class() -> None:
    for cls in (
        CheckpointNotFoundError,
        CorruptCheckpointError,
        NotACheckpointError,
        UnsupportedVersionError,
        UntrustedPickleError,
        ArchitectureError,
        ImportPathError,
        ArchitectureMismatchError,
        CheckpointWriteError,
        NotSerializableError,
    ):
        assert issubclass(cls, CheckpointError)
    assert str(CheckpointError("a\n  b")) == "a b"
