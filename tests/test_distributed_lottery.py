"""Two gloo processes on CPU: statistics all-reduce gives every rank the single-process masks, and
``fit(ddp=True)`` keeps masks in force on every rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from snnprune import Pruner, data, models
from snnprune.masks import mask_of, prunable_layers, weight_of
from snnprune.train import fit

WORLD = 2
CALIB_BATCHES = 4
BATCH = 32


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("mlp", hidden=(32, 16), num_steps=4)


def _calibration() -> list[torch.Tensor]:
    x = data.load("digits", "train").tensors[0]
    return [x[i * BATCH:(i + 1) * BATCH] for i in range(CALIB_BATCHES)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        calib = _calibration()[rank::WORLD]  # this rank's half of the calibration data
        pruner = Pruner(model, "prob", seed=0)
        pruner.step(0.5, data=calib)
        pruner.step(0.3, data=calib)
        after_prune = {k: v.clone() for k, v in pruner.masks.items()}
        # one epoch of DDP training with the masks held
        train_set = data.load("digits", "train")
        sub = TensorDataset(*(t[:256] for t in train_set.tensors))
        loader = DataLoader(sub, batch_size=32, sampler=DistributedSampler(sub, shuffle=True, seed=0))
        history = fit(model, loader, None, epochs=1, lr=1e-2, device="cpu", ddp=True, progress=False)
        model(torch.rand(2, 1, 8, 8))  # refresh module.weight
        torch.save({
            "masks": after_prune,
            "masks_after_fit": {k: v.clone() for k, v in pruner.masks.items()},
            "orig": {n: weight_of(m).detach().clone() for n, m in prunable_layers(model).items()},
            "effective": {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()},
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "loss": history[-1]["train_loss"],
        }, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_prob_masks_and_ddp_fit(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn", join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # the single-process reference on all calibration batches
    model = _model()
    pruner = Pruner(model, "prob", seed=0)
    pruner.step(0.5, data=_calibration())
    pruner.step(0.3, data=_calibration())
    reference = pruner.masks
    assert {r["criterion"] for r in pruner.report_rows()} == {"prob", "magnitude"}

    for rank in ranks:
        assert set(rank["masks"]) == set(reference)
        for key in reference:
            assert torch.equal(rank["masks"][key], reference[key]), key
            assert torch.equal(rank["masks_after_fit"][key], reference[key]), key

    # DDP: identical weights on both ranks, pruned weights exactly zero, training did something
    a, b = ranks
    for key in a["state"]:  # BN running statistics are per rank under DDP (rank 0's are broadcast)
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(a["state"][key], b["state"][key]), key
    for name in a["orig"]:
        mask = reference[f"{name}.weight"]
        for rank in ranks:
            assert torch.count_nonzero(rank["orig"][name][~mask]) == 0, name
            assert torch.count_nonzero(rank["effective"][name][~mask]) == 0, name
        dense = weight_of(dict(model.named_modules())[name]).detach()
        assert not torch.equal(a["orig"][name][mask], dense[mask]), name
    assert all(mask_of(m).sum() < m.weight.numel() for m in prunable_layers(model).values())


@pytest.mark.slow
def test_lottery_under_torchrun_gives_identical_masks_on_every_rank(tmp_path):
    """Launched by torchrun (2 gloo ranks): DDP training, all-reduced statistics, one writer."""
    worker = Path(__file__).with_name("ddp_lottery_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(worker), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["masks"].keys() == ranks[1]["masks"].keys()
    for name in ranks[0]["masks"]:
        assert torch.equal(ranks[0]["masks"][name], ranks[1]["masks"][name]), name
    for name, value in ranks[0]["state"].items():  # DDP keeps the parameters in step
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert [r["accuracy"] for r in ranks[0]["rounds"]] == [r["accuracy"] for r in ranks[1]["rounds"]]
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["round_000.pt", "round_001.pt", "round_002.pt"]
    assert ranks[0]["rounds"][-1]["sparsity"] > 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
