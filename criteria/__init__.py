"""Pruning criteria, one small module each, behind a registry.

A criterion maps one prunable layer (and, if it needs them, the model's spike statistics) to a
score tensor shaped like the layer's weight; **lower scores are pruned first**.

Register your own without editing snnprune::

    from snnprune.criteria import register

    @register("my-criterion", needs_stats=True)
    def my_score(ctx):            # ctx: snnprune.criteria.LayerContext
        return ctx.weight.abs() * ctx.input_rate_per_weight()

Built in: ``magnitude`` (|w|), ``random`` (seeded uniform), ``prob`` (the paper's Eq. 12-13) and
``prob-empirical`` (Eq. 12 with a histogram density).
"""

from __future__ import annotations

from . import magnitude, prob, prob_empirical, random_scores  # noqa: E402,F401,I001  (registers the built-ins)
from .base import Criterion, Fallback, LayerContext, available, get, register

__all__ = ["Criterion", "Fallback", "LayerContext", "available", "get", "register"]
