"""AdaptFormer (Chen et al. 2022): a scaled bottleneck in parallel with every MLP."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.bottleneck import AdaptFormer as AdaptFormerModule


@dataclass(frozen=True)
class AdaptFormerConfig:
    inner_dim: int = 64
    scale: float = 0.1
    dropout: float = 0.1


@register_method(order=80)
class AdaptFormer(Method):
    name = "adaptformer"
    summary = "scaled bottleneck parallel to the MLP"
    Config = AdaptFormerConfig
    recomputes = True

    def attach(self, site, config) -> None:
        self.fill_slots(site, "parallel",
                        lambda: AdaptFormerModule(site.dim, config.inner_dim, config.scale, config.dropout))
