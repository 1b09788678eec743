"""``prob-empirical``: Eq. 12 with the density of u at u_th read from the histogram, not a Gaussian.

The theory only needs a bounded density near the threshold (Def. 3.1); this variant measures it.

Option ``bandwidth_bins`` (default 2): bins on each side of u_th in the box-kernel estimate.
"""

from __future__ import annotations

from torch import Tensor

from snnprune.stats import histogram_density_at_threshold

from .base import LayerContext, register
from .prob import check_applicable, expected_change


@register("prob-empirical", needs_stats=True)
def prob_empirical(ctx: LayerContext) -> Tensor:
    """P_ij of Eq. 12 with a histogram estimate of the membrane density at u_th."""
    check_applicable(ctx)
    density = histogram_density_at_threshold(ctx.membrane, ctx.options.get("bandwidth_bins", 2))
    return expected_change(ctx, density)
