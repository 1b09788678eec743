"""Unstructured weight masks, stored the way ``torch.nn.utils.prune`` stores them.

A masked layer holds ``weight_orig`` (the trainable parameter), a ``weight_mask`` buffer (1 = kept,
0 = pruned, same shape as the weight) and a forward pre-hook that sets ``weight`` before every
forward, so ``prune.is_pruned`` and ``prune.remove`` work on snnprune models.

Two kinds of mask (METHOD.md section 5):

* **static** (IMP, SF-IMP-1): ``weight = weight_orig * weight_mask``. A pruned weight is exactly zero
  in every forward pass whatever an optimizer does to ``weight_orig`` (momentum, weight decay, Adam
  moments, AMP), and receives zero gradient.
* **dynamic** (SF-IMP-2, dynamic network surgery): the forward value is the same, but the gradient
  passes straight through to every entry of ``weight_orig``, so a pruned weight keeps learning and
  can be restored when the mask is recomputed.

Masks are tightened by overwriting the ``weight_mask`` buffer in place (one hook per layer, never a
stack of pruning containers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


_cache: dict[tuple[int, str], Tensor] | None = None


@contextmanager
def cached() -> Iterator[None]:
    """Within this context every masked weight is computed once and reused by later calls.

    An SNN calls each layer once per time step; the weights cannot change inside one forward pass,
    so :class:`snnprune.models.SpikingNet` and :func:`snnprune.stepping.run` wrap their time loop in
    this context (as ``torch.nn.utils.parametrize.cached`` does for parametrizations). Gradients
    are unaffected: every step uses the same graph node. Nested use is allowed.
    """
    global _cache
    if _cache is not None:
        yield
        return
    _cache = {}
    try:
        yield
    finally:
        _cache = None


class _FastSet:
    """Forward pre-hook writing ``module.<name>`` straight into the module's ``__dict__``.

    ``BasePruningMethod.__call__`` goes through ``nn.Module.__setattr__``, whose parameter/buffer/
    submodule checks cost as much as the mask product itself on small layers, and the hook runs at
    every time step. The attribute is never a parameter, buffer or submodule, so the result is the
    same. Inside :func:`cached` the product is computed once per forward pass.
    """

    def __call__(self, module: nn.Module, inputs: object) -> None:
        if _cache is None:
            module.__dict__[self._tensor_name] = self.apply_mask(module)
            return
        key = (id(module), self._tensor_name)
        value = _cache.get(key)
        if value is None:
            value = _cache[key] = self.apply_mask(module)
        module.__dict__[self._tensor_name] = value


class StaticMask(_FastSet, prune.CustomFromMask):
    """``weight = weight_orig * weight_mask``; gradients of pruned entries are zero."""

    dynamic = False

    def apply_mask(self, module: nn.Module) -> Tensor:
        d = module.__dict__
        return d["_parameters"][self._tensor_name + "_orig"] * d["_buffers"][self._tensor_name + "_mask"]


class DynamicMask(_FastSet, prune.CustomFromMask):
    """Forward value ``weight_orig * weight_mask``; straight-through gradient to all entries."""

    dynamic = True

    def apply_mask(self, module: nn.Module) -> Tensor:
        d = module.__dict__
        orig = d["_parameters"][self._tensor_name + "_orig"]
        mask = d["_buffers"][self._tensor_name + "_mask"]
        # orig - orig*(1-mask) is exactly orig*mask in floating point (x - x == 0, x - 0 == x).
        return orig - (orig * (1 - mask)).detach()


class _DetachMaskedTensor:
    """Forward hook: after the forward, keep only a detached copy of the masked tensor attribute.

    The pre-hook stores ``weight = f(weight_orig, weight_mask)`` on the module; left attached to the
    autograd graph it makes ``copy.deepcopy(model)`` fail ("Only Tensors created explicitly by the
    user support the deepcopy protocol"). Autograd keeps its own reference, so backward is unaffected.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, inputs: object, output: object) -> None:
        value = module.__dict__.get(self.name)
        if value is not None and value.grad_fn is not None:
            module.__dict__[self.name] = value.detach()


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` / ``nn.Conv1d/2d/3d`` of ``model`` by module name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def mask_hook(module: nn.Module, name: str = "weight") -> prune.BasePruningMethod | None:
    """The pruning hook acting on ``module.<name>``, or None if that tensor is not masked."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            return hook
    return None


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return mask_hook(module, name) is not None


def is_dynamic(module: nn.Module, name: str = "weight") -> bool:
    return bool(getattr(mask_hook(module, name), "dynamic", False))


def weight_of(module: nn.Module, name: str = "weight") -> Tensor:
    """The trainable tensor behind ``module.<name>``: ``<name>_orig`` if masked, else the parameter."""
    return getattr(module, name + "_orig") if is_masked(module, name) else getattr(module, name)


def mask_of(module: nn.Module, name: str = "weight") -> Tensor:
    """The mask of ``module.<name>`` (all ones if unmasked), a bool tensor shaped like the weight."""
    if is_masked(module, name):
        return getattr(module, name + "_mask").bool()
    return torch.ones_like(getattr(module, name), dtype=torch.bool)


@torch.no_grad()
def set_mask(module: nn.Module, mask: Tensor, *, dynamic: bool = False, name: str = "weight") -> None:
    """Install or replace the mask of ``module.<name>``.

    ``mask`` (bool or 0/1, the weight's shape) is copied. For a static mask the pruned entries of
    ``<name>_orig`` are also set to zero, so the stored parameter agrees with what the network uses.
    Changing a layer between static and dynamic re-installs the hook and keeps ``<name>_orig``.
    """
    target = weight_of(module, name)
    if mask.shape != target.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} {tuple(target.shape)}")
    mask = mask.to(device=target.device, dtype=target.dtype)
    hook = mask_hook(module, name)
    if hook is not None and getattr(hook, "dynamic", False) != dynamic:
        remove_mask(module, name, keep_pruned_values=True)
        hook = None
    if hook is None:
        method = DynamicMask if dynamic else StaticMask
        hook = method.apply(module, name, torch.ones_like(target))
        hook.mask = None  # only needed while applying; do not keep a stale copy alive
        hook.detach_handle = module.register_forward_hook(_DetachMaskedTensor(name))
    getattr(module, name + "_mask").copy_(mask)
    if not dynamic:
        getattr(module, name + "_orig").mul_(mask)
    setattr(module, name, hook.apply_mask(module))


def remove_mask(module: nn.Module, name: str = "weight", *, keep_pruned_values: bool = False) -> None:
    """Remove the reparametrisation of ``module.<name>``.

    By default the weight becomes a plain parameter holding ``orig * mask`` (pruned entries zero), as
    ``prune.remove`` does. With ``keep_pruned_values`` it holds ``orig`` unchanged (used when switching
    mask kind).
    """
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            orig = module._parameters[name + "_orig"]
            if not keep_pruned_values:
                with torch.no_grad():
                    orig.mul_(getattr(module, name + "_mask"))
            if hasattr(module, name):
                delattr(module, name)
            del module._parameters[name + "_orig"]
            del module._buffers[name + "_mask"]
            module.register_parameter(name, orig)
            del module._forward_pre_hooks[key]
            handle = getattr(hook, "detach_handle", None)
            if handle is not None:
                handle.remove()
            return


def masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(module_name, module)`` for every module with a masked ``weight``."""
    for mod_name, module in model.named_modules():
        if is_masked(module):
            yield mod_name, module


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """Masks of every masked weight, keyed by parameter name (``"fc1.weight"``), bool tensors."""
    return {_param_name(n, "weight"): mask_of(m) for n, m in masked_layers(model)}


def mask_spec(model: nn.Module) -> dict[str, dict[str, bool]]:
    """JSON-able description of which weights are masked and how: ``{"fc1.weight": {"dynamic": False}}``.

    Stored in checkpoints; :func:`attach_masks` re-creates the reparametrisation from it so that a
    ``state_dict`` with ``*_orig`` / ``*_mask`` entries loads into a freshly built model.
    """
    return {_param_name(n, "weight"): {"dynamic": is_dynamic(m)} for n, m in masked_layers(model)}


def attach_masks(model: nn.Module, spec: dict[str, dict[str, bool]]) -> None:
    """Install all-ones masks of the kinds given by ``spec`` (see :func:`mask_spec`)."""
    modules = dict(model.named_modules())
    for param_name, info in spec.items():
        mod_name, _, tensor_name = param_name.rpartition(".")
        if mod_name not in modules:
            raise KeyError(f"masked parameter {param_name!r} names no module of this model")
        module = modules[mod_name]
        weight = weight_of(module, tensor_name)
        set_mask(module, torch.ones_like(weight, dtype=torch.bool), dynamic=bool(info.get("dynamic")), name=tensor_name)


@torch.no_grad()
def refresh(model: nn.Module, *, zero_pruned: bool = True) -> None:
    """Recompute every masked ``weight`` from its ``weight_orig`` and ``weight_mask`` now.

    Needed after ``weight_orig`` or the mask buffer were written directly (``load_state_dict``,
    rewinding): the pre-hook would only do it at the next forward. With ``zero_pruned`` the pruned
    entries of static masks' ``weight_orig`` are also set to zero, as :func:`set_mask` does.
    """
    for _, module in masked_layers(model):
        hook = mask_hook(module)
        if zero_pruned and not getattr(hook, "dynamic", False):
            getattr(module, hook._tensor_name + "_orig").mul_(getattr(module, hook._tensor_name + "_mask"))
        module.__dict__[hook._tensor_name] = hook.apply_mask(module)


def load_masked_state_dict(model: nn.Module, state: dict[str, Tensor], spec: dict[str, dict[str, bool]]) -> None:
    """Load a ``state_dict`` saved from a masked model (``*_orig``/``*_mask`` keys) into ``model``.

    ``spec`` is the saved :func:`mask_spec`; masks are attached first, then the state is loaded
    (strictly) and the masked weights recomputed.
    """
    attach_masks(model, spec)
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()})
    refresh(model, zero_pruned=False)


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove every mask's reparametrisation, leaving plain weights with exact zeros. Returns ``model``."""
    for _, module in list(masked_layers(model)):
        remove_mask(module)
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of zero entries over the weights of all prunable layers (masked or not)."""
    total = zeros = 0
    for module in prunable_layers(model).values():
        w = module.weight
        if is_masked(module):
            kept = int(mask_of(module).sum())
        else:
            kept = int(torch.count_nonzero(w))
        total += w.numel()
        zeros += w.numel() - kept
    return zeros / total if total else 0.0


def _param_name(module_name: str, tensor_name: str) -> str:
    return f"{module_name}.{tensor_name}" if module_name else tensor_name
