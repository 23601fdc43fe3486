"""KAdaptation (He et al. 2022): s * sum_i A_i kron B_i on q and v, A_i shared by every layer, B_i rank one;
folds into qkv."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.methods.reparam import qkv_linears
from domainmona.adapters.modules.delta import share
from domainmona.adapters.modules.kronecker import KAdaptationLinear, KAdaptationShared


@dataclass(frozen=True)
class KAdaptationConfig:
    n: int = 16  # A_i are n x n; n must divide every width (32 fails on SwinUNETR's 48)
    scale: float = 1.0


@register_method(order=160)
class KAdaptation(Method):
    name = "kadaptation"
    summary = "shared Kronecker factors on q and v (merges)"
    Config = KAdaptationConfig

    def attach_model(self, root, sites, config) -> None:
        qkvs = qkv_linears(self.name, sites, "n", config.n)
        shared = share(sites[0].block, KAdaptationShared(config.n, qkvs[0].weight))
        for qkv in qkvs:
            KAdaptationLinear.convert(qkv, shared, config.scale)
