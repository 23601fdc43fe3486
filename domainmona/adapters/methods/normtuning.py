"""Norm-tuning: only the affine parameters of the backbone's normalisation layers train."""

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from domainmona.adapters.methods.base import Method, register_method

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, _NormBase)


@register_method(order=40)
class NormTuning(Method):
    name = "normtuning"
    summary = "train only normalisation layers"

    def trains_base(self, path, owner, sites, config) -> bool:
        return isinstance(owner, NORM_TYPES)
