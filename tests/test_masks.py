"""Masks: PyTorch prune compatibility, exact zeros under every optimizer, dynamic vs static."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from snnprune import masks, models
from snnprune.masks import (
    attach_masks,
    get_masks,
    is_dynamic,
    is_masked,
    make_permanent,
    mask_spec,
    prunable_layers,
    set_mask,
    weight_of,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_mask(weight: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape, generator=gen) < density


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build("mlp", hidden=(16,), num_steps=3)


def _masked_mlp(seed: int = 0, dynamic: bool = False) -> nn.Module:
    model = _mlp(seed)
    gen = torch.Generator().manual_seed(seed)
    for module in prunable_layers(model).values():
        set_mask(module, _random_mask(module.weight, 0.4, gen), dynamic=dynamic)
    return model


def _train_steps(model: nn.Module, steps: int = 3, lr: float = 0.1) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(8, 1, 8, 8, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).mean(0), y).backward()
        opt.step()


# ---------------------------------------------------------------------------- PyTorch compatibility


def test_is_pruned_and_prune_remove_leave_plain_zeros():
    model = _masked_mlp()
    assert prune.is_pruned(model)
    _train_steps(model)
    expected = {n: (weight_of(m) * m.weight_mask).detach().clone() for n, m in prunable_layers(model).items()}
    mask = {n: m.weight_mask.bool().clone() for n, m in prunable_layers(model).items()}
    for module in prunable_layers(model).values():
        prune.remove(module, "weight")
    assert not prune.is_pruned(model)
    for name, module in prunable_layers(model).items():
        assert isinstance(module.weight, nn.Parameter)
        assert "weight_orig" not in dict(module.named_parameters())
        assert "weight_mask" not in dict(module.named_buffers())
        assert torch.equal(module.weight.detach(), expected[name])
        assert (module.weight[~mask[name]] == 0).all()
    model(torch.rand(2, 1, 8, 8))  # still runs without the hooks


@pytest.mark.parametrize("dynamic", [False, True])
def test_make_permanent_leaves_plain_zeros(dynamic):
    model = _masked_mlp(dynamic=dynamic)
    _train_steps(model)
    mask = {n: m.weight_mask.bool().clone() for n, m in prunable_layers(model).items()}
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    make_permanent(model)
    assert not prune.is_pruned(model)
    for name, module in prunable_layers(model).items():
        assert not module._forward_pre_hooks and not module._forward_hooks
        assert isinstance(module.weight, nn.Parameter)
        assert (module.weight[~mask[name]] == 0).all()
        assert int(torch.count_nonzero(module.weight)) <= int(mask[name].sum())
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("dynamic", [False, True])
def test_state_dict_round_trip_masked(dynamic):
    model = _masked_mlp(dynamic=dynamic)
    _train_steps(model)
    state = model.state_dict()
    assert any(k.endswith("weight_orig") for k in state) and any(k.endswith("weight_mask") for k in state)
    spec = mask_spec(model)
    fresh = _mlp(seed=5)
    attach_masks(fresh, spec)
    fresh.load_state_dict(state)
    assert {n: is_dynamic(m) for n, m in prunable_layers(fresh).items()} == {
        n: is_dynamic(m) for n, m in prunable_layers(model).items()}
    for key, value in get_masks(model).items():
        assert torch.equal(get_masks(fresh)[key], value)
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_state_dict_round_trip_permanent():
    model = _masked_mlp()
    _train_steps(model)
    make_permanent(model)
    state = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    fresh = _mlp(seed=5)
    fresh.load_state_dict(state)
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert masks.sparsity(fresh) == pytest.approx(masks.sparsity(model))


@pytest.mark.parametrize("dynamic", [False, True])
def test_deepcopy_after_training_step(dynamic):
    model = _masked_mlp(dynamic=dynamic)
    _train_steps(model, steps=1)
    # a forward/backward in train mode, graph freed, then copy
    x = torch.rand(4, 1, 8, 8)
    model(x).sum().backward()
    clone = copy.deepcopy(model)
    model.eval()
    clone.eval()
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
    # the copy is independent and its own hooks can be removed
    make_permanent(clone)
    assert not prune.is_pruned(clone)
    assert prune.is_pruned(model)
    for module in prunable_layers(clone).values():
        assert not module._forward_hooks


# ---------------------------------------------------------------------------- exact zeros, property


class _ConvStack(nn.Module):
    def __init__(self, channels: list[int], classes: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.Tanh()]
            c = out
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c * 6 * 6, classes)

    def forward(self, x):
        return self.head(self.body(x))


def _build(kind: str, widths: list[int]) -> tuple[nn.Module, tuple[int, ...]]:
    if kind == "linear":
        dims = [12, *widths, 4]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        return nn.Sequential(*layers[:-1]), (12,)
    if kind == "conv":
        return _ConvStack(widths), (1, 6, 6)
    return models.build("mlp", input_shape=(12,), hidden=tuple(widths), num_classes=4, num_steps=2), (12,)


OPTIMIZERS = ["sgd", "sgd-momentum", "sgd-nesterov-wd", "adam", "adamw-wd"]


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "sgd-nesterov-wd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.05)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["linear", "conv", "zoo-mlp"]),
    widths=st.lists(st.integers(2, 6), min_size=1, max_size=2),
    mask_kind=st.sampled_from(["random", "all-but-one", "keep-all"]),
    density=st.floats(0.05, 0.95),
    opt_name=st.sampled_from(OPTIMIZERS),
    clip=st.sampled_from([None, 0.5]),
    cosine=st.booleans(),
    amp=st.booleans(),
    dynamic=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pruned_weights_stay_exactly_zero(kind, widths, mask_kind, density, opt_name, clip, cosine, amp,
                                          dynamic, seed):
    torch.manual_seed(seed)
    model, shape = _build(kind, widths)
    gen = torch.Generator().manual_seed(seed)
    kept: dict[str, torch.Tensor] = {}
    for name, module in prunable_layers(model).items():
        w = weight_of(module)
        if mask_kind == "random":
            mask = _random_mask(w, density, gen)
        elif mask_kind == "all-but-one":
            mask = torch.zeros_like(w, dtype=torch.bool)
            mask.view(-1)[int(torch.randint(w.numel(), (1,), generator=gen))] = True
        else:
            mask = torch.ones_like(w, dtype=torch.bool)
        set_mask(module, mask, dynamic=dynamic)
        kept[name] = mask
    before = {n: weight_of(m).detach().clone() for n, m in prunable_layers(model).items()}
    steps, got_grad = 4, False
    opt = _optimizer(opt_name, model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)) if cosine else 1.0)
    for _ in range(steps):
        x = torch.randn(5, *shape, generator=gen)
        y = torch.randint(0, 4, (5,), generator=gen)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            out = out.mean(0) if out.dim() == 3 else out
            loss = nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        got_grad = got_grad or any(bool((weight_of(m).grad[kept[n]] != 0).any())
                                   for n, m in prunable_layers(model).items())
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        model(torch.randn(2, *shape, generator=gen))  # refresh module.weight
        for name, module in prunable_layers(model).items():
            assert torch.count_nonzero(module.weight.detach()[~kept[name]]) == 0, name
            if not dynamic:
                assert torch.count_nonzero(weight_of(module).detach()[~kept[name]]) == 0, name
    # kept weights did learn (some of them, in some layer), unless no gradient ever reached them
    changed = any(not torch.equal(weight_of(m).detach()[kept[n]], before[n][kept[n]])
                  for n, m in prunable_layers(model).items())
    assert changed or not got_grad
    make_permanent(model)
    for name, module in prunable_layers(model).items():
        assert not is_masked(module)
        assert torch.count_nonzero(module.weight.detach()[~kept[name]]) == 0, name


# ---------------------------------------------------------------------------- dynamic vs static


def _one_layer(dynamic: bool) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    mask = torch.rand(5, 6) < 0.5
    set_mask(layer, mask, dynamic=dynamic)
    return layer, mask


@pytest.mark.parametrize("dynamic", [False, True])
def test_forward_value_is_orig_times_mask(dynamic):
    layer, mask = _one_layer(dynamic)
    with torch.no_grad():  # pruned entries of a dynamic layer keep nonzero values behind the mask
        layer.weight_orig.add_(torch.randn(5, 6))
    x = torch.randn(3, 6)
    out = layer(x)
    expected = (layer.weight_orig * layer.weight_mask).detach()
    assert torch.equal(layer.weight.detach(), expected)
    assert torch.equal(out.detach(), nn.functional.linear(x, expected, layer.bias.detach()))
    assert is_dynamic(layer) == dynamic


def test_dynamic_gradient_reaches_pruned_entries():
    layer, mask = _one_layer(dynamic=True)
    layer(torch.randn(4, 6)).pow(2).sum().backward()
    grad = layer.weight_orig.grad
    assert (grad[~mask] != 0).all()
    assert (grad[mask] != 0).all()


def test_static_gradient_of_pruned_entries_is_zero():
    layer, mask = _one_layer(dynamic=False)
    layer(torch.randn(4, 6)).pow(2).sum().backward()
    grad = layer.weight_orig.grad
    assert (grad[~mask] == 0).all()
    assert (grad[mask] != 0).any()


def test_cached_masked_weights_match_per_step_recomputation(monkeypatch):
    """SpikingNet computes each masked weight once per forward (masks.cached); same values and grads."""
    import contextlib

    torch.manual_seed(0)
    model = models.build("mlp", hidden=(16, 16))
    set_mask(model.fcs[1], torch.rand_like(model.fcs[1].weight) > 0.5)
    set_mask(model.fcs[0], torch.rand_like(model.fcs[0].weight) > 0.5, dynamic=True)
    x = torch.rand(4, 1, 8, 8)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out_cached, grads_cached = run()
    monkeypatch.setattr(masks, "cached", contextlib.nullcontext)
    out_plain, grads_plain = run()
    assert torch.equal(out_cached, out_plain)
    for a, b in zip(grads_cached, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
