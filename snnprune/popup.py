"""Edge-popup: finding sub-networks of an untrained SNN (METHOD.md section 4; strong LTH).

The weights stay at their random initial values and never train. Every prunable weight w_uv gets a
score s_uv; each forward pass uses only the weights whose |score| is in the top ``keep`` fraction
of their layer. **``keep`` is the fraction of weights KEPT** (the paper's k: "top-k% weights";
edge-popup's own code sometimes calls this the prune rate, with the opposite meaning).

Scores learn by a straight-through estimator: the top-k selection is treated as the identity in
the backward pass, so ``dL/ds_uv = dL/dW~_uv * w_uv``, which for a linear layer is
``sum_t dL/dI_v[t] * S_u[t] * w_uv``: the update of Eq. 11.

The mechanism is ``torch.nn.utils.parametrize``: ``layer.weight`` becomes
``frozen_weight * topk_mask(scores)`` with the scores as the only trainable tensors, so it works on
the zoo models and on any user snnTorch model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .masks import prunable_layers, set_mask
from .pruner import _matches, keep_top
from .train import TrainConfig, fit


class _TopK(torch.autograd.Function):
    """Forward: 0/1 mask of the top ``keep`` fraction of ``|scores|``. Backward: straight through."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, keep: float) -> Tensor:  # noqa: ANN401
        k = max(1, int(round(keep * scores.numel())))
        flat = scores.detach().abs().flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, k, sorted=False).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN401
        return grad, None


class PopupMask(nn.Module):
    """Parametrization ``W -> W * topk_mask(scores)``; ``scores`` shaped like the weight."""

    def __init__(self, weight: Tensor, keep: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.keep = keep
        scores = torch.empty_like(weight)
        fan_in = weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)  # kaiming-uniform-like scale, as edge-popup
        with torch.no_grad():
            scores.uniform_(-bound, bound, generator=generator)
        self.scores = nn.Parameter(scores)

    def mask(self) -> Tensor:
        return _TopK.apply(self.scores, self.keep)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask()


def attach(
    model: nn.Module,
    keep: float,
    *,
    exclude: Sequence[Any] = (),
    train_bn: bool = True,
    seed: int = 0,
) -> dict[str, PopupMask]:
    """Freeze every parameter of ``model`` and give each prunable layer popup scores.

    Args:
        keep: fraction of each layer's weights kept in every forward pass.
        exclude: layers left dense and frozen (names, glob patterns, types).
        train_bn: also train BatchNorm affine parameters (edge-popup uses non-affine BN; the
            default keeps the zoo's affine BN trainable so spikes stay in range. Pass False for the
            pure setting).
        seed: seed of the score initialisation.

    Returns:
        The parametrizations by module name.
    """
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    if train_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(True)
    attached = {}
    for name, module in prunable_layers(model).items():
        if _matches(name, module, exclude, {}):
            continue
        mask = PopupMask(module.weight.detach().cpu(), keep, generator).to(module.weight.device)
        parametrize.register_parametrization(module, "weight", mask)
        module.parametrizations.weight.original.requires_grad_(False)
        attached[name] = mask
    return attached


def to_masks(model: nn.Module) -> nn.Module:
    """Replace popup parametrizations by static snnprune masks (the found sub-network).

    The weights stay the untrained originals; the masks keep exactly the top-``keep`` weights.
    Returns ``model``.
    """
    for module in prunable_layers(model).values():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        popup = module.parametrizations.weight[0]
        scores = popup.scores.detach()
        keep = max(1, int(round(popup.keep * scores.numel())))
        mask = keep_top(scores.abs(), torch.zeros_like(scores), torch.ones_like(scores, dtype=torch.bool), keep)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        set_mask(module, mask)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def search(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any] | None,
    keep: float,
    config: TrainConfig | None = None,
    *,
    exclude: Sequence[Any] = (),
    train_bn: bool = True,
    seed: int = 0,
    **fit_kwargs: Any,
) -> list[dict[str, Any]]:
    """Edge-popup search: attach scores, train them (weights frozen), convert to masks.

    Defaults follow the paper (SGD, momentum 0.9, weight decay 5e-4, cosine, lr 0.3) unless
    ``config`` / keyword overrides say otherwise. Returns the training history; ``model`` ends with
    static masks holding the found sub-network of untrained weights.
    """
    cfg = config or TrainConfig(optimizer="sgd", lr=0.3, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    attach(model, keep, exclude=exclude, train_bn=train_bn, seed=seed)
    history = fit(CachedParametrizations(model), train_loader, test_loader, cfg, seed=seed, **fit_kwargs)
    to_masks(model)
    return history


class CachedParametrizations(nn.Module):
    """Wraps a model so each forward computes every popup mask once, not once per time step.

    (``torch.nn.utils.parametrize.cached``; gradients still flow to the scores.)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_steps = getattr(model, "num_steps", None)

    def forward(self, x: Tensor) -> Tensor:
        with parametrize.cached():
            return self.model(x)
