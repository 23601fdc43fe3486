"""Official Mona checkpoints: Leiyi-Hu/mona (mmdet 2.x, Microsoft Swin layout, `my_module_1/2`) and
VisionXLab STAR-MMRotate (OpenMMLab Swin layout, `mona1/2`), remapped onto an injected mmdet Swin."""

from __future__ import annotations

import os

from torch import nn

from domainmona.adapters.families.host import POST_ATTN, POST_MLP
from domainmona.adapters.inject import adapted_backbones, adapter_parameter_names, inject
from domainmona.adapters.pretrained import convert_to_mmdet
from domainmona.adapters.weights import LoadReport, load_matching, read_state_dict, strip_prefix
from domainmona.errors import UserError

# layout -> (source layout of the Swin weights, names of the two Monas of a block)
_LAYOUTS = {"leiyi-hu-mona": ("microsoft-swin", "my_module_1", "my_module_2"),
            "star-mmrotate": ("openmmlab-swin", "mona1", "mona2")}


def _official_layout(keys) -> str:
    for layout, (_, first, _) in _LAYOUTS.items():
        if any(f".{first}." in k for k in keys):
            return layout
    raise UserError("no official Mona weights in this file (no 'my_module_1' or 'mona1' keys)")


def load_official_mona(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load an official Mona checkpoint into `model`: the whole Swin backbone (frozen weights and Monas)
    and, when `model` is the detector holding it, the modules beside it whose names and shapes match
    (neck, heads). Injects Mona first if the model has no adapters."""
    tensors = strip_prefix(read_state_dict(path), "module.")
    layout = _official_layout(tensors)
    if not adapted_backbones(model):
        inject(model, "mona")
    prefix, root, state = adapted_backbones(model)[0]
    if (state.family, state.method, state.config.get("inner_dim")) != ("mmdet-swin", "mona", 64):
        raise UserError(f"official Mona checkpoints need an mmdet Swin with 'mona' (inner_dim 64); the model has "
                        f"{state.family} with '{state.method}' {state.config}")
    swin_layout, first, second = _LAYOUTS[layout]
    backbone = convert_to_mmdet(strip_prefix(tensors, "backbone."), swin_layout)
    backbone = {k.replace(f".{first}.", f".{POST_ATTN}.").replace(f".{second}.", f".{POST_MLP}."): v
                for k, v in backbone.items()}
    report = LoadReport(str(path), layout)
    if prefix:
        beside = {k: v for k, v in tensors.items() if not k.startswith("backbone.")}
        load_matching(model, {f"{prefix}.{k}": v for k, v in backbone.items()} | beside, report, True)
    else:
        load_matching(root, backbone, report, True)
    added = adapter_parameter_names(model if prefix else root)
    lacking = [k for k in report.missing if k in added]
    if lacking:
        raise UserError(f"{path}: lacks {len(lacking)} Mona tensors of this backbone (e.g. '{lacking[0]}'): "
                        f"it was trained on another Swin size")
    return report
