"""The Numba reductions of snnprune.estimators against the torch reference and closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from snnprune import estimators
from snnprune.data import loaders
from snnprune.estimators import (
    as_bcs,
    channel_sums,
    membrane_moments,
    torch_channel_sums,
    torch_membrane_moments,
)
from snnprune.models import build
from snnprune.train import fit

SHAPES = [(1, 1, 1), (3, 1, 5), (4, 7, 1), (2, 3, 17), (16, 32, 100), (64, 5, 3), (2, 2, 1031)]
DTYPES = [torch.float32, torch.float64]


def _window(channels: int, lo: float = -1.0, width: float = 0.125, nbins: int = 16, seed: int = 0):
    """Per-channel shift, lo, width (float64 [C]); lo and width vary a little per channel."""
    g = torch.Generator().manual_seed(seed)
    lo_t = lo + 0.25 * torch.randint(0, 4, (channels,), generator=g).double()
    width_t = width * torch.randint(1, 3, (channels,), generator=g).double()
    shift = lo_t + width_t * nbins / 2
    return shift, lo_t, width_t


def _values(shape, dtype, lo, width, nbins, seed=0):
    """Values straddling the window: uniform well beyond both ends, plus exact bin edges
    (including the window's upper end, which is outside) and values one ulp either side."""
    g = torch.Generator().manual_seed(seed)
    b, c, s = shape
    x = torch.empty(shape, dtype=torch.float64)
    for ch in range(c):
        span_lo, span_hi = lo[ch] - 3 * width[ch], lo[ch] + (nbins + 3) * width[ch]
        x[:, ch] = span_lo + (span_hi - span_lo) * torch.rand(b, s, generator=g, dtype=torch.float64)
        edges = lo[ch] + width[ch] * torch.arange(nbins + 1, dtype=torch.float64)
        flat = x[:, ch].reshape(-1)
        n = min(flat.numel(), edges.numel())
        flat[:n] = edges[torch.randperm(edges.numel(), generator=g)[:n]]
        x[:, ch] = flat.reshape(b, s)
    x = x.to(dtype)
    flat = x.reshape(-1)
    k = flat.numel() // 5
    if k:  # nudge some values by one ulp
        idx = torch.randperm(flat.numel(), generator=g)[:k]
        up = torch.rand(k, generator=g) < 0.5
        flat[idx] = torch.where(up, torch.nextafter(flat[idx], torch.tensor(np.inf, dtype=dtype)),
                                torch.nextafter(flat[idx], torch.tensor(-np.inf, dtype=dtype)))
    return x


def _assert_moments_equal(a: estimators.MomentsBatch, b: estimators.MomentsBatch) -> None:
    assert torch.equal(a.count, b.count)
    torch.testing.assert_close(a.s1, b.s1, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(a.s2, b.s2, rtol=1e-6, atol=1e-9)
    assert a.hist.dtype == b.hist.dtype == torch.float64
    assert torch.equal(a.hist, b.hist)


@pytest.mark.parametrize("shape,dtype", list(itertools.product(SHAPES, DTYPES)))
def test_numba_matches_torch_random(shape, dtype):
    nbins = 16
    shift, lo, width = _window(shape[1], nbins=nbins)
    x = _values(shape, dtype, lo, width, nbins)
    a = membrane_moments(x, shift, lo, width, nbins, backend="numba")
    b = torch_membrane_moments(x, shift, lo, width, nbins)
    _assert_moments_equal(a, b)
    # the data really straddle the window and hit bin edges
    inside = int(b.hist.sum().item())
    assert 0 < inside <= x.numel()
    torch.testing.assert_close(channel_sums(x, backend="numba"), torch_channel_sums(x), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(4, 3, 1), (2, 5, 40)])  # short and long rows
@pytest.mark.parametrize("dtype", DTYPES)
def test_spike_counts_in_the_same_pass(shape, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g).to(dtype)
    spikes = (torch.rand(shape, generator=g) < 0.3).float()
    shift, lo, width = _window(shape[1])
    a = membrane_moments(x, shift, lo, width, 16, spikes=spikes, backend="numba")
    b = torch_membrane_moments(x, shift, lo, width, 16, spikes=spikes)
    _assert_moments_equal(a, b)
    assert torch.equal(a.spikes, b.spikes)
    assert torch.equal(a.spikes, spikes.double().sum(dim=(0, 2)))
    without = membrane_moments(x, shift, lo, width, 16, backend="numba")
    assert without.spikes is None
    _assert_moments_equal(a, without)
    with pytest.raises(ValueError, match="shape"):
        membrane_moments(x, shift, lo, width, 16, spikes=spikes[:, :1])


@pytest.mark.parametrize("shape", [(4, 3, 1), (3, 5, 40), (2, 300, 1)])  # short rows, long rows, blocks
@pytest.mark.parametrize("dtype", DTYPES)
def test_counts_above_shift_in_the_same_pass(shape, dtype):
    shift, lo, width = _window(shape[1], nbins=16)
    x = _values(shape, dtype, lo, width, 16, seed=3)  # values at bin edges and 1 ulp off them
    x[0, :, 0] = shift.to(dtype)  # and exactly at the shift in every channel
    expected = (x.double() > shift[None, :, None]).double().sum(dim=(0, 2))
    ties = (x.double() == shift[None, :, None]).sum()
    assert ties > 0 and 0 < expected.sum() < x.numel()  # the strict comparison is really exercised
    a = membrane_moments(x, shift, lo, width, 16, count_above=True, backend="numba")
    b = torch_membrane_moments(x, shift, lo, width, 16, count_above=True)
    assert torch.equal(a.spikes, expected) and torch.equal(b.spikes, expected)
    _assert_moments_equal(a, membrane_moments(x, shift, lo, width, 16, backend="numba"))
    # a spike tensor, when given, takes precedence over counting
    spikes = torch.ones_like(x)
    both = membrane_moments(x, shift, lo, width, 16, spikes=spikes, count_above=True, backend="numba")
    assert torch.equal(both.spikes, torch.full_like(expected, shape[0] * shape[2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bin_edges_are_binned_left_closed(dtype):
    """A value exactly on an edge lo + k*w goes to bin k; the window's upper end is outside."""
    nbins = 8
    lo = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    width = torch.tensor([0.25, 0.0625], dtype=torch.float64)
    edges = lo[:, None] + width[:, None] * torch.arange(nbins + 1, dtype=torch.float64)  # [C, 9]
    x = edges.T.reshape(1, nbins + 1, 2).transpose(1, 2).to(dtype)  # [1, C, 9]
    expected = torch.ones(2, nbins, dtype=torch.float64)
    for backend in ("numba", "torch"):
        got = membrane_moments(x, lo, lo, width, nbins, backend=backend)
        assert torch.equal(got.hist, expected), backend


def test_non_dyadic_width_bins_agree():
    """With a width that is not a power of two both backends still bin identically."""
    nbins = 10
    lo = torch.tensor([0.1, -0.3, 0.0], dtype=torch.float64)
    width = torch.tensor([0.1, 0.07, 1 / 3], dtype=torch.float64)
    edges = lo[:, None] + width[:, None] * torch.arange(-2, nbins + 3, dtype=torch.float64)
    for dtype in DTYPES:
        x = edges[None].to(dtype).repeat(4, 1, 1)
        _assert_moments_equal(membrane_moments(x, lo, lo, width, nbins, backend="numba"),
                              torch_membrane_moments(x, lo, lo, width, nbins))


@pytest.mark.parametrize("repeat", [1, 8])  # rows of 5 and of 40 values (both kernel paths)
def test_nonfinite_values_agree(repeat):
    x = torch.tensor([[[0.5, float("nan"), float("inf"), -float("inf"), 0.25]]]).repeat(1, 1, repeat)
    one = torch.ones(1, dtype=torch.float64)
    a = membrane_moments(x, one, 0 * one, 0.25 * one, 4, backend="numba")
    b = torch_membrane_moments(x, one, 0 * one, 0.25 * one, 4)
    assert torch.equal(a.hist, b.hist)
    assert a.hist.sum() == 2 * repeat


@pytest.mark.parametrize("shape", [(5, 3, 7), (64, 4, 1), (1, 1, 1)])
def test_moments_closed_form(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1.5
    channels = shape[1]
    shift = torch.linspace(-1, 2, channels, dtype=torch.float64)
    lo = shift - 1
    width = torch.full((channels,), 2 / 32, dtype=torch.float64)
    m = membrane_moments(x, shift, lo, width, 32, backend="numba")
    arr = x.numpy()
    for c in range(channels):
        values = arr[:, c, :].ravel()
        n = values.size
        assert m.count[c].item() == n
        mean = shift[c].item() + m.s1[c].item() / n
        var = (m.s2[c].item() - m.s1[c].item() ** 2 / n) / n
        np.testing.assert_allclose(mean, values.mean(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, values.var(), rtol=1e-10, atol=1e-12)
        inside = (values >= lo[c].item()) & (values < lo[c].item() + 32 * width[c].item())
        assert m.hist[c].sum().item() == inside.sum()
        bins = np.floor((values[inside] - lo[c].item()) / width[c].item()).astype(int)
        np.testing.assert_array_equal(m.hist[c].numpy(), np.bincount(bins, minlength=32))


def test_channel_sums_closed_form():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    expected = torch.tensor([x[:, c].sum().item() for c in range(3)], dtype=torch.float64)
    assert torch.equal(channel_sums(x, backend="numba"), expected)
    assert torch.equal(channel_sums(x, backend="torch"), expected)
    assert channel_sums(x, backend="numba").dtype == torch.float64


def test_as_bcs_views():
    assert as_bcs(torch.zeros(5, 7), channel_dim=-1).shape == (5, 7, 1)
    assert as_bcs(torch.zeros(5, 7), channel_dim=1).shape == (5, 7, 1)
    assert as_bcs(torch.zeros(2, 3, 4, 5)).shape == (2, 3, 20)
    assert as_bcs(torch.zeros(2, 3, 4, 5, 6)).shape == (2, 3, 120)
    assert as_bcs(torch.zeros(9)).shape == (1, 9, 1)
    x = torch.randn(2, 3, 4, 5).transpose(2, 3)  # non-contiguous
    assert torch.equal(as_bcs(x), x.reshape(2, 3, 20))
    assert as_bcs(x).is_contiguous()


def test_non_contiguous_input():
    x = torch.randn(6, 8, 10).transpose(0, 2).transpose(1, 2)  # [10, 6, 8], non-contiguous
    assert not x.is_contiguous()
    shift, lo, width = _window(x.shape[1], lo=-2.0, width=0.25)
    _assert_moments_equal(membrane_moments(x, shift, lo, width, 16, backend="numba"),
                          torch_membrane_moments(x.contiguous(), shift, lo, width, 16))


def test_numba_backend_rejects_non_cpu():
    x = torch.zeros(2, 3, 4, device="meta")
    with pytest.raises(ValueError, match="CPU"):
        channel_sums(x, backend="numba")


def test_auto_backend_dispatch():
    assert estimators._use_numba(torch.zeros(1, 1, 1), "auto")
    assert not estimators._use_numba(torch.zeros(1, 1, 1, dtype=torch.float16), "auto")
    assert not estimators._use_numba(torch.zeros(1, 1, 1), "torch")
    x = torch.ones(2, 2, 2, dtype=torch.float16)
    assert torch.equal(channel_sums(x), torch.full((2,), 4.0, dtype=torch.float64))


# ----------------------------------------------------------------------------- property test


@st.composite
def _cases(draw):
    b = draw(st.integers(1, 6))
    c = draw(st.integers(1, 5))
    s = draw(st.integers(1, 40))  # rows shorter and longer than the kernel's short-row cut
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = draw(hnp.arrays(dtype, (b, c, s), elements=st.floats(-8, 8, width=32 if dtype == np.float32 else 64)))
    nbins = draw(st.integers(1, 40))
    lo = draw(hnp.arrays(np.float64, (c,), elements=st.floats(-4, 4)))
    width = draw(hnp.arrays(np.float64, (c,), elements=st.floats(1e-3, 2)))
    shift = draw(hnp.arrays(np.float64, (c,), elements=st.floats(-4, 4)))
    return values, nbins, lo, width, shift


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_property_numba_matches_torch(case):
    values, nbins, lo, width, shift = case
    x = torch.from_numpy(values)
    lo_t, width_t, shift_t = (torch.from_numpy(a) for a in (lo, width, shift))
    a = membrane_moments(x, shift_t, lo_t, width_t, nbins, backend="numba")
    b = torch_membrane_moments(x, shift_t, lo_t, width_t, nbins)
    _assert_moments_equal(a, b)
    torch.testing.assert_close(channel_sums(x, backend="numba"), torch_channel_sums(x), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- real recordings


@pytest.fixture(scope="module")
def digits_recording():
    """Layer inputs, membrane potentials and spikes of an MLP trained for 2 epochs on a few
    batches of the digits data (real, trained-ish activity)."""
    torch.manual_seed(0)
    train, test = loaders("digits", batch_size=64)
    model = build("mlp", num_steps=6)
    fit(model, list(itertools.islice(train, 8)), device="cpu", epochs=2, progress=False)
    model.eval()
    records: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []

    def hook(module, args, output):
        spk, mem = output
        records.append(("mem", mem.detach().clone(), spk.detach().clone()))

    def pre_hook(module, args):
        records.append(("input", args[0].detach().clone(), None))

    handles = [lif.register_forward_hook(hook) for lif in model.lifs]
    handles += [fc.register_forward_pre_hook(pre_hook) for fc in [*model.fcs, model.classifier]]
    with torch.no_grad():
        for x, _ in itertools.islice(test, 2):
            model(x)
    for h in handles:
        h.remove()
    return records


def test_numba_matches_torch_on_real_membranes(digits_recording):
    mems = [m for kind, m, _ in digits_recording if kind == "mem"]
    assert mems
    nbins = 64
    inside = 0
    for mem in mems:
        u = as_bcs(mem, 1)
        c = u.shape[1]
        th = torch.ones(c, dtype=torch.float64)
        lo, width = th - 1, torch.full((c,), 2 / nbins, dtype=torch.float64)
        a = membrane_moments(u, th, lo, width, nbins, backend="numba")
        b = torch_membrane_moments(u, th, lo, width, nbins)
        _assert_moments_equal(a, b)
        inside += int(a.hist.sum())
    assert inside > 0


def test_numba_matches_torch_on_real_inputs_and_spikes(digits_recording):
    fired = 0.0
    for _, tensor, spikes in digits_recording:
        x = as_bcs(tensor, -1)
        torch.testing.assert_close(channel_sums(x, backend="numba"), torch_channel_sums(x), rtol=1e-6, atol=1e-9)
        if spikes is not None:
            s = as_bcs(spikes, 1)
            got = channel_sums(s, backend="numba")
            assert torch.equal(got, torch_channel_sums(s))  # integer counts: exact
            fired += got.sum().item()
    assert fired > 0
