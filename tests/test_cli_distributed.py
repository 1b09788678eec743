"""The command line under torchrun: 2 gloo ranks train and prune; rank 0 alone writes and prints."""

import os
import socket
import subprocess
import sys

import pytest
import torch


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "snnprune", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=300,
    )


@pytest.mark.slow
def test_train_and_prune_under_torchrun(tmp_path):
    trained = _torchrun(["train", "--epochs", "2", "-o", "m.pt"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert trained.stdout.count("saved m.pt") == 1  # printed by rank 0 only
    pruned = _torchrun(["prune", "m.pt", "--criterion", "SF-IMP-1", "--sparsity", "0.75", "--rounds", "2",
                        "--epochs-per-round", "1", "--json"], tmp_path)
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    assert pruned.stdout.count('"output"') == 1
    ck = torch.load(tmp_path / "m.pruned.pt", weights_only=True)
    masks = {k: v for k, v in ck["state_dict"].items() if k.endswith("_mask")}
    kept = sum(int(v.sum()) for v in masks.values())
    total = sum(v.numel() for v in masks.values())
    assert abs(1 - kept / total - 0.75) < 0.01
    assert not (tmp_path / "m.pruned.pt.rounds").exists()
