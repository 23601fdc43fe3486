"""Pretrained weights into the segment-ct networks, counted; and the adapter file of a trained model.

SwinUNETR takes MONAI's self-supervised Swin weights, in two public formats
 (Tang et al. 2022; Valanarasu et al. 2023):
- `model_swinvit.pt`: {"state_dict": {"module.layers1.0.blocks.0.mlp.fc1.weight", ...}} plus SSL heads —
  the core's `load_pretrained` knows it;
- `ssl_pretrained_weights.pth`: {"model": {"encoder.layers1.0.0.blocks.0.mlp.linear1.weight", ...}} — mapped
  here with MONAI's own `filter_swinunetr`, then loaded by the core's name-and-shape matcher.
`load_state_dict(strict=False)` on either raw file loads nothing without a word: the count is reported and
zero is an error.

UNETR takes a whole MONAI UNETR checkpoint (the model-zoo layout: `vit.…`, `encoder1.…`, possibly under
`state_dict`/`model`, decoder included) or a plain MONAI 3D-ViT state dict (`patch_embedding.…`, `blocks.N.…`,
as MONAI's self-supervised ViTs save their encoder) into its ViT. SegResNet takes a MONAI SegResNet state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.networks.nets.swin_unetr import filter_swinunetr
from torch import nn

from domainmona.console import console
from domainmona.errors import UserError

SSL_PRETRAINED_PREFIX = "encoder."


def load_ssl_weights(model: nn.Module, path: str | Path, verbose: bool = True) -> int:
    """Load either SSL format into `model.swinViT`; return how many tensors were loaded."""
    from domainmona.adapters import LoadReport, load_pretrained
    from domainmona.adapters.weights import load_matching, read_state_dict

    tensors = read_state_dict(path)
    if any(k.startswith(SSL_PRETRAINED_PREFIX) for k in tensors):
        pairs = (filter_swinunetr(k, v) for k, v in tensors.items())
        mapped = {k.removeprefix("swinViT."): v for k, v in (p for p in pairs if p is not None)}
        report = load_matching(model.swinViT, mapped, LoadReport(str(path), "monai-ssl_pretrained_weights"))
        if not report.loaded:
            raise UserError(f"{path}: no tensor fits SwinUNETR's Swin encoder (ssl_pretrained_weights layout; "
                            f"SSL weights need --feature-size 48)")
    else:
        report = load_pretrained(model, path)
    if verbose:
        console.print(f"pretrained: {report}", highlight=False)
    return report.loaded


def load_network_weights(model: nn.Module, name: str, path: str | Path, verbose: bool = True) -> int:
    """Load `path` into network `name` (see the module docstring); return how many tensors were loaded."""
    from domainmona.adapters import LoadReport, load_pretrained
    from domainmona.adapters.weights import load_matching, read_state_dict, strip_prefix

    if name == "swinunetr":
        return load_ssl_weights(model, path, verbose=verbose)
    tensors = strip_prefix(read_state_dict(path), "module.")  # saved from DistributedDataParallel
    if name == "unetr" and not any(k.startswith("vit.") for k in tensors):
        # a bare 3D-ViT file: the core's loader, which also converts between MONAI's perceptron and conv patch
        # embeddings and resamples position embeddings of another patch grid
        report = load_pretrained(model, path)
    else:
        report = load_matching(model, tensors, LoadReport(str(path), f"monai-{name}"))
    if not report.loaded:
        example = next(iter(tensors))
        raise UserError(f"{path}: no tensor fits {type(model).__name__} ({report.layout} layout, e.g. '{example}')")
    if verbose:
        console.print(f"pretrained: {report}", highlight=False)
    return report.loaded


def save_adapter_file(model: nn.Module, model_cfg: dict[str, Any], path: str | Path) -> Path | None:
    """The core's adapter file, holding what it holds in every pipeline: the adapter tensors, and the modules that
    train around the adapted encoder (`modules_to_save`: every top-level module outside it, i.e. the decoder and
    a side network, and the encoder's modules the side network tunes)."""
    from domainmona.adapters import adapted_backbones, save_adapter
    from domainmona.medical.model import tuned_vit_modules

    if model_cfg["adapter"] == "none":
        return None
    encoders = {where.partition(".")[0] for where, _, _ in adapted_backbones(model)}
    outside = [name for name, _ in model.named_children() if name not in encoders]
    return save_adapter(model, path, outside + tuned_vit_modules(model))
