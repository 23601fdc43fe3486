"""Swin Transformers (Liu et al. 2021) in the Mona paper's sizes, and domainmona's micro Swin.

Built as OpenMMLab/mmdet `SwinTransformer` (detection's backbone and the adapter core's reference); the
segmentation pipeline builds the same shape as timm's Swin (`timm`), an smp `tu-` encoder. Pretrained files in the
Microsoft, timm and OpenMMLab layouts load into either (domainmona.adapters.pretrained converts).
"""

from __future__ import annotations

from pathlib import Path

from domainmona.adapters.backbones import Backbone, register_backbone

SWIN_LAYOUTS = ("microsoft-swin", "timm-swin", "openmmlab-swin")
# pretrained by domainmona.detection.pretrain_micro (OpenMMLab layout; loads into timm's Swin too)
MICRO_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "micro_swin.safetensors"


def _swin(name: str, timm_name: str, embed: int, depths: tuple[int, ...], heads: tuple[int, ...],
          summary: str, shipped: Path | None = None, **timm_kwargs) -> Backbone:
    shape = dict(embed_dims=embed, depths=depths, num_heads=heads)

    def build(in_chans: int = 3, **options):
        from mmdet.models.backbones.swin import SwinTransformer

        return SwinTransformer(in_channels=in_chans, **shape, **options)

    return Backbone(name=name, build=build, family="mmdet-swin", channels=tuple(embed * 2 ** i for i in range(4)),
                    strides=(4, 8, 16, 32), layouts=SWIN_LAYOUTS, summary=summary,
                    timm=(timm_name, {"embed_dim": embed, "depths": depths, "num_heads": heads, **timm_kwargs}),
                    options={"mmdet": shape}, shipped=shipped)


@register_backbone
def micro() -> Backbone:
    # CPU-sized (1.4 M parameters), its pretrained weights shipped
    return _swin(name="micro", timm_name="swin_tiny_patch4_window7_224", embed=32, depths=(1, 1, 2, 1),
                 heads=(1, 2, 4, 8), summary="domainmona's micro Swin for CPU runs (weights shipped)",
                 shipped=MICRO_WEIGHTS, drop_path_rate=0.0)


@register_backbone
def swin_t() -> Backbone:
    return _swin(name="swin-t", timm_name="swin_tiny_patch4_window7_224", embed=96, depths=(2, 2, 6, 2),
                 heads=(3, 6, 12, 24), summary="Swin-T, 28 M")


@register_backbone
def swin_s() -> Backbone:
    return _swin(name="swin-s", timm_name="swin_small_patch4_window7_224", embed=96, depths=(2, 2, 18, 2),
                 heads=(3, 6, 12, 24), summary="Swin-S, 50 M")


@register_backbone
def swin_b() -> Backbone:
    return _swin(name="swin-b", timm_name="swin_base_patch4_window7_224", embed=128, depths=(2, 2, 18, 2),
                 heads=(4, 8, 16, 32), summary="Swin-B, 88 M")


@register_backbone
def swin_l() -> Backbone:
    return _swin(name="swin-l", timm_name="swin_large_patch4_window7_224", embed=192, depths=(2, 2, 18, 2),
                 heads=(6, 12, 24, 48), summary="Swin-L, 197 M")
