"""snnprune: prune snnTorch spiking neural networks with spike-probability criteria.

Data flows one way: model + data -> statistics -> scores -> masks.

    import snnprune
    stats = snnprune.collect_stats(model, calib_loader)          # SpikeStats
    scores = snnprune.scores(model, "prob", stats=stats)         # {"fc1.weight": Tensor}
    pruner = snnprune.Pruner(model, criterion="prob")
    pruner.step(0.25, data=calib_loader)                         # prune 25% of what remains
    print(pruner.report())
"""

from collections.abc import Iterable
from typing import Any

import torch

from . import criteria, masks, models
from .masks import make_permanent
from .pruner import Pruner
from .scoring import score_layers, scores
from .stats import SpikeStats, collect_stats
from .stepping import ForwardFn
from .structure import ModelStructure, discover

__version__ = "0.1.0"


def describe(
    model: "torch.nn.Module",
    data: "torch.Tensor | Iterable[Any]",
    *,
    num_steps: int | None = None,
    forward: "ForwardFn | None" = None,
) -> str:
    """The layer -> BatchNorm -> spiking neuron pairing of ``model`` as a text table.

    ``data`` is a batch ``[B, ...]`` or an iterable of batches (the first one is used).
    """
    batch = data if isinstance(data, torch.Tensor) else next(iter(data))
    batch = batch[0] if isinstance(batch, (tuple, list)) else batch
    batch = batch.to(next(model.parameters()).device)
    return discover(model, batch[:2], num_steps=num_steps, forward=forward).table()


__all__ = [
    "ModelStructure",
    "Pruner",
    "SpikeStats",
    "collect_stats",
    "criteria",
    "describe",
    "discover",
    "make_permanent",
    "masks",
    "models",
    "score_layers",
    "scores",
]
