"""Parallel adapter (He et al. ICLR 2022, the MAM adapter's FFN part): FFN(h) + s * W_up ReLU(W_down h)."""

from __future__ import annotations

import torch
from torch import nn

from domainmona.adapters.modules.bottleneck import AdaptFormer
from domainmona.adapters.modules.delta import refer


class ParallelAdapter(AdaptFormer):
    """AdaptFormer's bottleneck fed the FFN's input h = norm2(x). The slot beside the MLP receives the pre-norm
    stream x, so the adapter applies the block's own frozen norm2 (a reference, not a child) itself."""

    def __init__(self, norm: nn.Module, dim: int, inner_dim: int = 64, scale: float = 4.0, dropout: float = 0.0):
        super().__init__(dim, inner_dim, scale, dropout)
        refer(self, "norm", norm)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return super()._forward(self.norm(x))
