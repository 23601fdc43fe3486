"""LoRA (Hu et al. 2021) on the query and value parts of a fused qkv projection.

Written by hand: peft adapts whole Linear layers and cannot restrict a fused qkv Linear to q and v.
The Linear keeps its class lineage and parameter names (`weight`, `bias`), so pretrained weights load as before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.modules.delta import QVDelta
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
