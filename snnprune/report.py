"""Cost estimates and plain-text tables for the command line: SynOps per inference and energy.

SynOps (synaptic operations) of prunable layer ``l`` per inference, over ``T`` time steps::

    SynOps_l = T * P_out * sum_i rate_i * nnz_i

* ``rate_i``: mean input of input channel ``i`` per element and step (spikes per step for a
  spiking input), measured by :func:`snnprune.collect_stats` over samples, steps and positions;
* ``nnz_i``: non-zero (unpruned) weights leaving input channel ``i``: ``nnz(W[:, i])`` for a
  Linear layer, ``nnz(W[:, i, :, :])`` for a convolution (per group for grouped convolutions);
* ``P_out``: output positions of the layer (1 for a Linear layer on a flat input, ``H_out*W_out``
  for a 2-d convolution).

This equals the layer's dense MACs scaled by its input rate and its weight density, but weighted per
input channel (a silent channel costs nothing, whatever its weights). It assumes the rate of a
channel is uniform over positions and ignores padding borders, bias additions and the neuron
updates themselves.

The first (encoding) layer sees the analog input (direct encoding), so it does real
multiply-accumulates: ``MACs = T * P_out * nnz(W)``.

Energy (45 nm CMOS, 32-bit floating point, Horowitz, ISSCC 2014): an accumulate costs
``E_AC = 0.9 pJ`` and a multiply-accumulate ``E_MAC = 4.6 pJ``::

    E_SNN = E_MAC * MACs(encoding layer) + E_AC * sum(SynOps of the other layers)

The dense ANN of the same architecture (every weight, one pass, no time steps) is given for
reference: ``E_ANN = E_MAC * dense MACs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .masks import is_masked, mask_of, prunable_layers
from .stats import SpikeStats
from .stepping import ForwardFn, run

E_AC_PJ = 0.9
E_MAC_PJ = 4.6
ENERGY_BASIS = (
    "45 nm CMOS, 32-bit float: accumulate 0.9 pJ, multiply-accumulate 4.6 pJ (Horowitz, ISSCC 2014); "
    "SynOps_l = T * P_out * sum_i rate_i * nnz(W[:, i]) (input spikes x non-zero fan-out); "
    "the encoding layer does MACs on the analog input (direct encoding)"
)

__all__ = [
    "ENERGY_BASIS",
    "E_AC_PJ",
    "E_MAC_PJ",
    "LayerCost",
    "costs",
    "energy",
    "format_table",
    "layer_shapes",
]


@dataclass
class LayerCost:
    """Cost of one prunable layer per inference (``T`` steps)."""

    layer: str
    role: str
    kind: str  # "synops" (spiking input) or "macs" (analog input of the encoding layer)
    input_rate: float  # mean input per element and step (spikes/step for spiking inputs)
    density: float  # fraction of non-zero weights
    dense_macs: float  # one pass, all weights (the ANN reference)
    ops: float  # SynOps or MACs per inference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weight_nonzero(module: nn.Module) -> Tensor:
    w = module.weight.detach()
    nz = w != 0
    if is_masked(module):
        nz = nz & mask_of(module).to(nz.device)
    return nz


def _nnz_per_input_channel(module: nn.Module) -> Tensor:
    """Non-zero weights fed by each input channel, ``[C_in]`` (float64, CPU)."""
    nz = _weight_nonzero(module).cpu()
    if isinstance(module, nn.Linear):
        return nz.sum(0).double()
    groups = getattr(module, "groups", 1)
    out_per_group = nz.shape[0] // groups
    dims = [0, *range(2, nz.dim())]
    parts = [nz[g * out_per_group:(g + 1) * out_per_group].sum(dims) for g in range(groups)]
    return torch.cat(parts).double()


@torch.no_grad()
def layer_shapes(model: nn.Module, sample: Tensor, *, num_steps: int | None = None,
                 forward: ForwardFn | None = None) -> tuple[dict[str, tuple[list[int], list[int]]], int]:
    """Per-sample input and output shapes of every prunable layer (first call) and the number of
    time steps of the output record, from one forward pass on ``sample``."""
    shapes: dict[str, tuple[list[int], list[int]]] = {}
    handles = []
    for name, layer in prunable_layers(model).items():
        def hook(module: nn.Module, args: tuple, output: Any, name: str = name) -> None:
            if name not in shapes and args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                shapes[name] = (list(args[0].shape[1:]), list(output.shape[1:]))
        handles.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        record = run(model, sample, num_steps=num_steps, forward=forward)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes, int(record.shape[0])


def _out_positions(module: nn.Module, out_shape: Sequence[int]) -> int:
    if isinstance(module, nn.Linear):
        return math.prod(out_shape[:-1]) if len(out_shape) > 1 else 1
    return math.prod(out_shape[1:])


def costs(model: nn.Module, stats: SpikeStats, shapes: dict[str, tuple[list[int], list[int]]],
          steps: int) -> list[LayerCost]:
    """SynOps / MACs per inference of every prunable layer (see the module docstring)."""
    rows = []
    roles = {n: i.role for n, i in stats.structure.layers.items()}
    for name, module in prunable_layers(model).items():
        if name not in shapes or name not in stats.inputs:
            continue  # the layer did not run
        _, out_shape = shapes[name]
        positions = _out_positions(module, out_shape)
        nnz_in = _nnz_per_input_channel(module)
        nnz = float(nnz_in.sum())
        total = module.weight.numel()
        rate = stats.inputs[name].rate.double().cpu()
        role = roles.get(name, "hidden")
        dense = float(positions * total)
        if role == "encoding":
            kind, ops = "macs", steps * positions * nnz
        else:
            kind = "synops"
            if rate.numel() != nnz_in.numel():  # unexpected layout: fall back to the mean rate
                ops = steps * positions * nnz * float(rate.mean())
            else:
                ops = steps * positions * float((rate * nnz_in).sum())
        rows.append(LayerCost(name, role, kind, float(rate.mean()) if rate.numel() else 0.0,
                              nnz / total if total else 0.0, dense, float(ops)))
    return rows


def energy(rows: Sequence[LayerCost]) -> dict[str, float]:
    """Totals in operations and microjoules: SNN (MACs + SynOps) and the dense ANN reference."""
    macs = sum(r.ops for r in rows if r.kind == "macs")
    synops = sum(r.ops for r in rows if r.kind == "synops")
    dense = sum(r.dense_macs for r in rows)
    snn_uj = (macs * E_MAC_PJ + synops * E_AC_PJ) * 1e-6
    ann_uj = dense * E_MAC_PJ * 1e-6
    return {"macs": macs, "synops": synops, "snn_energy_uJ": snn_uj,
            "ann_dense_macs": dense, "ann_energy_uJ": ann_uj}


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()) -> str:
    """Aligned plain-text table; columns listed in ``right`` are right-aligned."""
    table = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(table[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in table[1:]]
    return "\n".join(out)


def human(n: float) -> str:
    """Operation counts in engineering notation: 1.23k, 4.56M, 7.89G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
