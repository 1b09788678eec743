"""``random``: seeded uniform scores, the chance baseline."""

import torch
from torch import Tensor

from .base import LayerContext, register


@register("random")
def random_scores(ctx: LayerContext) -> Tensor:
    """Uniform [0, 1) scores from the seeded generator (``seed`` option)."""
    scores = torch.rand(ctx.weight.shape, generator=ctx.generator, dtype=torch.float64)
    return scores.to(ctx.weight.device)
