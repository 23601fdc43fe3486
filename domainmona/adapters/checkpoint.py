"""Adapter checkpoints: the adapter tensors of a model's adapted backbone (recorded at injection, never matched by
name) plus the modules a task trains around it (`modules_to_save`), in safetensors, with what they need to match."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from domainmona import __version__
from domainmona.adapters.identity import backbone_id, frozen_fingerprint, persistent_buffers
from domainmona.adapters.inject import adapted_backbones, adapter_parameter_names, inject, method_parameter_names
from domainmona.errors import UserError
from domainmona.io import atomic_path, load_safetensors

FORMAT = "domainmona-adapter"


def file_tensors(model: nn.Module, modules_to_save: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """What an adapter file of `model` holds: the parameters its adapted backbone's method trains (added at
    injection, or base weights it trains), the persistent buffers of modules whose base weights train (the
    statistics of a BatchNorm that trains) or that injection added whole, and every parameter and persistent
    buffer of the `modules_to_save`. (Not the buffers of a frozen layer that merely gained a tensor, such as an
    attention's position index beside VPT's prompts.)"""
    method, added = method_parameter_names(model), adapter_parameter_names(model)
    inside = tuple(f"{m}." for m in modules_to_save)
    tensors = {n: p for n, p in model.named_parameters() if n in method or n.startswith(inside)}
    for owner_name, owner in model.named_modules():
        prefix = f"{owner_name}." if owner_name else ""
        own = [prefix + n for n, _ in owner.named_parameters(recurse=False)]
        trains_base = any(n in method and n not in added for n in own)
        if trains_base or (own and all(n in added for n in own)) or prefix.startswith(inside):
            tensors.update((prefix + n, b) for n, b in persistent_buffers(owner).items() if "." not in n)
    return tensors


def _checked_modules(model: nn.Module, modules_to_save: Iterable[str], what: str) -> tuple[str, ...]:
    """`modules_to_save` as a tuple, each a submodule of `model`; a one-line error naming the first that is not."""
    modules = tuple(modules_to_save)
    for name in modules:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise UserError(f"{what} names module '{name}' in modules_to_save, which {type(model).__name__} "
                            f"does not have") from None
    return modules


def _parts(model: nn.Module, saved: set[str]) -> list[dict[str, str]]:
    """What each adapted backbone of `model` needs to match: method, config, backbone id, base-weight fingerprint
    and its path in `model`."""
    found = adapted_backbones(model)
    if not found:
        raise UserError(f"{type(model).__name__} has no adapters: call inject(model, method) first")
    parts = []
    for prefix, root, state in found:
        inner = {n[len(prefix) + 1:] if prefix else n for n in saved if not prefix or n.startswith(prefix + ".")}
        parts.append({"method": state.method, "config": json.dumps(state.config, sort_keys=True),
                      "backbone": backbone_id(root), "base_fingerprint": frozen_fingerprint(root, inner),
                      "prefix": prefix})
    return parts


def _metadata(model: nn.Module, saved: set[str]) -> dict[str, str]:
    """The first adapted backbone's record at the top level; a model with several (a segmentation network adapted
    in its encoder and its decoder stages) lists them all under `parts`."""
    parts = _parts(model, saved)
    several = {"parts": json.dumps(parts)} if len(parts) > 1 else {}
    return {"format": FORMAT, "version": __version__, **parts[0], **several}


def save_adapter(model: nn.Module, path: str | os.PathLike, modules_to_save: Iterable[str] = ()) -> Path:
    """Write `model`'s adapter tensors (see `file_tensors`) and every tensor of its `modules_to_save` (paths in
    `model`: a detector's neck and heads, a segmenter's decoder) to a safetensors file with the method, config,
    backbone id, base-weight fingerprint and the modules_to_save. A trainable tensor that is neither is refused,
    not dropped: name its module in `modules_to_save` (or freeze it)."""
    if any(getattr(m, "is_fused", False) for m in model.modules()):
        raise UserError("this model's Monas are fused (inference form): save the adapter before calling fuse()")
    modules = _checked_modules(model, modules_to_save, "save_adapter")
    tensors = {n: t.detach().cpu().contiguous() for n, t in file_tensors(model, modules).items()}
    metadata = _metadata(model, set(tensors))  # refuses a model without adapters
    uncovered = [n for n, p in model.named_parameters() if p.requires_grad and n not in tensors]
    if uncovered:
        raise UserError(f"'{uncovered[0]}' trains but is neither an adapter tensor nor in modules_to_save "
                        f"({', '.join(modules) or 'none given'}; {len(uncovered)} such tensors): name its module in "
                        f"modules_to_save, or freeze it")
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata | {"modules_to_save": json.dumps(modules)})
    return path


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of an adapter file; a one-line error for anything else."""
    tensors, metadata = load_safetensors(path, what="adapter file")
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path}: not a domainmona adapter (no '{FORMAT}' metadata)")
    return tensors, metadata


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Restore an adapter file into `model` (injecting its method first if the model has none); refuses,
    with the reason, a file made for another method, backbone or base weights, or naming modules_to_save the
    model lacks. A file written before modules_to_save existed restores what it holds."""
    tensors, meta = read_adapter(path)
    name = Path(path).name
    several = "parts" in meta
    parts = json.loads(meta["parts"]) if several else [meta]
    if not adapted_backbones(model):
        for part in parts:
            target = _checked_modules(model, [part["prefix"]], name)[0] if several else ""
            inject(model.get_submodule(target), part["method"], **json.loads(part["config"]))
    actual = _parts(model, set(tensors))
    if len(actual) != len(parts) or (several and [p["prefix"] for p in actual] != [p["prefix"] for p in parts]):
        raise UserError(f"{name} adapts {', '.join(repr(p['prefix']) for p in parts)}, this model "
                        f"{', '.join(repr(p['prefix']) for p in actual)}")
    for part, now in zip(parts, actual):
        where = f" at '{part['prefix']}'" if several else ""
        if (now["method"], now["config"]) != (part["method"], part["config"]):
            raise UserError(f"{name} holds a '{part['method']}' adapter {part['config']}{where}, the model has "
                            f"'{now['method']}' {now['config']}")
        if now["backbone"] != part["backbone"]:
            raise UserError(f"{name} is for backbone {part['backbone']}{where}, this model's is {now['backbone']}")
        if now["base_fingerprint"] != part["base_fingerprint"]:
            raise UserError(f"{name} was trained on other base weights{where} (fingerprint "
                            f"{part['base_fingerprint'][:12]} vs {now['base_fingerprint'][:12]}): load the same "
                            "pretrained backbone first")
    modules = _checked_modules(model, json.loads(meta.get("modules_to_save", "[]")), name)
    _copy_checked(model, tensors, name, set(file_tensors(model, modules)))
    return model


def _copy_checked(model: nn.Module, tensors: dict[str, torch.Tensor], name: str, expected: set[str]) -> None:
    """Copy `tensors` into `model`, refusing unknown keys, other shapes, and a file without every `expected`
    tensor or trainable parameter of the model."""
    targets = model.state_dict(keep_vars=True)
    unknown = sorted(set(tensors) - set(targets))
    if unknown:
        raise UserError(f"{name} has {len(unknown)} tensors this model lacks, e.g. '{unknown[0]}'")
    for key, tensor in tensors.items():
        if targets[key].shape != tensor.shape:
            raise UserError(f"{name}: '{key}' has shape {tuple(tensor.shape)}, the model expects "
                            f"{tuple(targets[key].shape)}")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted((expected | trainable) - set(tensors))
    if missing:
        raise UserError(f"{name} lacks {len(missing)} trainable tensors of this model, e.g. '{missing[0]}'")
    with torch.no_grad():
        for key, tensor in tensors.items():
            targets[key].copy_(tensor)
