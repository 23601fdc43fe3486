"""LoRA (Hu et al. 2021) on the query and value parts of a fused qkv projection, and on a convolution.

Written by hand: peft adapts whole Linear layers and cannot restrict a fused qkv Linear to q and v.
The Linear keeps its class lineage and parameter names (`weight`, `bias`), so pretrained weights load as before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.modules.delta import Mergeable, QVDelta, add_weight_delta, swap_class
from domainmona.adapters.modules.recompute import Recomputable


class LoRAQKVLinear(Recomputable, QVDelta, nn.Linear):
    """qkv Linear (C -> 3C) plus scale * up @ down on q and v; k and the base weight are left alone. In training
    the low-rank path recomputes its rank-r activations in backward (its input is saved by the base Linear
    anyway), see `Recomputable`."""

    lora_scale: float
    adapter_tensors = ("lora_q_down", "lora_q_up", "lora_v_down", "lora_v_up")
    attributes = ("lora_scale", "recompute", "inside_checkpoint")
    base_class = nn.Linear

    @classmethod
    def convert(cls, linear: nn.Linear, rank: int, alpha: float) -> "LoRAQKVLinear":
        if linear.out_features % 3:
            raise ValueError(f"not a fused qkv projection: {linear.out_features} outputs")
        linear.__class__ = cls
        dim, ref = linear.out_features // 3, linear.weight
        linear.lora_scale = alpha / rank
        for part in ("q", "v"):
            down = nn.Parameter(torch.empty(rank, linear.in_features, dtype=ref.dtype, device=ref.device))
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            linear.register_parameter(f"lora_{part}_down", down)
            linear.register_parameter(f"lora_{part}_up", nn.Parameter(torch.zeros(dim, rank, dtype=ref.dtype,
                                                                                  device=ref.device)))
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.weight, self.bias).chunk(3, dim=-1)
        dq, dv = self.recomputed(self._low_rank, x)
        return torch.cat((q + dq, k, v + dv), dim=-1)

    def part_delta(self, part: str) -> torch.Tensor:
        return self.lora_scale * getattr(self, f"lora_{part}_up") @ getattr(self, f"lora_{part}_down")

    def _low_rank(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.lora_scale * F.linear(F.linear(x, self.lora_q_down), self.lora_q_up),
                self.lora_scale * F.linear(F.linear(x, self.lora_v_down), self.lora_v_up))


class LoRAConv(Recomputable, Mergeable):
    """Swapped-in mixin for a frozen convolution (LoCon's form): its output plus scale * up(down(x)), `down` a
    convolution to `rank` channels with the layer's own kernel, stride, padding and dilation, `up` a 1x1 back
    (zero at init). The update is the low-rank kernel dW[o, i, ...] = scale * sum_r up[o, r] down[r, i, ...],
    which `merge` folds into the layer's weight."""

    lora_scale: float
    adapter_tensors = ("lora_down", "lora_up")
    attributes = ("lora_scale", "recompute", "inside_checkpoint")

    @classmethod
    def convert(cls, conv: nn.modules.conv._ConvNd, rank: int, alpha: float) -> nn.Module:
        if conv.groups != 1 or conv.transposed:
            raise ValueError(f"LoRA takes plain convolutions, not grouped or transposed ones: {conv}")
        ref = conv.weight
        swap_class(conv, cls).lora_scale = alpha / rank
        down = nn.Parameter(torch.empty(rank, conv.in_channels, *conv.kernel_size, dtype=ref.dtype, device=ref.device))
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        conv.register_parameter("lora_down", down)
        conv.register_parameter("lora_up", nn.Parameter(torch.zeros(conv.out_channels, rank, dtype=ref.dtype,
                                                                    device=ref.device)))
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.recomputed(self._low_rank, x)

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_scale * torch.einsum("or,br...->bo...", self.lora_up, self._conv_forward(x, self.lora_down,
                                                                                                  None))

    def fold(self) -> None:
        add_weight_delta(self, self.lora_scale * torch.einsum("or,r...->o...", self.lora_up, self.lora_down))
