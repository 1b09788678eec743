"""Tests of snnprune.encoding: direct, direct_temporal, rate and the name lookup."""

from __future__ import annotations

import math

import pytest
import torch
from snntorch import spikegen

from snnprune import encoding


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _five_sigma(p: torch.Tensor, steps: int, variance_factor: float = 1.0) -> torch.Tensor:
    """5 standard deviations of a mean of ``steps`` Bernoulli(p) draws (+ float slack)."""
    return 5 * torch.sqrt(variance_factor * p * (1 - p) / steps) + 1e-6


# ------------------------------------------------------------------------------------ direct


def test_direct_returns_input_unchanged():
    x = torch.rand(4, 1, 8, 8)
    out = encoding.direct(x, 25)
    assert out is x


def test_direct_temporal_is_expanded_view_over_time():
    x = torch.rand(3, 2, 5)
    out = encoding.direct_temporal(x, 7)
    assert out.shape == (7, 3, 2, 5)
    assert out.data_ptr() == x.data_ptr()  # a view, no copy
    for t in range(7):
        assert torch.equal(out[t], x)


@pytest.mark.parametrize("encoder", [encoding.direct, encoding.direct_temporal, encoding.rate])
@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_encoders_reject_non_positive_or_fractional_steps(encoder, steps):
    with pytest.raises(ValueError, match="num_steps"):
        encoder(torch.rand(2, 3), steps)


# ------------------------------------------------------------------------------------ rate


def test_rate_output_is_binary_with_time_first_shape():
    x = torch.rand(4, 1, 8, 8)
    spikes = encoding.rate(x, 10, generator=_gen(0))
    assert spikes.shape == (10, 4, 1, 8, 8)
    assert spikes.dtype == x.dtype
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}


def test_rate_mean_over_time_matches_input_within_five_sigma():
    steps = 2000
    x = torch.linspace(0, 1, 100).reshape(4, 25)
    spikes = encoding.rate(x, steps, generator=_gen(1))
    mean = spikes.mean(0)
    assert ((mean - x).abs() <= _five_sigma(x, steps)).all()
    # the endpoints are deterministic
    assert mean[0, 0] == 0.0 and mean[-1, -1] == 1.0


def test_rate_gain_scales_and_clamps_probability():
    steps = 2000
    x = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0])
    mean = encoding.rate(x, steps, gain=2.0, generator=_gen(2)).mean(0)
    p = (2.0 * x).clamp(0, 1)
    assert ((mean - p).abs() <= _five_sigma(p, steps)).all()
    assert mean[3] == 1.0 and mean[4] == 1.0


def test_rate_is_reproducible_with_seeded_generator():
    x = torch.rand(8, 20)
    a = encoding.rate(x, 50, generator=_gen(7))
    b = encoding.rate(x, 50, generator=_gen(7))
    c = encoding.rate(x, 50, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_rate_with_generator_leaves_global_rng_untouched():
    x = torch.rand(8, 20)
    state = torch.get_rng_state()
    encoding.rate(x, 50, generator=_gen(0))
    assert torch.equal(state, torch.get_rng_state())


def test_rate_matches_snntorch_spikegen_rate_in_distribution():
    steps = 2000
    x = torch.linspace(0, 1, 50)
    ours = encoding.rate(x, steps, gain=0.8, generator=_gen(3)).mean(0)
    torch.manual_seed(3)
    theirs = spikegen.rate(x, num_steps=steps, gain=0.8)
    assert theirs.shape == (steps, 50)
    theirs = theirs.mean(0)
    p = (0.8 * x).clamp(0, 1)
    # difference of two independent means: variance 2 p (1 - p) / T
    assert ((ours - theirs).abs() <= _five_sigma(p, steps, variance_factor=2.0)).all()


@pytest.mark.parametrize("bad", [1.1, -0.1, 255.0, math.nan])
def test_rate_rejects_values_outside_unit_interval(bad):
    x = torch.rand(3, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoding.rate(x, 5)


def test_rate_tolerates_rounding_just_outside_unit_interval():
    x = torch.tensor([-1e-7, 0.5, 1.0 + 1e-7])
    spikes = encoding.rate(x, 100, generator=_gen(0))
    assert spikes[:, 0].sum() == 0 and spikes[:, 2].sum() == 100


def test_rate_rejects_integer_input():
    with pytest.raises(ValueError, match="floating"):
        encoding.rate(torch.ones(3, dtype=torch.uint8), 5)


# ------------------------------------------------------------------------------------ get


def test_get_returns_encoders_by_name():
    assert encoding.get("direct") is encoding.direct
    assert encoding.get("rate") is encoding.rate
    assert set(encoding.ENCODERS) == {"direct", "rate"}


def test_get_of_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown encoding") as err:
        encoding.get("latency")
    assert "direct" in str(err.value) and "rate" in str(err.value)
