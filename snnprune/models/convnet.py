"""Small convolutional SNN: [Conv -> BatchNorm2d -> LIF -> MaxPool] blocks, then an MLP head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import NeuronState, SpikingNet, as_shape, lif_step, make_lif


class SpikingConvNet(SpikingNet):
    """Conv-BN-LIF blocks, each followed by 2x2 max pooling while the map is at least 2x2.

    Args:
        input_shape: ``(C, H, W)`` of one sample.
        channels: output channels of each conv block (3x3 kernels, padding 1).
        hidden: width of the hidden fully connected layer (Linear -> BN -> LIF); 0 for none.
        num_classes, num_steps, beta, threshold, spiking_output: as :class:`SpikingMLP`.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        channels: Sequence[int] = (16, 32),
        hidden: int = 128,
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
        c, h, w = self.input_shape
        self.convs, self.bns, self.lifs, self.pools = (nn.ModuleList() for _ in range(4))
        for out in channels:
            self.convs.append(nn.Conv2d(c, out, 3, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(out))
            self.lifs.append(make_lif(beta, threshold))
            pool = min(h, w) >= 2
            self.pools.append(nn.MaxPool2d(2) if pool else nn.Identity())
            c, h, w = out, (h // 2 if pool else h), (w // 2 if pool else w)
        self.flatten = nn.Flatten()
        features = c * h * w
        if hidden:
            self.fc = nn.Linear(features, hidden)
            self.fc_bn = nn.BatchNorm1d(hidden)
            self.fc_lif = make_lif(beta, threshold)
            features = hidden
        else:
            self.fc = None
        self.classifier = nn.Linear(features, num_classes)
        self.lif_out = make_lif(beta, threshold) if spiking_output else None

    def step(self, x_t: Tensor, state: NeuronState) -> Tensor:
        h = x_t
        for conv, bn, lif, pool in zip(self.convs, self.bns, self.lifs, self.pools):
            h = pool(lif_step(lif, bn(conv(h)), state))
        h = self.flatten(h)
        if self.fc is not None:
            h = lif_step(self.fc_lif, self.fc_bn(self.fc(h)), state)
        out = self.classifier(h)
        return lif_step(self.lif_out, out, state) if self.lif_out is not None else out
