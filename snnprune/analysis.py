"""Measurement helpers for the notebooks: recording spikes and membrane potentials of a zoo model,
spike flips under bounded input perturbations (METHOD.md section 2), density of u near the
threshold, and the ground truth of single-weight pruning that the criteria try to predict
(section 5).

Conventions: records are ``[T, B, N]`` tensors; a neuron module's "input current" is the first
positional argument of its forward call (for the zoo models: the BatchNorm output), and its
returned ``mem`` is the pre-threshold potential u[t] (see :func:`snnprune.models.make_lif`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as scipy_stats
from torch import Tensor, nn

from .stepping import run, spiking_neurons


@dataclass
class Recording:
    """Output record ``[T, B, C]`` and, per spiking neuron module, spikes and u ``[T, B, N]``."""

    output: Tensor
    spikes: dict[str, Tensor]
    mem: dict[str, Tensor]


@torch.no_grad()
def record(model: nn.Module, x: Tensor, perturb: dict[str, Tensor | float] | None = None) -> Recording:
    """Run ``model`` (eval mode) on ``x`` and record every spiking neuron's spikes and potentials.

    ``perturb`` maps neuron module names to a perturbation added to that neuron's input current at
    every step (a float, or a tensor broadcastable to the current, e.g. ``[N]``). It moves the
    neuron's input by exactly ``|perturb|``, which is the hypothesis of Lemmas 3.3-3.4 with
    ``eps = max |perturb|``.
    """
    was_training = model.training
    model.eval()
    neurons = dict(spiking_neurons(model))
    spikes: dict[str, list[Tensor]] = {n: [] for n in neurons}
    mem: dict[str, list[Tensor]] = {n: [] for n in neurons}
    handles = []
    for name, neuron in neurons.items():
        def post(module: nn.Module, args: tuple, out: object, name: str = name) -> None:
            spk, u = out if isinstance(out, tuple) else (out, module.mem)
            spikes[name].append(spk.detach().flatten(1))
            mem[name].append(u.detach().flatten(1))

        handles.append(neuron.register_forward_hook(post))
        if perturb and name in perturb:
            delta = perturb[name]

            def pre(module: nn.Module, args: tuple, delta: Tensor | float = delta) -> tuple:
                return (args[0] + delta, *args[1:])

            handles.append(neuron.register_forward_pre_hook(pre))
    try:
        out = run(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Recording(out, {n: torch.stack(v) for n, v in spikes.items() if v},
                     {n: torch.stack(v) for n, v in mem.items() if v})


@dataclass
class FlipStats:
    """Spike flips between a reference and a perturbed record ``[T, B, N]``.

    ``neuron_rate[t]``: fraction of (sample, neuron) pairs that flip at step t among those whose
    spikes agreed at every earlier step (the condition of Lemma 3.4; at t = 0 unconditional,
    Lemma 3.3). ``neuron_count[t]``: how many pairs that fraction is over.
    ``per_neuron_first[n]``: flip frequency of neuron n at the first step.
    ``per_neuron_rate[t, n]``: as ``neuron_rate`` but per neuron (NaN where no pair agreed).
    ``layer_rate[t]``: fraction of samples in which any neuron of the layer flips at step t, among
    samples whose whole layer agreed before t (Thm 3.5); ``layer_count[t]`` the number of samples.
    """

    neuron_rate: np.ndarray
    neuron_count: np.ndarray
    per_neuron_first: np.ndarray
    per_neuron_rate: np.ndarray
    layer_rate: np.ndarray
    layer_count: np.ndarray


def flip_statistics(reference: Tensor, perturbed: Tensor | Sequence[Tensor]) -> FlipStats:
    """Flip frequencies of :class:`FlipStats`. ``perturbed`` may be a list of records (e.g. the
    runs with ``+eps`` and ``-eps``): a pair then counts as flipped when it flips in any of them,
    and as agreeing only when it agrees in all of them."""
    runs = [perturbed] if isinstance(perturbed, Tensor) else list(perturbed)
    flips = torch.zeros_like(reference, dtype=torch.bool)
    for p in runs:
        flips |= reference.bool() != p.bool()
    flips_np = flips.cpu().numpy()  # [T, B, N]
    steps = flips_np.shape[0]
    earlier = np.zeros_like(flips_np[0])  # any flip before t, per (b, n)
    neuron_rate = np.zeros(steps)
    neuron_count = np.zeros(steps, dtype=int)
    per_neuron = np.full((steps, flips_np.shape[2]), np.nan)
    layer_rate = np.zeros(steps)
    layer_count = np.zeros(steps, dtype=int)
    for t in range(steps):
        agreed = ~earlier
        neuron_count[t] = agreed.sum()
        neuron_rate[t] = flips_np[t][agreed].mean() if neuron_count[t] else np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            per_neuron[t] = (flips_np[t] & agreed).sum(0) / agreed.sum(0)
        layer_agreed = agreed.all(1)
        layer_count[t] = layer_agreed.sum()
        layer_rate[t] = flips_np[t].any(1)[layer_agreed].mean() if layer_count[t] else np.nan
        earlier |= flips_np[t]
    return FlipStats(neuron_rate, neuron_count, flips_np[0].mean(0), per_neuron, layer_rate, layer_count)


def density_near_threshold(
    u: Tensor | np.ndarray, threshold: float, halfwidth: float, bins: int = 40, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram density of ``u`` on ``[threshold - halfwidth, threshold + halfwidth)``.

    Densities are counts / (all samples x bin width), so they integrate to the probability mass in
    the window. ``axis=None`` pools every element; an integer ``axis`` keeps that axis (e.g. the
    neuron axis of ``[T, B, N]`` gives one histogram per neuron). Returns ``(bin_edges, density)``
    with density ``[bins]`` or ``[n, bins]``.
    """
    arr = u.detach().cpu().numpy() if isinstance(u, Tensor) else np.asarray(u)
    edges = np.linspace(threshold - halfwidth, threshold + halfwidth, bins + 1)
    width = edges[1] - edges[0]
    if axis is None:
        counts, _ = np.histogram(arr.ravel(), edges)
        return edges, counts / (arr.size * width)
    arr = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
    idx = np.floor((arr - edges[0]) / width).astype(np.int64)
    inside = (idx >= 0) & (idx < bins)
    dens = np.zeros((arr.shape[0], bins))
    for n in range(arr.shape[0]):
        dens[n] = np.bincount(idx[n][inside[n]], minlength=bins)[:bins]
    return edges, dens / (arr.shape[1] * width)


