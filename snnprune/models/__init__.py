"""The snnprune model zoo: snnTorch ``snn.Leaky`` networks with BatchNorm after every hidden layer.

``build(name, **kwargs)`` makes a model; ``available()`` lists the names. Every model takes a static
batch ``[B, *input_shape]`` or a temporal batch ``[T, B, *input_shape]`` and returns ``[T, B, classes]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .base import SpikingNet, lif_step, make_lif
from .convnet import SpikingConvNet
from .mlp import SpikingMLP
from .resnet import SpikingResNet19
from .vgg import SpikingVGG16

_ZOO: dict[str, Callable[..., SpikingNet]] = {
    "mlp": SpikingMLP,
    "convnet": SpikingConvNet,
    "vgg16": SpikingVGG16,
    "resnet19": SpikingResNet19,
}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(_ZOO)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` with keyword arguments ``kwargs`` (JSON-able, so checkpoints can
    rebuild it: the checkpoint stores ``arch="snnprune.models:build"`` and ``{"name": name, **kwargs}``).
    """
    try:
        factory = _ZOO[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}") from None
    model = factory(**kwargs)
    model.arch_kwargs = {"name": name, **kwargs}
    return model


__all__ = [
    "SpikingConvNet",
    "SpikingMLP",
    "SpikingNet",
    "SpikingResNet19",
    "SpikingVGG16",
    "available",
    "build",
    "lif_step",
    "make_lif",
]
