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


def _unfold_order_back(v: torch.Tensor) -> torch.Tensor:
    """Undo swin_converter's reordering of the 4 merged sub-patches in a patch-merging weight (last dim)."""
    lead, channels = v.shape[:-1], v.shape[-1]
    v = v.reshape(*lead, channels // 4, 4).transpose(-1, -2)  # (..., 4 in OpenMMLab order, C/4)
    return v[..., [0, 2, 1, 3], :].reshape(*lead, channels)   # the permutation is its own inverse


def convert_mmdet_to_microsoft(tensors: Tensors) -> Tensors:
    """OpenMMLab Swin names and merge order back to the official Microsoft layout: the inverse of mmdet's
    `swin_converter`, which exists in one direction only. The per-stage output norms (`norm0..3`) have no
    Microsoft counterpart and are left out."""
    out = {}
    for key, value in tensors.items():
        if re.match(r"norm\d\.", key):
            continue
        if key.startswith("stages."):
            key = "layers." + key[len("stages."):]
            key = key.replace(".attn.w_msa.", ".attn.").replace(".ffn.layers.0.0.", ".mlp.fc1.")
            key = key.replace(".ffn.layers.1.", ".mlp.fc2.")
            if ".downsample." in key and (".reduction." in key or ".norm." in key):
                value = _unfold_order_back(value)
        elif key.startswith("patch_embed.projection."):
            key = key.replace("patch_embed.projection.", "patch_embed.proj.")
        out[key] = value
    return out


def _convert_to_timm(tensors: Tensors, layout: str) -> Tensors:
    if layout == "openmmlab-swin":
        tensors, layout = convert_mmdet_to_microsoft(tensors), "microsoft-swin"
    return _shift_downsample(tensors, +1) if layout == "microsoft-swin" else tensors


_CONVERTERS = {
    "mmdet-swin": convert_to_mmdet,
    "timm-swin": _convert_to_timm,
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
