"""Streaming spike statistics of a model on data: the inputs every pruning criterion reads.

For every prunable layer, over samples, time steps and spatial positions:

* the mean input of each input channel i (for spiking inputs: the firing rate of channel i,
  E_act of METHOD.md Eq. 13 is ``|w_ij| * rate_i``);
* for the spiking neuron the layer feeds (see :mod:`snnprune.structure`), per output channel j:
  count, mean mu_j and variance var_j of the membrane potential u (the pre-threshold value,
  METHOD.md section 1), and a histogram of u in a window around the threshold u_th;
* spike counts of every neuron (firing rates, SynOps): the sums of its spike tensor, or, once
  a step has shown that its spikes are exactly ``u > u_th`` (ungraded snnTorch neurons), counted
  from u in the same pass.

Everything is a sufficient statistic of fixed size: memory does not grow with the number of
batches. Two :class:`SpikeStats` merge exactly (sums add; moments by Chan et al.'s parallel
formula), and :meth:`SpikeStats.all_reduce` makes every ``torch.distributed`` rank hold the
statistics of all ranks' data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import estimators
from .masks import prunable_layers
from .stepping import ForwardFn, run, spiking_neurons
from .structure import ModelStructure, discover_cached
from .train import encode
from .utils import progress_bar


@dataclass
class InputStats:
    """Input activations of one prunable layer. ``sums``: float64 ``[C_in]``; ``count``: elements
    per channel (samples x steps x positions)."""

    sums: Tensor
    count: float = 0.0

    @property
    def rate(self) -> Tensor:
        """Mean input per channel ``[C_in]`` (firing rate in spikes per step for spiking inputs)."""
        return self.sums / self.count if self.count > 0 else torch.zeros_like(self.sums)


@dataclass
class MembraneStats:
    """Membrane potential u of one spiking neuron module, per channel j (all float64).

    ``count, mean, m2 [C]`` (m2 = sum of squared deviations), ``hist [C, bins]`` counts of u in
    bins ``[lo + k*width, lo + (k+1)*width)``, ``lo, width, threshold [C]``, ``spikes [C]`` spike
    counts and ``elements``: neuron-steps per channel seen (samples x steps x positions).
    """

    count: Tensor
    mean: Tensor
    m2: Tensor
    hist: Tensor
    lo: Tensor
    width: Tensor
    threshold: Tensor
    spikes: Tensor
    elements: float = 0.0

    @property
    def var(self) -> Tensor:
        """Population variance of u per channel ``[C]`` (0 where no sample)."""
        return torch.where(self.count > 0, self.m2 / self.count.clamp_min(1), torch.zeros_like(self.m2))

    @property
    def firing_rate(self) -> Tensor:
        """Spikes per neuron per step, per channel ``[C]``."""
        return self.spikes / self.elements if self.elements > 0 else torch.zeros_like(self.spikes)


def _merge_membrane(a: MembraneStats, b: MembraneStats) -> MembraneStats:
    if not (torch.equal(a.lo, b.lo) and torch.equal(a.width, b.width)):
        raise ValueError("cannot merge membrane statistics with different histogram windows")
    n = a.count + b.count
    delta = b.mean - a.mean
    safe_n = n.clamp_min(1)
    mean = torch.where(n > 0, a.mean + delta * b.count / safe_n, a.mean)
    m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / safe_n  # Chan et al. (1979)
    return MembraneStats(n, mean, m2, a.hist + b.hist, a.lo, a.width, a.threshold,
                         a.spikes + b.spikes, a.elements + b.elements)


@dataclass
class SpikeStats:
    """Statistics of a model on data. ``inputs`` by layer name, ``membrane`` by neuron name."""

    structure: ModelStructure
    inputs: dict[str, InputStats] = field(default_factory=dict)
    membrane: dict[str, MembraneStats] = field(default_factory=dict)
    samples: int = 0

    def input_rate(self, layer: str) -> Tensor:
        """Mean input per input channel of ``layer``, float64 ``[C_in]``."""
        return self.inputs[layer].rate

    def neuron_of(self, layer: str) -> MembraneStats | None:
        """Membrane statistics of the neuron ``layer`` feeds, or None."""
        neuron = self.structure.layers[layer].neuron
        return self.membrane.get(neuron) if neuron is not None else None

    def merge(self, other: SpikeStats) -> SpikeStats:
        """Statistics of the union of both data sets (exact; neither operand changes)."""
        if set(self.inputs) != set(other.inputs) or set(self.membrane) != set(other.membrane):
            raise ValueError("cannot merge statistics of different models")
        inputs = {k: InputStats(v.sums + other.inputs[k].sums, v.count + other.inputs[k].count)
                  for k, v in self.inputs.items()}
        membrane = {k: _merge_membrane(v, other.membrane[k]) for k, v in self.membrane.items()}
        return SpikeStats(self.structure, inputs, membrane, self.samples + other.samples)

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> SpikeStats:
        """In place: every rank of ``torch.distributed`` ends with the statistics of all ranks."""
        import torch.distributed as dist

        def reduce(t: Tensor) -> Tensor:
            dist.all_reduce(t, group=group)
            return t

        flat: list[Tensor] = []
        for s in self.inputs.values():
            flat += [s.sums, torch.tensor([s.count], dtype=torch.float64)]
        for m in self.membrane.values():
            flat += [m.count, m.count * m.mean, m.hist.flatten(), m.spikes,
                     torch.tensor([m.elements], dtype=torch.float64)]
        flat.append(torch.tensor([float(self.samples)], dtype=torch.float64))
        sizes = [t.numel() for t in flat]
        device = _collective_device(group)
        total = reduce(torch.cat([t.reshape(-1) for t in flat]).to(device)).cpu()
        parts = list(torch.split(total, sizes))
        for s in self.inputs.values():
            s.sums, s.count = parts.pop(0), float(parts.pop(0))
        means = {}
        for name, m in self.membrane.items():
            count, weighted, hist, spikes, elements = (parts.pop(0) for _ in range(5))
            new_mean = torch.where(count > 0, weighted / count.clamp_min(1), m.mean)
            means[name] = (count, new_mean, hist.view_as(m.hist), spikes, float(elements))
        self.samples = int(parts.pop(0))
        # second round: M2_total = sum_k M2_k + n_k (mean_k - mean)^2, exact for any split
        local = [m.m2 + m.count * (m.mean - means[n][1]) ** 2 for n, m in self.membrane.items()]
        if local:
            m2_total = reduce(torch.cat(local).to(device)).cpu()
            m2_parts = list(torch.split(m2_total, [t.numel() for t in local]))
        for i, (name, m) in enumerate(self.membrane.items()):
            m.count, m.mean, m.hist, m.spikes, m.elements = means[name]
            m.m2 = m2_parts[i]
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (storable in a weights-only checkpoint)."""
        return {
            "samples": self.samples,
            "inputs": {k: {"sums": v.sums, "count": v.count} for k, v in self.inputs.items()},
            "membrane": {k: {f: getattr(v, f) for f in MembraneStats.__dataclass_fields__}
                         for k, v in self.membrane.items()},
        }


