"""Benchmark: wall time for the default digits MLP to reach >= 97% test accuracy (target < 30 s).

Run: python experiments/bench_train.py [--seeds 3]
Prints, per seed, the epoch at which test accuracy first reached 97%, the wall time to get there
(training + per-epoch evaluation, data loading included) and the final accuracy.
"""

from __future__ import annotations

import argparse
import time

import torch

from snnprune import models
from snnprune.data import loaders
from snnprune.train import TrainConfig, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.97)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default mlp, TrainConfig() defaults")
    print(f"{'seed':>4}  {'epoch@97%':>9}  {'s to 97%':>8}  {'final acc':>9}  {'total s':>7}")
    for seed in range(args.seeds):
        start = time.perf_counter()
        train_loader, test_loader = loaders("digits", seed=seed)
        torch.manual_seed(seed)
        model = models.build("mlp")
        reached: list[float] = []

        def note(epoch: int, record: dict, reached: list[float] = reached, start: float = start) -> None:
            if not reached and record["test_accuracy"] >= args.target:
                reached.append(epoch + 1)
                reached.append(time.perf_counter() - start)

        history = fit(model, train_loader, test_loader, TrainConfig(seed=seed), progress=False, on_epoch_end=note)
        total = time.perf_counter() - start
        epoch, secs = (f"{int(reached[0])}", f"{reached[1]:.1f}") if reached else ("never", "-")
        print(f"{seed:>4}  {epoch:>9}  {secs:>8}  {history[-1]['test_accuracy']:>9.3f}  {total:>7.1f}")
    print("target: >= 97% test accuracy in < 30 s of wall time")


if __name__ == "__main__":
    main()
