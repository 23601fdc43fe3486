"""Mona, the Multi-cognitive Visual Adapter (arXiv 2408.08345), in 2D and 3D, with exact fusion.

Parameter names follow the official code (`norm, gamma, gammax, project1, project2,
adapter_conv.conv1|conv2|conv3|projector`) so official checkpoints load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.modules.recompute import Recomputable

_CONVS = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_FNS = {2: F.conv2d, 3: F.conv3d}


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv as a matmul over channels-last pixels: on CPU a 1x1 conv takes the im2col path with a copy in
    and out, twice the time of the same FLOPs as one matmul. Returns a channels-last (B, C, *spatial) map,
    which Mona turns back into tokens without a copy."""
    return F.linear(x.movedim(1, -1), weight.flatten(1), bias).movedim(-1, 1)


class MonaConv(nn.Module):
    """Multi-cognitive filter: mean of depthwise 3/5/7 convs plus identity, then a 1x1 conv with its own skip.

    Computed as one 7^d depthwise conv and one 1x1 conv whose weights are built, differentiably, from the
    official parameters on every call: the same function and gradients as running the three convs, the
    mean and both skips separately, for about a third of the conv work in training too.
    """

    def __init__(self, channels: int, spatial_dims: int = 2):
        super().__init__()
        conv = _CONVS[spatial_dims]
        self.spatial_dims = spatial_dims
        self.conv1 = conv(channels, channels, 3, padding=1, groups=channels)
        self.conv2 = conv(channels, channels, 5, padding=2, groups=channels)
        self.conv3 = conv(channels, channels, 7, padding=3, groups=channels)
        self.projector = conv(channels, channels, 1)

    def combined_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(depthwise kernel, its bias, 1x1 weight, its bias) of the equivalent two-conv form."""
        dims, channels = self.spatial_dims, self.conv3.in_channels
        ones = torch.ones((channels, 1) + (1,) * dims, dtype=self.conv3.weight.dtype, device=self.conv3.weight.device)
        kernel = (self.conv3.weight + F.pad(self.conv2.weight, (1, 1) * dims)
                  + F.pad(self.conv1.weight, (2, 2) * dims)) / 3.0 + F.pad(ones, (3, 3) * dims)  # + identity tap
        bias = (self.conv1.bias + self.conv2.bias + self.conv3.bias) / 3.0
        eye = torch.eye(channels, dtype=ones.dtype, device=ones.device).view(channels, channels, *(1,) * dims)
        return kernel, bias, self.projector.weight + eye, self.projector.bias

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The official formulation step by step: the executable specification `forward` must equal."""
        x = (self.conv1(x) + self.conv2(x) + self.conv3(x)) / 3.0 + x
        return x + self.projector(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, bias, weight, projector_bias = self.combined_weights()
        return pointwise(_CONV_FNS[self.spatial_dims](x, kernel, bias, padding=3, groups=x.shape[1]), weight,
                         projector_bias)

    @torch.no_grad()
    def fused(self) -> "FusedMonaConv":
        """The two-conv form with its weights computed once (inference)."""
        fused = FusedMonaConv(self.conv3.in_channels, self.spatial_dims).to(self.conv3.weight)
        for target, value in zip((fused.depthwise.weight, fused.depthwise.bias, fused.pointwise.weight,
                                  fused.pointwise.bias), self.combined_weights()):
            target.copy_(value)
        return fused


class FusedMonaConv(nn.Module):
    """Inference form of `MonaConv`: plain convs holding the combined weights."""

    def __init__(self, channels: int, spatial_dims: int = 2):
        super().__init__()
        conv = _CONVS[spatial_dims]
        self.depthwise = conv(channels, channels, 7, padding=3, groups=channels)
        self.pointwise = conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(self.depthwise(x), self.pointwise.weight, self.pointwise.bias)


class Mona(Recomputable, nn.Module):
    """2D Mona on tokens (B, N, C) with N = H*W; leading prefix tokens (CLS, registers) skip the conv path.
    In training it keeps only its input for backward (see `Recomputable`)."""

    spatial_dims = 2

    def __init__(self, dim: int, inner_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(dim))
        self.project1 = nn.Linear(dim, inner_dim)
        self.adapter_conv: nn.Module = MonaConv(inner_dim, self.spatial_dims)
        self.dropout = nn.Dropout(dropout)
        self.project2 = nn.Linear(inner_dim, dim)
        # The official backbones apply Swin's init (truncated normal, std 0.02, zero bias) to every Linear,
        # Mona's included, before loading pretrained weights: start from the same place.
        for linear in (self.project1, self.project2):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, hw_shape, num_prefix_tokens: int = 0) -> torch.Tensor:
        return self.recomputed(self._forward, x, hw_shape, num_prefix_tokens)

    def _forward(self, x: torch.Tensor, hw_shape, num_prefix_tokens: int) -> torch.Tensor:
        identity = x
        # LN(x) * gamma as one LayerNorm with affine (weight * gamma, bias * gamma): the same values, and
        # autograd keeps no normalised copy of x for gamma's gradient. Results are updated in place where
        # autograd allows: on CPU every fresh large tensor costs page faults, a large share of a Mona's time.
        norm = self.norm
        scaled = F.layer_norm(x, norm.normalized_shape, norm.weight * self.gamma, norm.bias * self.gamma, norm.eps)
        x = self.project1(scaled.addcmul_(x, self.gammax))
        prefix, tokens = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
        batch, count, channels = tokens.shape
        spatial = tuple(int(s) for s in hw_shape)
        if len(spatial) != self.spatial_dims or math.prod(spatial) != count:
            raise ValueError(f"{type(self).__name__}: {count} tokens do not form a map of shape {spatial}")
        grid = tokens.reshape(batch, *spatial, channels).movedim(-1, 1)
        tokens = self.adapter_conv(grid).movedim(1, -1).reshape(batch, count, channels)
        x = torch.cat((prefix, tokens), dim=1) if num_prefix_tokens else tokens
        x = F.gelu(x) if torch.is_grad_enabled() and x.requires_grad else torch.ops.aten.gelu_(x)
        return self.project2(self.dropout(x)).add_(identity)

    def reference_forward(self, x: torch.Tensor, hw_shape) -> torch.Tensor:
        """The official module step by step (no prefix tokens): the executable specification for tests and
        benchmarks; `forward` computes the same function faster."""
        h = self.project1(self.norm(x) * self.gamma + x * self.gammax)
        batch, count, channels = h.shape
        grid = self.adapter_conv.reference_forward(h.transpose(1, 2).reshape(batch, channels, *hw_shape))
        h = grid.reshape(batch, channels, count).transpose(1, 2)
        return x + self.project2(self.dropout(F.gelu(h)))

    @property
    def is_fused(self) -> bool:
        return isinstance(self.adapter_conv, FusedMonaConv)

    def fuse(self) -> None:
        """Swap the conv path for its exact inference form (`FusedMonaConv`): for inference only, not for
        training or adapter files."""
        if not self.is_fused:
            self.adapter_conv = self.adapter_conv.fused()


class Mona3d(Mona):
    """3D Mona for volumes: tokens (B, N, C) with N = D*H*W, depthwise Conv3d 3/5/7."""

    spatial_dims = 3
