"""Pruner: amounts, scopes, guards, exclusions, report, static/dynamic masks, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snnprune import Pruner, criteria, models
from snnprune.masks import is_dynamic, is_masked, mask_of, weight_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(seed: int = 0, hidden=(24, 16)) -> nn.Module:
    torch.manual_seed(seed)
    return models.build("mlp", hidden=hidden, num_steps=4)


def _calib(n_batches: int = 2, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, 8, 8, generator=gen) * 2.0, torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(n_batches)]


def _kept(model: nn.Module) -> dict[str, int]:
    return {n: int(mask_of(m).sum()) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def _numel(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


CONSTANT = criteria.Criterion("constant", lambda ctx: torch.zeros_like(ctx.weight, dtype=torch.float64))


# ---------------------------------------------------------------------------- amounts and scopes


@pytest.mark.parametrize("criterion", ["magnitude", "random", "prob"])
def test_layer_scope_keeps_round_n_times_density(criterion):
    model = _mlp()
    data = _calib()
    pruner = Pruner(model, criterion)
    p, sizes = 0.3, _numel(model)
    for k in range(1, 6):
        pruner.step(p, data=data)
        for name, kept in _kept(model).items():
            target = round(sizes[name] * (1 - p) ** k)
            assert abs(kept - target) <= 1, (name, k, kept, target)
            assert kept == target  # density is tracked exactly


def test_global_scope_total_kept():
    model = _mlp()
    pruner = Pruner(model, "magnitude", scope="global")
    p, total = 0.4, sum(_numel(model).values())
    for k in range(1, 4):
        pruner.step(p)
        kept = sum(_kept(model).values())
        assert abs(kept - round(total * (1 - p) ** k)) <= 1
        assert pruner.sparsity() == pytest.approx(1 - kept / total)
    # global ranking gives different per-layer densities
    dens = {n: _kept(model)[n] / s for n, s in _numel(model).items()}
    assert len({round(d, 3) for d in dens.values()}) > 1


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("min_kept", [1, 5])
def test_never_empty_guard(scope, min_kept):
    model = _mlp()
    pruner = Pruner(model, "magnitude", scope=scope, min_kept=min_kept)
    for _ in range(6):
        pruner.step(0.99)
    for name, kept in _kept(model).items():
        assert kept == min_kept, name
    model(torch.rand(2, 1, 8, 8))


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5])
def test_amount_outside_range_raises(amount):
    pruner = Pruner(_mlp(), "magnitude")
    with pytest.raises(ValueError):
        pruner.step(amount)


def test_amount_zero_masks_nothing_away():
    model = _mlp()
    Pruner(model, "magnitude").step(0.0)
    assert _kept(model) == _numel(model)


# ---------------------------------------------------------------------------- exclusions


@pytest.mark.parametrize("exclude, excluded", [
    (["classifier"], {"classifier"}),
    (["fcs.*"], {"fcs.0", "fcs.1"}),
    (["fcs.1.weight"], {"fcs.1"}),
    ([nn.Linear], {"fcs.0", "fcs.1", "classifier"}),
    (["encoding"], {"fcs.0"}),
    (["encoding", "classifier"], {"fcs.0", "classifier"}),
])
def test_exclusions(exclude, excluded):
    model = _mlp()
    pruner = Pruner(model, "magnitude", exclude=exclude)
    if excluded == {"fcs.0", "fcs.1", "classifier"}:
        assert pruner.layers() == {}
        return
    pruner.step(0.5, data=_calib())
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if name in excluded:
                assert not is_masked(module), name
                assert int(mask_of(module).sum()) == module.weight.numel()
            else:
                assert is_masked(module), name
    rows = {r["layer"]: r for r in pruner.report_rows()}
    assert {n for n, r in rows.items() if r["criterion"] == "excluded"} == excluded


def test_role_exclusion_needs_data():
    pruner = Pruner(_mlp(), "magnitude", exclude=["fcs.1"])
    pruner.step(0.2)  # a name, not a role: no data needed
    pruner = Pruner(_mlp(), "magnitude", exclude=["encoding"])
    with pytest.raises(ValueError, match="calibration data"):
        pruner.step(0.2)


# ---------------------------------------------------------------------------- report / masks


def test_report_masks_and_sparsity_with_prob():
    model = _mlp()
    pruner = Pruner(model, "prob")
    pruner.step(0.5, data=_calib())
    table = pruner.report()
    header = table.splitlines()[0].split()
    assert header == ["layer", "weights", "kept", "sparsity", "criterion", "mask"]
    rows = {r["layer"]: r for r in pruner.report_rows()}
    assert rows["fcs.0"]["criterion"] == "magnitude"  # encoding
    assert rows["classifier"]["criterion"] == "magnitude"
    assert rows["fcs.1"]["criterion"] == "prob"
    assert "SF-IMP-1" in rows["fcs.0"]["note"]
    for name in rows:
        assert name in table
        assert rows[name]["mask"] == "static"
    masks = pruner.masks
    assert set(masks) == {"fcs.0.weight", "fcs.1.weight", "classifier.weight"}
    assert all(m.dtype == torch.bool for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert pruner.sparsity() == pytest.approx(1 - sum(int(m.sum()) for m in masks.values()) / total)
    assert pruner.sparsity() == pytest.approx(0.5, abs=2 / total)
    assert table.splitlines()[-1].startswith("total")


# ---------------------------------------------------------------------------- static vs dynamic


def test_static_masks_only_shrink():
    model = _mlp()
    pruner = Pruner(model, "prob")
    data = _calib()
    prev = None
    for _ in range(4):
        # perturb the weights so that scores reorder between steps
        with torch.no_grad():
            for m in model.modules():
                if is_masked(m):
                    weight_of(m).add_(torch.randn_like(weight_of(m)) * 0.2)
        pruner.step(0.3, data=data)
        cur = pruner.masks
        if prev is not None:
            for k in cur:
                assert not (cur[k] & ~prev[k]).any(), k  # no regrowth
        prev = {k: v.clone() for k, v in cur.items()}


def test_dynamic_layer_regrows():
    model = _mlp()
    data = _calib(n_batches=1)
    pruner = Pruner(model, "magnitude", dynamic=["classifier"])
    pruner.step(0.5, data=data)
    clf = model.classifier
    assert is_dynamic(clf) and not is_dynamic(model.fcs[0])
    mask = mask_of(clf)
    idx = torch.nonzero(~mask)[0]
    enc_mask = mask_of(model.fcs[0])
    enc_idx = torch.nonzero(~enc_mask)[0]
    with torch.no_grad():
        clf.weight_orig[tuple(idx)] = 100.0
        model.fcs[0].weight_orig[tuple(enc_idx)] = 100.0  # static: orig was zeroed, stays pruned
    pruner.step(0.1, data=data)
    assert mask_of(clf)[tuple(idx)]
    assert not mask_of(model.fcs[0])[tuple(enc_idx)]
    assert int(mask_of(clf).sum()) == round(clf.weight.numel() * 0.5 * 0.9)


def test_dynamic_roles_with_sf_imp2_settings():
    model = _mlp()
    pruner = Pruner(model, "prob", dynamic=("encoding", "classifier"))
    pruner.step(0.5, data=_calib())
    assert is_dynamic(model.fcs[0]) and is_dynamic(model.classifier)
    assert is_masked(model.fcs[1]) and not is_dynamic(model.fcs[1])
    assert {r["layer"]: r["mask"] for r in pruner.report_rows()} == {
        "fcs.0": "dynamic", "fcs.1": "static", "classifier": "dynamic"}


# ---------------------------------------------------------------------------- ties, determinism


def test_ties_broken_by_magnitude():
    model = _mlp()
    sizes = _numel(model)
    dense = {n: weight_of(m).detach().abs().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    Pruner(model, CONSTANT).step(0.75)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            keep = round(sizes[name] * 0.25)
            expected = torch.zeros(sizes[name], dtype=torch.bool)
            expected[torch.argsort(dense[name].flatten(), stable=True)[-keep:]] = True
            assert torch.equal(mask_of(module).flatten(), expected), name


def test_silent_channel_ties_broken_by_magnitude():
    """All weights of a silent input channel score 0 under prob; among them |w| decides."""
    torch.manual_seed(0)
    model = _mlp()
    data = [(torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))]  # nothing fires at all
    Pruner(model, "prob").step(0.5, data=data)
    w = model.fcs[1].weight_orig.detach().abs()
    mask = mask_of(model.fcs[1])
    assert w[mask].min() >= w[~mask].max()


@pytest.mark.parametrize("criterion", ["random", "prob"])
def test_masks_deterministic_for_fixed_seed(criterion):
    def run(seed: int) -> dict[str, torch.Tensor]:
        model = _mlp(seed=0)
        pruner = Pruner(model, criterion, seed=seed)
        for _ in range(3):
            pruner.step(0.3, data=_calib())
        return pruner.masks

    a, b = run(3), run(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if criterion == "random":
        c = run(4)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_inside_user_training_loop():
    model = _mlp()
    data = _calib(n_batches=3)
    pruner = Pruner(model, "prob", calib_batches=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x).mean(0), y).backward()
            opt.step()
        pruner.step(0.4, data=data)
        model(data[0][0])
        for name, module in model.named_modules():
            if is_masked(module):
                assert torch.count_nonzero(module.weight.detach()[~mask_of(module)]) == 0, name
    assert pruner.steps_taken == 3
    sizes = _numel(model)
    for name, kept in _kept(model).items():
        assert kept == round(sizes[name] * 0.6 ** 3)


def test_pruner_state_dict_round_trip():
    model = _mlp()
    pruner = Pruner(model, "magnitude")
    pruner.step(0.3)
    other = Pruner(model, "magnitude")
    other.load_state_dict(pruner.state_dict())
    pruner.step(0.3)
    other_model = _mlp()
    other2 = Pruner(other_model, "magnitude")
    other2.step(0.3)
    other2.step(0.3)
    assert all(torch.equal(pruner.masks[k], other2.masks[k]) for k in pruner.masks)