def p_sup_estimate(
    u: Tensor | np.ndarray, threshold: float, halfwidth: float, bins: int = 40, per_step: bool = True
) -> float:
    """Estimate of p_sup (Def. 3.1): the largest histogram density of u ``[T, B, N]`` in the window
    ``threshold ± halfwidth``, pooled over samples and neurons, and with ``per_step`` the maximum over
    the per-step histograms (the lemmas bound the density of u[t] at each step)."""
    if not per_step:
        return float(density_near_threshold(u, threshold, halfwidth, bins)[1].max())
    return max(float(density_near_threshold(u[t], threshold, halfwidth, bins)[1].max()) for t in range(len(u)))


# ------------------------------------------------------------------- ground truth of pruning


@dataclass
class AblationResult:
    """Effect of zeroing single weights ``indices [n, 2]`` (rows ``(j, i)``) of one layer.

    ``layer_flips[n]``: spikes of the layer's neuron module that changed (over batch x steps x
    neurons); ``output_flips[n]``: same for the output record (spikes for a spiking output, else
    0); ``output_change[n]``: mean |change| of the output record; ``prediction_changes[n]``:
    samples whose predicted class changed.
    """

    indices: np.ndarray
    layer_flips: np.ndarray
    output_flips: np.ndarray
    output_change: np.ndarray
    prediction_changes: np.ndarray


@torch.no_grad()
def single_weight_ablation(
    model: nn.Module, layer: str, neuron: str, indices: np.ndarray, x: Tensor
) -> AblationResult:
    """Prune (zero) each weight ``indices[k] = (j, i)`` of module ``layer`` alone, run ``x`` and
    compare with the unpruned run: the ground truth a pruning criterion tries to predict.

    The weight is restored after each run; ``model`` ends unchanged. ``layer`` must hold a plain
    ``weight`` (no snnprune mask).
    """
    module = dict(model.named_modules())[layer]
    weight = module.weight
    ref = record(model, x)
    ref_pred = ref.output.sum(0).argmax(-1)
    spiking_out = bool(((ref.output == 0) | (ref.output == 1)).all())
    n = len(indices)
    layer_flips, out_flips = np.zeros(n), np.zeros(n)
    out_change, pred_changes = np.zeros(n), np.zeros(n)
    for k, (j, i) in enumerate(np.asarray(indices)):
        old = weight[j, i].item()
        weight[j, i] = 0.0
        try:
            rec = record(model, x)
        finally:
            weight[j, i] = old
        layer_flips[k] = (rec.spikes[neuron] != ref.spikes[neuron]).sum().item()
        out_flips[k] = (rec.output != ref.output).sum().item() if spiking_out else 0.0
        out_change[k] = (rec.output - ref.output).abs().mean().item()
        pred_changes[k] = (rec.output.sum(0).argmax(-1) != ref_pred).sum().item()
    return AblationResult(np.asarray(indices), layer_flips, out_flips, out_change, pred_changes)


def spearman(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> tuple[float, float]:
    """Spearman rank correlation ``(rho, p-value)`` of two 1-D arrays (ties get average ranks)."""
    a = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, Tensor) else np.asarray(b)
    res = scipy_stats.spearmanr(a.ravel(), b.ravel())
    return float(res.statistic), float(res.pvalue)
