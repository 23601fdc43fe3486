"""Named backbones built without weights, for reports and benchmarks (`--backbone swin-t` ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from domainmona.errors import UserError

if TYPE_CHECKING:  # the command line reads BACKBONES for its choices without torch
    from torch import nn

# name -> (embed dims, depths, heads) of the Swin sizes in the Mona paper, and domainmona's micro Swin
# (OpenMMLab/mmdet SwinTransformer)
SWIN_SIZES = {
    "swin-t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin-s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin-b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin-l": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
    "micro": (32, (1, 1, 2, 1), (1, 2, 4, 8)),  # the detection pipeline's CPU-sized Swin
}

# Backbones `adapters probe` builds: every mmdet Swin size and MONAI SwinUNETR (here, not in the probe module,
# for the command line's choices at start-up).
SWIN_NAMES = tuple(SWIN_SIZES)
VOLUME_NAMES = ("swinunetr",)
PROBE_BACKBONES = SWIN_NAMES + VOLUME_NAMES


def _mmdet_swin(name: str, **kwargs) -> nn.Module:
    from mmdet.models.backbones.swin import SwinTransformer

    embed, depths, heads = SWIN_SIZES[name]
    return SwinTransformer(embed_dims=embed, depths=depths, num_heads=heads, **kwargs)


def _swinunetr() -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=1, out_channels=14, feature_size=48)


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    **{name: (lambda name=name: _mmdet_swin(name)) for name in SWIN_SIZES},
    "swinunetr": _swinunetr,
    "vit-b": _timm("vit_base_patch16_224"),
    "resnet50": _timm("resnet50"),
    "convnext-t": _timm("convnext_tiny"),
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """A named backbone with random weights; Swin sizes accept mmdet SwinTransformer keyword options."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}' (choose from: {', '.join(BACKBONES)})")
    return _mmdet_swin(name, **kwargs) if name in SWIN_SIZES else BACKBONES[name]()
