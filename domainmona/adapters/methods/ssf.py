"""SSF (Lian et al. NeurIPS 2022): scale and shift after every linear and norm of every block, the patch embed
projection and norm, each patch-merging norm, and the final norm(s); folds into the frozen weights."""

from __future__ import annotations

from torch import nn

from domainmona.adapters.methods.base import Method, register_method
from domainmona.adapters.methods.normtuning import NORM_TYPES
from domainmona.adapters.methods.reparam import require_transformer
from domainmona.adapters.modules.ssf import ScaleShift


def _channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.out_channels
    return layer.weight.numel()  # an affine norm


@register_method(order=110)
class SSF(Method):
    name = "ssf"
    summary = "scale and shift after every linear and norm (merges)"

    def attach(self, site, config) -> None:
        require_transformer(self.name, site)
        for layer in [m for m in site.block.modules() if isinstance(m, (nn.Linear, *NORM_TYPES))]:
            ScaleShift.convert(layer, _channels(layer))

    def attach_model(self, root, sites, config) -> None:
        """Outside the blocks: norms (patch embed, patch merging, final) and convs (the patch embed projection);
        not the merging reductions or heads (the official placement: 104,448 on Swin-T)."""
        inside = {id(m) for site in sites for m in site.block.modules()}
        outside = [m for m in root.modules() if id(m) not in inside
                   and isinstance(m, (*NORM_TYPES, nn.modules.conv._ConvNd)) and getattr(m, "weight", None) is not None]
        for layer in outside:
            ScaleShift.convert(layer, _channels(layer))
