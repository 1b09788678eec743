"""Architectures for checkpoint tests, importable as ``helpers_arch`` (pytest puts tests/ on sys.path).

``tiny_snn`` stands for a user's own model factory, given to ``snnprune.checkpoint.load`` as
``arch="helpers_arch:tiny_snn"``; the others misbehave on purpose.
"""

from __future__ import annotations

import snntorch as snn
import torch
from torch import Tensor, nn


class TinySNN(nn.Module):
    """Linear -> Leaky -> Linear, run for ``num_steps`` steps; returns ``[T, B, outputs]``."""

    def __init__(
        self, hidden: int = 8, inputs: int = 4, outputs: int = 2, num_steps: int = 3
    ) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.fc1 = nn.Linear(inputs, hidden)
        self.lif = snn.Leaky(beta=0.9, init_hidden=False)
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, x: Tensor) -> Tensor:
        current = self.fc1(x)
        mem = torch.zeros_like(current)
        outputs = []
        for _ in range(self.num_steps):
            spk, mem = self.lif(current, mem)
            outputs.append(self.fc2(spk))
        return torch.stack(outputs)


def tiny_snn(hidden: int = 8) -> nn.Module:
    """A small snnTorch network (not built by the zoo, so it has no ``arch_kwargs``)."""
    return TinySNN(hidden=hidden)


def broken_factory(**kwargs: object) -> nn.Module:
    """A factory that always fails."""
    raise ValueError("this factory is broken on purpose")


def not_a_module() -> int:
    """A factory that returns something other than a module."""
    return 42


NOT_CALLABLE = 3
