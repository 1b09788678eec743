"""Per-batch reductions behind the spike statistics: Numba on CPU, plain torch elsewhere.

Every reduction views its tensor as ``[B, C, S]`` (batch, channel, spatial positions flattened; a
linear layer's ``[B, F]`` is ``[B, F, 1]``) and reduces over B and S per channel C:

* :func:`channel_sums`: ``sum_{b,s} x[b, c, s]`` (float64), e.g. input spikes -> firing rates;
* :func:`membrane_moments`: count, shifted sums and a histogram of the membrane potential in one
  fused pass: ``s1 = sum (u - K_c)``, ``s2 = sum (u - K_c)^2`` with a per-channel shift K_c (the
  threshold) so the variance ``(s2 - s1^2/n)/n`` keeps its precision in float64, and
  ``hist[c, floor((u - lo_c) / width_c)] += 1`` for values inside the window, and optionally the
  neuron's spike count per channel in the same pass: either summed from its spike tensor or, for a
  neuron that fires exactly when ``u > K_c``, counted from ``u`` itself (one comparison per value
  instead of reading a second tensor as large as ``u``).

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
    spikes: Tensor | None = None  # per-channel spike counts (``spikes`` sums, or ``u > shift`` counts)


def as_bcs(x: Tensor, channel_dim: int = 1) -> Tensor:
    """View ``x`` as ``[B, C, S]`` with the channel axis in the middle (contiguous)."""
    if x.dim() == 1:
        return x.reshape(1, -1, 1)
    if channel_dim in (-1, x.dim() - 1):  # linear input [..., F]
        return x.reshape(-1, x.shape[-1], 1)
    return x.reshape(x.shape[0], x.shape[1], -1).contiguous()


# ----------------------------------------------------------------------------- Numba kernels


# Sums use ``fastmath`` reassociation only (so LLVM vectorises them; they differ from the torch
# reference by rounding). Histogram bins are computed in strict float64 exactly as the torch reference
# does, ``floor((u - lo) * inv_width)``, without branches: the position is clamped to [-1, nbins] and
# counted in an extended histogram whose first and last bins (outside the window, NaN) are dropped.
# Four interleaved copies of the histogram avoid store-to-load stalls on runs of the same bin.
_SUM_FLAGS = {"reassoc", "nsz"}
_SHORT_ROW = 16  # rows shorter than this (linear layers: S = 1) take the plain element loop
_BLOCK = 256  # channels per thread task in channel_sums over short rows


@numba.njit(parallel=True, cache=True, fastmath=_SUM_FLAGS)
def _nb_channel_sums(x: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    b_size, c_size, s_size = x.shape
    out = np.zeros(c_size, dtype=np.float64)
    if s_size < _SHORT_ROW:  # e.g. a linear layer's [B, F, 1]: blocks of channels, memory in order
        for block in numba.prange((c_size + _BLOCK - 1) // _BLOCK):
            c0 = block * _BLOCK
            c1 = min(c0 + _BLOCK, c_size)
            for b in range(b_size):
                for c in range(c0, c1):
                    for s in range(s_size):
                        out[c] += x[b, c, s]
        return out
    for c in numba.prange(c_size):
        acc = 0.0
        for b in range(b_size):
            for s in range(s_size):
                acc += x[b, c, s]
        out[c] = acc
    return out


@numba.njit(cache=True, fastmath=_SUM_FLAGS)
def _nb_row_sum(row: np.ndarray) -> float:  # pragma: no cover - compiled
    acc = 0.0
    for s in range(row.shape[0]):
        acc += row[s]
    return acc


@numba.njit(cache=True, fastmath=_SUM_FLAGS)
def _nb_row_sums(row: np.ndarray, k: float) -> tuple[float, float]:  # pragma: no cover - compiled
    a1 = 0.0
    a2 = 0.0
    for s in range(row.shape[0]):
        d = np.float64(row[s]) - k
        a1 += d
        a2 += d * d
    return a1, a2


@numba.njit(cache=True, fastmath=_SUM_FLAGS)
def _nb_row_sums_above(row: np.ndarray, k: float) -> tuple[float, float, float]:  # pragma: no cover - compiled
    """Shifted sums of ``row`` and the number of its values strictly above ``k``."""
    a1 = 0.0
    a2 = 0.0
    above = 0.0
    for s in range(row.shape[0]):
        d = np.float64(row[s]) - k  # exact sign: d > 0 iff row[s] > k
        a1 += d
        a2 += d * d
        above += 1.0 if d > 0.0 else 0.0
    return a1, a2, above


@numba.njit(cache=True)
def _nb_bin(v: float, low: float, iw: float, top: float) -> int:  # pragma: no cover - compiled
    """Extended bin of ``v``: 0 below the window (or NaN), 1..nbins inside, nbins+1 above."""
    p = (v - low) * iw
    p = p if p > -1.0 else -1.0
    p = p if p < top else top
    return int(np.floor(p)) + 1


@numba.njit(cache=True)
def _nb_row_bins(row: np.ndarray, low: float, iw: float, top: float, out: np.ndarray) -> None:  # pragma: no cover
    for s in range(row.shape[0]):
        out[s] = _nb_bin(np.float64(row[s]), low, iw, top)


@numba.njit(parallel=True, cache=True)
def _nb_moments_hist(
    x: np.ndarray, shift: np.ndarray, lo: np.ndarray, inv_width: np.ndarray, hist: np.ndarray,
    spk: np.ndarray, spk_sums: np.ndarray, count_above: bool,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Moments and histogram of ``x``, and in the same pass: if ``spk`` has ``x``'s shape,
    ``spk_sums[c] += sum spk[:, c]`` (pass an empty ``spk`` otherwise); else if ``count_above``,
    ``spk_sums[c] += #{x[:, c] > shift[c]}``."""
    b_size, c_size, s_size = x.shape
    nbins = hist.shape[1]
    top = float(nbins)
    count_spikes = spk.shape == x.shape
    count_above = count_above and not count_spikes
    s1 = np.zeros(c_size, dtype=np.float64)
    s2 = np.zeros(c_size, dtype=np.float64)
    if s_size < _SHORT_ROW:  # e.g. a linear layer's [B, F, 1]: blocks of channels, memory in order
        ext = np.zeros((c_size, nbins + 2), dtype=np.int64)
        for block in numba.prange((c_size + _BLOCK - 1) // _BLOCK):
            c0 = block * _BLOCK
            c1 = min(c0 + _BLOCK, c_size)
            for b in range(b_size):
                for c in range(c0, c1):
                    for s in range(s_size):
                        v = np.float64(x[b, c, s])
                        d = v - shift[c]
                        s1[c] += d
                        s2[c] += d * d
                        ext[c, _nb_bin(v, lo[c], inv_width[c], top)] += 1
                        if count_spikes:
                            spk_sums[c] += spk[b, c, s]
                        elif count_above and d > 0.0:
                            spk_sums[c] += 1.0
            for c in range(c0, c1):
                for j in range(nbins):
                    hist[c, j] += ext[c, j + 1]
        return s1, s2
    for c in numba.prange(c_size):  # long rows: one channel per task, rows vectorised
        k = shift[c]
        low = lo[c]
        iw = inv_width[c]
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        local = np.zeros((4, nbins + 2), dtype=np.int64)
        idx = np.empty(s_size, dtype=np.int64)
        for b in range(b_size):
            row = x[b, c]
            if count_above:
                r1, r2, r3 = _nb_row_sums_above(row, k)
                a3 += r3
            else:
                r1, r2 = _nb_row_sums(row, k)
            a1 += r1
            a2 += r2
            if count_spikes:
                a3 += _nb_row_sum(spk[b, c])
            _nb_row_bins(row, low, iw, top, idx)
            for s in range(s_size):
                local[s & 3, idx[s]] += 1
        for j in range(nbins):
            hist[c, j] += local[0, j + 1] + local[1, j + 1] + local[2, j + 1] + local[3, j + 1]
        s1[c] = a1
        s2[c] = a2
        if count_spikes or count_above:
            spk_sums[c] += a3
    return s1, s2


# ----------------------------------------------------------------------------- dispatch


def _use_numba(x: Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "numba":
        if x.device.type != "cpu":
            raise ValueError("the numba backend works on CPU tensors only")
    elif not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)):
        return False
    warmup(announce=False)
    return True


