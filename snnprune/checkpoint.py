"""Checkpoint I/O: save and load snnprune models safely, atomically and with clear errors.

A snnprune checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` reads without
unpickling any Python object (whole snnTorch modules cannot be pickled, and unpickling an untrusted
file runs arbitrary code)::

    {
        "format": "snnprune-checkpoint",
        "version": 1,
        "arch": "snnprune.models:build",          # "package.module:factory" that rebuilds the model
        "arch_kwargs": {"name": "mlp", ...},     # keyword arguments of the factory (JSON-able)
        "state_dict": {...},                     # model.state_dict(), tensors on the CPU
        "masks": {"fcs.0.weight": {"dynamic": False}, ...},   # snnprune.masks.mask_spec(model)
        "history": [{...}, ...],                 # JSON-able records (e.g. one per pruning round)
        "metadata": {...},                       # versions, creation time (UTC), caller's entries
        "extra": {...},                          # tensors and JSON-able values (rewind state, ...)
    }

:func:`load` also reads a plain ``state_dict`` file (given the architecture) and, only when the caller
says it trusts the file, a whole pickled ``nn.Module``. Every failure is a :class:`CheckpointError`
whose message is one line naming the file, the problem and what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.metadata
import io
import os
import pickle
import pickletools
import re
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import __version__
from .masks import attach_masks, mask_spec, refresh

FORMAT = "snnprune-checkpoint"
VERSION = 1
DEFAULT_ARCH = "snnprune.models:build"

PathLike = str | os.PathLike
MapLocation = str | torch.device | Callable | Mapping | None

__all__ = [
    "DEFAULT_ARCH",
    "FORMAT",
    "VERSION",
    "ArchitectureError",
    "ArchitectureMismatchError",
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "ImportPathError",
    "NotACheckpointError",
    "NotSerializableError",
    "UnsupportedVersionError",
    "UntrustedPickleError",
    "atomic_save",
    "load",
    "load_model",
    "resolve_import_path",
    "save",
]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class CheckpointError(Exception):
    """A checkpoint cannot be saved or loaded. The message is one line: file, problem, what to do."""

    def __init__(self, message: str, *, path: PathLike | None = None) -> None:
        message = " ".join(str(message).split())  # always a single line
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class CheckpointNotFoundError(CheckpointError):
    """The path does not exist or is a directory."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated, not a PyTorch file, or a malformed snnprune checkpoint."""


class NotACheckpointError(CheckpointError):
    """A readable PyTorch file that holds neither a snnprune checkpoint nor a state_dict."""


class UnsupportedVersionError(CheckpointError):
    """A snnprune checkpoint written by a newer snnprune (unknown format version)."""


class UntrustedPickleError(CheckpointError):
    """The file holds pickled Python objects and ``trust_pickle`` was not given; nothing was run."""


class ArchitectureError(CheckpointError):
    """The model cannot be rebuilt: no architecture given, or its factory failed."""


class ImportPathError(ArchitectureError):
    """A ``"package.module:name"`` import path is malformed or cannot be resolved."""


class ArchitectureMismatchError(ArchitectureError):
    """The stored weights do not fit the rebuilt model (missing / unexpected keys, other shapes)."""


class CheckpointWriteError(CheckpointError):
    """The checkpoint file cannot be written (missing or unwritable folder, disk full, ...)."""


class NotSerializableError(CheckpointError, ValueError):
    """A value passed to :func:`save` cannot be stored in a weights-only checkpoint."""


