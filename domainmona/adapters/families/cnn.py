"""CNN stages (ResNet from timm/torchvision/mmdet, timm ConvNeXt): one adapter on every residual block's
output feature map (B, C, H, W)."""

from __future__ import annotations

from torch import nn

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, register_family, timm_checkpointing

_RESNET_MODULES = ("timm.models.resnet", "torchvision.models.resnet", "mmdet.models.backbones.resnet")


class CNNBlockForward(AdapterHost):
    def forward(self, *args, **kwargs):
        return self.join_block(super().forward(*args, **kwargs))


def _out_channels(block: nn.Module) -> int:
    """Bottleneck ends in conv3, BasicBlock in conv2; a ConvNeXt block keeps the width of its conv_dw."""
    for name in ("conv3", "conv2", "conv_dw"):
        conv = getattr(block, name, None)
        if isinstance(conv, nn.Conv2d):
            return conv.out_channels
    raise ValueError(f"cannot tell the output width of {type(block).__name__}")


FAMILY = register_family(Family(
    name="cnn",
    blocks=tuple((m, c) for m in _RESNET_MODULES for c in ("Bottleneck", "BasicBlock"))
    + (("timm.models.convnext", "ConvNeXtBlock"),),
    roots=tuple((m, "ResNet") for m in _RESNET_MODULES) + (("timm.models.convnext", "ConvNeXt"),),
    forward=CNNBlockForward,
    dim=_out_channels,
    transformer=False,
    checkpointing=timm_checkpointing,  # timm ResNet/ConvNeXt; refused for torchvision and mmdet ResNets
))
