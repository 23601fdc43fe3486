"""Convolutional bypasses: Convpass (Jie & Deng 2022) and Conv-Adapter (Chen et al. 2022).

Both run beside a frozen layer and add their output to its. Beside attention or an MLP they see the block's norm
output laid out as the un-windowed map (2D or 3D); class/register tokens go through the same convolution as
1x1 images. In training they keep only their input for backward (see `Recomputable`).
"""

from __future__ import annotations

import torch
from torch import nn

from domainmona.adapters.modules.delta import refer, swap_class
from domainmona.adapters.modules.recompute import Recomputable

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def conv_tokens(conv, tokens: torch.Tensor, shape, prefix: int = 0) -> torch.Tensor:
    """`conv` (a size-keeping map -> map callable, channels first) over tokens (B, prefix + prod(shape), C)
    read as the map `shape`; each of the `prefix` leading tokens as a 1x1 image. Returns tokens."""
    batch, _, channels = tokens.shape
    body = tokens[:, prefix:].transpose(1, 2).reshape(batch, channels, *shape)
    out = conv(body).flatten(2).transpose(1, 2)
    if not prefix:
        return out
    ones = tokens[:, :prefix].reshape(batch * prefix, channels, *[1] * len(shape))
    return torch.cat((conv(ones).reshape(batch, prefix, -1), out), dim=1)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class Convpass(Recomputable, nn.Module):
    """s * W_up Drop(QuickGELU(Conv3x3(QuickGELU(W_down LN(x))))) beside attention (LN = norm1) or the MLP
    (norm2); the block's frozen norm is a reference, not a child. W_up starts at zero (an identity at init)."""

    def __init__(self, norm: nn.Module, dim: int, inner_dim: int = 8, scale: float = 1.0, dropout: float = 0.1,
                 spatial_dims: int = 2):
        super().__init__()
        refer(self, "norm", norm)
        self.scale = scale
        self.down = nn.Linear(dim, inner_dim)
        self.conv = _CONV[spatial_dims](inner_dim, inner_dim, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(inner_dim, dim)
        for layer in (self.down, self.conv):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, shape, num_prefix_tokens: int = 0) -> torch.Tensor:
        return self.recomputed(self._forward, x, tuple(shape), num_prefix_tokens)

    def _forward(self, x: torch.Tensor, shape, prefix: int) -> torch.Tensor:
        z = quick_gelu(self.down(self.norm(x)))
        z = quick_gelu(conv_tokens(self.conv, z, shape, prefix))
        return self.scale * self.up(self.dropout(z))


class ConvAdapter(nn.Module):
    """CA(a) = alpha * PW(act(GConv_k(a))) on channels-first maps: a k x k grouped conv from w to w / gamma
    channels (w / gamma groups, the stride of the layer beside it), a 1x1 conv back to w, a per-channel alpha
    starting at one (not an identity at init)."""

    def __init__(self, width: int, kernel: int, reduction: int, activation: nn.Module, stride: int = 1,
                 dilation: int = 1, spatial_dims: int = 2):
        super().__init__()
        conv = _CONV[spatial_dims]
        inner = width // reduction
        self.gconv = conv(width, inner, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                          groups=inner)
        self.activation = activation
        self.pw = conv(inner, width, 1)
        self.alpha = nn.Parameter(torch.ones(width, *[1] * spatial_dims))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.pw(self.activation(self.gconv(a)))


class ConvAdapterBesideAttention(Recomputable, nn.Module):
    """Conv-Adapter's transformer form: CA(LN1 x) added beside (S)W-MSA, over the un-windowed map."""

    def __init__(self, norm: nn.Module, adapter: ConvAdapter):
        super().__init__()
        refer(self, "norm", norm)
        self.adapter = adapter

    def forward(self, x: torch.Tensor, shape, num_prefix_tokens: int = 0) -> torch.Tensor:
        return self.recomputed(self._forward, x, tuple(shape), num_prefix_tokens)

    def _forward(self, x: torch.Tensor, shape, prefix: int) -> torch.Tensor:
        return conv_tokens(self.adapter, self.norm(x), shape, prefix)


class BesideConv(Recomputable):
    """Swapped-in mixin for a frozen conv of a CNN block: its output plus its `conv_adapter` child's on the same
    input (Conv-Adapter's CNN form)."""

    @classmethod
    def convert(cls, conv: nn.Module, adapter: ConvAdapter) -> nn.Module:
        ref = conv.weight
        swap_class(conv, cls).add_module("conv_adapter", adapter.to(device=ref.device, dtype=ref.dtype))
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.recomputed(self.conv_adapter, x)
