"""Inference form of an adapted model: reparametrising methods folded into the frozen weights, Monas fused."""

from __future__ import annotations

from torch import nn

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.fuse import fuse
from domainmona.adapters.inject import STATE_ATTR, adapted_backbones
from domainmona.adapters.modules.delta import SHARED_ATTR, Mergeable


def merge(model: nn.Module) -> nn.Module:
    """Fold every mergeable method (LoRA, SSF, FacT-TT/TK, KronA, KAdaptation) into the weights of the layers it
    adapts, exactly (up to float rounding), and remove its tensors. A backbone left without adapter modules
    (these methods, and the ones that only train base weights: bitfit, normtuning, partial, full, fixed) is a
    plain backbone again: its blocks get their own classes back and the adapter record goes. Methods with
    tensors of their own that do not fold (Mona, adapters beside or after branches, prompts) stay. Returns `model`."""
    for module in list(model.modules()):
        if isinstance(module, Mergeable):
            module.merge_into_base()
        if SHARED_ATTR in module._modules:
            delattr(module, SHARED_ATTR)
    for _, root, state in adapted_backbones(model):
        if set(state.parameters) & {n for n, _ in root.named_parameters()}:
            continue  # tensors injection added are still there (slot adapters, prompts, conv adapters)
        for block in [m for m in root.modules() if isinstance(m, AdapterHost)]:
            block.__class__ = next(c for c in type(block).__mro__ if not issubclass(c, AdapterHost))
        delattr(root, STATE_ATTR)
    return model


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """`merge` then `fuse`: the fastest exact form of `model` for prediction (no more training or adapter
    saving). Returns `model`."""
    return fuse(merge(model))
