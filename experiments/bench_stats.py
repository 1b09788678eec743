"""Benchmark of the spike-statistics pipeline (run: ``.venv/bin/python experiments/bench_stats.py``).

Three ratios, each measured in this run (median of repeats, the two sides interleaved so that a
change in machine load hits both):

(a) ``collect_stats`` (hooks, Numba reductions, histogram, structure discovery) over a plain
    no-grad forward pass on the same batches: 3-conv network, 32x32 input, T=5, batch 64.
    Target <= 1.1x.
(b) the fused Numba reduction ``membrane_moments`` over its torch reference on a conv-sized
    membrane tensor (T=5 calls on [B=64, C=128, 16x16]). Target >= 3x.
(c) scoring ~10M weights with ``prob`` (statistics given) over one calibration pass (one batch
    of ``collect_stats``). Target <= 10%.

"ratio" is the ratio of the medians (what the targets refer to); "ratio(min)" the ratio of the
fastest repeats, less sensitive to other processes competing for the CPU.

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
from snnprune.models import build
from snnprune.scoring import score_layers
from snnprune.stats import collect_stats
from snnprune.stepping import run
from snnprune.structure import discover


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds of ``a`` and ``b``, run alternately ``repeats`` times after one warm-up each."""
    a()
    b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a))
        tb.append(timed(b))
    return ta, tb


def bench_collect(repeats: int, n_batches: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build("convnet", input_shape=(3, 32, 32), channels=(32, 64, 128), num_steps=5).eval()
    batches = [torch.randn(64, 3, 32, 32) for _ in range(n_batches)]
    structure = discover(model, batches[0][:2])

    def plain() -> None:
        with torch.no_grad():
            for x in batches:
                run(model, x)

    def stats() -> None:
        collect_stats(model, batches)

    def stats_given_structure() -> None:
        collect_stats(model, batches, structure=structure)

    t_plain, t_stats = interleaved(plain, stats, repeats)
    t_plain2, t_given = interleaved(plain, stats_given_structure, repeats)
    return {"plain": t_plain, "stats": t_stats, "plain2": t_plain2, "given": t_given}


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

    t_numba, t_torch = interleaved(numba_pass, torch_pass, repeats)
    return {"numba": t_numba, "torch": t_torch}


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

    reps = max(3, repeats // 2)
    t_calib, t_score = interleaved(calibrate, score, reps)
    return {"weights": weights, "calibration": t_calib, "score": t_score}


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

    a = bench_collect(args.repeats, args.batches)
    b = bench_kernel(args.repeats)
    c = bench_scoring(args.repeats)

    med, low = statistics.median, min
    rows = []

    def row(label: str, num: list[float], den: list[float], target: str, ok: Callable[[float], bool],
            percent: bool = False) -> None:
        ratio, best = med(num) / med(den), low(num) / low(den)
        fmt = (lambda r: f"{100 * r:.1f}%") if percent else (lambda r: f"{r:.3f}x")
        rows.append((label, f"{med(num):.3f} s / {med(den):.3f} s", fmt(ratio), fmt(best), target,
                     "-" if ok is None else ("yes" if ok(ratio) else "NO")))

    row("(a) collect_stats / plain forward", a["stats"], a["plain"], "<= 1.1x", lambda r: r <= 1.1)
    row("    same, structure given (no discovery)", a["given"], a["plain2"], "(info)", None)
    row("(b) torch reference / numba fused", b["torch"], b["numba"], ">= 3x", lambda r: r >= 3)
    row(f"(c) score {c['weights'] / 1e6:.1f}M weights / calibration", c["score"], c["calibration"], "<= 10%",
        lambda r: r <= 0.10, percent=True)
    header = ("measurement", "median times", "ratio", "ratio(min)", "target", "met")
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
