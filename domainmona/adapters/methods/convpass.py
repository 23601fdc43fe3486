"""Convpass (Jie & Deng 2022): convolutional bypasses beside attention and beside the MLP, fed the norm output."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.methods.reparam import require_transformer
from domainmona.adapters.modules.convpass import Convpass as ConvpassModule
from domainmona.errors import UserError


@dataclass(frozen=True)
class ConvpassConfig:
    inner_dim: int = 8
    scale: float = 1.0  # s; the paper tunes it per task
    dropout: float = 0.1


@register_method(order=190)
class Convpass(Method):
    name = "convpass"
    summary = "3x3 conv bypasses beside attention and MLP"
    Config = ConvpassConfig
    recomputes = True

    def attach(self, site, config) -> None:
        require_transformer(self.name, site)
        if config.inner_dim < 1 or not 0 <= config.dropout < 1:
            raise UserError(f"method '{self.name}': need inner_dim >= 1 and 0 <= dropout < 1")
        for placement, norm in (("attn-parallel", site.block.norm1), ("parallel", site.block.norm2)):
            self.fill_slots(site, placement, lambda norm=norm: ConvpassModule(
                norm, site.dim, config.inner_dim, config.scale, config.dropout, site.spatial_dims))
