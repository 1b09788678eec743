"""The ``snnprune`` command line: train, evaluate, prune, inspect and export snnTorch SNNs.

    snnprune quickstart                              # train on digits, compare prob vs magnitude
    snnprune train --model mlp --epochs 15 -o model.pt
    snnprune prune model.pt --criterion prob --sparsity 0.8
    snnprune prune model.pt --sparsity 0.9 --rounds 3 --epochs-per-round 2
    snnprune info model.pruned.pt
    snnprune export model.pt --to nir -o model.nir

Exit status: 0 success, 1 failure (one line on stderr, no traceback unless ``--debug``), 2 usage
error, 130 interrupted (Ctrl-C). Every error is mapped to its message in one place, :func:`main`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import __version__

# ------------------------------------------------------------------------------------------- errors


class Failure(Exception):
    """A failure the user can fix: reported as one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


# Set by a command while it runs: extra words for the Ctrl-C message (e.g. how to resume).
_interrupt_hint: Callable[[], str] | None = None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return _one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 200)


def _error_message(exc: BaseException) -> str:
    """The one-line message of an exception escaping a command."""
    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError

    if isinstance(exc, (Failure, CheckpointError, DatasetNotFoundError)):
        return _one_line(str(exc), 600)
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller --batch-size or a smaller model"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}; check the path and its permissions"
    return f"{_reason(exc)}; rerun with --debug for the full traceback"


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt) or "KeyboardInterrupt" in str(current).split("\n")[0]:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    global _interrupt_hint
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("SNNPRUNE_DEBUG"))
    _interrupt_hint = None
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")  # library warnings would break the one-line contract
        try:
            result = cli.main(args=args, prog_name="snnprune", standalone_mode=False)
            if "torch.distributed" in sys.modules:  # (not imported: no process group, and --help stays fast)
                from .distributed import shutdown

                shutdown()  # under torchrun every rank waits for the others, then leaves the group
            return result if isinstance(result, int) else 0
        except click.exceptions.Exit as exc:
            return exc.exit_code
        except (click.exceptions.Abort, KeyboardInterrupt, _Interrupted):
            hint = _interrupt_hint() if _interrupt_hint is not None else ""
            click.echo(f"snnprune: interrupted{'; ' + hint if hint else ''}", err=True)
            return 130
        except _NO_ARGS_IS_HELP as exc:  # bare `snnprune`: the help text
            click.echo(exc.format_message(), err=True)
            return exc.exit_code
        except click.UsageError as exc:  # one line, like every other error
            command = exc.ctx.command_path if exc.ctx is not None else "snnprune"
            click.echo(f"{command}: error: {_one_line(exc.format_message(), 600)} "
                       f"(see '{command} --help')", err=True)
            return exc.exit_code
        except click.ClickException as exc:
            click.echo(f"snnprune: error: {_one_line(exc.format_message(), 600)}", err=True)
            return exc.exit_code
        except Exception as exc:
            if debug:
                traceback.print_exc()
            if _caused_by_interrupt(exc):  # e.g. Ctrl-C inside a callback that torch re-wrapped
                hint = _interrupt_hint() if _interrupt_hint is not None else ""
                click.echo(f"snnprune: interrupted{'; ' + hint if hint else ''}", err=True)
                return 130
            click.echo(f"snnprune: error: {_error_message(exc)}", err=True)
            return 1


# ------------------------------------------------------------------------------------------ options


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc.msg}); e.g. '{{\"hidden\": 64}}'") from None
    if not isinstance(obj, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"hidden\": 64}'")
    return obj


