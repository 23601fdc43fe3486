"""Plain ViTs (timm `vision_transformer` and SAM's `vision_transformer_sam`, patch 16): the shape of most remote-sensing
and medical foundation models. One stride-16 map from the last block, made a pyramid by ViTDet's simple feature
pyramid (the baseline the side networks are compared with). Any input size that is a multiple of 16 (position
embeddings resampled to each input's grid). Weights: timm, MAE-style `{"model": ...}`, DINO teacher, MoCo v3 base
encoder, Prithvi's MAE; SAM's image encoder (domainmona.adapters.pretrained, converters in vit_weights.py)."""

from __future__ import annotations

from typing import Any

from domainmona.adapters.backbones import IMAGENET_MEAN, INFLATE, Backbone, register_backbone
from domainmona.adapters.backbones.features import SimpleFeaturePyramid

VIT_LAYOUTS = ("timm", "mae", "dino", "moco", "openmmlab", "prithvi")
SAM_LAYOUTS = ("sam", "timm")
# Prithvi-EO-1.0-100M's per-band statistics of its HLS pretraining data, as its model card publishes them
# (huggingface.co/ibm-nasa-geospatial/Prithvi-EO-1.0-100M, Prithvi_100M_config.yaml `data_mean`/`data_std`), in
# HLS's integer surface reflectance (reflectance x 10000). The registry's means and stds are on a 0-1 scale (the
# share of the pixel format's full range: 8-bit RGB / 255, HLS reflectance / 10000), so these are divided by it.
HLS_SCALE = 10000.0
PRITHVI_BANDS = ("Blue (B02)", "Green (B03)", "Red (B04)", "narrow NIR (B05)", "SWIR1 (B06)", "SWIR2 (B07)")
PRITHVI_MEAN = tuple(v / HLS_SCALE for v in (775.2290211032589, 1080.992780391705, 1228.5855250417867,
                                              2497.2022620507532, 2204.2139147975554, 1610.8324823273745))
PRITHVI_STD = tuple(v / HLS_SCALE for v in (1281.526139861424, 1270.0297974547493, 1399.4802505642526,
                                             1368.3446143747644, 1291.6764008585435, 1154.505683480695))


def _vit(name: str, timm_name: str, dim: int, summary: str, family: str = "timm-vit",
         layouts: tuple[str, ...] = VIT_LAYOUTS, torch_layer_norm: bool = False, **facts: Any) -> Backbone:
    """A timm ViT as a features module: `torch_layer_norm` builds torch's LayerNorm (eps 1e-5, what Prithvi's
    MAE trained with) in place of timm's (eps 1e-6)."""
    def build(in_chans: int = 3, **options):
        from domainmona.adapters.backbones.features import TimmFeatures

        if family == "timm-vit":  # SAM's ViT resamples its position embedding to every input by itself
            options.setdefault("dynamic_img_size", True)
        if torch_layer_norm:
            from torch import nn

            options.setdefault("norm_layer", nn.LayerNorm)
        return TimmFeatures(timm_name, in_chans, (-1,), simple_pyramid=True,
                            pretrained_bands=len(facts.get("mean", IMAGENET_MEAN)), **options)

    return Backbone(name=name, build=build, family=family, channels=SimpleFeaturePyramid.channels(dim),
                    strides=(4, 8, 16, 32), layouts=layouts, summary=summary, pyramid="simple", **facts)


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


@register_backbone
def prithvi_100m() -> Backbone:
    return _vit(name="prithvi-100m", timm_name="vit_base_patch16_224", dim=768, torch_layer_norm=True,
                summary="Prithvi-EO-1.0-100M (IBM/NASA, HLS), ViT-B/16 on 6 bands, one frame, 86 M",
                mean=PRITHVI_MEAN, std=PRITHVI_STD,
                bands=f"a Prithvi file loads its 6 filters on its 6 HLS bands, in its order "
                      f"({', '.join(PRITHVI_BANDS)}), and is refused on other band counts; an RGB file: {INFLATE}")


@register_backbone
def sam_vit_b() -> Backbone:
    return _vit(name="sam-vit-b", timm_name="samvit_base_patch16", dim=768, family="timm-sam", layouts=SAM_LAYOUTS,
                summary="SAM ViT-B image encoder (SAM, MedSAM), windowed attention, 89 M")
