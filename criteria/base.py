"""The criterion interface and its registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from snnprune.stats import MembraneStats, SpikeStats
    from snnprune.structure import LayerInfo


class Fallback(Exception):
    """Raised by a criterion that cannot score a layer; the layer is scored by magnitude instead and
    the message is reported (e.g. "classifier: magnitude by default", "feeds no spiking neuron")."""


@dataclass
class LayerContext:
    """Everything a criterion may read about one prunable layer.

    Attributes:
        name: module name; the scored tensor is ``name + ".weight"``.
        module: the layer (``nn.Linear`` or ``nn.ConvNd``).
        weight: the weight to score, ``[C_out, C_in/groups, *kernel]`` or ``[out, in]``: the masked
            (effective) weight for static masks, the dense ``weight_orig`` for dynamic ones.
        info: the layer's pairing (:class:`snnprune.structure.LayerInfo`), or None without stats.
        stats: the model's :class:`snnprune.stats.SpikeStats`, or None.
        bn: the BatchNorm module that normalises the output, or None.
        options: keyword options given to :func:`snnprune.scores`.
        generator: a seeded ``torch.Generator`` (for stochastic criteria).
    """

    name: str
    module: nn.Module
    weight: Tensor
    info: LayerInfo | None = None
    stats: SpikeStats | None = None
    bn: nn.Module | None = None
    options: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None

    @property
    def membrane(self) -> MembraneStats | None:
        return self.stats.neuron_of(self.name) if self.stats is not None else None

    def input_rate_per_weight(self) -> Tensor:
        """Input channel rate broadcast to one value per ``(out, in)`` pair: ``[C_out, C_in/groups]``
        followed by singleton kernel axes, float64. Handles grouped and depthwise convolutions."""
        if self.stats is None or self.name not in self.stats.inputs:
            raise Fallback("no input statistics")
        rate = self.stats.input_rate(self.name).to(self.weight.device)
        out_ch, in_per_group = self.weight.shape[:2]
        groups = getattr(self.module, "groups", 1)
        if rate.numel() != in_per_group * groups:
            raise Fallback(f"input has {rate.numel()} channels, weight expects {in_per_group * groups}")
        group_of_out = torch.arange(out_ch, device=rate.device) // (out_ch // groups)
        rows = rate.reshape(groups, in_per_group).index_select(0, group_of_out)  # row j: inputs of j's group
        return rows.reshape(out_ch, in_per_group, *([1] * (self.weight.dim() - 2)))

    def per_output(self, values: Tensor) -> Tensor:
        """Reshape a per-output-channel ``[C_out]`` tensor to broadcast against the weight."""
        return values.to(self.weight.device).reshape(-1, *([1] * (self.weight.dim() - 1)))


ScoreFn = Callable[[LayerContext], Tensor]


@dataclass
class Criterion:
    """A registered criterion: ``fn(ctx) -> scores`` shaped like ``ctx.weight``."""

    name: str
    fn: ScoreFn
    needs_stats: bool = False
    description: str = ""

    def __call__(self, ctx: LayerContext) -> Tensor:
        scores = self.fn(ctx)
        if scores.shape != ctx.weight.shape:
            raise ValueError(f"criterion {self.name!r} returned shape {tuple(scores.shape)} for "
                             f"{ctx.name}.weight of shape {tuple(ctx.weight.shape)}")
        return scores


_REGISTRY: dict[str, Criterion] = {}


def register(name: str, *, needs_stats: bool = False, description: str = "") -> Callable[[ScoreFn], ScoreFn]:
    """Decorator registering ``fn(ctx) -> Tensor`` as criterion ``name`` (replacing any previous one)."""

    def decorate(fn: ScoreFn) -> ScoreFn:
        lines = (fn.__doc__ or "").strip().splitlines()
        doc = description or (lines[0] if lines else "")
        _REGISTRY[name] = Criterion(name, fn, needs_stats, doc)
        return fn

    return decorate


def get(name: str) -> Criterion:
    """The criterion registered as ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; known criteria: {', '.join(available())}") from None


def available() -> list[str]:
    """Names of every registered criterion."""
    return sorted(_REGISTRY)