def _collective_device(group: Any) -> torch.device:
    import torch.distributed as dist

    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def per_channel_threshold(neuron: nn.Module, channels: int) -> Tensor:
    """The neuron's threshold as float64 ``[channels]`` (a scalar is broadcast; a per-neuron tensor
    ``[C, ...]`` is averaged over its non-channel axes)."""
    th = torch.as_tensor(neuron.threshold).detach().double().cpu()
    if th.numel() == 1:
        return th.reshape(1).expand(channels).clone()
    if th.shape[0] == channels:
        return th.reshape(channels, -1).mean(1)
    raise ValueError(f"cannot map threshold of shape {tuple(th.shape)} onto {channels} channels")


class _Collector:
    """Forward hooks that feed :mod:`snnprune.estimators` during collection."""

    def __init__(self, model: nn.Module, structure: ModelStructure, hist_bins: int,
                 hist_halfwidth: float | None, backend: str) -> None:
        self.layers = prunable_layers(model)
        self.neurons = dict(spiking_neurons(model))
        self.structure = structure
        self.hist_bins = hist_bins
        self.hist_halfwidth = hist_halfwidth
        self.backend = backend
        self.inputs: dict[str, InputStats] = {}
        self.sums: dict[str, dict[str, Any]] = {}  # neuron -> running shifted sums
        self.handles: list[Any] = []

    def __enter__(self) -> _Collector:
        for name, layer in self.layers.items():
            self.handles.append(layer.register_forward_pre_hook(self._input_hook(name, layer)))
        for name, neuron in self.neurons.items():
            self.handles.append(neuron.register_forward_hook(self._neuron_hook(name, neuron)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def _input_hook(self, name: str, layer: nn.Module):
        channel_dim = -1 if isinstance(layer, nn.Linear) else 1

        def hook(module: nn.Module, args: tuple) -> None:
            x = estimators.as_bcs(args[0], channel_dim)
            sums = estimators.channel_sums(x, backend=self.backend).cpu()
            acc = self.inputs.get(name)
            if acc is None:
                self.inputs[name] = InputStats(sums, float(x.shape[0] * x.shape[2]))
            else:
                acc.sums += sums
                acc.count += x.shape[0] * x.shape[2]

        return hook

    def _neuron_hook(self, name: str, neuron: nn.Module):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            u = getattr(module, "mem", None)
            if not isinstance(u, torch.Tensor) or u.numel() == 0:
                return
            spikes = output[0] if isinstance(output, tuple) else output
            u = estimators.as_bcs(u, 1)
            acc = self.sums.get(name)
            if acc is None:
                channels = u.shape[1]
                th = per_channel_threshold(module, channels)
                half = self.hist_halfwidth if self.hist_halfwidth is not None else th.abs().clamp_min(1e-3)
                half = torch.as_tensor(half, dtype=torch.float64).expand(channels)
                acc = self.sums[name] = {
                    "threshold": th, "lo": th - half, "width": 2 * half / self.hist_bins,
                    "count": torch.zeros(channels, dtype=torch.float64), "s1": torch.zeros(channels, dtype=torch.float64),
                    "s2": torch.zeros(channels, dtype=torch.float64),
                    "hist": torch.zeros(channels, self.hist_bins, dtype=torch.float64),
                    "spikes": torch.zeros(channels, dtype=torch.float64), "elements": 0.0,
                    "fires_above_threshold": None,  # None: not yet established (see below)
                }
            fires = isinstance(spikes, torch.Tensor) and spikes.shape == module.mem.shape
            spikes = estimators.as_bcs(spikes, 1) if fires else None
            count_above = fires and acc["fires_above_threshold"] is True
            batch = estimators.membrane_moments(u, acc["threshold"], acc["lo"], acc["width"], self.hist_bins,
                                                spikes=None if count_above else spikes, count_above=count_above,
                                                backend=self.backend)  # spikes counted in the same pass
            if fires and acc["fires_above_threshold"] is None and bool(batch.spikes.any()):
                # A neuron whose spikes are exactly 1 where u > u_th and 0 elsewhere (every snnTorch
                # neuron with a scalar or per-channel threshold and ungraded spikes) has its later
                # spikes counted from u in the moments pass, which saves reading the spike tensor.
                # Checked once, on the first step with any spike; a mismatch keeps reading spikes.
                th = acc["threshold"].to(u.device)[:, None]
                acc["fires_above_threshold"] = torch.equal(spikes, (u > th).to(spikes.dtype))
            acc["count"] += batch.count.cpu()
            acc["s1"] += batch.s1.cpu()
            acc["s2"] += batch.s2.cpu()
            acc["hist"] += batch.hist.cpu()
            if batch.spikes is not None:
                acc["spikes"] += batch.spikes.cpu()
            acc["elements"] += u.shape[0] * u.shape[2]

        return hook

    def result(self, samples: int) -> SpikeStats:
        membrane = {}
        for name, acc in self.sums.items():
            n = acc["count"]
            safe = n.clamp_min(1)
            mean = acc["threshold"] + acc["s1"] / safe
            m2 = (acc["s2"] - acc["s1"] ** 2 / safe).clamp_min(0)
            membrane[name] = MembraneStats(n, mean, m2, acc["hist"], acc["lo"], acc["width"], acc["threshold"],
                                           acc["spikes"], acc["elements"])
        return SpikeStats(self.structure, self.inputs, membrane, samples)


def _batches(data: Iterable[Any]) -> Iterable[Tensor]:
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    data: Iterable[Any],
    *,
    num_steps: int | None = None,
    forward: ForwardFn | None = None,
    max_batches: int | None = None,
    structure: ModelStructure | None = None,
    encoder: str = "direct",
    hist_bins: int = 64,
    hist_halfwidth: float | None = None,
    backend: str = "auto",
    distributed: bool | None = None,
    progress: bool | None = None,
) -> SpikeStats:
    """Run ``model`` (eval mode, no grad) over ``data`` and return its :class:`SpikeStats`.

    Args:
        model: any snnTorch model (see :mod:`snnprune.stepping` for the styles understood).
        data: iterable of batches ``x`` or ``(x, y)``; ``x`` is ``[B, ...]`` or ``[T, B, ...]``.
        num_steps: time steps for models stepped by snnprune (default: ``model.num_steps``).
        forward: custom ``forward(model, x) -> [T, B, C]``.
        max_batches: stop after this many batches (None: all).
        structure: a pairing from :func:`snnprune.structure.discover` (found on the first batch if None).
        encoder: ``direct`` or ``rate`` (see :func:`snnprune.train.encode`).
        hist_bins, hist_halfwidth: histogram of u over ``[u_th - h, u_th + h)`` in ``hist_bins``
            bins; ``h`` defaults to ``|u_th|``.
        backend: ``auto`` (Numba on CPU, torch elsewhere), ``numba`` or ``torch``.
        distributed: all-reduce over ``torch.distributed`` ranks (default: when initialised).
        progress: progress bar (``None``: only on an interactive terminal).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    steps = num_steps if num_steps is not None else getattr(model, "num_steps", None)
    if backend != "torch" and device.type == "cpu":
        estimators.warmup()
    samples = 0
    collector: _Collector | None = None
    try:
        for i, x in enumerate(progress_bar(_batches(data), progress=progress, desc="statistics",
                                           total=_length(data, max_batches))):
            if max_batches is not None and i >= max_batches:
                break
            x = encode(x, encoder, steps).to(device)
            if collector is None:
                if structure is None:
                    structure = discover_cached(model, x[:2] if encoder == "direct" else x[:, :2],
                                                num_steps=num_steps, forward=forward)
                collector = _Collector(model, structure, hist_bins, hist_halfwidth, backend).__enter__()
            run(model, x, num_steps=num_steps, forward=forward)
            samples += x.shape[0] if encoder == "direct" else x.shape[1]
    finally:
        if collector is not None:
            collector.__exit__()
        model.train(was_training)
    if collector is None:
        raise ValueError("no data: the calibration set yielded no batch")
    stats = collector.result(samples)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        stats.all_reduce()
    return stats


def _length(data: Iterable[Any], max_batches: int | None) -> int | None:
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return min(n, max_batches) if max_batches is not None else n


def gaussian_density_at_threshold(m: MembraneStats, var_floor: float = 1e-6) -> Tensor:
    """Normal(0 | mu_j - u_th, var_j) of METHOD.md Eq. 12, float64 ``[C]``; var floored (section 7)."""
    var = m.var.clamp_min(var_floor)
    return torch.exp(-((m.mean - m.threshold) ** 2) / (2 * var)) / torch.sqrt(2 * math.pi * var)


def histogram_density_at_threshold(m: MembraneStats, bandwidth_bins: int = 2) -> Tensor:
    """Non-parametric density of u at u_th from the histogram, float64 ``[C]``.

    Counts the ``bandwidth_bins`` bins on each side of the threshold, divided by
    ``count * 2 * bandwidth_bins * width`` (a box kernel). The threshold sits on a bin edge
    at the middle of the window.
    """
    nbins = m.hist.shape[1]
    centre = int(round(((m.threshold - m.lo) / m.width).mean().item()))
    lo_bin, hi_bin = max(centre - bandwidth_bins, 0), min(centre + bandwidth_bins, nbins)
    mass = m.hist[:, lo_bin:hi_bin].sum(1)
    span = (hi_bin - lo_bin) * m.width
    return torch.where(m.count > 0, mass / (m.count.clamp_min(1) * span), torch.zeros_like(mass))
