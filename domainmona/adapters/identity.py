"""Identity of a backbone for adapter checkpoints: its architecture id and a fingerprint of its frozen weights."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from domainmona.adapters.inject import STATE_ATTR, adapter_parameter_names


def base_parameters(root: nn.Module) -> dict[str, nn.Parameter]:
    """The backbone's own parameters (everything injection did not add)."""
    added = adapter_parameter_names(root)
    return {n: p for n, p in root.named_parameters() if n not in added}


def backbone_id(root: nn.Module) -> str:
    """`family/Class/size/hash of (name, shape) of every base parameter`: equal for equal architectures."""
    params = base_parameters(root)
    digest = hashlib.blake2b(digest_size=6)
    for name, param in sorted(params.items()):
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    size = sum(p.numel() for p in params.values()) / 1e6
    cls = next(c for c in type(root).__mro__ if not c.__name__.startswith("Adapted")).__name__
    return f"{getattr(root, STATE_ATTR).family}/{cls}/{size:.2f}M/{digest.hexdigest()}"


def frozen_fingerprint(root: nn.Module, saved: set[str] = frozenset()) -> str:
    """Hash of every frozen base parameter and every persistent buffer not in `saved` (e.g. frozen BatchNorm
    statistics): an adapter only reproduces its results on exactly these weights."""
    digest = hashlib.blake2b(digest_size=16)
    tensors = {n: p for n, p in base_parameters(root).items() if not p.requires_grad}
    tensors.update((n, b) for n, b in persistent_buffers(root).items() if n not in saved)
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # 0-dim too
    return digest.hexdigest()


def persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that go into a state_dict (named as there)."""
    out = {}
    for owner_name, owner in module.named_modules():
        for name, buffer in owner.named_buffers(recurse=False):
            if buffer is not None and name not in owner._non_persistent_buffers_set:
                out[f"{owner_name}.{name}" if owner_name else name] = buffer
    return out
