"""Run the grid of an :class:`~snnprune.experiment.config.Experiment`: one folder per run.

``<out>/<dataset>-<model>-<method>-seed<k>-<hash>/`` holds

* ``config.json``: the resolved hyper-parameters (:attr:`RunSpec.config`, whose hash names the folder);
* ``results.jsonl``: one JSON line per round (IMP) or one line (edge-popup, dense reference) with
  ``method, seed, round, sparsity, accuracy, loss, firing_rate, synops, macs, seconds`` and more;
* ``checkpoints/round_XXX.pt`` (IMP, :func:`snnprune.lottery.run`'s ``checkpoint_dir``) or ``model.pt``;
* ``done.json`` once the run has finished, with its wall time and device (a finished run is skipped
  when the config is run again).

With ``jobs > 1`` each worker process keeps one device for all its runs: on a machine with several
GPUs and an unindexed ``cuda`` (or ``auto``) device, worker i gets ``cuda:(i mod #GPUs)`` (see
:func:`job_devices`).

An unfinished IMP run resumes from its last round file; ``results.jsonl`` is then rewritten from the
rounds that checkpoint holds (lines of rounds it lacks are dropped, lines it lacks are recomputed
from the round files), so it never holds a round twice.

Metrics of each line, measured on the first ``eval_batches`` test batches:

* ``firing_rate``: spikes per neuron per time step, averaged over every spiking neuron of the model
  (all channels and positions), from :func:`snnprune.collect_stats`;
* ``synops``: synaptic operations (accumulates) per inference of the layers with spiking input:
  ``sum_l T * P_out,l * sum_i rate_i * nnz(W_l[:, i])``, i.e. for each layer its dense MACs x T x
  input firing rate x weight density, weighted per input channel (:func:`snnprune.report.costs`);
* ``macs``: multiply-accumulates per inference of the encoding layer, which sees the analog input
  (direct encoding): ``T * P_out * nnz(W)``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import resolve_device
from .config import Experiment, RunSpec

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
DONE = "done.json"

__all__ = ["RESULTS", "DONE", "job_devices", "read_results", "run_experiment", "run_one"]


# ----------------------------------------------------------------------------------------- helpers


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_results(folder: Path) -> list[dict[str, Any]]:
    """The lines of ``folder/results.jsonl`` (malformed lines, e.g. a torn last line, are skipped)."""
    path = Path(folder) / RESULTS
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def _write_results(folder: Path, lines: dict[int, dict[str, Any]]) -> None:
    path = folder / RESULTS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(lines[r], sort_keys=True) + "\n" for r in sorted(lines)))
    os.replace(tmp, path)


def _loaders(spec: RunSpec, batch_size: int, data_io: dict[str, Any]) -> tuple[Any, Any]:
    from .. import data

    return data.loaders(spec.dataset, batch_size=batch_size, seed=spec.seed,
                        split_seed=spec.config["data"]["split_seed"], root=data_io.get("root"),
                        download=bool(data_io.get("download", False)),
                        num_workers=int(data_io.get("num_workers", 0)))


def _build(spec: RunSpec) -> nn.Module:
    from .. import data, models

    info = data.info(spec.dataset)
    torch.manual_seed(spec.seed)
    return models.build(spec.model, input_shape=list(info.input_shape), num_classes=info.num_classes,
                        num_steps=spec.config["train"]["num_steps"], **spec.config["model_args"])


def _train_config(tr: dict[str, Any], epochs: int, seed: int) -> Any:
    from ..train import TrainConfig

    return TrainConfig(epochs=epochs, optimizer=tr["optimizer"], lr=tr["lr"], momentum=tr["momentum"],
                       weight_decay=tr["weight_decay"], schedule=tr["schedule"], loss=tr["loss"],
                       grad_clip=tr["grad_clip"], amp=tr["amp"], encoder=tr["encoder"], seed=seed)


def spike_metrics(model: nn.Module, test_loader: Any, tr: dict[str, Any]) -> dict[str, float]:
    """Mean firing rate, SynOps and encoding-layer MACs per inference (see the module docstring)."""
    from .. import report
    from ..stats import collect_stats
    from ..train import encode

    started = time.perf_counter()
    stats = collect_stats(model, test_loader, max_batches=tr["eval_batches"], encoder=tr["encoder"],
                          progress=False)
    spikes = sum(float(m.spikes.sum()) for m in stats.membrane.values())
    slots = sum(m.elements * m.spikes.numel() for m in stats.membrane.values())
    x = next(iter(test_loader))[0][:2]
    device = next(model.parameters()).device
    x = encode(x, tr["encoder"], getattr(model, "num_steps", None)).to(device)
    shapes, steps = report.layer_shapes(model, x)
    totals = report.energy(report.costs(model, stats, shapes, steps))
    return {"firing_rate": spikes / slots if slots else 0.0, "synops": totals["synops"],
            "macs": totals["macs"], "energy_uJ": totals["snn_energy_uJ"],
            "stats_seconds": time.perf_counter() - started}


def _line(spec: RunSpec, record: dict[str, Any], model: nn.Module, test_loader: Any) -> dict[str, Any]:
    line = {"run": spec.name, "kind": spec.kind, "dataset": spec.dataset, "model": spec.model, **record}
    line.update(spike_metrics(model, test_loader, spec.config["train"]))
    return line


# ----------------------------------------------------------------------------------------- the runs


def _round_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("round_[0-9][0-9][0-9].pt")) if folder.is_dir() else []


def _reconcile(spec: RunSpec, folder: Path, ckdir: Path, test_loader: Any) -> dict[int, dict[str, Any]]:
    """results.jsonl lines consistent with the last round file (rounds recomputed where missing)."""
    from .. import checkpoint

    existing = {int(x["round"]): x for x in read_results(folder) if "round" in x}
    files = _round_files(ckdir)
    lines: dict[int, dict[str, Any]] = {}
    if files:
        payload = torch.load(files[-1], map_location="cpu", weights_only=True)
        for rec in payload["history"]:
            r = int(rec["round"])
            line = existing.get(r)
            if line is None or line.get("accuracy") != rec["accuracy"] or line.get("sparsity") != rec["sparsity"]:
                model = checkpoint.load_model(ckdir / f"round_{r:03d}.pt")
                line = _line(spec, dict(rec), model, test_loader)
            lines[r] = line
    _write_results(folder, lines)
    return lines


def _run_imp(spec: RunSpec, folder: Path, device: str | None, data_io: dict[str, Any]) -> None:
    from .. import lottery

    imp, tr = spec.config["imp"], spec.config["train"]
    train_loader, test_loader = _loaders(spec, tr["batch_size"], data_io)
    model = _build(spec)
    cfg = lottery.LotteryConfig(
        method=spec.method, rounds=imp["rounds"], rate=imp["rate"], epochs=imp["epochs"],
        rewind_epoch=imp["rewind_epoch"], epochs_per_round=imp["epochs_per_round"], scope=imp["scope"],
        calib_batches=imp["calib_batches"], train=_train_config(tr, imp["epochs"], spec.seed), seed=spec.seed,
    )
    ckdir = folder / "checkpoints"
    lines = _reconcile(spec, folder, ckdir, test_loader)

    def on_round_end(record: dict[str, Any]) -> None:
        r = int(record["round"])
        for stale in [k for k in lines if k >= r]:
            del lines[stale]
        lines[r] = _line(spec, dict(record), model, test_loader)
        _write_results(folder, lines)

    lottery.run(model, train_loader, test_loader, cfg, checkpoint_dir=ckdir, device=device,
                progress=False, on_round_end=on_round_end)


def _run_single(spec: RunSpec, folder: Path, device: str | None, data_io: dict[str, Any]) -> None:
    """A dense reference (trained) or an edge-popup search (untrained weights): one line."""
    from .. import checkpoint, popup
    from ..masks import sparsity
    from ..train import evaluate, fit

    cfg, tr = spec.config, spec.config["train"]
    train_loader, test_loader = _loaders(spec, tr["batch_size"], data_io)
    model = _build(spec)
    started = time.perf_counter()
    tc = _train_config(tr, cfg["epochs"], spec.seed)
    if spec.kind == "dense":
        history = fit(model, train_loader, None, tc, device=device, progress=False)
    else:
        history = popup.search(model, train_loader, None, cfg["keep"], tc, train_bn=cfg["train_bn"],
                               seed=spec.seed, device=device, progress=False)
    metrics = evaluate(model, test_loader, device=device, loss=tr["loss"], encoder=tr["encoder"])
    record = {"method": spec.method, "seed": spec.seed, "round": 0, "keep": cfg.get("keep", 1.0),
              "sparsity": sparsity(model), "accuracy": metrics["accuracy"], "loss": metrics["loss"],
              "train_loss": history[-1]["train_loss"] if history else float("nan"),
              "seconds": time.perf_counter() - started}
    line = _line(spec, record, model, test_loader)
    checkpoint.save(model, folder / "model.pt", history=history)
    _write_results(folder, {0: line})


def job_devices(device: str | None, jobs: int) -> list[str | None]:
    """The device of each of ``jobs`` worker processes.

    An unindexed ``cuda`` (or ``auto``/``None`` where CUDA is available) with several visible GPUs is
    spread round-robin: ``cuda:0, cuda:1, ..., cuda:0, ...``; any other device is shared by all.
    """
    wants_cuda = device == "cuda" or (device in (None, "auto") and torch.cuda.is_available())
    count = torch.cuda.device_count() if wants_cuda else 0
    if count > 1:
        return [f"cuda:{i % count}" for i in range(jobs)]
    return [device] * jobs


_worker_device: str | None = None  # set once per worker process by _claim_device


def _claim_device(devices: Any) -> None:
    """Worker initializer: take this process's device from the shared queue."""
    global _worker_device
    _worker_device = devices.get()


