"""One prepared check of snnprune on a GPU: does every stage agree with the CPU, and how fast is it.

Run it where a CUDA device is available::

    python experiments/gpu_check.py                 # --device cuda
    python experiments/gpu_check.py --json-out gpu_check.json

It prints one table of checks (``ok`` / ``FAIL``, each with the measured value and its bound) and one
of timings, and exits 1 if any check failed. ``--device cpu`` runs the same script on the CPU (the
"device" side then uses the plain-torch estimators, the reference side the Numba ones); the test
suite does that with ``--small`` so the script cannot rot between GPU sessions.

Checks, device against CPU:

1. estimators: the torch reductions on the device over recorded membrane tensors equal the Numba
   kernels on the CPU (histograms and spike counts exactly; sums to 1e-6 relative);
2. collect_stats: the statistics of the same model and data (TF32 off) agree: counts exactly,
   means within 1e-4 of the channel's standard deviation, histogram mass moved < 0.1%;
3. scores and masks: ``prob`` scores from the two agree to 1e-3 relative, masks at 50% sparsity
   to 99.9% of the weights;
4. training: the digits MLP reaches >= 85% test accuracy in 3 epochs on the device, with and
   without AMP;
5. lottery: one SF-IMP-1 round on the device gives the requested sparsity, and its round checkpoint
   loads on the CPU with the same masks;
6. command line: ``snnprune train / prune / eval --device DEVICE`` succeed in subprocesses.

Timings (device side; the CPU side for the same work where it is cheap to run): collect_stats over
a plain forward (the bench_stats (a) network), one training epoch, one pruning step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from snnprune import estimators
from snnprune.checkpoint import load
from snnprune.data import loaders
from snnprune.lottery import LotteryConfig
from snnprune.lottery import run as run_lottery
from snnprune.masks import get_masks
from snnprune.models import build
from snnprune.pruner import Pruner
from snnprune.scoring import scores
from snnprune.stats import collect_stats
from snnprune.stepping import run, spiking_neurons
from snnprune.train import TrainConfig, evaluate, fit


class Report:
    """Collects check results and timings; prints them as two tables."""

    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []

    def check(self, name: str, value: float, bound: str, ok: bool) -> None:
        self.checks.append({"check": name, "value": value, "bound": bound, "ok": bool(ok)})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {value:.6g} ({bound})", flush=True)

    def timing(self, name: str, seconds: float, note: str = "") -> None:
        self.timings.append({"timing": name, "seconds": seconds, "note": note})

    def failed(self) -> list[str]:
        return [c["check"] for c in self.checks if not c["ok"]]

    def print_timings(self) -> None:
        width = max((len(t["timing"]) for t in self.timings), default=0)
        for t in self.timings:
            print(f"  {t['timing'].ljust(width)}  {t['seconds']:8.4f} s  {t['note']}")


def synchronized(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A timer of ``fn()`` in wall seconds that waits for the device's queued work."""

    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def median_time(timed: Callable[[Callable[[], object]], float], fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator, Numba load)
    times = sorted(timed(fn) for _ in range(repeats))
    return times[len(times) // 2]


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 for two zero tensors)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


# ----------------------------------------------------------------------------- checks


