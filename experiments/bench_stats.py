"""Benchmark of the spike-statistics pipeline (run: ``.venv/bin/python experiments/bench_stats.py``).

Three ratios, each measured in this run (median of repeats, the sides interleaved so that a
change in machine load hits all of them):

(a) ``collect_stats`` (hooks, Numba reductions, histogram, spike counts) over a plain no-grad
    forward pass on the same batches: 3-conv network, 32x32 input, T=5, batch 64. Target <= 1.1x.
    The target was set on a network where per-channel moments and rates taken by plain torch
    hooks cost about 1.01x; that reference is measured alongside ("torch hooks, no histogram")
    so the network's compute density is visible. Two networks: channels (64, 128, 256), where
    the reference indeed costs ~1.0x (the target's network), and the lighter (32, 64, 128), where
    reading every membrane value at all already costs ~1.1x (reported, not a target).
(b) the fused Numba reduction ``membrane_moments`` over its torch reference on a conv-sized
    membrane tensor (T=5 calls on [B=64, C=128, 16x16]). Target >= 3x.
(c) scoring ~10M weights with ``prob`` (statistics given) over one calibration pass (one batch
    of ``collect_stats``). Target <= 10%.

"ratio" is the ratio of the medians (what the targets refer to); "ratio(min)" the ratio of the
fastest repeats, less sensitive to other processes competing for the CPU; "paired" the median and
range of the per-repeat ratios (the two sides of a repeat run back to back, so a slow spell of the
machine mostly cancels).

Options: ``--repeats N`` (default 5), ``--batches N`` for (a) (default 4), ``--threads N``
(torch and Numba threads; default: as configured).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import torch

from snnprune import estimators
from snnprune.masks import prunable_layers
from snnprune.models import build
from snnprune.scoring import score_layers
from snnprune.stats import collect_stats
from snnprune.stepping import run, spiking_neurons


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each function, run in turn ``repeats`` times after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def torch_hook_moments(model: torch.nn.Module) -> list:
    """The reference of (a): per-channel sums and sums of squares of every neuron's membrane and
    per-channel sums of every layer's input, by plain torch forward hooks (no histogram)."""
    sink: list = []

    def neuron_hook(module: torch.nn.Module, args: tuple, output: object) -> None:
        u = module.mem.transpose(0, 1).reshape(module.mem.shape[1], -1)
        sink.append((u.sum(1), (u * u).sum(1)))

    def input_hook(module: torch.nn.Module, args: tuple) -> None:
        x = args[0]
        sink.append(x.sum(dim=(0, 2, 3)) if x.dim() == 4 else x.sum(0))

    handles = [n.register_forward_hook(neuron_hook) for _, n in spiking_neurons(model)]
    handles += [layer.register_forward_pre_hook(input_hook) for layer in prunable_layers(model).values()]
    return handles


def bench_collect(channels: tuple[int, ...], repeats: int, n_batches: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = build("convnet", input_shape=(3, 32, 32), channels=channels, num_steps=5).eval()
    batches = [torch.randn(64, 3, 32, 32) for _ in range(n_batches)]

    def plain() -> None:
        with torch.no_grad():
            for x in batches:
                run(model, x)

    def hooks() -> None:
        handles = torch_hook_moments(model)
        try:
            plain()
        finally:
            for h in handles:
                h.remove()

    def stats() -> None:
        collect_stats(model, batches)

    return interleaved({"plain": plain, "hooks": hooks, "stats": stats}, repeats)


def bench_kernel(repeats: int) -> dict[str, float]:
    steps, channels, nbins = 5, 128, 64
    g = torch.Generator().manual_seed(0)
    mems = [torch.randn(64, channels, 16, 16, generator=g) * 0.7 + 0.4 for _ in range(steps)]
    mems = [estimators.as_bcs(m, 1) for m in mems]  # [64, 128, 256]
    shift = torch.ones(channels, dtype=torch.float64)
    lo = shift - 1.0
    width = torch.full((channels,), 2.0 / nbins, dtype=torch.float64)

    def numba_pass() -> None:
        for u in mems:
            estimators.membrane_moments(u, shift, lo, width, nbins, backend="numba")

    def torch_pass() -> None:
        for u in mems:
            estimators.torch_membrane_moments(u, shift, lo, width, nbins)

    return interleaved({"numba": numba_pass, "torch": torch_pass}, repeats)


def bench_scoring(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    # ~10.1M weights: convs 3->256->512->1024 (3x3), fc 4096->1024, classifier 1024->10
    model = build("convnet", input_shape=(3, 16, 16), channels=(256, 512, 1024), hidden=1024,
                  num_steps=5).eval()
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    batch = [torch.randn(64, 3, 16, 16)]
    stats = collect_stats(model, batch)

    def calibrate() -> None:
        collect_stats(model, batch)

    def score() -> None:
        score_layers(model, "prob", stats=stats)

    return {"weights": weights, **interleaved({"calibration": calibrate, "score": score}, max(3, repeats // 2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    estimators.warmup(announce=False)
    print(f"torch {torch.__version__}, threads: torch {torch.get_num_threads()}, numba "
          f"{numba.get_num_threads()} ({numba.config.THREADING_LAYER}); repeats {args.repeats}")

    a = bench_collect((64, 128, 256), args.repeats, args.batches)
    a_light = bench_collect((32, 64, 128), args.repeats, args.batches)
    b = bench_kernel(args.repeats)
    c = bench_scoring(args.repeats)

    med, low = statistics.median, min
    rows = []

    def row(label: str, num: list[float], den: list[float], target: str, ok: Callable[[float], bool] | None,
            percent: bool = False) -> None:
        ratio, best = med(num) / med(den), low(num) / low(den)
        paired = [n / d for n, d in zip(num, den)]
        fmt = (lambda r: f"{100 * r:.1f}%") if percent else (lambda r: f"{r:.3f}x")
        rows.append((label, f"{med(num):.3f} s / {med(den):.3f} s", fmt(ratio), fmt(best),
                     f"{fmt(med(paired))} [{fmt(min(paired))}, {fmt(max(paired))}]", target,
                     "-" if ok is None else ("yes" if ok(ratio) else "NO")))

    row("(a) collect_stats / plain forward, ch 64-128-256", a["stats"], a["plain"], "<= 1.1x", lambda r: r <= 1.1)
    row("    torch hooks, no histogram / plain forward", a["hooks"], a["plain"], "(~1.01x)", None)
    row("    collect_stats / plain forward, ch 32-64-128", a_light["stats"], a_light["plain"], "(info)", None)
    row("    torch hooks, no histogram / plain forward", a_light["hooks"], a_light["plain"], "(info)", None)
    row("(b) torch reference / numba fused", b["torch"], b["numba"], ">= 3x", lambda r: r >= 3)
    row(f"(c) score {c['weights'] / 1e6:.1f}M weights / calibration", c["score"], c["calibration"], "<= 10%",
        lambda r: r <= 0.10, percent=True)
    header = ("measurement", "median times", "ratio", "ratio(min)", "paired [range]", "target", "met")
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
