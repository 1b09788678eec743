"""SNN-VGG-16: thirteen Conv-BN-LIF layers in five pooled stages, then a spiking MLP head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import NeuronState, SpikingNet, as_shape, lif_step, make_lif

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class SpikingVGG16(SpikingNet):
    """VGG-16 with LIF neurons (Conv3x3 -> BN -> LIF; 2x2 average pooling between stages).

    Args:
        input_shape: ``(C, H, W)``; any size, the head pools adaptively to 1x1.
        width: multiplier on every stage's channel count (1.0 is the standard VGG-16).
        hidden: width of the hidden fully connected layer (scaled by ``width``).
        num_classes, num_steps, beta, threshold: as :class:`SpikingMLP`.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        width: float = 1.0,
        hidden: int = 512,
        num_classes: int = 10,
        num_steps: int = 5,
        beta: float = 0.5,
        threshold: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape)
        self.num_steps = num_steps
        self.num_classes = num_classes
        c = self.input_shape[0]
        self.convs, self.bns, self.lifs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.stage_ends: list[int] = []
        for stage in VGG16_STAGES:
            for out in stage:
                out = max(1, int(round(out * width)))
                self.convs.append(nn.Conv2d(c, out, 3, padding=1, bias=False))
                self.bns.append(nn.BatchNorm2d(out))
                self.lifs.append(make_lif(beta, threshold))
                c = out
            self.stage_ends.append(len(self.convs) - 1)
        self.pool = nn.AvgPool2d(2)
        self.head_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        hidden = max(1, int(round(hidden * width)))
        self.fc = nn.Linear(c, hidden)
        self.fc_bn = nn.BatchNorm1d(hidden)
        self.fc_lif = make_lif(beta, threshold)
        self.classifier = nn.Linear(hidden, num_classes)

    def step(self, x_t: Tensor, state: NeuronState) -> Tensor:
        h = x_t
        for i, (conv, bn, lif) in enumerate(zip(self.convs, self.bns, self.lifs)):
            h = lif_step(lif, bn(conv(h)), state)
            if i in self.stage_ends and min(h.shape[-2:]) >= 2:
                h = self.pool(h)
        h = self.flatten(self.head_pool(h))
        h = lif_step(self.fc_lif, self.fc_bn(self.fc(h)), state)
        return self.classifier(h)
