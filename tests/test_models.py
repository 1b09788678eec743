"""Model zoo: forward conventions, shapes, backward, state reset, deepcopy."""

import copy

import pytest
import torch

from snnprune import models

TINY = {
    "mlp": {},
    "convnet": {},
    "vgg16": {"width": 0.0625, "input_shape": (3, 16, 16), "num_steps": 2, "hidden": 32},
    "resnet19": {"width": 0.0625, "input_shape": (3, 16, 16), "num_steps": 2},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shapes_and_backward(name):
    torch.manual_seed(0)
    model = models.build(name, num_classes=7, **TINY[name])
    x = torch.rand(3, *model.input_shape)
    record = model(x)
    assert record.shape == (model.num_steps, 3, 7)
    temporal = model(torch.rand(4, 3, *model.input_shape))
    assert temporal.shape == (4, 3, 7)
    record.mean(0).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_state_resets_between_batches():
    torch.manual_seed(0)
    model = models.build("mlp").eval()
    x = torch.rand(5, 1, 8, 8)
    first = model(x)
    model(torch.rand(5, 1, 8, 8) * 10)  # a different batch must leave no state behind
    assert torch.equal(model(x), first)


def test_bad_input_shape_names_expected_shape():
    model = models.build("mlp")
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        model(torch.rand(2, 1, 28, 28))


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match="mlp"):
        models.build("transformer")


def test_deepcopy_after_training_step_and_arch_kwargs():
    model = models.build("convnet", channels=(4, 8), hidden=16)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    clone = copy.deepcopy(model).eval()
    model.eval()
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(clone(x), model(x))
    assert model.arch_kwargs == {"name": "convnet", "channels": (4, 8), "hidden": 16}


def test_every_hidden_layer_has_batchnorm():
    from snnprune.structure import discover

    for name, kwargs in TINY.items():
        model = models.build(name, **kwargs)
        structure = discover(model, torch.rand(2, *model.input_shape))
        for info in structure.layers.values():
            if info.role != "classifier":
                assert info.bn is not None and info.neuron is not None, (name, info)
