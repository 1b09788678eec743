"""Benchmark of the cost of masks and of a pruning step (CPU, digits).

    python experiments/bench_masks.py [--repeats 5] [--threads 1] [--batches 8]

(a) one training epoch on digits (mlp, convnet) with static masks at 90 % sparsity over the same
    epoch without masks (same seed, same data, same initial weights); median of ``--repeats``.
    Target <= 1.05x.
(b) one ``Pruner("prob").step`` with ``calib_batches=B`` over one calibration pass
    (``collect_stats`` on the same B batches); median of ``--repeats``.

Prints a table, the targets and whether they are met. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from snnprune import Pruner, collect_stats, data, estimators, models
from snnprune.masks import prunable_layers, set_mask
from snnprune.train import TrainConfig, make_optimizer, make_scheduler, train_epoch

MASK_TARGET = 1.05


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "mlp":
        return models.build("mlp")
    return models.build("convnet")


def mask_90(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    for module in prunable_layers(model).values():
        scores = torch.rand(module.weight.shape, generator=gen)
        keep = max(1, round(0.1 * scores.numel()))
        mask = torch.zeros(scores.numel(), dtype=torch.bool)
        mask[torch.argsort(scores.flatten())[-keep:]] = True
        set_mask(module, mask.view_as(scores))


def epoch_seconds(model: torch.nn.Module, loader, cfg: TrainConfig) -> float:
    torch.manual_seed(0)
    loader.generator.manual_seed(0)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, len(loader))
    start = time.perf_counter()
    train_epoch(model, loader, opt, sched, cfg, device=torch.device("cpu"), progress=False)
    return time.perf_counter() - start


def bench_masks(arch: str, loader, repeats: int) -> tuple[float, float]:
    cfg = TrainConfig()
    dense0 = build(arch)
    masked0 = build(arch)
    mask_90(masked0)
    epoch_seconds(copy.deepcopy(dense0), loader, cfg)  # warm-up
    epoch_seconds(copy.deepcopy(masked0), loader, cfg)
    dense, masked = [], []
    for _ in range(repeats):  # interleaved, each from the same starting weights
        dense.append(epoch_seconds(copy.deepcopy(dense0), loader, cfg))
        masked.append(epoch_seconds(copy.deepcopy(masked0), loader, cfg))
    return statistics.median(dense), statistics.median(masked)


def bench_step(arch: str, batches: list, repeats: int) -> tuple[float, float]:
    base = build(arch)
    calib, step = [], []
    for _ in range(repeats + 1):
        model = copy.deepcopy(base)
        start = time.perf_counter()
        collect_stats(model, batches, max_batches=len(batches))
        calib.append(time.perf_counter() - start)
        model = copy.deepcopy(base)
        pruner = Pruner(model, "prob", calib_batches=len(batches))
        start = time.perf_counter()
        pruner.step(0.5, data=batches)
        step.append(time.perf_counter() - start)
    return statistics.median(calib[1:]), statistics.median(step[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--batches", type=int, default=8, help="B, calibration batches of (b)")
    parser.add_argument("--archs", nargs="+", default=["mlp", "convnet"])
    args = parser.parse_args()

    estimators.warmup(announce=False)  # Numba's OpenMP start-up resets torch's thread count
    if args.threads:
        torch.set_num_threads(args.threads)
    train_loader, _ = data.loaders("digits", batch_size=64, seed=0)
    batches = [x for x, _ in list(train_loader)[: args.batches]]
    print(f"digits, batch 64, T=8, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats}")
    print()
    print(f"{'(a) epoch':<12}{'dense s':>10}{'masked s':>10}{'ratio':>8}  target   met")
    met_all = True
    for arch in args.archs:
        dense, masked = bench_masks(arch, train_loader, args.repeats)
        ratio = masked / dense
        met = ratio <= MASK_TARGET
        met_all &= met
        print(f"{arch:<12}{dense:>10.3f}{masked:>10.3f}{ratio:>7.3f}x  <= {MASK_TARGET:.2f}x  {'yes' if met else 'NO'}")
    print()
    print(f"{'(b) B=' + str(args.batches):<12}{'calib s':>10}{'step s':>10}{'ratio':>8}")
    for arch in args.archs:
        calib, step = bench_step(arch, batches, args.repeats)
        print(f"{arch:<12}{calib:>10.3f}{step:>10.3f}{step / calib:>7.3f}x")
    print()
    print(f"mask overhead target (<= {MASK_TARGET:.2f}x): {'met' if met_all else 'MISSED'}")


if __name__ == "__main__":
    main()
