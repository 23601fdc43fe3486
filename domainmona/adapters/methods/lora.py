"""LoRA on the query and value projections of every attention block."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.lora import LoRAQKVLinear
from domainmona.errors import UserError


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 64
    alpha: float = 64.0


@register_method(order=70)
class LoRA(Method):
    name = "lora"
    summary = "low-rank updates of q and v"
    Config = LoRAConfig
    recomputes = True

    def attach(self, site, config) -> None:
        qkv = site.family.qkv(site.block)
        if qkv is None:
            raise UserError(f"method 'lora' needs attention qkv projections, which {site.family.name} blocks "
                            f"do not have (try 'mona')")
        if config.rank < 1:
            raise UserError("method 'lora': rank must be >= 1")
        LoRAQKVLinear.convert(qkv, config.rank, config.alpha)
