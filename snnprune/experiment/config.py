"""Experiment configuration: a TOML grid of lottery-ticket (IMP) runs and edge-popup sweeps.

A config file (read with :mod:`tomllib`)::

    name = "digits_imp"                       # optional; default: the file's stem
    out = "runs/digits_imp"                   # optional output folder (``--out`` overrides)
    datasets = ["digits"]
    models = ["mlp"]
    methods = ["IMP", "SF-IMP-1", "SF-IMP-2", "random"]   # or a table, see below
    seeds = [0, 1, 2]

    [model_args.mlp]                          # keyword arguments of snnprune.models.build
    hidden = [64]

    [data]                                    # optional
    split_seed = 0                            # root, download, num_workers also accepted

    [imp]                                     # lottery hyper-parameters (Algorithm 1)
    rate = 0.5                                # p: fraction of the remaining weights pruned per round
    rounds = 4                                # K
    epochs = 10                               # E: dense training
    rewind_epoch = 1                          # R (0: rewind to the initialisation)
    epochs_per_round = 5                      # N
    scope = "layer"                           # layer | global
    calib_batches = 4                         # batches of statistics per pruning step

    [train]                                   # training / evaluation hyper-parameters
    optimizer = "adam"                        # adam | adamw | sgd
    lr = 5e-3
    schedule = "cosine"
    num_steps = 8                             # T
    batch_size = 64
    eval_batches = 4                          # test batches for firing rate and SynOps

    [methods.SF-IMP-2]                        # per-method overrides (any [imp] / [train] key)
    rate = 0.4

``methods`` is either a list of names or a table ``name -> overrides`` (``IMP = {}`` for none);
TOML does not allow both forms in one file.

An optional ``[popup]`` table adds edge-popup sweeps over ``keep`` (the fraction of weights KEPT,
the paper's k) on untrained networks, plus a dense trained reference per dataset x model x seed::

    [popup]
    keep = [0.1, 0.3, 0.5, 0.7, 0.9]
    epochs = 10                               # score-training epochs
    optimizer = "sgd"                         # any [train] key overrides the [train] table
    lr = 0.1
    dense_epochs = 10                         # training of the dense reference ([train] settings)

Every run resolves to a flat dictionary of hyper-parameters (:attr:`RunSpec.config`); its folder
name ``<dataset>-<model>-<method>-seed<k>-<hash>`` ends with a short hash of that dictionary, so
identical configurations always land in the same folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "ConfigError",
    "Experiment",
    "IMP_DEFAULTS",
    "POPUP_DEFAULTS",
    "RunSpec",
    "TRAIN_DEFAULTS",
    "known_methods",
    "load",
    "parse",
]


class ConfigError(ValueError):
    """An invalid experiment config; the message names the file and the offending field."""


IMP_DEFAULTS: dict[str, Any] = {
    "rate": 0.25,
    "rounds": 5,
    "epochs": 15,
    "rewind_epoch": 1,
    "epochs_per_round": 10,
    "scope": "layer",
    "calib_batches": 8,
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 5e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "loss": "mean",
    "grad_clip": None,
    "amp": False,
    "encoder": "direct",
    "num_steps": 8,
    "batch_size": 64,
    "eval_batches": 4,
}

POPUP_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "dense_epochs": 10,
    "train_bn": True,
}

DATA_DEFAULTS: dict[str, Any] = {"split_seed": 0, "root": None, "download": False, "num_workers": 0}

TOP_KEYS = {"name", "out", "datasets", "models", "methods", "seeds", "model_args", "data", "imp",
            "train", "popup", "device"}

_CHOICES = {
    "scope": ("layer", "global"),
    "optimizer": ("adam", "adamw", "sgd"),
    "schedule": ("cosine", "constant"),
    "loss": ("mean", "count"),
    "encoder": ("direct", "rate"),
}


def known_methods() -> list[str]:
    """Named methods (IMP, SF-IMP-1, SF-IMP-2, random) followed by every registered criterion."""
    from .. import criteria
    from ..lottery import METHODS

    names = list(METHODS)
    names += [c for c in criteria.available() if c not in names]
    return names


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid.

    Attributes:
        kind: ``imp`` (lottery run), ``popup`` (edge-popup at one ``keep``) or ``dense`` (the
            trained dense reference of a popup sweep).
        config: the resolved hyper-parameters (JSON-able); its hash names the run folder.
    """

    kind: str
    dataset: str
    model: str
    method: str
    seed: int
    config: dict[str, Any] = field(hash=False, compare=False)

    @property
    def digest(self) -> str:
        text = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model}-{self.method}-seed{self.seed}-{self.digest}"


