"""Adapter (Houlsby et al. 2019): a bottleneck on the attention and the MLP branch of every block."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.bottleneck import BottleneckAdapter


@dataclass(frozen=True)
class AdapterConfig:
    inner_dim: int = 64
    dropout: float = 0.1


@register_method(order=60)
class Adapter(Method):
    name = "adapter"
    summary = "Houlsby bottleneck on both branches"
    Config = AdapterConfig
    recomputes = True

    def attach(self, site, config) -> None:
        self.fill_slots(site, "branch", lambda: BottleneckAdapter(site.dim, config.inner_dim, config.dropout))
