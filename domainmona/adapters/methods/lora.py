"""LoRA on the query and value projections of every attention block; in convolutional blocks whose family names
their convolutions (`Family.convs`), on each of those."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.modules.lora import LoRAConv, LoRAQKVLinear
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
        qkv, convs = site.family.qkv(site.block), site.family.convs(site.block)
        if qkv is None and not convs:
            raise UserError(f"method 'lora' needs attention qkv projections, which {site.family.name} blocks "
                            f"do not have (try 'mona')")
        if config.rank < 1:
            raise UserError("method 'lora': rank must be >= 1")
        if qkv is not None:
            LoRAQKVLinear.convert(qkv, config.rank, config.alpha)
            return
        for conv in convs:
            LoRAConv.convert(conv, config.rank, config.alpha)
