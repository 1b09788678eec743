"""Scores of every prunable weight under a criterion: statistics -> scores (METHOD.md section 5)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import criteria
from .masks import is_dynamic, is_masked, mask_of, prunable_layers, weight_of
from .stats import SpikeStats, collect_stats
from .stepping import ForwardFn


@dataclass
class LayerScore:
    """Scores of one weight tensor and how they were obtained.

    ``scores``: shaped like the weight (lower = pruned first); ``criterion``: the criterion that
    produced them (``magnitude`` when the requested one fell back); ``note``: why it fell back.
    """

    scores: Tensor
    criterion: str
    note: str = ""


def scoring_weight(module: nn.Module) -> Tensor:
    """The weight a criterion sees: effective (masked) for static masks, dense for dynamic ones."""
    if is_masked(module) and not is_dynamic(module):
        return weight_of(module) * mask_of(module)
    return weight_of(module)


def score_layers(
    model: nn.Module,
    criterion: str | criteria.Criterion = "magnitude",
    *,
    stats: SpikeStats | None = None,
    data: Iterable[Any] | None = None,
    layers: Iterable[str] | None = None,
    seed: int = 0,
    num_steps: int | None = None,
    forward: ForwardFn | None = None,
    max_batches: int | None = None,
    encoder: str = "direct",
    progress: bool | None = None,
    **options: Any,
) -> dict[str, LayerScore]:
    """Score every prunable layer (or those named in ``layers``), keyed by module name.

    A criterion that needs statistics gets them from ``stats`` or collects them from ``data``
    (``max_batches`` batches). Layers it cannot score fall back to magnitude, with the reason.
    """
    crit = criterion if isinstance(criterion, criteria.Criterion) else criteria.get(criterion)
    if crit.needs_stats and stats is None:
        if data is None:
            raise ValueError(f"criterion {crit.name!r} needs spike statistics: pass stats= or data=")
        stats = collect_stats(model, data, num_steps=num_steps, forward=forward, max_batches=max_batches,
                              encoder=encoder, progress=progress)
    modules = dict(model.named_modules())
    selected = prunable_layers(model)
    if layers is not None:
        wanted = set(layers)
        selected = {n: m for n, m in selected.items() if n in wanted}
    generator = torch.Generator().manual_seed(seed)
    magnitude = criteria.get("magnitude")
    result: dict[str, LayerScore] = {}
    for name, module in selected.items():
        info = stats.structure.layers.get(name) if stats is not None else None
        bn = modules.get(info.bn) if info is not None and info.bn else None
        ctx = criteria.LayerContext(name, module, scoring_weight(module), info, stats, bn, options, generator)
        try:
            result[name] = LayerScore(crit(ctx).detach(), crit.name)
        except criteria.Fallback as why:
            result[name] = LayerScore(magnitude(ctx).detach(), "magnitude", f"{crit.name} -> magnitude: {why}")
    return result


def scores(
    model: nn.Module,
    criterion: str | criteria.Criterion = "magnitude",
    *,
    stats: SpikeStats | None = None,
    data: Iterable[Any] | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """Score tensors keyed by parameter name (``"conv1.weight"``), each shaped like the weight.

    See :func:`score_layers` for the options (``layers``, ``seed``, ``num_steps``, ``forward``,
    ``max_batches`` and criterion options such as ``magnitude_roles``).
    """
    return {f"{n}.weight": s.scores for n, s in score_layers(model, criterion, stats=stats, data=data, **options).items()}
