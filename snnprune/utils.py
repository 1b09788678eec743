"""Small helpers shared across snnprune: seeding, progress bars, device selection."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Snapshot of every RNG snnprune uses, storable in a weights-only checkpoint."""
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot made by :func:`rng_state`."""
    py_state = tuple(int(v) for v in state["python"].tolist())
    random.setstate((state["python_version"], py_state, state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress_enabled(progress: bool | None) -> bool:
    """``None`` means: show bars only on an interactive terminal (never in a CI log)."""
    if progress is None:
        return sys.stderr.isatty() and not os.environ.get("CI")
    return progress


def progress_bar(iterable: Iterable[T], *, progress: bool | None = None, **kwargs: Any) -> Iterable[T]:
    """``tqdm`` around ``iterable`` when progress is enabled, else the iterable itself."""
    if not progress_enabled(progress):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" picks CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
