"""FacT (Jie & Deng AAAI 2023): dW = s * V Sigma U on every linear of a block, U and V shared by a stage.

A linear mapping ci chunks of width C to co chunks of width C (qkv: 1 -> 3, proj 1 -> 1, fc1 1 -> 4,
fc2 4 -> 1) gets a (co*r x ci*r) Sigma: each chunk goes through U, Sigma mixes the rank-space chunks, each
output chunk comes back through V. FacT-TT keeps Sigma per linear; FacT-TK builds its 12 r x r slices per
block from a stage core (r, r, r) and a factor P (r, 12 * blocks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.modules.delta import Mergeable, add_weight_delta, new_parameter, refer, swap_class


class FacTFactors(nn.Module):
    """One stage's shared factors: U (r x C), V (C x r) starting at zero; with `slices` also FacT-TK's core
    and P."""

    def __init__(self, dim: int, rank: int, like: torch.Tensor, slices: int = 0):
        super().__init__()
        self.u = nn.init.kaiming_uniform_(new_parameter((rank, dim), like), a=math.sqrt(5))
        self.v = nn.init.zeros_(new_parameter((dim, rank), like))
        if slices:
            self.core = nn.init.kaiming_uniform_(new_parameter((rank, rank, rank), like), a=math.sqrt(5))
            self.p = nn.init.kaiming_uniform_(new_parameter((rank, slices), like), a=math.sqrt(5))


class FacTLinear(Mergeable):
    """Swapped-in mixin: the layer's output plus s * V dropout(Sigma (U x)), chunk by chunk."""

    attributes = ("fact_factors", "fact_chunks", "fact_scale", "fact_dropout")

    def _setup(self, factors: FacTFactors, chunks: tuple[int, int], scale: float, dropout: float) -> None:
        refer(self, "fact_factors", factors)
        self.fact_chunks, self.fact_scale, self.fact_dropout = chunks, scale, dropout

    def sigma(self) -> torch.Tensor:
        """(co*r x ci*r)"""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors, (co, ci) = self.fact_factors, self.fact_chunks
        h = F.linear(x.unflatten(-1, (ci, -1)), factors.u).flatten(-2)
        h = F.dropout(F.linear(h, self.sigma()), self.fact_dropout, self.training)
        return super().forward(x) + self.fact_scale * F.linear(h.unflatten(-1, (co, -1)), factors.v).flatten(-2)

    def fold(self) -> None:
        factors, (co, ci) = self.fact_factors, self.fact_chunks
        rank = factors.u.shape[0]
        sigma = self.sigma().view(co, rank, ci, rank)
        delta = torch.einsum("cp,apbq,qd->acbd", factors.v, sigma, factors.u)
        add_weight_delta(self, self.fact_scale * delta.reshape(self.out_features, self.in_features))


class FacTTTLinear(FacTLinear):
    """FacT-TT: Sigma is this linear's own parameter (Linear-style init)."""

    adapter_tensors = ("fact_sigma",)

    @classmethod
    def convert(cls, linear: nn.Linear, factors: FacTFactors, chunks: tuple[int, int], scale: float,
                dropout: float) -> nn.Linear:
        rank = factors.u.shape[0]
        swap_class(linear, cls)._setup(factors, chunks, scale, dropout)
        sigma = new_parameter((chunks[0] * rank, chunks[1] * rank), linear.weight)
        linear.fact_sigma = nn.init.kaiming_uniform_(sigma, a=math.sqrt(5))
        return linear

    def sigma(self) -> torch.Tensor:
        return self.fact_sigma


class FacTTKLinear(FacTLinear):
    """FacT-TK: Sigma's co*ci slices are core x_3 P[:, first:first + co*ci] of the stage's factors."""

    attributes = (*FacTLinear.attributes, "fact_first")

    @classmethod
    def convert(cls, linear: nn.Linear, factors: FacTFactors, chunks: tuple[int, int], scale: float,
                dropout: float, first: int) -> nn.Linear:
        swap_class(linear, cls)._setup(factors, chunks, scale, dropout)
        linear.fact_first = first
        return linear

    def sigma(self) -> torch.Tensor:
        factors, (co, ci) = self.fact_factors, self.fact_chunks
        rank = factors.u.shape[0]
        slices = torch.einsum("abk,kn->nab", factors.core, factors.p[:, self.fact_first:self.fact_first + co * ci])
        return slices.view(co, ci, rank, rank).transpose(1, 2).reshape(co * rank, ci * rank)