# --------------------------------------------------------------------------------------------------
# Result of load()
# --------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What :func:`load` read.

    Attributes:
        model: the rebuilt model with its weights and masks, in eval mode.
        arch: the ``"package.module:factory"`` that built it (None for a pickled module).
        arch_kwargs: keyword arguments passed to the factory.
        history, metadata, extra: as given to :func:`save` (empty for other kinds of file).
        path: the file read.
        kind: ``"checkpoint"`` (snnprune checkpoint), ``"state_dict"`` (plain state_dict file) or
            ``"module"`` (whole pickled module, read with ``trust_pickle=True``).
    """

    model: nn.Module
    arch: str | None
    arch_kwargs: dict[str, Any]
    path: Path
    kind: Literal["checkpoint", "state_dict", "module"]
    history: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Import paths
# --------------------------------------------------------------------------------------------------


def resolve_import_path(spec: str) -> Callable[..., Any]:
    """Return the object named by ``"package.module:name"`` (``name`` may be dotted: ``"Cls.make"``).

    Raises :class:`ImportPathError` (one line) if the spec is malformed, the module cannot be
    imported, the attribute is missing or the object is not callable.
    """
    hint = "expected 'package.module:name', e.g. 'snnprune.models:build'"
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ImportPathError(f"invalid import path {spec!r}: {hint}")
    module_name, _, attr_path = spec.partition(":")
    names = attr_path.split(".")
    if (
        not module_name
        or not all(n.isidentifier() for n in names)
        or not all(p.isidentifier() for p in module_name.split("."))
    ):
        raise ImportPathError(f"invalid import path {spec!r}: {hint}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise ImportPathError(
            f"cannot import module {module_name!r} of {spec!r} ({_reason(exc)}); "
            "check the spelling and that the package is installed or on PYTHONPATH"
        ) from exc
    for i, name in enumerate(names):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            owner = ".".join([module_name, *names[:i]])
            raise ImportPathError(
                f"{owner!r} has no attribute {name!r} (import path {spec!r}); check the name after ':'"
            ) from None
    if not callable(obj):
        raise ImportPathError(
            f"{spec!r} is a {type(obj).__name__}, not a callable; name a function or class"
        )
    return obj


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns ``path`` as a :class:`~pathlib.Path`.

    The data goes to a temporary file in the target's folder, is flushed and fsync'ed, then
    ``os.replace``'d onto the target. If anything fails (including ``KeyboardInterrupt``) the temporary
    file is removed and an existing target is left untouched. OS errors (missing or unwritable folder,
    disk full) become :class:`CheckpointWriteError`; other exceptions propagate unchanged.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CheckpointWriteError(
            f"{path}: cannot save, output folder {folder} {what}; create it first or choose another path",
            path=path,
        )
    if path.is_dir():
        raise CheckpointWriteError(
            f"{path}: cannot save, the path is a directory; give a file name such as {path / 'model.pt'}",
            path=path,
        )
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise CheckpointWriteError(
            f"{path}: cannot write to folder {folder} ({_reason(exc)}); check its permissions or choose another path",
            path=path,
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _set_file_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise CheckpointWriteError(
                f"{path}: writing the checkpoint failed ({_reason(exc)}); the previous file, if any, is unchanged; "
                "check free space and permissions",
                path=path,
            ) from exc
        raise
    _fsync_dir(folder)
    return path


def save(
    model: nn.Module,
    path: PathLike,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` (weights, masks, how to rebuild it) as a snnprune checkpoint; returns the path.

    Args:
        model: the model. A zoo model (it has ``arch_kwargs``, set by :func:`snnprune.models.build`)
            needs nothing else; any other model needs ``arch``.
        path: target file; written atomically (see :func:`atomic_save`).
        arch: ``"package.module:factory"`` that rebuilds the model (importable, not ``__main__``).
            Defaults to ``"snnprune.models:build"`` for zoo models.
        arch_kwargs: JSON-able keyword arguments of the factory. Default: ``model.arch_kwargs`` with
            the zoo builder, else ``{}``.
        history: JSON-able dicts, e.g. one per pruning round.
        metadata: JSON-able entries stored next to the automatic ones (``snnprune_version``,
            ``torch_version``, ``snntorch_version``, ``created`` UTC ISO time), which take precedence.
        extra: tensors and JSON-able values (dict keys may be str or int, as in an optimizer state);
            tensors are stored on the CPU.

    Raises:
        ArchitectureError: no architecture known for ``model``, or ``arch`` cannot be imported.
        NotSerializableError: a value is not storable in a weights-only checkpoint.
        CheckpointWriteError: the file cannot be written.
    """
    path = Path(path)
    arch, arch_kwargs = _save_arch(model, path, arch, arch_kwargs)
    history = [] if history is None else history
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise NotSerializableError(
            f"{path}: cannot save, history must be a list of dicts, got {_describe(history)}",
            path=path,
        )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise NotSerializableError(
            f"{path}: cannot save, metadata must be a dict, got {_describe(metadata)}", path=path
        )
    if extra is not None and not isinstance(extra, Mapping):
        raise NotSerializableError(
            f"{path}: cannot save, extra must be a dict, got {_describe(extra)}", path=path
        )
    meta = dict(metadata or {})
    _check_plain(arch_kwargs, "arch_kwargs", path)
    _check_plain(history, "history", path)
    meta.update(_auto_metadata())
    _check_plain(meta, "metadata", path)
    extra_cpu = _to_cpu(dict(extra or {}))
    _check_plain(extra_cpu, "extra", path, tensors=True, int_keys=True)
    state = _cpu_state_dict(model)
    _check_plain(dict(state), "state_dict", path, tensors=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "state_dict": state,
        "masks": mask_spec(model),
        "history": history,
        "metadata": meta,
        "extra": extra_cpu,
    }
    return atomic_save(payload, path)