def _run_in_worker(spec: RunSpec, out: str | Path, data_io: dict[str, Any] | None, threads: int) -> dict[str, Any]:
    return run_one(spec, out, _worker_device, data_io, threads)


def run_one(spec: RunSpec, out: str | Path, device: str | None = None,
            data_io: dict[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run (or skip, or resume) one run in ``out/<spec.name>``; returns its status dict.

    Never raises for a failing run: the status is ``failed`` with the error, and the traceback is
    written to ``error.log`` in the run folder.
    """
    if threads is not None:
        _set_threads(threads)
    folder = Path(out) / spec.name
    status: dict[str, Any] = {"run": spec.name, "kind": spec.kind}
    if (folder / DONE).exists() and (folder / RESULTS).exists():
        return {**status, "status": "skipped"}
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", spec.config)
    resumed = bool(_round_files(folder / "checkpoints"))
    started = time.perf_counter()
    try:
        if spec.kind == "imp":
            _run_imp(spec, folder, device, data_io or {})
        else:
            _run_single(spec, folder, device, data_io or {})
    except Exception as exc:  # noqa: BLE001 - one failing run must not stop the grid
        (folder / "error.log").write_text(traceback.format_exc())
        return {**status, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    (folder / "error.log").unlink(missing_ok=True)
    used = str(resolve_device(device))
    _write_json(folder / DONE, {"seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": used})
    return {**status, "status": "resumed" if resumed else "done", "seconds": seconds, "device": used}


def _set_threads(threads: int) -> None:
    from .. import estimators

    estimators.warmup(announce=False)  # Numba's start-up may reset torch's thread count
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # noqa: BLE001 - numba missing or threading layer without set_num_threads
        pass


def run_experiment(exp: Experiment, out: str | Path, *, jobs: int = 1, device: str | None = None,
                   echo: Callable[[str], None] | None = None, report: bool = True) -> list[dict[str, Any]]:
    """Run every run of ``exp`` under ``out``; finished runs are skipped, unfinished ones resumed.

    ``jobs > 1`` runs independent runs in that many spawned processes with
    ``max(1, cores // jobs)`` torch threads each, spread over the visible GPUs as
    :func:`job_devices` says; ``jobs == 1`` runs them in this process.
    Writes ``out/experiment.json`` and, if ``report``, the report (:mod:`.report`). Returns one
    status dict per run (``done``, ``resumed``, ``skipped`` or ``failed``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or exp.device
    _write_json(out / "experiment.json", {"name": exp.name, "source": exp.source,
                                          "runs": [r.name for r in exp.runs]})
    say = echo or (lambda msg: log.info("%s", msg))
    statuses: list[dict[str, Any]] = []

    def note(s: dict[str, Any]) -> None:
        statuses.append(s)
        extra = f" ({s['seconds']:.1f} s)" if "seconds" in s else ""
        err = f": {s['error']}" if s.get("error") else ""
        say(f"[{len(statuses)}/{len(exp.runs)}] {s['status']:8s} {s['run']}{extra}{err}")

    started = time.perf_counter()
    if jobs <= 1:
        for spec in exp.runs:
            note(run_one(spec, out, device, exp.data_io))
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = multiprocessing.get_context("spawn")
        devices = ctx.Queue()
        for d in job_devices(device, jobs):
            devices.put(d)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_claim_device,
                                 initargs=(devices,)) as pool:
            futures = {pool.submit(_run_in_worker, spec, out, exp.data_io, threads): spec for spec in exp.runs}
            for fut in as_completed(futures):
                try:
                    note(fut.result())
                except Exception as exc:  # noqa: BLE001 - a worker died (killed, out of memory)
                    note({"run": futures[fut].name, "kind": futures[fut].kind, "status": "failed",
                          "error": f"{type(exc).__name__}: {exc}"})
    wall = time.perf_counter() - started
    say(f"{len(exp.runs)} runs in {wall:.1f} s (jobs={jobs})")
    if report:
        from .report import write_report

        write_report(out, names=[r.name for r in exp.runs])
    return statuses
