"""``magnitude``: |w|, the IMP baseline."""

from torch import Tensor

from .base import LayerContext, register


@register("magnitude")
def magnitude(ctx: LayerContext) -> Tensor:
    """|w|: smallest weights pruned first (IMP)."""
    return ctx.weight.detach().abs()