def _dataset(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from . import data

    try:
        return data.info(value).name
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_COMMON = [
    click.option("--data", default="digits", show_default=True, callback=_dataset,
                 help="Dataset: digits (bundled, offline), mnist, fashion-mnist, cifar10, cifar100."),
    click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Folder of the torchvision datasets (default $SNNPRUNE_DATA or ~/.cache/snnprune/data)."),
    click.option("--download", is_flag=True, help="Download a missing torchvision dataset."),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... or auto."),
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
    click.option("--num-steps", type=click.IntRange(min=1), default=None,
                 help="Time steps T (default: the model's own; required for init_hidden models)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--threads", type=click.IntRange(min=1), default=None, envvar="SNNPRUNE_THREADS",
                 help="CPU threads for torch [env SNNPRUNE_THREADS]; default 1 for digits on the CPU "
                      "(tiny models run slower with more), torch's default otherwise."),
    click.option("-q", "--quiet", is_flag=True, help="Print only the essential result."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text."),
    click.option("--debug", is_flag=True, help="Show tracebacks and library warnings."),
    click.option("--progress/--no-progress", default=None,
                 help="Progress bars (default: only on an interactive terminal)."),
]

_MODEL_OPTIONS = [
    click.option("--arch", default=None, metavar="PKG.MODULE:FACTORY",
                 help="Factory that builds the model, for plain state_dict files (or to override a checkpoint's)."),
    click.option("--arch-kwargs", default=None, callback=_json_object, metavar="JSON",
                 help="Keyword arguments of --arch as a JSON object."),
    click.option("--forward", "forward_spec", default=None, metavar="PKG.MODULE:FUNCTION",
                 help="forward(model, x) -> output record [T, B, classes], for custom time stepping."),
    click.option("--trust-pickle", is_flag=True,
                 help="Allow files holding pickled Python objects. This RUNS CODE from the file: "
                      "only for files you trust."),
]


def _apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


common_options = _apply(_COMMON)
model_options = _apply(_MODEL_OPTIONS)


@dataclass
class Env:
    """What every command shares: data, device, output style, how to load and run the model."""

    data: str = "digits"
    data_root: Path | None = None
    download: bool = False
    device: Any = "auto"
    batch_size: int = 64
    num_steps: int | None = None
    seed: int = 0
    threads: int | None = None
    quiet: bool = False
    as_json: bool = False
    debug: bool = False
    progress: bool | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    forward_spec: str | None = None
    trust_pickle: bool = False
    forward: Any = None
    distributed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Env:
        names = set(cls.__dataclass_fields__)
        env = cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
        env.setup()
        return env

    def setup(self) -> None:
        import torch

        from .distributed import init_from_env, local_device
        from .utils import resolve_device, seed_everything

        self.distributed = init_from_env()  # launched by torchrun: gloo on CPU, nccl on GPU
        if self.distributed and self.device in (None, "auto"):
            self.device = local_device()
        try:
            self.device = resolve_device(self.device)
            torch.empty(0, device=self.device)
        except (RuntimeError, AssertionError) as exc:
            raise click.BadParameter(f"device {self.device!r} is not usable here ({_reason(exc)})",
                                     param_hint="'--device'") from None
        threads = self.threads
        if threads is None and self.device.type == "cpu" and self.data == "digits":
            threads = 1
        if threads is not None:
            torch.set_num_threads(threads)
            with contextlib.suppress(Exception):  # the Numba kernels of the statistics
                import numba

                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        seed_everything(self.seed)
        if self.forward_spec is not None:
            from .checkpoint import resolve_import_path

            try:
                self.forward = resolve_import_path(self.forward_spec)
            except Exception as exc:
                raise click.BadParameter(str(exc), param_hint="'--forward'") from None

    # ---------------------------------------------------------------- output
    @property
    def main_process(self) -> bool:
        """Rank 0 under torchrun (or the only process): the one that prints and writes files."""
        from .distributed import is_main_process

        return is_main_process()

    def say(self, text: str = "") -> None:
        """Human output (stdout), silenced by --quiet and --json."""
        if not (self.quiet or self.as_json) and self.main_process:
            click.echo(text)

    def result(self, text: str, payload: dict[str, Any]) -> None:
        """The essential result: text (even with --quiet) or the one JSON object."""
        if not self.main_process:
            return
        if self.as_json:
            click.echo(json.dumps(payload, indent=2, default=_json_default))
        else:
            click.echo(text)

    # ---------------------------------------------------------------- model
    def load(self, path: Path) -> Any:
        """Load a checkpoint / state_dict (with --arch) / trusted pickle; model on the device."""
        from . import checkpoint

        ck = checkpoint.load(path, arch=self.arch, arch_kwargs=self.arch_kwargs,
                             trust_pickle=self.trust_pickle, map_location="cpu")
        ck.model.to(self.device)
        if self.num_steps is not None and hasattr(ck.model, "num_steps") and _is_zoo(ck.model):
            ck.model.num_steps = self.num_steps
            if isinstance(getattr(ck.model, "arch_kwargs", None), dict):
                ck.model.arch_kwargs["num_steps"] = self.num_steps
            if ck.arch == "snnprune.models:build":
                ck.arch_kwargs["num_steps"] = self.num_steps
        return ck

    def runner(self, model: Any) -> Any:
        """A module mapping a batch to the output record ``[T, B, C]`` (for fit / evaluate)."""
        from .stepping import uses_hidden_state

        if self.forward is None and _is_zoo(model):
            return model
        if (self.forward is None and uses_hidden_state(model) and self.num_steps is None
                and getattr(model, "num_steps", None) is None):
            raise click.UsageError(
                f"{type(model).__name__} keeps its neuron state inside the module (init_hidden=True), so "
                "snnprune steps it through time: pass --num-steps T (or --forward for your own stepping)")
        return _Stepper(model, self.num_steps, self.forward)

    def loaders(self, model: Any = None) -> tuple[Any, Any]:
        """Train and test loaders of --data, after checking the model's declared input shape."""
        from . import data

        info = data.info(self.data)
        expected = getattr(model, "input_shape", None)
        if expected is not None and tuple(expected) != tuple(info.input_shape):
            raise Failure(
                f"the model expects inputs of shape {list(expected)} but --data {self.data} gives "
                f"{list(info.input_shape)}; use the dataset the model was trained on")
        classes = getattr(model, "num_classes", None)
        if isinstance(classes, int) and classes != info.num_classes:
            raise Failure(f"the model has {classes} outputs but --data {self.data} has "
                          f"{info.num_classes} classes; use the dataset the model was trained on")
        return data.loaders(self.data, batch_size=self.batch_size, root=self.data_root,
                            download=self.download, seed=self.seed, distributed=self.distributed)

    def evaluate(self, runner: Any, loader: Any) -> dict[str, float]:
        from .train import evaluate

        return evaluate(runner, loader, device=self.device, progress=self.progress)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _is_zoo(model: Any) -> bool:
    from .models.base import SpikingNet

    return isinstance(model, SpikingNet)


def _stepper_class() -> type:
    from torch import nn

    from .stepping import run

    class Stepper(nn.Module):
        """Runs any snnTorch model through time (snnprune.stepping.run) and returns its record."""

        def __init__(self, model: nn.Module, num_steps: int | None, forward: Any) -> None:
            super().__init__()
            self.model = model
            self.steps = num_steps
            self.forward_fn = forward
            self.num_steps = num_steps if num_steps is not None else getattr(model, "num_steps", None)

        def forward(self, x: Any) -> Any:
            return run(self.model, x, num_steps=self.steps, forward=self.forward_fn)

    return Stepper


def _Stepper(model: Any, num_steps: int | None, forward: Any) -> Any:  # noqa: N802
    return _stepper_class()(model, num_steps, forward)


# ------------------------------------------------------------------------------------------ helpers


def check_output(out: Path, *, inputs: Iterable[Path] = ()) -> Path:
    """Fail early (before any work) if ``out`` cannot be written or would overwrite an input."""
    out = Path(os.path.expanduser(str(out)))
    for inp in inputs:
        same = out.resolve() == Path(inp).resolve()
        if not same and out.exists() and Path(inp).exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, inp)
        if same:
            raise Failure(f"{out}: refusing to overwrite the input model; choose another -o/--output")
    if out.is_dir():
        raise Failure(f"{out}: is a directory; give a file name such as {out / 'model.pt'}")
    folder = out.parent
    if not folder.exists():
        raise Failure(f"{out}: output folder {folder} does not exist; create it first or choose another -o/--output")
    if not folder.is_dir():
        raise Failure(f"{out}: {folder} is not a folder; choose another -o/--output")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise Failure(f"{out}: cannot write to folder {folder} ({exc.strerror or exc}); "
                      "check its permissions or choose another -o/--output") from None
    return out


def require_snn(model: Any, path: Path | str) -> None:
    """The model must have a prunable layer and a spiking neuron."""
    from .masks import prunable_layers
    from .stepping import spiking_neurons

    if not prunable_layers(model):
        raise Failure(f"{path}: {type(model).__name__} has no prunable layer (nn.Linear, nn.Conv1d/2d/3d); "
                      "nothing to prune or measure")
    if not any(True for _ in spiking_neurons(model)):
        raise Failure(f"{path}: {type(model).__name__} has no snnTorch spiking neuron (snn.Leaky, ...); "
                      "snnprune works on spiking networks")


def probe(runner: Any, loader: Any, env: Env) -> Any:
    """Run the model on two samples; turn a shape problem into a one-line failure. Returns a batch."""
    import torch

    batch = next(iter(loader))
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    was_training = runner.training
    runner.eval()
    try:
        with torch.no_grad():
            record = runner(x[:2].to(env.device))
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise Failure(
            f"the model cannot run on --data {env.data} batches of shape {list(x.shape[1:])} ({_reason(exc)}); "
            "check --data, --arch/--arch-kwargs, --num-steps or --forward") from None
    finally:
        runner.train(was_training)
    if not isinstance(record, torch.Tensor) or record.dim() != 3:
        shape = list(record.shape) if isinstance(record, torch.Tensor) else type(record).__name__
        raise Failure(f"the model returned {shape}, not an output record [T, B, classes]; "
                      "pass --num-steps, or --forward package.module:function for custom time stepping")
    from . import data

    classes = data.info(env.data).num_classes
    if record.shape[-1] != classes:
        raise Failure(f"the model has {record.shape[-1]} outputs but --data {env.data} has {classes} classes; "
                      "use the dataset the model was trained on")
    return x


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _arch_of(ck: Any, env: Env) -> tuple[str | None, dict[str, Any] | None]:
    if ck.arch is None and ck.kind == "module" and getattr(ck.model, "arch_kwargs", None) is None:
        raise Failure(f"{ck.path}: a pickled module has no importable architecture, so the result could not be "
                      "saved as a snnprune checkpoint; pass --arch package.module:factory (and --arch-kwargs)")
    return ck.arch, ck.arch_kwargs


# ---------------------------------------------------------------------------------------------- cli


class _Interrupted(Exception):
    """KeyboardInterrupt, caught before click prints its own blank line."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted() from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="snnprune")
def cli() -> None:
    """Prune snnTorch spiking neural networks with spike-probability criteria.

    Start with `snnprune quickstart` (about a minute on a laptop CPU). Exit status: 0 success,
    1 failure, 2 usage error, 130 interrupted.
    """


# -------------------------------------------------------------------------------------------- train


@cli.command()
@click.option("--model", "model_name", default="mlp", show_default=True,
              help="Zoo model: mlp, convnet, vgg16, resnet19.")
@click.option("--model-kwargs", default=None, callback=_json_object, metavar="JSON",
              help="Extra keyword arguments of the zoo model, e.g. '{\"hidden\": [64, 64]}'.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--rewind-epoch", type=click.IntRange(min=0), default=1, show_default=True,
              help="Also store the weights after this epoch (0: the initial weights) as the rewind point "
                   "that `prune --rewind-epoch` uses.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("model.pt"), show_default=True)
@common_options
def train(model_name: str, model_kwargs: dict[str, Any] | None, epochs: int, lr: float, optimizer: str,
          rewind_epoch: int, output: Path, **kw: Any) -> None:
    """Train a zoo SNN on --data and save it as a checkpoint."""
    from . import checkpoint, data, models
    from .lottery import snapshot
    from .train import TrainConfig, fit

    env = Env.from_kwargs(kw)
    if model_name not in models.available():
        raise click.BadParameter(f"unknown model {model_name!r}; known models: {', '.join(models.available())}",
                                 param_hint="'--model'")
    if rewind_epoch > epochs:
        raise click.BadParameter(f"{rewind_epoch} is after the last epoch ({epochs})", param_hint="'--rewind-epoch'")
    output = check_output(output)
    info = data.info(env.data)
    build_kwargs: dict[str, Any] = {"input_shape": list(info.input_shape), "num_classes": info.num_classes}
    if env.num_steps is not None:
        build_kwargs["num_steps"] = env.num_steps
    build_kwargs.update(model_kwargs or {})
    try:
        model = models.build(model_name, **build_kwargs)
    except (TypeError, ValueError) as exc:
        raise Failure(f"cannot build model {model_name!r} with {build_kwargs} ({_reason(exc)}); "
                      "check --model-kwargs") from None
    model.to(env.device)
    train_loader, test_loader = env.loaders(model)
    probe(model, test_loader, env)
    point = snapshot(model) if rewind_epoch == 0 else None
    cfg = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, seed=env.seed)
    n_params = sum(p.numel() for p in model.parameters())
    env.say(f"training {model_name} ({n_params:,} parameters, T = {model.num_steps}) on {env.data}, "
            f"{epochs} epochs, {env.device}")

    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        nonlocal point
        if epoch + 1 == rewind_epoch:
            point = snapshot(model)
        env.say(f"epoch {epoch + 1:>3}/{epochs}  loss {record['train_loss']:.4f}  "
                f"train {_pct(record['train_accuracy'])}  test {_pct(record['test_accuracy'])}  "
                f"({record['seconds']:.1f} s)")

    started = time.perf_counter()
    history = fit(model, train_loader, test_loader, cfg, device=env.device, progress=env.progress,
                  on_epoch_end=on_epoch, ddp=env.distributed)
    final = history[-1]["test_accuracy"]
    if env.main_process:
        checkpoint.save(model, output, history=history,
                        metadata={"data": env.data, "train": cfg.to_dict(), "test_accuracy": final},
                        extra={"rewind_point": point, "rewind_epoch": rewind_epoch})
    seconds = time.perf_counter() - started
    env.result(f"test accuracy {_pct(final)}; saved {output} ({seconds:.1f} s)",
               {"output": str(output), "model": model_name, "data": env.data, "test_accuracy": final,
                "epochs": history, "seconds": seconds})


# --------------------------------------------------------------------------------------------- eval


@cli.command(name="eval")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@model_options
@common_options
def eval_(model_path: Path, **kw: Any) -> None:
    """Accuracy of MODEL on the test split of --data."""
    from .masks import sparsity

    env = Env.from_kwargs(kw)
    ck = env.load(model_path)
    model = ck.model
    runner = env.runner(model)
    _, test_loader = env.loaders(model)
    probe(runner, test_loader, env)
    metrics = env.evaluate(runner, test_loader)
    sp = sparsity(model)
    env.result(f"{model_path}: test accuracy {_pct(metrics['accuracy'])} on {metrics['samples']} {env.data} "
               f"images (loss {metrics['loss']:.4f}, weight sparsity {_pct(sp)})",
               {"model": str(model_path), "data": env.data, "accuracy": metrics["accuracy"],
                "loss": metrics["loss"], "samples": metrics["samples"], "sparsity": sp})


# -------------------------------------------------------------------------------------------- prune


def _criterion(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from . import criteria
    from .lottery import METHODS

    if value in METHODS or value in criteria.available():
        return value
    raise click.BadParameter(f"unknown criterion {value!r}; known criteria: {', '.join(criteria.available())}; "
                             f"named methods: {', '.join(METHODS)}")


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--criterion", default="prob", show_default=True, callback=_criterion,
              help="magnitude, random, prob, prob-empirical, any registered criterion, or a method "
                   "(IMP, SF-IMP-1, SF-IMP-2). prob scores hidden layers with the spike-flip probability "
                   "and keeps magnitude for the encoding layer and the classifier (SF-IMP-1 roles).")
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="Target fraction of pruned weights, in [0, 1).")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Prune iteratively in K rounds (rate 1-(1-S)^(1/K) each), fine-tuning after each.")
@click.option("--epochs-per-round", type=click.IntRange(min=1), default=2, show_default=True,
              help="Fine-tuning epochs after each round (with --rounds).")
@click.option("--rewind-epoch", type=click.IntRange(min=0), default=None,
              help="Rewind the surviving weights to the rewind point stored by `snnprune train "
                   "--rewind-epoch R` before each round's training (lottery-ticket style). Default: no "
                   "rewinding, each round fine-tunes the current weights.")
@click.option("--scope", type=click.Choice(["layer", "global"]), default="layer", show_default=True)
@click.option("--calib-batches", type=click.IntRange(min=1), default=8, show_default=True,
              help="Training batches used for the spike statistics of each pruning step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Fine-tuning learning rate (with --rounds).")
@click.option("--keep-rounds", is_flag=True, help="Keep OUT.rounds/ (per-round checkpoints) after success.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output checkpoint [default: MODEL.pruned.pt next to MODEL].")
@model_options
@common_options
def prune(model_path: Path, criterion: str, sparsity: float, rounds: int | None, epochs_per_round: int,
          rewind_epoch: int | None, scope: str, calib_batches: int, lr: float, keep_rounds: bool,
          output: Path | None, **kw: Any) -> None:
    """Prune MODEL to --sparsity, one-shot (default) or in --rounds with fine-tuning.

    An interrupted iterative run (Ctrl-C) keeps its finished rounds in OUT.rounds/; rerunning the
    same command resumes after the last one.
    """
    from . import checkpoint
    from .lottery import method_settings
    from .masks import sparsity as model_sparsity
    from .pruner import Pruner

    env = Env.from_kwargs(kw)
    if rewind_epoch is not None and rounds is None:
        raise click.UsageError("--rewind-epoch needs --rounds (one-shot pruning does no training)")
    ck = env.load(model_path)
    model = ck.model
    require_snn(model, model_path)
    if output is None:
        output = model_path.with_name(f"{model_path.stem}.pruned{model_path.suffix or '.pt'}")
    output = check_output(output, inputs=[model_path])
    arch, arch_kwargs = _arch_of(ck, env)
    runner = env.runner(model)
    train_loader, test_loader = env.loaders(model)
    probe(runner, test_loader, env)
    settings = method_settings(criterion)
    pruner_kw = {"scope": scope, "calib_batches": calib_batches, "seed": env.seed, "num_steps": env.num_steps,
                 "forward": env.forward, "progress": env.progress, **settings}

    if rounds is None:
        acc_before = env.evaluate(runner, test_loader)["accuracy"]
        pruner = Pruner(model, **pruner_kw)
        amount = _amount(pruner.sparsity(), sparsity, 1)
        started = time.perf_counter()
        pruner.step(amount, data=train_loader)
        acc_after = env.evaluate(runner, test_loader)["accuracy"]
        record = {"command": "prune", "criterion": criterion, "scope": scope, "target_sparsity": sparsity,
                  "sparsity": pruner.sparsity(), "accuracy_before": acc_before, "accuracy_after": acc_after,
                  "seconds": time.perf_counter() - started}
        round_records: list[dict[str, Any]] | None = None
    else:
        pruner, acc_before, round_records = _prune_rounds(
            env, ck, model, runner, train_loader, test_loader, pruner_kw, output, arch, arch_kwargs,
            criterion=criterion, sparsity=sparsity, rounds=rounds, epochs_per_round=epochs_per_round,
            rewind_epoch=rewind_epoch, scope=scope, lr=lr, source=model_path)
        acc_after = round_records[-1]["accuracy"]
        record = {"command": "prune", "criterion": criterion, "scope": scope, "target_sparsity": sparsity,
                  "sparsity": pruner.sparsity(), "accuracy_before": acc_before, "accuracy_after": acc_after,
                  "rounds": round_records}
    if env.main_process:
        checkpoint.save(model, output, arch=arch, arch_kwargs=arch_kwargs, history=[*ck.history, record],
                        metadata={"data": env.data, "pruned_from": str(model_path)})
    if rounds is not None and not keep_rounds and env.main_process:
        shutil.rmtree(_rounds_dir(output), ignore_errors=True)
    rows = pruner.report_rows()
    text = "\n".join([
        pruner.report(),
        "",
        f"accuracy before {_pct(acc_before)}, after {_pct(acc_after)} "
        f"(sparsity {_pct(pruner.sparsity())}, criterion {criterion}, "
        f"{'one-shot, no retraining' if rounds is None else f'{rounds} rounds x {epochs_per_round} epochs'})",
        f"saved {output}",
    ])
    env.result(text if not env.quiet else f"accuracy {_pct(acc_before)} -> {_pct(acc_after)}; saved {output}",
               {"input": str(model_path), "output": str(output), "criterion": criterion, "scope": scope,
                "target_sparsity": sparsity, "sparsity": pruner.sparsity(), "model_sparsity": model_sparsity(model),
                "accuracy_before": acc_before, "accuracy_after": acc_after, "rounds": round_records,
                "layers": rows})


def _amount(current: float, target: float, rounds: int) -> float:
    """Per-round fraction of the remaining weights that takes ``current`` sparsity to ``target``."""
    if target <= current + 1e-9:
        raise Failure(f"the model is already at sparsity {_pct(current)} >= --sparsity {target}; "
                      "choose a higher --sparsity")
    total = 1.0 - (1.0 - target) / (1.0 - current)
    return 1.0 - (1.0 - total) ** (1.0 / rounds)


def _rounds_dir(output: Path) -> Path:
    return output.with_name(output.name + ".rounds")


def _prune_rounds(env: Env, ck: Any, model: Any, runner: Any, train_loader: Any, test_loader: Any,
                  pruner_kw: dict[str, Any], output: Path, arch: str | None, arch_kwargs: dict[str, Any] | None,
                  *, criterion: str, sparsity: float, rounds: int, epochs_per_round: int,
                  rewind_epoch: int | None, scope: str, lr: float, source: Path) -> tuple[Any, float, list[dict]]:
    """K rounds of :func:`snnprune.lottery.prune_in_rounds` with its round files in ``OUT.rounds/``;
    a rerun with the same settings resumes after the last finished round."""
    global _interrupt_hint
    from .lottery import RoundSettingsError, prune_in_rounds
    from .pruner import Pruner
    from .train import TrainConfig

    folder = _rounds_dir(output)
    settings = {"input": str(source), "criterion": criterion, "sparsity": sparsity, "rounds": rounds,
                "epochs_per_round": epochs_per_round, "rewind_epoch": rewind_epoch, "scope": scope,
                "lr": lr, "seed": env.seed, "data": env.data}
    point = None
    if rewind_epoch is not None:
        stored = ck.extra.get("rewind_epoch")
        point = ck.extra.get("rewind_point")
        if point is None or stored != rewind_epoch:
            have = f"its rewind point is epoch {stored}" if point is not None else "it has no rewind point"
            raise Failure(f"{source}: cannot rewind to epoch {rewind_epoch}, {have}; train it with "
                          f"`snnprune train --rewind-epoch {rewind_epoch}`, or leave out --rewind-epoch to "
                          "fine-tune from the loaded weights")
        point = {k: v.to(env.device) for k, v in point.items()}
    pruner = Pruner(model, **pruner_kw)
    amount = _amount(pruner.sparsity(), sparsity, rounds)

    def resuming(path: Path, done: int) -> None:
        env.say(f"resuming from {path} (round {done} of {rounds} done)")
        if not env.as_json and env.quiet:
            click.echo(f"resuming from {path}", err=True)

    def hint() -> str:
        files = sorted(folder.glob("round_[0-9][0-9][0-9].pt")) if folder.is_dir() else []
        if not files:
            return f"no output was written ({output} not created)"
        return (f"{output} not written; finished rounds are kept in {folder} ({files[-1].name}): rerun the "
                "same command to resume")

    def round_done(rec: dict[str, Any]) -> None:
        env.say(f"round {rec['round']}/{rounds}: sparsity {_pct(rec['sparsity'])}, accuracy after pruning "
                f"{_pct(rec['accuracy_pruned'])}, after fine-tuning {_pct(rec['accuracy'])} ({rec['seconds']:.1f} s)")

    _interrupt_hint = hint
    env.say(f"{rounds} rounds of {100 * amount:.1f}% of the remaining weights, {epochs_per_round} fine-tuning "
            "epochs each" + (f", rewinding to epoch {rewind_epoch}" if rewind_epoch is not None else ""))
    try:
        result = prune_in_rounds(
            model, pruner, train_loader, test_loader, amount=amount, rounds=rounds,
            train=TrainConfig(epochs=epochs_per_round, lr=lr, seed=env.seed), seed=env.seed, rewind_point=point,
            net=runner, checkpoint_dir=folder, settings=settings, arch=arch, arch_kwargs=arch_kwargs,
            device=env.device, ddp=env.distributed, progress=env.progress, on_resume=resuming,
            on_round_end=round_done)
    except RoundSettingsError as err:
        raise Failure(str(err)) from None
    _interrupt_hint = None
    return pruner, result.accuracy_before, result.rounds


# --------------------------------------------------------------------------------------------- info


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--calib-batches", type=click.IntRange(min=1), default=4, show_default=True,
              help="Test batches used for firing rates and SynOps.")
@model_options
@common_options
def info(model_path: Path, calib_batches: int, **kw: Any) -> None:
    """Architecture, layer pairing, sparsity, firing rates, SynOps and energy of MODEL."""
    from . import report
    from .masks import is_dynamic, is_masked, mask_of, prunable_layers
    from .masks import sparsity as model_sparsity
    from .stats import collect_stats

    env = Env.from_kwargs(kw)
    ck = env.load(model_path)
    model = ck.model
    require_snn(model, model_path)
    runner = env.runner(model)
    _, test_loader = env.loaders(model)
    x = probe(runner, test_loader, env)
    stats = collect_stats(model, test_loader, num_steps=env.num_steps, forward=env.forward,
                          max_batches=calib_batches, progress=env.progress)
    shapes, steps = report.layer_shapes(model, x[:2].to(env.device), num_steps=env.num_steps, forward=env.forward)
    costs = report.costs(model, stats, shapes, steps)
    totals = report.energy(costs)
    n_params = sum(p.numel() for p in model.parameters())

    layer_rows = []
    for name, module in prunable_layers(model).items():
        total = module.weight.numel()
        kept = int(mask_of(module).sum()) if is_masked(module) else int((module.weight != 0).sum())
        mask = ("dynamic" if is_dynamic(module) else "static") if is_masked(module) else "none"
        layer_rows.append({"layer": name, "type": type(module).__name__, "shape": list(module.weight.shape),
                           "weights": total, "kept": kept, "sparsity": 1 - kept / total, "mask": mask})
    rate_rows = []
    for neuron, m in stats.membrane.items():
        r = m.firing_rate
        rate_rows.append({"neuron": neuron, "channels": int(r.numel()), "mean_rate": float(r.mean()),
                          "min_rate": float(r.min()), "max_rate": float(r.max()),
                          "silent_channels": int((r == 0).sum())})
    arch = f"{ck.arch}({', '.join(f'{k}={v!r}' for k, v in ck.arch_kwargs.items())})" if ck.arch else "pickled module"
    payload = {
        "model": str(model_path), "kind": ck.kind, "class": type(model).__name__, "arch": ck.arch,
        "arch_kwargs": ck.arch_kwargs, "parameters": n_params, "num_steps": steps, "data": env.data,
        "samples": stats.samples, "sparsity": model_sparsity(model), "structure": stats.structure.to_dict(),
        "layers": layer_rows, "firing_rates": rate_rows, "costs": [c.to_dict() for c in costs],
        "energy": totals, "energy_basis": report.ENERGY_BASIS,
    }
    if env.as_json:
        env.result("", payload)
        return
    h = report.human
    lines = [
        f"model      {model_path} ({ck.kind})",
        f"class      {type(model).__name__}: {arch}",
        f"size       {n_params:,} parameters, T = {steps} steps, weight sparsity {_pct(model_sparsity(model))}",
        "",
        "layer -> BatchNorm -> spiking neuron",
        stats.structure.table(),
        "",
        "weights",
        report.format_table(["layer", "type", "shape", "weights", "kept", "sparsity", "mask"],
                            [(r["layer"], r["type"], "x".join(map(str, r["shape"])), r["weights"], r["kept"],
                              _pct(r["sparsity"]), r["mask"]) for r in layer_rows], right=(3, 4, 5)),
        "",
        f"firing rates (spikes per neuron per step, {stats.samples} {env.data} test images)",
        report.format_table(["neuron", "channels", "mean", "min", "max", "silent"],
                            [(r["neuron"], r["channels"], f"{r['mean_rate']:.4f}", f"{r['min_rate']:.4f}",
                              f"{r['max_rate']:.4f}", r["silent_channels"]) for r in rate_rows],
                            right=(1, 2, 3, 4, 5)),
        "",
        "operations per inference (SynOps = T x output positions x sum_i input rate_i x nnz(W[:, i]))",
        report.format_table(["layer", "role", "input rate", "density", "dense MACs", "ops", "kind"],
                            [(c.layer, c.role, f"{c.input_rate:.4f}", _pct(c.density), h(c.dense_macs),
                              h(c.ops), "MAC (analog input)" if c.kind == "macs" else "SynOp (AC)")
                             for c in costs], right=(2, 3, 4, 5)),
        "",
        f"total      {h(totals['macs'])} MACs + {h(totals['synops'])} SynOps per inference "
        f"-> {totals['snn_energy_uJ']:.4f} uJ",
        f"dense ANN  {h(totals['ann_dense_macs'])} MACs per inference -> {totals['ann_energy_uJ']:.4f} uJ "
        f"(same layers, one pass, every weight)",
        f"basis      {report.ENERGY_BASIS}",
    ]
    env.result("\n".join(lines), payload)


# ------------------------------------------------------------------------------------------- export

NIR_SUPPORT = ("snnTorch's NIR exporter supports nn.Sequential-style models of nn.Flatten, nn.Linear, "
               "nn.Conv2d, nn.AvgPool2d and snn.Leaky / Synaptic / RLeaky / RSynaptic neurons with "
               "init_hidden=True and per-neuron beta and threshold tensors (no BatchNorm, no time loop of "
               "the model's own)")


def _nir_supported_types() -> tuple[type, ...]:
    import snntorch as snn
    from torch import nn

    return (nn.Flatten, nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Identity, snn.Leaky, snn.Synaptic,
            snn.RLeaky, snn.RSynaptic)


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--to", "fmt", type=click.Choice(["nir"]), default="nir", show_default=True,
              help="Target format (NIR: Neuromorphic Intermediate Representation, HDF5 file).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file [default: MODEL with suffix .nir].")
@model_options
@common_options
def export(model_path: Path, fmt: str, output: Path | None, **kw: Any) -> None:
    """Export MODEL (pruned zeros kept) to NIR with snnTorch's exporter."""
    import snntorch as snn
    import torch

    from . import data
    from .masks import make_permanent, prunable_layers

    env = Env.from_kwargs(kw)
    ck = env.load(model_path)
    output = check_output(output or model_path.with_suffix(".nir"), inputs=[model_path])
    model = make_permanent(copy.deepcopy(ck.model)).cpu().eval()
    if _is_zoo(model):
        raise Failure(f"{model_path}: cannot export {type(model).__name__} to NIR: it runs its own time loop "
                      f"(snnprune zoo model); {NIR_SUPPORT}")
    supported = _nir_supported_types()
    leaves = [m for m in model.modules() if not list(m.children())]
    bad = sorted({type(m).__name__ for m in leaves if not isinstance(m, supported)})
    if bad:
        raise Failure(f"{model_path}: cannot export to NIR, unsupported modules {', '.join(bad)}; {NIR_SUPPORT}")
    for m in leaves:
        if isinstance(m, snn.Leaky) and (m.beta.dim() == 0 or torch.as_tensor(m.threshold).dim() == 0):
            raise Failure(f"{model_path}: cannot export to NIR, a snn.Leaky has a scalar beta or threshold; "
                          f"{NIR_SUPPORT}")
    sample = torch.zeros(1, *data.info(env.data).input_shape)
    from snntorch.export_nir import export_to_nir

    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            graph = export_to_nir(model, sample, ignore_dims=[0])
    except Exception as exc:
        raise Failure(f"{model_path}: the NIR export failed ({_reason(exc)}); {NIR_SUPPORT}") from None
    import nir

    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        nir.write(tmp, graph)
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(model).values())
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    env.result(f"exported {len(kinds)} NIR nodes ({', '.join(kinds)}) to {output}; "
               f"{zeros}/{total} weights are zero ({_pct(zeros / max(total, 1))} sparsity kept)",
               {"model": str(model_path), "output": str(output), "format": fmt, "nodes": kinds,
                "zero_weights": zeros, "weights": total})


