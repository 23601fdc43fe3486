"""`load_pretrained(backbone, path)`: pretrained backbone weights from a local file, whatever its layout.

Layouts recognised: official Microsoft Swin (`model` key, downsample at the end of each stage), timm,
OpenMMLab (mmdet/mmpretrain `state_dict`, `backbone.` prefix, `attn.w_msa`), MONAI SSL (`model_swinvit.pt`,
`module.layersN.0.blocks...`). Mismatches are counted, and loading nothing is an error.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from domainmona.adapters.families import find_backbone
from domainmona.adapters.weights import LoadReport, load_matching, read_state_dict, strip_prefix
from domainmona.errors import UserError

Tensors = dict[str, torch.Tensor]


def detect_layout(tensors: Tensors) -> str:
    keys = list(tensors)
    if any(re.match(r"layers\d\.0\.blocks\.", k) for k in keys):
        return "monai-ssl"
    if any(".attn.w_msa." in k for k in keys):
        return "openmmlab-swin"
    if any(k.startswith("layers.0.downsample.") for k in keys):
        return "microsoft-swin"
    if any(k.startswith("layers.1.downsample.") for k in keys):
        return "timm-swin"
    return "plain"


def _shift_downsample(tensors: Tensors, by: int) -> Tensors:
    """Move patch-merging weights `by` stages: timm puts each merge at the start of the next stage, Microsoft
    at the end of the previous one (+1: Microsoft to timm, -1: back). By hand: timm's `checkpoint_filter_fn`
    needs the bare timm model, which smp's feature wrapper is not."""
    out = {}
    for key, value in tensors.items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        out[f"layers.{int(match[1]) + by}.downsample.{match[2]}" if match else key] = value
    return out


def convert_to_mmdet(tensors: Tensors, layout: str) -> Tensors:
    if layout == "timm-swin":
        tensors, layout = _shift_downsample(tensors, -1), "microsoft-swin"
    if layout == "microsoft-swin":
        from mmdet.models.backbones.swin import swin_converter  # Microsoft -> OpenMMLab names and merge order

        return strip_prefix(swin_converter(tensors), "backbone.")
    return tensors


def _to_monai(tensors: Tensors, layout: str) -> Tensors:
    # The same renaming MONAI's SwinUNETR.load_from does by hand (MONAI's Mlp names fc1/fc2 linear1/linear2).
    tensors = strip_prefix(tensors, "swinViT.")
    return {k.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2."): v
            for k, v in tensors.items()}


_CONVERTERS = {
    "mmdet-swin": convert_to_mmdet,
    "timm-swin": lambda t, layout: _shift_downsample(t, +1) if layout == "microsoft-swin" else t,
    "monai-swin": _to_monai,
}


def load_pretrained(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load pretrained weights into the backbone inside `backbone`; returns the counts (see `LoadReport`)."""
    tensors = strip_prefix(strip_prefix(read_state_dict(path), "module."), "backbone.")
    layout = detect_layout(tensors)
    _, root, family = find_backbone(backbone)
    convert = _CONVERTERS.get(family.name, lambda t, layout: t)
    report = load_matching(root, convert(tensors, layout), LoadReport(str(path), layout))
    if not report.loaded:
        example = next(iter(tensors))
        raise UserError(f"{path}: no tensor fits this {family.name} backbone ({layout} layout, e.g. '{example}')")
    return report
