"""Parallel adapter (He et al. ICLR 2022, MAM adapter): a scaled ReLU bottleneck beside every MLP, fed its input."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.parallel import ParallelAdapter as ParallelAdapterModule


@dataclass(frozen=True)
class ParallelAdapterConfig:
    inner_dim: int = 64
    scale: float = 4.0
    dropout: float = 0.0


@register_method(order=120)
class ParallelAdapter(Method):
    name = "parallel-adapter"
    summary = "scaled bottleneck beside the MLP, fed its input"
    Config = ParallelAdapterConfig
    recomputes = True

    def attach(self, site, config) -> None:
        self.fill_slots(site, "parallel", lambda: ParallelAdapterModule(site.block.norm2, site.dim, config.inner_dim,
                                                                        config.scale, config.dropout))