@dataclass
class Experiment:
    """A parsed config: its runs in grid order."""

    name: str
    source: str
    runs: list[RunSpec]
    out: str | None = None
    device: str | None = None
    data_io: dict[str, Any] = field(default_factory=dict)  # root, download, num_workers (not hashed)

    @property
    def imp_runs(self) -> list[RunSpec]:
        return [r for r in self.runs if r.kind == "imp"]

    @property
    def popup_runs(self) -> list[RunSpec]:
        return [r for r in self.runs if r.kind != "imp"]


# ------------------------------------------------------------------------------------------ parsing


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where} {problem}")

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, got {type(value).__name__} {value!r}")
        return value

    def keys(self, table: dict[str, Any], allowed: set[str] | dict[str, Any], where: str,
             hint: dict[str, str] | None = None) -> None:
        for key in table:
            if key not in allowed:
                extra = f"; it belongs in [{hint[key]}]" if hint and key in hint else ""
                path = f"{where}.{key}" if where else key
                raise self.fail(path, f"is not a known key{extra} (known: {', '.join(sorted(allowed))})")

    def names(self, raw: dict[str, Any], key: str, known: list[str] | None, *, required: bool = True,
              kind: type = str) -> list[Any]:
        if key not in raw:
            if required:
                raise self.fail(key, "is missing (required)")
            return []
        value = raw[key]
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"must be a non-empty list, got {value!r}")
        for i, item in enumerate(value):
            if not isinstance(item, kind) or isinstance(item, bool):
                raise self.fail(f"{key}[{i}]", f"= {item!r} must be a {kind.__name__}")
            if known is not None and item not in known:
                raise self.fail(f"{key}[{i}]", f"= {item!r} is not a known {key[:-1]} ({', '.join(known)})")
        if len(set(value)) != len(value):
            raise self.fail(key, f"= {value!r} has duplicates")
        return value


