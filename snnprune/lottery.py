"""Iterative pruning with rewinding (METHOD.md section 6, the paper's Algorithm 1).

    train R epochs; save theta_rewind (parameters AND BatchNorm running statistics)
    train to the end of the schedule (E epochs in all)
    for round k = 1..K:
        remove p of the remaining weights with the lowest score -> mask m_k
        weights <- theta_rewind (pruned static weights zero; dynamic ones keep theta_rewind)
        train N epochs with the mask held, with a fresh optimizer and schedule

R = 0 rewinds to the initialisation (Frankle & Carbin). Named methods:

* ``IMP``: magnitude everywhere;
* ``SF-IMP-1``: ``prob`` in hidden layers, magnitude in the encoding layer and the classifier;
* ``SF-IMP-2``: as SF-IMP-1 with dynamic masks on the encoding layer and the classifier;
* ``random``: random scores (chance baseline); any registered criterion name works too.

Every round ends with an atomic checkpoint ``round_XXX.pt`` (model with masks, rewind point,
pruner state, the round's final optimizer state, RNG states, metrics; a resumed round starts with a
fresh optimizer, as Algorithm 1 does every round). A run restarted with the same
``checkpoint_dir`` resumes after its last finished round and, because every round is seeded from
``(seed, round)``, ends with the same masks and metrics as an uninterrupted run.

:func:`prune_in_rounds` is the same loop for a model that is already trained (``snnprune prune
--rounds``): no dense training, each round fine-tunes the current weights (or rewinds them to a
given point), with the same round files and resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint
from .distributed import is_main_process
from .masks import get_masks, load_masked_state_dict, mask_spec, refresh, sparsity
from .pruner import Pruner
from .train import TrainConfig, evaluate, fit, seed_loader
from .utils import rng_state, set_rng_state

log = logging.getLogger(__name__)

METHODS: dict[str, dict[str, Any]] = {
    "IMP": {"criterion": "magnitude"},
    "SF-IMP-1": {"criterion": "prob"},
    "SF-IMP-2": {"criterion": "prob", "dynamic": ("encoding", "classifier")},
    "random": {"criterion": "random"},
}


def method_settings(method: str) -> dict[str, Any]:
    """Pruner settings of a named method, or ``{"criterion": method}`` for a registered criterion."""
    if method in METHODS:
        return dict(METHODS[method])
    from . import criteria

    criteria.get(method)  # raises with the list of names
    return {"criterion": method}


@dataclass
class LotteryConfig:
    """Hyper-parameters of one IMP run (the experiment is named by them).

    Attributes:
        method: ``IMP``, ``SF-IMP-1``, ``SF-IMP-2``, ``random`` or a criterion name.
        rounds: K pruning rounds.
        rate: p, fraction of the remaining weights removed per round.
        epochs: E, epochs of the initial (dense) training.
        rewind_epoch: R, epoch whose weights the survivors rewind to (0: initialisation).
        epochs_per_round: N, retraining epochs after each pruning step.
        scope: ``layer`` or ``global``.
        calib_batches: calibration batches for the statistics of each step.
        train: training hyper-parameters (:class:`snnprune.train.TrainConfig`).
        seed: base seed; round k trains with seed ``seed + k``.
    """

    method: str = "IMP"
    rounds: int = 5
    rate: float = 0.25
    epochs: int = 15
    rewind_epoch: int = 1
    epochs_per_round: int = 10
    scope: str = "layer"
    calib_batches: int | None = 8
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.rounds < 0:
            raise ValueError("rounds must be >= 0")
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"rate must be in (0, 1), got {self.rate}")
        if not 0 <= self.rewind_epoch <= self.epochs:
            raise ValueError(f"rewind_epoch must be in [0, epochs={self.epochs}], got {self.rewind_epoch}")
        if self.epochs < 1 or self.epochs_per_round < 1:
            raise ValueError("epochs and epochs_per_round must be >= 1")
        method_settings(self.method)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- rewind points


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copy of every parameter and buffer, keyed by its unmasked name (``fc.weight``, not
    ``fc.weight_orig``), masks left out: the rewind point theta_rewind."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        out[key[: -len("_orig")] if key.endswith("_orig") else key] = value.detach().clone()
    return out


@torch.no_grad()
def rewind(model: nn.Module, point: dict[str, Tensor]) -> None:
    """Restore ``point`` (parameters and BN running statistics) keeping the current masks.

    Static masks then zero the pruned weights again; dynamic layers keep the rewind values of
    pruned weights, which can return when the mask is recomputed.
    """
    state = model.state_dict()
    for key, value in point.items():
        target = state.get(key + "_orig") if (key + "_orig") in state else state.get(key)
        if target is None:
            raise KeyError(f"rewind point has {key!r}, which the model lacks")
        target.copy_(value)
    refresh(model)


# ---------------------------------------------------------------------------- the run


@dataclass
class LotteryResult:
    """Per-round metrics (round 0 = dense) and the final masks."""

    rounds: list[dict[str, Any]]
    masks: dict[str, Tensor]
    resumed_from: int | None = None


RoundCallback = Callable[[dict[str, Any]], None]


def run(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    config: LotteryConfig,
    *,
    calib_loader: Iterable[Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    ddp: bool = False,
    progress: bool | None = None,
    on_round_end: RoundCallback | None = None,
    pruner_options: dict[str, Any] | None = None,
) -> LotteryResult:
    """Run Algorithm 1 on ``model`` in place and return the per-round metrics.

    Args:
        model: a freshly initialised model (its initial weights are the R = 0 rewind point).
        train_loader, test_loader: batches ``(x, y)``; ``calib_loader`` (default: the train loader)
            feeds the statistics of each pruning step.
        config: :class:`LotteryConfig`.
        checkpoint_dir: folder for ``round_XXX.pt``; an existing run there is resumed.
        arch, arch_kwargs: how to rebuild a non-zoo model (see :func:`snnprune.checkpoint.save`).
        ddp: train under DistributedDataParallel (launch with torchrun); statistics all-reduce, so
            every rank computes identical masks. Only rank 0 writes checkpoints.
        on_round_end: called with each round's metrics dict.
        pruner_options: extra :class:`snnprune.Pruner` keyword arguments (``exclude``, ...).
    """
    cfg = config
    calib = calib_loader if calib_loader is not None else train_loader
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    settings = {**method_settings(cfg.method), **(pruner_options or {})}
    pruner = Pruner(model, scope=cfg.scope, calib_batches=cfg.calib_batches, seed=cfg.seed,
                    progress=progress, **settings)
    rank0 = is_main_process()
    train_kw = {"device": device, "ddp": ddp, "progress": progress}

    history: list[dict[str, Any]] = []
    optimizer_state: dict[str, Any] = {}  # state of the round's optimizer at its end, for the checkpoint

    def keep_optimizer(optimizer: torch.optim.Optimizer) -> None:
        optimizer_state.clear()
        optimizer_state.update(optimizer.state_dict())

    point: dict[str, Tensor] | None = None
    start_round = 0
    resumed = _latest_round(folder) if folder is not None else None
    if resumed is not None:
        point, start_round, history = _resume(model, pruner, resumed)
        start_round += 1
        log.info("resuming from %s (round %d done)", resumed, start_round - 1)
    else:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        seed_loader(train_loader, cfg.seed)
        if cfg.rewind_epoch == 0:
            point = snapshot(model)

        def keep_rewind_point(epoch: int, _: dict[str, Any]) -> None:
            nonlocal point
            if epoch + 1 == cfg.rewind_epoch:
                point = snapshot(model)

        started = time.perf_counter()
        epochs = fit(model, train_loader, None, cfg.train, epochs=cfg.epochs, seed=cfg.seed, on_train_end=keep_optimizer,
                     on_epoch_end=keep_rewind_point, **train_kw)
        history.append(_round_record(model, test_loader, cfg, 0, epochs, started, device, pruner))
        _finish_round(folder, rank0, model, point, pruner, optimizer_state, history, cfg, arch, arch_kwargs,
                      on_round_end)

    assert point is not None
    for k in range(start_round if resumed is not None else 1, cfg.rounds + 1):
        started = time.perf_counter()
        # The calibration batches must depend on (seed, round) alone: by default ``calib`` is the
        # train loader, whose generator otherwise carries the state left by the previous round's
        # training, which a resumed run does not have.
        seed_loader(calib, cfg.seed + k)
        pruner.step(cfg.rate, data=calib)
        rewind(model, point)
        seed_loader(train_loader, cfg.seed + k)
        epochs = fit(model, train_loader, None, cfg.train, epochs=cfg.epochs_per_round, seed=cfg.seed + k,
                     on_train_end=keep_optimizer, **train_kw)
        history.append(_round_record(model, test_loader, cfg, k, epochs, started, device, pruner))
        _finish_round(folder, rank0, model, point, pruner, optimizer_state, history, cfg, arch, arch_kwargs,
                      on_round_end)
    return LotteryResult(history, get_masks(model), resumed_from=start_round - 1 if resumed is not None else None)


class RoundSettingsError(ValueError):
    """A round folder holds an unfinished :func:`prune_in_rounds` run with other settings."""


@dataclass
class RoundsResult:
    """What :func:`prune_in_rounds` did: one record per finished round and the dense accuracy."""

    rounds: list[dict[str, Any]]
    accuracy_before: float
    resumed_from: int | None = None


def prune_in_rounds(
    model: nn.Module,
    pruner: Pruner,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    *,
    amount: float,
    rounds: int,
    train: TrainConfig,
    seed: int = 0,
    rewind_point: dict[str, Tensor] | None = None,
    net: nn.Module | None = None,
    checkpoint_dir: str | Path | None = None,
    settings: dict[str, Any] | None = None,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    ddp: bool = False,
    progress: bool | None = None,
    on_resume: Callable[[Path, int], None] | None = None,
    on_round_end: RoundCallback | None = None,
) -> RoundsResult:
    """Prune an already trained ``model`` in ``rounds`` rounds, retraining after each; in place.

    Round k (1..K): remove ``amount`` of the remaining weights with ``pruner`` (calibration batches
    from ``train_loader`` seeded with ``seed + k``), evaluate (``accuracy_pruned``), restore
    ``rewind_point`` if given (see :func:`rewind`), train ``train.epochs`` epochs with seed ``seed + k``,
    evaluate (``accuracy``). Round files ``checkpoint_dir/round_XXX.pt`` (model with masks, pruner
    state, records, ``settings``) are written atomically; an existing one is resumed after its round,
    with the same results as an uninterrupted run, provided ``settings`` are equal.

    Args:
        model, pruner: the model and the :class:`~snnprune.Pruner` over it.
        net: the module trained and evaluated, if not ``model`` (e.g. a wrapper that runs a custom
            forward); it must share ``model``'s parameters.
        amount: fraction of the remaining weights removed per round.
        settings: JSON-able description of the run stored in the round files; resuming a folder whose
            files hold other settings raises :class:`RoundSettingsError` (a ``ValueError``).
        on_resume: called with (round file, last finished round) before resuming.
        on_round_end: called with each round's record (``round, sparsity, accuracy_pruned, accuracy,
            seconds``).
    """
    net = net if net is not None else model
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    rank0 = is_main_process()
    train_kw = {"device": device, "ddp": ddp, "progress": progress}
    records: list[dict[str, Any]] = []
    start, resumed_from = 1, None
    last = _latest_round(folder) if folder is not None else None
    if last is not None:
        saved = checkpoint.load(last, map_location="cpu")
        if saved.metadata.get("prune_in_rounds") != settings:
            raise RoundSettingsError(f"{folder} holds an unfinished run with other settings "
                             f"({saved.metadata.get('prune_in_rounds')}); rerun with the same options to resume "
                             "it, or delete the folder to start afresh")
        load_masked_state_dict(model, saved.model.state_dict(), mask_spec(saved.model))
        pruner.load_state_dict(saved.extra["pruner"])
        records = list(saved.extra["records"])
        accuracy_before = float(saved.extra["accuracy_before"])
        amount = float(saved.extra["amount"])
        resumed_from = int(saved.extra["round"])
        start = resumed_from + 1
        if on_resume is not None:
            on_resume(last, resumed_from)
    else:
        accuracy_before = evaluate(net, test_loader, device=device, progress=progress)["accuracy"]
    for k in range(start, rounds + 1):
        started = time.perf_counter()
        seed_loader(train_loader, seed + k)  # calibration batches depend on (seed, k) alone
        pruner.step(amount, data=train_loader)
        accuracy_pruned = evaluate(net, test_loader, device=device, progress=progress)["accuracy"]
        if rewind_point is not None:
            rewind(model, rewind_point)
        fit(net, train_loader, None, train, seed=seed + k, **train_kw)
        record = {"round": k, "sparsity": pruner.sparsity(), "accuracy_pruned": accuracy_pruned,
                  "accuracy": evaluate(net, test_loader, device=device, progress=progress)["accuracy"],
                  "seconds": time.perf_counter() - started}
        records.append(record)
        if folder is not None and rank0:
            folder.mkdir(parents=True, exist_ok=True)
            checkpoint.save(model, folder / f"round_{k:03d}.pt", arch=arch, arch_kwargs=arch_kwargs, history=records,
                            metadata={"prune_in_rounds": settings},
                            extra={"round": k, "pruner": pruner.state_dict(), "records": records,
                                   "accuracy_before": accuracy_before, "amount": amount})
        if on_round_end is not None:
            on_round_end(record)
    return RoundsResult(records, accuracy_before, resumed_from)


def _round_record(model: nn.Module, test_loader: Iterable[Any], cfg: LotteryConfig, k: int,
                  epochs: list[dict[str, Any]], started: float, device: Any, pruner: Pruner) -> dict[str, Any]:
    metrics = evaluate(model, test_loader, device=device, loss=cfg.train.loss, encoder=cfg.train.encoder)
    return {
        "method": cfg.method,
        "seed": cfg.seed,
        "round": k,
        "sparsity": sparsity(model),
        "pruned_sparsity": pruner.sparsity(),
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "train_loss": epochs[-1]["train_loss"] if epochs else float("nan"),
        "criteria": sorted({r["criterion"] for r in pruner.report_rows()}) if k else [],
        "seconds": time.perf_counter() - started,
    }


def _finish_round(folder: Path | None, rank0: bool, model: nn.Module, point: dict[str, Tensor] | None,
                  pruner: Pruner, optimizer_state: dict[str, Any], history: list[dict[str, Any]], cfg: LotteryConfig, arch: str | None,
                  arch_kwargs: dict[str, Any] | None, on_round_end: RoundCallback | None) -> None:
    record = history[-1]
    log.info("round %d: sparsity %.3f accuracy %.4f", record["round"], record["sparsity"], record["accuracy"])
    if folder is not None and rank0:
        checkpoint.save(
            model, folder / f"round_{record['round']:03d}.pt", arch=arch, arch_kwargs=arch_kwargs,
            history=history, metadata={"lottery": _jsonable(cfg.to_dict())},
            extra={"round": record["round"], "rewind_point": point, "pruner": pruner.state_dict(), "rng": rng_state(),
                   "optimizer": optimizer_state},
        )
    if on_round_end is not None:
        on_round_end(record)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_jsonable(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _latest_round(folder: Path) -> Path | None:
    files = sorted(folder.glob("round_[0-9][0-9][0-9].pt")) if folder.is_dir() else []
    return files[-1] if files else None


def _resume(model: nn.Module, pruner: Pruner, path: Path) -> tuple[dict[str, Tensor], int, list[dict[str, Any]]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    load_masked_state_dict(model, payload["state_dict"], payload["masks"])
    extra = payload["extra"]
    pruner.load_state_dict(extra["pruner"])
    set_rng_state(extra["rng"])
    device = next(model.parameters()).device
    point = {k: v.to(device) for k, v in extra["rewind_point"].items()}
    return point, int(extra["round"]), list(payload["history"])
