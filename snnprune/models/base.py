"""Shared machinery of the snnprune model zoo: time stepping with explicit neuron state.

Every zoo model is a :class:`SpikingNet`. ``model(x)`` accepts

* a static batch ``[B, *input_shape]``: the same analog input is the input current at every one of
  ``num_steps`` steps (direct encoding, the paper's setting), or
* a temporal batch ``[T, B, *input_shape]`` (e.g. rate-encoded spikes),

and returns the output record ``[T, B, num_classes]``. Neuron state lives only inside one call of
``forward``: it starts at zero for every batch, so no state leaks between batches and nothing depends
on snnTorch's class-wide ``instances`` list.
"""

from __future__ import annotations

from collections.abc import Sequence

import snntorch as snn
import torch
from snntorch import surrogate
from torch import Tensor, nn

from .. import masks

NeuronState = dict[nn.Module, Tensor]


def make_lif(beta: float = 0.5, threshold: float = 1.0, surrogate_slope: float = 2.0) -> snn.Leaky:
    """A leaky integrate-and-fire neuron with subtract reset and an arctan surrogate gradient.

    The neuron's returned membrane potential at step t is the pre-threshold value u[t] of
    METHOD.md section 1 (snnTorch applies the reset of step t at step t+1).
    """
    return snn.Leaky(
        beta=beta,
        threshold=threshold,
        spike_grad=surrogate.atan(alpha=surrogate_slope),
        init_hidden=False,
        reset_mechanism="subtract",
    )


def lif_step(neuron: nn.Module, current: Tensor, state: NeuronState) -> Tensor:
    """Advance ``neuron`` by one step with input ``current``; returns its spikes.

    The membrane potential is kept in ``state`` (keyed by the neuron module) and starts at zero,
    so stale state stored inside the snnTorch module is never read.
    """
    mem = state.get(neuron)
    if mem is None:
        mem = torch.zeros_like(current)
    spk, mem = neuron(current, mem)
    state[neuron] = mem
    return spk


class SpikingNet(nn.Module):
    """Base class: loops :meth:`step` over time and stacks the output record.

    Subclasses set ``self.input_shape`` (without batch), ``self.num_steps`` and ``self.num_classes``
    and implement ``step(x_t, state) -> Tensor[B, num_classes]``.
    """

    input_shape: tuple[int, ...]
    num_steps: int
    num_classes: int

    def step(self, x_t: Tensor, state: NeuronState) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def temporal(self, x: Tensor) -> tuple[Tensor, bool]:
        """Return ``(x, is_temporal)`` after checking ``x`` against ``input_shape``."""
        n = len(self.input_shape)
        if x.dim() == n + 1 and tuple(x.shape[1:]) == tuple(self.input_shape):
            return x, False
        if x.dim() == n + 2 and tuple(x.shape[2:]) == tuple(self.input_shape):
            return x, True
        raise ValueError(
            f"{type(self).__name__} expects input of shape [B, {', '.join(map(str, self.input_shape))}] "
            f"or [T, B, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}"
        )

    def forward(self, x: Tensor) -> Tensor:
        x, is_temporal = self.temporal(x)
        steps = x.shape[0] if is_temporal else self.num_steps
        state: NeuronState = {}
        with masks.cached():  # one masked-weight product per forward, not one per step
            outputs = [self.step(x[t] if is_temporal else x, state) for t in range(steps)]
        release_neuron_state(state)
        return torch.stack(outputs)


def release_neuron_state(state: NeuronState) -> None:
    """Drop the membrane tensors snnTorch keeps inside its neuron modules after a forward.

    They hold the autograd graph of the last step, which makes ``copy.deepcopy(model)`` fail and keeps
    memory alive between batches; our own state dict is the only state we use.
    """
    for neuron in state:
        neuron.mem = torch.zeros(0, device=state[neuron].device)


def as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
