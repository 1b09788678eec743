"""snnprune.structure.discover: which BatchNorm and which spiking neuron belong to each layer."""

from __future__ import annotations

import copy

import pytest
import snntorch as snn
import torch
from torch import Tensor, nn

from snnprune.models import build
from snnprune.structure import ModelStructure, discover


def _pairs(structure: ModelStructure) -> dict[str, tuple[str | None, str | None, str]]:
    return {n: (i.bn, i.neuron, i.role) for n, i in structure.layers.items()}


# ----------------------------------------------------------------------------- zoo models


def test_mlp():
    model = build("mlp", hidden=(6, 5), num_steps=2)
    s = discover(model, torch.rand(2, 1, 8, 8))
    assert _pairs(s) == {
        "fcs.0": ("bns.0", "lifs.0", "encoding"),
        "fcs.1": ("bns.1", "lifs.1", "hidden"),
        "classifier": (None, None, "classifier"),
    }
    assert s.layers["classifier"].note == "feeds no spiking neuron"
    assert [s.layers[n].order for n in s.layers] == [0, 1, 2]
    assert s.layers["fcs.0"].kind == "linear" and s.layers["fcs.0"].out_channels == 6


def test_mlp_spiking_output():
    model = build("mlp", hidden=(6,), num_steps=2, spiking_output=True)
    s = discover(model, torch.rand(2, 1, 8, 8))
    assert _pairs(s)["classifier"] == (None, "lif_out", "classifier")
    assert s.layers["classifier"].note == ""


def test_convnet():
    model = build("convnet", input_shape=(1, 16, 16), channels=(4, 8), hidden=16, num_steps=2)
    s = discover(model, torch.rand(2, 1, 16, 16))
    assert _pairs(s) == {
        "convs.0": ("bns.0", "lifs.0", "encoding"),
        "convs.1": ("bns.1", "lifs.1", "hidden"),
        "fc": ("fc_bn", "fc_lif", "hidden"),
        "classifier": (None, None, "classifier"),
    }
    assert s.layers["convs.1"].kind == "conv" and s.layers["convs.1"].out_channels == 8
    assert set(s.neurons) == {"lifs.0", "lifs.1", "fc_lif"}


@pytest.fixture(scope="module")
def resnet_structure():
    model = build("resnet19", input_shape=(3, 16, 16), width=1 / 32, num_steps=2)
    return model, discover(model, torch.rand(2, 3, 16, 16))


def test_resnet19_blocks(resnet_structure):
    model, s = resnet_structure
    assert len(s.layers) == 21  # 19 weight layers + 2 shortcut convolutions
    assert _pairs(s)["conv1"] == ("bn1", "lif1", "encoding")
    assert _pairs(s)["fc"] == ("fc_bn", "fc_lif", "hidden")
    assert _pairs(s)["classifier"] == (None, None, "classifier")
    for b, block in enumerate(model.blocks):
        p = f"blocks.{b}"
        assert _pairs(s)[f"{p}.conv1"] == (f"{p}.bn1", f"{p}.lif1", "hidden")
        assert _pairs(s)[f"{p}.conv2"] == (f"{p}.bn2", f"{p}.lif2", "hidden")
        if isinstance(block.shortcut, nn.Sequential):
            # the shortcut conv's output joins the residual sum that enters the block's second LIF
            assert _pairs(s)[f"{p}.shortcut.0"] == (f"{p}.shortcut.1", f"{p}.lif2", "hidden")
    assert sum(n.endswith("shortcut.0") for n in s.layers) == 2


def test_resnet19_execution_order(resnet_structure):
    _, s = resnet_structure
    names = list(s.layers)
    assert names[0] == "conv1" and names[-2:] == ["fc", "classifier"]
    assert names.index("blocks.3.conv1") < names.index("blocks.3.conv2")
    assert [s.layers[n].order for n in names] == list(range(len(names)))


def test_table_names_every_layer(resnet_structure):
    _, s = resnet_structure
    table = s.table()
    for name, info in s.layers.items():
        assert name in table
        if info.bn:
            assert info.bn in table
        if info.neuron:
            assert info.neuron in table
    assert "feeds no spiking neuron" in table
    assert table.splitlines()[0].split()[:2] == ["layer", "type"]
    assert s.to_dict()["conv1"]["bn"] == "bn1"


# ----------------------------------------------------------------------------- user models


