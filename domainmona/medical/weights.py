"""MONAI's self-supervised Swin weights into SwinUNETR, counted; and the adapter-only file of a trained model.

Two public formats (Tang et al. 2022; Valanarasu et al. 2023):
- `model_swinvit.pt`: {"state_dict": {"module.layers1.0.blocks.0.mlp.fc1.weight", ...}} plus SSL heads;
- `ssl_pretrained_weights.pth`: {"model": {"encoder.layers1.0.0.blocks.0.mlp.linear1.weight", ...}}.
Both are mapped to `swinViT.*` names and loaded where name and shape match. `load_state_dict(strict=False)`
on the raw files loads nothing without a word, so the count is reported and zero is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets.swin_unetr import filter_swinunetr
from torch import nn

from domainmona.console import console
from domainmona.errors import UserError
from domainmona.io import atomic_path

# model_swinvit.pt names the MLP layers as the original Swin code; MONAI's Mlp calls them linear1/linear2.
SWINVIT_RENAMES = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))


def _swinvit_key(key: str) -> str:
    key = key.removeprefix("module.")
    for old, new in SWINVIT_RENAMES:
        key = key.replace(old, new)
    return key if key.startswith("swinViT.") else f"swinViT.{key}"


def ssl_state_to_swinunetr(raw: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """(format name, tensors under SwinUNETR names) for either SSL format, or a plain SwinUNETR state dict."""
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        return "model_swinvit", {_swinvit_key(k): v for k, v in raw["state_dict"].items()}
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        pairs = (filter_swinunetr(k, v) for k, v in raw["model"].items())
        return "ssl_pretrained_weights", dict(p for p in pairs if p is not None)
    if isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return "state_dict", {k.removeprefix("module."): v for k, v in raw.items()}
    raise UserError(f"unrecognised weights layout ({type(raw).__name__}); expected MONAI SSL Swin weights")


def load_ssl_weights(model: nn.Module, path: str | Path, verbose: bool = True) -> int:
    """Copy every tensor whose mapped name and shape match into `model`; return how many were loaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors, or objects weights_only refuses to build
        raise UserError(f"{path}: not a loadable PyTorch weights file ({type(exc).__name__})") from None
    layout, tensors = ssl_state_to_swinunetr(raw)
    own = model.state_dict()
    matched = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    mismatched = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    if not matched:
        hint = " (shapes differ: SSL weights need --feature-size 48)" if mismatched else ""
        raise UserError(f"{path}: no tensor matches SwinUNETR's Swin encoder ({layout} layout){hint}")
    model.load_state_dict(matched, strict=False)
    if verbose:
        encoder = sum(1 for k in own if k.startswith("swinViT."))
        console.print(f"pretrained: loaded {len(matched)} of the Swin encoder's {encoder} tensors from {path} "
                      f"({layout}); {len(mismatched)} skipped for shape", highlight=False)
    return len(matched)


def save_adapter_file(model: nn.Module, model_cfg: dict[str, Any], path: str | Path) -> Path | None:
    """The adapters alone (a few MB) as safetensors, with the method and its options as metadata."""
    from safetensors.torch import save_file

    from domainmona.adapters.inject import is_adapter_parameter

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_adapter_parameter(k)}
    if not tensors:
        return None
    metadata = {"method": model_cfg["adapter"], "config": json.dumps(model_cfg["adapter_cfg"]),
                "model": "monai-swinunetr", "feature_size": str(model_cfg["feature_size"])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
