"""The adapted model: a shipped source-pretrained micro backbone (the micro Swin, or the micro ViT with the
pyramid or side network beside it) and a light multi-level segmentation head (trains fully)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from domainmona.adapters import load_pretrained
from domainmona.adapters.backbones import build_backbone, feature_channels, get_backbone, sided


class SegmentationHead(nn.Module):
    """Each map projected to `dim` channels, upsampled to stride 4 and summed, then classified per pixel."""

    def __init__(self, widths: tuple[int, ...], n_classes: int, dim: int = 32) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(w, dim, 1) for w in widths)
        self.classify = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, n_classes, 1))

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        fine = features[0].shape[-2:]
        summed = sum(F.interpolate(p(f), size=fine, mode="bilinear", align_corners=False)
                     for p, f in zip(self.project, features))
        return F.interpolate(self.classify(summed), size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    def __init__(self, backbone: nn.Module, widths: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = SegmentationHead(widths, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images), images.shape[-2:])


def pretrained_backbone(name: str, side: str | None = None, side_cfg: dict | None = None
                        ) -> tuple[nn.Module, tuple[int, ...]]:
    """The registered backbone `name` with the source-pretrained weights domainmona ships for it (the micro Swin,
    the micro ViT: domainmona/assets, see domainmona.detection.pretrain_micro) and, for a plain ViT, the side
    network `side` (new, random) making its pyramid; and the channels of its maps. No stochastic depth: the
    budget is 100 steps."""
    weights = get_backbone(name).shipped
    backbone = build_backbone(name, drop_path_rate=0.0, **sided(side, side_cfg))
    report = load_pretrained(backbone, weights)
    if report.missing:
        raise RuntimeError(f"{weights} does not cover {name}: {report}")
    return backbone, feature_channels(name, side, side_cfg)
