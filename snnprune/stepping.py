"""Running any snnTorch model over time and getting its output record ``[T, B, C]``.

Four model styles are supported, tried in this order:

1. a user-supplied ``forward(model, x) -> Tensor[T, B, C]`` (anything else);
2. snnprune zoo models (:class:`snnprune.models.SpikingNet`): ``model(x)`` loops over time itself;
3. models built from ``init_hidden=True`` snnTorch neurons (e.g. an ``nn.Sequential``) that the
   caller steps through time: snnprune resets every neuron's state (nested modules included), then
   calls ``model(x_t)`` once per step and stacks the first output (spikes when ``output=True``);
4. class-based models that loop over time inside ``forward`` (snnTorch-tutorial style) and return
   a record ``[T, B, C]`` or a tuple whose first element is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from snntorch._neurons.neurons import SpikingNeuron
from torch import Tensor, nn

from . import masks
from .models.base import SpikingNet

ForwardFn = Callable[[nn.Module, Tensor], Tensor]


def spiking_neurons(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every snnTorch spiking neuron in ``model`` (at any depth), by module name."""
    for name, module in model.named_modules():
        if is_spiking_neuron(module):
            yield name, module


def is_spiking_neuron(module: nn.Module) -> bool:
    """snnTorch neurons that expose a membrane potential ``mem`` and a ``threshold``."""
    return isinstance(module, SpikingNeuron) and hasattr(module, "threshold")


def uses_hidden_state(model: nn.Module) -> bool:
    """True if any neuron keeps its state inside the module (``init_hidden=True``)."""
    return any(getattr(m, "init_hidden", False) for _, m in spiking_neurons(model))


def reset_neurons(model: nn.Module) -> None:
    """Zero the hidden state of every snnTorch neuron in ``model``, however deeply nested.

    (``snntorch.utils.reset`` only looks at direct children and resets every instance ever made.)
    """
    for _, neuron in spiking_neurons(model):
        for state in ("mem", "syn", "spk", "syn_exc", "syn_inh"):
            value = getattr(neuron, state, None)
            if isinstance(value, Tensor):
                setattr(neuron, state, torch.zeros(0, device=value.device, dtype=value.dtype))


def default_num_steps(model: nn.Module, num_steps: int | None) -> int | None:
    return num_steps if num_steps is not None else getattr(model, "num_steps", None)


def run(model: nn.Module, x: Tensor, *, num_steps: int | None = None, forward: ForwardFn | None = None) -> Tensor:
    """Run ``model`` on batch ``x`` and return the output record ``[T, B, C]``.

    ``num_steps`` is needed only for style 3 with a static batch; a batch that already has a time
    axis ``[T, B, ...]`` is stepped over its first dimension when ``num_steps`` is None.
    """
    if forward is not None:
        return _check_record(forward(model, x), "the forward function")
    if isinstance(model, SpikingNet):
        return model(x)
    reset_neurons(model)
    if uses_hidden_state(model):
        steps = default_num_steps(model, num_steps)
        inputs = [x] * steps if steps is not None else list(x)
        outputs = []
        with masks.cached():
            for x_t in inputs:
                out = model(x_t)
                outputs.append(out[0] if isinstance(out, tuple) else out)
        reset_neurons(model)
        return torch.stack(outputs)
    out = model(x)
    return _check_record(out[0] if isinstance(out, tuple) else out, type(model).__name__)


def _check_record(record: Tensor, source: str) -> Tensor:
    if not isinstance(record, Tensor) or record.dim() != 3:
        shape = list(record.shape) if isinstance(record, Tensor) else type(record).__name__
        raise ValueError(
            f"{source} must return an output record [T, B, classes], got {shape}; "
            "pass forward=... (CLI: --forward package.module:function) to tell snnprune how to run it"
        )
    return record
