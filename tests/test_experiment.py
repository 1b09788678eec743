"""Experiment grids: config validation, run folders, resume after a crash, report numbers."""

from __future__ import annotations

import csv
import json
import math
import queue
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from click.testing import CliRunner
from scipy import stats as sps

from snnprune.experiment import config, runner
from snnprune.experiment.cli import experiment
from snnprune.experiment.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "datasets": ["digits"],
    "models": ["mlp"],
    "methods": ["IMP", "SF-IMP-1"],
    "seeds": [0, 1],
    "model_args": {"mlp": {"hidden": [16]}},
    "imp": {"rate": 0.5, "rounds": 2, "epochs": 1, "rewind_epoch": 1, "epochs_per_round": 1,
            "calib_batches": 1},
    "train": {"num_steps": 3, "batch_size": 256, "eval_batches": 1},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(**changes) -> dict:
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        table, _, field = key.partition(".")
        if field:
            raw.setdefault(table, {})[field] = value
        else:
            raw[table] = value
    return raw


def _rounds(folder: Path) -> list[int]:
    return [line["round"] for line in runner.read_results(folder)]


# ------------------------------------------------------------------------------ end to end + resume


def test_run_crash_resume_and_report(tmp_path, monkeypatch):
    exp = config.parse(_tiny(), "tiny.toml")
    assert len(exp.runs) == 4
    victim = next(r for r in exp.runs if r.method == "SF-IMP-1" and r.seed == 1)

    # first pass: the victim "dies" right after writing round 1 (runs execute in this process)
    write_results = runner._write_results

    def crash_after_round_1(folder, lines):
        write_results(folder, lines)
        if folder.name == victim.name and max(lines, default=-1) >= 1:
            raise RuntimeError(f"{victim.name}: simulated crash after round 1")

    monkeypatch.setattr(runner, "_write_results", crash_after_round_1)
    first = runner.run_experiment(exp, tmp_path, report=False)
    by_run = {s["run"]: s["status"] for s in first}
    assert by_run.pop(victim.name) == "failed"
    assert set(by_run.values()) == {"done"}
    vdir = tmp_path / victim.name
    assert _rounds(vdir) == [0, 1]
    assert not (vdir / runner.DONE).exists()
    assert "simulated crash" in (vdir / "error.log").read_text()
    # a kill between the round file and the results line: the line is recomputed on resume
    lines = (vdir / runner.RESULTS).read_text().splitlines()
    (vdir / runner.RESULTS).write_text(lines[0] + "\n")
    round1_before = json.loads(lines[1])

    monkeypatch.setattr(runner, "_write_results", write_results)
    second = runner.run_experiment(exp, tmp_path)
    by_run = {s["run"]: s["status"] for s in second}
    assert by_run.pop(victim.name) == "resumed"
    assert set(by_run.values()) == {"skipped"}
    for spec in exp.runs:
        folder = tmp_path / spec.name
        assert _rounds(folder) == [0, 1, 2], spec.name  # no duplicates, nothing missing
        assert json.loads((folder / "config.json").read_text()) == spec.config
        assert (folder / "checkpoints" / "round_002.pt").exists()
        for line in runner.read_results(folder):
            assert line["method"] == spec.method and line["seed"] == spec.seed
            for key in ("sparsity", "accuracy", "loss", "firing_rate", "synops", "macs", "seconds"):
                assert math.isfinite(line[key]), key
            assert 0 <= line["firing_rate"] <= 1
    round1 = runner.read_results(vdir)[1]
    assert round1["accuracy"] == round1_before["accuracy"]
    assert round1["firing_rate"] == pytest.approx(round1_before["firing_rate"])
    spars = [line["sparsity"] for line in runner.read_results(vdir)]
    assert spars == pytest.approx([0.0, 0.5, 0.75], abs=0.01)
    # SynOps <= T x dense MACs of the spiking-input layers (here the 16 -> 10 classifier only)
    for spec in exp.runs:
        for line in runner.read_results(tmp_path / spec.name):
            assert 0 < line["synops"] <= 3 * 16 * 10 * (1 - line["sparsity"]) + 1e-6

    # the report's numbers, recomputed independently from the results files
    with (tmp_path / "summary.csv").open() as fh:
        summary = list(csv.DictReader(fh))
    assert len(summary) == 2 * 3
    for row in summary:
        accs = []
        for spec in exp.runs:
            if spec.method == row["method"]:
                accs += [x["accuracy"] for x in runner.read_results(tmp_path / spec.name)
                         if x["round"] == int(row["round"])]
        accs = np.array(accs)
        n = len(accs)
        half = sps.t.ppf(0.975, n - 1) * accs.std(ddof=1) / np.sqrt(n)
        assert int(row["n"]) == n == 2
        assert float(row["accuracy_mean"]) == pytest.approx(accs.mean())
        if half > 0:
            assert float(row["ci_low"]) == pytest.approx(accs.mean() - half)
            assert float(row["ci_high"]) == pytest.approx(accs.mean() + half)
    comparisons = json.loads((tmp_path / "comparisons.json").read_text())
    assert [c["round"] for c in comparisons] == [1, 2]
    for c in comparisons:
        pair = {}
        for spec in exp.runs:
            acc = next(x["accuracy"] for x in runner.read_results(tmp_path / spec.name) if x["round"] == c["round"])
            pair.setdefault(spec.method, {})[spec.seed] = acc
        diff = np.array([pair["SF-IMP-1"][s] - pair["IMP"][s] for s in (0, 1)])
        assert c["mean_diff"] == pytest.approx(diff.mean())
    md = (tmp_path / "report.md").read_text()
    assert "Caveat" in md and "only 2 paired seed" in md
    assert "SF-IMP-1" in md and "IMP" in md and "sparsity" in md
    assert (tmp_path / "accuracy_vs_sparsity_digits_mlp.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_sparsity_digits_mlp.svg").exists()

    # the CLI's report subcommand rewrites the same numbers
    before = (tmp_path / "summary.csv").read_text()
    result = CliRunner().invoke(experiment, ["report", str(tmp_path), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "summary.csv").read_text() == before
    assert (tmp_path / "report.md").read_text().strip() == md.split("## Figures")[0].strip()


def test_popup_sweep_and_report(tmp_path):
    raw = _tiny()
    del raw["methods"], raw["imp"]
    raw["seeds"] = [0]
    raw["popup"] = {"keep": [0.5], "epochs": 1, "dense_epochs": 1, "optimizer": "sgd", "lr": 0.1}
    exp = config.parse(raw, "pop.toml")
    assert [r.kind for r in exp.runs] == ["dense", "popup"]
    statuses = runner.run_experiment(exp, tmp_path)
    assert {s["status"] for s in statuses} == {"done"}
    pop = runner.read_results(tmp_path / exp.runs[1].name)
    assert len(pop) == 1 and pop[0]["keep"] == 0.5
    assert pop[0]["sparsity"] == pytest.approx(0.5, abs=0.01)
    md = (tmp_path / "report.md").read_text()
    assert "Edge-popup" in md and "dense, trained (reference)" in md
    assert (tmp_path / "popup_accuracy_vs_k_digits_mlp.png").exists()


# ---------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_tiny(methods=["IMP", "SF-IMP-1", "SF-IMP-3"]),
         "x.toml: methods[2] = 'SF-IMP-3' is not a known method (IMP, SF-IMP-1, SF-IMP-2, random, "
         "magnitude, prob, prob-empirical)"),
        (_tiny(**{"imp.rate": 1.5}), "imp.rate = 1.5 must be in (0, 1)"),
        (_tiny(**{"imp.rate": 0}), "imp.rate = 0 must be in (0, 1)"),
        (_tiny(**{"imp.rounds": -1}), "imp.rounds = -1 must be >= 0"),
        (_tiny(**{"imp.rewind_epoch": 3}), "imp.rewind_epoch = 3 must be <= epochs = 1"),
        (_tiny(**{"train.optimizer": "adagrad"}), "train.optimizer = 'adagrad' is not one of adam, adamw, sgd"),
        (_tiny(datasets=["imagenet"]), "datasets[0] = 'imagenet' is not a known dataset"),
        (_tiny(models=["mlp", "lenet"]), "models[1] = 'lenet' is not a known model"),
        (_tiny(seeds=[]), "seeds must be a non-empty list"),
        (_tiny(**{"imp.rat": 0.5}), "imp.rat is not a known key"),
        (_tiny(**{"imp.lr": 0.1}), "imp.lr is not a known key; it belongs in [train]"),
        (_tiny(metods=["IMP"]), "metods is not a known key"),
        (_tiny(**{"model_args.mlp": {"hiden": [8]}}), "model_args.mlp.hiden is not a parameter of model 'mlp'"),
        (_tiny(methods={"IMP": {}, "SF-IMP-2": {"rate": 2.0}}), "methods.SF-IMP-2.rate = 2.0 must be in (0, 1)"),
        (_tiny(methods={"IMP": {"rte": 0.1}}), "methods.IMP.rte is not a known key"),
        (_tiny(popup={"epochs": 1}), "popup.keep is missing"),
        (_tiny(popup={"keep": [0.0, 0.5]}), "popup.keep[0] = 0.0 must be in (0, 1]"),
    ],
)
def test_config_errors_name_the_field(raw, message):
    with pytest.raises(ConfigError) as err:
        config.parse(raw, "x.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("x.toml: ")


@pytest.mark.parametrize("field", ["datasets", "models", "seeds"])
def test_missing_required_field(field):
    raw = _tiny()
    del raw[field]
    with pytest.raises(ConfigError, match=rf"x.toml: {field} is missing \(required\)"):
        config.parse(raw, "x.toml")
    raw = _tiny()
    del raw["methods"]
    with pytest.raises(ConfigError, match="methods is missing"):
        config.parse(raw, "x.toml")


def test_cli_config_error_and_bad_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('datasets = ["digits"]\nmodels = ["mlp"]\nseeds = [0]\nmethods = ["SF-IMP-3"]\n')
    result = CliRunner().invoke(experiment, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "methods[0] = 'SF-IMP-3' is not a known method" in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text("datasets = [\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        config.load(broken)


def test_method_overrides_table():
    exp = config.parse(_tiny(methods={"IMP": {}, "SF-IMP-2": {"rate": 0.2, "lr": 0.01}}), "x.toml")
    cfgs = {r.method: r.config for r in exp.runs}
    assert cfgs["IMP"]["imp"]["rate"] == 0.5 and cfgs["SF-IMP-2"]["imp"]["rate"] == 0.2
    assert cfgs["SF-IMP-2"]["train"]["lr"] == 0.01


# ------------------------------------------------------------------------------------- run folders


def test_identical_configs_share_a_folder():
    a = config.parse(_tiny(), "a.toml")
    b = config.parse(_tiny(), "b.toml")  # another file, same content
    assert [r.name for r in a.runs] == [r.name for r in b.runs]
    assert len({r.name for r in a.runs}) == len(a.runs)
    c = config.parse(_tiny(**{"train.lr": 1e-3}), "a.toml")
    assert not {r.name for r in a.runs} & {r.name for r in c.runs}
    d = config.parse(_tiny(**{"model_args.mlp": {"hidden": [17]}}), "a.toml")
    assert not {r.name for r in a.runs} & {r.name for r in d.runs}
    # a seed added to the grid leaves the existing runs' folders alone
    e = config.parse(_tiny(seeds=[0, 1, 2]), "a.toml")
    assert {r.name for r in a.runs} < {r.name for r in e.runs}
    assert a.runs[0].name.startswith("digits-mlp-IMP-seed0-")


# ------------------------------------------------------------------------ worker processes and devices


@pytest.mark.parametrize(("device", "cuda", "count", "jobs", "expected"), [
    ("cuda", True, 3, 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]),
    ("auto", True, 2, 2, ["cuda:0", "cuda:1"]),
    (None, True, 2, 3, ["cuda:0", "cuda:1", "cuda:0"]),
    ("cuda", True, 1, 2, ["cuda", "cuda"]),  # one GPU: shared
    ("cuda:1", True, 4, 2, ["cuda:1", "cuda:1"]),  # an explicit index is kept
    ("cpu", True, 4, 2, ["cpu", "cpu"]),
    (None, False, 0, 2, [None, None]),
])
def test_job_devices_spread_workers_over_gpus(monkeypatch, device, cuda, count, jobs, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert runner.job_devices(device, jobs) == expected


def test_a_worker_runs_every_run_on_the_device_it_claimed(monkeypatch):
    devices = queue.Queue()
    devices.put("cuda:1")
    monkeypatch.setattr(runner, "_worker_device", None)
    runner._claim_device(devices)
    seen = []
    monkeypatch.setattr(runner, "run_one", lambda spec, out, device, data_io, threads: seen.append(device) or {})
    spec = config.parse(_tiny(), "tiny.toml").runs[0]
    runner._run_in_worker(spec, "out", None, 1)
    runner._run_in_worker(spec, "out", None, 1)
    assert seen == ["cuda:1", "cuda:1"] and devices.empty()


def test_jobs_2_runs_the_grid_in_spawned_workers(tmp_path):
    exp = config.parse(_tiny(seeds=[0]), "tiny.toml")  # IMP and SF-IMP-1: two runs, two workers
    statuses = runner.run_experiment(exp, tmp_path, jobs=2, device="cpu", report=False)
    assert sorted(s["status"] for s in statuses) == ["done", "done"]
    for spec in exp.runs:
        folder = tmp_path / spec.name
        assert json.loads((folder / runner.DONE).read_text())["device"] == "cpu"
        assert _rounds(folder) == [0, 1, 2]
    again = runner.run_experiment(exp, tmp_path, jobs=2, device="cpu", report=False)
    assert [s["status"] for s in again] == ["skipped", "skipped"]


# ----------------------------------------------------------------------------------- CIFAR configs


@pytest.mark.parametrize(("name", "classes"), [("cifar10_resnet19", 10), ("cifar100_resnet19", 100)])
def test_cifar_configs_validate_and_take_a_step(name, classes, tmp_path, monkeypatch):
    path = ROOT / "experiments" / f"{name}.toml"
    exp = config.load(path)
    assert {r.method for r in exp.runs} == {"IMP", "SF-IMP-1", "SF-IMP-2"}
    spec = exp.runs[0]
    imp, tr = spec.config["imp"], spec.config["train"]
    assert (imp["rate"], imp["rounds"], tr["num_steps"], tr["batch_size"]) == (0.25, 15, 5, 128)
    assert (tr["optimizer"], tr["lr"], tr["momentum"], tr["weight_decay"], tr["schedule"]) == (
        "sgd", 0.3, 0.9, 5e-4, "cosine")
    assert imp["rewind_epoch"] > 0  # late rewinding

    # one tiny step on fake data: same file, shrunk, no network
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    raw["seeds"] = [0]
    raw["methods"] = ["SF-IMP-2"]
    raw["model_args"]["resnet19"]["width"] = 1 / 64
    raw["imp"].update(rounds=1, epochs=1, rewind_epoch=1, epochs_per_round=1, calib_batches=1)
    raw["train"].update(batch_size=4, eval_batches=1, num_steps=2)
    raw["data"]["num_workers"] = 0
    small = config.parse(raw, str(path))

    def fake_loaders(dataset, **kw):
        assert dataset == spec.dataset
        gen = torch.Generator().manual_seed(0)
        batch = [(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, classes, (4,), generator=gen))]
        return batch, batch

    monkeypatch.setattr("snnprune.data.loaders", fake_loaders)
    statuses = runner.run_experiment(small, tmp_path, device="cpu", report=False)
    assert [s["status"] for s in statuses] == ["done"], statuses
    lines = runner.read_results(tmp_path / small.runs[0].name)
    assert [x["round"] for x in lines] == [0, 1]
    assert lines[1]["sparsity"] > 0.2