class TutorialNet(nn.Module):
    """snnTorch tutorial style: the model loops over time itself."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(6, 10)
        self.lif1 = snn.Leaky(beta=0.9)
        self.fc2 = nn.Linear(10, 4)
        self.lif2 = snn.Leaky(beta=0.9)

    def forward(self, x: Tensor) -> Tensor:
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk_rec = []
        for _ in range(self.steps):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk_rec.append(spk2)
        return torch.stack(spk_rec)


def test_tutorial_style_model():
    s = discover(TutorialNet(), torch.rand(2, 6))
    assert _pairs(s) == {"fc1": (None, "lif1", "encoding"), "fc2": (None, "lif2", "classifier")}


def _hidden_sequential(nested: bool) -> nn.Sequential:
    tail = [nn.Linear(8, 3), snn.Leaky(beta=0.5, init_hidden=True, output=True)]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.BatchNorm1d(8),
        snn.Leaky(beta=0.5, init_hidden=True),
        *([nn.Sequential(*tail)] if nested else tail),
    )


@pytest.mark.parametrize("nested", [False, True])
def test_init_hidden_sequential(nested):
    model = _hidden_sequential(nested)
    s = discover(model, torch.rand(2, 1, 4, 4), num_steps=3)
    last = ("4.0", "4.1") if nested else ("4", "5")
    assert _pairs(s) == {"1": ("2", "3", "encoding"), last[0]: (None, last[1], "classifier")}
    assert set(s.neurons) == {"3", last[1]}


def test_conv_sequential_with_pooling():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), snn.Leaky(beta=0.5, init_hidden=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.AvgPool2d(2), snn.Leaky(beta=0.5, init_hidden=True),
        nn.Flatten(), nn.Linear(6, 2),
    )
    s = discover(model, torch.rand(2, 1, 4, 4), num_steps=2)
    assert _pairs(s) == {
        "0": ("1", "2", "encoding"),
        "4": ("5", "7", "hidden"),  # BN -> pooling -> neuron
        "9": (None, None, "classifier"),
    }


class Readout(nn.Module):
    """Linear -> LIF -> Linear -> LIF, with a membrane readout Linear on the side."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)
        self.lif = snn.Leaky(beta=0.5)
        self.head = nn.Linear(5, 2)
        self.aux = nn.Linear(5, 7)

    def forward(self, x: Tensor) -> Tensor:
        mem = self.lif.init_leaky()
        out = []
        for _ in range(2):
            spk, mem = self.lif(self.fc(x), mem)
            out.append(self.head(spk) + 0 * self.aux(spk).sum())
        return torch.stack(out)


def test_layers_feeding_no_neuron():
    s = discover(Readout(), torch.rand(2, 3))
    for name in ("head", "aux"):
        assert s.layers[name].neuron is None
        assert s.layers[name].bn is None
        assert s.layers[name].note == "feeds no spiking neuron"
    assert s.layers["fc"].neuron == "lif"
    assert "- (feeds no spiking neuron)" in s.table()


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.lif = snn.Leaky(beta=0.5)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        spk, _ = self.lif(self.fc(x), self.lif.init_leaky())
        return spk[None]


def test_layer_that_did_not_run():
    s = discover(Unused(), torch.rand(2, 3))
    assert s.layers["spare"].note == "did not run in the calibration pass"
    assert s.layers["spare"].neuron is None
    assert list(s.layers) == ["fc", "spare"]


class NeedsCustomForward(nn.Module):
    """A model whose ``forward`` takes the time step as an extra argument."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)
        self.lif = snn.Leaky(beta=0.5)
        self.out = nn.Linear(3 * 5, 2)

    def forward(self, x: Tensor, mem: Tensor) -> tuple[Tensor, Tensor]:
        spk, mem = self.lif(self.bn(self.conv(x)), mem)
        return self.out(spk.flatten(1)), mem


def custom_forward(model: nn.Module, x: Tensor) -> Tensor:
    mem = torch.zeros(x.shape[0], 3, 5)
    outs = []
    for _ in range(3):
        out, mem = model(x, mem)
        outs.append(out)
    return torch.stack(outs)


def test_custom_forward_function():
    s = discover(NeedsCustomForward(), torch.rand(2, 2, 5), forward=custom_forward)
    assert _pairs(s) == {"conv": ("bn", "lif", "encoding"), "out": (None, None, "classifier")}


def test_no_prunable_layer_raises():
    model = nn.Sequential(nn.BatchNorm1d(3), snn.Leaky(beta=0.5, init_hidden=True, output=True))
    with pytest.raises(ValueError, match="no prunable layer"):
        discover(model, torch.rand(2, 3), num_steps=2)


# ----------------------------------------------------------------------------- side effects


@pytest.mark.parametrize("training", [True, False])
def test_discover_leaves_model_unchanged(training):
    torch.manual_seed(0)
    model = build("convnet", input_shape=(1, 8, 8), channels=(4,), hidden=6, num_steps=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discover(model, torch.rand(2, 1, 8, 8) * 5)
    assert model.training == training
    assert all(m.training == training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_discover_restores_bn_on_sequential():
    model = _hidden_sequential(nested=True).train()
    bn = model[2]
    mean, var, count = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    discover(model, torch.rand(4, 1, 4, 4) + 3, num_steps=3)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, count)
    assert model.training


@pytest.mark.parametrize("style", ["tutorial", "init_hidden"])
def test_discover_leaves_no_autograd_graph_in_neurons(style):
    """Neuron state left over from the calibration pass must not hold its autograd graph
    (it keeps memory alive and makes ``copy.deepcopy(model)`` fail)."""
    model = TutorialNet() if style == "tutorial" else _hidden_sequential(nested=True)
    sample = torch.rand(2, 6) if style == "tutorial" else torch.rand(2, 1, 4, 4)
    discover(model, sample, num_steps=3)
    for m in model.modules():
        mem = getattr(m, "mem", None)
        if isinstance(mem, Tensor):
            assert mem.grad_fn is None
    clone = copy.deepcopy(model)
    with torch.no_grad():
        out = clone(torch.rand(2, 6)) if style == "tutorial" else clone(torch.rand(2, 1, 4, 4))
    assert isinstance(out, (Tensor, tuple))


def test_discover_cached_reuses_until_the_module_tree_changes():
    from snnprune.structure import discover_cached

    model = build("mlp", hidden=(8, 8))
    x = torch.rand(2, 1, 8, 8)
    first = discover_cached(model, x)
    assert discover_cached(model, x) is first
    model.fcs[1] = nn.Linear(8, 8)  # a replaced layer must be paired afresh
    again = discover_cached(model, x)
    assert again is not first and again.layers["fcs.1"].neuron == "lifs.1"
