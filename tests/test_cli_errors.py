"""Bad input to the ``snnprune`` console script: one line on stderr, the right exit status, no
traceback, no output file. Every case runs the real executable; the cases run concurrently in one
module fixture (most of each run is interpreter and torch start-up), then one test per case checks.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import snntorch as snn
import torch
from test_cli import cli_env, snnprune
from torch import nn

# ------------------------------------------------------------ architectures loaded with --arch


def only_neuron() -> nn.Module:
    """A spiking neuron and nothing to prune."""
    return nn.Sequential(nn.Flatten(), snn.Leaky(beta=0.9, init_hidden=True, learn_beta=True))


def plain_mlp() -> nn.Module:
    """No spiking neuron at all."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


class Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# -------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    needles: list[str]
    absent: list[str] = field(default_factory=lambda: ["model.pruned.pt"])  # files that must not appear
    setup: Callable[[Path], None] | None = None
    one_line: bool = True


def _truncated(work: Path) -> None:
    data = (work / "model.pt").read_bytes()
    (work / "truncated.pt").write_bytes(data[: len(data) // 2])


def _not_checkpoint(work: Path) -> None:
    torch.save([1, 2, 3], work / "list.pt")


def _pickled_module(work: Path) -> None:
    torch.save(nn.Linear(2, 2), work / "module.pt")


def _malicious(work: Path) -> None:
    with open(work / "evil.pt", "wb") as f:
        pickle.dump(Evil(work / "PWNED"), f)


def _state_dict(work: Path) -> None:
    from snnprune import checkpoint

    torch.save(checkpoint.load(work / "model.pt").model.state_dict(), work / "weights.pt")


def _only_neuron(work: Path) -> None:
    torch.save(only_neuron().state_dict(), work / "neuron.pt")


def _plain_mlp(work: Path) -> None:
    torch.save(plain_mlp().state_dict(), work / "ann.pt")


def _tiny(work: Path) -> None:
    import helpers_arch

    torch.save(helpers_arch.tiny_snn().state_dict(), work / "tiny.pt")


READ_ONLY = "/sys" if os.geteuid() == 0 else "readonly"  # root writes anywhere chmod allows


def _readonly(work: Path) -> None:
    if READ_ONLY == "readonly":
        (work / "readonly").mkdir(exist_ok=True)
        (work / "readonly").chmod(0o555)


CASES = [
    Case("missing-file", ["eval", "nope.pt"], 1, ["nope.pt", "no such file"]),
    Case("directory", ["prune", "adir"], 1, ["adir", "is a directory"],
         setup=lambda w: (w / "adir").mkdir(exist_ok=True)),
    Case("truncated", ["prune", "truncated.pt"], 1, ["truncated.pt", "truncated, corrupt"],
         absent=["truncated.pruned.pt"], setup=_truncated),
    Case("not-a-checkpoint", ["info", "list.pt"], 1, ["list.pt", "not a snnprune checkpoint"], setup=_not_checkpoint),
    Case("pickled-module", ["prune", "module.pt"], 1, ["refused to load", "--trust-pickle"],
         absent=["module.pruned.pt"], setup=_pickled_module),
    Case("malicious-pickle", ["prune", "evil.pt", "--criterion", "magnitude"], 1,
         ["refused to load", "posix.system"], absent=["PWNED", "evil.pruned.pt"], setup=_malicious),
    Case("state-dict-without-arch", ["prune", "weights.pt"], 1, ["plain state_dict", "--arch"],
         absent=["weights.pruned.pt"], setup=_state_dict),
    Case("state-dict-wrong-arch", ["prune", "weights.pt", "--arch", "helpers_arch:tiny_snn"], 1,
         ["do not fit", "helpers_arch:tiny_snn"], absent=["weights.pruned.pt"], setup=_state_dict),
    Case("unknown-criterion", ["prune", "model.pt", "--criterion", "bogus"], 2,
         ["unknown criterion 'bogus'", "magnitude", "prob"]),
    Case("sparsity-one", ["prune", "model.pt", "--sparsity", "1"], 2, ["--sparsity", "0<=x<1"]),
    Case("rounds-zero", ["prune", "model.pt", "--rounds", "0"], 2, ["--rounds"]),
    Case("epochs-per-round-zero", ["prune", "model.pt", "--rounds", "2", "--epochs-per-round", "0"], 2,
         ["--epochs-per-round"]),
    Case("train-epochs-zero", ["train", "--epochs", "0", "-o", "never.pt"], 2, ["--epochs"], absent=["never.pt"]),
    Case("unknown-dataset", ["eval", "model.pt", "--data", "imagenet"], 2, ["unknown dataset", "digits"]),
    Case("bad-arch-kwargs", ["eval", "weights.pt", "--arch", "helpers_arch:tiny_snn", "--arch-kwargs", "{oops"],
         2, ["--arch-kwargs", "JSON"], setup=_state_dict),
    Case("no-prunable-layer", ["prune", "neuron.pt", "--arch", "test_cli_errors:only_neuron",
                               "--num-steps", "2"], 1, ["no prunable layer"], absent=["neuron.pruned.pt"],
         setup=_only_neuron),
    Case("no-spiking-neuron", ["prune", "ann.pt", "--arch", "test_cli_errors:plain_mlp"], 1,
         ["no snnTorch spiking neuron"], absent=["ann.pruned.pt"], setup=_plain_mlp),
    Case("zoo-model-wrong-data", ["prune", "model.pt", "--data", "mnist"], 1,
         ["expects inputs of shape [1, 8, 8]", "[1, 28, 28]"]),
    Case("model-does-not-fit-data", ["prune", "tiny.pt", "--arch", "helpers_arch:tiny_snn"], 1,
         ["cannot run on --data digits", "check --data"], absent=["tiny.pruned.pt"], setup=_tiny),
    Case("output-folder-missing", ["prune", "model.pt", "-o", "missing/out.pt"], 1,
         ["missing/out.pt", "does not exist"], absent=["missing"]),
    Case("output-folder-read-only", ["prune", "model.pt", "-o", f"{READ_ONLY}/out.pt"], 1,
         ["cannot write to folder"], absent=[f"{READ_ONLY}/out.pt"], setup=_readonly),
    Case("output-overwrites-input", ["prune", "model.pt", "-o", "./model.pt"], 1,
         ["refusing to overwrite the input"]),
    Case("rewind-point-missing", ["prune", "model.pt", "--rounds", "1", "--rewind-epoch", "3"], 1,
         ["cannot rewind to epoch 3", "rewind point is epoch 1"]),
    Case("debug-shows-traceback", ["eval", "nope.pt", "--debug"], 1, ["Traceback", "no such file"],
         one_line=False),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    from snnprune import checkpoint, models
    from snnprune.lottery import snapshot

    work = tmp_path_factory.mktemp("cli_errors")
    model = models.build("mlp", input_shape=[1, 8, 8], num_classes=10)  # untrained suffices here
    checkpoint.save(model, work / "model.pt", extra={"rewind_epoch": 1, "rewind_point": snapshot(model)})
    for case in CASES:
        if case.setup is not None:
            case.setup(work)
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            done = dict(zip([c.id for c in CASES], pool.map(lambda c: snnprune(*c.args, cwd=work), CASES)))
    finally:
        if READ_ONLY == "readonly":
            (work / "readonly").chmod(0o755)
    return work, done


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, results: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    work, done = results
    result = done[case.id]
    assert result.returncode == case.code, result.stderr
    for needle in case.needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"
    if case.one_line:
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr  # exactly one line
        assert result.stderr.startswith("snnprune")
    assert result.stdout == "" or case.code == 0
    for name in case.absent:
        assert not (work / name).exists(), f"{name} was written"
    assert not (work / "model.pruned.pt").exists()


def test_env_has_tests_on_path() -> None:
    assert str(Path(__file__).resolve().parent) in cli_env()["PYTHONPATH"]
