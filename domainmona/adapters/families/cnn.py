"""CNN stages (ResNet from timm/torchvision/mmdet, timm ConvNeXt, timm EfficientNet/MobileNetV2): one adapter on
every block's output feature map (B, C, H, W)."""

from __future__ import annotations

from torch import nn

from domainmona.adapters.families.host import AdapterHost
from domainmona.adapters.families.spec import Family, register_family, timm_checkpointing

_RESNET_MODULES = ("timm.models.resnet", "torchvision.models.resnet", "mmdet.models.backbones.resnet")
_EFFICIENTNET_BLOCKS = tuple(("timm.models._efficientnet_blocks", c) for c in ("InvertedResidual",
                                                                              "DepthwiseSeparableConv"))


class CNNBlockForward(AdapterHost):
    def forward(self, *args, **kwargs):
        return self.join_block(super().forward(*args, **kwargs))


def spatial_convs(block: nn.Module) -> list[nn.Module]:
    """The block's convolutions with a kernel above 1 (a MONAI block's conv1, conv2; not a residual 1x1
    projection), in order: where LoRA and Conv-Adapter go in the MONAI CNN families."""
    return [m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed
            and max(m.kernel_size) > 1]


def _out_channels(block: nn.Module) -> int:
    """An inverted residual ends in conv_pwl, Bottleneck in conv3, BasicBlock in conv2, a depthwise-separable
    block in conv_pw; a ConvNeXt block keeps the width of its conv_dw."""
    for name in ("conv_pwl", "conv3", "conv2", "conv_pw", "conv_dw"):
        conv = getattr(block, name, None)
        if isinstance(conv, nn.Conv2d):
            return conv.out_channels
    raise ValueError(f"cannot tell the output width of {type(block).__name__}")


FAMILY = register_family(Family(
    name="cnn",
    blocks=tuple((m, c) for m in _RESNET_MODULES for c in ("Bottleneck", "BasicBlock"))
    + (("timm.models.convnext", "ConvNeXtBlock"),) + _EFFICIENTNET_BLOCKS,
    roots=tuple((m, "ResNet") for m in _RESNET_MODULES) + (("timm.models.convnext", "ConvNeXt"),)
    + tuple(("timm.models.efficientnet", c) for c in ("EfficientNet", "EfficientNetFeatures")),
    forward=CNNBlockForward,
    dim=_out_channels,
    transformer=False,
    checkpointing=timm_checkpointing,  # timm ResNet/ConvNeXt; refused for torchvision and mmdet ResNets
))