def channel_sums(x: Tensor, *, backend: str = "auto") -> Tensor:
    """Per-channel sum of ``x [B, C, S]`` as float64 ``[C]`` (on ``x``'s device)."""
    if _use_numba(x, backend):
        return torch.from_numpy(_nb_channel_sums(x.detach().contiguous().numpy()))
    return torch_channel_sums(x)


def membrane_moments(
    x: Tensor, shift: Tensor, lo: Tensor, width: Tensor, nbins: int, *, spikes: Tensor | None = None,
    count_above: bool = False, backend: str = "auto",
) -> MomentsBatch:
    """Count, shifted sums and window histogram of ``x [B, C, S]`` per channel.

    Args:
        shift, lo, width: float64 ``[C]``: shift K_c, window start and bin width per channel.
        nbins: number of bins; bin i covers ``[lo + i*width, lo + (i+1)*width)``.
        spikes: optional tensor shaped like ``x`` (the neuron's spikes) whose per-channel sums are
            returned as ``MomentsBatch.spikes``, read in the same pass.
        count_above: without ``spikes``, return ``#{x[:, c] > shift_c}`` as ``MomentsBatch.spikes``
            (the spike count of a neuron that fires when ``u > u_th`` and ``shift`` is ``u_th``).
    """
    if spikes is not None and spikes.shape != x.shape:
        raise ValueError(f"spikes {list(spikes.shape)} must have the shape of x {list(x.shape)}")
    count_above = count_above and spikes is None
    count = torch.full((x.shape[1],), float(x.shape[0] * x.shape[2]), dtype=torch.float64, device=x.device)
    if _use_numba(x, backend) and (spikes is None or _use_numba(spikes, backend)):
        arr = x.detach().contiguous().numpy()
        hist = np.zeros((x.shape[1], nbins), dtype=np.int64)
        # spikes in x's dtype: the two (float32, float64) kernel specialisations warmup() compiles
        spk = (spikes.detach().to(x.dtype).contiguous().numpy() if spikes is not None
               else np.zeros((0, 0, 0), arr.dtype))
        spk_sums = np.zeros(x.shape[1], dtype=np.float64)
        s1, s2 = _nb_moments_hist(
            arr, shift.cpu().numpy(), lo.cpu().numpy(), (1.0 / width).cpu().numpy(), hist, spk, spk_sums,
            count_above,
        )
        counted = spikes is not None or count_above
        return MomentsBatch(count, torch.from_numpy(s1), torch.from_numpy(s2), torch.from_numpy(hist).double(),
                            torch.from_numpy(spk_sums) if counted else None)
    return torch_membrane_moments(x, shift, lo, width, nbins, spikes=spikes, count_above=count_above)


# ----------------------------------------------------------------------------- torch reference


def torch_channel_sums(x: Tensor) -> Tensor:
    return x.detach().double().sum(dim=(0, 2))


def torch_membrane_moments(
    x: Tensor, shift: Tensor, lo: Tensor, width: Tensor, nbins: int, *, spikes: Tensor | None = None,
    count_above: bool = False,
) -> MomentsBatch:
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
    spike_sums = torch_channel_sums(spikes) if spikes is not None else None
    if spike_sums is None and count_above:
        spike_sums = (d > 0).sum(1).double()
    return MomentsBatch(count, d.sum(1), (d * d).sum(1), hist.view(v.shape[0], nbins), spike_sums)


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
    torch_threads = torch.get_num_threads()
    for dtype in (np.float32, np.float64):
        _nb_channel_sums(x.astype(dtype))
        _nb_moments_hist(x.astype(dtype), one, one, one, np.zeros((1, 1), dtype=np.int64), x.astype(dtype), one,
                         False)
    # Numba's OpenMP layer starting up can reset the process-wide OpenMP thread count torch uses.
    torch.set_num_threads(torch_threads)
    _WARM = True
    return time.perf_counter() - start
