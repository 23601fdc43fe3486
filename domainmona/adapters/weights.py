"""Reading weight files safely and loading the tensors that match a module, with an honest count."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from domainmona.adapters.identity import persistent_buffers
from domainmona.adapters.inject import adapter_parameter_names
from domainmona.errors import UserError
from domainmona.io import load_safetensors, load_torch

_WRAPPERS = ("state_dict", "model", "module", "net")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint read with `weights_only=True` (never runs
    pickled code), unwrapped from `state_dict` / `model` containers."""
    path = Path(path)
    if path.suffix == ".safetensors":
        data, _ = load_safetensors(path, what="weights file")
    else:
        data = load_torch(path, what="weights file")
    while isinstance(data, dict):
        inner = next((data[k] for k in _WRAPPERS if isinstance(data.get(k), dict)), None)
        if inner is None:
            break
        data = inner
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise UserError(f"{path}: holds no tensors")
    return tensors


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep only keys under `prefix` (without it) when any key has it; else return the dict unchanged."""
    if not any(k.startswith(prefix) for k in tensors):
        return tensors
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass
class LoadReport:
    """What a weights load did: tensors loaded, model tensors left untouched, file tensors unused."""

    source: str
    layout: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.source} ({self.layout} layout): loaded {self.loaded} tensors, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected")


def _canonical(key: str) -> str:
    """timm feature wrappers flatten `layers.0` into `layers_0`; compare keys in the nested form."""
    return re.sub(r"^([A-Za-z]+)_(\d+)\.", r"\1.\2.", key)


def load_matching(module: nn.Module, tensors: dict[str, torch.Tensor], report: LoadReport,
                  expect_adapters: bool = False) -> LoadReport:
    """Copy every tensor whose (canonical) name and shape match one of `module`'s own weights; count the rest.
    Adapter parameters count as missing only with `expect_adapters` (pretrained files never hold them)."""
    targets = dict(module.named_parameters())
    targets.update(persistent_buffers(module))
    by_canonical = {_canonical(k): k for k in targets}
    used = set()
    with torch.no_grad():
        for key, tensor in tensors.items():
            target = by_canonical.get(_canonical(key))
            if target is None or targets[target].shape != tensor.shape:
                report.unexpected.append(key)
                continue
            targets[target].copy_(tensor)
            used.add(target)
    report.loaded += len(used)
    added = set() if expect_adapters else adapter_parameter_names(module)
    report.missing += sorted(k for k in targets if k not in used and k not in added)
    return report
