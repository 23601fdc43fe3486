"""Mona: one Mona after each residual add (attention and MLP) of every block; 3D blocks get Mona3d."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.mona import Mona as Mona2d
from domainmona.adapters.modules.mona import Mona3d
from domainmona.errors import UserError


@dataclass(frozen=True)
class MonaConfig:
    inner_dim: int = 64
    dropout: float = 0.1


@register_method(order=100)
class Mona(Method):
    name = "mona"
    summary = "multi-cognitive visual adapter after each residual add"
    Config = MonaConfig
    recomputes = True

    def attach(self, site, config) -> None:
        if config.inner_dim < 1 or not 0 <= config.dropout < 1:
            raise UserError(f"method 'mona': need inner_dim >= 1 and 0 <= dropout < 1, got {config.inner_dim}, "
                            f"{config.dropout}")
        module = Mona3d if site.spatial_dims == 3 else Mona2d
        self.fill_slots(site, "post", lambda: module(site.dim, config.inner_dim, config.dropout))
