"""domainmona's micro ViT: a plain patch-16 ViT small enough to pretrain and adapt on a CPU, the stand-in for the
pretrained plain ViTs (ViT-B/16 MAE, Prithvi, SSL4EO) that the side networks (domainmona.adapters.side) and
in-ViT methods are compared on, as the micro Swin stands in for an ImageNet Swin.

Width 96, 12 blocks (4 groups of 3 for HST's stages and ViT-CoMer's interactions), 3 heads, a class token; built
at 96 px (a 6x6 grid, the transfer study's), position embeddings resampled to other grids. Its weights ship in
domainmona/assets/, pretrained by `python -m domainmona.detection.pretrain_micro --backbone micro-vit` (timm
layout, recipe in the file's metadata).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from domainmona.adapters.backbones import Backbone, register_backbone
from domainmona.adapters.backbones.vit import _vit

MICRO_VIT_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "micro_vit.safetensors"
# timm's ViT-Ti/16 (3 heads) at half its width: 1.42 M parameters, as many as the micro Swin's 1.43 M
MICRO_VIT_SHAPE = dict(embed_dim=96, depth=12, num_heads=3, img_size=96)


@register_backbone
def micro_vit() -> Backbone:
    spec = _vit(name="micro-vit", timm_name="vit_tiny_patch16_224", dim=MICRO_VIT_SHAPE["embed_dim"],
                summary="domainmona's micro ViT/16 for CPU runs, the stand-in for a pretrained plain ViT "
                        "(weights shipped)", shipped=MICRO_VIT_WEIGHTS)
    return dataclasses.replace(spec, build=functools.partial(spec.build, **MICRO_VIT_SHAPE))
