"""``snnprune experiment``: run a TOML grid of pruning experiments and summarise it.

    snnprune experiment run experiments/digits_imp.toml --jobs 2
    snnprune experiment report runs/digits_imp
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .config import ConfigError


@click.group("experiment")
def experiment() -> None:
    """Run grids of IMP / SF-IMP / edge-popup experiments from TOML configs and report them."""


@experiment.command("run")
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(path_type=Path))
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs in parallel (processes); each gets max(1, cores // jobs) torch threads and, "
                   "with several GPUs and device cuda, its own GPU (round-robin).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: the config's `out`, else runs/<config name>).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the config's, else CUDA if available).")
@click.option("--dry-run", is_flag=True, help="Validate the config and list the run folders only.")
def run(config_path: Path, jobs: int, out: Path | None, device: str | None, dry_run: bool) -> None:
    """Run every run of CONFIG.toml; finished runs are skipped, unfinished ones resume."""
    from . import config, runner

    try:
        exp = config.load(config_path)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    folder = out or Path(exp.out or Path("runs") / exp.name)
    if dry_run:
        for spec in exp.runs:
            click.echo(folder / spec.name)
        click.echo(f"{len(exp.runs)} runs", err=True)
        return
    statuses = runner.run_experiment(exp, folder, jobs=jobs, device=device,
                                     echo=lambda msg: click.echo(msg, err=True))
    click.echo(folder / "report.md")
    failed = [s for s in statuses if s["status"] == "failed"]
    if failed:
        click.echo(f"{len(failed)} of {len(statuses)} runs failed (see error.log in their folders)", err=True)
        sys.exit(1)


@experiment.command("report")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--no-plots", is_flag=True, help="Skip the PNG/SVG figures.")
def report(folder: Path, no_plots: bool) -> None:
    """Write DIR/report.md, DIR/summary.csv and the figures from the run folders in DIR."""
    from .report import write_report

    click.echo(write_report(folder, plots=not no_plots))