def _number(c: _Checker, where: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise c.fail(where, f"= {value!r} must be {'an integer' if integer else 'a number'}")
    if not integer and not math.isfinite(value):
        raise c.fail(where, f"= {value!r} must be finite")
    return value


def _check_values(c: _Checker, params: dict[str, Any], where: dict[str, str]) -> None:
    """Validate resolved hyper-parameters; ``where[key]`` says where each value came from."""

    def at(key: str) -> str:
        return where.get(key, key)

    for key in ("rounds", "epochs", "rewind_epoch", "epochs_per_round", "num_steps", "batch_size",
                "eval_batches", "dense_epochs"):
        if key in params:
            _number(c, at(key), params[key], integer=True)
    for key in ("rounds", "rewind_epoch"):
        if key in params and params[key] < 0:
            raise c.fail(at(key), f"= {params[key]} must be >= 0")
    for key in ("epochs", "epochs_per_round", "num_steps", "batch_size", "eval_batches", "dense_epochs"):
        if key in params and params[key] < 1:
            raise c.fail(at(key), f"= {params[key]} must be >= 1")
    if "rate" in params:
        _number(c, at("rate"), params["rate"])
        if not 0.0 < params["rate"] < 1.0:
            raise c.fail(at("rate"), f"= {params['rate']} must be in (0, 1)")
    if "rewind_epoch" in params and "epochs" in params and params["rewind_epoch"] > params["epochs"]:
        raise c.fail(at("rewind_epoch"), f"= {params['rewind_epoch']} must be <= epochs = {params['epochs']}")
    if params.get("calib_batches") is not None:
        _number(c, at("calib_batches"), params["calib_batches"], integer=True)
        if params["calib_batches"] < 1:
            raise c.fail(at("calib_batches"), f"= {params['calib_batches']} must be >= 1")
    for key in ("lr", "momentum", "weight_decay"):
        if key in params:
            _number(c, at(key), params[key])
            if params[key] < 0 or (key == "lr" and params[key] == 0):
                raise c.fail(at(key), f"= {params[key]} must be {'> 0' if key == 'lr' else '>= 0'}")
    if params.get("grad_clip") is not None:
        _number(c, at("grad_clip"), params["grad_clip"])
    for key in ("amp", "train_bn"):
        if key in params and not isinstance(params[key], bool):
            raise c.fail(at(key), f"= {params[key]!r} must be true or false")
    for key, choices in _CHOICES.items():
        if key in params and params[key] not in choices:
            raise c.fail(at(key), f"= {params[key]!r} is not one of {', '.join(choices)}")


def _model_args(c: _Checker, raw: Any, models: list[str]) -> dict[str, dict[str, Any]]:
    from .. import models as zoo

    table = c.table(raw, "model_args") if raw is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for name, kwargs in table.items():
        if name not in models:
            raise c.fail(f"model_args.{name}", f"names a model not in models ({', '.join(models)})")
        kwargs = c.table(kwargs, f"model_args.{name}")
        factory = zoo._ZOO[name]
        params = set(inspect.signature(factory).parameters) - {"self", "input_shape", "num_classes", "num_steps"}
        for key in kwargs:
            if key in ("num_steps",):
                raise c.fail(f"model_args.{name}.{key}", "belongs in [train] (num_steps = T)")
            if key not in params:
                raise c.fail(f"model_args.{name}.{key}",
                             f"is not a parameter of model {name!r} (known: {', '.join(sorted(params))})")
        out[name] = dict(kwargs)
    return out


def parse(raw: dict[str, Any], source: str = "<config>") -> Experiment:
    """Validate a config dictionary (as read from TOML) and expand its grid of runs.

    Raises:
        ConfigError: naming ``source`` and the offending field.
    """
    from .. import data as data_mod
    from .. import models as zoo

    c = _Checker(source)
    c.keys(raw, TOP_KEYS, "")
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise c.fail("name", f"= {name!r} must be a non-empty string")
    datasets = c.names(raw, "datasets", list(data_mod.DATASETS))
    models = c.names(raw, "models", zoo.available())
    seeds = c.names(raw, "seeds", None, kind=int)
    for i, s in enumerate(seeds):
        if s < 0:
            raise c.fail(f"seeds[{i}]", f"= {s} must be >= 0")
    model_args = _model_args(c, raw.get("model_args"), models)

    data_cfg = dict(DATA_DEFAULTS)
    if "data" in raw:
        table = c.table(raw["data"], "data")
        c.keys(table, DATA_DEFAULTS, "data")
        data_cfg.update(table)
    _number(c, "data.split_seed", data_cfg["split_seed"], integer=True)

    hint = {**{k: "imp" for k in IMP_DEFAULTS}, **{k: "train" for k in TRAIN_DEFAULTS}}
    imp = dict(IMP_DEFAULTS)
    train = dict(TRAIN_DEFAULTS)
    where: dict[str, str] = {}
    for table_name, target, defaults in (("imp", imp, IMP_DEFAULTS), ("train", train, TRAIN_DEFAULTS)):
        if table_name in raw:
            table = c.table(raw[table_name], table_name)
            c.keys(table, defaults, table_name, hint)
            target.update(table)
            where.update({k: f"{table_name}.{k}" for k in table})

    # methods: a list of names, or a table name -> overrides
    has_methods = "methods" in raw
    has_popup = "popup" in raw
    if not has_methods and not has_popup:
        raise c.fail("methods", "is missing (required unless a [popup] table is given)")
    methods: list[str] = []
    overrides: dict[str, dict[str, Any]] = {}
    known = known_methods()
    if has_methods:
        value = raw["methods"]
        if isinstance(value, dict):
            for m, table in value.items():
                if m not in known:
                    raise c.fail(f"methods.{m}", f"is not a known method ({', '.join(known)})")
                table = c.table(table, f"methods.{m}")
                c.keys(table, {**IMP_DEFAULTS, **TRAIN_DEFAULTS}, f"methods.{m}")
                methods.append(m)
                overrides[m] = dict(table)
            if not methods:
                raise c.fail("methods", "is empty")
        else:
            methods = c.names(raw, "methods", known)

    runs: list[RunSpec] = []
    shared = {"data": {k: v for k, v in data_cfg.items() if k not in ("root", "download", "num_workers")}}
    for m in methods:
        params = {**imp, **train, **overrides.get(m, {})}
        w = {**where, **{k: f"methods.{m}.{k}" for k in overrides.get(m, {})}}
        _check_values(c, params, w)
        for dataset in datasets:
            for model in models:
                for seed in seeds:
                    cfg = {"kind": "imp", "dataset": dataset, "model": model, "method": m, "seed": seed,
                           "model_args": model_args.get(model, {}), **shared, "imp": {k: params[k] for k in IMP_DEFAULTS},
                           "train": {k: params[k] for k in TRAIN_DEFAULTS}}
                    runs.append(RunSpec("imp", dataset, model, m, seed, cfg))

    if has_popup:
        table = c.table(raw["popup"], "popup")
        allowed = {"keep", *POPUP_DEFAULTS, *TRAIN_DEFAULTS}
        c.keys(table, allowed, "popup")
        if "keep" not in table:
            raise c.fail("popup.keep", "is missing (required: the fractions of weights kept)")
        keeps = table["keep"]
        if isinstance(keeps, (int, float)) and not isinstance(keeps, bool):
            keeps = [keeps]
        if not isinstance(keeps, list) or not keeps:
            raise c.fail("popup.keep", f"= {keeps!r} must be a non-empty list")
        for i, k in enumerate(keeps):
            _number(c, f"popup.keep[{i}]", k)
            if not 0.0 < k <= 1.0:
                raise c.fail(f"popup.keep[{i}]", f"= {k} must be in (0, 1] (fraction of weights kept)")
        popup = {**POPUP_DEFAULTS, **{k: v for k, v in table.items() if k in POPUP_DEFAULTS}}
        popup_train = {**train, **{k: v for k, v in table.items() if k in TRAIN_DEFAULTS}}
        pw = {**where, **{k: f"popup.{k}" for k in table}}
        _check_values(c, {**popup, **popup_train}, pw)
        for dataset in datasets:
            for model in models:
                for seed in seeds:
                    base = {"dataset": dataset, "model": model, "seed": seed,
                            "model_args": model_args.get(model, {}), **shared}
                    dense = {"kind": "dense", **base, "method": "dense", "epochs": popup["dense_epochs"],
                             "train": dict(train)}
                    runs.append(RunSpec("dense", dataset, model, "dense", seed, dense))
                    for k in keeps:
                        method = f"popup-k{float(k):g}"
                        cfg = {"kind": "popup", **base, "method": method, "keep": float(k),
                               "epochs": popup["epochs"], "train_bn": popup["train_bn"], "train": popup_train}
                        runs.append(RunSpec("popup", dataset, model, method, seed, cfg))

    out = raw.get("out")
    if out is not None and not isinstance(out, str):
        raise c.fail("out", f"= {out!r} must be a string (a folder)")
    device = raw.get("device")
    if device is not None and not isinstance(device, str):
        raise c.fail("device", f"= {device!r} must be a string")
    return Experiment(name=name, source=source, runs=runs, out=out, device=device,
                      data_io={k: data_cfg[k] for k in ("root", "download", "num_workers")})


def load(path: str | Path) -> Experiment:
    """Read and validate a TOML experiment config (see the module docstring)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse(raw, str(path))
