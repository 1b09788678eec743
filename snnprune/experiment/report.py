"""Summaries of an experiment folder: ``report.md``, ``summary.csv`` and plots.

* IMP runs: test accuracy per round (sparsity level) per method, mean and 95 % t-interval over
  seeds (``mean +- t_{0.975, n-1} * sd / sqrt(n)``, sd with ``ddof=1``); a paired comparison of
  every method with IMP at each round over the seeds both ran (paired t-test, Wilcoxon signed-rank
  test when n >= 5, effect size = mean paired difference in accuracy points and Cohen's
  ``d_z = mean(diff) / sd(diff)``); accuracy vs sparsity with the CI bands (the paper's Fig. 5).
* Edge-popup sweeps: accuracy per fraction kept ``k`` with the dense trained reference (Fig. 3).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .runner import DONE, read_results

__all__ = ["collect", "mean_ci", "paired", "write_report"]

REFERENCE = "IMP"


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, low, high, sd)``: the t-interval of the mean (NaN bounds when n < 2)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, sd


def paired(method: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of accuracies (same seeds, same order): method - reference."""
    from scipy import stats

    a = np.asarray(method, dtype=float)
    b = np.asarray(reference, dtype=float)
    diff = a - b
    n = int(diff.size)
    out: dict[str, Any] = {"n": n, "mean_diff": float(diff.mean()) if n else math.nan,
                           "t_p": math.nan, "wilcoxon_p": math.nan, "d_z": math.nan}
    if n >= 2:
        sd = float(diff.std(ddof=1))
        if sd > 0:
            out["t_p"] = float(stats.ttest_rel(a, b).pvalue)
            out["d_z"] = out["mean_diff"] / sd
        elif out["mean_diff"] != 0:
            out["t_p"] = 0.0  # every seed moved by the same non-zero amount
            out["d_z"] = math.copysign(math.inf, out["mean_diff"])
        else:
            out["t_p"] = 1.0
            out["d_z"] = 0.0
    if n >= 5:
        if np.any(diff != 0):
            out["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
        else:
            out["wilcoxon_p"] = 1.0
    return out


def collect(folder: str | Path, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every results line under ``folder`` (only the runs in ``names`` if given), tagged with
    ``finished`` (the run wrote ``done.json``)."""
    folder = Path(folder)
    wanted = set(names) if names is not None else None
    rows = []
    for results in sorted(folder.glob("*/results.jsonl")):
        run = results.parent
        if wanted is not None and run.name not in wanted:
            continue
        finished = (run / DONE).exists()
        for line in read_results(run):
            rows.append({**line, "run": run.name, "finished": finished})
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else "<0.001"


def _imp_tables(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Summary rows (one per dataset/model/method/round) and paired comparisons with IMP."""
    groups: dict[tuple[str, str], dict[str, dict[int, dict[int, dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict)))
    for r in rows:
        if r.get("kind", "imp") == "imp":
            groups[(r["dataset"], r["model"])][r["method"]][int(r["round"])][int(r["seed"])] = r
    summary, comparisons = [], []
    for (dataset, model), methods in sorted(groups.items()):
        for method in sorted(methods, key=lambda m: (m != REFERENCE, m)):
            for rnd, by_seed in sorted(methods[method].items()):
                seeds = sorted(by_seed)
                acc = [by_seed[s]["accuracy"] for s in seeds]
                mean, lo, hi, sd = mean_ci(acc)
                summary.append({
                    "kind": "imp", "dataset": dataset, "model": model, "method": method, "round": rnd,
                    "keep": "", "sparsity": float(np.mean([by_seed[s]["sparsity"] for s in seeds])),
                    "n": len(seeds), "seeds": " ".join(map(str, seeds)), "accuracy_mean": mean,
                    "ci_low": lo, "ci_high": hi, "accuracy_sd": sd,
                    "firing_rate_mean": float(np.mean([by_seed[s].get("firing_rate", math.nan) for s in seeds])),
                    "synops_mean": float(np.mean([by_seed[s].get("synops", math.nan) for s in seeds])),
                })
                ref = methods.get(REFERENCE, {}).get(rnd)
                if method == REFERENCE or not ref or rnd == 0:  # round 0: the dense network
                    continue
                common = sorted(set(by_seed) & set(ref))
                if not common:
                    continue
                test = paired([by_seed[s]["accuracy"] for s in common], [ref[s]["accuracy"] for s in common])
                comparisons.append({
                    "dataset": dataset, "model": model, "method": method, "round": rnd,
                    "sparsity": float(np.mean([ref[s]["sparsity"] for s in common])), **test,
                })
    return summary, comparisons


def _sentence(c: dict[str, Any]) -> str:
    where = f"at {_pct(c['sparsity'])} sparsity (round {c['round']})"
    d = 100 * c["mean_diff"]
    tests = f"paired t-test p={_p(c['t_p'])}"
    tests += f", Wilcoxon p={_p(c['wilcoxon_p'])}" if c["n"] >= 5 else ", Wilcoxon not run (n < 5)"
    dz = "n/a" if math.isnan(c["d_z"]) else f"{c['d_z']:.2f}"
    if d == 0:
        head = f"{c['method']} ties IMP {where} (identical mean accuracy"
    elif d > 0:
        head = f"{c['method']} beats IMP {where} by {d:.2f} points ({tests}"
    else:
        head = f"IMP beats {c['method']} {where} by {-d:.2f} points ({tests}"
    if d == 0:
        head += f", {tests}"
    sig = "" if d == 0 or c["t_p"] < 0.05 else "; not significant at the 5% level"
    return f"{head}, d_z={dz}, n={c['n']} seeds{sig})."


def _popup_tables(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") in ("popup", "dense"):
            k = 1.0 if r["kind"] == "dense" else float(r["keep"])
            groups[(r["dataset"], r["model"])][(r["kind"], k)].append(r)
    out = []
    for (dataset, model), by_k in sorted(groups.items()):
        for (kind, k), items in sorted(by_k.items(), key=lambda kv: (kv[0][0] != "dense", kv[0][1])):
            mean, lo, hi, sd = mean_ci([r["accuracy"] for r in items])
            out.append({"kind": kind, "dataset": dataset, "model": model,
                        "method": "dense" if kind == "dense" else "popup", "round": "", "keep": k,
                        "sparsity": float(np.mean([r["sparsity"] for r in items])), "n": len(items),
                        "seeds": " ".join(str(r["seed"]) for r in sorted(items, key=lambda r: r["seed"])),
                        "accuracy_mean": mean, "ci_low": lo, "ci_high": hi, "accuracy_sd": sd,
                        "firing_rate_mean": float(np.mean([r.get("firing_rate", math.nan) for r in items])),
                        "synops_mean": float(np.mean([r.get("synops", math.nan) for r in items]))})
    return out


def _plots(folder: Path, summary: list[dict[str, Any]], popup_rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in summary:
        by_pair[(r["dataset"], r["model"])].append(r)
    for (dataset, model), items in sorted(by_pair.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in dict.fromkeys(r["method"] for r in items):
            pts = sorted((r for r in items if r["method"] == method), key=lambda r: r["sparsity"])
            x = np.array([100 * r["sparsity"] for r in pts])
            y = np.array([100 * r["accuracy_mean"] for r in pts])
            ax.plot(x, y, marker="o", label=method)
            lo = np.array([100 * r["ci_low"] for r in pts])
            hi = np.array([100 * r["ci_high"] for r in pts])
            if np.all(np.isfinite(lo)):
                ax.fill_between(x, lo, hi, alpha=0.2)
        files.append(_save_figure(fig, ax, folder, f"accuracy_vs_sparsity_{dataset}_{model}", "weight sparsity (%)",
                                  f"{dataset} / {model}: accuracy vs sparsity (mean, 95% CI over seeds)"))
    pop: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in popup_rows:
        pop[(r["dataset"], r["model"])].append(r)
    for (dataset, model), items in sorted(pop.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        pts = sorted((r for r in items if r["kind"] == "popup"), key=lambda r: r["keep"])
        if pts:
            x = np.array([100 * r["keep"] for r in pts])
            y = np.array([100 * r["accuracy_mean"] for r in pts])
            ax.plot(x, y, marker="o", label="edge-popup (untrained weights)")
            lo = np.array([100 * r["ci_low"] for r in pts])
            hi = np.array([100 * r["ci_high"] for r in pts])
            if np.all(np.isfinite(lo)):
                ax.fill_between(x, lo, hi, alpha=0.2)
        for r in items:
            if r["kind"] == "dense":
                ax.axhline(100 * r["accuracy_mean"], color="k", linestyle="--", label="dense, trained")
                if math.isfinite(r["ci_low"]):
                    ax.axhspan(100 * r["ci_low"], 100 * r["ci_high"], color="k", alpha=0.08)
        files.append(_save_figure(fig, ax, folder, f"popup_accuracy_vs_k_{dataset}_{model}", "k: weights kept (%)",
                                  f"{dataset} / {model}: edge-popup sub-networks"))
    return files


def _save_figure(fig: Any, ax: Any, folder: Path, stem: str, xlabel: str, title: str) -> str:
    """Label an accuracy plot, write it as PNG and SVG, close it; returns ``stem``."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(folder / f"{stem}.{ext}", dpi=120)
    plt.close(fig)
    return stem


CSV_FIELDS = ["kind", "dataset", "model", "method", "round", "keep", "sparsity", "n", "seeds",
              "accuracy_mean", "ci_low", "ci_high", "accuracy_sd", "firing_rate_mean", "synops_mean"]


def write_report(folder: str | Path, names: Iterable[str] | None = None, plots: bool = True) -> Path:
    """Write ``report.md``, ``summary.csv`` and the plots into ``folder``; returns report.md's path."""
    folder = Path(folder)
    rows = collect(folder, names)
    summary, comparisons = _imp_tables(rows)
    popup_rows = _popup_tables(rows)
    with (folder / "summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in [*summary, *popup_rows]:
            writer.writerow({k: r[k] for k in CSV_FIELDS})
    with (folder / "comparisons.json").open("w") as fh:
        json.dump(comparisons, fh, indent=2)
    figures = _plots(folder, summary, popup_rows) if plots and (summary or popup_rows) else []

    runs = sorted({r["run"] for r in rows})
    unfinished = sorted({r["run"] for r in rows if not r["finished"]})
    md = [f"# Experiment report: {folder.name}", ""]
    md.append(f"{len(runs)} runs, {len(rows)} result lines" +
              (f"; {len(unfinished)} runs unfinished (their rounds so far are included)." if unfinished else "."))
    md += ["", "Accuracy is test accuracy in %; mean and 95% t-interval over seeds "
           "(mean +- t(0.975, n-1) * sd / sqrt(n)). Firing rate: spikes per neuron per step, averaged over "
           "all spiking neurons; SynOps: accumulates per inference of the layers with spiking input "
           "(dense MACs x T x input rate x weight density, per input channel), on a few test batches.", ""]
    if summary:
        md += ["## Accuracy per sparsity level (IMP-style runs)", ""]
        for (dataset, model) in dict.fromkeys((r["dataset"], r["model"]) for r in summary):
            items = [r for r in summary if r["dataset"] == dataset and r["model"] == model]
            md += [f"### {dataset} / {model}", "",
                   "| method | round | sparsity | n | accuracy | 95% CI | firing rate | SynOps |",
                   "|---|---:|---:|---:|---:|---|---:|---:|"]
            for r in items:
                ci = "n/a" if math.isnan(r["ci_low"]) else f"[{_pts(r['ci_low'])}, {_pts(r['ci_high'])}]"
                md.append(f"| {r['method']} | {r['round']} | {_pct(r['sparsity'])} | {r['n']} | "
                          f"{_pts(r['accuracy_mean'])} | {ci} | {r['firing_rate_mean']:.4f} | "
                          f"{r['synops_mean']:.3g} |")
            md.append("")
        if comparisons:
            md += ["## Paired comparison with IMP (same seeds)", "",
                   "Difference = method - IMP in accuracy points; p-values of the paired t-test "
                   "(scipy.stats.ttest_rel) and, with at least 5 seeds, the Wilcoxon signed-rank test; "
                   "effect size d_z = mean difference / sd of the differences.", "",
                   "| dataset | model | method | round | sparsity | n | mean diff | t-test p | Wilcoxon p | d_z |",
                   "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
            for c in comparisons:
                dz = "n/a" if math.isnan(c["d_z"]) else f"{c['d_z']:.2f}"
                md.append(f"| {c['dataset']} | {c['model']} | {c['method']} | {c['round']} | {_pct(c['sparsity'])} | "
                          f"{c['n']} | {100 * c['mean_diff']:+.2f} | {_p(c['t_p'])} | {_p(c['wilcoxon_p'])} | {dz} |")
            md += ["", "In words:", ""]
            md += [f"- {_sentence(c)}" for c in comparisons]
            n_min = min(c["n"] for c in comparisons)
            if n_min < 5:
                md += ["", f"**Caveat:** only {n_min} paired seed(s) per comparison. With so few seeds the "
                       "t-test has little power, its normality assumption cannot be checked, the Wilcoxon "
                       "test is not run (it cannot reach p < 0.05 below 6 pairs), and the p-values are not "
                       "corrected for the number of comparisons; read them as descriptive, not as evidence."]
            md.append("")
    if popup_rows:
        md += ["## Edge-popup: untrained sub-networks (accuracy vs k, fraction of weights kept)", ""]
        for (dataset, model) in dict.fromkeys((r["dataset"], r["model"]) for r in popup_rows):
            md += [f"### {dataset} / {model}", "", "| network | k (kept) | sparsity | n | accuracy | 95% CI | firing rate |",
                   "|---|---:|---:|---:|---:|---|---:|"]
            for r in popup_rows:
                if (r["dataset"], r["model"]) != (dataset, model):
                    continue
                ci = "n/a" if math.isnan(r["ci_low"]) else f"[{_pts(r['ci_low'])}, {_pts(r['ci_high'])}]"
                label = "dense, trained (reference)" if r["kind"] == "dense" else "edge-popup, untrained"
                md.append(f"| {label} | {_pct(r['keep'])} | {_pct(r['sparsity'])} | {r['n']} | "
                          f"{_pts(r['accuracy_mean'])} | {ci} | {r['firing_rate_mean']:.4f} |")
            md.append("")
    if figures:
        md += ["## Figures", ""] + [f"![{f}]({f}.png) ([svg]({f}.svg))" for f in figures] + [""]
    if not rows:
        md += ["No results yet.", ""]
    path = folder / "report.md"
    path.write_text("\n".join(md))
    return path