def _save_arch(
    model: nn.Module, path: Path, arch: str | None, arch_kwargs: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    zoo_kwargs = getattr(model, "arch_kwargs", None)
    if arch is None:
        if arch_kwargs is None and zoo_kwargs is None:
            raise ArchitectureError(
                f"{path}: cannot save {type(model).__name__}, it has no arch_kwargs (it was not built by "
                "snnprune.models.build); pass arch='package.module:factory' and arch_kwargs={...} so load() can rebuild it",
                path=path,
            )
        arch = DEFAULT_ARCH
    if arch_kwargs is None:
        arch_kwargs = zoo_kwargs if arch == DEFAULT_ARCH and zoo_kwargs is not None else {}
    if not isinstance(arch_kwargs, Mapping):
        raise NotSerializableError(
            f"{path}: cannot save, arch_kwargs must be a dict, got {_describe(arch_kwargs)}",
            path=path,
        )
    if arch.partition(":")[0] == "__main__":
        raise ArchitectureError(
            f"{path}: cannot save with arch {arch!r}, a factory in __main__ cannot be imported when loading; "
            "move it into an importable module",
            path=path,
        )
    try:
        resolve_import_path(arch)
    except ImportPathError as exc:
        raise ImportPathError(f"{path}: cannot save, {exc}", path=path) from exc
    return arch, dict(arch_kwargs)


def _auto_metadata() -> dict[str, Any]:
    try:
        snntorch_version: str | None = importlib.metadata.version("snntorch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - snntorch is a dependency
        snntorch_version = None
    return {
        "snnprune_version": __version__,
        "torch_version": str(torch.__version__),  # a str subclass: not weights-only loadable
        "snntorch_version": snntorch_version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_state_dict(model: nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` with detached CPU tensors, keeping the OrderedDict's ``_metadata``."""
    state = model.state_dict()
    out = type(state)(
        (k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()
    )
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]  # module versions for loading
    return out


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        out = type(value)((k, _to_cpu(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):  # a state_dict: keep the module versions
            out._metadata = value._metadata
        return out
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


_SCALARS = (str, int, float, bool, type(None))


def _check_plain(
    value: Any, where: str, path: Path, *, tensors: bool = False, int_keys: bool = False
) -> None:
    """Raise :class:`NotSerializableError` unless ``value`` holds only plain (JSON-able) values.

    Exact types are required: subclasses (enums, numpy scalars, defaultdict, ...) pickle as Python
    globals, which a weights-only load refuses. Tuples and ``OrderedDict`` are allowed.
    """
    allowed = "tensors, " if tensors else ""

    def fail(where: str, problem: str) -> None:
        raise NotSerializableError(
            f"{path}: cannot save, {where} {problem}; use only {allowed}dict, list, str, int, float, bool and None",
            path=path,
        )

    def walk(v: Any, where: str) -> None:
        t = type(v)
        if t in _SCALARS or (
            tensors and isinstance(v, torch.Tensor) and t in (torch.Tensor, nn.Parameter)
        ):
            return
        if t in (dict, OrderedDict):
            for k, item in v.items():
                if type(k) is not str and not (int_keys and type(k) is int):
                    fail(f"{where}", f"has key {k!r} of type {type(k).__name__}")
                walk(item, f"{where}[{k!r}]")
            return
        if t in (list, tuple):
            for i, item in enumerate(v):
                walk(item, f"{where}[{i}]")
            return
        fail(where, f"is a {t.__module__}.{t.__qualname__}, which is not storable")

    walk(value, where)


def _set_file_mode(tmp: Path, target: Path) -> None:
    """Give the new file the target's mode, or the usual ``0o666 & ~umask`` (mkstemp uses 0o600)."""
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); best effort."""
    if os.name != "posix":  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load(
    path: PathLike,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    map_location: MapLocation = "cpu",
) -> Checkpoint:
    """Load a snnprune checkpoint, a plain state_dict file or (trusted only) a pickled module.

    Args:
        path: the file.
        arch: ``"package.module:factory"`` building the model. Required for a plain state_dict
            file; for a snnprune checkpoint it overrides the stored one (e.g. after a factory moved).
        arch_kwargs: keyword arguments of the factory (for a checkpoint: overrides the stored ones).
        trust_pickle: allow unpickling arbitrary Python objects. **This runs code from the file**;
            only for files from a trusted source. Without it the file is read with
            ``torch.load(weights_only=True)`` and anything else is refused.
        map_location: as for ``torch.load``; a device (str or ``torch.device``) also moves the model.

    Returns:
        a :class:`Checkpoint` whose model is in eval mode.

    Raises:
        CheckpointError: a subclass for each problem, with a one-line message naming the file.
    """
    path = Path(path)
    obj = _read(path, trust_pickle=trust_pickle, map_location=map_location)
    if isinstance(obj, nn.Module):
        if isinstance(map_location, (str, torch.device)):
            obj.to(map_location)
        return Checkpoint(model=obj.eval(), arch=None, arch_kwargs={}, path=path, kind="module")
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _from_checkpoint(obj, path, arch, arch_kwargs, map_location)
    if _is_state_dict(obj):
        if arch is None:
            raise ArchitectureError(
                f"{path}: holds a plain state_dict (weights without the architecture); pass --arch package.module:factory "
                "(arch='package.module:factory' in Python) and its keyword arguments",
                path=path,
            )
        kwargs = dict(arch_kwargs or {})
        model = _build_and_fill(path, arch, kwargs, obj, _infer_mask_spec(obj), map_location)
        return Checkpoint(model=model, arch=arch, arch_kwargs=kwargs, path=path, kind="state_dict")
    raise NotACheckpointError(
        f"{path}: not a snnprune checkpoint nor a state_dict (it holds {_describe(obj)}); save models with "
        "snnprune.checkpoint.save, or give a state_dict file (dict of name -> tensor) with --arch package.module:factory",
        path=path,
    )


def load_model(
    path: PathLike,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    map_location: MapLocation = "cpu",
) -> nn.Module:
    """:func:`load` and return only the model (eval mode)."""
    return load(
        path,
        arch=arch,
        arch_kwargs=arch_kwargs,
        trust_pickle=trust_pickle,
        map_location=map_location,
    ).model


def _from_checkpoint(
    ckpt: Mapping[str, Any],
    path: Path,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    map_location: MapLocation,
) -> Checkpoint:
    version = ckpt.get("version")
    if type(version) is not int or version < 1:
        raise CorruptCheckpointError(
            f"{path}: malformed snnprune checkpoint (version {version!r}); save the model again",
            path=path,
        )
    if version > VERSION:
        raise UnsupportedVersionError(
            f"{path}: snnprune checkpoint version {version} is newer than this snnprune ({__version__}) "
            f"supports (version {VERSION}); upgrade snnprune to load it",
            path=path,
        )
    expected = {"arch": str, "arch_kwargs": Mapping, "state_dict": Mapping, "masks": Mapping}
    optional = {"history": list, "metadata": Mapping, "extra": Mapping}
    for key, typ in {**expected, **optional}.items():
        if key not in ckpt and key in expected:
            raise CorruptCheckpointError(
                f"{path}: malformed snnprune checkpoint (no {key!r} entry); save the model again",
                path=path,
            )
        if key in ckpt and not isinstance(ckpt[key], typ):
            raise CorruptCheckpointError(
                f"{path}: malformed snnprune checkpoint ({key!r} is {_describe(ckpt[key])}); save the model again",
                path=path,
            )
    use_arch = arch if arch is not None else ckpt["arch"]
    kwargs = dict(arch_kwargs if arch_kwargs is not None else ckpt["arch_kwargs"])
    model = _build_and_fill(path, use_arch, kwargs, ckpt["state_dict"], ckpt["masks"], map_location)
    return Checkpoint(
        model=model,
        arch=use_arch,
        arch_kwargs=kwargs,
        path=path,
        kind="checkpoint",
        history=list(ckpt.get("history", [])),
        metadata=dict(ckpt.get("metadata", {})),
        extra=dict(ckpt.get("extra", {})),
    )


def _build_and_fill(
    path: Path,
    arch: str,
    kwargs: dict[str, Any],
    state: Mapping[str, Any],
    masks: Mapping[str, Any],
    map_location: MapLocation,
) -> nn.Module:
    """Build ``arch(**kwargs)``, install ``masks``, load ``state`` strictly; model in eval mode."""
    call = _call_repr(arch, kwargs)
    try:
        factory = resolve_import_path(arch)
    except ImportPathError as exc:
        raise ImportPathError(f"{path}: {exc}", path=path) from exc
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ArchitectureError(
            f"{path}: building the model with {call} failed ({_reason(exc)}); check --arch and its keyword arguments",
            path=path,
        ) from exc
    if not isinstance(model, nn.Module):
        raise ArchitectureError(
            f"{path}: {call} returned {_describe(model)}, not a torch.nn.Module; check --arch",
            path=path,
        )
    try:
        attach_masks(model, dict(masks))
    except (KeyError, AttributeError, ValueError) as exc:
        raise ArchitectureMismatchError(
            f"{path}: the stored masks do not fit the model built by {call} ({_reason(exc)}); "
            "pass the --arch and arguments the checkpoint was made with",
            path=path,
        ) from exc
    _match_dtype(model, state)
    problem = _state_mismatch(model, state)
    if problem:
        raise ArchitectureMismatchError(
            f"{path}: the weights do not fit the model built by {call}: {problem}; "
            "pass the --arch and arguments the weights were trained with",
            path=path,
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ArchitectureMismatchError(
            f"{path}: the weights do not fit the model built by {call} ({_reason(exc)}); "
            "pass the --arch and arguments the weights were trained with",
            path=path,
        ) from exc
    refresh(model, zero_pruned=False)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


def _state_mismatch(model: nn.Module, state: Mapping[str, Any], shown: int = 3) -> str:
    """Describe missing / unexpected / differently shaped keys ('' if the state fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} in file vs {list(own[k].shape)} in model"
        for k in own
        if k in state
        and isinstance(state[k], torch.Tensor)
        and isinstance(own[k], torch.Tensor)
        and state[k].shape != own[k].shape
    ]

    def listing(label: str, items: list[str]) -> str:
        more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
        return f"{label} {', '.join(items[:shown])}{more}"

    parts = [
        listing(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("size mismatch", shapes),
        )
        if items
    ]
    return "; ".join(parts)


def _match_dtype(model: nn.Module, state: Mapping[str, Any]) -> None:
    """If every floating tensor of ``state`` has one dtype other than the model's, convert the model."""
    dtypes = {
        v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
    }
    own = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and own and own != dtypes:
        model.to(next(iter(dtypes)))


@torch.no_grad()
def _infer_mask_spec(state: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    """Static masks for ``torch.nn.utils.prune``-style ``<name>_orig`` / ``<name>_mask`` pairs."""
    spec: dict[str, dict[str, bool]] = {}
    for key in state:
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            spec[key[: -len("_mask")]] = {"dynamic": False}
    return spec


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


# --------------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------------


def _read(path: Path, *, trust_pickle: bool, map_location: MapLocation) -> Any:
    """``torch.load`` the file (weights-only unless trusted), turning every failure into one line."""
    if path.is_dir():
        raise CheckpointNotFoundError(
            f"{path}: is a directory, not a checkpoint file; give the path of the .pt file",
            path=path,
        )
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such file; check the path", path=path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot access the file ({_reason(exc)}); check its permissions", path=path
        ) from exc
    if size == 0:
        raise CorruptCheckpointError(
            f"{path}: the file is empty (an interrupted save or copy?); save or copy it again",
            path=path,
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except PermissionError as exc:
        raise CheckpointError(
            f"{path}: cannot read the file ({_reason(exc)}); check its permissions", path=path
        ) from exc
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise _corrupt(path, exc) from exc
        objects = _pickled_objects(path)
        refused = _refused_global(exc)
        if objects is None or not (objects or refused):
            # no well-formed pickle, or one without Python objects: damaged rather than dangerous
            raise _corrupt(path, exc) from exc
        shown = [g for g in objects if not g.startswith(_ALWAYS_ALLOWED)]
        culprit = refused or ", ".join(shown[:3]) or ", ".join(objects[:3])
        raise UntrustedPickleError(
            f"{path}: refused to load, the file contains pickled Python objects ({culprit}) that can run code "
            "on load; pass trust_pickle=True / --trust-pickle only if you trust the source of the file",
            path=path,
        ) from None
    except Exception as exc:  # corrupt / truncated / foreign files raise many error types
        raise _corrupt(path, exc) from exc


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path}: cannot read the file, it is truncated, corrupt or not a PyTorch file ({_reason(exc)}); "
        "save, copy or download it again",
        path=path,
    )


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
# Globals every torch.save'd tensor file uses; left out when naming what a refused file contains.
_ALWAYS_ALLOWED = (
    "torch._utils.",
    "collections.OrderedDict",
    "torch.FloatStorage",
    "torch.LongStorage",
)


def _refused_global(exc: BaseException) -> str | None:
    """The global named in torch's weights-only refusal, if the message names one."""
    match = _GLOBAL_IN_MESSAGE.search(str(exc))
    return match.group(1) if match else None


def _pickled_objects(path: Path, max_pickles: int = 8) -> list[str] | None:
    """Python globals the file's pickle data refers to, found by decoding opcodes (nothing runs).

    Reads ``data.pkl`` of a torch zip file, or the leading pickles of any other file (the legacy torch
    format is several pickles followed by raw storage bytes). Returns None if no complete pickle is
    found, i.e. the file is corrupt rather than full of objects.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return None
                stream: io.IOBase = io.BytesIO(archive.read(names[0]))
                max_pickles = 1
        else:
            stream = open(path, "rb")  # closed by the `with stream` below
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    found: list[str] = []
    complete = 0
    with stream:
        for _ in range(max_pickles):
            try:
                found.extend(_globals_of_one_pickle(stream))
            except Exception:  # pickletools raises ValueError and friends on bad data
                break
            complete += 1
    if complete == 0:
        return None
    return list(dict.fromkeys(found))


def _globals_of_one_pickle(stream: Any) -> list[str]:
    """Decode one pickle from ``stream`` (up to STOP) and return the ``module.name`` globals it loads."""
    found: list[str] = []
    strings: list[str | None] = []  # recent string pushes, for STACK_GLOBAL
    memo: dict[int, str | None] = {}
    last: str | None = None
    saw_stop = False
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            module, attr = (strings[-2], strings[-1]) if len(strings) >= 2 else (None, None)
            found.append(f"{module}.{attr}" if module and attr else "<unknown global>")
        if name in (
            "SHORT_BINUNICODE",
            "BINUNICODE",
            "BINUNICODE8",
            "UNICODE",
            "SHORT_BINSTRING",
            "BINSTRING",
            "STRING",
        ):
            last = str(arg)
            strings.append(last)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            last = memo.get(int(arg))
            strings.append(last)
        else:
            last = None
        if name == "STOP":
            saw_stop = True
    if not saw_stop:  # pragma: no cover - genops raises on truncated data
        raise ValueError("pickle ended without STOP")
    return found


# --------------------------------------------------------------------------------------------------
# Small helpers for messages
# --------------------------------------------------------------------------------------------------


def _reason(exc: BaseException, limit: int = 160) -> str:
    """First sentence of ``exc`` (with its type), shortened: a reason inside a one-line message."""
    if isinstance(exc, pickle.UnpicklingError) and isinstance(
        exc.__context__, pickle.UnpicklingError
    ):
        exc = (
            exc.__context__
        )  # torch wraps the unpickler's error in a long weights_only explanation
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(obj: Any) -> str:
    """Short description of what a file holds: 'a list', "a dict with keys 'a', 'b' (+3 more)"."""
    t = type(obj)
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        keys = [repr(k) for k in list(obj)[:4]]
        more = f" (+{len(obj) - 4} more)" if len(obj) > 4 else ""
        return f"a dict with keys {', '.join(keys)}{more}"
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def _call_repr(arch: str, kwargs: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    call = f"{arch}({args})"
    return call if len(call) <= 160 else call[:157] + "..."
