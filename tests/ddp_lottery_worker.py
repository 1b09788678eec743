"""Run by torchrun in tests/test_distributed_lottery.py: a tiny SF-IMP-1 run under DDP.

Each rank writes its final masks and metrics to OUT/rank<k>.pt.
"""

import sys
from pathlib import Path

import torch

from snnprune import data, distributed, lottery, models


def main(out: Path) -> None:
    assert distributed.init_from_env(), "expected to be launched by torchrun with WORLD_SIZE > 1"
    torch.set_num_threads(1)
    train, test = data.loaders("digits", batch_size=64, distributed=True)
    torch.manual_seed(0)
    model = models.build("mlp", hidden=(32, 16))
    cfg = lottery.LotteryConfig(method="SF-IMP-1", rounds=2, rate=0.5, epochs=1, rewind_epoch=1,
                                epochs_per_round=1, calib_batches=2)
    result = lottery.run(model, train, test, cfg, ddp=True, checkpoint_dir=out / "rounds", progress=False)
    torch.save({"masks": result.masks, "rounds": result.rounds,
                "state": {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}},
               out / f"rank{distributed.rank()}.pt")
    distributed.shutdown()  # barrier first: rank 0 may still be writing round files


if __name__ == "__main__":
    main(Path(sys.argv[1]))
