"""End-to-end tests of the ``snnprune`` console script (real subprocesses, embedded digits data).

The module trains one small model (3 epochs) and reuses it. ``seq_snn`` below is a user-style model
(an ``nn.Sequential`` with ``init_hidden`` neurons) loaded with ``--arch test_cli:seq_snn``; the
subprocesses get ``tests/`` on their PYTHONPATH for that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import snntorch as snn
import torch
from torch import nn

TESTS = Path(__file__).resolve().parent


def _executable() -> str:
    local = Path(sys.executable).parent / "snnprune"
    found = str(local) if local.exists() else shutil.which("snnprune")
    if found is None:  # pragma: no cover
        pytest.skip("the snnprune console script is not installed (pip install -e .)")
    return found


SNNPRUNE = _executable()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["SNNPRUNE_THREADS"] = "1"
    env.pop("SNNPRUNE_DEBUG", None)
    return env


def snnprune(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SNNPRUNE, *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_many(calls: list[tuple[tuple[object, ...], Path]]) -> list[subprocess.CompletedProcess[str]]:
    """Run several CLI calls concurrently (most of each is interpreter and torch start-up)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda c: snnprune(*c[0], cwd=c[1]), calls))


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ user-style architecture for --arch


def seq_snn(hidden: int = 32) -> nn.Module:
    """Flatten -> Linear -> Leaky -> Linear -> Leaky (init_hidden, per-neuron beta/threshold): NIR-exportable."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden),
        snn.Leaky(beta=torch.full((hidden,), 0.9), threshold=torch.ones(hidden), init_hidden=True),
        nn.Linear(hidden, 10),
        snn.Leaky(beta=torch.full((10,), 0.9), threshold=torch.ones(10), init_hidden=True, output=True),
    )


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def trained(work: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    result = ok(snnprune("train", "--model", "mlp", "--epochs", "3", "-o", "model.pt", cwd=work))
    return work / "model.pt", result


# ------------------------------------------------------------------------------------------- tests


def test_help_and_version(work: Path) -> None:
    top, version = run_many([(("--help",), work), (("--version",), work)])
    assert "prune" in ok(top).stdout and "quickstart" in top.stdout
    assert "0.1.0" in ok(version).stdout
    # every sub-command's --help, in-process (each subprocess would mostly pay for importing torch)
    from click.testing import CliRunner

    from snnprune.cli import cli

    expected = {"train": "--epochs", "eval": "--trust-pickle", "prune": "--rounds", "info": "--calib-batches",
                "export": "nir", "quickstart": "--sparsities"}
    for command, needle in expected.items():
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and needle in result.output, command


def test_train(trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    path, result = trained
    assert path.is_file()
    assert "epoch   3/3" in result.stdout
    assert "test accuracy" in result.stdout
    from snnprune import checkpoint

    ck = checkpoint.load(path)
    assert len(ck.history) == 3 and ck.extra["rewind_epoch"] == 1 and "rewind_point" in ck.extra


def test_eval(trained: tuple[Path, subprocess.CompletedProcess[str]], work: Path) -> None:
    path, _ = trained
    result = ok(snnprune("eval", path.name, cwd=work))
    assert "model.pt: test accuracy" in result.stdout and "360 digits images" in result.stdout


def test_prune_one_shot(trained: tuple[Path, subprocess.CompletedProcess[str]], work: Path) -> None:
    path, _ = trained
    before = digest(path)
    result = ok(snnprune("prune", path.name, "--criterion", "prob", "--sparsity", "0.8", cwd=work))
    out = work / "model.pruned.pt"
    assert out.is_file() and digest(path) == before  # default output next to the input, input untouched
    for text in ("fcs.1", "prob", "magnitude", "80.0%", "accuracy before", "saved model.pruned.pt"):
        assert text in result.stdout
    from snnprune import checkpoint
    from snnprune.masks import sparsity

    ck = checkpoint.load(out)
    assert abs(sparsity(ck.model) - 0.8) < 0.01
    assert ck.history[-1]["command"] == "prune"


def test_prune_json_and_info(trained: tuple[Path, subprocess.CompletedProcess[str]], work: Path) -> None:
    path, _ = trained
    pruned = ok(snnprune("prune", path.name, "--criterion", "magnitude", "--sparsity", "0.5",
                         "--scope", "global", "-o", "mag.pt", "--json", cwd=work))
    payload = json.loads(pruned.stdout)
    assert payload["output"] == "mag.pt" and (work / "mag.pt").is_file()
    assert abs(payload["sparsity"] - 0.5) < 0.01
    assert {"accuracy_before", "accuracy_after", "layers"} <= set(payload)
    assert [row["layer"] for row in payload["layers"]] == ["fcs.0", "fcs.1", "classifier"]

    text, as_json = run_many([(("info", "mag.pt"), work), (("info", "mag.pt", "--json"), work)])
    out = ok(text).stdout
    for needle in ("SpikingMLP", "bns.0", "lifs.1", "firing rates", "SynOps", "uJ", "Horowitz", "50.0%"):
        assert needle in out, needle
    info = json.loads(ok(as_json).stdout)
    assert info["class"] == "SpikingMLP" and info["num_steps"] == 8
    costs = {c["layer"]: c for c in info["costs"]}
    assert costs["fcs.0"]["kind"] == "macs" and costs["fcs.1"]["kind"] == "synops"
    # SynOps never exceed T x dense MACs x density (rates are at most one spike per step)
    for c in info["costs"]:
        assert 0 < c["ops"] <= info["num_steps"] * c["dense_macs"] * c["density"] + 1e-6
    assert info["energy"]["snn_energy_uJ"] > 0 and len(info["firing_rates"]) == 2


def test_prune_rounds_with_rewind(trained: tuple[Path, subprocess.CompletedProcess[str]], work: Path) -> None:
    path, _ = trained
    result = ok(snnprune("prune", path.name, "--sparsity", "0.75", "--rounds", "2", "--epochs-per-round", "1",
                         "--rewind-epoch", "1", "-o", "rewound.pt", "--json", cwd=work))
    payload = json.loads(result.stdout)
    assert [r["round"] for r in payload["rounds"]] == [1, 2]
    assert abs(payload["rounds"][0]["sparsity"] - 0.5) < 0.01 and abs(payload["sparsity"] - 0.75) < 0.01
    assert (work / "rewound.pt").is_file() and not (work / "rewound.pt.rounds").exists()


def test_arch_state_dict_prune_and_export_nir(work: Path) -> None:
    torch.manual_seed(0)
    torch.save(seq_snn().state_dict(), work / "seq.sd.pt")
    ok(snnprune("prune", "seq.sd.pt", "--arch", "test_cli:seq_snn", "--num-steps", "4", "--criterion",
                "magnitude", "--sparsity", "0.5", "-o", "seq.pruned.pt", cwd=work))
    result = ok(snnprune("export", "seq.pruned.pt", "--to", "nir", "-o", "seq.nir", cwd=work))
    assert (work / "seq.nir").is_file() and "Affine" in result.stdout and "LIF" in result.stdout
    import nir
    import numpy as np

    graph = nir.read(str(work / "seq.nir"))
    weights = [np.asarray(n.weight) for n in graph.nodes.values() if isinstance(n, (nir.Affine, nir.Linear))]
    zero_fraction = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert abs(zero_fraction - 0.5) < 0.01  # pruned zeros survive the export


def test_export_zoo_model_fails_clearly(trained: tuple[Path, subprocess.CompletedProcess[str]], work: Path) -> None:
    path, _ = trained
    result = snnprune("export", path.name, "--to", "nir", "-o", "zoo.nir", cwd=work)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "NIR exporter supports" in result.stderr
    assert "time loop" in result.stderr and not (work / "zoo.nir").exists()


@pytest.mark.slow
def test_quickstart(work: Path) -> None:
    result = ok(snnprune("quickstart", "--epochs", "3", "--sparsities", "0.5,0.9", "--finetune-epochs", "1",
                         cwd=work))
    out = result.stdout
    assert "dense accuracy" in out and "prob one-shot" in out and "magnitude one-shot" in out
    assert "at 50.0% sparsity:" in out and "at 90.0% sparsity:" in out and "wins" in out


@pytest.mark.slow
def test_interrupt_keeps_rounds_and_resumes(trained: tuple[Path, subprocess.CompletedProcess[str]],
                                            work: Path) -> None:
    path, _ = trained
    args = [SNNPRUNE, "prune", path.name, "--sparsity", "0.9", "--rounds", "3", "--epochs-per-round", "2",
            "-o", "iter.pt"]
    rounds = work / "iter.pt.rounds"
    proc = subprocess.Popen(args, cwd=work, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not (rounds / "round_001.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert not (work / "iter.pt").exists()
    assert (rounds / "round_001.pt").is_file()
    assert not list(rounds.glob(".*.tmp"))  # no half-written round file

    resumed = ok(snnprune(*args[1:], cwd=work))
    assert "resuming from" in resumed.stdout and "round 3/3" in resumed.stdout
    assert "round 1/3" not in resumed.stdout
    assert (work / "iter.pt").is_file() and not rounds.exists()
