"""Fully connected SNN: Flatten -> [Linear -> BatchNorm1d -> LIF] x depth -> Linear readout."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .base import NeuronState, SpikingNet, as_shape, lif_step, make_lif


class SpikingMLP(SpikingNet):
    """Multi-layer perceptron of LIF neurons.

    Args:
        input_shape: shape of one sample, e.g. ``(1, 8, 8)`` for digits; flattened internally.
        hidden: width of each hidden layer.
        num_classes: number of outputs.
        num_steps: T, steps per static input.
        beta, threshold: LIF decay and firing threshold u_th.
        spiking_output: if True a LIF follows the classifier and the output record holds spikes
            ``[T, B, classes]``; otherwise (default) the record holds the classifier's output current
            at each step (a non-firing readout).
    """

    def __init__(
        self,
        input_shape: int | Sequence[int] = (1, 8, 8),
        hidden: Sequence[int] = (128, 128),
        num_classes: int = 10,
        num_steps: int = 8,
        beta: float = 0.5,
        threshold: float = 1.0,
        spiking_output: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape)
        self.num_steps = num_steps
        self.num_classes = num_classes
        self.flatten = nn.Flatten()
        widths = [math.prod(self.input_shape), *hidden]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:])
        self.lifs = nn.ModuleList(make_lif(beta, threshold) for _ in widths[1:])
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.lif_out = make_lif(beta, threshold) if spiking_output else None

    def step(self, x_t: Tensor, state: NeuronState) -> Tensor:
        h = self.flatten(x_t)
        for fc, bn, lif in zip(self.fcs, self.bns, self.lifs):
            h = lif_step(lif, bn(fc(h)), state)
        out = self.classifier(h)
        return lif_step(self.lif_out, out, state) if self.lif_out is not None else out
