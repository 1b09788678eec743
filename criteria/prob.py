"""``prob``: the paper's spike-flip probability of pruning each weight (METHOD.md section 5).

    P_ij ~= E(|u' - u|) * Normal(0 | mu_j - u_th, var_j)                         (Eq. 12)
    E(|u' - u|) = |w_ij| * rate_i * |gamma_j| / sqrt(sigma_Bj^2 + eps_BN)         (Eq. 13, S.43)

rate_i: firing rate of input channel i; gamma_j, sigma_Bj^2, eps_BN: the paired BatchNorm's
weight, running variance and eps (factor 1 without BN); mu_j, var_j: mean and variance of the
membrane potential u of output channel j. Every kernel tap of a (j, i) pair shares the channel
factors and keeps its own |w| (section 7).

Options (keyword arguments of :func:`snnprune.scores`):
    magnitude_roles: roles scored by magnitude instead, default ``("encoding", "classifier")`` as
        in SF-IMP-1; pass ``()`` to score every paired layer by P.
    var_floor: floor of var_j (default 1e-6), so a constant potential gives a finite density.
"""

from __future__ import annotations

import torch
from torch import Tensor

from snnprune.stats import gaussian_density_at_threshold

from .base import Fallback, LayerContext, register

DEFAULT_MAGNITUDE_ROLES = ("encoding", "classifier")


def bn_factor(ctx: LayerContext) -> Tensor:
    """|gamma_j| / sqrt(running_var_j + eps) of the paired BatchNorm, float64 ``[C_out]`` (ones without)."""
    out = ctx.weight.shape[0]
    bn = ctx.bn
    if bn is None:
        return torch.ones(out, dtype=torch.float64, device=ctx.weight.device)
    gamma = bn.weight.detach().double().abs() if bn.weight is not None else 1.0
    if bn.running_var is None:
        raise Fallback(f"BatchNorm {ctx.info.bn} tracks no running variance")
    factor = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return torch.as_tensor(factor, dtype=torch.float64).expand(out).to(ctx.weight.device)


def check_applicable(ctx: LayerContext) -> None:
    """Raise :class:`Fallback` when the layer must be scored by magnitude."""
    roles = ctx.options.get("magnitude_roles", DEFAULT_MAGNITUDE_ROLES)
    if ctx.info is None or ctx.stats is None:
        raise Fallback("no spike statistics")
    if ctx.info.role in roles:
        raise Fallback(f"{ctx.info.role} layer: magnitude by default (SF-IMP-1)")
    if ctx.info.neuron is None or ctx.membrane is None:
        raise Fallback(ctx.info.note or "feeds no spiking neuron")


def expected_change(ctx: LayerContext, scale: Tensor | None = None) -> Tensor:
    """E(|u' - u|) of Eq. 13 for every weight, float64, shaped like the weight, optionally times a
    per-output-channel ``scale [C_out]``. The channel factors are multiplied together first, so the
    weight-sized tensor is written once."""
    per_out = bn_factor(ctx) if scale is None else bn_factor(ctx) * scale.to(ctx.weight.device)
    factor = ctx.input_rate_per_weight() * ctx.per_output(per_out)
    return ctx.weight.detach().to(torch.float64, copy=True).abs_().mul_(factor)  # a copy: never the weight


@register("prob", needs_stats=True)
def prob(ctx: LayerContext) -> Tensor:
    """P_ij of Eq. 12 with a Gaussian fit of the membrane potential density at u_th."""
    check_applicable(ctx)
    density = gaussian_density_at_threshold(ctx.membrane, ctx.options.get("var_floor", 1e-6))
    return expected_change(ctx, density)
