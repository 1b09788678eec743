"""Training and evaluation of SNNs by backpropagation through time with surrogate gradients.

The model maps a batch to its output record ``[T, B, classes]`` (see :mod:`snnprune.models`). The
loss is cross-entropy on the record summed over time: on the mean output current for a non-firing
readout (``loss="mean"``) or on the spike count for a spiking output layer (``loss="count"``).
Predictions are the arg-max of the record summed over time.

``fit`` works on any device, on masked models (masks stay in force: see :mod:`snnprune.masks`) and
under ``torch.distributed`` (wraps the model in DistributedDataParallel when ``ddp=True``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .utils import progress_bar, resolve_device, seed_everything

Batch = tuple[Tensor, Tensor]
EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training schedule. Defaults suit the digits MLP.

    The paper's CIFAR setting is ``optimizer="sgd", lr=0.3, momentum=0.9, weight_decay=5e-4,
    schedule="cosine"``.
    """

    epochs: int = 15
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    loss: str = "mean"  # mean | count
    grad_clip: float | None = None
    amp: bool = False
    encoder: str = "direct"  # direct | rate
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters of ``model`` (``weight_orig`` for masked layers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    name = cfg.optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or adamw")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule over ``steps`` iterations: cosine annealing to zero, or constant."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, steps) / max(steps, 1)))
        )
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or constant")


def encode(x: Tensor, encoder: str, num_steps: int | None, generator: torch.Generator | None = None) -> Tensor:
    """Apply the input encoder: ``direct`` passes the static batch, ``rate`` makes ``[T, B, ...]`` spikes."""
    if encoder == "direct":
        return x
    if encoder == "rate":
        if num_steps is None:
            raise ValueError("rate encoding needs num_steps (the model has no num_steps attribute)")
        probs = x.clamp(0, 1).unsqueeze(0).expand(num_steps, *x.shape)
        return torch.bernoulli(probs, generator=generator)
    raise ValueError(f"unknown encoder {encoder!r}; choose direct or rate")


def output_loss(record: Tensor, target: Tensor, kind: str = "mean") -> Tensor:
    """Cross-entropy on the output record ``[T, B, C]`` reduced over time (``mean`` or ``count``=sum)."""
    if kind == "mean":
        return F.cross_entropy(record.mean(0), target)
    if kind == "count":
        return F.cross_entropy(record.sum(0), target)
    raise ValueError(f"unknown loss {kind!r}; choose mean or count")


def predictions(record: Tensor) -> Tensor:
    """Class predictions ``[B]`` from the output record ``[T, B, C]``."""
    return record.sum(0).argmax(-1)


def seed_loader(loader: Iterable[Any], seed: int) -> None:
    """Make a loader's shuffling a function of ``seed`` alone (its generator or sampler seed), so a
    training run depends only on its own seed, not on how often the loader was iterated before."""
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "seed"):
        sampler.seed = seed


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    device: str | torch.device | None = None,
    loss: str = "mean",
    encoder: str = "direct",
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (in eval mode) over ``loader``.

    Under ``torch.distributed`` the sums are all-reduced, so every rank returns the global figures.
    """
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    num_steps = getattr(_unwrap(model), "num_steps", None)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
    for i, (x, y) in enumerate(progress_bar(loader, progress=progress, desc="eval")):
        if max_batches is not None and i >= max_batches:
            break
        x = encode(x, encoder, num_steps, gen).to(dev, non_blocking=True)
        y = y.to(dev, non_blocking=True)
        record = model(x)
        totals[0] += output_loss(record, y, loss).double() * y.numel()
        totals[1] += (predictions(record) == y).sum()
        totals[2] += y.numel()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    model.train(was_training)
    n = max(totals[2].item(), 1.0)
    return {"loss": totals[0].item() / n, "accuracy": totals[1].item() / n, "samples": int(totals[2].item())}


def train_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    cfg: TrainConfig,
    *,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; returns mean training loss and accuracy."""
    model.train()
    num_steps = getattr(_unwrap(model), "num_steps", None)
    loss_sum = correct = count = 0.0
    for x, y in progress_bar(loader, progress=progress, desc=desc):
        x = encode(x, cfg.encoder, num_steps, generator).to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, enabled=cfg.amp):
            record = model(x)
            loss = output_loss(record.float(), y, cfg.loss)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * y.numel()
        correct += (predictions(record.detach()) == y).sum().item()
        count += y.numel()
    return {"train_loss": loss_sum / max(count, 1), "train_accuracy": correct / max(count, 1)}


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    test_loader: Iterable[Batch] | None = None,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device | None = None,
    ddp: bool = False,
    progress: bool | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_train_end: Callable[[torch.optim.Optimizer], None] | None = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Train ``model`` in place and return the per-epoch history.

    Args:
        model: maps a batch to ``[T, B, classes]``.
        train_loader, test_loader: iterables of ``(x [B, ...], y [B])``.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields (``epochs=3``).
        device: ``"cpu"``, ``"cuda"``, ``None`` (CUDA if available).
        ddp: wrap in DistributedDataParallel (``torch.distributed`` must be initialised, e.g. by
            ``torchrun``); the loaders must then use a ``DistributedSampler``.
        progress: progress bars (``None``: only on an interactive terminal).
        on_epoch_end: called as ``on_epoch_end(epoch, record)`` after each epoch.
        on_train_end: called with the optimizer after the last epoch (e.g. to checkpoint its state).

    Returns:
        One dict per epoch: ``epoch, lr, train_loss, train_accuracy, [test_loss, test_accuracy], seconds``.
    """
    cfg = TrainConfig(**{**(config.to_dict() if config else {}), **overrides})
    dev = resolve_device(device)
    seed_everything(cfg.seed)
    seed_loader(train_loader, cfg.seed)
    model.to(dev)
    net: nn.Module = model
    if ddp:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = make_optimizer(model, cfg)
    steps = cfg.epochs * max(len(train_loader), 1) if hasattr(train_loader, "__len__") else cfg.epochs
    scheduler = make_scheduler(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler(dev.type) if cfg.amp and dev.type == "cuda" else None
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        start = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record.update(
            train_epoch(net, train_loader, optimizer, scheduler, cfg, device=dev, scaler=scaler,
                        generator=generator, progress=progress, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        )
        if ddp:  # DDP syncs buffers before each forward, so ranks end one BN update apart: align them
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        if test_loader is not None:
            metrics = evaluate(model, test_loader, device=dev, loss=cfg.loss, encoder=cfg.encoder, seed=cfg.seed)
            record.update(test_loss=metrics["loss"], test_accuracy=metrics["accuracy"])
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    if on_train_end is not None:
        on_train_end(optimizer)
    return history
