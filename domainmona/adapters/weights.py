"""Reading weight files safely and loading the tensors that match a module, with an honest count."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from domainmona.adapters.bands import input_filters, inflate_to
from domainmona.adapters.identity import persistent_buffers
from domainmona.adapters.inject import adapter_parameter_names
from domainmona.errors import UserError
from domainmona.io import load_safetensors, load_torch

# Containers around the weights, outermost first: DINO's teacher before its student, OpenMMLab/MoCo `state_dict`,
# MAE/DeiT/Microsoft `model`.
_WRAPPERS = ("teacher", "state_dict", "model", "module", "net")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The tensors of a .safetensors file or a torch checkpoint read with `weights_only=True` (never runs
    pickled code; argparse options, which MAE, DINO and MoCo save beside their weights, are plain data), and the
    containers (`_WRAPPERS`) opened to reach them."""
    path = Path(path)
    if path.suffix == ".safetensors":
        data, _ = load_safetensors(path, what="weights file")
    else:
        data = load_torch(path, allow=[argparse.Namespace], what="weights file")
    opened = []
    while isinstance(data, dict):
        name = next((k for k in _WRAPPERS if isinstance(data.get(k), dict)), None)
        if name is None:
            break
        data = data[name]
        opened.append(name)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise UserError(f"{path}: holds no tensors")
    return tensors, tuple(opened)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from its containers (see `read_checkpoint`)."""
    return read_checkpoint(path)[0]


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep only keys under `prefix` (without it) when any key has it; else return the dict unchanged."""
    if not any(k.startswith(prefix) for k in tensors):
        return tensors
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass
class LoadReport:
    """What a weights load did: tensors loaded (`inflated`: RGB input filters loaded inflated to the model's bands),
    model tensors left untouched, file tensors unused (`mismatched`: those whose name fits but shape does not)."""

    source: str
    layout: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        inflated = f" ({len(self.inflated)} inflated from RGB)" if self.inflated else ""
        return (f"{self.source} ({self.layout} layout): loaded {self.loaded} tensors{inflated}, "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected")


def canonical_name(key: str) -> str:
    """timm feature wrappers flatten `layers.0` into `layers_0`; compare keys in the nested form."""
    return re.sub(r"^([A-Za-z]+)_(\d+)\.", r"\1.\2.", key)


def load_matching(module: nn.Module, tensors: dict[str, torch.Tensor], report: LoadReport,
                  expect_adapters: bool = False, inflate: bool = False,
                  check: Callable[[LoadReport], None] | None = None, prefix: str = "") -> LoadReport:
    """Copy every tensor whose (canonical) name and shape match one of `module`'s own weights; count the rest.
    Adapter parameters count as missing only with `expect_adapters` (pretrained files never hold them). With
    `inflate`, RGB filters for an input convolution on other bands load inflated (domainmona.adapters.bands).
    `check` sees the counts before anything is copied and may raise to load nothing. The file's names start
    at `prefix` in the module (the report keeps the file's names)."""
    targets = dict(module.named_parameters())
    targets.update(persistent_buffers(module))
    by_canonical = {canonical_name(k): k for k in targets}
    first = input_filters(module) if inflate else None
    copies = {}
    for key, tensor in tensors.items():
        target = by_canonical.get(canonical_name(prefix + key))
        if target is not None and targets[target].shape != tensor.shape and target == first:
            inflated = inflate_to(tensor, targets[target])
            if inflated is not None:
                tensor = inflated
                report.inflated.append(key)
        if target is None or targets[target].shape != tensor.shape:
            report.unexpected.append(key)
            if target is not None:
                report.mismatched.append(key)
            continue
        copies[target] = tensor
    report.loaded += len(copies)
    added = set() if expect_adapters else adapter_parameter_names(module)
    report.missing += sorted(k for k in targets if k not in copies and k not in added)
    if check is not None:
        check(report)
    with torch.no_grad():
        for target, tensor in copies.items():
            targets[target].copy_(tensor)
    return report
