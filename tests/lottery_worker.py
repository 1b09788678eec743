"""Subprocess helper of tests/test_lottery.py: one tiny resumable lottery run on digits.

    python tests/lottery_worker.py CHECKPOINT_DIR OUTPUT_FILE [--seed S] [--method M] [--pause P]

Runs :func:`snnprune.lottery.run` (mlp hidden (32,), epochs 2, rounds 3, epochs_per_round 1,
calib_batches 2) into ``CHECKPOINT_DIR`` (resuming a run found there) and writes the final masks
and the per-round metrics to ``OUTPUT_FILE`` (``torch.save``). ``--pause`` sleeps that many seconds
after every finished round, so a test can kill the process between rounds.
"""

from __future__ import annotations

import argparse
import time

import torch

from snnprune import data, models
from snnprune.lottery import LotteryConfig, run
from snnprune.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="SF-IMP-1")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 16])
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = models.build("mlp", hidden=tuple(args.hidden), num_steps=4)
    train_loader, test_loader = data.loaders("digits", batch_size=64, seed=args.seed)
    config = LotteryConfig(method=args.method, rounds=3, rate=0.5, epochs=2, rewind_epoch=1,
                           epochs_per_round=1, calib_batches=2, seed=args.seed,
                           train=TrainConfig(epochs=2, lr=5e-3))

    def pause(record: dict) -> None:
        if args.pause:
            time.sleep(args.pause)

    result = run(model, train_loader, test_loader, config, checkpoint_dir=args.checkpoint_dir,
                 device="cpu", progress=False, on_round_end=pause)
    rounds = [{k: v for k, v in r.items() if k != "seconds"} for r in result.rounds]
    torch.save({"masks": {k: v.cpu() for k, v in result.masks.items()}, "rounds": rounds,
                "resumed_from": result.resumed_from}, args.output)


if __name__ == "__main__":
    main()
