"""FacT-TT (Jie & Deng AAAI 2023): dW = s * V Sigma U on qkv, proj, fc1 and fc2 of every block, U and V shared by
the blocks of a stage (the official code is ViT-only: one U/V per model, i.e. its one stage); folds into them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.methods.reparam import block_linears, stages
from domainmona.adapters.modules.delta import share
from domainmona.adapters.modules.fact import FacTFactors, FacTTTLinear
from domainmona.errors import UserError


@dataclass(frozen=True)
class FacTConfig:
    rank: int = 16
    scale: float = 1.0
    dropout: float = 0.1  # in rank space


@register_method(order=130)
class FacTTT(Method):
    name = "fact-tt"
    summary = "tensorised low-rank updates of every block linear, factors shared per stage (merges)"
    Config = FacTConfig

    def attach_model(self, root, sites, config) -> None:
        if config.rank < 1 or not 0 <= config.dropout < 1:
            raise UserError(f"method '{self.name}': need rank >= 1 and 0 <= dropout < 1")
        owners = nn.ModuleList()
        for stage in stages(sites):
            blocks = [block_linears(self.name, site) for site in stage]
            chunk_lists = [self._chunks(site, linears) for site, linears in zip(stage, blocks)]
            slices = sum(co * ci for chunks in chunk_lists for co, ci in chunks)
            factors = self.make_factors(stage[0].dim, config.rank, blocks[0][0].weight, slices)
            owners.append(factors)
            first = 0
            for linears, chunks in zip(blocks, chunk_lists):
                for linear, (co, ci) in zip(linears, chunks):
                    self.convert(linear, factors, (co, ci), config, first)
                    first += co * ci
        share(sites[0].block, owners)

    def _chunks(self, site, linears) -> list[tuple[int, int]]:
        """(output chunks, input chunks) of width C for qkv, proj, fc1, fc2."""
        hidden, dim = linears[2].out_features, site.dim
        if hidden % dim:
            raise UserError(f"method '{self.name}': MLP width {hidden} of '{site.name}' is not a multiple of {dim}")
        return [(3, 1), (1, 1), (hidden // dim, 1), (1, hidden // dim)]

    def make_factors(self, dim: int, rank: int, like: torch.Tensor, slices: int) -> FacTFactors:
        return FacTFactors(dim, rank, like)

    def convert(self, linear, factors, chunks, config, first: int) -> None:
        FacTTTLinear.convert(linear, factors, chunks, config.scale, config.dropout)
