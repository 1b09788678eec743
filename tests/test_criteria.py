"""Scores of the criteria pinned against values computed independently of snnprune.

* a tiny network whose firing rates, BN factors and membrane moments are known in closed form;
* the slow loop-by-loop reference of ``tests/reference.py`` on a conv network with BN and on
  grouped / depthwise convolutions;
* degenerate statistics, fallbacks, the ``random`` criterion and the registry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference
import snntorch as snn
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from snnprune import criteria
from snnprune.data import load
from snnprune.models import build
from snnprune.scoring import score_layers, scores
from snnprune.stats import MembraneStats, collect_stats, gaussian_density_at_threshold

LayerContext = criteria.LayerContext
register = criteria.register

# ----------------------------------------------------------------------------- closed form

T_STEPS = 8
X_IN = (2.0, 0.4375)  # constant currents into lif0 (identity encoding): rates 1 and 3/8 over 8 steps
W_FC = ((0.5, -1.5), (2.0, 0.25))
BN_MEAN, BN_VAR, BN_GAMMA, BN_BETA, BN_EPS = (0.1, -0.2), (0.5, 2.0), (1.5, -0.8), (0.2, 2.0), 1e-3
TH0, TH1 = 1.0, 0.75


class ClosedForm(nn.Module):
    """enc (identity) -> lif0 (IF, beta=1) -> fc -> bn -> lif1 (beta=0, no reset) -> readout.

    lif0 is fed a constant current, so its spike trains are known; lif1 has no memory, so its
    membrane potential at step t is exactly the BN output at step t.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(2, 2, bias=False)
        self.lif0 = snn.Leaky(beta=1.0, threshold=TH0, reset_mechanism="subtract")
        self.fc = nn.Linear(2, 2, bias=False)
        self.bn = nn.BatchNorm1d(2, eps=BN_EPS)
        self.lif1 = snn.Leaky(beta=0.0, threshold=TH1, reset_mechanism="none")
        self.readout = nn.Linear(2, 1)
        with torch.no_grad():
            self.enc.weight.copy_(torch.eye(2))
            self.fc.weight.copy_(torch.tensor(W_FC))
            self.bn.running_mean.copy_(torch.tensor(BN_MEAN))
            self.bn.running_var.copy_(torch.tensor(BN_VAR))
            self.bn.weight.copy_(torch.tensor(BN_GAMMA))
            self.bn.bias.copy_(torch.tensor(BN_BETA))

    def forward(self, x: Tensor) -> Tensor:
        mem0 = self.lif0.init_leaky()
        mem1 = self.lif1.init_leaky()
        out = []
        for _ in range(T_STEPS):
            spk0, mem0 = self.lif0(self.enc(x), mem0)
            spk1, mem1 = self.lif1(self.bn(self.fc(spk0)), mem1)
            out.append(self.readout(spk1))
        return torch.stack(out)


def _lif_if_trains() -> tuple[np.ndarray, np.ndarray]:
    """Membrane u[t] and spikes s[t] of lif0 (IF neuron, subtract reset of the previous spike,
    spike when u > threshold as snnTorch does), by hand. Shapes [T, 2]."""
    u = np.zeros((T_STEPS, 2))
    s = np.zeros((T_STEPS, 2))
    for i, c in enumerate(X_IN):
        mem, spk = 0.0, 0.0
        for t in range(T_STEPS):
            mem = mem + c - spk * TH0
            spk = 1.0 if mem > TH0 else 0.0
            u[t, i], s[t, i] = mem, spk
    return u, s


