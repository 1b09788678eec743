"""snnprune.stats.collect_stats: fixed-size streaming statistics, exact merges, model styles."""

from __future__ import annotations

import io

import numpy as np
import pytest
import snntorch as snn
import torch
from torch import Tensor, nn

from snnprune.data import load
from snnprune.models import build
from snnprune.stats import SpikeStats, collect_stats, histogram_density_at_threshold
from snnprune.structure import discover


def _randomise_bn(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.bias.copy_(0.2 + 0.6 * torch.rand(n, generator=g))
                m.running_var.copy_(0.2 + 2 * torch.rand(n, generator=g))


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    model = build("convnet", input_shape=(1, 8, 8), channels=(4, 8), hidden=16, num_steps=3)
    _randomise_bn(model)
    return model


@pytest.fixture(scope="module")
def digit_batches():
    """Six batches of real digits (pixel values k/16, so float64 input sums are exact)."""
    x = load("digits", "test").tensors[0][:180]
    return list(x.split(30))


def _tensors(d: object) -> list[Tensor]:
    if isinstance(d, Tensor):
        return [d]
    if isinstance(d, dict):
        return [t for v in d.values() for t in _tensors(v)]
    return []


def test_memory_constant_in_batches(convnet, digit_batches):
    one = collect_stats(convnet, digit_batches, max_batches=1)
    five = collect_stats(convnet, digit_batches, max_batches=5)
    a, b = one.to_dict(), five.to_dict()
    shapes_a = [t.shape for t in _tensors(a)]
    shapes_b = [t.shape for t in _tensors(b)]
    assert shapes_a == shapes_b
    assert sum(t.numel() for t in _tensors(a)) == sum(t.numel() for t in _tensors(b))
    assert one.samples == 30 and five.samples == 150


def _assert_stats_equal(a: SpikeStats, b: SpikeStats) -> None:
    assert a.samples == b.samples
    assert a.inputs.keys() == b.inputs.keys() and a.membrane.keys() == b.membrane.keys()
    for k in a.inputs:
        assert a.inputs[k].count == b.inputs[k].count
        assert torch.equal(a.inputs[k].sums, b.inputs[k].sums), k
    for k in a.membrane:
        ma, mb = a.membrane[k], b.membrane[k]
        assert torch.equal(ma.count, mb.count)
        np.testing.assert_allclose(ma.mean.numpy(), mb.mean.numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(ma.m2.numpy(), mb.m2.numpy(), rtol=1e-9)
        np.testing.assert_allclose(ma.var.numpy(), mb.var.numpy(), rtol=1e-9)
        assert torch.equal(ma.hist, mb.hist)
        assert torch.equal(ma.spikes, mb.spikes)
        assert ma.elements == mb.elements
        assert torch.equal(ma.lo, mb.lo) and torch.equal(ma.width, mb.width)


def test_merge_of_halves_equals_one_pass(convnet, digit_batches):
    full = collect_stats(convnet, digit_batches)
    first = collect_stats(convnet, digit_batches[:2])
    second = collect_stats(convnet, digit_batches[2:])
    merged = first.merge(second)
    _assert_stats_equal(merged, full)
    assert merged.samples == 180
    assert first.samples == 60  # operands unchanged
    assert all(m.firing_rate.max() > 0 for m in full.membrane.values())
    assert all(m.hist.sum() > 0 for m in full.membrane.values())


def test_merge_rejects_different_models(convnet, digit_batches):
    a = collect_stats(convnet, digit_batches[:1])
    other = build("mlp", input_shape=(1, 8, 8), hidden=(4,), num_steps=2)
    b = collect_stats(other, digit_batches[:1])
    with pytest.raises(ValueError):
        a.merge(b)
    c = collect_stats(convnet, digit_batches[:1], hist_halfwidth=0.5)
    with pytest.raises(ValueError, match="window"):
        a.merge(c)


def test_max_batches(convnet, digit_batches):
    limited = collect_stats(convnet, digit_batches, max_batches=2)
    _assert_stats_equal(limited, collect_stats(convnet, digit_batches[:2]))
    assert limited.samples == 60


def test_counts(convnet, digit_batches):
    stats = collect_stats(convnet, digit_batches[:2])
    steps, n = 3, 60
    assert stats.inputs["convs.0"].count == n * steps * 64
    assert stats.inputs["fc"].count == n * steps
    assert stats.membrane["lifs.0"].elements == n * steps * 64
    assert torch.all(stats.membrane["lifs.1"].count == n * steps * 16)
    assert stats.membrane["fc_lif"].hist.shape == (16, 64)
    assert torch.all(stats.membrane["fc_lif"].hist.sum(1) <= stats.membrane["fc_lif"].count)


def test_structure_given_is_used(convnet, digit_batches):
    structure = discover(convnet, digit_batches[0][:2])
    stats = collect_stats(convnet, digit_batches[:1], structure=structure)
    assert stats.structure is structure


def test_empty_data_raises(convnet):
    with pytest.raises(ValueError, match="no data"):
        collect_stats(convnet, [])


# ----------------------------------------------------------------------------- mode and grad


class ModeProbe(nn.Module):
    """Identity that records (training, grad enabled) at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x


def test_eval_mode_no_grad_and_mode_restored(digit_batches):
    torch.manual_seed(0)
    model = build("convnet", input_shape=(1, 8, 8), channels=(4,), hidden=8, num_steps=2)
    probe = ModeProbe()
    model.flatten = nn.Sequential(probe, nn.Flatten())
    model.train()
    bn_before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = discover(model, digit_batches[0][:2])
    probe.calls.clear()
    collect_stats(model, digit_batches[:3], structure=structure)
    assert probe.calls == [(False, False)] * (3 * 2)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, bn_before[k]), k
    # without a structure the first (discovery) pass runs with grad, all the others without
    probe.calls.clear()
    collect_stats(model, digit_batches[:2])
    assert probe.calls[2:] == [(False, False)] * 4
    assert model.training


def test_training_mode_restored_after_error(digit_batches):
    model = build("convnet", input_shape=(1, 8, 8), channels=(4,), hidden=8, num_steps=2).train()
    with pytest.raises(ValueError):
        collect_stats(model, [torch.rand(2, 3, 3)])
    assert model.training


# ----------------------------------------------------------------------------- what u is


class Tiny(nn.Module):
    def __init__(self, steps: int = 5) -> None:
        super().__init__()
        self.steps = steps
        self.fc = nn.Linear(3, 4)
        self.lif = snn.Leaky(beta=0.8, threshold=0.5)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        mem = self.lif.init_leaky()
        out = []
        for _ in range(self.steps):
            spk, mem = self.lif(self.fc(x), mem)
            out.append(self.head(spk))
        return torch.stack(out)


def test_membrane_is_returned_mem():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.fc.weight.uniform_(0, 0.6)
    batches = [torch.rand(8, 3), torch.rand(5, 3)]
    mems, spikes = [], []

    def hook(module: nn.Module, args: tuple, out: tuple) -> None:
        spikes.append(out[0])
        mems.append(out[1])

    handle = model.lif.register_forward_hook(hook)
    with torch.no_grad():
        for x in batches:
            model(x)
    handle.remove()
    u = torch.cat(mems).double()  # [N, 4], N = samples x steps
    s = torch.cat(spikes).double()
    assert (u > 0.5).any()  # pre-threshold values above u_th are kept (not post-reset values)
    assert torch.equal(s, (u > 0.5).double())  # spikes are read off the returned mem

    stats = collect_stats(model, batches)
    m = stats.membrane["lif"]
    assert m.count.tolist() == [u.shape[0]] * 4
    np.testing.assert_allclose(m.mean.numpy(), u.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(m.var.numpy(), u.var(0, unbiased=False).numpy(), rtol=1e-9)
    assert torch.equal(m.spikes, s.sum(0))
    np.testing.assert_allclose(m.firing_rate.numpy(), s.mean(0).numpy(), rtol=1e-12)
    # histogram over [u_th - |u_th|, u_th + |u_th|) = [0, 1) in 64 bins
    for c in range(4):
        values = u[:, c].numpy()
        expected = np.bincount(np.floor(values[(values >= 0) & (values < 1)] * 64).astype(int), minlength=64)
        np.testing.assert_array_equal(m.hist[c].numpy(), expected)
    # the empirical density reads the 4 bins around u_th
    inside = ((u >= 0.5 - 2 / 64) & (u < 0.5 + 2 / 64)).sum(0).double()
    np.testing.assert_allclose(histogram_density_at_threshold(m).numpy(),
                               (inside / (u.shape[0] * 4 / 64)).numpy(), rtol=1e-12)
    # the layer input of the head is the spike train
    np.testing.assert_allclose(stats.input_rate("head").numpy(), s.mean(0).numpy(), rtol=1e-12)


@pytest.mark.parametrize("graded", [1.0, 2.0])
def test_spike_counts_equal_the_spike_tensor(graded):
    """Spike counts equal the sums of the neuron's spike tensor, whether collect_stats counts
    u > u_th (a neuron that fires exactly there) or reads the tensor (graded spikes)."""
    torch.manual_seed(0)
    model = Tiny(steps=6)
    model.lif = snn.Leaky(beta=0.8, threshold=0.5, graded_spikes_factor=graded)
    with torch.no_grad():
        model.fc.weight.uniform_(0, 0.6)
    batches = [torch.zeros(3, 3), torch.rand(8, 3), torch.rand(5, 3)]  # no spike in the first batch
    spikes = []
    handle = model.lif.register_forward_hook(lambda m, a, out: spikes.append(out[0]))
    with torch.no_grad():
        for x in batches:
            model(x)
    handle.remove()
    s = torch.cat(spikes).double()
    assert s.max() == graded
    for backend in ("numba", "torch"):
        m = collect_stats(model, batches, backend=backend).membrane["lif"]
        assert torch.equal(m.spikes, s.sum(0)), backend


# ----------------------------------------------------------------------------- model styles


def test_init_hidden_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), snn.Leaky(beta=0.5, init_hidden=True),
        nn.Sequential(nn.Linear(6, 3), snn.Leaky(beta=0.5, init_hidden=True, output=True)),
    )
    _randomise_bn(model)
    stats = collect_stats(model, [torch.rand(5, 4) * 2, torch.rand(7, 4) * 2], num_steps=4)
    assert set(stats.membrane) == {"2", "3.1"}
    assert stats.structure.layers["3.0"].neuron == "3.1"
    assert stats.membrane["2"].count.tolist() == [12 * 4] * 6
    assert stats.inputs["3.0"].count == 12 * 4
    rate = stats.input_rate("3.0")
    assert torch.all((rate >= 0) & (rate <= 1)) and rate.sum() > 0
    assert torch.equal(stats.inputs["3.0"].sums, stats.membrane["2"].spikes)
    assert stats.samples == 12


def test_tutorial_style_model():
    torch.manual_seed(0)
    model = Tiny(steps=3)
    stats = collect_stats(model, [torch.rand(4, 3)])
    assert stats.structure.layers["fc"].neuron == "lif"
    assert stats.membrane["lif"].count.tolist() == [12] * 4
    assert stats.inputs["fc"].count == 12


def test_to_dict_holds_tensors_and_numbers(convnet, digit_batches):
    stats = collect_stats(convnet, digit_batches[:1])
    d = stats.to_dict()

    def check(v: object) -> None:
        if isinstance(v, dict):
            assert all(isinstance(k, str) for k in v)
            for x in v.values():
                check(x)
        else:
            assert isinstance(v, (Tensor, int, float)), type(v)

    check(d)
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert torch.equal(back["membrane"]["lifs.0"]["hist"], stats.membrane["lifs.0"].hist)
