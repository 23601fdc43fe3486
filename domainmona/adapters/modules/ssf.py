"""SSF (Lian et al. NeurIPS 2022): a learned per-channel scale and shift after a frozen Linear, norm or conv.

y = gamma * layer(x) + beta is linear in the layer's output, so it folds exactly into the layer's weight and
bias: W' = diag(gamma) W, b' = gamma * b + beta (a LayerNorm's affine the same way).
"""

from __future__ import annotations

import torch
from torch import nn

from domainmona.adapters.modules.delta import Mergeable, new_parameter, swap_class


class ScaleShift(Mergeable):
    """Swapped-in mixin: the layer's output scaled and shifted along its channel axis (last for Linear and
    norms, 1 for convs)."""

    adapter_tensors = ("ssf_scale", "ssf_shift")

    @classmethod
    def convert(cls, layer: nn.Module, channels: int) -> nn.Module:
        ref = next(layer.parameters())
        swap_class(layer, cls)
        layer.ssf_scale = new_parameter(channels, ref)
        layer.ssf_shift = new_parameter(channels, ref)
        # N(1, 0.02) and N(0, 0.02) as in the paper: close to, not exactly, an identity at the start
        nn.init.normal_(layer.ssf_scale, 1.0, 0.02)
        nn.init.normal_(layer.ssf_shift, 0.0, 0.02)
        return layer

    def _channel_view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t if not isinstance(self, nn.modules.conv._ConvNd) else t.view(-1, *[1] * (ndim - 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * self._channel_view(self.ssf_scale, out.dim()) + self._channel_view(self.ssf_shift, out.dim())

    def fold(self) -> None:
        scale = self.ssf_scale.to(self.weight.dtype)
        self.weight.mul_(scale.view(-1, *[1] * (self.weight.dim() - 1)))
        if self.bias is None:
            self.bias = nn.Parameter(torch.zeros_like(scale), requires_grad=False)
        self.bias.mul_(scale).add_(self.ssf_shift.to(self.bias.dtype))
