"""The pruner: model + data -> statistics -> scores -> masks, one call per pruning step.

    pruner = snnprune.Pruner(model, criterion="prob")
    for epoch in range(epochs):
        train_one_epoch(model)                       # your own loop; masks stay in force
        if epoch in prune_epochs:
            pruner.step(0.2, data=calib_loader)      # remove 20% of the remaining weights
    print(pruner.report())

``amount`` is always a fraction of the weights that *remain*: after K steps of ``p`` a layer
keeps ``round(N * (1 - p)^K)`` of its N weights (the target density is tracked exactly, so rounding
never accumulates). Scope ``layer`` (default) prunes every layer by the same fraction; scope
``global`` ranks all layers' scores together (only meaningful when every layer's scores share one
scale). A layer never drops below ``min_kept`` weights.

Layers named in ``dynamic`` (module names, glob patterns or the roles ``encoding`` /
``classifier``) get dynamic masks (SF-IMP-2): scored on their dense weights, re-selected from all
weights at every step, so pruned weights can return.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import criteria
from .masks import get_masks, is_dynamic, is_masked, mask_of, prunable_layers, set_mask, weight_of
from .scoring import LayerScore, score_layers
from .stats import SpikeStats, collect_stats
from .stepping import ForwardFn
from .structure import ModelStructure, discover

ROLES = ("encoding", "hidden", "classifier")


def _matches(name: str, module: nn.Module, patterns: Iterable[Any], roles: dict[str, str]) -> bool:
    for pattern in patterns:
        if isinstance(pattern, type):
            if isinstance(module, pattern):
                return True
        elif pattern in ROLES:
            if roles.get(name) == pattern:
                return True
        elif fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(f"{name}.weight", pattern):
            return True
    return False


def keep_top(scores: Tensor, tie_break: Tensor, candidates: Tensor, keep: int) -> Tensor:
    """Bool mask selecting the ``keep`` highest ``(score, tie_break)`` entries among ``candidates``.

    Lexicographic order: equal scores (e.g. all weights of a silent input channel score 0 under
    ``prob``) are ordered by ``tie_break`` (|w|), and remaining ties by index, deterministically.
    """
    flat_s = scores.detach().double().flatten()
    flat_t = tie_break.detach().double().flatten()
    cand = candidates.flatten()
    idx = torch.nonzero(cand, as_tuple=True)[0]
    order = torch.argsort(flat_t[idx], stable=True)
    order = order[torch.argsort(flat_s[idx][order], stable=True)]
    kept = idx[order[len(idx) - keep:]] if keep > 0 else idx[:0]
    mask = torch.zeros_like(cand)
    mask[kept] = True
    return mask.view_as(candidates)


class Pruner:
    """Iterative unstructured pruning of any snnTorch model with a registered criterion.

    Args:
        model: the model to prune (a DistributedDataParallel wrapper is unwrapped).
        criterion: registered criterion name (``magnitude``, ``random``, ``prob``, ``prob-empirical``,
            your own) or a :class:`snnprune.criteria.Criterion`.
        scope: ``"layer"`` or ``"global"``.
        exclude: layers never pruned: module names / glob patterns (``"classifier"``,
            ``"blocks.*.shortcut.0"``), roles, or module types (``nn.Conv1d``).
        dynamic: layers with dynamic masks (names, patterns, roles or types).
        min_kept: fewest weights a layer keeps.
        num_steps, forward, encoder: how to run the model for statistics (see :func:`collect_stats`).
        calib_batches: batches of calibration data per step (None: all).
        seed: seed of stochastic criteria.
        criterion_options: passed to the criterion (e.g. ``magnitude_roles=()``).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: str | criteria.Criterion = "prob",
        *,
        scope: str = "layer",
        exclude: Sequence[Any] = (),
        dynamic: Sequence[Any] = (),
        min_kept: int = 1,
        num_steps: int | None = None,
        forward: ForwardFn | None = None,
        encoder: str = "direct",
        calib_batches: int | None = None,
        seed: int = 0,
        progress: bool | None = None,
        **criterion_options: Any,
    ) -> None:
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.criterion = criterion if isinstance(criterion, criteria.Criterion) else criteria.get(criterion)
        self.scope = scope
        self.exclude = tuple(exclude)
        self.dynamic = tuple(dynamic)
        self.min_kept = max(0, int(min_kept))
        self.num_steps, self.forward, self.encoder = num_steps, forward, encoder
        self.calib_batches = calib_batches
        self.seed = seed
        self.progress = progress
        self.criterion_options = criterion_options
        self.structure: ModelStructure | None = None
        self.last_scores: dict[str, LayerScore] = {}
        self.last_stats: SpikeStats | None = None
        self.steps_taken = 0
        all_layers = prunable_layers(self.model)
        self.density = {n: float(mask_of(m).sum()) / m.weight.numel() if is_masked(m) else 1.0
                        for n, m in all_layers.items()}
        if not all_layers:
            raise ValueError("the model has no prunable layer (nn.Linear, nn.Conv1d/2d/3d)")

    # ------------------------------------------------------------------ selection
    def _roles(self) -> dict[str, str]:
        return {n: i.role for n, i in self.structure.layers.items()} if self.structure else {}

    def _needs_structure(self) -> bool:
        return any(p in ROLES for p in (*self.exclude, *self.dynamic)) or self.criterion.needs_stats

    def layers(self) -> dict[str, nn.Module]:
        """The layers this pruner prunes (prunable layers minus exclusions), by module name."""
        roles = self._roles()
        return {n: m for n, m in prunable_layers(self.model).items() if not _matches(n, m, self.exclude, roles)}

    def _is_dynamic_layer(self, name: str, module: nn.Module) -> bool:
        return _matches(name, module, self.dynamic, self._roles())

    # ------------------------------------------------------------------ the step
    def step(self, amount: float, data: Iterable[Any] | None = None, *, stats: SpikeStats | None = None) -> dict[str, LayerScore]:
        """Remove ``amount`` (a fraction in [0, 1)) of the remaining weights of every pruned layer.

        ``data`` (batches ``x`` or ``(x, y)``) is needed by criteria that use spike statistics and
        for role-based ``exclude``/``dynamic``; ``stats`` may be given instead. Returns the scores.
        """
        if not 0.0 <= amount < 1.0:
            raise ValueError(f"amount must be in [0, 1), got {amount}")
        if self._needs_structure() and stats is None:
            if data is None:
                raise ValueError(f"criterion {self.criterion.name!r} (or a role-based exclude/dynamic) needs "
                                 "calibration data: pass data=... or stats=...")
            if self.criterion.needs_stats:
                stats = collect_stats(self.model, data, num_steps=self.num_steps, forward=self.forward,
                                      max_batches=self.calib_batches, encoder=self.encoder, progress=self.progress)
            elif self.structure is None:
                sample = next(iter(data))
                sample = sample[0] if isinstance(sample, (tuple, list)) else sample
                sample = sample.to(next(self.model.parameters()).device)
                self.structure = discover(self.model, sample[:2], num_steps=self.num_steps, forward=self.forward)
        if stats is not None:
            self.structure = stats.structure
        self.last_stats = stats
        layers = self.layers()
        scored = score_layers(self.model, self.criterion, stats=stats, layers=layers, seed=self.seed + self.steps_taken,
                              **self.criterion_options)
        for name in layers:
            self.density[name] *= 1.0 - amount
        new_masks = self._layer_masks(layers, scored) if self.scope == "layer" else self._global_masks(layers, scored)
        for name, module in layers.items():
            set_mask(module, new_masks[name], dynamic=self._is_dynamic_layer(name, module))
        self.last_scores = scored
        self.steps_taken += 1
        return scored

    def _candidates(self, name: str, module: nn.Module) -> Tensor:
        """Weights eligible to be kept: all of them for dynamic layers, the unpruned ones otherwise."""
        if self._is_dynamic_layer(name, module) or (is_masked(module) and is_dynamic(module)):
            return torch.ones_like(weight_of(module), dtype=torch.bool)
        return mask_of(module)

    def _target_kept(self, name: str, module: nn.Module, available: int) -> int:
        kept = int(round(module.weight.numel() * self.density[name]))
        return max(min(kept, available), min(self.min_kept, available))

    def _layer_masks(self, layers: dict[str, nn.Module], scored: dict[str, LayerScore]) -> dict[str, Tensor]:
        masks = {}
        for name, module in layers.items():
            cand = self._candidates(name, module)
            keep = self._target_kept(name, module, int(cand.sum()))
            masks[name] = keep_top(scored[name].scores, weight_of(module).abs(), cand, keep)
        return masks

    def _global_masks(self, layers: dict[str, nn.Module], scored: dict[str, LayerScore]) -> dict[str, Tensor]:
        names = list(layers)
        cands = [self._candidates(n, layers[n]) for n in names]
        sizes = [c.numel() for c in cands]
        flat_scores = torch.cat([scored[n].scores.double().flatten().cpu() for n in names])
        flat_tie = torch.cat([weight_of(layers[n]).detach().abs().double().flatten().cpu() for n in names])
        flat_cand = torch.cat([c.flatten().cpu() for c in cands])
        total = sum(layers[n].weight.numel() for n in names)
        target_density = sum(self.density[n] * layers[n].weight.numel() for n in names) / total
        keep = min(int(round(total * target_density)), int(flat_cand.sum()))
        flat = keep_top(flat_scores, flat_tie, flat_cand, keep)
        masks = {}
        for name, part, cand in zip(names, torch.split(flat, sizes), cands):
            module = layers[name]
            mask = part.view_as(cand).to(cand.device)
            floor = min(self.min_kept, int(cand.sum()))
            if int(mask.sum()) < floor:  # never empty a layer
                mask = keep_top(scored[name].scores, weight_of(module).abs(), cand, floor)
            masks[name] = mask
            self.density[name] = float(mask.sum()) / module.weight.numel()
        return masks

    # ------------------------------------------------------------------ reporting
    @property
    def masks(self) -> dict[str, Tensor]:
        """Current masks keyed by parameter name (bool, True = kept)."""
        return get_masks(self.model)

    def sparsity(self) -> float:
        """Fraction of pruned weights over the layers this pruner prunes."""
        layers = self.layers()
        total = sum(m.weight.numel() for m in layers.values())
        kept = sum(int(mask_of(m).sum()) for m in layers.values())
        return 1.0 - kept / total if total else 0.0

    def report_rows(self) -> list[dict[str, Any]]:
        """One dict per prunable layer: layer, weights, kept, sparsity, criterion, mask, note."""
        pruned = self.layers()
        rows = []
        for name, module in prunable_layers(self.model).items():
            kept = int(mask_of(module).sum())
            total = module.weight.numel()
            score = self.last_scores.get(name)
            rows.append({
                "layer": name,
                "weights": total,
                "kept": kept,
                "sparsity": 1.0 - kept / total,
                "criterion": (score.criterion if score else "-") if name in pruned else "excluded",
                "mask": ("dynamic" if is_dynamic(module) else "static") if is_masked(module) else "none",
                "note": score.note if score else "",
            })
        return rows

    def report(self) -> str:
        """Per-layer table: weights, kept, sparsity, criterion used, mask kind."""
        return format_report(self.report_rows())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Exact pruning state (target densities, step count), for resumable runs."""
        return {"density": dict(self.density), "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.density.update({k: float(v) for k, v in state["density"].items()})
        self.steps_taken = int(state["steps_taken"])


def format_report(rows: list[dict[str, Any]]) -> str:
    """Render :meth:`Pruner.report_rows` (or compatible rows) as an aligned text table."""
    header = ("layer", "weights", "kept", "sparsity", "criterion", "mask")
    body = [(r["layer"], str(r["weights"]), str(r["kept"]), f"{100 * r['sparsity']:.1f}%", r["criterion"], r["mask"])
            for r in rows]
    total = sum(r["weights"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    body.append(("total", str(total), str(kept), f"{100 * (1 - kept / max(total, 1)):.1f}%", "", ""))
    table = [header, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if 0 < i < 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)
