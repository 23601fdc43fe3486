"""Plain ViTs (timm `vision_transformer`, patch 16): the shape of most remote-sensing and medical foundation
models. One stride-16 map from the last block, made a pyramid by ViTDet's simple feature pyramid (the baseline
the side networks are compared with). Any input size that is a multiple of 16 (position embeddings resized).
Weights: timm, MAE-style `{"model": ...}`, DINO teacher, MoCo v3 base encoder (domainmona.adapters.pretrained)."""

from __future__ import annotations

from domainmona.adapters.backbones import Backbone, register_backbone
from domainmona.adapters.backbones.features import SimpleFeaturePyramid

VIT_LAYOUTS = ("timm", "mae", "dino", "moco", "openmmlab")


def _vit(name: str, timm_name: str, dim: int, summary: str) -> Backbone:
    def build(in_chans: int = 3, **options):
        from domainmona.adapters.backbones.features import TimmFeatures

        options.setdefault("dynamic_img_size", True)
        return TimmFeatures(timm_name, in_chans, (-1,), simple_pyramid=True, **options)

    return Backbone(name=name, build=build, family="timm-vit", channels=SimpleFeaturePyramid.channels(dim),
                    strides=(4, 8, 16, 32), layouts=VIT_LAYOUTS, summary=summary, pyramid="simple")


@register_backbone
def vit_s_16() -> Backbone:
    return _vit(name="vit-s-16", timm_name="vit_small_patch16_224", dim=384, summary="ViT-S/16, 22 M (SSL4EO)")


@register_backbone
def vit_b_16() -> Backbone:
    return _vit(name="vit-b-16", timm_name="vit_base_patch16_224", dim=768,
                summary="ViT-B/16, 86 M (MAE, SatMAE, Prithvi-shaped)")


@register_backbone
def vit_l_16() -> Backbone:
    return _vit(name="vit-l-16", timm_name="vit_large_patch16_224", dim=1024, summary="ViT-L/16, 304 M")