def _normal(mean: float, var: float, th: float) -> float:
    var = max(var, 1e-6)
    return math.exp(-((mean - th) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


@pytest.fixture(scope="module")
def closed_form():
    model = ClosedForm()
    data = [torch.tensor([X_IN] * 3, dtype=torch.float32)]
    u0, s0 = _lif_if_trains()
    rates = s0.mean(0)
    assert rates.tolist() == [1.0, 3 / 8]  # the test's own premise
    # lif1: u[t] = bn(fc(s0[t])) exactly (beta = 0, no reset)
    pre = s0 @ np.array(W_FC).T
    factor = np.abs(BN_GAMMA) / np.sqrt(np.array(BN_VAR) + BN_EPS)
    u1 = (pre - BN_MEAN) * np.array(BN_GAMMA) / np.sqrt(np.array(BN_VAR) + BN_EPS) + BN_BETA
    expected_fc = np.zeros((2, 2))
    expected_enc = np.zeros((2, 2))
    for j in range(2):
        dens1 = _normal(u1[:, j].mean(), u1[:, j].var(), TH1)
        dens0 = _normal(u0[:, j].mean(), u0[:, j].var(), TH0)
        for i in range(2):
            expected_fc[j, i] = abs(W_FC[j][i]) * rates[i] * factor[j] * dens1
            expected_enc[j, i] = abs(float(j == i)) * X_IN[i] * 1.0 * dens0
    return model, data, expected_fc, expected_enc, u1


def test_closed_form_statistics(closed_form):
    model, data, _, _, u1 = closed_form
    stats = collect_stats(model, data)
    assert stats.structure.layers["fc"].bn == "bn"
    assert stats.structure.layers["fc"].neuron == "lif1"
    assert stats.input_rate("fc").tolist() == [1.0, 3 / 8]
    assert torch.allclose(stats.input_rate("enc"), torch.tensor(X_IN, dtype=torch.float64))
    m = stats.membrane["lif1"]
    assert m.count.tolist() == [3 * T_STEPS] * 2
    np.testing.assert_allclose(m.mean.numpy(), u1.mean(0), rtol=1e-6)
    np.testing.assert_allclose(m.var.numpy(), u1.var(0), rtol=1e-5)


def test_closed_form_prob_scores(closed_form):
    model, data, expected_fc, expected_enc, _ = closed_form
    got = scores(model, "prob", data=data, magnitude_roles=())
    np.testing.assert_allclose(got["fc.weight"].numpy(), expected_fc, rtol=1e-5)
    np.testing.assert_allclose(got["enc.weight"].numpy(), expected_enc, rtol=1e-5)
    # the readout feeds no spiking neuron: magnitude
    assert torch.equal(got["readout.weight"], model.readout.weight.detach().abs())


def test_float64_weight_is_not_modified(closed_form):
    """Criteria compute in float64: a float64 weight must be copied, never changed in place."""
    model, data, expected_fc, _, _ = closed_form
    stats = collect_stats(model, data)
    weight = nn.Parameter(model.fc.weight.detach().double())
    before = weight.detach().clone()
    ctx = LayerContext("fc", model.fc, weight, stats.structure.layers["fc"], stats, model.bn)
    for name in ("prob", "prob-empirical", "magnitude"):
        got = criteria.get(name)(ctx)
        assert got.data_ptr() != weight.data_ptr()
        assert torch.equal(weight.detach(), before), name
        if name == "prob":
            np.testing.assert_allclose(got.detach().numpy(), expected_fc, rtol=1e-5)


def test_closed_form_default_roles(closed_form):
    model, data, expected_fc, _, _ = closed_form
    result = score_layers(model, "prob", data=data)
    assert result["fc"].criterion == "prob"  # hidden layer
    np.testing.assert_allclose(result["fc"].scores.numpy(), expected_fc, rtol=1e-5)
    assert result["enc"].criterion == "magnitude"
    assert "encoding" in result["enc"].note
    assert torch.equal(result["enc"].scores, model.enc.weight.detach().abs())
    assert result["readout"].criterion == "magnitude"
    assert "classifier" in result["readout"].note


# ----------------------------------------------------------------------------- reference on a convnet

CONV_PAIRING = {
    "convs.0": ("bns.0", "lifs.0"),
    "convs.1": ("bns.1", "lifs.1"),
    "fc": ("fc_bn", "fc_lif"),
}
DEAD_CHANNEL = 2  # lifs.0 channel forced silent


def _randomise_bn(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                sign = torch.where(torch.rand(n, generator=generator) < 0.3, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + 1.5 * torch.rand(n, generator=generator)))
                m.bias.copy_(0.2 + 0.6 * torch.rand(n, generator=generator))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.2 + 2 * torch.rand(n, generator=generator))


@pytest.fixture(scope="module")
def convnet_setup():
    torch.manual_seed(0)
    model = build("convnet", input_shape=(1, 8, 8), channels=(4, 8), hidden=16, num_steps=4)
    _randomise_bn(model, torch.Generator().manual_seed(1))
    with torch.no_grad():  # one channel of the first block never fires
        model.bns[0].weight[DEAD_CHANNEL] = 1.0
        model.bns[0].bias[DEAD_CHANNEL] = -100.0
    x = load("digits", "test").tensors[0][:96]
    batches = list(x.split(32))
    rec = reference.record(model, batches)
    stats = collect_stats(model, batches)
    return model, batches, rec, stats


def test_convnet_neurons_fire(convnet_setup):
    _, _, _, stats = convnet_setup
    for name in ("lifs.0", "lifs.1", "fc_lif"):
        rate = stats.membrane[name].firing_rate
        assert 0.02 < rate.mean() < 0.98, (name, rate)
    assert stats.membrane["lifs.0"].firing_rate[DEAD_CHANNEL] == 0


def test_stats_match_reference(convnet_setup):
    _, _, rec, stats = convnet_setup
    for layer in CONV_PAIRING:
        np.testing.assert_allclose(stats.input_rate(layer).numpy(), reference.channel_rate(rec.inputs[layer]),
                                   rtol=1e-12, atol=0)
    for _, neuron in CONV_PAIRING.values():
        means, variances = reference.channel_moments(rec.mems[neuron])
        m = stats.membrane[neuron]
        np.testing.assert_allclose(m.mean.numpy(), means, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m.var.numpy(), variances, rtol=1e-9)


@pytest.mark.parametrize("criterion,density", [("prob", "gaussian"), ("prob-empirical", "histogram")])
def test_prob_matches_reference(convnet_setup, criterion, density):
    model, _, rec, stats = convnet_setup
    expected = reference.prob_reference(model, rec, CONV_PAIRING, density)
    got = score_layers(model, criterion, stats=stats, magnitude_roles=())
    for layer, ref in expected.items():
        assert got[layer].criterion == criterion
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(got[layer].scores.numpy(), ref, rtol=1e-6, atol=1e-300)
    assert got["classifier"].criterion == "magnitude"
    assert "feeds no spiking neuron" in got["classifier"].note


def test_never_firing_channel_scores_zero(convnet_setup):
    model, _, _, stats = convnet_setup
    got = score_layers(model, "prob", stats=stats)
    assert stats.input_rate("convs.1")[DEAD_CHANNEL] == 0
    assert torch.all(got["convs.1"].scores[:, DEAD_CHANNEL] == 0)
    assert torch.all(got["convs.1"].scores[:, DEAD_CHANNEL + 1] > 0)


def test_scores_from_data_equal_scores_from_stats(convnet_setup):
    model, batches, _, _ = convnet_setup
    a = scores(model, "prob", stats=collect_stats(model, batches[:1]))
    b = scores(model, "prob", data=batches[:1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- grouped / depthwise conv


class GroupedNet(nn.Module):
    """1x1 encoding conv (4 channels with different rates) -> grouped conv (groups=2) ->
    depthwise conv (channel multiplier 2) -> readout, every conv followed by BN and a Leaky."""

    def __init__(self, steps: int = 4) -> None:
        super().__init__()
        self.steps = steps
        self.conv0 = nn.Conv2d(1, 4, 1)
        self.bn0 = nn.BatchNorm2d(4)
        self.lif0 = snn.Leaky(beta=0.5)
        self.gconv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.lif1 = snn.Leaky(beta=0.5)
        self.dwconv = nn.Conv2d(6, 12, 3, padding=1, groups=6, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.lif2 = snn.Leaky(beta=0.5)
        self.readout = nn.Linear(12 * 16, 3)

    def forward(self, x: Tensor) -> Tensor:
        m0, m1, m2 = self.lif0.init_leaky(), self.lif1.init_leaky(), self.lif2.init_leaky()
        out = []
        for _ in range(self.steps):
            s0, m0 = self.lif0(self.bn0(self.conv0(x)), m0)
            s1, m1 = self.lif1(self.bn1(self.gconv(s0)), m1)
            s2, m2 = self.lif2(self.bn2(self.dwconv(s1)), m2)
            out.append(self.readout(s2.flatten(1)))
        return torch.stack(out)


GROUPED_PAIRING = {
    "conv0": ("bn0", "lif0"),
    "gconv": ("bn1", "lif1"),
    "dwconv": ("bn2", "lif2"),
}


@pytest.fixture(scope="module")
def grouped_setup():
    torch.manual_seed(3)
    model = GroupedNet()
    _randomise_bn(model, torch.Generator().manual_seed(4))
    with torch.no_grad():  # input channels of the grouped conv fire at clearly different rates
        model.conv0.weight.copy_(torch.tensor([0.2, 1.0, 2.0, 4.0]).view(4, 1, 1, 1))
        model.conv0.bias.zero_()
        model.bn0.weight.fill_(1.0)
        model.bn0.bias.zero_()
        model.bn0.running_mean.zero_()
        model.bn0.running_var.fill_(1.0)
    x = torch.rand(3, 8, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    batches = list(x)
    rec = reference.record(model, batches)
    stats = collect_stats(model, batches)
    return model, rec, stats


def test_grouped_structure(grouped_setup):
    _, _, stats = grouped_setup
    for layer, (bn, neuron) in GROUPED_PAIRING.items():
        assert stats.structure.layers[layer].bn == bn
        assert stats.structure.layers[layer].neuron == neuron


def test_grouped_rate_indexing(grouped_setup):
    model, _, stats = grouped_setup
    rate = stats.input_rate("gconv")
    assert len(set(rate.tolist())) == 4  # distinct rates, so a wrong index would show
    ctx = LayerContext("gconv", model.gconv, model.gconv.weight, stats.structure.layers["gconv"], stats)
    per_weight = ctx.input_rate_per_weight()
    assert per_weight.shape == (6, 2, 1, 1)
    for j in range(6):
        for i in range(2):
            assert per_weight[j, i, 0, 0] == rate[(j // 3) * 2 + i]
    rate = stats.input_rate("dwconv")
    ctx = LayerContext("dwconv", model.dwconv, model.dwconv.weight, stats.structure.layers["dwconv"], stats)
    per_weight = ctx.input_rate_per_weight()
    assert per_weight.shape == (12, 1, 1, 1)
    for j in range(12):
        assert per_weight[j, 0, 0, 0] == rate[j // 2]


@pytest.mark.parametrize("criterion,density", [("prob", "gaussian"), ("prob-empirical", "histogram")])
def test_grouped_matches_reference(grouped_setup, criterion, density):
    model, rec, stats = grouped_setup
    expected = reference.prob_reference(model, rec, GROUPED_PAIRING, density)
    got = score_layers(model, criterion, stats=stats, magnitude_roles=())
    for layer, ref in expected.items():
        assert got[layer].criterion == criterion
        np.testing.assert_allclose(got[layer].scores.numpy(), ref, rtol=1e-6, atol=1e-300)


# ----------------------------------------------------------------------------- degenerate statistics


def _membrane(mean: float, var: float, threshold: float = 1.0) -> MembraneStats:
    one = torch.ones(1, dtype=torch.float64)
    return MembraneStats(count=10 * one, mean=mean * one, m2=10 * var * one, hist=torch.zeros(1, 4),
                         lo=0 * one, width=0.5 * one, threshold=threshold * one, spikes=0 * one, elements=10)


def test_zero_variance_is_finite():
    at_threshold = gaussian_density_at_threshold(_membrane(1.0, 0.0))
    assert at_threshold.item() == pytest.approx(1 / math.sqrt(2 * math.pi * 1e-6))
    far = gaussian_density_at_threshold(_membrane(0.0, 0.0))
    assert far.item() == 0.0
    assert torch.isfinite(gaussian_density_at_threshold(_membrane(1.0, 0.0), var_floor=1e-12)).all()


class ConstantNet(nn.Module):
    """A Linear feeding a memoryless neuron with constant input: u is constant (var = 0)."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.enc = nn.Linear(1, 2, bias=False)
        self.lif0 = snn.Leaky(beta=0.0, reset_mechanism="none")
        self.fc = nn.Linear(2, 2, bias=False)
        self.lif1 = snn.Leaky(beta=0.0, reset_mechanism="none")
        self.readout = nn.Linear(2, 1)
        with torch.no_grad():
            self.enc.weight.fill_(2.0)  # lif0 fires at every step
            self.fc.weight.fill_(level / 2)

    def forward(self, x: Tensor) -> Tensor:
        m0, m1 = self.lif0.init_leaky(), self.lif1.init_leaky()
        out = []
        for _ in range(3):
            s0, m0 = self.lif0(self.enc(x), m0)
            s1, m1 = self.lif1(self.fc(s0), m1)
            out.append(self.readout(s1))
        return torch.stack(out)


@pytest.mark.parametrize("level", [1.0, 0.5, 0.0])
def test_constant_potential_scores_finite(level):
    model = ConstantNet(level)
    stats = collect_stats(model, [torch.ones(4, 1)])
    assert torch.all(stats.membrane["lif1"].var == 0)
    got = score_layers(model, "prob", stats=stats, magnitude_roles=())["fc"]
    assert got.criterion == "prob"
    assert torch.isfinite(got.scores).all()
    if level == 1.0:  # u == u_th exactly: density 1/sqrt(2 pi var_floor)
        expected = 0.5 * 1.0 / math.sqrt(2 * math.pi * 1e-6)
        torch.testing.assert_close(got.scores, torch.full((2, 2), expected, dtype=torch.float64))
    empirical = score_layers(model, "prob-empirical", stats=stats, magnitude_roles=())["fc"]
    assert torch.isfinite(empirical.scores).all()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.0, 1e-3, 1.0, 1e3]),
       var_scale=st.sampled_from([0.0, 1e-8, 1.0, 1e6]))
def test_scores_never_nan_or_inf(seed, scale, var_scale):
    g = torch.Generator().manual_seed(seed)
    model = build("convnet", input_shape=(1, 4, 4), channels=(3,), hidden=4, num_steps=2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_var.copy_(var_scale * torch.rand(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
    stats = collect_stats(model, [torch.rand(4, 1, 4, 4, generator=g)])
    for criterion in ("prob", "prob-empirical"):
        for name, s in scores(model, criterion, stats=stats, magnitude_roles=()).items():
            assert torch.isfinite(s).all(), (criterion, name)
            assert (s >= 0).all()


# ----------------------------------------------------------------------------- fallbacks


def test_layer_feeding_no_neuron_falls_back():
    torch.manual_seed(0)
    model = build("mlp", input_shape=(4,), hidden=(5,), num_steps=2)
    data = [torch.rand(6, 4)]
    result = score_layers(model, "prob", data=data, magnitude_roles=())
    assert result["fcs.0"].criterion == "prob"
    assert result["classifier"].criterion == "magnitude"
    assert result["classifier"].note
    assert torch.equal(result["classifier"].scores, model.classifier.weight.detach().abs())


def test_prob_without_stats_or_data_raises():
    model = build("mlp", input_shape=(4,), hidden=(5,), num_steps=2)
    with pytest.raises(ValueError, match="statistics"):
        scores(model, "prob")


# ----------------------------------------------------------------------------- random, registry


def test_random_is_seeded():
    model = build("mlp", input_shape=(4,), hidden=(5,), num_steps=2)
    a = scores(model, "random", seed=1)
    b = scores(model, "random", seed=1)
    c = scores(model, "random", seed=2)
    for k in a:
        assert a[k].shape == model.get_parameter(k).shape
        assert torch.equal(a[k], b[k])
        assert not torch.equal(a[k], c[k])


def test_unknown_criterion_lists_names():
    with pytest.raises(ValueError) as err:
        criteria.get("no-such-criterion")
    for name in ("magnitude", "prob", "prob-empirical", "random"):
        assert name in str(err.value)
    with pytest.raises(ValueError):
        scores(build("mlp", input_shape=(4,), hidden=(5,)), "no-such-criterion")


@pytest.fixture
def clean_registry():
    before = dict(criteria.base._REGISTRY)
    yield
    criteria.base._REGISTRY.clear()
    criteria.base._REGISTRY.update(before)


def test_user_registered_criterion(clean_registry):
    @register("mine", needs_stats=True)
    def mine(ctx: LayerContext) -> Tensor:
        """|w| times the input rate."""
        return ctx.weight.detach().double().abs() * ctx.input_rate_per_weight()

    assert "mine" in criteria.available()
    assert criteria.get("mine").description == "|w| times the input rate."
    torch.manual_seed(0)
    model = build("mlp", input_shape=(4,), hidden=(5,), num_steps=2)
    data = [torch.rand(6, 4)]
    got = scores(model, "mine", data=data)
    stats = collect_stats(model, data)
    expected = model.fcs[0].weight.detach().double().abs() * stats.input_rate("fcs.0")[None, :]
    torch.testing.assert_close(got["fcs.0.weight"], expected)
    assert set(got) == {"fcs.0.weight", "classifier.weight"}


def test_register_descriptions(clean_registry):
    def blank(ctx: LayerContext) -> Tensor:
        """   """
        return ctx.weight.abs()

    def undocumented(ctx: LayerContext) -> Tensor:
        return ctx.weight.abs()

    register("blank-doc")(blank)
    register("no-doc")(undocumented)
    register("described", description="explicit")(blank)
    assert criteria.get("blank-doc").description == ""
    assert criteria.get("no-doc").description == ""
    assert criteria.get("described").description == "explicit"


def test_wrong_shape_raises(clean_registry):
    @register("bad-shape")
    def bad(ctx: LayerContext) -> Tensor:
        return ctx.weight.detach().flatten()

    model = build("mlp", input_shape=(4,), hidden=(5,), num_steps=2)
    with pytest.raises(ValueError, match="shape"):
        scores(model, "bad-shape")
