"""Which BatchNorm and which spiking neuron belong to each prunable layer (METHOD.md section 7).

The pairing is read off one calibration forward pass on a couple of samples, with autograd on:

* the **BatchNorm** of a layer is the BN whose input is that layer's output tensor;
* the **neuron** of a layer is the spiking neuron whose input current depends on the layer's output
  through operations other than another prunable layer or spiking neuron (BN, pooling, flatten,
  residual additions ...), found by walking the autograd graph back from the neuron's input.

Only the first call of every module is used (the first time step). The first prunable layer to run
is the *encoding* layer (it sees the analog input), the last one the *classifier*; the rest are
*hidden*. A layer that feeds no spiking neuron (a classifier read out by membrane) has
``neuron=None`` and criteria that need membrane statistics fall back to magnitude for it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .masks import prunable_layers
from .stepping import ForwardFn, is_spiking_neuron, reset_neurons, run

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MAX_GRAPH_NODES = 100_000


@dataclass
class LayerInfo:
    """One prunable layer and what it feeds.

    Attributes:
        name: module name (``"blocks.0.conv1"``); its weight is ``name + ".weight"``.
        kind: ``"linear"`` or ``"conv"``.
        out_channels: output channels (conv) or features (linear), the axis j of METHOD.md Eq. 13.
        bn: name of the BatchNorm normalising the output, or None.
        neuron: name of the spiking neuron receiving the output, or None.
        role: ``"encoding"``, ``"hidden"`` or ``"classifier"``.
        order: position in execution order.
        note: why something is missing, in words.
    """

    name: str
    kind: str
    out_channels: int
    bn: str | None = None
    neuron: str | None = None
    role: str = "hidden"
    order: int = -1
    note: str = ""


@dataclass
class ModelStructure:
    """The layer -> BN -> neuron pairing of a model, layers in execution order."""

    layers: dict[str, LayerInfo] = field(default_factory=dict)
    neurons: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Plain-text table of the pairing."""
        rows = [("layer", "type", "out", "batchnorm", "neuron", "role")]
        for info in self.layers.values():
            rows.append((info.name, info.kind, str(info.out_channels), info.bn or "-",
                         info.neuron or "- (feeds no spiking neuron)", info.role))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {n: {k: v for k, v in vars(i).items()} for n, i in self.layers.items()}


def _channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def discover(
    model: nn.Module,
    sample: Tensor,
    *,
    num_steps: int | None = None,
    forward: ForwardFn | None = None,
) -> ModelStructure:
    """Find the layer -> BN -> neuron pairing of ``model`` from one forward pass on ``sample``.

    ``sample`` is a small input batch (two samples suffice); the model's train/eval mode and
    parameters are left unchanged (BN running statistics are restored).
    """
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("the model has no prunable layer (nn.Linear, nn.Conv1d/2d/3d)")
    names = {m: n for n, m in model.named_modules()}
    bns = {m for m in model.modules() if isinstance(m, BN_TYPES)}
    neurons = {m for m in model.modules() if is_spiking_neuron(m)}

    layer_out: dict[object, str] = {}  # grad_fn of a layer's first output -> layer name
    layer_order: list[str] = []
    bn_input: dict[str, object] = {}  # BN name -> grad_fn of its first input
    neuron_in: dict[str, Tensor] = {}  # neuron name -> its first input current
    neuron_out: set[object] = set()  # grad_fns of neuron outputs: the walk stops there
    seen: set[nn.Module] = set()

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if module in seen:
            return
        seen.add(module)
        name = names[module]
        if module in bns:
            bn_input[name] = args[0].grad_fn if args and isinstance(args[0], Tensor) else None
        elif module in neurons:
            if args and isinstance(args[0], Tensor):
                neuron_in[name] = args[0]
            for t in output if isinstance(output, tuple) else (output,):
                if isinstance(t, Tensor) and t.grad_fn is not None:
                    neuron_out.add(t.grad_fn)
        else:
            layer_order.append(name)
            if isinstance(output, Tensor) and output.grad_fn is not None:
                layer_out[output.grad_fn] = name

    watched = [*layers.values(), *bns, *neurons]
    handles = [m.register_forward_hook(hook) for m in watched]
    bn_state = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                for m in bns if m.running_mean is not None}
    try:
        with torch.enable_grad():
            run(model, sample.detach().clone().requires_grad_(sample.is_floating_point()),
                num_steps=num_steps, forward=forward)
    finally:
        for h in handles:
            h.remove()
        reset_neurons(model)  # drop neuron state holding this pass's autograd graph (breaks deepcopy)
        with torch.no_grad():
            for m, (mean, var, count) in bn_state.items():
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)

    structure = ModelStructure(neurons=[names[m] for m in neurons if names[m] in neuron_in])
    order = [n for n in layer_order if n in layers] + [n for n in layers if n not in layer_order]
    for i, name in enumerate(order):
        structure.layers[name] = LayerInfo(
            name=name,
            kind="linear" if isinstance(layers[name], nn.Linear) else "conv",
            out_channels=_channels(layers[name]),
            order=i,
        )
        if name not in layer_order:
            structure.layers[name].note = "did not run in the calibration pass"
    ran = [n for n in order if n in layer_order]
    if ran:
        structure.layers[ran[0]].role = "encoding"
        structure.layers[ran[-1]].role = "classifier" if len(ran) > 1 else "encoding"

    for bn_name, grad_fn in bn_input.items():
        layer = layer_out.get(grad_fn)
        if layer is not None and structure.layers[layer].bn is None:
            bn = dict(model.named_modules())[bn_name]
            if bn.num_features == structure.layers[layer].out_channels:
                structure.layers[layer].bn = bn_name

    for neuron_name, current in neuron_in.items():
        for layer in _feeding_layers(current, layer_out, neuron_out):
            info = structure.layers[layer]
            if info.neuron is not None:
                continue
            channels = current.shape[1] if current.dim() > 1 else current.shape[0]
            if channels != info.out_channels:
                info.note = (f"feeds neuron {neuron_name} with {channels} channels, not its "
                             f"{info.out_channels} outputs; no per-channel pairing")
                continue
            info.neuron = neuron_name
    for info in structure.layers.values():
        if info.neuron is None and not info.note:
            info.note = "feeds no spiking neuron"
    return structure


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], ModelStructure]] = weakref.WeakKeyDictionary()


def discover_cached(
    model: nn.Module,
    sample: Tensor,
    *,
    num_steps: int | None = None,
    forward: ForwardFn | None = None,
) -> ModelStructure:
    """:func:`discover`, remembered per model instance.

    The pairing depends only on the module tree, the per-sample input shape and how the model is
    run; it is found again whenever any of those changes (a replaced submodule has a new identity).
    Saves the calibration forward pass with autograd on every pruning step.
    """
    signature = (
        tuple((name, id(m), type(m)) for name, m in model.named_modules()),
        tuple(sample.shape[1:]),
        num_steps,
        forward,
    )
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == signature:
        return hit[1]
    structure = discover(model, sample, num_steps=num_steps, forward=forward)
    _CACHE[model] = (signature, structure)
    return structure


def _feeding_layers(current: Tensor, layer_out: dict[object, str], stop: set[object]) -> list[str]:
    """Layers whose outputs reach ``current`` without passing another layer or a spiking neuron."""
    found: list[str] = []
    stack = [current.grad_fn] if current.grad_fn is not None else []
    visited: set[object] = set()
    while stack and len(visited) < _MAX_GRAPH_NODES:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        if node in layer_out:
            found.append(layer_out[node])
            continue
        if node in stop:
            continue
        stack.extend(fn for fn, _ in node.next_functions)
    return found
