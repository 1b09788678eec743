"""Input encoders: turn a static batch ``[B, ...]`` into what a spiking model receives.

Every encoder has the signature ``encoder(x, num_steps, **options) -> Tensor``:

* :func:`direct` (the paper's setting) returns ``x`` unchanged. The zoo models
  (:class:`snnprune.models.base.SpikingNet`) repeat a static batch over their ``num_steps``
  themselves, so the analog input is the input current at every step.
* :func:`direct_temporal` returns the same information with an explicit time axis ``[T, B, ...]``
  (an expanded view, no copy) for models that need one.
* :func:`rate` draws Bernoulli spikes ``[T, B, ...]`` with per-step firing probability
  ``clamp(gain * x, 0, 1)``. It is equivalent in distribution to ``snntorch.spikegen.rate`` but
  takes an explicit ``torch.Generator`` so that spike trains are reproducible without touching the
  global RNG. It needs inputs in ``[0, 1]`` (so not the normalised CIFAR images).

:func:`get` looks an encoder up by name (:data:`ENCODERS`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ENCODERS", "RANGE_TOLERANCE", "direct", "direct_temporal", "get", "rate"]

#: How far outside ``[0, 1]`` an input to :func:`rate` may stray (float rounding) before it is
#: rejected; such values are clamped.
RANGE_TOLERANCE = 1e-6

Encoder = Callable[..., Tensor]


def _check_steps(num_steps: int) -> int:
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    return int(num_steps)


def direct(x: Tensor, num_steps: int) -> Tensor:
    """Direct (analog) encoding: return the static batch ``x`` ``[B, ...]`` unchanged.

    The zoo models repeat a static batch over their own ``num_steps``, feeding the analog values as
    the input current at every step (the paper's setting); ``num_steps`` is only validated here.
    """
    _check_steps(num_steps)
    return x


def direct_temporal(x: Tensor, num_steps: int) -> Tensor:
    """Direct encoding with an explicit time axis: ``x`` ``[B, ...]`` -> ``[T, B, ...]``.

    Every step holds the same analog input. The result is an expanded *view* of ``x`` (no memory
    is copied; all steps alias ``x``), so do not write to it in place; ``.contiguous()`` copies.
    """
    steps = _check_steps(num_steps)
    return x.unsqueeze(0).expand(steps, *x.shape)


def rate(
    x: Tensor,
    num_steps: int,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rate (Bernoulli) encoding: ``x`` ``[B, ...]`` in ``[0, 1]`` -> spikes ``[T, B, ...]``.

    At every step each element fires independently with probability ``clamp(gain * x, 0, 1)``, so
    the spike count over ``T`` steps is Binomial(T, p) and the mean over time estimates ``p``.
    Same distribution as ``snntorch.spikegen.rate(x, num_steps, gain=gain)``.

    Args:
        x: static batch, floating point, values in ``[0, 1]`` (up to :data:`RANGE_TOLERANCE`).
        num_steps: number of time steps ``T`` (positive).
        gain: scale of the firing probability.
        generator: random generator on ``x``'s device for reproducible spikes; ``None`` uses the
            global RNG.

    Returns:
        A tensor of ``0.0`` / ``1.0`` of ``x``'s dtype and device, shape ``[T, *x.shape]``.

    Raises:
        ValueError: ``x`` has values outside ``[0, 1]`` or is not floating point, or ``num_steps``
            is not a positive integer.
    """
    steps = _check_steps(num_steps)
    if not x.is_floating_point():
        raise ValueError(f"rate encoding needs a floating-point input, got dtype {x.dtype}")
    if x.numel() > 0:
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE):
            raise ValueError(
                f"rate encoding needs inputs in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                "scale the data to [0, 1] (e.g. without mean/std normalisation) or use direct encoding"
            )
    prob = (gain * x).clamp(0.0, 1.0)
    prob = prob.unsqueeze(0).expand(steps, *x.shape).contiguous()
    return torch.bernoulli(prob, generator=generator)


#: Encoders by name.
ENCODERS: dict[str, Encoder] = {"direct": direct, "rate": rate}


def get(name: str) -> Encoder:
    """The encoder called ``name`` (one of :data:`ENCODERS`: ``"direct"``, ``"rate"``).

    Raises:
        ValueError: unknown name; the message lists the known names.
    """
    try:
        return ENCODERS[str(name).strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown encoding {name!r}; known encodings: {', '.join(ENCODERS)}"
        ) from None
