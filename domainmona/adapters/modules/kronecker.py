"""Kronecker-product updates of the q and v projections of a fused qkv Linear: KronA and KAdaptation.

Both materialise the (C x C) update, which is cheap next to the projection itself, and fold it into the
weight exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from domainmona.adapters.modules.delta import QVDelta, new_parameter, refer, swap_class


def _linear_init(t: torch.Tensor) -> torch.Tensor:
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5))


class KronALinear(QVDelta):
    """KronA (Edalati et al. 2022): dW = s * (A kron B) per projection, A (a x a), B (C/a x C/a); B starts at
    zero so injection is an identity."""

    adapter_tensors = ("krona_q_a", "krona_q_b", "krona_v_a", "krona_v_b")
    attributes = ("krona_scale",)

    @classmethod
    def convert(cls, linear: nn.Linear, factor: int, scale: float) -> nn.Linear:
        dim = linear.in_features
        swap_class(linear, cls)
        linear.krona_scale = scale
        for part in ("q", "v"):
            setattr(linear, f"krona_{part}_a", _linear_init(new_parameter((factor, factor), linear.weight)))
            setattr(linear, f"krona_{part}_b", nn.init.zeros_(new_parameter((dim // factor,) * 2, linear.weight)))
        return linear

    def part_delta(self, part: str) -> torch.Tensor:
        return self.krona_scale * torch.kron(getattr(self, f"krona_{part}_a"), getattr(self, f"krona_{part}_b"))


class KAdaptationShared(nn.Module):
    """The n matrices A_i (n x n) that KAdaptation shares between all layers of a backbone."""

    def __init__(self, n: int, like: torch.Tensor):
        super().__init__()
        self.a = _linear_init(new_parameter((n, n, n), like))


class KAdaptationLinear(QVDelta):
    """KAdaptation (He et al. 2022): dW = s * sum_i A_i kron (u_i v_i^T) per projection, A_i shared by all
    layers, B_i = u_i v_i^T rank one (C/n x C/n) per layer; v starts at zero (so injection is an identity and,
    unlike the official code, both factors of B_i move)."""

    adapter_tensors = ("kadapt_q_u", "kadapt_q_v", "kadapt_v_u", "kadapt_v_v")
    attributes = ("kadapt_shared", "kadapt_scale")

    @classmethod
    def convert(cls, linear: nn.Linear, shared: KAdaptationShared, scale: float) -> nn.Linear:
        n, dim = shared.a.shape[0], linear.in_features
        swap_class(linear, cls)
        refer(linear, "kadapt_shared", shared)
        linear.kadapt_scale = scale
        for part in ("q", "v"):
            setattr(linear, f"kadapt_{part}_u", _linear_init(new_parameter((n, dim // n), linear.weight)))
            setattr(linear, f"kadapt_{part}_v", nn.init.zeros_(new_parameter((n, dim // n), linear.weight)))
        return linear

    def part_delta(self, part: str) -> torch.Tensor:
        a, u, v = self.kadapt_shared.a, getattr(self, f"kadapt_{part}_u"), getattr(self, f"kadapt_{part}_v")
        dim = self.in_features
        return self.kadapt_scale * torch.einsum("iab,ip,iq->apbq", a, u, v).reshape(dim, dim)
