"""What the reparametrising methods (SSF, FacT, KronA, KAdaptation) need from a block: its linears, its stage."""

from __future__ import annotations

from itertools import groupby

from torch import nn

from domainmona.adapters.families.spec import Site
from domainmona.errors import UserError


def require_transformer(method: str, site: Site) -> None:
    if not site.family.transformer:
        raise UserError(f"method '{method}' is not defined for {site.family.name} backbones (transformer blocks only)")


def block_linears(method: str, site: Site) -> list[nn.Linear]:
    """The block's qkv, proj, fc1 and fc2, in that order (`Family.linears`)."""
    require_transformer(method, site)
    linears = site.family.linears(site.block)
    if len(linears) != 4 or linears[0] is not site.family.qkv(site.block):
        raise UserError(f"method '{method}': {site.family.name} block '{site.name}' lacks the qkv, proj, fc1, fc2 "
                        f"linears it adapts")
    return linears


def qkv_linears(method: str, sites: list[Site], option: str, factor: int) -> list[nn.Linear]:
    """Every block's fused qkv projection, for a Kronecker method whose `option`=`factor` must divide every
    width."""
    for site in sites:
        require_transformer(method, site)
    qkvs = [site.family.qkv(site.block) for site in sites]
    for site, qkv in zip(sites, qkvs):
        if qkv is None or qkv.out_features != 3 * qkv.in_features:
            raise UserError(f"method '{method}' needs a fused qkv projection, which {site.family.name} block "
                            f"'{site.name}' does not have")
    widths = sorted({s.dim for s in sites})
    if factor < 1 or any(w % factor for w in widths):
        raise UserError(f"method '{method}': {option}={factor} must divide every block width ({widths})")
    return qkvs


def stages(sites: list[Site]) -> list[list[Site]]:
    """Sites grouped by the module list that holds them (a Swin stage; all blocks of a plain ViT)."""
    return [list(group) for _, group in groupby(sites, key=lambda s: s.name.rpartition(".")[0])]
