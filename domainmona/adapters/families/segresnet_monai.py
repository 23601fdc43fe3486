"""MONAI SegResNet's residual blocks (`ResBlock`, 2D or 3D): one adapter on each block's output feature map
(B, C, *spatial), as for the other CNNs; LoRA on both convolutions of a block, Conv-Adapter beside the second.

SegResNet has no encoder module of its own: its encoder is `convInit` plus `down_layers`, and the decoder's
`up_layers` use the same block class. Pass `model.down_layers` to `inject` to adapt and freeze the encoder
alone (segment-ct does); the whole SegResNet adapts and freezes every block, decoder included.
"""

from __future__ import annotations

from torch import nn

from domainmona.adapters.families.cnn import CNNBlockForward, spatial_convs
from domainmona.adapters.families.spec import Family, register_family


def _conv(block: nn.Module) -> nn.modules.conv._ConvNd:
    return next(m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd))


FAMILY = register_family(Family(
    name="monai-segresnet",
    blocks=(("monai.networks.blocks.segresnet_block", "ResBlock"),),
    roots=(("monai.networks.nets.segresnet", "SegResNet"),),
    forward=CNNBlockForward,
    dim=lambda block: _conv(block).out_channels,
    spatial_dims=lambda block: len(_conv(block).kernel_size),
    transformer=False,
    convs=spatial_convs,
))
