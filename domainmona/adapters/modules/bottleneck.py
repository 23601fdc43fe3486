"""Bottleneck adapters of the Mona paper's comparison set: Houlsby Adapter, AdaptFormer, LoRand.

All take tokens (B, N, C) plus the spatial shape, which they ignore (only Mona looks at the map), and in
training keep only their input for backward (see `Recomputable`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.modules.recompute import Recomputable


class BottleneckAdapter(Recomputable, nn.Module):
    """Houlsby et al. 2019: x + up(dropout(GELU(down(x)))); `up` starts at zero so injection is an identity."""

    def __init__(self, dim: int, inner_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        self.project1 = nn.Linear(dim, inner_dim)
        self.dropout = nn.Dropout(dropout)
        self.project2 = nn.Linear(inner_dim, dim)
        nn.init.zeros_(self.project2.weight)
        nn.init.zeros_(self.project2.bias)

    def forward(self, x: torch.Tensor, shape=None, num_prefix_tokens: int = 0) -> torch.Tensor:
        return self.recomputed(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project2(self.dropout(F.gelu(self.project1(x))))


class AdaptFormer(Recomputable, nn.Module):
    """Chen et al. 2022: a scaled ReLU bottleneck run beside the MLP; returns only its (scaled) branch."""

    def __init__(self, dim: int, inner_dim: int = 64, scale: float = 0.1, dropout: float = 0.1):
        super().__init__()
        self.scale = scale
        self.down_proj = nn.Linear(dim, inner_dim)
        self.dropout = nn.Dropout(dropout)
        self.up_proj = nn.Linear(inner_dim, dim)
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor, shape=None, num_prefix_tokens: int = 0) -> torch.Tensor:
        return self.recomputed(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up_proj(self.dropout(F.relu(self.down_proj(x))))


class LoRandLinear(nn.Module):
    """LoRand linear map (Yin et al. CVPR 2023): weight = sum over branches of A_i @ K_i @ B_i, all low rank."""

    def __init__(self, in_features: int, out_features: int, branches: int = 4, kernel_dim: int = 8):
        super().__init__()
        self.a = nn.ParameterList(nn.Parameter(torch.empty(in_features, kernel_dim)) for _ in range(branches))
        self.k = nn.ParameterList(nn.Parameter(torch.empty(kernel_dim, kernel_dim)) for _ in range(branches))
        self.b = nn.ParameterList(nn.Parameter(torch.empty(kernel_dim, out_features)) for _ in range(branches))
        for p in (*self.a, *self.k, *self.b):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> torch.Tensor:
        return sum(a @ k @ b for a, k, b in zip(self.a, self.k, self.b)).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class LoRand(Recomputable, nn.Module):
    """Bottleneck adapter whose two projections are `LoRandLinear`: x + up(GELU(down(x)))."""

    def __init__(self, dim: int, factor: int = 2, branches: int = 4, kernel_dim: int = 8):
        super().__init__()
        self.project1 = LoRandLinear(dim, dim // factor, branches, kernel_dim)
        self.project2 = LoRandLinear(dim // factor, dim, branches, kernel_dim)

    def forward(self, x: torch.Tensor, shape=None, num_prefix_tokens: int = 0) -> torch.Tensor:
        return self.recomputed(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project2(F.gelu(self.project1(x)))
