"""SpikeStats.all_reduce across two gloo processes equals one pass over all the data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from snnprune.data import load
from snnprune.models import build
from snnprune.stats import collect_stats

WORLD = 2


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build("convnet", input_shape=(1, 8, 8), channels=(4, 6), hidden=8, num_steps=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 + 0.6 * torch.rand(m.num_features, generator=g))
    return model


def _batches() -> list[torch.Tensor]:
    """Four batches of real digits; rank r gets batches 2r and 2r+1 (unequal sizes)."""
    x = load("digits", "test").tensors[0][:100]
    return list(x.split([20, 30, 35, 15]))


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        model = _model()
        part = torch.load(os.path.join(tmp, "batches.pt"), weights_only=True)[2 * rank: 2 * rank + 2]
        local = collect_stats(model, part, distributed=False)
        torch.save(local.to_dict(), os.path.join(tmp, f"local{rank}.pt"))
        stats = collect_stats(model, part)  # distributed by default once initialised
        torch.save(stats.to_dict(), os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _compare(a: dict, b: dict) -> None:
    assert a["samples"] == b["samples"]
    assert a["inputs"].keys() == b["inputs"].keys()
    for k in a["inputs"]:
        assert a["inputs"][k]["count"] == b["inputs"][k]["count"]
        assert torch.equal(a["inputs"][k]["sums"], b["inputs"][k]["sums"]), k
    assert a["membrane"].keys() == b["membrane"].keys()
    for k, ma in a["membrane"].items():
        mb = b["membrane"][k]
        for f in ("count", "hist", "spikes", "lo", "width", "threshold"):
            assert torch.equal(ma[f], mb[f]), (k, f)
        assert ma["elements"] == mb["elements"]
        np.testing.assert_allclose(ma["mean"].numpy(), mb["mean"].numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(ma["m2"].numpy(), mb["m2"].numpy(), rtol=1e-9)


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_all_reduce_equals_single_pass(tmp_path: Path):
    batches = _batches()
    torch.save(batches, tmp_path / "batches.pt")  # the workers need not load scikit-learn
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    full = collect_stats(_model(), batches).to_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r in ranks:
        _compare(r, full)
    assert full["samples"] == 100
    # the halves really differ before the reduction
    local = [torch.load(tmp_path / f"local{r}.pt", weights_only=True) for r in range(WORLD)]
    assert local[0]["samples"] == 50 and local[1]["samples"] == 50
    assert not torch.equal(local[0]["membrane"]["lifs.0"]["mean"], local[1]["membrane"]["lifs.0"]["mean"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
