"""Training-memory switches of an adapted backbone: adapter recomputation and the family's block checkpointing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from domainmona.adapters.families import find_backbone
from domainmona.adapters.inject import STATE_ATTR, adapted_backbones
from domainmona.adapters.modules.recompute import configure_recompute
from domainmona.errors import UserError


def set_adapter_recompute(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Whether the adapters of every adapted backbone in `model` recompute their internals in backward
    (`inject(..., recompute_adapters=...)` after the fact); recorded in the adapter state. Returns `model`."""
    found = adapted_backbones(model)
    if not found:
        raise UserError(f"{type(model).__name__} has no adapters: call inject(model, method) first")
    for _, root, state in found:
        setattr(root, STATE_ATTR, dataclasses.replace(state, recompute=bool(enabled)))
        configure_recompute(root, recompute=bool(enabled))
    return model


def set_block_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the backbone family's own activation checkpointing (mmdet Swin `with_cp`, timm
    `set_grad_checkpointing`, MONAI `use_checkpoint`) on every block of the backbone in `model`; the adapters
    run inside each checkpointed block and skip their own recomputation while it is on. Returns `model`."""
    _, root, family = find_backbone(model)
    if family.checkpointing is None:
        raise UserError(f"{family.name} backbones have no block checkpointing")
    family.checkpointing(root, bool(enabled))
    configure_recompute(root, inside_checkpoint=bool(enabled))
    return model


def block_checkpointing(model: nn.Module) -> bool:
    """Whether the backbone in `model` runs its blocks under its family's checkpointing."""
    _, root, family = find_backbone(model)
    return bool(family.checkpointing and family.checkpointing(root, None))


def saved_tensor_bytes(run: Callable[[], object], model: nn.Module) -> int:
    """Bytes of the distinct tensor storages that autograd keeps for backward while `run()` (a forward pass
    of `model`) executes, not counting `model`'s own parameters and buffers: a deterministic measure of a
    step's activation memory on any device (checkpointed regions count the inputs they keep)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    del result
    return sum(kept.values())
