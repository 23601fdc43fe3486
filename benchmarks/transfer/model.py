"""The adapted model: the micro Swin backbone and a light multi-level segmentation head (trains fully)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from domainmona.detection.train import MICRO_WEIGHTS

MICRO = dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, drop_path_rate=0.0)
WIDTHS = (32, 64, 128, 256)


class SegmentationHead(nn.Module):
    """Each stage projected to `dim` channels, upsampled to stride 4 and summed, then classified per pixel."""

    def __init__(self, n_classes: int, dim: int = 32) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(w, dim, 1) for w in WIDTHS)
        self.classify = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, n_classes, 1))

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        fine = features[0].shape[-2:]
        summed = sum(F.interpolate(p(f), size=fine, mode="bilinear", align_corners=False)
                     for p, f in zip(self.project, features))
        return F.interpolate(self.classify(summed), size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = SegmentationHead(n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images), images.shape[-2:])


def pretrained_micro_swin() -> nn.Module:
    """The shipped source-pretrained micro Swin (domainmona/assets, see domainmona.detection.pretrain_micro)."""
    from mmdet.models.backbones.swin import SwinTransformer

    from domainmona.adapters import load_pretrained

    backbone = SwinTransformer(**MICRO)
    report = load_pretrained(backbone, MICRO_WEIGHTS)
    if report.missing:
        raise RuntimeError(f"{MICRO_WEIGHTS} does not cover the micro Swin: {report}")
    return backbone
