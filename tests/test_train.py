"""Training and evaluation: loss goes down, runs are seeded and reproducible, evaluate is consistent."""

import pytest
import torch

from snnprune import models
from snnprune.data import loaders
from snnprune.train import TrainConfig, encode, evaluate, fit, output_loss


@pytest.fixture(scope="module")
def digits():
    return loaders("digits", batch_size=64)


def _train(digits, seed, **kw):
    torch.manual_seed(seed)
    model = models.build("mlp", hidden=(64,))
    history = fit(model, digits[0], digits[1], TrainConfig(epochs=3, seed=seed, **kw), progress=False)
    return model, history


def test_training_reduces_loss_and_learns(digits):
    model, history = _train(digits, 0)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.85
    again = evaluate(model, digits[1])
    assert again["accuracy"] == pytest.approx(history[-1]["test_accuracy"])
    assert again["samples"] == 360


def test_training_is_deterministic_for_a_seed(digits):
    a, ha = _train(digits, 1)
    b, hb = _train(digits, 1)
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_other_optimizers_and_schedules(digits, opt):
    _, history = _train(digits, 0, optimizer=opt, lr=0.05 if opt == "sgd" else 5e-3,
                        schedule="constant", weight_decay=5e-4)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_rate_encoding_and_count_loss(digits):
    x = torch.rand(4, 1, 8, 8)
    spikes = encode(x, "rate", 6, torch.Generator().manual_seed(0))
    assert spikes.shape == (6, 4, 1, 8, 8) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    record = torch.zeros(3, 2, 4)
    record[:, 0, 1] = 1
    loss = output_loss(record, torch.tensor([1, 0]), "count")
    assert torch.isfinite(loss)
    with pytest.raises(ValueError):
        output_loss(record, torch.tensor([1, 0]), "bogus")
