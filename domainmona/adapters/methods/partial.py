"""Partial-k: only the last k blocks of the backbone train (`partial-1` in the Mona paper)."""

from dataclasses import dataclass

from domainmona.adapters.methods.base import Method, register_method


@dataclass(frozen=True)
class PartialConfig:
    blocks: int = 1


@register_method(order=50)
class Partial(Method):
    name = "partial-1"
    summary = "train only the last block"
    Config = PartialConfig

    def trains_base(self, path, owner, sites, config) -> bool:
        return any(path.startswith(site.name + ".") for site in sites[max(0, len(sites) - config.blocks):])