def check_estimators(report: Report, device: torch.device, small: bool) -> None:
    torch.manual_seed(0)
    model = build("convnet", input_shape=(3, 16, 16) if small else (3, 32, 32), channels=(16, 32), num_steps=3).eval()
    recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def hook(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        th = torch.as_tensor(module.threshold).double().expand(module.mem.shape[1]).clone()
        recorded.append((estimators.as_bcs(module.mem.clone(), 1), estimators.as_bcs(output[0].clone(), 1), th))

    handles = [n.register_forward_hook(hook) for _, n in spiking_neurons(model)]
    with torch.no_grad():
        run(model, torch.randn(8 if small else 32, *model.input_shape))
    for h in handles:
        h.remove()
    hist_gap = spike_gap = above_gap = sum_gap = 0.0
    for u, spikes, th in recorded:
        lo, width = th - th.abs(), 2 * th.abs() / 64
        ref = estimators.membrane_moments(u, th, lo, width, 64, spikes=spikes, backend="numba")
        got = estimators.torch_membrane_moments(u.to(device), th, lo, width, 64, spikes=spikes.to(device))
        above = estimators.torch_membrane_moments(u.to(device), th, lo, width, 64, count_above=True)
        hist_gap = max(hist_gap, (got.hist.cpu() - ref.hist).abs().max().item())
        spike_gap = max(spike_gap, (got.spikes.cpu() - ref.spikes).abs().max().item())
        above_gap = max(above_gap, (above.spikes.cpu() - ref.spikes).abs().max().item())
        sum_gap = max(sum_gap, relative_gap(got.s1.cpu(), ref.s1), relative_gap(got.s2.cpu(), ref.s2))
    report.check("estimators: histogram counts |device - numba|", hist_gap, "== 0", hist_gap == 0)
    report.check("estimators: spike sums |device - numba|", spike_gap, "== 0", spike_gap == 0)
    report.check("estimators: counts u > u_th vs spike sums", above_gap, "== 0", above_gap == 0)
    report.check("estimators: shifted sums, relative gap", sum_gap, "<= 1e-6", sum_gap <= 1e-6)


def check_stats_scores_masks(report: Report, device: torch.device, small: bool) -> None:
    train_loader, _ = loaders("digits", batch_size=64)
    batches = [x for _, (x, _) in zip(range(2 if small else 8), train_loader)]
    torch.manual_seed(0)
    cpu_model = build("convnet", input_shape=(1, 8, 8), channels=(16, 32), hidden=64, num_steps=4)
    fit(cpu_model, train_loader, None, TrainConfig(epochs=1), device="cpu", progress=False)
    dev_model = build("convnet", input_shape=(1, 8, 8), channels=(16, 32), hidden=64, num_steps=4)
    dev_model.load_state_dict(cpu_model.state_dict())
    dev_model.to(device)

    ref = collect_stats(cpu_model, batches)
    got = collect_stats(dev_model, batches, backend="torch")  # what a CUDA model uses; on CPU, not Numba
    count_gap = moved = mean_gap = 0.0
    for name, m in ref.membrane.items():
        g = got.membrane[name]
        count_gap = max(count_gap, (g.count.cpu() - m.count).abs().max().item())
        sd = m.var.sqrt().clamp_min(1e-12)
        mean_gap = max(mean_gap, ((g.mean.cpu() - m.mean).abs() / sd).max().item())
        moved = max(moved, 0.5 * (g.hist.cpu() - m.hist).abs().sum().item() / max(m.hist.sum().item(), 1.0))
    report.check("collect_stats: counts |device - cpu|", count_gap, "== 0", count_gap == 0)
    report.check("collect_stats: means, gap / channel sd", mean_gap, "<= 1e-4", mean_gap <= 1e-4)
    report.check("collect_stats: histogram mass moved", moved, "< 1e-3", moved < 1e-3)

    ref_scores = scores(cpu_model, "prob", stats=ref)
    got_scores = scores(dev_model, "prob", stats=got)
    score_gap = max(relative_gap(got_scores[k].cpu(), ref_scores[k]) for k in ref_scores)
    report.check("scores (prob): relative gap", score_gap, "<= 1e-3", score_gap <= 1e-3)

    masks = []
    for model, stats in ((cpu_model, ref), (dev_model, got)):
        pruner = Pruner(model, "prob")
        pruner.step(0.5, stats=stats)
        masks.append({k: v.cpu() for k, v in pruner.masks.items()})
    same = sum(int((masks[0][k] == masks[1][k]).sum()) for k in masks[0])
    total = sum(v.numel() for v in masks[0].values())
    report.check("masks at 50%: fraction equal", same / total, ">= 0.999", same / total >= 0.999)


def check_training(report: Report, device: torch.device, small: bool, timed: Callable) -> None:
    train_loader, test_loader = loaders("digits", batch_size=64)
    epochs = 1 if small else 3
    amp_options = (False, True) if device.type == "cuda" else (False,)
    for amp in amp_options:
        torch.manual_seed(0)
        model = build("mlp")
        seconds = timed(lambda m=model, a=amp: fit(m, train_loader, None, TrainConfig(epochs=epochs, amp=a),
                                                    device=device, progress=False))
        acc = evaluate(model, test_loader, device=device)["accuracy"]
        label = "training with AMP" if amp else "training"
        bound = 0.5 if small else 0.85
        report.check(f"{label}: digits mlp test accuracy after {epochs} epochs", acc, f">= {bound}", acc >= bound)
        report.timing(f"{label}: one epoch, digits mlp", seconds / epochs, str(device))


def check_lottery(report: Report, device: torch.device, small: bool, folder: Path) -> None:
    train_loader, test_loader = loaders("digits", batch_size=64)
    torch.manual_seed(0)
    model = build("mlp", hidden=(64, 64))
    cfg = LotteryConfig(method="SF-IMP-1", rounds=1, rate=0.5, epochs=1 if small else 2, rewind_epoch=1,
                        epochs_per_round=1, calib_batches=2, train=TrainConfig(epochs=1))
    result = run_lottery(model, train_loader, test_loader, cfg, checkpoint_dir=folder, device=device,
                         progress=False)
    masks = get_masks(model)
    on_device = all(m.device.type == device.type for m in masks.values())
    report.check("lottery: masks live on the device", float(on_device), "== 1", on_device)
    sparsity = result.rounds[-1]["sparsity"]
    report.check("lottery: sparsity after one round of 50%", sparsity, "0.5 +- 0.01", abs(sparsity - 0.5) <= 0.01)
    saved = load(sorted(folder.glob("round_*.pt"))[-1], map_location="cpu")
    saved_masks = get_masks(saved.model)
    equal = all(torch.equal(saved_masks[k], masks[k].cpu()) for k in masks)
    report.check("lottery: round checkpoint loads on the CPU with the same masks", float(equal), "== 1", equal)


def check_cli(report: Report, device: torch.device, small: bool, folder: Path) -> None:
    model = folder / "model.pt"
    commands = [
        ["train", "--device", str(device), "--epochs", "1" if small else "3", "-o", str(model)],
        ["prune", str(model), "--criterion", "prob", "--sparsity", "0.5", "--device", str(device)],
        ["eval", str(folder / "model.pruned.pt"), "--device", str(device)],
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for args in commands:
        done = subprocess.run([sys.executable, "-m", "snnprune", *args, "--quiet"], capture_output=True, text=True,
                              env=env, timeout=600)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
        report.check(f"cli: snnprune {args[0]} exit status", done.returncode, "== 0", done.returncode == 0)


def time_collect(report: Report, device: torch.device, small: bool, timed: Callable, repeats: int) -> None:
    torch.manual_seed(0)
    channels = (16, 32, 64) if small else (64, 128, 256)
    model = build("convnet", input_shape=(3, 32, 32), channels=channels, num_steps=5).eval().to(device)
    batches = [torch.randn(16 if small else 64, 3, 32, 32, device=device) for _ in range(4)]

    def plain() -> None:
        with torch.no_grad():
            for x in batches:
                run(model, x)

    t_plain = median_time(timed, plain, repeats)
    t_stats = median_time(timed, lambda: collect_stats(model, batches), repeats)
    label = "-".join(map(str, channels))
    report.timing(f"plain forward, convnet {label}, 4 batches", t_plain, str(device))
    report.timing("collect_stats, same batches", t_stats, f"{t_stats / t_plain:.3f}x the plain forward")
    pruner = Pruner(model, "prob", calib_batches=1)
    report.timing("pruning step (prob, statistics of one batch)", timed(lambda: pruner.step(0.2, data=batches[:1])),
                  str(device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu (dry run)")
    parser.add_argument("--small", action="store_true", help="small sizes (a quick dry run)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{sys.argv[0]}: CUDA is not available here (torch {torch.__version__}); "
              "use --device cpu for a dry run", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False  # agreement checks compare float32 forwards
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"snnprune GPU check on {name}; torch {torch.__version__}; small={args.small}", flush=True)
    estimators.warmup(announce=False)
    report = Report()
    timed = synchronized(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="snnprune-gpu-check-") as tmp:
        stages = [
            ("estimators", lambda: check_estimators(report, device, args.small)),
            ("statistics, scores, masks", lambda: check_stats_scores_masks(report, device, args.small)),
            ("training", lambda: check_training(report, device, args.small, timed)),
            ("lottery", lambda: check_lottery(report, device, args.small, Path(tmp) / "lottery")),
            ("command line", lambda: check_cli(report, device, args.small, Path(tmp))),
            ("timings", lambda: time_collect(report, device, args.small, timed, args.repeats)),
        ]
        for title, stage in stages:
            print(f"{title}:", flush=True)
            try:
                stage()
            except Exception as exc:  # one broken stage must not hide the others' results
                report.check(f"{title}: ran without error ({type(exc).__name__}: {exc})", 0.0, "no exception", False)
    print("timings:")
    report.print_timings()
    failed = report.failed()
    print(f"{len(report.checks) - len(failed)} of {len(report.checks)} checks passed in "
          f"{time.perf_counter() - started:.1f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"device": name, "torch": torch.__version__, "small": args.small,
                                             "checks": report.checks, "timings": report.timings}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