# --------------------------------------------------------------------------------------- quickstart


def _parse_sparsities(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0.5,0.8,0.9") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise click.BadParameter(f"{value!r}: every sparsity must be in [0, 1)")
    return values


@cli.command()
@click.option("--model", "model_name", default="mlp", show_default=True, help="Zoo model to train.")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--sparsities", default="0.5,0.8,0.9", show_default=True, callback=_parse_sparsities)
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=2, show_default=True,
              help="Fine-tuning epochs after each one-shot pruning (0: none).")
@click.option("--calib-batches", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Also save the trained dense model here.")
@common_options
def quickstart(model_name: str, epochs: int, sparsities: list[float], finetune_epochs: int,
               calib_batches: int, output: Path | None, **kw: Any) -> None:
    """Train a small SNN, prune it with prob and magnitude, and compare accuracies."""
    from . import checkpoint, data, models
    from .pruner import Pruner
    from .train import TrainConfig, fit

    env = Env.from_kwargs(kw)
    if output is not None:
        output = check_output(output)
    info = data.info(env.data)
    kwargs: dict[str, Any] = {"input_shape": list(info.input_shape), "num_classes": info.num_classes}
    if env.num_steps is not None:
        kwargs["num_steps"] = env.num_steps
    try:
        model = models.build(model_name, **kwargs).to(env.device)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(_reason(exc), param_hint="'--model'") from None
    train_loader, test_loader = env.loaders(model)
    started = time.perf_counter()
    env.say(f"1. training {model_name} on {env.data} ({len(train_loader.dataset)} train / "
            f"{len(test_loader.dataset)} test images), {epochs} epochs ...")
    history = fit(model, train_loader, test_loader, TrainConfig(epochs=epochs, seed=env.seed),
                  device=env.device, progress=env.progress)
    dense = history[-1]["test_accuracy"]
    env.say(f"   dense test accuracy {_pct(dense)} ({time.perf_counter() - started:.1f} s)")
    if output is not None:
        checkpoint.save(model, output, history=history, metadata={"data": env.data})
        env.say(f"   saved {output}")
    crits = ("prob", "magnitude")
    env.say(f"2. one-shot pruning with {' and '.join(crits)}"
            + (f", then {finetune_epochs} fine-tuning epochs" if finetune_epochs else "") + " ...")
    results: list[dict[str, Any]] = []
    for s in sparsities:
        row: dict[str, Any] = {"sparsity": s}
        for crit in crits:
            m = copy.deepcopy(model)
            Pruner(m, crit, calib_batches=calib_batches, seed=env.seed, progress=env.progress).step(
                s, data=train_loader)
            row[crit] = env.evaluate(m, test_loader)["accuracy"]
            if finetune_epochs:
                fit(m, train_loader, None, TrainConfig(epochs=finetune_epochs, lr=1e-3, seed=env.seed),
                    device=env.device, progress=env.progress)
                row[f"{crit}+ft"] = env.evaluate(m, test_loader)["accuracy"]
        results.append(row)
    seconds = time.perf_counter() - started

    def winner(row: dict[str, Any], suffix: str) -> str:
        a, b = row[crits[0] + suffix], row[crits[1] + suffix]
        if abs(a - b) < 1e-9:
            return "tie"
        return crits[0] if a > b else crits[1]

    header = ["sparsity", *[f"{c} one-shot" for c in crits]]
    if finetune_epochs:
        header += [f"{c} +{finetune_epochs} ep" for c in crits]
    header += ["winner"]
    table_rows = []
    verdicts = []
    for row in results:
        cells = [_pct(row["sparsity"]), *[_pct(row[c]) for c in crits]]
        w1 = winner(row, "")
        verdict = f"at {_pct(row['sparsity'])} sparsity: {w1} wins one-shot " \
                  f"({crits[0]} {_pct(row[crits[0]])} vs {crits[1]} {_pct(row[crits[1]])})"
        win = w1
        if finetune_epochs:
            cells += [_pct(row[f"{c}+ft"]) for c in crits]
            w2 = winner(row, "+ft")
            verdict += f"; {w2} wins after fine-tuning ({crits[0]} {_pct(row[crits[0] + '+ft'])} vs " \
                       f"{crits[1]} {_pct(row[crits[1] + '+ft'])})"
            win = f"{w1} / {w2}"
        table_rows.append([*cells, win])
        verdicts.append(verdict.replace("tie wins", "tie"))
        row["winner_one_shot"] = w1
        if finetune_epochs:
            row["winner_finetuned"] = winner(row, "+ft")
    from .report import format_table

    text = "\n".join([
        "",
        f"dense accuracy {_pct(dense)}; test accuracy after pruning ({len(test_loader.dataset)} test images):",
        format_table(header, table_rows, right=tuple(range(1, len(header) - 1))),
        "",
        *verdicts,
        "",
        "prob = spike-flip probability (Eq. 12) in hidden layers, magnitude in the encoding layer and the "
        "classifier (SF-IMP-1 roles); magnitude = |w| everywhere. Layer-wise ranking.",
        f"total {seconds:.1f} s. Next: snnprune train -o model.pt; snnprune prune model.pt --sparsity 0.8; "
        "snnprune info model.pruned.pt",
    ])
    env.result(text, {"model": model_name, "data": env.data, "dense_accuracy": dense, "epochs": epochs,
                      "finetune_epochs": finetune_epochs, "results": results, "seconds": seconds})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _register_experiment_group() -> None:
    from .experiment.cli import experiment

    cli.add_command(experiment)


_register_experiment_group()
