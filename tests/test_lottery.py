"""Iterative pruning with rewinding: sparsity schedule, exact rewinds, dynamic regrowth, resume."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from snnprune import Pruner, data, lottery, models
from snnprune.lottery import LotteryConfig, rewind, snapshot
from snnprune.masks import get_masks, is_dynamic, is_masked, mask_of, set_mask, weight_of
from snnprune.train import TrainConfig, fit

WORKER = Path(__file__).with_name("lottery_worker.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build("mlp", hidden=(24, 16), num_steps=3)


def _data(n_batches: int = 4, batch: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, 10, (batch,), generator=gen)
        x = torch.rand(batch, 1, 8, 8, generator=gen) * 0.5
        x.view(batch, -1)[torch.arange(batch), y * 6] += 2.0  # a learnable signal
        out.append((x, y))
    return out


def _config(**kw) -> LotteryConfig:
    base = dict(method="IMP", rounds=3, rate=0.4, epochs=2, rewind_epoch=1, epochs_per_round=1,
                calib_batches=2, train=TrainConfig(epochs=2, lr=1e-2))
    base.update(kw)
    return LotteryConfig(**base)


def _pruned_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


# ---------------------------------------------------------------------------- snapshot / rewind


@pytest.mark.parametrize("dynamic", [False, True])
def test_snapshot_rewind_exact(dynamic):
    model = _mlp()
    data = _data(2)
    # train a little so BN statistics move, then take the rewind point
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).mean(0), y).backward()
        opt.step()
    point = snapshot(model)
    assert "fcs.0.weight" in point and "bns.0.running_mean" in point and "bns.0.running_var" in point
    gen = torch.Generator().manual_seed(3)
    for m in _pruned_layers(model).values():
        set_mask(m, torch.rand(m.weight.shape, generator=gen) < 0.5, dynamic=dynamic)
    masks = get_masks(model)
    # move everything away from the point
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for x, y in data * 2:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).mean(0), y).backward()
        opt.step()
    assert not torch.equal(model.bns[0].running_mean, point["bns.0.running_mean"])
    rewind(model, point)
    model.eval()
    model(data[0][0])  # refresh module.weight
    for name, m in _pruned_layers(model).items():
        mask = masks[f"{name}.weight"]
        assert torch.equal(mask_of(m), mask)  # masks kept
        orig = weight_of(m).detach()
        assert torch.equal(orig[mask], point[f"{name}.weight"][mask])
        assert torch.equal(m.weight.detach()[~mask], torch.zeros_like(orig[~mask]))
        if dynamic:  # dense values restored behind the mask, can return later
            assert torch.equal(orig, point[f"{name}.weight"])
        else:
            assert (orig[~mask] == 0).all()
        assert torch.equal(m.bias.detach(), point[f"{name}.bias"])
    for key in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
        assert torch.equal(getattr(model.bns[0], key), point[f"bns.0.{key}"]), key


def test_snapshot_is_a_copy():
    model = _mlp()
    point = snapshot(model)
    with torch.no_grad():
        model.fcs[0].weight.add_(1.0)
    assert not torch.equal(point["fcs.0.weight"], model.fcs[0].weight)


# ---------------------------------------------------------------------------- runs


class _FitSpy:
    """Wraps lottery.fit: records the rewind point (at epoch R of the dense run) and the model
    state at the start of every retraining (just after the rewind)."""

    def __init__(self, rewind_epoch: int) -> None:
        self.rewind_epoch = rewind_epoch
        self.point: dict[str, torch.Tensor] | None = None
        self.starts: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, bool]]] = []
        self.real = lottery.fit

    def __call__(self, model, *args, on_epoch_end=None, **kw):
        if on_epoch_end is not None:  # the dense run
            if self.rewind_epoch == 0:
                self.point = snapshot(model)

            def spy(epoch, record):
                if epoch + 1 == self.rewind_epoch:
                    self.point = snapshot(model)
                on_epoch_end(epoch, record)

            return self.real(model, *args, on_epoch_end=spy, **kw)
        kinds = {n: is_dynamic(m) for n, m in model.named_modules() if is_masked(m)}
        self.starts.append((snapshot(model), get_masks(model), kinds))
        return self.real(model, *args, **kw)


@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_run_sparsity_and_rewind(monkeypatch, rewind_epoch):
    model = _mlp()
    init = snapshot(model)
    spy = _FitSpy(rewind_epoch)
    monkeypatch.setattr(lottery, "fit", spy)
    cfg = _config(rewind_epoch=rewind_epoch)
    records = []
    result = lottery.run(model, _data(), _data(2, seed=1), cfg, device="cpu", progress=False,
                         on_round_end=records.append)
    assert [r["round"] for r in result.rounds] == [0, 1, 2, 3] and records == result.rounds
    sizes = {n: m.weight.numel() for n, m in _pruned_layers(model).items()}
    for k, record in enumerate(result.rounds):
        assert record["sparsity"] == pytest.approx(1 - (1 - cfg.rate) ** k, abs=3 / sum(sizes.values()))
    for name, n in sizes.items():
        assert abs(int(result.masks[f"{name}.weight"].sum()) - n * (1 - cfg.rate) ** cfg.rounds) <= 1
    assert spy.point is not None and len(spy.starts) == cfg.rounds
    if rewind_epoch == 0:
        assert all(torch.equal(spy.point[k], init[k]) for k in init)
    else:
        assert any(not torch.equal(spy.point[k], init[k]) for k in init if k.endswith("weight"))
    for state, masks, kinds in spy.starts:
        assert not any(kinds.values())
        for key, value in spy.point.items():
            if key in masks:
                mask = masks[key]
                assert torch.equal(state[key][mask], value[mask]), key
                assert (state[key][~mask] == 0).all(), key
            else:  # biases, BN affine parameters and running statistics
                assert torch.equal(state[key], value), key


def test_sf_imp2_dynamic_layers_regrow_static_never(monkeypatch):
    model = _mlp()
    spy = _FitSpy(1)
    monkeypatch.setattr(lottery, "fit", spy)
    per_round: list[dict[str, torch.Tensor]] = []
    cfg = _config(method="SF-IMP-2", rounds=4, rate=0.5, epochs_per_round=2,
                  train=TrainConfig(epochs=2, lr=3e-2))
    lottery.run(model, _data(), _data(2, seed=1), cfg, device="cpu", progress=False,
                on_round_end=lambda r: per_round.append({k: v.clone() for k, v in get_masks(model).items()}))
    assert is_dynamic(model.fcs[0]) and is_dynamic(model.classifier)
    assert is_masked(model.fcs[1]) and not is_dynamic(model.fcs[1])
    masks = per_round[1:]  # round 0 is dense (no masks)
    regrown = {k: 0 for k in masks[0]}
    for prev, cur in zip(masks, masks[1:]):
        for k in cur:
            regrown[k] += int((cur[k] & ~prev[k]).sum())
    assert regrown["fcs.1.weight"] == 0
    assert regrown["fcs.0.weight"] + regrown["classifier.weight"] > 0
    # rewinding a dynamic layer restores the dense rewind values behind its mask
    for state, masks_at_start, kinds in spy.starts:
        assert kinds == {"fcs.0": True, "fcs.1": False, "classifier": True}
        for key in ("fcs.0.weight", "classifier.weight"):
            assert torch.equal(state[key], spy.point[key])
        mask = masks_at_start["fcs.1.weight"]
        assert (state["fcs.1.weight"][~mask] == 0).all()


# ---------------------------------------------------------------------------- kill and resume


def _worker(folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(folder), str(out), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
    straight = _worker(tmp_path / "a", tmp_path / "a.pt")  # runs alongside the interrupted one
    victim = _worker(tmp_path / "b", tmp_path / "b.pt", "--pause", "0.5")
    deadline = time.monotonic() + 120
    while not (tmp_path / "b" / "round_001.pt").exists():
        assert victim.poll() is None, victim.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stderr.close()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "b.pt").exists()
    assert not (tmp_path / "b" / "round_003.pt").exists()
    _finish(_worker(tmp_path / "b", tmp_path / "b.pt"))
    _finish(straight)
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a["resumed_from"] is None and b["resumed_from"] >= 1
    assert set(a["masks"]) == set(b["masks"])
    for key in a["masks"]:
        assert torch.equal(a["masks"][key], b["masks"][key]), key
    assert [r["round"] for r in a["rounds"]] == [0, 1, 2, 3]
    for ra, rb in zip(a["rounds"], b["rounds"]):
        for key in ("accuracy", "loss", "train_loss", "sparsity", "pruned_sparsity", "criteria"):
            assert ra[key] == rb[key], (ra["round"], key, ra[key], rb[key])
    assert "prob" in a["rounds"][-1]["criteria"]  # the statistics path was exercised


def test_round_checkpoint_holds_everything_to_inspect_or_resume(tmp_path):
    train_loader, test_loader = data.loaders("digits", batch_size=256)
    cfg = lottery.LotteryConfig(method="IMP", rounds=1, rate=0.5, epochs=1, rewind_epoch=0, epochs_per_round=1)
    lottery.run(models.build("mlp", hidden=(16,)), train_loader, test_loader, cfg, checkpoint_dir=tmp_path,
                progress=False)
    ck = torch.load(tmp_path / "round_001.pt", weights_only=True)
    assert set(ck["extra"]) == {"round", "rewind_point", "pruner", "rng", "optimizer"}
    assert ck["extra"]["optimizer"]["state"] and ck["extra"]["optimizer"]["param_groups"]
    assert ck["masks"] and [h["round"] for h in ck["history"]] == [0, 1]


# ---------------------------------------------------------------------------- prune_in_rounds (trained model)


def _trained(seed: int = 0) -> nn.Module:
    model = _mlp(seed)
    fit(model, _data(), None, TrainConfig(epochs=2, lr=1e-2), progress=False)
    return model


def _prune_in_rounds(model: nn.Module, folder: Path | None, **kw):
    options = {"amount": 0.5, "rounds": 3, "train": TrainConfig(epochs=1, lr=1e-2), "seed": 3,
               "settings": {"run": "a"}, **kw}
    return lottery.prune_in_rounds(model, Pruner(model, "prob", calib_batches=2), _data(), _data(2, seed=1),
                                   checkpoint_dir=folder, progress=False, **options)


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_prune_in_rounds_schedule_crash_and_resume(tmp_path):
    trained = _trained()
    reference = copy.deepcopy(trained)
    ref = _prune_in_rounds(reference, tmp_path / "ref")
    assert [r["round"] for r in ref.rounds] == [1, 2, 3] and ref.resumed_from is None
    sizes = {n: m.weight.numel() for n, m in _pruned_layers(reference).items()}
    for record in ref.rounds:
        assert record["sparsity"] == pytest.approx(1 - 0.5 ** record["round"], abs=3 / sum(sizes.values()))
        assert 0 <= record["accuracy_pruned"] <= 1 and 0 <= record["accuracy"] <= 1
    masks = get_masks(reference)
    for name, n in sizes.items():
        assert abs(int(masks[f"{name}.weight"].sum()) - n * 0.5**3) <= 1

    def crash(record: dict) -> None:
        if record["round"] == 1:
            raise RuntimeError("simulated crash after round 1")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _prune_in_rounds(copy.deepcopy(trained), tmp_path / "crashed", on_round_end=crash)
    assert [p.name for p in sorted((tmp_path / "crashed").glob("round_*.pt"))] == ["round_001.pt"]

    resumed_model, seen = copy.deepcopy(trained), []
    resumed = _prune_in_rounds(resumed_model, tmp_path / "crashed", on_resume=lambda path, k: seen.append((path.name, k)))
    assert seen == [("round_001.pt", 1)] and resumed.resumed_from == 1
    assert resumed.accuracy_before == ref.accuracy_before
    assert _without_seconds(resumed.rounds) == _without_seconds(ref.rounds)
    got = get_masks(resumed_model)
    assert all(torch.equal(got[k], masks[k]) for k in masks)
    torch.testing.assert_close(resumed_model.state_dict(), reference.state_dict(), rtol=0, atol=0)


def test_prune_in_rounds_refuses_a_folder_with_other_settings(tmp_path):
    _prune_in_rounds(_trained(), tmp_path, rounds=1)
    with pytest.raises(lottery.RoundSettingsError, match="other settings"):
        _prune_in_rounds(_trained(), tmp_path, rounds=2, settings={"run": "b"})


@pytest.mark.parametrize("rewound", [False, True])
def test_prune_in_rounds_fine_tunes_or_rewinds(monkeypatch, rewound):
    point = snapshot(_mlp(0))  # the initialisation of the trained model
    spy = _FitSpy(rewind_epoch=1)
    monkeypatch.setattr(lottery, "fit", spy)
    model = _trained()
    _prune_in_rounds(model, None, rounds=2, rewind_point=point if rewound else None)
    assert len(spy.starts) == 2
    for state, masks, _ in spy.starts:
        for key, mask in masks.items():
            assert (state[key][~mask] == 0).all(), key
            assert torch.equal(state[key][mask], point[key][mask]) == rewound, key
