"""Adapter-only checkpoints: every trainable tensor of a model in safetensors, with what it needs to match."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from domainmona import __version__
from domainmona.adapters.identity import backbone_id, frozen_fingerprint, persistent_buffers
from domainmona.adapters.inject import adapted_backbones, inject
from domainmona.errors import UserError
from domainmona.io import atomic_path, load_safetensors

FORMAT = "domainmona-adapter"


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter of `model` plus the persistent buffers of modules that own one (e.g. the
    running statistics of a BatchNorm that trains)."""
    tensors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for owner_name, owner in model.named_modules():
        if any(p.requires_grad for p in owner.parameters(recurse=False)):
            prefix = f"{owner_name}." if owner_name else ""
            tensors.update((prefix + n, b) for n, b in persistent_buffers(owner).items() if "." not in n)
    return tensors


def _the_backbone(model: nn.Module):
    found = adapted_backbones(model)
    if len(found) != 1:
        what = "no adapters: call inject(model, method) first" if not found else "several adapted backbones"
        raise UserError(f"{type(model).__name__} has {what}")
    return found[0]


def _metadata(model: nn.Module, saved: set[str]) -> dict[str, str]:
    prefix, root, state = _the_backbone(model)
    inner = {n[len(prefix) + 1:] if prefix else n for n in saved if not prefix or n.startswith(prefix + ".")}
    return {"format": FORMAT, "version": __version__, "method": state.method,
            "config": json.dumps(state.config, sort_keys=True), "backbone": backbone_id(root),
            "base_fingerprint": frozen_fingerprint(root, inner), "prefix": prefix}


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write every trainable tensor of `model` (adapters, and necks/heads when given the whole model) to a
    safetensors file with its method, config, backbone id and base-weight fingerprint."""
    if any(getattr(m, "is_fused", False) for m in model.modules()):
        raise UserError("this model's Monas are fused (inference form): save the adapter before calling fuse()")
    tensors = {n: t.detach().cpu().contiguous() for n, t in adapter_tensors(model).items()}
    metadata = _metadata(model, set(tensors))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of an adapter file; a one-line error for anything else."""
    tensors, metadata = load_safetensors(path, what="adapter file")
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path}: not a domainmona adapter (no '{FORMAT}' metadata)")
    return tensors, metadata


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Restore an adapter file into `model` (injecting its method first if the model has none); refuses,
    with the reason, a file made for another method, backbone or base weights."""
    tensors, meta = read_adapter(path)
    name = Path(path).name
    if not adapted_backbones(model):
        inject(model, meta["method"], **json.loads(meta["config"]))
    prefix, root, state = _the_backbone(model)
    config = json.dumps(state.config, sort_keys=True)
    if (state.method, config) != (meta["method"], meta["config"]):
        raise UserError(f"{name} holds a '{meta['method']}' adapter {meta['config']}, the model has "
                        f"'{state.method}' {config}")
    if backbone_id(root) != meta["backbone"]:
        raise UserError(f"{name} is for backbone {meta['backbone']}, this model's is {backbone_id(root)}")
    actual = _metadata(model, set(tensors))["base_fingerprint"]
    if actual != meta["base_fingerprint"]:
        raise UserError(f"{name} was trained on other base weights (fingerprint {meta['base_fingerprint'][:12]} "
                        f"vs {actual[:12]}): load the same pretrained backbone first")
    _copy_checked(model, tensors, name)
    return model


def _copy_checked(model: nn.Module, tensors: dict[str, torch.Tensor], name: str) -> None:
    targets = model.state_dict(keep_vars=True)
    unknown = sorted(set(tensors) - set(targets))
    if unknown:
        raise UserError(f"{name} has {len(unknown)} tensors this model lacks, e.g. '{unknown[0]}'")
    for key, tensor in tensors.items():
        if targets[key].shape != tensor.shape:
            raise UserError(f"{name}: '{key}' has shape {tuple(tensor.shape)}, the model expects "
                            f"{tuple(targets[key].shape)}")
    missing = sorted(set(adapter_tensors(model)) - set(tensors))
    if missing:
        raise UserError(f"{name} lacks {len(missing)} trainable tensors of this model, e.g. '{missing[0]}'")
    with torch.no_grad():
        for key, tensor in tensors.items():
            targets[key].copy_(tensor)
