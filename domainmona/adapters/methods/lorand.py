"""LoRand (Yin et al. CVPR 2023): bottleneck adapters with multi-branch low-rank projections."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.bottleneck import LoRand as LoRandModule


@dataclass(frozen=True)
class LoRandConfig:
    factor: int = 2
    branches: int = 4
    kernel_dim: int = 8


@register_method(order=90)
class LoRand(Method):
    name = "lorand"
    summary = "low-rank multi-branch adapters on both branches"
    Config = LoRandConfig
    recomputes = True

    def attach(self, site, config) -> None:
        self.fill_slots(site, "branch",
                        lambda: LoRandModule(site.dim, config.factor, config.branches, config.kernel_dim))
