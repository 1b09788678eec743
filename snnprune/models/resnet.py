"""Res-SNN-19 (Zheng et al., AAAI 2021, "Going deeper with directly-trained larger SNNs").

Stem Conv3x3(128) -> BN -> LIF, then three stages of spiking basic blocks (3 x 128, 3 x 256 with
stride 2, 2 x 512 with stride 2: 17 conv layers), global average pooling, FC(256) -> BN -> LIF and
the FC classifier: 19 weight layers. The residual sum enters the block's second LIF, as in the
paper's pipeline network.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import NeuronState, SpikingNet, as_shape, lif_step, make_lif

RESNET19_STAGES = ((128, 3, 1), (256, 3, 2), (512, 2, 2))


class SpikingBasicBlock(nn.Module):
    """conv1 -> bn1 -> lif1 -> conv2 -> bn2 (+ shortcut) -> lif2."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, beta: float, threshold: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.lif1 = make_lif(beta, threshold)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()
        self.lif2 = make_lif(beta, threshold)

    def step(self, x: Tensor, state: NeuronState) -> Tensor:
        h = lif_step(self.lif1, self.bn1(self.conv1(x)), state)
        return lif_step(self.lif2, self.bn2(self.conv2(h)) + self.shortcut(x), state)


class SpikingResNet19(SpikingNet):
    """Res-SNN-19. ``width`` scales every channel count (1.0 is the paper's network)."""

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        width: float = 1.0,
        num_classes: int = 10,
        num_steps: int = 5,
        beta: float = 0.5,
        threshold: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape)
        self.num_steps = num_steps
        self.num_classes = num_classes

        def scaled(c: int) -> int:
            return max(1, int(round(c * width)))

        c = scaled(RESNET19_STAGES[0][0])
        self.conv1 = nn.Conv2d(self.input_shape[0], c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.lif1 = make_lif(beta, threshold)
        blocks = []
        for out, count, stride in RESNET19_STAGES:
            for i in range(count):
                blocks.append(SpikingBasicBlock(c, scaled(out), stride if i == 0 else 1, beta, threshold))
                c = scaled(out)
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, scaled(256))
        self.fc_bn = nn.BatchNorm1d(scaled(256))
        self.fc_lif = make_lif(beta, threshold)
        self.classifier = nn.Linear(scaled(256), num_classes)

    def step(self, x_t: Tensor, state: NeuronState) -> Tensor:
        h = lif_step(self.lif1, self.bn1(self.conv1(x_t)), state)
        for block in self.blocks:
            h = block.step(h, state)
        h = self.flatten(self.pool(h))
        h = lif_step(self.fc_lif, self.fc_bn(self.fc(h)), state)
        return self.classifier(h)
