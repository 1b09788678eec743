"""A slow, obviously-correct reference of the spike statistics and the ``prob`` criteria.

Nothing here uses :mod:`snnprune.stats`, :mod:`snnprune.estimators` or :mod:`snnprune.criteria`:

1. :func:`record` runs the model (eval mode, no grad) and keeps a float64 copy of the input of
   every prunable layer and of the membrane potential ``mem`` returned by every snnTorch neuron, at
   every call (every time step of every batch);
2. :func:`channel_rate`, :func:`channel_moments` reduce those copies one channel at a time
   (two-pass mean and population variance);
3. :func:`prob_reference` evaluates METHOD.md Eq. 12-13 with explicit Python loops over output
   channel j, input channel i and kernel taps, given the layer -> (BN, neuron) pairing by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from snntorch._neurons.neurons import SpikingNeuron
from torch import nn

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Recording:
    """``inputs[layer]``: list of float64 arrays with the channel axis moved to 0 and everything else
    flattened to axis 1 (``[C_in, N]``); ``mems[neuron]``: the same for the returned ``mem``."""

    inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    mems: dict[str, list[np.ndarray]] = field(default_factory=dict)


def _channels_first(t: torch.Tensor, linear: bool) -> np.ndarray:
    a = t.detach().double().cpu().numpy()
    if linear:  # [..., F]: features are the channels
        return a.reshape(-1, a.shape[-1]).T.copy()
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).copy()


def record(model: nn.Module, batches: Iterable[torch.Tensor],
           run: Callable[[nn.Module, torch.Tensor], object] | None = None) -> Recording:
    """Run ``model`` over ``batches`` (eval, no grad) recording every layer input and neuron ``mem``."""
    rec = Recording()
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            linear = isinstance(module, nn.Linear)

            def pre_hook(m, args, name=name, linear=linear):
                rec.inputs.setdefault(name, []).append(_channels_first(args[0], linear))

            handles.append(module.register_forward_pre_hook(pre_hook))
        elif isinstance(module, SpikingNeuron):

            def hook(m, args, output, name=name):
                mem = output[1] if isinstance(output, tuple) and len(output) == 2 else m.mem
                rec.mems.setdefault(name, []).append(_channels_first(mem, False))

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                (run or (lambda m, b: m(b)))(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rec


def channel_rate(arrays: list[np.ndarray]) -> list[float]:
    """Mean of every channel over all recorded calls."""
    channels = arrays[0].shape[0]
    rates = []
    for c in range(channels):
        total = 0.0
        count = 0
        for a in arrays:
            total += float(a[c].sum())
            count += a[c].size
        rates.append(total / count)
    return rates


def channel_values(arrays: list[np.ndarray], c: int) -> np.ndarray:
    return np.concatenate([a[c] for a in arrays])


def channel_moments(arrays: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Two-pass mean and population variance of every channel."""
    means, variances = [], []
    for c in range(arrays[0].shape[0]):
        v = channel_values(arrays, c)
        mean = float(v.sum()) / v.size
        means.append(mean)
        variances.append(float(((v - mean) ** 2).sum()) / v.size)
    return means, variances


def gaussian_density(mean: float, var: float, threshold: float, var_floor: float = 1e-6) -> float:
    """Normal(0 | mean - threshold, var) with var floored."""
    var = max(var, var_floor)
    return math.exp(-((mean - threshold) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def histogram_density(values: np.ndarray, threshold: float, bins: int = 64, bandwidth_bins: int = 2) -> float:
    """Fraction of values in ``[th - k*w, th + k*w)`` over ``2*k*w``, ``w = 2|th|/bins`` (box kernel)."""
    width = 2 * abs(threshold) / bins
    lo = threshold - abs(threshold)
    low_edge = lo + (bins // 2 - bandwidth_bins) * width
    high_edge = lo + (bins // 2 + bandwidth_bins) * width
    inside = int(((values >= low_edge) & (values < high_edge)).sum())
    return inside / (values.size * 2 * bandwidth_bins * width)


def bn_factor(bn: nn.Module | None, channels: int) -> list[float]:
    """|gamma_j| / sqrt(running_var_j + eps), or ones without BN."""
    if bn is None:
        return [1.0] * channels
    out = []
    for j in range(channels):
        gamma = abs(float(bn.weight.detach()[j])) if bn.weight is not None else 1.0
        out.append(gamma / math.sqrt(float(bn.running_var[j]) + bn.eps))
    return out


def prob_reference(
    model: nn.Module,
    rec: Recording,
    pairing: dict[str, tuple[str | None, str]],
    density: str = "gaussian",
) -> dict[str, np.ndarray]:
    """P_ij (METHOD.md Eq. 12-13) of every layer in ``pairing`` (layer -> (bn name, neuron name)),
    one weight at a time."""
    modules = dict(model.named_modules())
    result = {}
    for layer, (bn_name, neuron_name) in pairing.items():
        module = modules[layer]
        weight = module.weight.detach().double().cpu().numpy()
        out_ch, in_per_group = weight.shape[:2]
        groups = getattr(module, "groups", 1)
        rates = channel_rate(rec.inputs[layer])
        factors = bn_factor(modules[bn_name] if bn_name else None, out_ch)
        threshold = float(modules[neuron_name].threshold)
        mems = rec.mems[neuron_name]
        if density == "gaussian":
            means, variances = channel_moments(mems)
            dens = [gaussian_density(means[j], variances[j], threshold) for j in range(out_ch)]
        else:
            dens = [histogram_density(channel_values(mems, j), threshold) for j in range(out_ch)]
        scores = np.zeros_like(weight)
        outs_per_group = out_ch // groups
        for j in range(out_ch):
            group = j // outs_per_group
            for i in range(in_per_group):
                rate = rates[group * in_per_group + i]
                for tap in np.ndindex(*weight.shape[2:]):
                    w = weight[(j, i, *tap)]
                    scores[(j, i, *tap)] = abs(w) * rate * factors[j] * dens[j]
        result[layer] = scores
    return result
