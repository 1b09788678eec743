"""Per-batch reductions behind the spike statistics: Numba on CPU, plain torch elsewhere.

Every reduction views its tensor as ``[B, C, S]`` (batch, channel, spatial positions flattened; a
linear layer's ``[B, F]`` is ``[B, F, 1]``) and reduces over B and S per channel C:

* :func:`channel_sums`: ``sum_{b,s} x[b, c, s]`` (float64), e.g. input spikes -> firing rates;
* :func:`membrane_moments`: count, shifted sums and a histogram of the membrane potential in one
  fused pass: ``s1 = sum (u - K_c)``, ``s2 = sum (u - K_c)^2`` with a per-channel shift K_c (the
  threshold) so the variance ``(s2 - s1^2/n)/n`` keeps its precision in float64, and
  ``hist[c, floor((u - lo_c) / width_c)] += 1`` for values inside the window.

The Numba kernels (``@njit(parallel=True, cache=True)``, threads over channels) run on CPU
tensors; the torch versions run on any device and are the reference the Numba kernels are tested
against. Both compute bins with the same float64 arithmetic, so histograms agree exactly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class MomentsBatch:
    """Sufficient statistics of one tensor, per channel: all float64 ``[C]`` except ``hist [C, bins]``."""

    count: Tensor
    s1: Tensor
    s2: Tensor
    hist: Tensor


def as_bcs(x: Tensor, channel_dim: int = 1) -> Tensor:
    """View ``x`` as ``[B, C, S]`` with the channel axis in the middle (contiguous)."""
    if x.dim() == 1:
        return x.reshape(1, -1, 1)
    if channel_dim in (-1, x.dim() - 1):  # linear input [..., F]
        return x.reshape(-1, x.shape[-1], 1)
    return x.reshape(x.shape[0], x.shape[1], -1).contiguous()


# ----------------------------------------------------------------------------- Numba kernels


@numba.njit(parallel=True, cache=True)
def _nb_channel_sums(x: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    b_size, c_size, s_size = x.shape
    out = np.zeros(c_size, dtype=np.float64)
    for c in numba.prange(c_size):
        acc = 0.0
        for b in range(b_size):
            for s in range(s_size):
                acc += x[b, c, s]
        out[c] = acc
    return out


@numba.njit(parallel=True, cache=True)
def _nb_moments_hist(
    x: np.ndarray, shift: np.ndarray, lo: np.ndarray, inv_width: np.ndarray, hist: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    b_size, c_size, s_size = x.shape
    nbins = hist.shape[1]
    s1 = np.zeros(c_size, dtype=np.float64)
    s2 = np.zeros(c_size, dtype=np.float64)
    for c in numba.prange(c_size):
        k = shift[c]
        low = lo[c]
        iw = inv_width[c]
        a1 = 0.0
        a2 = 0.0
        for b in range(b_size):
            for s in range(s_size):
                v = np.float64(x[b, c, s])
                d = v - k
                a1 += d
                a2 += d * d
                pos = (v - low) * iw
                if pos >= 0.0 and pos < nbins:
                    hist[c, int(pos)] += 1
        s1[c] = a1
        s2[c] = a2
    return s1, s2


# ----------------------------------------------------------------------------- dispatch


def _use_numba(x: Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "numba":
        if x.device.type != "cpu":
            raise ValueError("the numba backend works on CPU tensors only")
        return True
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def channel_sums(x: Tensor, *, backend: str = "auto") -> Tensor:
    """Per-channel sum of ``x [B, C, S]`` as float64 ``[C]`` (on ``x``'s device)."""
    if _use_numba(x, backend):
        return torch.from_numpy(_nb_channel_sums(x.detach().contiguous().numpy()))
    return torch_channel_sums(x)


def membrane_moments(
    x: Tensor, shift: Tensor, lo: Tensor, width: Tensor, nbins: int, *, backend: str = "auto"
) -> MomentsBatch:
    """Count, shifted sums and window histogram of ``x [B, C, S]`` per channel.

    Args:
        shift, lo, width: float64 ``[C]``: shift K_c, window start and bin width per channel.
        nbins: number of bins; bin i covers ``[lo + i*width, lo + (i+1)*width)``.
    """
    count = torch.full((x.shape[1],), float(x.shape[0] * x.shape[2]), dtype=torch.float64, device=x.device)
    if _use_numba(x, backend):
        hist = np.zeros((x.shape[1], nbins), dtype=np.int64)
        s1, s2 = _nb_moments_hist(
            x.detach().contiguous().numpy(), shift.cpu().numpy(), lo.cpu().numpy(),
            (1.0 / width).cpu().numpy(), hist,
        )
        return MomentsBatch(count, torch.from_numpy(s1), torch.from_numpy(s2), torch.from_numpy(hist).double())
    return torch_membrane_moments(x, shift, lo, width, nbins)


# ----------------------------------------------------------------------------- torch reference


def torch_channel_sums(x: Tensor) -> Tensor:
    return x.detach().double().sum(dim=(0, 2))


def torch_membrane_moments(x: Tensor, shift: Tensor, lo: Tensor, width: Tensor, nbins: int) -> MomentsBatch:
    """Same result as the Numba kernel, in plain torch (any device)."""
    v = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)  # [C, N]
    dev = v.device
    shift, lo, inv_width = shift.to(dev), lo.to(dev), (1.0 / width).to(dev)
    d = v - shift[:, None]
    pos = (v - lo[:, None]) * inv_width[:, None]
    inside = (pos >= 0) & (pos < nbins)
    bins = pos.clamp(0, nbins - 1).long() + torch.arange(v.shape[0], device=dev)[:, None] * nbins
    hist = torch.zeros(v.shape[0] * nbins, dtype=torch.float64, device=dev)
    hist.index_add_(0, bins[inside], torch.ones_like(bins[inside], dtype=torch.float64))
    count = torch.full((v.shape[0],), float(v.shape[1]), dtype=torch.float64, device=dev)
    return MomentsBatch(count, d.sum(1), (d * d).sum(1), hist.view(v.shape[0], nbins))


# ----------------------------------------------------------------------------- compilation


def _cache_is_warm() -> bool:
    """True if Numba's on-disk cache already holds compiled kernels (best effort)."""
    try:
        for kernel in (_nb_channel_sums, _nb_moments_hist):
            cache = kernel._cache._cache_file  # numba internals; guarded by the except below
            if not os.path.exists(os.path.join(cache._cache_path, cache._index_name)):
                return False
        return True
    except Exception:
        return False


_WARM = False


def warmup(announce: bool = True) -> float:
    """Compile (or load from cache) the Numba kernels now, before a long run; returns seconds.

    A first compilation takes several seconds and is announced on the ``snnprune`` logger and
    stderr; later processes load the kernels from Numba's cache next to this file.
    """
    global _WARM
    if _WARM:
        return 0.0
    start = time.perf_counter()
    if announce and not _cache_is_warm():
        msg = "snnprune: compiling Numba statistics kernels (first use only; cached afterwards)..."
        log.warning(msg)
    x = np.zeros((1, 1, 1), dtype=np.float32)
    one = np.ones(1)
    for dtype in (np.float32, np.float64):
        _nb_channel_sums(x.astype(dtype))
        _nb_moments_hist(x.astype(dtype), one, one, one, np.zeros((1, 1), dtype=np.int64))
    _WARM = True
    return time.perf_counter() - start
