"""KronA (Edalati et al. 2022): a Kronecker-product update s * (A kron B) of q and v; folds into qkv."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.methods.reparam import qkv_linears
from domainmona.adapters.modules.kronecker import KronALinear


@dataclass(frozen=True)
class KronAConfig:
    factor: int = 16  # A is factor x factor, B (C/factor)^2: must divide every width (48 in SwinUNETR)
    scale: float = 1.0


@register_method(order=150)
class KronA(Method):
    name = "krona"
    summary = "Kronecker updates of q and v (merges)"
    Config = KronAConfig

    def attach_model(self, root, sites, config) -> None:
        for qkv in qkv_linears(self.name, sites, "factor", config.factor):
            KronALinear.convert(qkv, config.factor, config.scale)
